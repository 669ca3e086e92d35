"""SVI's step rule on the driver (`SVIRule`, `SVIRun`), and the loops that run it (`run_svi`, `optimise`)."""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from ...model.bayesian_model import BayesianModel
from ...model.potential import Objective
from ...model.tempering import likelihood_scale
from ..._util import checkpoint as ckpt
from ..._util.checks import is_invalid_parameter_error
from ..data import FitData
from ..divergence import DivergenceCheck, loss_floor, nonfinite_start_message
from .. import driver
from ..map import example_batch
from .elbo import ControlVariateELBO, FlatELBO


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


def flatten_parameters(runs: Sequence[List[torch.nn.Parameter]]) -> torch.Tensor:
    """One ``(K, P)`` tensor whose row k's storage run k's parameters become views of (values unchanged).

    An optimiser stepping the parameters in place then writes θ, so the driver's state ``"theta"``
    is the variational parameters themselves, never a stale copy (`SVIRule`). `unflatten_parameters`
    gives each parameter its own storage back. Every run's parameters have the same shapes (K
    copies of one guide)."""
    params = [p for run in runs for p in run]
    if not runs[0]:
        raise ValueError("the guide has no parameters to optimise")
    first = params[0]
    if any(p.dtype != first.dtype or p.device != first.device for p in params):
        raise ValueError("the guide's parameters must share one dtype and device, got "
                         f"{sorted({(str(p.dtype), str(p.device)) for p in params})}")
    flat = torch.stack([torch.cat([p.detach().reshape(-1) for p in run]) for run in runs])
    for k, run in enumerate(runs):
        offset = 0
        for p in run:
            p.data = flat[k, offset:offset + p.numel()].view_as(p)
            offset += p.numel()
    return flat


def unflatten_parameters(runs: Sequence[List[torch.nn.Parameter]]) -> None:
    """Each parameter in its own storage again (undoes `flatten_parameters`; values unchanged)."""
    for run in runs:
        for p in run:
            p.data = p.data.clone()


class SVIRun:
    """One SVI run's Pyro side, set up under the current global RNG: the ELBO of ``(model, guide)``
    (`FlatELBO` on ``objective``'s compiled potential where it applies; otherwise Pyro's ``Trace_ELBO``, or
    `ControlVariateELBO` on top of it) with the guide's parameters built, its `DivergenceCheck`, and the state of
    the global RNG after that set-up, where its ELBO draws continue."""

    def __init__(self, model: BayesianModel, guide, data: FitData, lr: float, num_particles: int = 1,
                 control_variate: bool = False, floor_kind: str = "elbo", desc: str = "svi",
                 objective: Optional[Objective] = None):
        self.model, self.guide, self.N = model, guide, int(data.dataset_size)
        self.elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                               max_plate_nesting=1)
        self.loss_fn = self.elbo(model, guide)
        x0, y0 = example_batch(data)
        with pyro.settings.context(module_local_params=True):
            self.loss_fn(x0, y0, self.N)  # builds the guide's parameters
        self.flat = FlatELBO.build(guide, objective, control_variate, num_particles)
        self.cv = ControlVariateELBO(model, guide, self.elbo) if control_variate and self.flat is None else None
        self.params = [p for _, p in self.loss_fn.named_parameters()]
        # the floor's trace draws from the global RNG too (kept in this order: the same draws as before the driver)
        self.check = DivergenceCheck(desc, lr, floor=loss_floor(model, x0, y0, self.N, floor_kind),
                                     unit=self.N * likelihood_scale(model.temperature, model.tempering))
        device = self.params[0].device if self.params else torch.device("cpu")
        self.rng = ckpt.rng_state(device)


class SVIRule:
    """The SVI step rule: per run, one Adam step on the negative ELBO of ``(model, guide_k)`` per minibatch.

    **State.** The rule owns the Pyro side — K `SVIRun` (ELBO, guide and its parameters) — and the
    driver's state holds the numbers: ``"theta"`` ``(K, P)`` is the guides' unconstrained variational
    parameters (AutoNormal's locs and unconstrained scales; the low-rank/full-rank guide's loc, scale
    and factor), flattened *as one storage*: guide k's ``nn.Parameter`` objects are views of row k
    (`flatten_parameters`), so the Adam steps on the guides write θ, and restoring θ restores the
    guides. ``"optimiser"`` and ``"scheduler"`` are one ``torch.optim.Adam`` over every run's
    parameter groups (`param_groups`: the covariance factors at ``lr/√width``; Adam is elementwise, so
    this is K separate optimisers) and its exponential decay from ``lr`` to ``lr · lr_decay`` over
    ``steps`` — for K = 1 exactly the optimiser of the loop before the driver. ``"rng"``: run k's
    state of torch's global RNG, where its ELBO draws ε continue (a step swaps it in and out, so the
    runs' draws are independent of each other and of the data order, and a resumed run draws the same
    ε). Nothing is copied per step but the RNG states (a few kB). With ``average_from`` (the default length's
    polish, `run_svi`): ``"average"`` ``(K, P)``, the running mean of θ over the steps after ``average_from`` (the
    scheduler's ``last_epoch`` counts the steps), one in-place update per step.

    **Divergence.** The loss stays a device tensor (no host read per step; the driver reads it in
    blocks). A step whose distributions get invalid parameters (Pyro's validation raises
    ``ValueError`` once a guide parameter is NaN or inf) yields loss NaN and that run is frozen: its
    remaining steps up to the driver's next read return NaN without computing, and the driver's
    `DivergenceCheck` then names the first diverged step and the learning rate.
    """

    def __init__(self, runs: Sequence[SVIRun], lr: float, lr_decay: float, steps: int,
                 average_from: Optional[int] = None):
        self.runs, self.lr = list(runs), float(lr)
        self.average_from = average_from  # Polyak–Ruppert: θ averaged over the steps after this one (`run_svi`)
        self.gamma = float(lr_decay) ** (1.0 / max(1, steps))
        self.theta = flatten_parameters([run.params for run in self.runs])
        self._diverged = [False] * len(self.runs)
        self._invalid: List[Optional[str]] = [None] * len(self.runs)  # why a run's failed step failed

    @property
    def checks(self) -> List[DivergenceCheck]:
        return [run.check for run in self.runs]

    def lr_at(self, step: int) -> float:
        """The learning rate after ``step`` (0-based) steps of the exponential decay."""
        return self.lr * self.gamma ** (step + 1)

    def init(self, theta: torch.Tensor) -> Dict[str, Any]:
        if theta.shape != self.theta.shape:
            raise ValueError(f"θ of shape {tuple(theta.shape)} for {len(self.runs)} runs of "
                             f"{self.theta.shape[1]} parameters")
        with torch.no_grad():
            if theta.data_ptr() != self.theta.data_ptr():
                self.theta.copy_(theta)
        groups = [g for run in self.runs for g in param_groups(run.loss_fn, self.lr)]
        opt = torch.optim.Adam(groups, lr=self.lr)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=self.gamma)
        state = {"theta": self.theta, "optimiser": opt, "scheduler": sched, "rng": [dict(run.rng) for run in self.runs]}
        if self.average_from is not None:
            state["average"] = torch.zeros_like(self.theta)
        return state

    def averaged(self, state: Dict[str, Any]) -> int:
        """How many steps ``state["average"]`` holds: those taken after ``average_from``."""
        return max(0, state["scheduler"].last_epoch - self.average_from)

    def _loss(self, k: int, x, y) -> Optional[torch.Tensor]:
        """Run k's negative ELBO estimate (detached), its gradient accumulated; ``None`` if the run diverged."""
        run = self.runs[k]
        try:
            if run.flat is not None:
                loss, value = run.flat(x, y, run.N)
            elif run.cv is None:
                loss = run.loss_fn(x, y, run.N)
                value = loss.detach()
            else:
                loss, value = run.cv(x, y, run.N)
        except ValueError as err:
            if not is_invalid_parameter_error(err):
                raise
            self._diverged[k], self._invalid[k] = True, str(err).splitlines()[0]
            return None
        loss.backward()
        return value

    def update(self, state: Dict[str, Any], batch: driver.Batch,
               generators: Sequence[torch.Generator]) -> Tuple[Dict[str, Any], torch.Tensor]:
        device = self.theta.device
        nan = torch.full((), math.nan, dtype=self.theta.dtype, device=device)
        opt = state["optimiser"]
        opt.zero_grad()  # a frozen (diverged) run's parameters keep grad None: Adam leaves them alone
        outer = ckpt.rng_state(device)  # what else draws from the global RNG (a user's DataLoader) keeps its stream
        values = []
        for k in range(len(self.runs)):
            if self._diverged[k]:
                values.append(nan)
                continue
            ckpt.set_rng_state(state["rng"][k], device)
            value = self._loss(k, *batch.member(k))
            state["rng"][k] = ckpt.rng_state(device)
            values.append(nan if value is None else value.reshape(()))
        ckpt.set_rng_state(outer, device)
        opt.step()
        state["scheduler"].step()
        if self.average_from is not None and self.averaged(state):
            with torch.no_grad():
                state["average"] += (self.theta - state["average"]) / self.averaged(state)
        return state, torch.stack(values)

    def save(self, state: Dict[str, Any]) -> Dict[str, Any]:
        return {"theta": state["theta"].detach().clone(), "optimiser": state["optimiser"].state_dict(),
                "scheduler": state["scheduler"].state_dict(), "rng": [dict(r) for r in state["rng"]]}

    def restore(self, saved: Dict[str, Any]) -> Dict[str, Any]:
        state = self.init(saved["theta"].to(self.theta))
        state["optimiser"].load_state_dict(saved["optimiser"])
        state["scheduler"].load_state_dict(saved["scheduler"])
        state["rng"] = [dict(r) for r in saved["rng"]]
        return state

    def nonfinite_start(self, theta: torch.Tensor, batch: driver.Batch, values: List[float]) -> str:
        """Why the loss is not finite at step 0: the sites whose log density is not finite at the guide's
        first draw (from the starting parameters ``theta``)."""
        k = next(i for i, v in enumerate(values) if not math.isfinite(v))
        if self._invalid[k] is not None:
            return (f"the loss cannot be evaluated at the starting point (step 0, before any update), so the "
                    f"learning rate is not the cause: a distribution got invalid parameters ({self._invalid[k]}); "
                    "check the prior, the likelihood, the guide's start and the data")
        with torch.no_grad():
            self.theta.copy_(theta)  # the run stops here: back to where step 0 evaluated the loss
        run, (x, y) = self.runs[k], batch.member(k)
        with pyro.settings.context(module_local_params=True):
            return _nonfinite_start(run.model, run.guide, x, y, run.N, values[k])


def run_svi(runs: Sequence[SVIRun], data: FitData, steps: int, lr: float, lr_decay: float, seeds: Sequence[int],
            progress: Optional[bool], desc: str, checkpoint: Optional[str] = None,
            fingerprint: Optional[Callable[[torch.Tensor], Dict[str, Any]]] = None,
            average_from: Optional[int] = None) -> driver.Result:
    """K SVI runs (`SVIRun`, run k's data order from ``seeds[k]``) on the driver; the guides are trained in place.

    ``checkpoint``: a file for the driver's state, under the fingerprint ``fingerprint(θ₀)`` (θ₀ the
    guides' starting parameters, flattened ``(K, P)``). ``average_from``: the guides end at the average of their
    parameters over the steps after this one (Polyak & Juditsky 1992), not at the last step's."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if average_from is not None and checkpoint is not None:
        # only the default length's polish averages, and a checkpointed fit keeps the length it was given
        raise ValueError("average_from is not checkpointed: pass one of checkpoint and average_from")
    rule = SVIRule(runs, lr, lr_decay, steps, average_from)
    try:
        fp = None if checkpoint is None else fingerprint(rule.theta)
        with pyro.settings.context(module_local_params=True):
            result = driver.drive(rule, rule.theta, data, steps=steps, seeds=seeds, desc=desc, progress=progress,
                                  checks=rule.checks, lr_at=rule.lr_at, checkpoint=checkpoint, fingerprint=fp)
        if average_from is not None and rule.averaged(result.state):
            with torch.no_grad():
                rule.theta.copy_(result.state["average"])
        return result
    finally:
        unflatten_parameters([run.params for run in rule.runs])


def optimise(model: BayesianModel, guide, data: FitData, num_steps: int, lr: float, lr_decay: float,
             num_particles: int, seed: int, progress: Optional[bool], desc: str, floor_kind: str = "elbo",
             control_variate: bool = False, checkpoint: Optional[str] = None,
             fingerprint: Optional[Callable[[torch.Tensor], Dict[str, Any]]] = None) -> driver.Result:
    """Minimise the negative ELBO of ``(model, guide)`` on the driver (`SVIRule`); the guide is trained in place.

    Returns the driver's `Result` (``loss`` ``(1, num_steps)``, ``wall_time``). Data order from
    ``seed`` (`pyro_bdl.infer.driver`); the ELBO's draws continue torch's global RNG from here. Stops
    with a `DivergenceError` naming ``lr`` when the loss diverges (`pyro_bdl.infer.divergence`;
    ``floor_kind``: ``"elbo"``, or ``"point"`` for a user's AutoDelta guide, whose loss is
    −log p̃(D, w)), read every 50 steps. ``control_variate``: use `ControlVariateELBO` (built-in
    guides under minibatches). ``checkpoint``, ``fingerprint``: as in `run_svi`.
    """
    run = SVIRun(model, guide, data, lr, num_particles, control_variate, floor_kind, desc)
    return run_svi([run], data, num_steps, lr, lr_decay, [seed], progress, desc, checkpoint, fingerprint)


def _nonfinite_start(model: BayesianModel, guide, x: torch.Tensor, y: torch.Tensor, N: int, value: float) -> str:
    """Why the loss is not finite at step 0: the sites whose log density is not finite at the guide's first draw."""
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(x, y, N)
        trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y, N)
        trace.compute_log_prob()
    return nonfinite_start_message(trace, value)


