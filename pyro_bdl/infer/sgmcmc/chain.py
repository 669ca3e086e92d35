"""One SG-MCMC chain: its state (`start_chain`, plain data: what a checkpoint saves) and its step (`Chain`), split
around the gradient so that the chains of a run can have their gradients evaluated together
(`.rule.SGMCMCRule`). `Context` is what the chains of a run share."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Dict, List, Optional, Tuple

import torch

from ..._util.random import noise_generator, randn_like
from ...model.potential import Objective
from ..data import FitData
from ..divergence import DivergenceCheck, loss_floor
from . import kernels as K
from .adaptation import WARMUP_EMA_DECAY, WARMUP_STEP_GROWTH, Dynamics, freeze, step_constants, warmup_friction
from .gradients import Anchor, Estimates, anchor_at, augmentation_noise, outside_rng_kept
from .guard import SpikeGuard, implied_square
from .record import StepRecord, kinetic_weight
from .whitening import Whitened, whiten
from .schedules import EXPLORE, SAMPLE, WARMUP, Plan, descent_anchors, window_resets


def start_chain(theta0: torch.Tensor) -> Dict[str, Any]:
    """A chain's state at ``theta0`` (kept as given: the rule's row of the stacked θ, updated in place)."""
    return {"epoch": 0, "theta": theta0, "momentum": torch.zeros_like(theta0),
            "moments": K.init_moments(theta0)._asdict(), "frozen": None, "anchor": None,
            "plain_moments": K.init_moments(theta0)._asdict(), "cv": None, "cv_sum": None, "cv_count": 0,
            "frozen_once": False, "last_step": None, "warm_step": None, "guard": None, "whiten": None,
            "draws": [], "draw_step_size": [], "draw_loss": [], "draw_kinetic": [], "draw_configurational": [],
            "check_start": None, "kinetic": [], "configurational": []}


class NoiseSource:
    """ξ ~ N(0, I) of θ's shape from the chain's noise generator, drawn into one reused buffer (a fresh θ-sized
    tensor per step costs more than the draw). The numbers are `pyro_bdl._util.random.randn_like`'s: drawn on the
    generator's device. The chain's generator is on θ's device (`pyro_bdl._util.random.noise_generator`), so the
    draw lands in place; a host generator with a device θ (not what a chain builds) is copied to θ's without
    waiting (the buffer is pageable host memory, which CUDA stages at once, so the next draw may overwrite it)."""

    def __init__(self, like: torch.Tensor, generator: torch.Generator):
        self.generator = generator
        self.buffer = torch.empty(like.shape, dtype=like.dtype, device=generator.device)
        self.out = self.buffer if like.device == generator.device else torch.empty_like(like)

    def draw(self) -> torch.Tensor:
        torch.randn(self.buffer.shape, generator=self.generator, dtype=self.buffer.dtype, out=self.buffer)
        if self.out is not self.buffer:
            self.out.copy_(self.buffer, non_blocking=True)  # a blocking copy would wait for the device each step
        return self.out


def refresh_momentum(chain: K.KernelState, frozen: Dict[str, Any], T: float, generator) -> K.KernelState:
    """Draw v ~ N(0, G·T/(1 − α/2)), the stationary law of the SGHMC momentum (`pyro_bdl.evaluate.diagnostics.sampler`),
    at the start of a sampling stage: a Gibbs step on v that leaves the target invariant (as HMC's momentum
    refresh), so the stage does not inherit the exploration's or warm-up's momentum, whose scale belongs to
    other step sizes (it heated cSG-MCMC's short sampling stages' kinetic temperature to ~5000·T on a network)."""
    scale = (frozen["step"] * T / (1 - frozen["friction"] / 2)).sqrt()
    return K.KernelState(chain.theta, scale * randn_like(chain.theta, generator))


class Context:
    """What the chains of a run share: the objective, the data, the `Plan` (as host lists), the `Dynamics`, the
    method's name (in messages) and ``check_every``, the steps between reads of the chains' records to the host."""

    def __init__(self, objective: Objective, data: FitData, plan: Plan, dynamics: Dynamics, lr: float,
                 method: str = "sgmcmc", check_every: int = 50):
        self.objective, self.data, self.plan, self.dynamics, self.lr = objective, data, plan, dynamics, lr
        self.method, self.check_every = method, check_every
        self.N = data.dataset_size
        self.T = dynamics.temperature
        self.S = plan.steps_per_epoch
        self.steps = plan.num_steps
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


class Chain:
    """One chain: its state (as made by `start_chain` or loaded) and its step, split around the gradient.

    A step is `begin` (window resets and anchors, the frozen constants at a sampling stage's start, the momentum
    refresh; returns which gradient estimates the step needs), the gradient (`.gradients.gradient_estimates` for
    this chain alone, or `.gradients.stacked_gradient_estimates` for all chains at once), then `finish`: ĝ = T·∇U,
    one kernel update (noise where the stage is WARMUP or SAMPLE, or a descent step), the temperature sums at SAMPLE
    steps, and a copy of θ when the step is in ``plan.draw_steps``. Chains that run together share only the plan;
    every adaptive quantity (moments, frozen constants, control-variate choice, spike guard) is the chain's own.

    The update is in place on the chain's θ (a row of the rule's stacked ``(K, P)`` θ) and v (`.kernels.step_`; no
    autograd here), the constants of a frozen SAMPLE stage are computed once, and the per-step values (loss,
    gradient check, temperature sums) stay on θ's device until the rule reads them (`.record.read_records`: every
    ``ctx.check_every`` steps, before a checkpoint and at the end, the first step at once) and `store` checks them
    step by step: a divergence or a non-finite gradient is reported at its exact step, but the chain may have run
    on to the end of the block.
    """

    def __init__(self, ctx: Context, state: Dict[str, Any], name: Optional[str] = None):
        self.ctx, self.state, self.name = ctx, state, ctx.method if name is None else name
        self.chain = K.KernelState(state["theta"], state["momentum"])
        self.moments = K.GradientMoments(**state["moments"])
        self.plain_moments = K.GradientMoments(**state["plain_moments"])
        self.frozen = state["frozen"]
        self.record = StepRecord(self.chain.theta)
        self.d = self.chain.theta.numel()
        self.check: Optional[DivergenceCheck] = None  # built on the first minibatch (its floor needs a trace)
        self.sampling = None  # (frozen, `.guard.SpikeGuard`) of the current SAMPLE stage
        self.k = state["epoch"] * ctx.S  # steps done
        self.read = self.k  # steps whose record is in `state`
        self.generator: Optional[torch.Generator] = None  # the driver's, bound at each step
        # what draws the chain's noise (ξ, the momentum refresh): the driver's generator for a CPU θ, else the
        # chain's own on θ's device (`pyro_bdl._util.random.noise_generator`; its state is ``state["noise_rng"]``)
        self.noise_rng: Optional[torch.Generator] = None
        self.noise_source: Optional[NoiseSource] = None
        self.use_cv = False
        self._whitened(state.get("whiten"))

    def _whitened(self, whiten: Optional[Dict[str, torch.Tensor]]) -> None:
        """The objective and dynamics the chain steps with: the run's (θ coordinates), or after the dense
        preconditioner's map {θ̂, L} (`.whitening`) the objective in φ and the prior-curvature floor in φ."""
        ctx = self.ctx
        self.whitened = None if whiten is None else Whitened(ctx.objective, whiten["shift"], whiten["L"])
        self.objective = ctx.objective if self.whitened is None else self.whitened
        self.dynamics = ctx.dynamics if self.whitened is None else replace(
            ctx.dynamics, curvature_floor=self.whitened.floor(ctx.dynamics.curvature_floor),
            square_floor=torch.full_like(whiten["shift"], ctx.T))

    def to_theta(self, x: torch.Tensor) -> torch.Tensor:
        """A copy of the chain's position ``x`` in θ coordinates."""
        return x.clone() if self.whitened is None else self.whitened.to_theta(x)

    def _start_whitening(self) -> None:
        """The dense preconditioner's map at the chain's θ (`.whitening.whiten`), and the chain moved to θ̂ (the
        map's damped Newton point) and into φ = L⁻¹(θ − θ̂) = 0 at rest (v = 0), and its EMA of ĝ² set to T·1, the
        stationary E[ĝ_φ²] without minibatch noise (LᵀHL = I), which the warm-up's own gradients then update (the θ
        coordinates' EMA has no meaning in φ). Called once, at the first burn-in window's start.

        Why at rest: the move to θ̂ is a jump, not a step of the dynamics, so the exploration's velocity has nothing
        to carry on from; and in φ's units it is L⁻¹v = Λ^½Qᵀv, which along the stiff directions of an
        ill-conditioned H is many times the warm-up kernel's stationary velocity (≈ √(lr·T) per step). Carried over
        (as v_φ = L⁻¹v), it threw cSG-MCMC's first warm-up out to ≈ 25 posterior sds along the softest direction,
        where the Fisher step read the gradient's size as curvature and froze the chain there for the whole cycle
        (rotated BLR, κ = 10³, T = 0.01, ``exploration=0.5``: 1 chain of 4 on seeds 0 and 1, variance 8–37× along
        the soft directions; the descent's step at r = 0.5 is 5× the default r = 0.8's). At rest, every cycle of
        those chains reads a mean |z|²/dim of 0.8–1.2."""
        ctx, state = self.ctx, self.state
        whiten_ = whiten(ctx.objective, ctx.data, self.chain.theta, ctx.T)
        state["whiten"] = whiten_
        self._whitened(whiten_)
        self.chain.momentum.zero_()
        self.chain.theta.zero_()  # at θ̂, the map's (damped) Newton point: a noise-free move, as the exploration's
        m = self.moments
        self.moments = m._replace(ema=torch.full_like(m.ema, ctx.T), ema_mean=torch.zeros_like(m.ema), ema_weight=1.0)
        p = self.plain_moments
        self.plain_moments = p._replace(ema=torch.full_like(p.ema, ctx.T), ema_mean=torch.zeros_like(p.ema),
                                        ema_weight=1.0)

    def bind(self, generator: torch.Generator) -> None:
        """Take ``generator`` (the driver's generator of this chain, which also orders its data) and the generator
        of the chain's noise that `pyro_bdl._util.random.noise_generator` chooses: ``generator`` itself for a CPU θ;
        for a device θ the chain's own on θ's device, made once (seeded from ``generator``'s seed) and set to the
        state a checkpoint saved (``state["noise_rng"]``) when the chain is resumed."""
        if generator is self.generator:
            return
        own = self.noise_rng if self.noise_rng is not None and self.noise_rng is not self.generator else None
        self.generator = generator
        if own is None:
            own = noise_generator(self.chain.theta, generator)
            if own is not generator and self.state.get("noise_rng") is not None:
                own.set_state(self.state["noise_rng"])
        self.noise_rng = own
        self.noise_source = NoiseSource(self.chain.theta, own)

    def begin(self) -> Tuple[bool, Optional[Anchor]]:
        """The step's preparation; returns ``(split, anchor)``: whether the gradient noise is estimated from the batch's
        two halves, and the control variate's anchor {θ̂, ∇U(θ̂)} (None: the plain estimate only)."""
        ctx, state, dynamics = self.ctx, self.state, self.dynamics
        k, stages, lr = self.k, ctx.stages, ctx.lr
        chain, moments, plain_moments, frozen = self.chain, self.moments, self.plain_moments, self.frozen
        stage = stages[k]
        if ctx.dynamics.dense and stage != EXPLORE and self.whitened is None:
            self._start_whitening()
            dynamics, chain, moments, plain_moments = self.dynamics, self.chain, self.moments, self.plain_moments
        if ctx.adaptive and dynamics.kernel == "sgld" and stage == EXPLORE and k > 0 and stages[k - 1] != EXPLORE:
            # cSG-MCMC's next cycle: SGLD has no momentum of its own, so v is still the previous exploration's last
            # SGD-with-momentum step, untouched through its warm-up and sampling; the new exploration starts at rest
            chain.momentum.zero_()
        if ctx.adaptive and ctx.resets[k]:
            if not (dynamics.pool_windows and state["frozen_once"]):
                moments, plain_moments = K.reset_means(moments), K.reset_means(plain_moments)
            frozen = None
            if ctx.anchored:  # window start: anchor where exploration ended; midpoint: at the first half's mean θ
                start = k == 0 or stages[k - 1] != WARMUP
                at = chain.theta if start or not state["cv_count"] else state["cv_sum"] / state["cv_count"]
                state["cv"] = anchor_at(self.objective, ctx.data, at)
                if start:  # forget the plain gradients' scale: the step adapts to the control variate's,
                    # growing from the plain estimate's step by at most WARMUP_STEP_GROWTH per step
                    plain_square = K.ema_square(moments)
                    state["warm_step"] = (state["last_step"] if state["last_step"] is not None else
                                          None if moments.ema_weight == 0 else  # no gradient seen yet
                                          step_constants(plain_square, torch.zeros_like(plain_square), dynamics, lr)["step"])
                    moments = K.reset_ema(moments)
                state["cv_sum"], state["cv_count"] = torch.zeros_like(chain.theta), 0
        if ctx.descent[k] and ctx.descent_anchor[k]:
            state["cv"] = anchor_at(self.objective, ctx.data, chain.theta)
        if ctx.adaptive and stage == SAMPLE and frozen is None:
            correction = self._augmentation_noise() if dynamics.augmentation_noise else None
            frozen = freeze(moments, plain_moments, dynamics, lr, state["warm_step"], correction)
            state["frozen_once"], state["last_step"] = True, frozen["step"]
        if stage == SAMPLE and (k == 0 or stages[k - 1] != SAMPLE):
            # θ₀ of the configurational temperature, fixed before the sampling stage. cSG-MCMC's stages are short: a
            # θ₀ the chain has not forgotten (the stage's first position) biases E[(θ − θ₀)·∇V] below T, so it takes
            # the last anchor (the warm-up's mean θ, half a warm-up earlier). SGLD/SGHMC's long stage forgets its
            # start within a few % of its length, and the start is nearer the bulk than a mid-warm-up mean.
            pooled_anchor = dynamics.pool_windows and ctx.anchored and state["cv"] is not None
            state["anchor"] = (state["cv"]["theta"] if pooled_anchor else chain.theta).clone()
            if ctx.adaptive and dynamics.kernel == "sghmc":
                chain = refresh_momentum(chain, frozen, ctx.T, self.noise_rng)
        self.chain, self.moments, self.plain_moments, self.frozen = chain, moments, plain_moments, frozen
        self.use_cv = ctx.anchored and state["cv"] is not None and (
            ctx.descent[k] or stage == WARMUP or (stage == SAMPLE and frozen["cv"]))
        return ctx.adaptive and stage == WARMUP, state["cv"] if self.use_cv else None

    def _augmentation_noise(self) -> torch.Tensor:
        """The augmentation's share of the noise at the chain's position (`.gradients.augmentation_noise`), its pairs
        drawn from a generator seeded by one draw of the chain's own (so a resumed run measures the same)."""
        seed = int(torch.randint(2 ** 62, (1,), generator=self.generator))
        return augmentation_noise(self.objective, self.ctx.data, self.chain.theta, self.ctx.T,
                                  torch.Generator().manual_seed(seed))

    def finish(self, u: torch.Tensor, estimates: Estimates, xb, yb) -> None:
        """The step's update from ``(u, estimates)`` (`.gradients.gradient_estimates`' output on this chain's batch
        ``(xb, yb)``): the frozen constants under the spike guard at an adaptive kernel's SAMPLE steps (`_guarded`),
        the moments and the step they give at its EXPLORE and WARMUP steps (`_adapted`), the schedule's step for
        the plain kernel."""
        ctx, state, dynamics = self.ctx, self.state, self.dynamics
        k, T, stage = self.k, ctx.T, ctx.stages[self.k]
        chain = self.chain
        g, noise = estimates["cv" if self.use_cv else "plain"]
        if self.check is None:
            self._start_check(xb, yb)
        grad = g if T == 1.0 else g.mul_(T)  # ĝ ≈ ∇V, V = T·U_T (g is this step's own tensor)
        # θ·ĝ pairs the gradient with the θ it was computed at (the state before the step)
        self.record.step(u, grad, *((chain.theta, state["anchor"]) if stage == SAMPLE else ()))
        # the descent injects the noise of temperature T (`schedules.exploration_descent`)
        xi = self.noise_source.draw() if stage != EXPLORE or ctx.descent[k] else None
        if ctx.adaptive and stage == SAMPLE:
            c, weight = self._guarded(grad)
        elif ctx.adaptive:
            c, weight = self._adapted(grad, noise, estimates["plain"], xi is not None), None
        else:
            step, friction = ctx.schedule[k] * dynamics.eps_per_lr, dynamics.friction
            c = K.coefficients(dynamics.kernel, step, T, friction, None, noisy=xi is not None)
            weight = kinetic_weight(c, friction) if stage == SAMPLE and ctx.sghmc else None
        K.step_(chain.theta, chain.momentum, grad, c, xi)
        if stage == SAMPLE and ctx.sghmc:
            self.record.kinetic(chain.momentum, weight)
        k += 1
        self.k = k
        if k in ctx.draw_set:
            state["draws"].append(self.to_theta(chain.theta))
        if k % ctx.S == 0:
            self.sync()

    def _start_check(self, xb, yb) -> None:
        """The chain's `DivergenceCheck`, its floor from its first batch; a resumed chain's starts from the run's first
        loss (``check_start``; a checkpoint of an older version kept every loss, the driver keeps the history now)."""
        ctx, state, N = self.ctx, self.state, self.ctx.N
        with outside_rng_kept(ctx.data):  # the floor's trace draws from the prior: keep the run's RNG where it is
            floor = loss_floor(ctx.objective.model, xb, yb, N, "point")
        self.check = DivergenceCheck(self.name, ctx.lr, floor=floor, unit=N / ctx.T)
        self.check.start = state["check_start"] if "check_start" in state else \
            (state["loss"][0] if state.get("loss") else None)

    def _guarded(self, grad: torch.Tensor) -> Tuple[K.Coefficients, Optional[torch.Tensor]]:
        """A SAMPLE step of an adaptive kernel: the frozen constants bounded by the stage's spike guard
        (`.guard.SpikeGuard`, built once per stage and after a resume), and the kinetic weight of the step taken."""
        ctx, state, dynamics, frozen = self.ctx, self.state, self.dynamics, self.frozen
        k, T, lr = self.k, ctx.T, ctx.lr
        if k == 0 or ctx.stages[k - 1] != SAMPLE:
            state["guard"], self.sampling = None, None  # a new stage: its guard starts at the frozen E[ĝ²]
        if self.sampling is None or self.sampling[0] is not frozen:
            # (a checkpoint of an earlier release has no "correction": it subtracted B̂ with noise_correction only)
            correction = frozen.get("correction", frozen["noise"] if dynamics.noise_correction else None)
            c = K.coefficients(dynamics.kernel, frozen["step"], T, frozen["friction"], correction)
            parts = None if correction is None else K.variance_parts(dynamics.kernel, frozen["step"], T,
                                                                     frozen["friction"], correction)
            reference = implied_square(frozen["step"], dynamics, lr)
            if state.get("guard") is None:
                state["guard"] = reference.clone()
            weight = kinetic_weight(c, frozen["friction"]) if ctx.sghmc else None
            self.sampling = (frozen, SpikeGuard(c, weight, reference, state["guard"],
                                                dynamics.preconditioner == "fisher", parts))
        return self.sampling[1](grad, ctx.schedule[k] / lr)

    def _adapted(self, grad: torch.Tensor, noise: Optional[torch.Tensor],
                 plain: Tuple[torch.Tensor, Optional[torch.Tensor]], noisy: bool) -> K.Coefficients:
        """An EXPLORE or WARMUP step of an adaptive kernel: the gradient moments updated with this step's ĝ (and B̂;
        ``plain``: the plain estimate, measured alongside a control variate), and the step they give — RMSprop with
        momentum 0.9 (EXPLORE; ``noisy`` in a descent) or the warm-up's `.adaptation.step_constants`."""
        ctx, state, dynamics = self.ctx, self.state, self.dynamics
        k, T, use_cv = self.k, ctx.T, self.use_cv
        stage, lr_k = ctx.stages[k], ctx.schedule[k]
        chain, moments, plain_moments = self.chain, self.moments, self.plain_moments
        if stage == EXPLORE and use_cv:  # descent: the RMSprop normaliser stays on the plain gradient's scale
            pg, pn = plain
            moments = K.update_moments_(moments, pg if T == 1.0 else pg.mul_(T),
                                        None if pn is None else pn if T == 1.0 else pn.mul_(T * T), means=False)
        else:
            grad_noise = None if noise is None else (noise if T == 1.0 else noise.mul_(T * T))
            moments = K.update_moments_(moments, grad, grad_noise,
                                        WARMUP_EMA_DECAY if use_cv and stage == WARMUP else K.EMA_DECAY,
                                        means=stage == WARMUP)
            if use_cv:  # the plain estimate at the same θ, for gradient="auto"'s choice
                pg, pn = plain
                plain_moments = K.update_moments_(plain_moments, pg if T == 1.0 else pg.mul_(T),
                                                  None if pn is None else pn if T == 1.0 else pn.mul_(T * T))
        self.moments, self.plain_moments = moments, plain_moments
        if stage == WARMUP and ctx.anchored:
            state["cv_sum"] = chain.theta.clone() if state["cv_sum"] is None else state["cv_sum"] + chain.theta
            state["cv_count"] += 1
        if stage == EXPLORE:
            square = K.ema_square(moments)
            if ctx.descent[k] and dynamics.curvature_floor is not None:  # a dead unit's weights get noise now
                square = torch.maximum(square, dynamics.curvature_floor.to(square))
            # SGD with momentum 0.9 towards the bulk, for either kernel
            return K.coefficients("sghmc", K.rmsprop_step_size(square, lr_k), T, 0.1, None, noisy=noisy)
        now = K.ema_square(K.centred(moments) if use_cv else moments)
        est = torch.minimum(moments.noise, now) if moments.noise_count else torch.zeros_like(now)
        cap = None
        if use_cv:  # growth-limited; with no earlier step (no exploration), the raw EMA's step: a centred EMA of one
            # gradient is 0
            cap = WARMUP_STEP_GROWTH * state["warm_step"] if state["warm_step"] is not None else \
                step_constants(K.ema_square(moments), torch.zeros_like(now), dynamics, lr_k)["step"]
        cc = step_constants(now, est, dynamics, lr_k, cap)
        step, friction = cc["step"], cc["friction"]
        if dynamics.kernel == "sghmc" and not dynamics.noise_correction:  # the unsubtracted noise's heat
            # the plain estimate's noise bursts when a unit wakes up (a weight into a unit dead at the exploration's
            # end, or one a new augmentation switches on), long before the running means see it: bound the heat by
            # this step's own split-batch estimate too (the control variate's noise, ∝ ‖θ − θ̂‖², changes smoothly)
            burst = est if use_cv or grad_noise is None else torch.maximum(est, grad_noise)
            friction = warmup_friction(friction, step, burst, T)
        if use_cv:
            state["warm_step"] = step
        return K.coefficients(dynamics.kernel, step, T, friction, cc["correction"], noisy=noisy)

    def sync(self) -> None:
        """Write the chain's working variables back into ``state`` (at epoch ends: what a checkpoint saves), with
        the state of the chain's own noise generator where it has one (a device θ; a CPU chain's noise comes from the
        driver's generator, which the driver saves)."""
        self.state.update(epoch=self.k // self.ctx.S, theta=self.chain.theta, momentum=self.chain.momentum,
                          moments=self.moments._asdict(), plain_moments=self.plain_moments._asdict(), frozen=self.frozen)
        if self.noise_rng is not None and self.noise_rng is not self.generator:
            self.state["noise_rng"] = self.noise_rng.get_state()  # a CPU uint8 tensor: a checkpoint holds it

    def store(self, values: List[List[float]]) -> None:
        """Check and store the record of the steps since the last read (``values``: `.record.read_records`' rows for
        this chain) step by step."""
        ctx, state = self.ctx, self.state
        S, schedule = ctx.S, ctx.schedule
        upto = self.read + len(values)
        assert upto == self.k
        for i, (value, finite, configurational, kinetic) in zip(range(self.read, upto), values):
            self.check.check(value, i + 1, lr=schedule[i])
            if not math.isfinite(finite):
                raise FloatingPointError(
                    f"{self.name}: the gradient of the potential became non-finite at step {i + 1} "
                    f"(epoch {i // S + 1}); lower lr (step size now {schedule[i]}) or check the data scale")
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
        state["check_start"] = self.check.start
        self.read = upto
