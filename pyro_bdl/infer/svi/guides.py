"""The built-in guides: building one (`make_guide`) and its initial sds (init_scale="auto": `curvature_scales`,
`initialise_scales`)."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Union

import torch
from pyro import poutine
from pyro.infer.autoguide import (AutoLowRankMultivariateNormal, AutoMultivariateNormal, AutoNormal,
                                  init_to_value)
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import PyroParam
from torch.distributions import constraints

from ...model.bayesian_model import BayesianModel
from ...model.lifting import latent_sites
from ..data import FitData

GUIDES = {"normal": AutoNormal, "lowrank": AutoLowRankMultivariateNormal, "fullrank": AutoMultivariateNormal}


#: the guide sd of sites the curvature estimate does not cover (constrained sites: a learned noise scale, ...),
#: and the largest initial sd of init_scale="auto" (see `initialise_scales`)
FALLBACK_SCALE = 0.01
#: minibatches for the Fisher estimate behind init_scale="auto" (relative error of each entry ≈ √(2/32) = 25%)
FISHER_BATCHES = 32


def make_guide(model: BayesianModel, guide: Union[str, Any], init_scale: Union[float, str], rank: Optional[int],
               start: Optional[Dict[str, torch.Tensor]] = None):
    """The built-in guide ``guide`` with its means at ``start`` (default: the model's initial values)."""
    init = init_to_value(values=model.initial_values() if start is None else start)
    if not isinstance(guide, str):
        return guide
    if guide not in GUIDES:
        raise ValueError(f"unknown guide {guide!r}; choose one of {sorted(GUIDES)} or pass a Pyro guide object")
    scale = FALLBACK_SCALE if init_scale == "auto" else float(init_scale)
    if guide == "lowrank":
        return AutoLowRankMultivariateNormal(model, init_loc_fn=init, init_scale=scale, rank=rank)
    return GUIDES[guide](model, init_loc_fn=init, init_scale=scale)


def _check_init_scale(init_scale) -> None:
    if init_scale == "auto":
        return
    if isinstance(init_scale, str) or not isinstance(init_scale, (int, float)) or not init_scale > 0:
        raise ValueError(f"init_scale must be \"auto\" or a positive number (the guide's initial sd), got {init_scale!r}")


def curvature_scales(model: BayesianModel, data: FitData, values: Dict[str, torch.Tensor],
                     generator: torch.Generator, num_batches: int = FISHER_BATCHES) -> Dict[str, torch.Tensor]:
    """Per-coordinate sd 1/√Λ_kk of the tempered posterior's diagonal precision at ``values``, estimated.

    Λ_kk = a / Var_prior(w_k) + (1/T)·Σᵢ F_kk(xᵢ), with ``a`` the prior's tempering factor and F the
    Fisher information of one data point, E_{y∼p(y|x,w)}[(∂_k log p(y | x, w))²]: the expected
    Hessian of −log p(y | x, w) (Gauss–Newton), so it is right away from the mode too, where the
    empirical Fisher of the observed y would count the residuals. It is measured without per-example
    gradients: with labels ŷ drawn from the model, the scores of different data points are
    independent with mean zero, so the squared gradient of a minibatch's (scaled) log-likelihood is
    an unbiased estimate of the minibatch's summed Fisher; ``num_batches`` i.i.d. minibatches are
    averaged. For a Gaussian posterior these are the mean-field optimum's sds, 1/√Λ_kk (Bishop 2006,
    §10.1.2). Sites with constrained support (a learned noise scale) are left out.
    """
    with torch.no_grad(), poutine.block():
        prototype = poutine.trace(model).get_trace(*next(data.random_batches(1, generator)), data.dataset_size)
    observed = [name for name, site in prototype.nodes.items() if site["type"] == "sample" and site["is_observed"]]
    if len(observed) != 1:  # a user's Pyro model with several observed sites: no Fisher estimate (fallback sds)
        return {}
    obs = observed[0]  # OBS_SITE for a BayesianModel; a user's lift-based model names its own
    real = [name for name, site in latent_sites(prototype).items()
            if name != obs and name in values and _is_real(site["fn"].support)]
    if not real:
        return {}
    precision = {}
    for name in real:
        site = prototype.nodes[name]
        var = site["fn"].variance.expand(site["value"].shape)
        scale = site["scale"] if site["scale"] is not None else 1.0
        precision[name] = torch.where(torch.isfinite(var) & (var > 0), scale / var, torch.zeros_like(var)).detach()
    leaves = {name: values[name].detach().clone().requires_grad_(True) for name in real}
    fisher = {name: torch.zeros_like(leaf) for name, leaf in leaves.items()}
    N = data.dataset_size
    for xb, _ in data.random_batches(num_batches, generator):
        with torch.no_grad(), poutine.block():
            drawn = poutine.trace(poutine.condition(model, data=values)).get_trace(xb, None, N).nodes
        if obs not in drawn:  # a model that does not sample its likelihood without targets: no Fisher estimate
            return {}
        y_model = drawn[obs]["value"]
        trace = poutine.trace(poutine.condition(model, data={**values, **leaves})).get_trace(xb, y_model, N)
        site = trace.nodes[obs]
        log_lik = (site["fn"].log_prob(site["value"]) * site["scale"]).sum()
        grads = torch.autograd.grad(log_lik, list(leaves.values()), allow_unused=True)
        for name, g in zip(leaves, grads):
            if g is not None:  # E[g²] = s²·Σ_batch F with s = (1/T)·N/B, so g²/s estimates (1/T)·N·F̄
                fisher[name] += g.detach() ** 2 / (site["scale"] * num_batches)
    return {name: (precision[name] + fisher[name]).rsqrt() for name in real}


def _is_real(support) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def initialise_scales(guide, model: BayesianModel, data: FitData, seed: int,
                      start: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """Set a built-in guide's initial sds to `curvature_scales` at its starting point (init_scale="auto").

    No sd starts above ``FALLBACK_SCALE`` (0.01): weights the data hardly touch at the start
    (Fisher ≈ 0) would otherwise start at the prior's sd·√T, and a network whose weights all carry
    that much noise learns slowly (digits MLP, 600 steps: accuracy 0.23, or loss 771–792 instead of
    704–710 with the sds capped at 0.25 and 0.1 of the weights' RMS). Wider sds grow quickly under
    `ControlVariateELBO`; the curvature matters where the posterior is narrower than 0.01 (cold T,
    large N), which a fixed start would have to shrink towards through noisy gradients.
    The low-rank guide's marginal sd is its diagonal part times √(1 + Σ_j cov_factor_kj²), so its
    diagonal part is divided by that factor.
    """
    generator = torch.Generator().manual_seed(seed + 1)
    x0, y0 = next(iter(data.epoch()))
    guide(x0, y0, data.dataset_size)  # builds the guide's parameters
    start = model.initial_values() if start is None else start
    sds = curvature_scales(model, data, start, generator)
    sds = {name: sd.clamp(max=FALLBACK_SCALE) for name, sd in sds.items()}
    if isinstance(guide, AutoNormal):
        for name, sd in sds.items():
            sd = torch.where(torch.isfinite(sd), sd, torch.full_like(sd, FALLBACK_SCALE))
            deep_setattr(guide.scales, name, PyroParam(sd, guide.scale_constraint, guide._event_dims[name]))
        return
    flat = []
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        size = math.prod(guide._unconstrained_shapes[name])
        flat.append(sds[name].reshape(-1) if name in sds else
                    torch.full((size,), FALLBACK_SCALE, dtype=guide.loc.dtype, device=guide.loc.device))
    sd = torch.cat(flat).to(guide.loc)
    sd = torch.where(torch.isfinite(sd), sd, torch.full_like(sd, FALLBACK_SCALE))
    if isinstance(guide, AutoLowRankMultivariateNormal):
        sd = sd / (1 + guide.cov_factor.detach().pow(2).sum(-1)).sqrt()
    guide.scale = PyroParam(sd, guide.scale_constraint)

