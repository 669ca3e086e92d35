"""Stochastic variational inference and MAP with Pyro autoguides.

SVI maximises the ELBO of the (tempered) model,

    ELBO(q) = E_q[log p̃(D, w)] − E_q[log q(w)],

with log p̃ from [`BayesianModel.log_joint`][pyro_bdl.BayesianModel] semantics (the Pyro trace), so minibatches
are scaled by N/B through the data plate and temperature through ``poutine.scale``.
Guides: ``"normal"`` (mean-field, AutoNormal), ``"lowrank"`` (AutoLowRankMultivariateNormal),
``"fullrank"`` (AutoMultivariateNormal), or any Pyro guide object.

MAP is the same loop with an AutoDelta guide: it maximises log p̃(D, w), the mode of the
tempered posterior (which does not depend on T under posterior tempering).

Guide parameters are module-local (``pyro.settings module_local_params``): no global
parameter store, and the optimiser is a plain ``torch.optim.Adam`` with an exponential
decay from ``lr`` to ``lr * lr_decay`` over the run.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Union

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import (AutoDelta, AutoLowRankMultivariateNormal, AutoMultivariateNormal, AutoNormal,
                                  init_to_value)

from ..model.sites import OBS_SITE
from ..model.bayesian_model import BayesianModel
from ..model.tempering import likelihood_scale
from ..posterior.samples import GuidePosterior, SamplesPosterior
from .._util import progress as progress_bars
from .._util.checks import is_invalid_parameter_error
from .data import FitData
from .divergence import DivergenceCheck, loss_floor
from .registry import register

GUIDES = {"normal": AutoNormal, "lowrank": AutoLowRankMultivariateNormal, "fullrank": AutoMultivariateNormal}


def make_guide(model: BayesianModel, guide: Union[str, Any], init_scale: float, rank: Optional[int]):
    init = init_to_value(values=model.initial_values())
    if not isinstance(guide, str):
        return guide
    if guide not in GUIDES:
        raise ValueError(f"unknown guide {guide!r}; choose one of {sorted(GUIDES)} or pass a Pyro guide object")
    if guide == "lowrank":
        return AutoLowRankMultivariateNormal(model, init_loc_fn=init, init_scale=init_scale, rank=rank)
    return GUIDES[guide](model, init_loc_fn=init, init_scale=init_scale)


def resolve_steps(data: FitData, num_steps: Optional[int], epochs: Optional[int], default: int) -> int:
    if num_steps is not None and epochs is not None:
        raise TypeError("pass num_steps or epochs, not both")
    if epochs is not None:
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        return epochs * data.num_batches
    steps = default if num_steps is None else num_steps
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {steps!r}")
    return steps


def param_groups(loss_fn: torch.nn.Module, lr: float) -> list:
    """Adam parameter groups: every guide parameter at ``lr``, except the covariance factors.

    Adam moves every entry by about ``lr`` per step whatever its gradient's scale. A row of the
    full-rank guide's Cholesky factor L (``scale_tril``, P entries) or of the low-rank guide's
    ``cov_factor`` (r entries) would then grow by ≈ lr·√P (lr·√r) per step, so the marginal
    variances Σ_j L_ij² run away on networks (P ≈ 10³): the loss diverged to −10²⁶ on a digits
    MLP. Those factors get ``lr/√P`` (``lr/√r``), so a row's norm moves like a single scale entry.
    """
    groups = []
    for name, param in loss_fn.named_parameters():
        factor = 1.0
        if name.endswith("scale_tril_unconstrained") or name.endswith("cov_factor"):
            factor = 1.0 / math.sqrt(param.shape[-1])
        groups.append({"params": [param], "lr": lr * factor})
    return groups


def optimise(model: BayesianModel, guide, data: FitData, num_steps: int, lr: float, lr_decay: float,
             num_particles: int, seed: int, progress: Optional[bool], desc: str, floor_kind: str = "elbo") -> list:
    """Minimise the negative ELBO of ``(model, guide)``; returns the loss per step.

    Stops with a `DivergenceError` when the loss diverges
    (`divergence`; ``floor_kind``: ``"elbo"``, or ``"point"`` for MAP's
    AutoDelta, whose loss is −log p̃(D, w)).
    """
    generator = torch.Generator().manual_seed(seed)
    N = data.dataset_size
    elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1, max_plate_nesting=1)
    losses = []
    with pyro.settings.context(module_local_params=True):
        loss_fn = elbo(model, guide)
        x0, y0 = next(iter(data.epoch(generator)))
        loss_fn(x0, y0, N)  # builds the guide's parameters
        check = DivergenceCheck(desc, lr, floor=loss_floor(model, x0, y0, N, floor_kind),
                                unit=N * likelihood_scale(model.temperature, model.tempering))
        groups = param_groups(loss_fn, lr)
        if not groups:
            raise ValueError("the guide has no parameters to optimise")
        opt = torch.optim.Adam(groups, lr=lr)
        gamma = lr_decay ** (1.0 / max(1, num_steps))
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=gamma)
        with progress_bars.bar(num_steps, desc, progress) as bar:
            for i, (xb, yb) in enumerate(data.steps(num_steps, generator)):
                opt.zero_grad()
                try:
                    loss = loss_fn(xb, yb, N)
                except ValueError as err:
                    if not is_invalid_parameter_error(err):
                        raise
                    raise FloatingPointError(f"the optimisation diverged at step {i}: the weights became NaN or inf "
                                             f"(a distribution got invalid parameters); lower lr (now {lr}) or check "
                                             "the data scale") from None
                if i == 0 and not math.isfinite(loss.item()):  # before any update: the start is at fault, not lr
                    raise FloatingPointError(_nonfinite_start(model, guide, xb, yb, N, loss.item()))
                loss.backward()
                opt.step()
                sched.step()
                value = loss.item()
                check.check(value, i, lr=lr * sched.get_last_lr()[0] / opt.param_groups[0]["initial_lr"])
                losses.append(value)
                if i % 50 == 0:
                    bar.set_postfix(loss=f"{value:.4g}")
                bar.update()
    return losses


def _nonfinite_start(model: BayesianModel, guide, x: torch.Tensor, y: torch.Tensor, N: int, value: float) -> str:
    """Why the loss is not finite at step 0: the sites whose log density is not finite at the guide's first draw."""
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(x, y, N)
        trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y, N)
        trace.compute_log_prob()
    bad = [name for name, site in trace.nodes.items()
           if site["type"] == "sample" and not torch.isfinite(site["log_prob_sum"])]
    where = (f"the log density of site(s) {bad} is not finite there" if bad else "the log joint is not finite there")
    hint = ("; a prior scale far below the weights' size overflows float32 (log N(w | 0, s) ≈ -w²/2s²): "
            "check the prior's scale" if bad and all(b != OBS_SITE for b in bad) else
            "; check the likelihood (noise scale, labels) and the data")
    return (f"the loss is {value} at the starting point (step 0, before any update), so the learning rate is not "
            f"the cause: {where}{hint}.")


@register("svi")
def fit_svi(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool],
            guide: Union[str, Any] = "normal", num_steps: Optional[int] = None, epochs: Optional[int] = None,
            lr: float = 0.01, lr_decay: float = 0.1, num_particles: int = 1, init_scale: float = 0.01,
            rank: Optional[int] = None) -> GuidePosterior:
    """Variational inference with a Pyro autoguide.

    Args:
        guide: ``"normal"`` (mean-field), ``"lowrank"``, ``"fullrank"``, or a Pyro guide.
        num_steps / epochs: optimiser steps (default 2000), or passes over the data.
        lr, lr_decay: Adam step size, decayed exponentially to ``lr * lr_decay``.
        num_particles: ELBO samples per step (vectorised).
        init_scale: initial guide standard deviation (loc starts at the network's weights).
        rank: rank of the ``"lowrank"`` guide (default ≈ √P).
    """
    steps = resolve_steps(data, num_steps, epochs, default=2000)
    with pyro.settings.context(module_local_params=True):
        g = make_guide(model, guide, init_scale, rank)
    losses = optimise(model, g, data, steps, lr, lr_decay, num_particles, seed, progress, "svi")
    x0, _ = next(iter(data.epoch()))
    return GuidePosterior(model, g, "svi", x0, info={"losses": losses, "guide": type(g).__name__})
