"""Maximum a posteriori weights: a torch optimiser on the tempered log joint, run by the driver.

MAP maximises the tempered log joint of the constrained weights,

    ŵ = argmax_w log p̃(D, w),   log p̃ = s_prior · log p(w) + s_lik · (N/B) · Σ_{i∈batch} log p(yᵢ | xᵢ, w),

the mode of the tempered posterior (which does not depend on T under posterior tempering). The
optimiser steps on the flat unconstrained θ of [`Objective`][pyro_bdl.model.potential.Objective] (w = t(θ),
identity for weights, log for a learned noise scale) with no log-Jacobian term, so the optimum is
the mode in w — what Pyro's AutoDelta guide finds — but each step costs one evaluation of the
compiled potential and its gradient instead of a Pyro trace of model and guide.

`MAPRule` is the step rule: ``K`` runs stacked as θ ``(K, P)``, their losses by ``torch.func.vmap``
over the compiled potential's flat hot path and their gradients by one backward pass (one plain
autograd call when K = 1), one torch optimiser on the stack (Adam by default, its fused kernel where
torch has one: elementwise, so a stacked run is the same optimisation as K separate ones), learning
rate decayed exponentially from ``lr`` to ``lr · lr_decay``. Deep ensembles
(`pyro_bdl.infer.ensemble`) use it with K members.

**Finishing with Newton steps, and the stationarity check.** Adam alone does not reach the mode at its defaults on
sharp or ill-conditioned posteriors (issue 13; notes/issue-13-mapsvi.md), for two measured reasons. (1) *Conditioning
and run length*: Adam's preconditioner is diagonal, so on a rotated ill-conditioned U (κ(XᵀX) = 10³) it moves along
the weak directions at the rate of gradient descent; full-batch Adam with 2000 steps stays 0.5–180 posterior sds off
(8000 steps: 0–1), and a faster lr decay makes it worse (the summed step Σₜ lrₜ falls short of the distance). (2)
*Noise floor*: with minibatches Adam's iterates jitter by ≈ lr per coordinate per step whatever the posterior's width,
so at the final lr·lr_decay = 10⁻³ they sit ≈ 1 sd off a posterior of sd 10⁻³ (N = 500, B = 5, T = 0.01), while full
batch lands on the mode; more steps do not help, a larger lr hurts. Neither is fixed by another fixed schedule, since
the posterior's width (∝ √T/√N) and conditioning vary by orders of magnitude across problems. So every run ends with
up to ``newton_steps`` damped Newton steps on the *full-data* potential (`pyro_bdl.infer.stationarity.newton_refine`:
Hessian–vector products, conjugate gradients, an Armijo line search so the potential never rises), which converge
quadratically near a mode whatever the conditioning and have no noise floor; on a Gaussian posterior one step is exact.
The Newton decrement λ = √(∇Uᵀ H⁻¹ ∇U) at the returned point — its distance from the mode in posterior sds — is the
check: ``info["stationarity_offset"]`` = λ/√P (RMS per direction), ``info["newton_decrement"]`` = λ, and a
`StationarityWarning` above 0.4 naming the fix. Where the Hessian at the point has negative curvature (most
networks) the decrement is not a distance to a mode: no Newton step is taken and the offset is None. Above 20 000 parameters no Newton step is taken and the check is a
cheap one (10 CG iterations on ≤ 1024 rows, about one extra epoch); with augmentation (the objective is an
expectation over augmentations, not the full data's U) neither runs and the offset is None.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import pyro
import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger, init_to_value

from .._util import checkpoint as ckpt
from ..model.bayesian_model import BayesianModel
from ..model.inputs import take_rows
from ..model.potential import Objective
from ..model.tempering import likelihood_scale
from ..posterior.samples import SamplesPosterior
from . import driver
from .data import FitData
from .divergence import DivergenceCheck, loss_floor, nonfinite_start_message
from .options import run_length
from .registry import register
from .stacking import StackedGradient
from .stationarity import NEWTON_STEPS, newton_refine, warn_point

OPTIMISERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
              "rmsprop": torch.optim.RMSprop}


def optimiser_class(optimiser: Union[str, type]) -> type:
    """The torch optimiser named by ``optimiser`` (a key of `OPTIMISERS` or a ``torch.optim.Optimizer`` subclass)."""
    if isinstance(optimiser, str) and optimiser in OPTIMISERS:
        return OPTIMISERS[optimiser]
    if isinstance(optimiser, type) and issubclass(optimiser, torch.optim.Optimizer):
        return optimiser
    raise ValueError(f"unknown optimiser {optimiser!r}; choose one of {sorted(OPTIMISERS)} or pass a "
                     "torch.optim.Optimizer subclass")


# Devices where torch's Adam, AdamW and SGD have fused kernels (torch checks only at the first step).
FUSED_DEVICES = ("cpu", "cuda")


def make_optimiser(optimiser: type, theta: torch.Tensor, lr: float) -> torch.optim.Optimizer:
    """``optimiser([θ], lr=lr)``, with its fused kernel where it has one for θ's device and dtype.

    θ is one ``(K, P)`` tensor, so the per-parameter loops of torch's default implementation are
    already gone; the fused kernel also does Adam's five elementwise passes in one (≈ 3× faster at
    P ≈ 5·10⁵ on a CPU). Same update up to rounding. Optimisers without one are built plainly."""
    if (theta.device.type in FUSED_DEVICES and theta.is_floating_point()
            and "fused" in inspect.signature(optimiser).parameters):
        return optimiser([theta], lr=lr, fused=True)
    return optimiser([theta], lr=lr)


class MAPRule:
    """The MAP step rule (module docs): minimise −log p̃(D_batch, w(θ)) with a torch optimiser.

    Args:
        objective: the model's flat parametrisation and potential.
        dataset_size: N (minibatches are scaled by N/B).
        lr, lr_decay, steps: the optimiser's step size, decayed to ``lr · lr_decay`` over ``steps``.
        optimiser: a torch optimiser class, called as ``optimiser([θ], lr=lr)``.
    """

    def __init__(self, objective: Objective, dataset_size: int, lr: float, lr_decay: float, steps: int,
                 optimiser: type = torch.optim.Adam):
        self.objective, self.N, self.lr, self.optimiser = objective, int(dataset_size), float(lr), optimiser
        self.gamma = float(lr_decay) ** (1.0 / max(1, steps))
        # Whether any site is transformed (a learned noise scale): only then is there a Jacobian to remove.
        self._jacobian = bool(objective.constrain(objective.initial())[1])
        # K > 1 runs: one vmapped forward and one backward, or one run at a time for a network vmap cannot batch
        self._stacked = StackedGradient(self.loss, self._single, self.stacked_loss)

    def loss(self, theta: torch.Tensor, x, y: torch.Tensor) -> torch.Tensor:
        """−log p̃(D_batch, w(θ)) of one run θ ``(P,)`` (no Jacobian: the mode in w).

        The compiled potential's flat hot path (`Objective.log_density`) with its log-Jacobian taken
        back out; a model whose sites are all unconstrained (no learned noise) has none to take out. A subclass that
        changes the loss changes `stacked_loss` with it (SWAG's T·U/N)."""
        log_density = self.objective.log_density(theta, x, y, self.N)
        if not self._jacobian:
            return -log_density
        _, log_dets = self.objective.constrain(theta)
        return -(log_density - sum(log_dets.values()))

    def stacked_loss(self, theta: torch.Tensor, x, y: torch.Tensor, shared: bool) -> Optional[torch.Tensor]:
        """`loss` of K runs θ ``(K, P)`` at once, ``(K,)``, where the objective batches a plain MLP by hand
        (`Objective.stacked_potential`); ``None`` otherwise (the caller vmaps `loss`). A transformed site's
        Jacobian is not taken out here, so such models (a learned noise scale) take the vmap."""
        return None if self._jacobian else self.objective.stacked_potential(theta, x, y, self.N, shared)

    def lr_at(self, step: int) -> float:
        """The learning rate after ``step`` (0-based) steps of the exponential decay."""
        return self.lr * self.gamma ** (step + 1)

    def _single(self, theta: torch.Tensor, x, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        t = theta.detach().requires_grad_(True)
        u = self.loss(t, x, y)
        return u.detach(), torch.autograd.grad(u, t)[0]

    def value_and_grad(self, theta: torch.Tensor, batch: driver.Batch) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(loss (K,), gradient (K, P))`` at θ ``(K, P)`` (`pyro_bdl.infer.stacking.StackedGradient` for K > 1)."""
        with pyro.validation_enabled(False):  # validation's data-dependent checks cannot run under vmap
            if theta.shape[0] == 1:  # views, not a copy of θ's size: the single run's hot path
                u, g = self._single(theta[0], *batch.member(0))
                return u.reshape(1), g.unsqueeze(0)
            return self._stacked(theta, batch.x, batch.y, batch.shared)

    def init(self, theta: torch.Tensor) -> Dict[str, Any]:
        theta = theta.detach().clone().requires_grad_(True)
        opt = make_optimiser(self.optimiser, theta, self.lr)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=self.gamma)
        return {"theta": theta, "optimiser": opt, "scheduler": sched}

    def update(self, state: Dict[str, Any], batch: driver.Batch,
               generators: Sequence[torch.Generator]) -> Tuple[Dict[str, Any], torch.Tensor]:
        theta = state["theta"]
        value, grad = self.value_and_grad(theta, batch)
        theta.grad = grad
        state["optimiser"].step()
        state["scheduler"].step()
        return state, value

    def save(self, state: Dict[str, Any]) -> Dict[str, Any]:
        return {"theta": state["theta"].detach().clone(), "optimiser": state["optimiser"].state_dict(),
                "scheduler": state["scheduler"].state_dict()}

    def restore(self, saved: Dict[str, Any]) -> Dict[str, Any]:
        state = self.init(saved["theta"])
        state["optimiser"].load_state_dict(saved["optimiser"])
        state["scheduler"].load_state_dict(saved["scheduler"])
        return state

    def nonfinite_start(self, theta: torch.Tensor, batch: driver.Batch, values: List[float]) -> str:
        """Why the loss is not finite at step 0: the sites whose log density is not finite there."""
        k = next(i for i, v in enumerate(values) if not math.isfinite(v))
        x, y = batch.member(k)
        model = self.objective.model
        with torch.no_grad(), poutine.block(), pyro.validation_enabled(False):
            sites = self.objective.to_constrained(theta[k].detach())
            trace = poutine.trace(poutine.condition(model, data=sites)).get_trace(x, y, self.N)
            trace.compute_log_prob()
        return nonfinite_start_message(trace, values[k])


def example_batch(data: FitData):
    """A batch of the data's batch size (for the divergence floor), drawn without touching any RNG."""
    if not data.user_loader:
        x, y = data.full()
        rows = slice(0, data.random_batch_size)
        return take_rows(x, rows), y[rows]
    with torch.random.fork_rng(devices=[]):
        return next(iter(data.epoch()))


def divergence_checks(model: BayesianModel, data: FitData, method: str, lr: float, K: int) -> List[DivergenceCheck]:
    """One `DivergenceCheck` per run of a point-estimate method (floor of −log p̃, unit N/T)."""
    x0, y0 = example_batch(data)
    N = data.dataset_size
    floor = loss_floor(model, x0, y0, N, "point")
    unit = N * likelihood_scale(model.temperature, model.tempering)
    return [DivergenceCheck(method, lr, floor=floor, unit=unit) for _ in range(K)]


def run_map(model: BayesianModel, data: FitData, theta0: torch.Tensor, seeds: Sequence[int], *, objective: Objective,
            steps: int, lr: float, lr_decay: float, optimiser: Union[str, type], desc: str,
            progress: Optional[bool], checkpoint: Optional[str] = None,
            fingerprint: Optional[Dict[str, Any]] = None,
            newton_steps: int = NEWTON_STEPS) -> Tuple[driver.Result, Dict[str, List[Optional[float]]]]:
    """K MAP runs from θ₀ ``(K, P)``, run k with seed ``seeds[k]``, stacked on the driver, each finished by up to
    ``newton_steps`` full-data Newton steps (`finish`); returns ``(result, check)``, ``result.state["theta"]`` the
    finished points and ``check`` their stationarity (`finish`)."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    rule = MAPRule(objective, data.dataset_size, lr, lr_decay, steps, optimiser_class(optimiser))
    with torch.no_grad():  # verifies the compiled density once, outside vmap
        x0, y0 = example_batch(data)
        objective.log_joint(objective.constrain(theta0[0].to(theta0))[0], x0, y0, data.dataset_size)
    result = driver.drive(rule, theta0, data, steps=steps, seeds=seeds, desc=desc, progress=progress,
                          checks=divergence_checks(model, data, desc, lr, theta0.shape[0]), lr_at=rule.lr_at,
                          checkpoint=checkpoint, fingerprint=fingerprint)
    theta, check = finish(rule, result.state["theta"].detach(), data, newton_steps, seeds)
    result.state["theta"] = theta
    return result, check


def finish(rule: MAPRule, theta: torch.Tensor, data: FitData, newton_steps: int,
           seeds: Sequence[int]) -> Tuple[torch.Tensor, Dict[str, List[Optional[float]]]]:
    """Each run's point θ_k ``(K, P)`` after up to ``newton_steps`` damped Newton steps on the full-data −log p̃
    (module docs; `pyro_bdl.infer.stationarity.newton_refine`, Hessian subsample seeded from ``seeds[k]``), and
    ``{"stationarity_offset": [λ_k/√P], "newton_decrement": [λ_k]}`` at the returned points (None with augmentation,
    for a run that is not finite, and where the Hessian has negative curvature: no Newton step is taken from there)."""
    K = theta.shape[0]
    none = {"stationarity_offset": [None] * K, "newton_decrement": [None] * K}
    if data.augment is not None:
        return theta, none
    out, check = [], {"stationarity_offset": [], "newton_decrement": []}
    loss = lambda t, x, y: rule.loss(t, x, y)
    with pyro.validation_enabled(False):
        for k in range(K):
            if not bool(torch.isfinite(theta[k]).all()):
                out.append(theta[k])
                check["stationarity_offset"].append(None)
                check["newton_decrement"].append(None)
                continue
            t, dec = newton_refine(loss, theta[k], data, newton_steps, seed=int(seeds[k]) + 3)
            out.append(t)
            # none above LARGE_PARAMS; no Laplace meaning at negative curvature
            defined = dec is not None and dec.positive and math.isfinite(dec.lam)
            check["stationarity_offset"].append(dec.rms if defined else None)
            check["newton_decrement"].append(dec.lam if defined else None)
    return torch.stack(out), check


def initial_theta(objective: Objective, values: Dict[str, torch.Tensor], x) -> torch.Tensor:
    """θ at ``values``; sites they leave out (a hierarchical prior's hyperparameters) start at their prior's
    median, as Pyro's ``init_to_value`` fallback does for an AutoDelta guide."""
    if all(n in values for n in objective.layout.names):
        return objective.initial(values)
    with torch.no_grad(), poutine.block(), InitMessenger(init_to_value(values=values)):
        trace = poutine.trace(objective.model).get_trace(x)
    return objective.initial({n: trace.nodes[n]["value"] for n in objective.layout.names})


def fresh_theta(objective: Objective, seed: int, x) -> torch.Tensor:
    """θ at ``model.initial_values(seed=seed)``: a fresh default initialisation of the network (an ensemble
    member's start, `pyro_bdl.infer.ensemble`), other sites at their prior median (`initial_theta`).

    When every latent site is a network weight (a compiled model without a learned noise scale), those values
    are exactly the weights `LiftedNetwork.initial_weights` draws, so they are used without the Pyro trace
    that `BayesianModel.initial_values` runs to find other sites: the same θ, without a per-member trace."""
    model = objective.model
    if objective.compiled and set(objective.layout.names) == set(model.weight_sites):
        return objective.initial(model.network.initial_weights(seed))
    return initial_theta(objective, model.initial_values(seed=seed), x)


def start_values(model: BayesianModel, init: Optional[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """The starting values: the model's initial values with ``init``'s sites replaced."""
    if init is not None and not isinstance(init, dict):
        raise TypeError(f"init must be a dict of initial values {{site: tensor}}, got {type(init).__name__}")
    start = model.initial_values()
    start.update(model.as_values(init or {}))
    return start


@register("map")
def fit_map(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool],
            steps: Optional[int] = None, epochs: Optional[int] = None, lr: float = 0.01, lr_decay: float = 0.1,
            init: Optional[Dict[str, torch.Tensor]] = None, optimiser: Union[str, type] = "adam",
            newton_steps: int = NEWTON_STEPS, checkpoint: Optional[str] = None) -> SamplesPosterior:
    """Maximum a posteriori weights, argmax_w log p̃(D, w) (module docs), with Adam by default.

    Args:
        steps / epochs: optimiser steps (default 2000), or passes over the data.
        lr, lr_decay: the optimiser's step size, decayed exponentially to ``lr * lr_decay``.
        init: starting values ``{site: tensor}`` (default [`BayesianModel.initial_values`][pyro_bdl.BayesianModel],
            the network's weights); sites left out start there too.
        optimiser: ``"adam"`` (default), ``"adamw"``, ``"sgd"``, ``"rmsprop"`` or a ``torch.optim.Optimizer`` class.
        newton_steps: damped Newton steps on the full-data potential that finish the run (default 5, stopping
            early once within 0.05 posterior sd of the mode; 0: none, the optimiser's point as before). Module docs.
        checkpoint: file where the run's state is saved after every epoch; rerunning resumes it.

    Returns a posterior with one chain of one draw, so ``predict`` gives the plug-in predictive.
    ``info``: ``loss`` ``(1, steps)`` (the optimiser's), ``options``, ``wall_time`` (`pyro_bdl.infer.driver.info`),
    ``stationarity_offset`` (the point's RMS distance from the mode in posterior sds, λ/√P; a `StationarityWarning`
    above 0.4) and ``newton_decrement`` (λ) — module docs.
    """
    num = run_length(data, steps, epochs, default=2000)
    optimiser_class(optimiser)
    check_newton_steps(newton_steps)
    checkpoint = ckpt.check_path(checkpoint)
    objective = Objective(model, data.example_x(2))
    theta0 = initial_theta(objective, start_values(model, init), data.example_x(2)).unsqueeze(0)
    options = {"steps": steps, "epochs": epochs, "lr": lr, "lr_decay": lr_decay,
               "optimiser": optimiser if isinstance(optimiser, str) else optimiser.__qualname__,
               "newton_steps": newton_steps}
    fp = None if checkpoint is None else ckpt.fingerprint(model, data, "map", options, seed,
                                                          start=ckpt.tensor_hash(theta0))
    result, check = run_map(model, data, theta0, [seed], objective=objective, steps=num, lr=lr, lr_decay=lr_decay,
                            optimiser=optimiser, desc="map", progress=progress, checkpoint=checkpoint, fingerprint=fp,
                            newton_steps=newton_steps)
    warn_point("map", num, check["stationarity_offset"], stacklevel=4)
    values = objective.to_constrained(result.state["theta"].detach()[0])
    samples = {k: v.detach().reshape(1, 1, *v.shape) for k, v in values.items()}
    return SamplesPosterior(model, samples, "map", info=driver.info(
        result.loss, options, result.wall_time, losses=result.loss[0].tolist(),
        stationarity_offset=check["stationarity_offset"][0], newton_decrement=check["newton_decrement"][0]))


def check_newton_steps(newton_steps) -> None:
    if isinstance(newton_steps, bool) or not isinstance(newton_steps, int) or newton_steps < 0:
        raise ValueError(f"newton_steps must be an integer ≥ 0 (0: no Newton steps after the optimiser), got "
                         f"{newton_steps!r}")
