"""SG-MCMC on the one driver: the step rule of every kernel (`SGMCMCRule`, each chain a `_Chain`), K chains stepped
together with their gradients by ``torch.func.vmap`` (`pyro_bdl.infer.stacking`), and the collected posterior."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import pyro
import torch

from ..._util import checkpoint as ckpt
from ..._util.random import randn_like, spawn_seeds
from ...evaluate.diagnostics import sampler as temps
from ...model.bayesian_model import BayesianModel
from ...posterior.samples import SamplesPosterior
from ..data import FitData
from ..driver import Batch, drive
from ..driver import info as driver_info
from ..map import example_batch
from ..stacking import StackedGradient, group_path, stack_size
from ..stacking import rows as stacked_rows
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
#: ...and SGHMC's warm-up friction is raised so that the minibatch noise it does not subtract heats the chain by at
#: most this fraction of T (`warmup_friction`)
WARMUP_HEAT = 0.25


def warmup_friction(friction: torch.Tensor, step: torch.Tensor, noise: torch.Tensor, temperature: float,
                    heat: float = WARMUP_HEAT) -> torch.Tensor:
    r"""SGHMC's WARMUP friction when the gradient noise B̂ is not subtracted: α_i ≥ G_i B̂_i / (2·heat·T), at most 1.

    Injecting 2αGT while the minibatch gradient adds G²B more makes the momentum's stationary variance
    (2αGT + G²B)/(2α), i.e. temperature T_eff = T + G B/(2α) (Chen, Fox & Guestrin 2014, §3: the friction must
    dominate the noise, α ≥ β̂ = G B̂/2 in these units); the bound keeps T_eff ≤ (1 + heat)·T. With the Fisher step
    G = lr·T/E[ĝ²] and B̂ ≤ E[ĝ²] it asks α ≤ lr/(2·heat) (0.1 at the defaults). Why only the warm-up: its
    step follows an EMA of ĝ² (decay 0.9, about an epoch), so the noise-free-over-an-epoch argument that lets the
    frozen stage skip the correction under reshuffling (package docs) does not hold there. Without it, noise-dominated
    coordinates stay at the friction floor 0.01, T_eff ≤ T(1 + lr/0.02) = 3.5·T, and on a long warm-up the hot chain
    runs away: digits 500 / 64-32-10 ReLU / T = 1, default SGHMC at 3000 epochs (a 375-epoch warm-up) read a
    kinetic temperature of 3.5–75·T in the warm-up, mean θ² 2 → 16 (prior 1) and a loss 2·10⁴ above its stationary
    3.5·10³; the frozen step fitted out there (E[ĝ²] huge) is ~10× too small to come back in the sampling stage,
    whose configurational temperature read −0.4 (the chain still descending, θ − θ₀ against ∇V; issue 13)."""
    return K.valid_friction(friction, step, noise, temperature, margin=1.0 - heat)


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


def _start_chain(theta0: torch.Tensor) -> Dict[str, Any]:
    """A chain's state at ``theta0`` (kept as given: the rule's row of the stacked θ, updated in place)."""
    return {"epoch": 0, "theta": theta0, "momentum": torch.zeros_like(theta0),
            "moments": K.init_moments(theta0)._asdict(), "frozen": None, "anchor": None,
            "plain_moments": K.init_moments(theta0)._asdict(), "cv": None, "cv_sum": None, "cv_count": 0,
            "frozen_once": False, "last_step": None, "warm_step": None, "guard": None,
            "draws": [], "draw_step_size": [], "draw_loss": [], "draw_kinetic": [], "draw_configurational": [],
            "loss": [], "kinetic": [], "configurational": []}


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
    return _estimates(here, there, anchor, m, N, [num_rows(x) for x, _ in parts])


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


class _Context:
    """What the chains of a run share: the objective, the data, the `Plan` (as host lists) and the `Dynamics`."""

    def __init__(self, objective: Objective, data: FitData, plan: Plan, dynamics: Dynamics, lr: float):
        self.objective, self.data, self.plan, self.dynamics, self.lr = objective, data, plan, dynamics, lr
        self.N = data.dataset_size
        self.T = dynamics.temperature
        self.S = plan.steps_per_epoch
        self.steps = plan.epochs * plan.steps_per_epoch
        self.adaptive = dynamics.preconditioner is not None
        self.anchored = self.adaptive and dynamics.gradient != "plain"
        self.draw_set = set(plan.draw_steps.tolist())
        self.schedule = plan.step_size.tolist()
        self.stages = plan.stage.tolist()
        self.resets = window_resets(plan.stage).tolist()
        self.sghmc = dynamics.kernel == "sghmc"
        # the plan's descent steps (cSG-MCMC's exploration end) run on the control-variate gradient, re-anchored at
        # the steps of `descent_anchors`, with noise at T, so the warm-up starts in the target's bulk
        # (`schedules.exploration_descent`)
        has_descent = self.anchored and plan.descent is not None
        self.descent = plan.descent.tolist() if has_descent else [False] * len(self.stages)
        self.descent_anchor = descent_anchors(plan.descent).tolist() if has_descent else self.descent


class _Chain:
    """One chain's loop: its state (as made by `_start_chain` or loaded) and its step, split around the gradient.

    A step is `begin` (window resets and anchors, the frozen constants at a sampling stage's start, the momentum
    refresh; returns which gradient estimates the step needs), the gradient (`_gradient` for this chain alone, or
    `_stacked_gradients` for all chains at once), then `finish`: ĝ = T·∇U, one kernel update (noise where the stage
    is WARMUP or SAMPLE), the temperature sums at SAMPLE steps, and a copy of θ when the step is in
    ``plan.draw_steps``. Chains that run together share only the plan; every adaptive quantity (moments, frozen
    constants, control-variate choice, spike guard) is the chain's own.

    The update is in place on the chain's θ (a row of the rule's stacked ``(K, P)`` θ) and v (`.kernels.step_`; no
    autograd here), the constants of a frozen SAMPLE stage are computed once, and the per-step values (loss,
    gradient check, temperature sums) stay on θ's device until they are read every `CHECK_EVERY` steps, before a
    checkpoint and at the end (the first step at once), then checked step by step: a divergence or a non-finite
    gradient is reported at its exact step, but the chain may have run on to the end of the block.
    """

    def __init__(self, ctx: _Context, state: Dict[str, Any]):
        self.ctx, self.state = ctx, state
        self.chain = K.KernelState(state["theta"], state["momentum"])
        self.moments = K.GradientMoments(**state["moments"])
        self.plain_moments = K.GradientMoments(**state["plain_moments"])
        self.frozen = state["frozen"]
        self.record = _Record(self.chain.theta)
        self.d = self.chain.theta.numel()
        self.check: Optional[DivergenceCheck] = None  # built on the first minibatch (its floor needs a trace)
        self.sampling = None  # (frozen, `_Guard`) of the current SAMPLE stage
        self.k = state["epoch"] * ctx.S  # steps done
        self.read = self.k  # steps whose record is in `state`
        self.generator: Optional[torch.Generator] = None
        self.noise_source: Optional[_Noise] = None
        self.use_cv = False

    def bind(self, generator: torch.Generator) -> None:
        """Draw the chain's noise from ``generator`` (the driver's generator of this chain, which also orders its data)."""
        if generator is not self.generator:
            self.generator = generator
            self.noise_source = _Noise(self.chain.theta, generator)

    def begin(self) -> Tuple[bool, Optional[Dict[str, torch.Tensor]]]:
        """The step's preparation; returns ``(split, anchor)``: whether the gradient noise is estimated from the batch's
        two halves, and the control variate's anchor {θ̂, ∇U(θ̂)} (None: the plain estimate only)."""
        ctx, state, dynamics = self.ctx, self.state, self.ctx.dynamics
        k, stages, lr = self.k, ctx.stages, ctx.lr
        chain, moments, plain_moments, frozen = self.chain, self.moments, self.plain_moments, self.frozen
        stage = stages[k]
        if ctx.adaptive and ctx.resets[k]:
            if not (dynamics.pool_windows and state["frozen_once"]):
                moments, plain_moments = K.reset_means(moments), K.reset_means(plain_moments)
            frozen = None
            if ctx.anchored:  # window start: anchor where exploration ended; midpoint: at the first half's mean θ
                start = k == 0 or stages[k - 1] != WARMUP
                at = chain.theta if start or not state["cv_count"] else state["cv_sum"] / state["cv_count"]
                state["cv"] = _anchor(ctx.objective, ctx.data, at)
                if start:  # forget the plain gradients' scale: the step adapts to the control variate's,
                    # growing from the plain estimate's step by at most WARMUP_STEP_GROWTH per step
                    plain_square = K.ema_square(moments)
                    state["warm_step"] = (state["last_step"] if state["last_step"] is not None else
                                          None if moments.ema_weight == 0 else  # no gradient seen yet
                                          _constants(plain_square, torch.zeros_like(plain_square), dynamics, lr)["step"])
                    moments = K.reset_ema(moments)
                state["cv_sum"], state["cv_count"] = torch.zeros_like(chain.theta), 0
        if ctx.descent[k] and ctx.descent_anchor[k]:
            state["cv"] = _anchor(ctx.objective, ctx.data, chain.theta)
        if ctx.adaptive and stage == SAMPLE and frozen is None:
            frozen = _freeze(moments, plain_moments, dynamics, lr, state["warm_step"])
            state["frozen_once"], state["last_step"] = True, frozen["step"]
        if stage == SAMPLE and (k == 0 or stages[k - 1] != SAMPLE):
            # θ₀ of the configurational temperature, fixed before the sampling stage. cSG-MCMC's stages are short: a
            # θ₀ the chain has not forgotten (the stage's first position) biases E[(θ − θ₀)·∇V] below T, so it takes
            # the last anchor (the warm-up's mean θ, half a warm-up earlier). SGLD/SGHMC's long stage forgets its
            # start within a few % of its length, and the start is nearer the bulk than a mid-warm-up mean.
            pooled_anchor = dynamics.pool_windows and ctx.anchored and state["cv"] is not None
            state["anchor"] = (state["cv"]["theta"] if pooled_anchor else chain.theta).clone()
            if ctx.adaptive and dynamics.kernel == "sghmc":
                chain = _refresh_momentum(chain, frozen, ctx.T, self.generator)
        self.chain, self.moments, self.plain_moments, self.frozen = chain, moments, plain_moments, frozen
        self.use_cv = ctx.anchored and state["cv"] is not None and (
            ctx.descent[k] or stage == WARMUP or (stage == SAMPLE and frozen["cv"]))
        return ctx.adaptive and stage == WARMUP, state["cv"] if self.use_cv else None

    def finish(self, u: torch.Tensor, estimates: Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor]]], xb, yb) -> None:
        """The step's update from ``(u, estimates)`` (`_gradient`'s output on this chain's batch ``(xb, yb)``)."""
        ctx, state, dynamics = self.ctx, self.state, self.ctx.dynamics
        k, T, lr, N = self.k, ctx.T, ctx.lr, ctx.N
        stage, schedule, stages, adaptive, sghmc = ctx.stages[k], ctx.schedule, ctx.stages, ctx.adaptive, ctx.sghmc
        chain, moments, plain_moments, frozen, use_cv = self.chain, self.moments, self.plain_moments, self.frozen, self.use_cv
        descent = ctx.descent
        g, noise = estimates["cv" if use_cv else "plain"]
        if self.check is None:
            snap = _rng_snapshot(ctx.data)  # the floor's trace draws from the prior: keep the run's RNG where it is
            floor = loss_floor(ctx.objective.model, xb, yb, N, "point")
            _restore_rng(ctx.data, snap)
            self.check = DivergenceCheck(dynamics.kernel, lr, floor=floor, unit=N / T)
            if state["loss"]:  # a resumed chain: its start is the first loss it had
                self.check.start = state["loss"][0]
        grad = g if T == 1.0 else g.mul_(T)  # ĝ ≈ ∇V, V = T·U_T (g is this step's own tensor)
        # θ·ĝ pairs the gradient with the θ it was computed at (the state before the step)
        self.record.step(u, grad, *((chain.theta, state["anchor"]) if stage == SAMPLE else ()))
        # the descent injects the noise of temperature T (`schedules.exploration_descent`)
        xi = self.noise_source.draw() if stage != EXPLORE or descent[k] else None
        kernel = dynamics.kernel if stage != EXPLORE or not adaptive else "sghmc"
        if adaptive and stage == SAMPLE:  # frozen constants, bounded by the spike guard (`_Guard`)
            if k == 0 or stages[k - 1] != SAMPLE:
                state["guard"], self.sampling = None, None  # a new stage: its guard starts at the frozen E[ĝ²]
            if self.sampling is None or self.sampling[0] is not frozen:  # once per stage (and after a resume)
                correction = frozen["noise"] if dynamics.noise_correction else None
                c = K.coefficients(kernel, frozen["step"], T, frozen["friction"], correction)
                parts = None if correction is None else K.variance_parts(kernel, frozen["step"], T, frozen["friction"],
                                                                         correction)
                reference = _implied_square(frozen["step"], dynamics, lr)
                if state.get("guard") is None:
                    state["guard"] = reference.clone()
                self.sampling = (frozen, _Guard(c, _kinetic_weight(c, frozen["friction"]) if sghmc else None, reference,
                                                state["guard"], dynamics.preconditioner == "fisher", parts))
            c, kinetic_weight = self.sampling[1](grad, schedule[k] / lr)
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
                if stage == WARMUP and ctx.anchored:
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
                    if dynamics.kernel == "sghmc" and not dynamics.noise_correction:  # the unsubtracted noise's heat
                        friction = warmup_friction(friction, step, est, T)
                    if use_cv:
                        state["warm_step"] = step
                    correction = cc["noise"] if dynamics.noise_correction else None
            c = K.coefficients(kernel, step, T, friction, correction, noisy=xi is not None)
        K.step_(chain.theta, chain.momentum, grad, c, xi)
        if stage == SAMPLE and sghmc:
            self.record.kinetic(chain.momentum, kinetic_weight if adaptive else _kinetic_weight(c, friction))
        self.moments, self.plain_moments = moments, plain_moments
        k += 1
        self.k = k
        if k in ctx.draw_set:
            state["draws"].append(chain.theta.clone())
        if k == 1 or k - self.read >= CHECK_EVERY:  # the first step at once: a non-finite start is named as such
            self.flush(k)
        if k % ctx.S == 0:
            self.sync()

    def sync(self) -> None:
        """Write the loop's variables back into ``state`` (at epoch ends: what a checkpoint saves)."""
        self.state.update(epoch=self.k // self.ctx.S, theta=self.chain.theta, momentum=self.chain.momentum,
                          moments=self.moments._asdict(), plain_moments=self.plain_moments._asdict(), frozen=self.frozen)

    def flush(self, upto: int) -> None:
        """Read the record of steps [read, upto) and check and store it step by step."""
        if upto <= self.read:
            return
        ctx, state = self.ctx, self.state
        S, schedule = ctx.S, ctx.schedule
        values = self.record.read()
        assert len(values) == upto - self.read
        for i, (value, finite, configurational, kinetic) in zip(range(self.read, upto), values):
            self.check.check(value, i + 1, lr=schedule[i])
            if not math.isfinite(finite):
                raise FloatingPointError(
                    f"the gradient of the potential became non-finite at step {i + 1} (epoch {i // S + 1}); "
                    f"lower lr (step size now {schedule[i]}) or check the data scale")
            state["loss"].append(value)
            if ctx.stages[i] == SAMPLE:
                state["configurational"].append(configurational / self.d)
                if ctx.sghmc:
                    state["kinetic"].append(kinetic / self.d)
            if i + 1 in ctx.draw_set:
                state["draw_step_size"].append(schedule[i])
                state["draw_loss"].append(value)
                state["draw_configurational"].append(state["configurational"][-1] if state["configurational"]
                                                     else math.nan)
                state["draw_kinetic"].append(state["kinetic"][-1] if state["kinetic"] else math.nan)
        self.read = upto


def _estimates(here, there, anchor: Optional[Dict[str, torch.Tensor]], m: int, N: int, sizes: List[int]):
    """`_gradient`'s output from the parts' ``here`` = [(U, ĝ(θ))] and ``there`` = [ĝ(θ̂)] (with an ``anchor``)."""
    estimates = {"plain": [r[1] for r in here]}
    if anchor is not None:
        estimates["cv"] = [K.control_variate(r[1], a, anchor["grad"]) for r, a in zip(here, there)]
    if len(here) == 1:  # the whole minibatch: its estimate as it is (no weighted sum of one part)
        return here[0][0], {name: (gs[0], torch.zeros_like(gs[0]) if m == N else None)
                            for name, gs in estimates.items()}
    u = sum(n * r[0] for n, r in zip(sizes, here)) / m
    out = {}
    for name, gs in estimates.items():
        g = sum(n * gk for n, gk in zip(sizes, gs)) / m
        out[name] = (g, K.split_batch_noise(gs[0], gs[1], sizes[0], sizes[1], N))
    return u, out


def _stacked_gradients(gradient: StackedGradient, theta: torch.Tensor, chains: List[_Chain],
                       needs: List[Tuple[bool, Optional[Dict[str, torch.Tensor]]]], batch: Batch, N: int):
    """`_gradient` of every chain at once: θ ``(K, P)`` (the chains' rows), chain k on ``batch.member(k)`` and with
    ``needs[k]`` = (split, anchor) from `_Chain.begin`. The minibatch gradients of every part at θ are one vmapped
    evaluation, and, when any chain drives with a control variate, those at the anchors θ̂ another (chains without
    an anchor stand in with their θ, and their result is not used). ``split`` is the plan's, so the chains' own."""
    m = num_rows(batch.y) if batch.shared else batch.y.shape[1]
    split = needs[0][0] and m >= 2
    slices = [slice(None, m // 2), slice(m // 2, None)] if split else [slice(None)]

    def part(rows_: slice):
        if not split:
            return batch.x, batch.y
        if batch.shared:
            return take_rows(batch.x, rows_), batch.y[rows_]
        return stacked_rows(batch.x, rows_), batch.y[:, rows_]

    sizes = [len(range(m)[s]) for s in slices]
    with pyro.validation_enabled(False):
        here = [gradient(theta, *part(s), batch.shared) for s in slices]
        anchors = [a for _, a in needs]
        there = None
        if any(a is not None for a in anchors):
            at = torch.stack([a["theta"] if a is not None else c.chain.theta for a, c in zip(anchors, chains)])
            there = [gradient(at, *part(s), batch.shared)[1] for s in slices]
    return [_estimates([(u[k], g[k]) for u, g in here], None if a is None else [g[k] for g in there], a, m, N, sizes)
            for k, a in enumerate(anchors)]


class _OwnChecks:
    """The driver's per-run check for a chain: none, because each chain checks its own record (`_Chain.flush`) with
    the SG-MCMC messages (the divergence floor of its first batch, a non-finite gradient named at its step)."""

    def __init__(self):
        self.start = math.nan

    def check(self, value: float, step: int, lr: Optional[float] = None) -> None:
        pass


class SGMCMCRule:
    """The SG-MCMC step rule on the one driver (`pyro_bdl.infer.driver.drive`): K chains, θ ``(K, P)``.

    The state is ``{"theta": (K, P), "chains": [_Chain]}``, chain k's θ a row of the stack (updated in place).
    ``stacked``: the K chains' gradients are one `StackedGradient` (vmap) evaluation per step; otherwise the chains
    are stepped one after another within the step, each by the single-chain path (`_gradient`). Either way every
    other part of the step is the chain's own (`_Chain`), so chain k is the chain run alone with the same seed —
    exactly when not stacked, to float rounding when stacked (vmap's batched matrix products round differently).
    """

    def __init__(self, ctx: _Context, stacked: bool):
        self.ctx = ctx
        objective, N = ctx.objective, ctx.N
        self.gradient = StackedGradient(lambda t, x, y: objective.potential(t, x, y, N),
                                        lambda t, x, y: objective.grad(t, x, y, N)) if stacked else None

    def _state(self, theta: torch.Tensor, chains: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {"theta": theta, "chains": [_Chain(self.ctx, {**s, "theta": theta[k]}) for k, s in enumerate(chains)]}

    def init(self, theta: torch.Tensor) -> Dict[str, Any]:
        theta = theta.detach().clone()
        return self._state(theta, [_start_chain(theta[k]) for k in range(theta.shape[0])])

    def update(self, state: Dict[str, Any], batch: Batch,
               generators: Sequence[torch.Generator]) -> Tuple[Dict[str, Any], torch.Tensor]:
        chains: List[_Chain] = state["chains"]
        for c, g in zip(chains, generators):
            c.bind(g)
        if self.gradient is None or len(chains) == 1:
            us = []
            for k, c in enumerate(chains):
                xb, yb = batch.member(k)
                split, anchor = c.begin()
                u, estimates = _gradient(self.ctx.objective, c.chain.theta, xb, yb, self.ctx.N, split, anchor)
                c.finish(u, estimates, xb, yb)
                us.append(u)
        else:
            needs = [c.begin() for c in chains]
            results = _stacked_gradients(self.gradient, state["theta"], chains, needs, batch, self.ctx.N)
            us = []
            for k, (c, (u, estimates)) in enumerate(zip(chains, results)):
                c.finish(u, estimates, *batch.member(k))
                us.append(u)
        return state, torch.stack(us)

    def finish(self, state: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Every chain's record read and checked, and its state written back: the chains' states."""
        for c in state["chains"]:
            c.flush(c.k)
            c.sync()
        return [c.state for c in state["chains"]]

    def save(self, state: Dict[str, Any]) -> Dict[str, Any]:
        chains = self.finish(state)
        return {"theta": state["theta"].clone(), "chains": [{**s, "theta": None} for s in chains]}

    def restore(self, saved: Dict[str, Any]) -> Dict[str, Any]:
        return self._state(saved["theta"].clone(), saved["chains"])


def run_chain(ctx: _Context, theta0: torch.Tensor, seeds: Sequence[int], *, stacked: bool, desc: str,
              progress: Optional[bool], checkpoint: Optional[str], fingerprint: Optional[Dict[str, Any]],
              checkpoint_every: int) -> Tuple[List[Dict[str, Any]], float]:
    """Run the chains from ``theta0`` ``(K, P)`` (chain k with seed ``seeds[k]``: its data order and noise) to the end
    of the plan on the driver, stacked or one after another within each step (`SGMCMCRule`); the driver's state is
    the checkpoint (saved every ``checkpoint_every`` epochs and at the end). Returns the chains' states and the
    wall time."""
    rule = SGMCMCRule(ctx, stacked and theta0.shape[0] > 1)
    result = drive(rule, theta0, ctx.data, steps=ctx.steps, seeds=seeds, desc=desc, progress=progress,
                   checks=[_OwnChecks() for _ in seeds], checkpoint=checkpoint, fingerprint=fingerprint,
                   checkpoint_every=checkpoint_every, check_every=CHECK_EVERY)
    return rule.finish(result.state), result.wall_time


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
                 objective: Objective, seed: int, theta0: torch.Tensor, **extra: Any) -> Dict[str, Any]:
    """What identifies a run, so a checkpoint is only resumed by the same run (``theta0``, the first
    chain's start, stands for ``init`` whatever its form)."""
    return ckpt.fingerprint(model, data, method, config, seed, start=ckpt.tensor_hash(theta0), sites=list(objective.layout.names),
                            size=objective.size, **extra)


def chain_seeds(seed: int, num_chains: int) -> List[int]:
    """Seeds of the chains of a run, spawned from ``seed`` (`pyro_bdl._util.random.spawn_seeds`):
    runs with different seeds share no chain."""
    return spawn_seeds(seed, num_chains)


def sample(model: BayesianModel, data: FitData, *, method: str, plan: Plan, dynamics: Dynamics, seed: int,
           progress: Optional[bool], num_chains: int, init, checkpoint: Optional[str], checkpoint_every: int,
           config: Dict[str, Any], lr: float = 1.0, stack: Union[str, bool, int] = "auto") -> SamplesPosterior:
    """Run ``num_chains`` independent chains of ``plan`` and collect them in a [`SamplesPosterior`][pyro_bdl.SamplesPosterior].

    Chain c has seed ``chain_seeds(seed, num_chains)[c]`` (its data order and noise) and starts at ``init`` for that
    seed. The chains run on the one driver in groups of ``stack_size(stack, ...)`` stepped together (`run_chain`);
    groups run one after another, each with its own checkpoint file when there are several
    (`pyro_bdl.infer.stacking.group_path`; finished groups are read back, not rerun)."""
    objective = Objective(model, _example_inputs(data))
    size = stack_size(stack, num_chains, model, data, objective)  # a bad `stack` fails before any work
    if dynamics.preconditioner is not None:
        dynamics = replace(dynamics, curvature_floor=objective.prior_curvature())
    if dynamics.preconditioner is not None and dynamics.gradient != "plain":
        _full_data(data)  # once, before any chain (and before a checkpoint's RNG is restored)
    seeds = chain_seeds(seed, num_chains)
    first = _initial_theta(objective, model, init, seeds[0])
    ctx = _Context(objective, data, plan, dynamics, lr)
    groups = [list(range(i, min(i + size, num_chains))) for i in range(0, num_chains, size)]
    finished: List[Dict[str, Any]] = []
    wall_time = 0.0
    for i, group in enumerate(groups):
        theta0 = torch.stack([first if c == 0 else _initial_theta(objective, model, init, seeds[c]) for c in group])
        if len(group) > 1 and not getattr(objective, "_verified", True):
            with torch.no_grad():  # the compiled density is verified once, outside vmap
                x0, y0 = example_batch(data)
                objective.log_density(theta0[0], x0, y0, data.dataset_size)
        fingerprint = None if checkpoint is None else _fingerprint(method, config, model, data, objective, seed, first,
                                                                   chains=group, stack=size)
        states, elapsed = run_chain(ctx, theta0, [seeds[c] for c in group], stacked=len(group) > 1,
                                    desc=method if len(groups) == 1 else f"{method} chains {group[0] + 1}-{group[-1] + 1}",
                                    progress=progress, checkpoint=group_path(checkpoint, i, len(groups)),
                                    fingerprint=fingerprint, checkpoint_every=checkpoint_every)
        finished.extend(states)
        wall_time += elapsed
    return _posterior(model, objective, plan, dynamics, finished, dict(config, stack=size), method, wall_time)


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
