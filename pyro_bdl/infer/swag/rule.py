"""SWAG's step rule on the driver: `SWAGRule` (heavy-ball SGD on the flat θ of K stacked runs, the SWAG
moments in its state), its batch source `_Batches` (i.i.d. minibatches and the burn-in for auto rates),
`train_runs` (K runs on `pyro_bdl.infer.driver.drive`, results written into SWAG guides) and `train_swag`
(one run, the Pyro-user entry point)."""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils._pytree import tree_map

from ..._util import checkpoint as checkpoints
from ..._util.checks import is_invalid_parameter_error
from ...guides.swag import SWAG
from ...model import batchnorm
from ...model.inputs import take_rows
from ...model.potential import Objective
from ...model.tempering import likelihood_scale
from .. import driver
from ..data import FitData
from ..divergence import DivergenceCheck, DivergenceError, loss_floor
from ..map import MAPRule, example_batch
from .whitening import use_dense
from .noise import (AUTO_CAP, EQUIPARTITION_POINTS, EXTRAPOLATION_WARNING, LR_CEILING, LR_PROBE_BATCHES,
                    STABILITY_HALVINGS, GradientNoise, _start_auto, equipartition_directions, exploration_lr,
                    far_start_advice)

#: the driver's checkpoint of SWAG runs (`train_runs`); files of the loop before the driver are not read
CHECKPOINT_KIND = "pyro_bdl.swag.driver"


def snapshot_every(dataset_size: int, batch_size: int, momentum: float) -> int:
    """Steps between snapshots with ``swa_lr="auto"``: with auto rates the iterate relaxes in ≈ N/(2B) steps
    (Fisher ≈ Hessian) and the momentum forgets in 1/(1 − β) steps, so snapshots the longer of the two apart are
    nearly independent."""
    return max(1, round(dataset_size / (2 * batch_size)), round(1 / (1 - momentum)))


def expected_snapshots(data: FitData, epochs: int, swa_start: int, swa_lr: Any, momentum: float) -> int:
    """The snapshots one run collects: one per epoch past ``swa_start`` (numeric ``swa_lr``), or one every
    `snapshot_every` steps (auto)."""
    if swa_lr != "auto":
        return epochs - swa_start
    every = snapshot_every(data.dataset_size, data.random_batch_size, momentum)
    return max(1, (epochs - swa_start) * data.num_batches // every)


def swag_learning_rate(epoch: int, lr: float, swa_lr: float, swa_start: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based) in Maddox et al. (2019), with t = epoch/swa_start:

    lr for t ≤ 0.5; lr·(1 − (1 − swa_lr/lr)·(t − 0.5)/0.4) for 0.5 < t ≤ 0.9; swa_lr for t > 0.9
    (so constant ``swa_lr`` while snapshots are collected).
    """
    if swa_start <= 0:
        return swa_lr
    t = epoch / swa_start
    ratio = swa_lr / lr
    if t <= 0.5:
        factor = 1.0
    elif t <= 0.9:
        factor = 1.0 - (1.0 - ratio) * (t - 0.5) / 0.4
    else:
        factor = ratio
    return lr * factor


@contextlib.contextmanager
def _weights_valid(lr: float):
    """A distribution refusing NaN/inf weights (where Pyro validates: the burn-in's gradients on the traced path) is
    SWAG diverging: say so, naming lr."""
    try:
        yield
    except ValueError as err:
        if not is_invalid_parameter_error(err):
            raise
        raise FloatingPointError(f"SWAG diverged: the weights became NaN or inf (a distribution got invalid "
                                 f"parameters); lower lr (now {lr:g}) or check the data scale") from None


class SWAGRule(MAPRule):
    """SWAG's step rule (`pyro_bdl.infer.driver`) for K runs stacked as θ ``(K, P)``.

    Heavy-ball SGD (torch's update: b ← βb + g, θ ← θ − ε·b, b = g at a fresh start) on the per-data-point
    objective in temperature-free units, T·L(θ) = T·U(θ)/N (module docs; U includes the log-Jacobian,
    as the guide's Delta sites do), with the schedule `swag_learning_rate` per epoch. With
    ``swa_lr="auto"`` each run, from ``swa_start`` on, has its own noise estimate, rates ε_k (g ← ε ⊙ g,
    step 1), stability cap, burn-in and instability guard (`GradientNoise`, `_start_auto`); its
    minibatches are then i.i.d. (`_Batches`). The SWAG moments of every run — mean, Welford's squared
    deviations, the ring of the last ``rank`` deviations (`pyro_bdl.guides.SWAG.collect`'s update, elementwise,
    so run k's moments are what run k alone would collect) — are part of the state, collected at the end of
    every epoch past ``swa_start`` (numeric ``swa_lr``) or every ``every`` steps (auto). The losses and
    gradients of the K runs come from `MAPRule.value_and_grad` (one vmapped forward and one backward; one
    run at a time for networks vmap cannot batch).
    """

    def __init__(self, objective: Objective, data: FitData, *, epochs: int, swa_start: int, lr: Sequence[float],
                 swa_lr: Any, momentum: float, rank: int, collect: bool, preconditioner: str = "auto"):
        # one exploration step per run (lr="auto": each from its own start's curvature, `exploration_lr`)
        self.lrs = [float(r) for r in lr]
        super().__init__(objective, data.dataset_size, max(self.lrs), 1.0, epochs * data.num_batches)
        model = objective.model
        self.data, self.per_epoch = data, data.num_batches
        self.epochs, self.swa_start, self.swa_lr, self.beta = epochs, swa_start, swa_lr, float(momentum)
        self.auto, self.rank, self.collect = swa_lr == "auto", rank, collect
        self.dense = self.auto and use_dense(preconditioner, objective)
        self.temperature = model.temperature
        self.norm_mode = (model.network.batch_statistics if batchnorm.has_batchnorm(model.net)
                          else contextlib.nullcontext)
        self.every = snapshot_every(self.N, data.random_batch_size, momentum)
        self.state: Optional[Dict[str, Any]] = None  # the latest state (the burn-in at swa_start works on it)

    def loss(self, theta: torch.Tensor, x, y: torch.Tensor) -> torch.Tensor:
        """T·L(θ) = T·(U(θ)/N) on a batch, the objective SGD follows (its gradient exactly as the loop before the
        driver took it, ``(t * loss).backward()``)."""
        return self.temperature * (self.objective.potential(theta, x, y, self.N) / self.N)

    def stacked_loss(self, theta: torch.Tensor, x, y: torch.Tensor, shared: bool) -> Optional[torch.Tensor]:
        """`loss` of K runs at once (`MAPRule.stacked_loss`), or ``None``."""
        u = self.objective.stacked_potential(theta, x, y, self.N, shared)
        return None if u is None else self.temperature * (u / self.N)

    def schedule(self, epoch: int, run: int = 0) -> float:
        """Run ``run``'s exploration rate in ``epoch`` (`swag_learning_rate`; towards lr/5 before auto rates)."""
        lr = self.lrs[run]
        return swag_learning_rate(epoch, lr, lr / 5 if self.auto else float(self.swa_lr), self.swa_start)

    def lr_at(self, step: int) -> float:
        """The rate of ``step``'s epoch (auto: run 0's geometric mean rate), named by a divergence message."""
        epoch = step // self.per_epoch
        record = self.state["lr"][0] if self.state is not None else []
        return record[epoch] if epoch < len(record) else self.schedule(epoch)

    def init(self, theta: torch.Tensor) -> Dict[str, Any]:
        """The state at θ ``(K, P)``: no momentum yet (every run fresh), no snapshots (a count per run: a run's
        collection can restart), no noise estimate; ``anchor`` (θ where each run's collection starts, with the
        noise moments accepted there) is set by the burn-in (`begin_auto`)."""
        K, P = theta.shape
        zeros = theta.new_zeros
        self.state = {"theta": theta.detach().clone(), "momentum": zeros(K, P), "fresh": [True] * K, "step": 0,
                      "mean": zeros(K, P), "sq_dev": zeros(K, P), "deviations": zeros(K, self.rank, P),
                      "count": [0] * K, "noise": [None] * K, "rates": None, "lr": [[] for _ in range(K)],
                      "anchor": theta.detach().clone(), "anchor_noise": [None] * K, "restarts": [0] * K}
        return self.state

    def update(self, state: Dict[str, Any], batch: driver.Batch,
               generators: Sequence[torch.Generator]) -> Tuple[Dict[str, Any], torch.Tensor]:
        """One SGD step of every run (class docs); returns the state and each run's L = U/N before the step."""
        self.state = state
        step, theta = state["step"], state["theta"]
        epoch, i = divmod(step, self.per_epoch)
        auto = self.auto and epoch >= self.swa_start
        N, B = self.N, self.data.random_batch_size
        if i == 0:  # a new epoch: its rates (auto: from each run's noise measured so far)
            if auto:
                state["rates"] = torch.stack([n.rates(N, B, self.beta, n.cap) for n in state["noise"]])
                for record, rates in zip(state["lr"], state["rates"]):
                    record.append(float(rates.log().mean().exp()))  # the record is the rates' geometric mean
            else:
                for k, record in enumerate(state["lr"]):
                    record.append(self.schedule(epoch, k))
        with _weights_valid(self.lr), self.norm_mode():
            scaled, grad = self.value_and_grad(theta, batch)  # T·L and ∇(T·L), (K,) and (K, P)
        if auto:
            for k, noise in enumerate(state["noise"]):
                noise.update(grad[k])
            if not self.dense:
                grad = grad * state["rates"]
            else:  # dense (small models): each run's L·(ε ⊙ Lᵀg)
                grad = torch.stack([n.precondition(g, r) for n, g, r in zip(state["noise"], grad, state["rates"])])
        rates = [1.0] if auto else [record[-1] for record in state["lr"]]
        buf = state["momentum"]
        buf.mul_(self.beta).add_(grad)
        for k, fresh in enumerate(state["fresh"]):
            if fresh:  # a fresh optimiser's first step: b = g
                buf[k].copy_(grad[k])
                state["fresh"][k] = False
        if all(r == rates[0] for r in rates):
            theta.add_(buf, alpha=-rates[0])
        else:  # runs with their own exploration steps (lr="auto")
            theta.sub_(buf * theta.new_tensor(rates)[:, None])
        value = scaled / self.temperature if self.temperature != 1 else scaled.clone()  # L, per data point
        if auto:
            for k, v in enumerate(scaled.tolist()):  # one host read per step, as the loop before the driver did
                noise = state["noise"][k]
                if noise.left_bound(v):
                    self.restart_collection(state, k, step)
                    value[k] = noise.reference / self.temperature
        if self.collect and ((auto and (step + 1) % self.every == 0) or
                             (not self.auto and i == self.per_epoch - 1 and epoch + 1 > self.swa_start)):
            self.collect_snapshot(state)
        state["step"] = step + 1
        return state, value

    @torch.no_grad()
    def restart_collection(self, state: Dict[str, Any], k: int, step: int) -> None:
        """Run k's loss left the burn-in's bound while collecting (the burn-in's instability test, kept while
        the rates follow the measured noise): restart its collection at half the rates from where it began
        (``anchor``: θ and the noise moments the burn-in accepted), fresh momentum, no snapshots.

        The snapshots and gradients taken since the run began to leave the mode are not the stationary
        distribution's, and the SWA mean they pollute is no place to resume: one snapshot at 4× the start's loss
        put the mean where every later batch failed the test again, and 52 halvings froze the collection
        (c = 2⁵², a spread of 10⁻¹⁴ scaled up). After `STABILITY_HALVINGS` halvings in all (burn-in included),
        a `DivergenceError` names the fixes (`far_start_advice`)."""
        noise = state["noise"][k]
        if noise.factor <= 2.0 ** -STABILITY_HALVINGS:
            err = DivergenceError(f"swag diverged at step {step}: run {k}'s loss left the burn-in's bound after "
                                  f"{STABILITY_HALVINGS} halvings of its auto rates")
            err.what, err.step, err.run = err.args[0], step, k
            raise err
        noise.factor /= 2
        count, mean, m2 = state["anchor_noise"][k]
        noise.count, noise.mean, noise.m2 = count, mean.clone(), m2.clone()
        state["theta"][k].copy_(state["anchor"][k])
        for name in ("mean", "sq_dev", "deviations"):
            state[name][k].zero_()
        state["count"][k] = 0
        state["rates"][k] = noise.rates(self.N, self.data.random_batch_size, self.beta, noise.cap)
        state["fresh"][k] = True
        state["restarts"][k] += 1

    @staticmethod
    @torch.no_grad()
    def collect_snapshot(state: Dict[str, Any], runs: Optional[Sequence[int]] = None) -> None:
        """`pyro_bdl.guides.SWAG.collect` for every run (or ``runs``): θ̄ += (θ − θ̄)/n, S += (θ − θ̄_old)(θ − θ̄_new),
        D's newest row, with n each run's own count."""
        runs = list(range(len(state["count"]))) if runs is None else list(runs)
        counts = [state["count"][k] + 1 for k in runs]
        idx = torch.tensor(runs, device=state["theta"].device)
        theta, mean = state["theta"][idx], state["mean"][idx]
        n = theta.new_tensor(counts)[:, None]
        delta = theta - mean
        mean = mean + delta / n
        deviation = theta - mean
        state["mean"][idx] = mean
        state["sq_dev"][idx] += delta * deviation
        slots = torch.tensor([(c - 1) % state["deviations"].shape[1] for c in counts], device=idx.device)
        state["deviations"][idx, slots] = deviation
        for k, c in zip(runs, counts):
            state["count"][k] = c

    def member_closures(self, theta: torch.Tensor):
        """A leaf copy of one run's θ ``(P,)``, its gradient ``gradient(x, y)`` (L, ∇(T·L) left in ``.grad``) and
        Hessian-vector products ``hvp(v, (x, y))`` of T·L (double backward): what `_start_auto` steps on."""
        theta = theta.detach().clone().requires_grad_(True)
        t, N = self.temperature, self.N

        def gradient(xb, yb):
            theta.grad = None
            with _weights_valid(self.lr), self.norm_mode():
                loss = self.objective.potential(theta, xb, yb, N) / N
            (t * loss).backward()
            return loss

        def hvp(v, batch):
            xb, yb = batch
            point = theta.detach().requires_grad_(True)
            with self.norm_mode():
                loss = t * self.objective.potential(point, xb, yb, N) / N
            (g,) = torch.autograd.grad(loss, point, create_graph=True)
            (hv,) = torch.autograd.grad(g @ v, point)
            return hv.detach()

        return theta, gradient, hvp

    def example_gradients(self, theta: torch.Tensor):
        """Per-example gradients ``(x, y) ↦ (rows, P)`` of T·L at run ``theta``'s current value (T·U_i/N with U_i the
        potential of row i alone, scaled to the data set), for a dense whitening's exact noise covariance; ``None``
        for a traced model (vmap needs the compiled density)."""
        if not self.objective.compiled:
            return None
        t, N, objective = self.temperature, self.N, self.objective

        def one(th, xi, yi):
            row = lambda a: a.unsqueeze(0)
            return t * objective.potential(th, tree_map(row, xi), row(yi), N) / N

        per_row = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0, 0))
        return lambda xb, yb: per_row(theta.detach(), xb, yb)

    def begin_auto(self, k: int, generator: torch.Generator) -> None:
        """Run k's noise measurement, stability cap and burn-in (`_start_auto`) from its current iterate, drawn
        from its own generator; then fresh momentum at the new rates."""
        state = self.state
        theta, gradient, hvp = self.member_closures(state["theta"][k])
        try:
            state["noise"][k] = _start_auto(theta, self.data, generator, self.beta, gradient, self.temperature,
                                            self.every, AUTO_CAP * self.lrs[k], hvp,
                                            snapshots=(self.epochs - self.swa_start) * self.per_epoch // self.every,
                                            dense=self.dense,
                                            example_gradients=self.example_gradients(theta) if self.dense else None)
        except DivergenceError as err:  # the burn-in's halvings ran out: the step and run it happened at
            err.what, err.step, err.run = f"{err.args[0]} (run {k}, at step {state['step']})", state["step"], k
            raise
        with torch.no_grad():
            state["theta"][k].copy_(theta)
            state["anchor"][k].copy_(theta)
        noise = state["noise"][k]
        state["anchor_noise"][k] = (noise.count, noise.mean.clone(), noise.m2.clone())
        state["fresh"][k] = True

    def save(self, state: Dict[str, Any]) -> Dict[str, Any]:
        """The state as tensors and plain data (noise estimates as their state dicts), copied."""
        out = {k: (v.detach().clone() if torch.is_tensor(v) else list(v) if isinstance(v, list) else v)
               for k, v in state.items() if k not in ("noise", "lr", "fresh", "anchor_noise")}
        out["anchor_noise"] = [None if a is None else {"count": a[0], "mean": a[1].clone(), "m2": a[2].clone()}
                               for a in state["anchor_noise"]]
        out["noise"] = [None if n is None else {k: (v.clone() if torch.is_tensor(v) else v)
                                                for k, v in n.state_dict().items()} for n in state["noise"]]
        out["lr"], out["fresh"] = [list(r) for r in state["lr"]], list(state["fresh"])
        out["explore_lr"] = list(self.lrs)  # after a retry of train_runs, not what lr="auto" computes afresh
        return out

    def restore(self, saved: Dict[str, Any]) -> Dict[str, Any]:
        """The state from `save`'s output (noise estimates rebuilt)."""
        state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in saved.items()}
        state["lr"], state["fresh"] = [list(r) for r in saved["lr"]], list(saved["fresh"])
        if "explore_lr" in saved:  # checkpoints before the retry kept no exploration steps
            self.lrs = [float(r) for r in state.pop("explore_lr")]
            self.lr = max(self.lrs)
        noises = []
        for k, s in enumerate(saved["noise"]):
            noise = None
            if s is not None:
                noise = GradientNoise(state["theta"][k])
                noise.load_state_dict(s)
            noises.append(noise)
        state["noise"] = noises
        K = state["theta"].shape[0]
        if not isinstance(state["count"], list):  # checkpoints before per-run counts and restarts
            state["count"] = [int(state["count"])] * K
            state["anchor"], state["restarts"] = state["theta"].clone(), [0] * K
            saved = dict(saved, anchor_noise=[None if n is None else {"count": n.count, "mean": n.mean, "m2": n.m2}
                                              for n in noises])
        state["anchor_noise"] = [None if a is None else (a["count"], a["mean"].clone(), a["m2"].clone())
                                 for a in saved["anchor_noise"]]
        self.state = state
        return state


class _Batches:
    """The fit's data as `pyro_bdl.infer.driver.drive` sees it for SWAG: reshuffled epochs (`FitData.epoch`) while
    exploring; with ``swa_lr="auto"``, from ``swa_start`` on, i.i.d. minibatches (`FitData.random_batches`), run k's
    burn-in (`SWAGRule.begin_auto`) drawn from its own generator just before its first such batch — the order of
    random draws of one SWAG run. Everything else is the `FitData`'s."""

    def __init__(self, data: FitData, rule: SWAGRule, runs: int):
        self._data, self._rule, self._runs, self._opened = data, rule, runs, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)

    @property
    def minibatched(self) -> bool:
        # Stacked runs never share a batch: each draws its own i.i.d. batches (and burn-in) once collecting.
        return self._data.minibatched or self._runs > 1

    def epoch(self, generator: Optional[torch.Generator] = None):
        k = self._opened % self._runs  # the driver opens the runs' epochs in run order
        self._opened += 1
        rule = self._rule
        epoch = rule.state["step"] // rule.per_epoch
        if rule.auto and epoch >= rule.swa_start:
            return self._iid(k, generator, epoch == rule.swa_start)
        return self._data.epoch(generator)

    def _iid(self, k: int, generator: torch.Generator, first: bool):
        if first:  # lazily, at the epoch's first batch: after every earlier draw of run k's generator
            self._rule.begin_auto(k, generator)
        yield from self._data.random_batches(self._data.num_batches, generator)


#: fewer snapshots than this give a noisy, too small covariance: `train_runs` warns before the run and after restarts
FEW_SNAPSHOTS = 10


#: halvings of an automatic exploration step that diverged before `train_runs` gives up (a factor 32 in all)
EXPLORATION_RETRIES = 5


class _RunCheck(DivergenceCheck):
    """`DivergenceCheck` of run ``run`` of a stack: its `DivergenceError` names the run (``err.run``), so that
    `train_runs` can retry that run alone at a smaller step."""

    def __init__(self, run: int, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.run = run

    def check(self, value: float, step: int, lr: Optional[float] = None) -> None:
        try:
            super().check(value, step, lr)
        except DivergenceError as err:
            err.run = self.run
            raise


def _start_lr(rule: SWAGRule, theta: torch.Tensor, data: FitData, seed: int, momentum: float) -> float:
    """``lr="auto"``: `exploration_lr` at θ₀ on `LR_PROBE_BATCHES` i.i.d. minibatches drawn by a generator of
    their own (seeded ``seed``, so the run's data order is untouched)."""
    _, _, hvp = rule.member_closures(theta)
    generator = torch.Generator().manual_seed(int(seed))
    batches = list(data.random_batches(LR_PROBE_BATCHES, generator))
    return exploration_lr([lambda v, b=b: hvp(v, b) for b in batches], theta.numel(), theta, momentum)


def train_runs(guides: Sequence[SWAG], data: FitData, seeds: Sequence[int], *, epochs: int, swa_start: int,
               lr: float, swa_lr: Any, momentum: float, progress: Optional[bool] = None,
               checkpoint: Optional[str] = None, fingerprint: Optional[Dict[str, Any]] = None, collect: bool = True,
               desc: str = "swag", preconditioner: str = "auto") -> Tuple[List[Dict[str, Any]], torch.Tensor, float]:
    """K SWAG runs stacked on the driver (`SWAGRule`), run k from guide k's ``loc`` with seed ``seeds[k]``; the
    results are written into the guides (iterate and moments). Returns each run's history (per-epoch ``loss`` and
    ``lr``, ``snapshot_every``, ``covariance_scale``, ``direction_scales``), the loss per step ``(K, steps)`` and
    the wall time."""
    objective = guides[0].objective
    model = objective.model
    N, K = data.dataset_size, len(guides)
    theta0 = torch.stack([g.loc_unconstrained.detach() for g in guides])
    rule = SWAGRule(objective, data, epochs=epochs, swa_start=swa_start, lr=[LR_CEILING if lr == "auto" else lr] * K,
                    swa_lr=swa_lr, momentum=momentum, rank=guides[0].rank, collect=collect,
                    preconditioner=preconditioner)
    if lr == "auto":  # each run's step from the curvature at its own start, on a batch of its own seed
        rule.lrs = [_start_lr(rule, theta0[k], data, seeds[k], momentum) for k in range(K)]
        rule.lr = max(rule.lrs)
    every = rule.every
    if swa_lr == "auto" and collect and (epochs - swa_start) * data.num_batches < FEW_SNAPSHOTS * every:
        warnings.warn(f"SWAG will collect only {(epochs - swa_start) * data.num_batches // every} nearly independent "
                      f"snapshots ({(epochs - swa_start) * data.num_batches} steps past swa_start, one per {every}); "
                      "its covariance will be noisy and too small. Raise epochs or use minibatches (batch_size).",
                      RuntimeWarning, stacklevel=4)
    x0, y0 = example_batch(data)
    with torch.no_grad():  # verifies the compiled density once, outside vmap
        objective.potential(theta0[0], x0, y0, N)
    floor = loss_floor(model, x0, y0, N, "point") / N  # the loss is per data point: floor / N, one nat is 1/T
    unit = likelihood_scale(model.temperature, model.tempering)
    for attempt in range(EXPLORATION_RETRIES + 1):
        checks = [_RunCheck(k, desc, rule.lrs[k], floor=floor, unit=unit) for k in range(K)]
        try:
            result = driver.drive(rule, theta0, _Batches(data, rule, K), steps=epochs * data.num_batches,
                                  seeds=seeds, desc=desc, progress=progress, checks=checks, lr_at=rule.lr_at,
                                  checkpoint=checkpoint, fingerprint=fingerprint)
            break
        except DivergenceError as err:
            # lr="auto" only (an explicit lr is the user's: the error names it). `exploration_lr`'s bound is on
            # each minibatch Hessian alone; the product of many rotating ones can still grow (module docs), so
            # the diverging run restarts from its θ₀, same seed, at half its step. The other runs restart
            # unchanged, so a stacked member still equals the member fitted alone.
            k = getattr(err, "run", None)
            collecting_from = swa_start * data.num_batches
            if swa_lr == "auto" and collect and err.step is not None and err.step >= collecting_from:
                # The exploration finished; the posterior-matching rates, measured where collection starts,
                # diverged there. That start is far from a mode, which a smaller exploration lr cannot mend.
                raise DivergenceError(
                    f"{err.what}, in SWAG's collection (from step {collecting_from}; swa_lr='auto' sets its rates "
                    f"from the curvature where collection starts). The collection started far from a mode: "
                    f"{far_start_advice(swa_start)}.") from err
            if lr != "auto" or k is None or attempt == EXPLORATION_RETRIES:
                raise
            warnings.warn(f"SWAG's automatic exploration step lr={rule.lrs[k]:g} diverged ({err.args[0][:80]}...); "
                          f"restarting from the start at lr={rule.lrs[k] / 2:g}. Pass a smaller numeric lr to skip "
                          "the failed attempt.", RuntimeWarning, stacklevel=4)
            rule.lrs[k] /= 2
            rule.lr = max(rule.lrs)
            if checkpoint is not None and os.path.exists(checkpoint):
                os.remove(checkpoint)  # the failed attempt's (it would resume the divergence)
    state = rule.state = result.state
    empty = [k for k, n in enumerate(state["count"]) if n == 0]
    if collect and empty:  # a run shorter than one snapshot interval (or restarted late): its final iterate
        SWAGRule.collect_snapshot(state, empty)
    histories = []
    losses = result.loss.tolist()
    B = data.random_batch_size
    for k, guide in enumerate(guides):
        with torch.no_grad():
            guide.loc_unconstrained.copy_(state["theta"][k])
            guide.swa_mean.copy_(state["mean"][k])
            guide.swa_sq_dev.copy_(state["sq_dev"][k])
            guide.swa_deviations.copy_(state["deviations"][k])
            guide.swa_count.fill_(state["count"][k])
        per_epoch = []
        for e in range(epochs):  # the per-epoch mean, summed as the loop before the driver summed it
            total = 0.0
            for v in losses[k][e * data.num_batches:(e + 1) * data.num_batches]:
                total = total + v
            per_epoch.append(total / data.num_batches)
        noise = state["noise"][k]
        history: Dict[str, Any] = {"loss": per_epoch, "lr": state["lr"][k],
                                   "snapshot_every": every if swa_lr == "auto" else data.num_batches,
                                   "collection_restarts": state["restarts"][k]}
        history["covariance_scale"] = (1.0 if noise is None or swa_lr != "auto" else
                                       noise.covariance_scale(noise.rates(N, B, momentum, noise.cap), N, B, momentum))
        if history["covariance_scale"] > EXTRAPOLATION_WARNING:
            # c is 1/factor (the stability trial's halvings) or, where every coordinate is held at the stability
            # cap, min_k ε_k*/ε_k; off a mode either is unbounded (2⁵² measured: a frozen collection whose ~0
            # spread was scaled up), and the linear picture that licenses the rescaling does not hold there.
            warnings.warn(f"SWAG's covariance scale is c = {history['covariance_scale']:.3g} (run {k}): the "
                          "collection ran at rates c times below those that match the posterior (halved for "
                          "stability, or held at the stability cap), so its covariance is extrapolated by c from "
                          "the linear picture, which does not hold there. The collection probably started far "
                          f"from a mode: {far_start_advice()}.", RuntimeWarning, stacklevel=4)
        if swa_lr == "auto" and collect and state["restarts"][k] and state["count"][k] < FEW_SNAPSHOTS:
            warnings.warn(f"SWAG run {k}'s collection left the burn-in's bound {state['restarts'][k]} time(s) and "
                          f"restarted from its start at half the rates, keeping only {state['count'][k]} snapshots; "
                          f"its covariance will be noisy and too small. Raise epochs, or {far_start_advice()}.",
                          RuntimeWarning, stacklevel=4)
        history["direction_scales"] = torch.ones(0)
        # Step 4's per-direction cut reads a one-dimensional slice, biased narrow off the posterior covariance's
        # eigenvectors (`equipartition_directions`): a guard for a network's rank-K members, not for a full sample
        # covariance (the "full" variant), whose correlated directions it would cut most.
        if noise is not None and swa_lr == "auto" and collect and guide.variant != "full":
            history["direction_scales"] = _equipartition(rule, guide, data, seeds[k], history["covariance_scale"])
        histories.append(history)
    return histories, result.loss, result.wall_time


def _equipartition(rule: SWAGRule, guide: SWAG, data: FitData, seed: int, covariance_scale: float) -> torch.Tensor:
    """Step 4 of the auto rule (`equipartition_directions`) on one fitted run, ∇U on a fixed batch drawn with ``seed``."""
    N = data.dataset_size
    x, y = data._host_full()
    points = min(N, max(EQUIPARTITION_POINTS, 4 * data.random_batch_size))
    idx = torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:points].to(y.device)
    xb, yb = data.to_device((take_rows(x, idx), y[idx]))

    def grad_u(point):
        point = point.detach().requires_grad_(True)
        with rule.norm_mode():
            (g,) = torch.autograd.grad(rule.objective.potential(point, xb, yb, N), point)
        return g

    return equipartition_directions(guide, guide.scale * covariance_scale, grad_u)


def train_swag(guide: SWAG, data: FitData, *, epochs: int, swa_start: int, lr: float, swa_lr: Any,
               momentum: float, seed: int, progress: Optional[bool] = None, checkpoint: Optional[str] = None,
               collect: bool = True, desc: str = "swag") -> Dict[str, Any]:
    """SGD with momentum on the per-data-point MAP objective, collecting SWAG snapshots (one run of `train_runs`).

    Args:
        guide: a set-up [`SWAG`][pyro_bdl.guides.SWAG] guide; its ``loc`` is the iterate.
        epochs, swa_start, lr, swa_lr, momentum: the schedule (see `swag_learning_rate`).
        seed: seeds the data order (and augmentation).
        checkpoint: the driver's state, saved after every epoch; if the file exists, the run resumes from it.
        collect: ``False`` runs plain SGD with the same schedule (the benchmark's baseline).

    Returns:
        ``{"loss": per-epoch mean loss, "lr": per-epoch learning rate, "wall_time", "snapshot_every",
        "covariance_scale", "direction_scales"}``.
    """
    theta = guide.loc_unconstrained
    fp = None if checkpoint is None else checkpoints.fingerprint(
        guide.objective.model, data, CHECKPOINT_KIND,
        dict(epochs=epochs, swa_start=swa_start, lr=lr, swa_lr=swa_lr, momentum=momentum, collect=collect,
             rank=guide.rank), seed, start=checkpoints.tensor_hash(theta.detach()), num_parameters=guide.num_parameters)
    (history,), loss, wall_time = train_runs([guide], data, [seed], epochs=epochs, swa_start=swa_start, lr=lr,
                                             swa_lr=swa_lr, momentum=momentum, progress=progress,
                                             checkpoint=checkpoint, fingerprint=fp, collect=collect, desc=desc)
    history["wall_time"], history["steps_loss"] = wall_time, loss
    return history
