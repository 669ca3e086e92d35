"""The SG-MCMC driver: one loop for every kernel, chains, checkpoints and the collected posterior."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Tuple, Union

import pyro
import torch

from ..._util import checkpoint as ckpt
from ..._util import progress as progress_bars
from ..._util.random import randn_like, spawn_seeds
from ...evaluate.diagnostics import sampler as temps
from ...model.bayesian_model import BayesianModel
from ...posterior.samples import SamplesPosterior
from ..data import FitData
from ..driver import info as driver_info
from ..divergence import DivergenceCheck, loss_floor
from ...model.inputs import num_rows, take_rows
from ...model.potential import Objective
from . import kernels as K
from .schedules import EXPLORE, SAMPLE, WARMUP, Plan, descent_anchors, window_resets


#: EMA decay of ĝ² in a control-variate warm-up: the chain starts at the anchor, with no spread, and the
#: step must track its spreading out to the stationary width within the window (0.99 forgets in ~100 steps)
WARMUP_EMA_DECAY = 0.9
#: ...and the step grows by at most this factor per step, so it never outruns the chain's spreading (a step
#: fitted to the anchor's near-zero gradients would throw the chain far out of the bulk)
WARMUP_STEP_GROWTH = 1.1
#: ...and the frozen sampling step at most this multiple of the warm-up's last step (`_freeze`)
FROZEN_STEP_CAP = 2.0


@dataclass
class Dynamics:
    """The update rule and its constants.

    ``preconditioner=None`` is the plain kernel: G = schedule × ``eps_per_lr`` and α =
    ``friction`` everywhere. Otherwise EXPLORE steps use the RMSprop step ``schedule`` /
    √EMA[ĝ²] without noise, WARMUP steps estimate the gradient moments and SAMPLE steps use the
    step and friction frozen from them (`.kernels`): ``"fisher"`` G = lr·T/E[ĝ²] with
    critical friction (floored at ``friction``), ``"rmsprop"`` G = lr/√E[ĝ²] with friction
    ``friction``. With ``noise_correction`` the estimated gradient noise is subtracted from the
    injected noise and α is raised where needed (`.kernels.valid_friction`).

    ``pool_windows`` (cSG-MCMC): a cycle's warm-up adds to the moment means of the earlier cycles' instead
    of starting afresh, and starts its step from the previous cycle's frozen step: a cycle's warm-up is
    a tenth of the cycle (tens of steps), too short to measure E[ĝ²] and B̂ on its own.

    ``gradient`` (adaptive kernels only): ``"plain"`` drives the chain with the minibatch
    gradient; ``"cv"`` with the control-variate gradient (`.kernels.control_variate`) at WARMUP
    and SAMPLE steps, anchored at the start of each warm-up window and re-anchored at its
    midpoint on the mean θ of its first half; ``"auto"`` drives the warm-up like ``"cv"``,
    measures both estimates' noise there and keeps the control variate for the sampling stage
    when `.kernels.prefer_control_variate` says it pays.
    """

    kernel: str  # "sgld" or "sghmc"
    temperature: float
    eps_per_lr: float = 1.0
    friction: float = 1.0
    preconditioner: Optional[str] = None
    noise_correction: bool = False
    gradient: str = "plain"  # "plain", "cv" or "auto"
    pool_windows: bool = False  # cSG-MCMC: pool the moment means over the cycles' warm-ups (see `run_chain`)
    #: per-coordinate floor of the frozen E[ĝ²] of the adaptive kernels (`Objective.prior_curvature`; set by `sample`)
    curvature_floor: Optional[torch.Tensor] = None


def _start_chain(theta0: torch.Tensor, seed: int) -> Dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    return {"epoch": 0, "theta": theta0.detach().clone(), "momentum": torch.zeros_like(theta0),
            "moments": K.init_moments(theta0)._asdict(), "frozen": None, "anchor": None,
            "plain_moments": K.init_moments(theta0)._asdict(), "cv": None, "cv_sum": None, "cv_count": 0,
            "frozen_once": False, "last_step": None, "warm_step": None, "guard": None,
            "draws": [], "draw_step_size": [], "draw_loss": [], "draw_kinetic": [], "draw_configurational": [],
            "loss": [], "kinetic": [], "configurational": [], "generator": generator.get_state()}


def _loader_generator(data: FitData) -> Optional[torch.Generator]:
    return getattr(data.loader, "generator", None) if data.loader is not None else None


def _rng_snapshot(data: FitData) -> Dict[str, Any]:
    """Random state outside the chain's own generator: torch's global RNG (a user DataLoader
    without a generator shuffles with it) and the DataLoader's generator, if it has one."""
    g = _loader_generator(data)
    return {"global": ckpt.rng_state(), "loader": None if g is None else g.get_state()}


def _restore_rng(data: FitData, snap: Dict[str, Any]) -> None:
    ckpt.set_rng_state(snap["global"])
    g = _loader_generator(data)
    if g is not None and snap["loader"] is not None:
        g.set_state(snap["loader"])


def _parts(xb, yb, split: bool):
    m = num_rows(xb)
    if not split or m < 2:
        return [(xb, yb)]
    h = m // 2
    return [(take_rows(xb, slice(None, h)), yb[:h]), (take_rows(xb, slice(h, None)), yb[h:])]


def _gradient(objective: Objective, theta, xb, yb, N: int, split: bool, anchor: Optional[Dict[str, torch.Tensor]]):
    """U and the gradient estimates of ∇U on a minibatch: ``(U, {"plain": (ĝ, B̂), "cv": (ĝ_cv, B̂_cv)})``.

    ``split`` estimates each estimate's noise B̂ from the batch's two halves (else B̂ is None, or 0
    for the full batch); ``"cv"`` is there when an ``anchor`` {θ̂, ∇U(θ̂)} is given (one more
    gradient evaluation, at θ̂, on the same rows)."""
    m = num_rows(xb)
    parts = _parts(xb, yb, split)
    with pyro.validation_enabled(False):
        here = [objective.grad(theta, x, y, N) for x, y in parts]
        there = [objective.grad(anchor["theta"], x, y, N)[1] for x, y in parts] if anchor is not None else None
    estimates = {"plain": [r[1] for r in here]}
    if anchor is not None:
        estimates["cv"] = [K.control_variate(r[1], a, anchor["grad"]) for r, a in zip(here, there)]
    if len(parts) == 1:  # the whole minibatch: its estimate as it is (no weighted sum of one part)
        return here[0][0], {name: (gs[0], torch.zeros_like(gs[0]) if m == N else None)
                            for name, gs in estimates.items()}
    sizes = [num_rows(x) for x, _ in parts]
    u = sum(n * r[0] for n, r in zip(sizes, here)) / m
    out = {}
    for name, gs in estimates.items():
        g = sum(n * gk for n, gk in zip(sizes, gs)) / m
        out[name] = (g, K.split_batch_noise(gs[0], gs[1], sizes[0], sizes[1], N))
    return u, out


def _full_data(data: FitData):
    """The whole data set (`FitData.full`), concatenated the first time under a fixed seed with the
    caller's random state restored after: a user loader's shuffling neither shifts the run's RNG nor
    makes the row order (the anchor gradient's summation order) depend on when it is first asked for."""
    snap = _rng_snapshot(data)
    torch.manual_seed(0)
    g = _loader_generator(data)
    if g is not None:
        g.manual_seed(0)
    try:
        return data.full()
    finally:
        _restore_rng(data, snap)


def _anchor(objective: Objective, data: FitData, theta: torch.Tensor) -> Dict[str, torch.Tensor]:
    """{θ̂, ∇U(θ̂)}: the full-data gradient at ``theta``, in chunks of the batch size (one pass over the data)."""
    x, y = _full_data(data)
    N = data.dataset_size
    size = data.random_batch_size
    total = torch.zeros_like(theta)
    with pyro.validation_enabled(False):
        for i in range(0, N, size):
            xb, yb = take_rows(x, slice(i, i + size)), y[i:i + size]
            total = total + objective.grad(theta, xb, yb, N)[1] * (num_rows(xb) / N)
    return {"theta": theta.detach().clone(), "grad": total}


def _freeze(moments: K.GradientMoments, plain: K.GradientMoments, dynamics: Dynamics, lr: float,
            warm_step: Optional[torch.Tensor] = None) -> Dict[str, Any]:
    """The SAMPLE-stage gradient, step and friction from the WARMUP moments (``moments``: of the estimate that
    drove the warm-up; ``plain``: of the plain estimate, measured alongside when ``gradient="auto"``).

    With the control variate the step is at most ``FROZEN_STEP_CAP`` × the warm-up's last (growth-limited)
    step ``warm_step``: a warm-up too short for the chain to spread out from the anchor under-reads E[ĝ²],
    and the step fitted to it would throw the chain out of the bulk."""
    cv = dynamics.gradient == "cv" or (dynamics.gradient == "auto" and K.prefer_control_variate(plain, moments))
    moments = K.centred(moments) if cv else (plain if dynamics.gradient == "auto" else moments)
    square = moments.square if moments.count > 0 else K.ema_square(moments)
    noise = torch.minimum(moments.noise, square) if moments.noise_count > 0 else torch.zeros_like(square)
    # the chain survived the warm-up's last (growth-limited) step: whichever estimate is kept, the frozen step stays
    # within FROZEN_STEP_CAP of it (a plain estimate measured along a CV warm-up that has not spread under-reads H too)
    cap = FROZEN_STEP_CAP * warm_step if warm_step is not None else None
    if dynamics.curvature_floor is not None and not cv:
        # E[ĝ_i²] ≥ H_ii ≥ the prior's curvature at stationarity (`Objective.prior_curvature`): a coordinate whose
        # plain gradient was ≈ 0 in the estimation window (a dead ReLU unit) must not get an unbounded frozen step.
        # (A control-variate step is bounded by the growth-limited warm-up step instead, through ``cap``, and
        # by `_constants`' bound in V's units.)
        square = torch.maximum(square, dynamics.curvature_floor.to(square))
    return {**_constants(square, noise, dynamics, lr, cap), "cv": cv}


#: EMA decay of the sampling stage's spike guard (`_Guard`): pSGLD's (Li et al. 2016) 0.99
GUARD_DECAY = 0.99
#: ...which binds only where its EMA exceeds this multiple of the frozen E[ĝ²]: for Gaussian gradients the EMA's
#: relative fluctuation is ≈ √((1 − d)/(1 + d)·2) ≈ 0.1, so 2× is ten of them and the guard never binds there
#: (binding at 1× made SGLD's BLR variance 1.09 → 1.17: a state-dependent step without Γ biases the tails)
GUARD_SLACK = 2.0


def _implied_square(step: torch.Tensor, dynamics: Dynamics, lr: float) -> torch.Tensor:
    """The E[ĝ²] the frozen ``step`` stands for (after its caps and floors): lr·T/G (Fisher), (lr/G)² (RMSprop)."""
    if dynamics.preconditioner == "fisher":
        return lr * dynamics.temperature / step
    return (lr / step) ** 2


class _Guard:
    r"""The sampling stage's spike guard: the frozen step, shrunk where this step's gradient is far outside what it
    was fitted to.

    ``ema`` is an EMA of ĝ² (decay ``GUARD_DECAY``) started at the frozen step's own E[ĝ²] (``reference``,
    `_implied_square`) and updated in place with this step's ĝ *before* the step is taken (pSGLD's running estimate,
    Li et al. 2016). With r_i = min(1, ``GUARD_SLACK``·E[ĝ_i²]/ema_i) the step is G_i·r_i (Fisher; G_i·√r_i for
    RMSprop), the noise variance that of the shrunk step (2αG r T − G²r²B̂) and the kinetic weight (1 − α/2)/(G r):
    r = 1, the frozen constants, wherever the EMA stays below twice the frozen E[ĝ²]. A minibatch whose gradient on
    a coordinate is far above it (a ReLU unit firing on a rare batch) moves it by at most ≈ 200·lr·T/|ĝ_i| (Fisher)
    instead of G_i·|ĝ_i|: measured on a digits ReLU MLP at T = 1 (500 images, 64-32-10, batch 50), such spikes
    of 10³–10⁵ × E[ĝ²] within 100 sampling steps threw default SGHMC out of the posterior on 2 of 4 seeds. On
    a Gaussian posterior the guard does not bind (its EMA fluctuates by ≈ 10% around the frozen E[ĝ²]); where it
    binds the step is state dependent without pSGLD's Γ correction, which Li et al. show is a small bias.
    Every per-step quantity is computed into a buffer (no allocation), ≈ 8 elementwise passes per step."""

    def __init__(self, c: K.Coefficients, kinetic_weight: Optional[torch.Tensor], reference: torch.Tensor,
                 ema: torch.Tensor, fisher: bool, variance_parts: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        self.c, self.kinetic, self.ema, self.fisher, self.parts = c, kinetic_weight, ema, fisher, variance_parts
        self.limit = reference * GUARD_SLACK
        self.ratio, self.step = torch.empty_like(ema), torch.empty_like(ema)
        self.scale = None if c.scale is None else torch.empty_like(ema)
        self.weight = None if kinetic_weight is None else torch.empty_like(ema)

    def __call__(self, grad: torch.Tensor, scale: float = 1.0) -> Tuple[K.Coefficients, Optional[torch.Tensor]]:
        """This step's `Coefficients` and kinetic weight (views of the guard's buffers, valid until the next call),
        for the frozen step times the schedule's ``scale`` (cSG-MCMC's cosine within a sampling stage)."""
        self.ema.mul_(GUARD_DECAY).addcmul_(grad, grad, value=1 - GUARD_DECAY)
        r = torch.div(self.limit, self.ema, out=self.ratio).clamp_(max=1.0)
        if not self.fisher:
            r.sqrt_()
        if scale != 1.0:  # r is now the factor on the frozen step: the formulas below hold for any factor
            r.mul_(scale)
        torch.mul(self.c.step, r, out=self.step)
        if self.scale is not None:
            if self.parts is None:  # variance 2αGT·r (no noise subtracted): the frozen scale × √r
                torch.sqrt(r, out=self.scale).mul_(self.c.scale)
            else:  # r·(2αGT) − r²·(G²B̂)
                a, b = self.parts
                torch.mul(b, r, out=self.scale).neg_().add_(a).mul_(r).clamp_(min=0.0).sqrt_()
        if self.weight is not None:
            torch.div(self.kinetic, r, out=self.weight)
        return K.Coefficients(self.step, self.c.decay, self.scale), self.weight


def _constants(square, noise, dynamics: Dynamics, lr: float, cap: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    T = dynamics.temperature
    if dynamics.curvature_floor is not None:
        # at stationarity E[ĝ_i²] = T·H_ii(V) ≥ T·H_prior,ii(V) = T²·(prior curvature of U_T): no step may exceed the one
        # that suits the prior alone, G_i = lr/H_prior,ii(V) — a control-variate chain that has not spread from its anchor
        # reads E[ĝ²] low (measured on a digits MLP at T = 0.01: frozen steps 6× that bound on every coordinate, and
        # the chain diverged), and default SGLD's first warm-up steps after the exploration diverged without it on a
        # digits ReLU MLP at T = 1 (4 of 4 seeds); the plain estimate's frozen step is floored more tightly in `_freeze`
        square = torch.maximum(square, T * T * dynamics.curvature_floor.to(square))
    if dynamics.preconditioner == "fisher":
        step = K.fisher_step_size(square, lr, T)
        if cap is not None:
            step = torch.minimum(step, cap)
        friction = K.critical_friction(square, noise, step, T, dynamics.friction)
    else:
        step = K.rmsprop_step_size(square, lr)
        if cap is not None:
            step = torch.minimum(step, cap)
        friction = torch.full_like(square, dynamics.friction)
    if dynamics.kernel == "sgld":
        friction = torch.ones_like(square)
    if dynamics.noise_correction:
        if dynamics.kernel == "sgld":  # SGLD cannot raise friction: shrink the step until 2GT ≥ G²B̂/(1 − margin)
            step = torch.minimum(step, 2 * T * 0.9 / noise.clamp(min=torch.finfo(noise.dtype).tiny))
        else:
            friction = K.valid_friction(friction, step, noise, T)
    return {"step": step, "friction": friction, "noise": noise}


#: steps between reads of a chain's per-step losses and diagnostics to the host (`run_chain`): one
#: synchronisation per block, not per step, as the one driver's ``check_every`` (`pyro_bdl.infer.driver`)
CHECK_EVERY = 50


class _Noise:
    """ξ ~ N(0, I) of θ's shape from the chain's generator, drawn into one reused buffer (a fresh θ-sized
    tensor per step costs more than the draw). The numbers are `pyro_bdl._util.random.randn_like`'s: drawn on the
    generator's device, then copied to θ's."""

    def __init__(self, like: torch.Tensor, generator: torch.Generator):
        self.generator = generator
        self.buffer = torch.empty(like.shape, dtype=like.dtype, device=generator.device)
        self.out = self.buffer if like.device == generator.device else torch.empty_like(like)

    def draw(self) -> torch.Tensor:
        torch.randn(self.buffer.shape, generator=self.generator, dtype=self.buffer.dtype, out=self.buffer)
        if self.out is not self.buffer:
            self.out.copy_(self.buffer)
        return self.out


class _Record:
    """A chain's per-step values, kept on θ's device (a list of 0-dim tensors per step, no host read) and read to
    the host in blocks (`read`), with the sums behind the temperature estimates of
    `pyro_bdl.evaluate.diagnostics.sampler` (divided by d at the read). Per step:

    0. U;
    1. a number that is finite iff ĝ is (the non-finite-gradient check): Σĝ, or at SAMPLE steps θ·ĝ, which
       serves the configurational temperature too (a non-finite ĝ_i makes θ_iĝ_i, hence the dot, non-finite);
    2. θ₀·ĝ at SAMPLE steps: T̂_conf·d = (θ − θ₀)·ĝ = value 1 − value 2 (θ the state the gradient was computed
       at; two dot products, no θ-sized temporary; their float rounding is far below the statistic's own spread);
    3. Σ_i v_i² (1 − α_i/2) / G_i at SGHMC's SAMPLE steps (v after the step, G and α of the step): T̂_kin·d.

    Values a step does not have are NaN.
    """

    def __init__(self, like: torch.Tensor):
        self.nan = torch.tensor(math.nan, dtype=like.dtype, device=like.device)
        self.buffer = torch.empty_like(like)
        self.pending: List[List[torch.Tensor]] = []

    def step(self, u: torch.Tensor, g: torch.Tensor, theta: Optional[torch.Tensor] = None,
             anchor: Optional[torch.Tensor] = None) -> None:
        """The next step's U and gradient check; with ``theta`` and ``anchor`` θ₀ (SAMPLE steps) the
        configurational sums."""
        if theta is None:
            self.pending.append([u, g.sum(), self.nan, self.nan])
        else:
            self.pending.append([u, torch.dot(theta, g), torch.dot(anchor, g), self.nan])

    def kinetic(self, momentum: torch.Tensor, weight) -> None:
        """The last step's kinetic sum; ``weight`` = (1 − α/2)/G, a number or a ``(P,)`` tensor."""
        if isinstance(weight, torch.Tensor):
            self.pending[-1][3] = torch.dot(torch.mul(momentum, weight, out=self.buffer), momentum)
        else:
            self.pending[-1][3] = torch.dot(momentum, momentum) * weight

    def read(self) -> List[List[float]]:
        """``[U, check, T̂_conf·d, T̂_kin·d]`` of every step since the last read (one host synchronisation)."""
        if not self.pending:
            return []
        flat = torch.stack([v.to(self.nan.dtype) for row in self.pending for v in row]).tolist()
        self.pending = []
        return [[flat[i], flat[i + 1], flat[i + 1] - flat[i + 2], flat[i + 3]] for i in range(0, len(flat), 4)]


def _kinetic_weight(c: K.Coefficients, friction) -> Any:
    """(1 − α/2)/G of the kinetic temperature, for the step's `Coefficients` and friction α."""
    return (1 - friction / 2) / c.step


def _refresh_momentum(chain: K.KernelState, frozen: Dict[str, Any], T: float, generator) -> K.KernelState:
    """Draw v ~ N(0, G·T/(1 − α/2)), the stationary law of the SGHMC momentum (`pyro_bdl.evaluate.diagnostics.sampler`),
    at the start of a sampling stage: a Gibbs step on v that leaves the target invariant (as HMC's momentum
    refresh), so the stage does not inherit the exploration's or warm-up's momentum, whose scale belongs to
    other step sizes (it heated cSG-MCMC's short sampling stages' kinetic temperature to ~5000·T on a network)."""
    scale = (frozen["step"] * T / (1 - frozen["friction"] / 2)).sqrt()
    return K.KernelState(chain.theta, scale * randn_like(chain.theta, generator))


def run_chain(objective: Objective, data: FitData, plan: Plan, dynamics: Dynamics, state: Dict[str, Any],
              save=None, checkpoint_every: int = 1, bar=None, lr: float = 1.0) -> Dict[str, Any]:
    """Advance one chain from ``state`` (as made by `_start_chain` or loaded) to the end of the plan.

    Every step: (U, ∇U) on a minibatch, ĝ = T·∇U, one kernel update (noise where the stage is
    WARMUP or SAMPLE), the temperature estimates at SAMPLE steps, and a copy of θ when the step
    is in ``plan.draw_steps``. After every ``checkpoint_every`` epochs (and the last)
    ``save(state)`` is called.

    The update is in place on the chain's θ and v (`.kernels.step_`; no autograd here), the constants of a
    frozen SAMPLE stage are computed once, and the per-step values (loss, gradient check, temperature
    sums) stay on θ's device until they are read every `CHECK_EVERY` steps, before a checkpoint and at the end
    (the first step at once), then checked step by step: a divergence or a non-finite gradient is reported
    at its exact step, as before, but the chain may have run on to the end of the block.
    """
    N = data.dataset_size
    T = dynamics.temperature
    S = plan.steps_per_epoch
    adaptive = dynamics.preconditioner is not None
    anchored = adaptive and dynamics.gradient != "plain"
    generator = torch.Generator()
    generator.set_state(state["generator"])
    chain = K.KernelState(state["theta"], state["momentum"])
    moments = K.GradientMoments(**state["moments"])
    plain_moments = K.GradientMoments(**state["plain_moments"])
    frozen = state["frozen"]
    draw_set = set(plan.draw_steps.tolist())
    schedule = plan.step_size.tolist()
    stages = plan.stage.tolist()
    resets = window_resets(plan.stage).tolist()
    noise_source = _Noise(chain.theta, generator)
    record = _Record(chain.theta)
    d = chain.theta.numel()
    sghmc = dynamics.kernel == "sghmc"
    # the plan's descent steps (cSG-MCMC's exploration end) run on the control-variate gradient, re-anchored at the
    # steps of `descent_anchors`, with noise at T, so the warm-up starts in the target's bulk (`schedules.exploration_descent`)
    descent = plan.descent.tolist() if anchored and plan.descent is not None else [False] * len(stages)
    descent_anchor = descent_anchors(plan.descent).tolist() if anchored and plan.descent is not None else descent
    check = None  # the divergence check, built on the first minibatch (its floor needs a trace)
    sampling = None  # (frozen, `_Guard`) of the current SAMPLE stage
    read = state["epoch"] * S  # steps whose record is in `state`

    def flush(upto: int) -> None:
        """Read the record of steps [read, upto) and check and store it step by step."""
        nonlocal read
        if upto <= read:
            return
        values = record.read()
        assert len(values) == upto - read
        for i, (value, finite, configurational, kinetic) in zip(range(read, upto), values):
            check.check(value, i + 1, lr=schedule[i])
            if not math.isfinite(finite):
                raise FloatingPointError(
                    f"the gradient of the potential became non-finite at step {i + 1} (epoch {i // S + 1}); "
                    f"lower lr (step size now {schedule[i]}) or check the data scale")
            state["loss"].append(value)
            if stages[i] == SAMPLE:
                state["configurational"].append(configurational / d)
                if sghmc:
                    state["kinetic"].append(kinetic / d)
            if i + 1 in draw_set:
                state["draw_step_size"].append(schedule[i])
                state["draw_loss"].append(value)
                state["draw_configurational"].append(state["configurational"][-1] if state["configurational"]
                                                     else math.nan)
                state["draw_kinetic"].append(state["kinetic"][-1] if state["kinetic"] else math.nan)
        read = upto

    for epoch in range(state["epoch"], plan.epochs):
        k = epoch * S  # steps done before this epoch
        for xb, yb in data.epoch(generator):
            if k >= (epoch + 1) * S:
                raise ValueError("the DataLoader yielded more batches in an epoch than len(loader); "
                                 "SG-MCMC needs a fixed number of batches per epoch")
            stage = stages[k]
            if adaptive and resets[k]:
                if not (dynamics.pool_windows and state["frozen_once"]):
                    moments, plain_moments = K.reset_means(moments), K.reset_means(plain_moments)
                frozen = None
                if anchored:  # window start: anchor where exploration ended; midpoint: at the first half's mean θ
                    start = k == 0 or stages[k - 1] != WARMUP
                    at = chain.theta if start or not state["cv_count"] else state["cv_sum"] / state["cv_count"]
                    state["cv"] = _anchor(objective, data, at)
                    if start:  # forget the plain gradients' scale: the step adapts to the control variate's,
                        # growing from the plain estimate's step by at most WARMUP_STEP_GROWTH per step
                        plain_square = K.ema_square(moments)
                        state["warm_step"] = (state["last_step"] if state["last_step"] is not None else
                                              None if moments.ema_weight == 0 else  # no gradient seen yet
                                              _constants(plain_square, torch.zeros_like(plain_square), dynamics, lr)["step"])
                        moments = K.reset_ema(moments)
                    state["cv_sum"], state["cv_count"] = torch.zeros_like(chain.theta), 0
            if descent[k] and descent_anchor[k]:
                state["cv"] = _anchor(objective, data, chain.theta)
            if adaptive and stage == SAMPLE and frozen is None:
                frozen = _freeze(moments, plain_moments, dynamics, lr, state["warm_step"])
                state["frozen_once"], state["last_step"] = True, frozen["step"]
            if stage == SAMPLE and (k == 0 or stages[k - 1] != SAMPLE):
                # θ₀ of the configurational temperature, fixed before the sampling stage. cSG-MCMC's stages are short: a
                # θ₀ the chain has not forgotten (the stage's first position) biases E[(θ − θ₀)·∇V] below T, so it takes
                # the last anchor (the warm-up's mean θ, half a warm-up earlier). SGLD/SGHMC's long stage forgets its
                # start within a few % of its length, and the start is nearer the bulk than a mid-warm-up mean.
                pooled_anchor = dynamics.pool_windows and anchored and state["cv"] is not None
                state["anchor"] = (state["cv"]["theta"] if pooled_anchor else chain.theta).clone()
                if adaptive and dynamics.kernel == "sghmc":
                    chain = _refresh_momentum(chain, frozen, T, generator)
            use_cv = anchored and state["cv"] is not None and (
                descent[k] or stage == WARMUP or (stage == SAMPLE and frozen["cv"]))
            u, estimates = _gradient(objective, chain.theta, xb, yb, N, adaptive and stage == WARMUP,
                                     state["cv"] if use_cv else None)
            g, noise = estimates["cv" if use_cv else "plain"]
            if check is None:
                snap = _rng_snapshot(data)  # the floor's trace draws from the prior: keep the run's RNG where it is
                floor = loss_floor(objective.model, xb, yb, N, "point")
                _restore_rng(data, snap)
                check = DivergenceCheck(dynamics.kernel, lr, floor=floor, unit=N / T)
                if state["loss"]:  # a resumed chain: its start is the first loss it had
                    check.start = state["loss"][0]
            grad = g if T == 1.0 else g.mul_(T)  # ĝ ≈ ∇V, V = T·U_T (g is this step's own tensor)
            # θ·ĝ pairs the gradient with the θ it was computed at (the state before the step)
            record.step(u, grad, *((chain.theta, state["anchor"]) if stage == SAMPLE else ()))
            # the descent injects the noise of temperature T (`schedules.exploration_descent`)
            xi = noise_source.draw() if stage != EXPLORE or descent[k] else None
            kernel = dynamics.kernel if stage != EXPLORE or not adaptive else "sghmc"
            if adaptive and stage == SAMPLE:  # frozen constants, bounded by the spike guard (`_Guard`)
                if k == 0 or stages[k - 1] != SAMPLE:
                    state["guard"], sampling = None, None  # a new stage: its guard starts at the frozen E[ĝ²]
                if sampling is None or sampling[0] is not frozen:  # once per stage (and after a resume)
                    correction = frozen["noise"] if dynamics.noise_correction else None
                    c = K.coefficients(kernel, frozen["step"], T, frozen["friction"], correction)
                    parts = None if correction is None else (
                        2 * (frozen["friction"] if kernel == "sghmc" else 1.0) * frozen["step"] * T,
                        frozen["step"] * frozen["step"] * correction)
                    reference = _implied_square(frozen["step"], dynamics, lr)
                    if state.get("guard") is None:
                        state["guard"] = reference.clone()
                    sampling = (frozen, _Guard(c, _kinetic_weight(c, frozen["friction"]) if sghmc else None, reference,
                                               state["guard"], dynamics.preconditioner == "fisher", parts))
                c, kinetic_weight = sampling[1](grad, schedule[k] / lr)
            else:
                if not adaptive:
                    step, friction, correction = schedule[k] * dynamics.eps_per_lr, dynamics.friction, None
                else:
                    if stage == EXPLORE and use_cv:  # descent: the RMSprop normaliser stays on the plain gradient's scale
                        pg, pn = estimates["plain"]
                        moments = K.update_moments_(moments, pg if T == 1.0 else pg.mul_(T),
                                                    None if pn is None else pn if T == 1.0 else pn.mul_(T * T),
                                                    means=False)
                    else:
                        grad_noise = None if noise is None else (noise if T == 1.0 else noise.mul_(T * T))
                        moments = K.update_moments_(moments, grad, grad_noise,
                                                    WARMUP_EMA_DECAY if use_cv and stage == WARMUP else K.EMA_DECAY,
                                                    means=stage == WARMUP)
                        if use_cv:  # the plain estimate at the same θ, for gradient="auto"'s choice
                            pg, pn = estimates["plain"]
                            plain_moments = K.update_moments_(plain_moments, pg if T == 1.0 else pg.mul_(T),
                                                              None if pn is None else pn if T == 1.0 else pn.mul_(T * T))
                    if stage == WARMUP and anchored:
                        state["cv_sum"] = chain.theta.clone() if state["cv_sum"] is None else state["cv_sum"] + chain.theta
                        state["cv_count"] += 1
                    if stage == EXPLORE:
                        square = K.ema_square(moments)
                        if descent[k] and dynamics.curvature_floor is not None:  # a dead unit's weights get noise now
                            square = torch.maximum(square, dynamics.curvature_floor.to(square))
                        step = K.rmsprop_step_size(square, schedule[k])
                        friction, correction = 0.1, None  # SGD with momentum 0.9 towards the bulk
                    else:  # WARMUP
                        now = K.ema_square(K.centred(moments) if use_cv else moments)
                        est = torch.minimum(moments.noise, now) if moments.noise_count else torch.zeros_like(now)
                        cap = None
                        if use_cv:  # growth-limited; with no earlier step (no exploration), the raw EMA's step: a
                            # centred EMA of one gradient is 0
                            cap = WARMUP_STEP_GROWTH * state["warm_step"] if state.get("warm_step") is not None else \
                                _constants(K.ema_square(moments), torch.zeros_like(now), dynamics, schedule[k])["step"]
                        cc = _constants(now, est, dynamics, schedule[k], cap)
                        step, friction = cc["step"], cc["friction"]
                        if use_cv:
                            state["warm_step"] = step
                        correction = cc["noise"] if dynamics.noise_correction else None
                c = K.coefficients(kernel, step, T, friction, correction, noisy=xi is not None)
            K.step_(chain.theta, chain.momentum, grad, c, xi)
            if stage == SAMPLE and sghmc:
                record.kinetic(chain.momentum, kinetic_weight if adaptive else _kinetic_weight(c, friction))
            k += 1
            if k in draw_set:
                state["draws"].append(chain.theta.clone())
            if k == 1 or k - read >= CHECK_EVERY:  # the first step at once: a non-finite start is named as such
                flush(k)
        if k != (epoch + 1) * S:
            raise ValueError(f"the data yielded {k - epoch * S} batches in epoch {epoch + 1}, "
                             f"expected {S} (len of the DataLoader)")
        state.update(epoch=epoch + 1, theta=chain.theta, momentum=chain.momentum, moments=moments._asdict(),
                     plain_moments=plain_moments._asdict(), frozen=frozen, generator=generator.get_state())
        saving = save is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == plan.epochs)
        if saving or epoch + 1 == plan.epochs:
            flush(k)
        if bar is not None:
            if state["loss"]:
                bar.set_postfix(loss=f"{state['loss'][-1]:.4g}")
            bar.update()
        if saving:
            save(state)
    return state


# ----------------------------------------------------------------------------------------
# chains and the posterior
# ----------------------------------------------------------------------------------------


def _example_inputs(data: FitData) -> torch.Tensor:
    return data.example_x(2)


def _initial_theta(objective: Objective, model: BayesianModel, init: Union[str, Dict[str, torch.Tensor]],
                   seed: int) -> torch.Tensor:
    if isinstance(init, dict):
        values = model.as_values(init)
        missing = [n for n in objective.layout.names if n not in values]
        if missing:
            raise ValueError(f"init is missing values for sites {missing}")
        return objective.initial(values)
    return objective.initial(model.initial_values(seed=seed) if init == "fresh" else None)


def _fingerprint(method: str, config: Dict[str, Any], model: BayesianModel, data: FitData,
                 objective: Objective, seed: int, theta0: torch.Tensor) -> Dict[str, Any]:
    """What identifies a run, so a checkpoint is only resumed by the same run (``theta0``, the first
    chain's start, stands for ``init`` whatever its form)."""
    return ckpt.fingerprint(model, data, method, config, seed, start=ckpt.tensor_hash(theta0), sites=list(objective.layout.names),
                            size=objective.size)


def chain_seeds(seed: int, num_chains: int) -> List[int]:
    """Seeds of the chains of a run, spawned from ``seed`` (`pyro_bdl._util.random.spawn_seeds`):
    runs with different seeds share no chain."""
    return spawn_seeds(seed, num_chains)


def sample(model: BayesianModel, data: FitData, *, method: str, plan: Plan, dynamics: Dynamics, seed: int,
           progress: Optional[bool], num_chains: int, init, checkpoint: Optional[str], checkpoint_every: int,
           config: Dict[str, Any], lr: float = 1.0) -> SamplesPosterior:
    """Run ``num_chains`` independent chains of ``plan`` and collect them in a [`SamplesPosterior`][pyro_bdl.SamplesPosterior]."""
    objective = Objective(model, _example_inputs(data))
    if dynamics.preconditioner is not None:
        dynamics = replace(dynamics, curvature_floor=objective.prior_curvature())
    if dynamics.preconditioner is not None and dynamics.gradient != "plain":
        _full_data(data)  # once, before any chain (and before a checkpoint's RNG is restored)
    seeds = chain_seeds(seed, num_chains)
    fingerprint = _fingerprint(method, config, model, data, objective, seed,
                               _initial_theta(objective, model, init, seeds[0]))
    saved = ckpt.load(checkpoint, fingerprint)
    if saved is not None:
        _restore_rng(data, saved["rng"])
        finished: List[Dict[str, Any]] = saved["finished"]
        current = saved["current"]
        elapsed = float(saved.get("wall_time", 0.0))  # the sampling time before the interruption
    else:
        finished, current, elapsed = [], None, 0.0
    started = time.perf_counter()

    def save(state):
        ckpt.save(checkpoint, fingerprint, {"finished": finished, "current": state, "rng": _rng_snapshot(data),
                                            "wall_time": elapsed + time.perf_counter() - started})

    with progress_bars.bar(num_chains * plan.epochs, method, progress) as bar:
        bar.update(len(finished) * plan.epochs + (current["epoch"] if current is not None else 0))
        for c in range(len(finished), num_chains):
            if current is None:
                current = _start_chain(_initial_theta(objective, model, init, seeds[c]), seeds[c])
            bar.set_description(f"{method} chain {c + 1}/{num_chains}")
            state = run_chain(objective, data, plan, dynamics, current,
                              save=save if checkpoint is not None else None,
                              checkpoint_every=checkpoint_every, bar=bar, lr=lr)
            finished.append(state)
            current = None
            if checkpoint is not None:
                save(None)
    return _posterior(model, objective, plan, dynamics, finished, config, method,
                      elapsed + time.perf_counter() - started)


def _posterior(model, objective, plan: Plan, dynamics: Dynamics, finished, config, method,
               wall_time: float) -> SamplesPosterior:
    draws = torch.stack([torch.stack(s["draws"]) for s in finished])  # (C, D, P)
    samples = {k: v.detach() for k, v in objective.to_constrained(draws).items()}
    dtype = draws.dtype
    sample_stats = {
        "step_size": torch.tensor([s["draw_step_size"] for s in finished], dtype=dtype),
        "loss": torch.tensor([s["draw_loss"] for s in finished], dtype=dtype),
        "configurational_temperature": torch.tensor([s["draw_configurational"] for s in finished], dtype=dtype),
    }
    estimates = {"configurational_temperature":
                 torch.stack([temps.mean_with_interval(s["configurational"]) for s in finished])}
    if dynamics.kernel == "sghmc":
        sample_stats["kinetic_temperature"] = torch.tensor([s["draw_kinetic"] for s in finished], dtype=dtype)
        estimates["kinetic_temperature"] = torch.stack([temps.mean_with_interval(s["kinetic"]) for s in finished])
    info = {
        **config,
        # the one driver's schema (`pyro_bdl.infer.driver.info`): loss (chains, steps), options, wall_time
        **driver_info(torch.tensor([s["loss"] for s in finished], dtype=dtype), config, wall_time),
        "step_size": plan.step_size.to(dtype),
        "draw_steps": plan.draw_steps.clone(),
        "sampling_stage": plan.noisy.clone(),
        "stage": plan.stage.clone(),
        "steps_per_epoch": plan.steps_per_epoch,
        "temperature": dynamics.temperature,
        **estimates,
    }
    if dynamics.preconditioner is not None:
        info["preconditioner_step"] = torch.stack([s["frozen"]["step"] for s in finished]).to(dtype)
        info["friction"] = torch.stack([s["frozen"]["friction"] for s in finished]).to(dtype)
        info["gradient_noise"] = torch.stack([s["frozen"]["noise"] for s in finished]).to(dtype)
        info["control_variate"] = torch.tensor([bool(s["frozen"]["cv"]) for s in finished])
    temps.warn_if_off(estimates, dynamics.temperature, method)
    return SamplesPosterior(model, samples, method, sample_stats=sample_stats, info=info)
