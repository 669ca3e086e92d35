"""One driver for gradient-based methods: a step rule run over minibatches, for K stacked runs at once.

A *step rule* (as in the ``posteriors`` package and NumPyro's kernels) is the method's update and
nothing else::

    state = rule.init(theta0)                          # theta0: (K, P), K independent runs
    state, loss = rule.update(state, batch, generators)  # one step on a batch; loss: (K,)

on the flat unconstrained θ of [`Objective`][pyro_bdl.model.potential.Objective]. `drive` owns the rest:

* **minibatching** — run k draws its epochs from `FitData.epoch` with its own generator
  (seeded with ``seeds[k]``), so each run has its own data order and augmentation, exactly the
  batches a single run with that seed sees; the K batches of a step are stacked to ``(K, B, ...)``
  (rows of tensor data by one gather of the K runs' indices, `MemberBatches`).
  Full-batch data without augmentation are passed once, shared by every run (`Batch.shared`).
* **divergence checks** — losses stay on the device in a ``(K, steps)`` history that is read to the
  host every ``check_every`` steps (one synchronisation, not one per step) and passed to each run's
  `pyro_bdl.infer.divergence.DivergenceCheck` step by step; the first step's loss is read at once,
  so a start that is already non-finite is reported as such (``rule.nonfinite_start``).
* **checkpoint = the driver's state** — rule state, step, loss history, every generator and the
  wall time, saved atomically with `pyro_bdl._util.checkpoint` under one fingerprint at every
  ``checkpoint_every``-th epoch boundary and at the end; a resumed run is bit-identical to an
  uninterrupted one.
* **progress** and **wall time**; the caller builds the ``info`` schema (`info`): ``loss``
  ``(K, steps)``, ``options``, ``wall_time``.

Batches follow θ: every batch is moved to ``theta0``'s device, its floating-point tensors to θ's dtype.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple

import torch

from .._util import checkpoint as ckpt
from .._util import progress as progress_bars
from ..model.inputs import Inputs
from .data import FitData
from .divergence import DivergenceCheck, DivergenceError


@dataclass
class Batch:
    """One step's data for K runs: ``x`` ``(K, B, ...)`` (a tuple of such for multi-input networks) and
    ``y`` ``(K, B, ...)``; or, when ``shared``, one ``(B, ...)`` batch every run uses."""

    x: Inputs
    y: torch.Tensor
    shared: bool

    def member(self, k: int) -> Tuple[Inputs, torch.Tensor]:
        """Run ``k``'s ``(x, y)``."""
        if self.shared:
            return self.x, self.y
        x = tuple(part[k] for part in self.x) if isinstance(self.x, tuple) else self.x[k]
        return x, self.y[k]


class StepRule(Protocol):
    """What `drive` needs of a method: a pure update on a state, and the state as plain data."""

    def init(self, theta: torch.Tensor) -> Dict[str, Any]:
        """The state at ``theta`` ``(K, P)``."""

    def update(self, state: Dict[str, Any], batch: Batch,
               generators: Sequence[torch.Generator]) -> Tuple[Dict[str, Any], torch.Tensor]:
        """One step: the new state and the ``(K,)`` loss at the state before the step."""

    def save(self, state: Dict[str, Any]) -> Dict[str, Any]:
        """The state as tensors and plain data (checkpoint)."""

    def restore(self, saved: Dict[str, Any]) -> Dict[str, Any]:
        """The state from `save`'s output."""


def _move(x: Inputs, like: torch.Tensor) -> Inputs:
    """``x`` on ``like``'s device; floating-point parts in its dtype too (labels keep theirs)."""
    if isinstance(x, tuple):
        return tuple(_move(part, like) for part in x)
    return x.to(like) if x.is_floating_point() else x.to(like.device)


def _stack(parts: List[Inputs]) -> Inputs:
    if isinstance(parts[0], tuple):
        return tuple(torch.stack(p) for p in zip(*parts))
    return torch.stack(parts)


class MemberBatches:
    """The minibatches of K runs, run k shuffled and augmented with its own generator (module docs)."""

    def __init__(self, data: FitData, seeds: Sequence[int], like: torch.Tensor):
        self.data, self.like = data, like
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        # One run's batch is used as it comes (no stacking, no copy); full-batch data without
        # augmentation are the same batch for every run.
        self.shared = len(self.generators) == 1 or (not data.minibatched and data.augment is None)
        # Minibatches that are rows of the data tensors: run k's epoch order is still its own permutation,
        # but the K runs' rows of a step are gathered by one index (K, B) instead of K gathers and a stack.
        # Only for `FitData.epoch` itself: a source with its own `epoch` (SWAG's i.i.d. batches) is iterated.
        self.gathered = not self.shared and type(data).epoch is FitData.epoch and data.indexable
        self._iters: List[Any] = []

    def new_epoch(self) -> None:
        if self.gathered:
            order = torch.stack([self.data.permutation(g) for g in self.generators])  # (K, N)
            self._iters = [iter([order[:, rows] for rows in self.data.batch_rows()])]
            return
        gens = self.generators[:1] if self.shared else self.generators
        self._iters = [iter(self.data.epoch(g)) for g in gens]

    def next(self) -> Batch:
        if self.gathered:
            x, y = self.data.rows(next(self._iters[0]))
            return Batch(_move(x, self.like), _move(y, self.like), False)
        try:
            parts = [next(it) for it in self._iters]
        except StopIteration:
            raise ValueError("the DataLoader yielded fewer batches in an epoch than len(loader); the driver needs a "
                             "fixed number of batches per epoch") from None
        if self.shared:
            x, y = parts[0]
            return Batch(_move(x, self.like), _move(y, self.like), True)
        return Batch(_move(_stack([p[0] for p in parts]), self.like), _move(torch.stack([p[1] for p in parts]), self.like),
                     False)

    # Random state outside the runs' generators: a user DataLoader shuffles with torch's global RNG or
    # its own generator; both are saved so that a resumed epoch draws the same batches.
    def state(self) -> Dict[str, Any]:
        loader_gen = getattr(self.data.loader, "generator", None)
        return {"generators": [g.get_state() for g in self.generators], "global": ckpt.rng_state(),
                "loader": None if loader_gen is None else loader_gen.get_state()}

    def restore(self, state: Dict[str, Any]) -> None:
        for g, s in zip(self.generators, state["generators"]):
            g.set_state(s)
        ckpt.set_rng_state(state["global"])
        loader_gen = getattr(self.data.loader, "generator", None)
        if loader_gen is not None and state["loader"] is not None:
            loader_gen.set_state(state["loader"])


@dataclass
class Result:
    """What `drive` returns: the final rule ``state``, the loss history ``(K, steps)`` and the wall time (s)."""

    state: Dict[str, Any]
    loss: torch.Tensor
    wall_time: float


def drive(rule: StepRule, theta0: torch.Tensor, data: FitData, *, steps: int, seeds: Sequence[int], desc: str,
          progress: Optional[bool] = None, checks: Optional[Sequence[DivergenceCheck]] = None,
          lr_at: Optional[Callable[[int], float]] = None, checkpoint: Optional[str] = None,
          fingerprint: Optional[Dict[str, Any]] = None, checkpoint_every: int = 1,
          check_every: int = 50) -> Result:
    """Run ``rule`` from ``theta0`` ``(K, P)`` for ``steps`` steps (module docs).

    Args:
        rule: the method's `StepRule`.
        theta0: the K starting points, stacked.
        data: the fit's data; ``seeds[k]`` seeds run k's data order and noise.
        desc, progress: the progress bar's label and switch.
        checks: one `DivergenceCheck` per run (``None``: non-finite losses only).
        lr_at: the learning rate after step i (named by a divergence message).
        checkpoint, fingerprint: file and run identity (`pyro_bdl._util.checkpoint`); saved every
            ``checkpoint_every`` epochs and at the end.
        check_every: steps between reads of the loss history (host synchronisations).
    """
    K = theta0.shape[0]
    if len(seeds) != K:
        raise ValueError(f"need one seed per run: {len(seeds)} seeds for {K} runs")
    per_epoch = data.num_batches
    batches = MemberBatches(data, seeds, theta0[:0])
    checks = list(checks) if checks is not None else [DivergenceCheck(desc, math.nan) for _ in range(K)]
    loss = torch.empty(K, steps, dtype=theta0.dtype, device=theta0.device)
    saved = ckpt.load(checkpoint, fingerprint) if checkpoint is not None else None
    if saved is None:
        state, step, elapsed = rule.init(theta0), 0, 0.0
    else:
        state, step, elapsed = rule.restore(saved["rule"]), int(saved["step"]), float(saved["wall_time"])
        loss[:, :step] = saved["loss"].to(loss)
        batches.restore(saved["batches"])
        for c, start in zip(checks, saved["check_start"]):
            c.start = start
    started = time.perf_counter()
    resumed_at = step  # a boundary just loaded is not saved again
    read = step  # the loss history up to `read` has been checked

    def check_losses(upto: int) -> None:
        nonlocal read
        if upto <= read:
            return
        values = loss[:, read:upto].tolist()  # the one host synchronisation per check_every steps
        for i in range(upto - read):
            lr = None if lr_at is None else lr_at(read + i)  # one schedule value per step, not per run
            for k in range(K):
                checks[k].check(values[k][i], read + i, lr=lr)
        bar.set_postfix(loss=f"{values[0][-1]:.4g}")
        read = upto

    def save_state() -> None:
        ckpt.save(checkpoint, fingerprint, {
            "rule": rule.save(state), "step": step, "loss": loss[:, :step].clone(), "batches": batches_state,
            "check_start": [c.start for c in checks], "wall_time": elapsed + time.perf_counter() - started})

    batches_state = batches.state() if checkpoint is not None else None
    with progress_bars.bar(steps, desc, progress) as bar:
        bar.update(step)
        while step < steps:
            if step % per_epoch == 0:
                if checkpoint is not None:
                    batches_state = batches.state()  # what a checkpoint at this boundary resumes from
                    if step > resumed_at and (step // per_epoch) % checkpoint_every == 0:
                        check_losses(step)
                        save_state()
                batches.new_epoch()
            try:
                batch = batches.next()
                theta_before = state["theta"].detach().clone() if step == 0 else None  # optimisers step in place
                state, value = rule.update(state, batch, batches.generators)
            except DivergenceError:
                check_losses(step)  # a divergence the rule (or its batches) finds may follow one in the unread history
                raise
            loss[:, step] = value.detach()
            if step == 0:
                start = value.detach().tolist()
                if not all(math.isfinite(v) for v in start):
                    explain = getattr(rule, "nonfinite_start", None)
                    raise FloatingPointError(explain(theta_before, batch, start) if explain is not None else
                                             f"the loss is {start} at the starting point (step 0, before any "
                                             "update): check the prior, the likelihood and the data")
            step += 1
            bar.update()
            if step - read >= check_every:
                check_losses(step)
        check_losses(step)
        if checkpoint is not None and step % per_epoch == 0:
            batches_state = batches.state()
        if checkpoint is not None and (saved is None or int(saved["step"]) < steps):
            save_state()
    return Result(state, loss, elapsed + time.perf_counter() - started)


def info(loss: torch.Tensor, options: Dict[str, Any], wall_time: float, **extra: Any) -> Dict[str, Any]:
    """The one ``info`` schema of driver methods: ``loss`` ``(K, steps)`` (each run's loss per step),
    ``options`` (the method's options as plain data), ``wall_time`` (seconds, summed over resumes)."""
    return {"loss": loss.detach().cpu(), "options": _plain(options), "wall_time": float(wall_time), **extra}


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return getattr(value, "__qualname__", type(value).__qualname__)
