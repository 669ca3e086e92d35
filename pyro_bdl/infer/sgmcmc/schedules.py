"""Step-size schedules, stages and draw steps of the SG-MCMC methods.

A run of K = epochs × batches steps is planned up front (`Plan`): the step size of
every step (in the units of the stage's ``lr``), its stage and the steps after which a draw is
kept. Stages:

* ``EXPLORE`` — noise-free steps (cSG-MCMC's exploration stage; the first half of the burn-in
  of the adaptive kernels, which moves from the initialisation to the posterior's bulk);
* ``WARMUP`` — noisy steps that are not kept (burn-in); the adaptive kernels estimate their
  preconditioner and friction here;
* ``SAMPLE`` — noisy steps with fixed kernel constants; draws and the temperature
  diagnostics come from these steps only.

A plan may also mark the last EXPLORE steps before each warm-up as a *descent*
(`exploration_descent`): the exploration's RMSprop step and momentum, but on the control-variate
gradient, re-anchored a few times (`descent_anchors`), and with the noise of temperature T, so
cSG-MCMC's warm-up starts in the tempered posterior's bulk instead of somewhere in the noise ball
of minibatch SGD, whose radius does not shrink with T.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import torch

EXPLORE, WARMUP, SAMPLE = 0, 1, 2


def constant_schedule(lr: float, num_steps: int) -> torch.Tensor:
    """ε_k = lr for k = 1, …, K: shape ``(K,)``."""
    return torch.full((num_steps,), float(lr), dtype=torch.float64)


def cycle_length(num_steps: int, cycles: int) -> int:
    """L = ⌈K / M⌉ steps per cycle."""
    return math.ceil(num_steps / cycles)


def cycle_position(num_steps: int, cycles: int) -> torch.Tensor:
    """r_k = mod(k − 1, L) / L ∈ [0, 1), the position of step k inside its cycle: ``(K,)``."""
    L = cycle_length(num_steps, cycles)
    k = torch.arange(1, num_steps + 1, dtype=torch.float64)
    return torch.remainder(k - 1, L) / L


def cyclical_schedule(lr: float, num_steps: int, cycles: int) -> torch.Tensor:
    """Zhang et al. (2020), eq. (1): α_k = α₀/2 · [cos(π · mod(k − 1, ⌈K/M⌉) / ⌈K/M⌉) + 1], ``(K,)``."""
    return float(lr) / 2 * (torch.cos(math.pi * cycle_position(num_steps, cycles)) + 1)


def sampling_stage(num_steps: int, cycles: int, exploration: float) -> torch.Tensor:
    """``(K,)`` booleans: True in the sampling stage (r_k ≥ β), False while exploring (r_k < β)."""
    return cycle_position(num_steps, cycles) >= exploration


def cyclical_draw_steps(num_steps: int, cycles: int, exploration: float, samples_per_cycle: int,
                        warmup: float = 0.0) -> torch.Tensor:
    """The (1-based) steps after which cSG-MCMC keeps a draw: ``samples_per_cycle`` per cycle.

    Each cycle's sampling stage, less its first fraction ``warmup`` (the adaptive kernels'
    warm-up), is split into ``samples_per_cycle`` equal consecutive blocks and the draw is taken
    at the end of each block, so the last draw of a cycle is its final step and no draw ever
    comes from the exploration stage. Raises ``ValueError`` if a cycle has fewer such steps than
    ``samples_per_cycle``.
    """
    L = cycle_length(num_steps, cycles)
    stage = sampling_stage(num_steps, cycles, exploration)
    steps = []
    for c in range(cycles):
        lo, hi = c * L, min((c + 1) * L, num_steps)  # 0-based [lo, hi)
        sampling = torch.nonzero(stage[lo:hi]).flatten() + lo + 1  # 1-based steps
        sampling = sampling[int(math.floor(warmup * len(sampling))):]
        n = len(sampling)
        if n < samples_per_cycle:
            raise ValueError(
                f"cycle {c + 1} of {cycles} has {n} sampling step(s) (K={num_steps} steps, L={L} per cycle, "
                f"exploration={exploration}) but samples_per_cycle={samples_per_cycle}; use more epochs, fewer "
                "cycles, a smaller exploration fraction or fewer samples per cycle"
                + (" (choose epochs·batches divisible by cycles)" if hi - lo < L else ""))
        for j in range(samples_per_cycle):
            steps.append(int(sampling[math.ceil((j + 1) * n / samples_per_cycle) - 1]))
    return torch.tensor(steps, dtype=torch.long)


def fewest_draw_steps(stage: torch.Tensor, cycles: int) -> int:
    """The fewest steps any cycle of ``stage`` (`cyclical_stages`) can keep a draw at: its SAMPLE steps, the
    sampling stage less its warm-up (the most ``samples_per_cycle`` can be)."""
    L = cycle_length(len(stage), cycles)
    return min(int((stage[c * L:(c + 1) * L] == SAMPLE).sum()) for c in range(cycles))


def cyclical_stages(num_steps: int, cycles: int, exploration: float, warmup: float) -> torch.Tensor:
    """``(K,)`` stage of every step of cSG-MCMC: EXPLORE, then WARMUP for the first fraction
    ``warmup`` of each sampling stage, then SAMPLE (``warmup=0``: no WARMUP)."""
    L = cycle_length(num_steps, cycles)
    noisy = sampling_stage(num_steps, cycles, exploration)
    stage = torch.where(noisy, SAMPLE, EXPLORE).to(torch.int8)
    for c in range(cycles):
        lo, hi = c * L, min((c + 1) * L, num_steps)
        idx = torch.nonzero(noisy[lo:hi]).flatten() + lo
        stage[idx[:int(math.floor(warmup * len(idx)))]] = WARMUP
    return stage


def _runs(flags: List[bool]) -> Iterator[Tuple[int, int]]:
    """``(start, end)`` of every maximal run of true ``flags`` (end exclusive): the stage windows of a plan."""
    k = 0
    while k < len(flags):
        if flags[k]:
            j = k
            while j < len(flags) and flags[j]:
                j += 1
            yield k, j
            k = j
        else:
            k += 1


def exploration_descent(stage: torch.Tensor, fraction: float) -> torch.Tensor:
    """``(K,)`` booleans: the last fraction ``fraction`` of every EXPLORE window that is followed by a
    WARMUP window (cSG-MCMC's exploration stages): the descent, where the chain moves on the
    control-variate gradient with the exploration's RMSprop step G and momentum 1 − α = 0.9, and the
    SGHMC noise √(2αGT) ξ of the target temperature.

    Why: noise-free SGD on minibatch gradients ends in a noise ball around the mode of stationary
    variance ≈ G·B/(2αH) per coordinate (B the minibatch gradient variance, H the curvature), which
    does not depend on T, while the tempered posterior's variance is T/H: at cold T the warm-up
    would start many posterior sds away and not relax in its tens of steps (measured: variance
    ratio 2.5 on a sharp regression at T = 0.01). The control-variate gradient's noise is
    ∝ ‖θ − θ̂‖² (each anchor shrinks it, SVRG's argument, Johnson & Zhang 2013), so the descent's
    stationary law is p_T up to that small noise: it ends in the target's bulk with about the
    target's spread. Noise-free, it would end at the mode itself, where a short warm-up reads
    E[ĝ²] low and (measured on a ReLU network at T ≤ 0.1) fits a step that diverges."""
    descent = torch.zeros(len(stage), dtype=torch.bool)
    st = stage.tolist()
    for k, j in _runs([s == EXPLORE for s in st]):
        if j < len(st) and st[j] == WARMUP:
            descent[j - int(math.ceil(fraction * (j - k))):j] = True
    return descent


def descent_anchors(descent: torch.Tensor, count: int = 3) -> torch.Tensor:
    """``(K,)`` booleans: where a descent window (`exploration_descent`) sets a new anchor at the
    chain's position: ``count`` equally spaced steps of each window, the first at its start."""
    anchors = torch.zeros(len(descent), dtype=torch.bool)
    for k, j in _runs(descent.tolist()):
        for i in range(count):
            anchors[k + (i * (j - k)) // count] = True
    return anchors


def epoch_draw_steps(epochs: int, steps_per_epoch: int, burnin: int, thin: int) -> torch.Tensor:
    """SGLD/SGHMC draws: the last step of every ``thin``-th epoch after ``burnin`` epochs (1-based)."""
    epochs_kept = torch.arange(burnin + thin, epochs + 1, thin)
    return epochs_kept * steps_per_epoch


def constant_stages(epochs: int, steps_per_epoch: int, burnin: int, explore: int) -> torch.Tensor:
    """``(K,)`` stages of SGLD/SGHMC: ``explore`` epochs EXPLORE, the rest of the burn-in WARMUP, then SAMPLE."""
    K = epochs * steps_per_epoch
    stage = torch.full((K,), SAMPLE, dtype=torch.int8)
    stage[:burnin * steps_per_epoch] = WARMUP
    stage[:explore * steps_per_epoch] = EXPLORE
    return stage


def window_resets(stage: torch.Tensor) -> torch.Tensor:
    """``(K,)`` booleans: where the adaptive kernels restart their moment means — the first step of
    every WARMUP window and its midpoint, so the frozen estimate comes from the second half of the
    warm-up, nearer stationarity (a two-window scheme in the spirit of Stan's adaptation)."""
    reset = torch.zeros(len(stage), dtype=torch.bool)
    for k, j in _runs((stage == WARMUP).tolist()):
        reset[k] = True
        reset[k + (j - k) // 2] = True
    return reset


@dataclass
class Plan:
    """What a run does at every step k = 1..K: step size (units of the stage's lr), stage, draws."""

    step_size: torch.Tensor  # (K,) float64
    stage: torch.Tensor  # (K,) int8: EXPLORE, WARMUP or SAMPLE
    draw_steps: torch.Tensor  # (D,) long, 1-based, increasing
    epochs: int
    steps_per_epoch: int
    #: ``(K,)`` booleans or None: EXPLORE steps that descend on the control-variate gradient (`exploration_descent`)
    descent: Optional[torch.Tensor] = None

    @property
    def num_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @property
    def noisy(self) -> torch.Tensor:
        """``(K,)`` booleans: the WARMUP and SAMPLE steps (``info["sampling_stage"]``; a descent's EXPLORE steps
        inject noise too, but are not in it: `exploration_descent`)."""
        return self.stage != EXPLORE
