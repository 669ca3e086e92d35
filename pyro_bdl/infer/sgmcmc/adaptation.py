"""The adaptive kernels' constants: the `Dynamics` of a run, and the step, friction and noise estimate that its
warm-up measures and its sampling stage freezes.

WARMUP steps take the step of the moments measured so far (`step_constants` of the chain's running E[ĝ²], B̂); at the
start of each SAMPLE stage they are fixed (`freeze`): G = lr·T/E[ĝ²] (``"fisher"``, Ahn et al. 2012) or lr/√E[ĝ²]
(``"rmsprop"``, Li et al. 2016), the critical friction (fisher), and the noise correction. Every step obeys the
prior-alone bound E[ĝ_i²] ≥ T²·(the prior's curvature) (`pyro_bdl.model.potential.Objective.prior_curvature`); a
control-variate warm-up grows its step by at most `WARMUP_STEP_GROWTH` per step and the frozen step is at most
`FROZEN_STEP_CAP` times the warm-up's last. The package docs (`pyro_bdl.infer.sgmcmc`) give the maths.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from . import kernels as K

#: EMA decay of ĝ² in a control-variate warm-up: the chain starts at the anchor, with no spread, and the
#: step must track its spreading out to the stationary width within the window (0.99 forgets in ~100 steps)
WARMUP_EMA_DECAY = 0.9
#: ...and the step grows by at most this factor per step, so it never outruns the chain's spreading (a step
#: fitted to the anchor's near-zero gradients would throw the chain far out of the bulk)
WARMUP_STEP_GROWTH = 1.1
#: ...and the frozen sampling step at most this multiple of the warm-up's last step (`freeze`)
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
    whose configurational temperature read −0.4 (the chain still descending, θ − θ₀ against ∇V; issue 13).
    With the plain gradient B̂ is the larger of the running mean and this step's own split-batch estimate
    (`.chain.Chain._adapted`): a weight into a unit that wakes up (dead at the exploration's end, or switched on by
    a new augmentation) has noise far above its running mean for the ~100 steps the means take to follow. On 1000
    augmented digits (64-128-10, batch 100, T = 1) the running mean alone let the warm-up's first 100 steps take
    |θ|² from 650 to 4.7·10⁴ (4.8 per weight against the prior's 1), and the sampling stage still read a
    configurational temperature of −0.02·T; with the step's own estimate |θ|² rises to 9.0·10³ and reads 0.90·T."""
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
    pool_windows: bool = False  # cSG-MCMC: pool the moment means over the cycles' warm-ups (`.chain.Chain.begin`)
    #: per-coordinate floor of the frozen E[ĝ²] of the adaptive kernels (`Objective.prior_curvature`; set by `sample`)
    curvature_floor: Optional[torch.Tensor] = None
    #: the dense preconditioner (`.whitening`): each chain runs in φ = L⁻¹(θ − θ̂) from its first burn-in window on.
    #: ``"auto"`` until `pyro_bdl.infer.sgmcmc.run.sample` resolves it to True or False from the model's size
    dense: Any = False
    #: a chain's lower bound on E[ĝ²] in V's units where the curvature is known (the dense preconditioner's φ: T·1,
    #: since LᵀH_VL = I and E[ĝ_φ²] ≥ T·H_φ,ii at stationarity; `.whitening`); None elsewhere
    square_floor: Optional[torch.Tensor] = None
    #: subtract only the augmentation's share of the noise in the sampling stage, measured on paired augmentations
    #: when it starts (`.gradients.augmentation_noise`; ``noise_correction="auto"`` under reshuffling with augmentation)
    augmentation_noise: bool = False


def freeze(moments: K.GradientMoments, plain: K.GradientMoments, dynamics: Dynamics, lr: float,
           warm_step: Optional[torch.Tensor] = None, correction: Optional[torch.Tensor] = None) -> Dict[str, Any]:
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
    # A dead ReLU unit's weights (plain gradient ≈ 0 in the window) get a bounded step from `step_constants`' floor
    # E[ĝ_i²] ≥ T²·(prior curvature of U_T), in V's units. A floor at the prior curvature of U_T itself, 1/T² larger,
    # froze every coordinate of a digits MLP at T = 0.01 (configurational temperature 0.02·T; issue 13, stop 32).
    return {**step_constants(square, noise, dynamics, lr, cap, correction), "cv": cv}


def step_constants(square: torch.Tensor, noise: torch.Tensor, dynamics: Dynamics, lr: float,
                   cap: Optional[torch.Tensor] = None,
                   correction: Optional[torch.Tensor] = None) -> Dict[str, Optional[torch.Tensor]]:
    """``{"step": G, "friction": α, "noise": B̂, "correction": C}`` of the adaptive kernel for the second moment
    ``square`` = E[ĝ²] and the gradient noise ``noise`` = B̂ (package docs): G = lr·T/E[ĝ²] with α = max(friction, 2ω)
    (``"fisher"``) or G = lr/√E[ĝ²] with α = ``dynamics.friction`` (``"rmsprop"``), at most ``cap``; α = 1 for SGLD.
    C is the noise the injected variance is reduced by: B̂ with ``noise_correction``, else ``correction`` (None:
    nothing); α is raised (SGHMC, `.kernels.valid_friction`) or G shrunk (SGLD) so that the injected variance stays
    ≥ 0.2·αGT after G²C is subtracted."""
    T = dynamics.temperature
    if dynamics.curvature_floor is not None:
        # at stationarity E[ĝ_i²] = T·H_ii(V) ≥ T·H_prior,ii(V) = T²·(prior curvature of U_T): no step may exceed the one
        # that suits the prior alone, G_i = lr/H_prior,ii(V) — a control-variate chain that has not spread from its anchor
        # reads E[ĝ²] low (measured on a digits MLP at T = 0.01: frozen steps 6× that bound on every coordinate, and
        # the chain diverged), and default SGLD's first warm-up steps after the exploration diverged without it on a
        # digits ReLU MLP at T = 1 (4 of 4 seeds), as did the frozen step of a dead unit's weights, whose plain
        # gradient was ≈ 0 in the estimation window (`freeze`)
        square = torch.maximum(square, T * T * dynamics.curvature_floor.to(square))
    if dynamics.square_floor is not None:
        # in the dense preconditioner's φ the curvature is I: no step exceeds lr (Fisher), G·H_φ ≤ lr. A control-variate
        # warm-up starts at its anchor, the Newton point (`.whitening.whiten`), where ĝ ≈ 0: without this bound its
        # step grew 10% a step past G·H_φ = 2, where SGLD is unstable (measured: rotated BLR, T = 0.01, one chain of
        # two froze a noise estimate 10× the other's, B̂/T = 16 against ≈ 0.5 at stationarity)
        square = torch.maximum(square, dynamics.square_floor.to(square))
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
        correction = noise
    if correction is not None:
        if dynamics.kernel == "sgld":  # SGLD cannot raise friction: shrink the step until 2GT ≥ G²C/(1 − margin)
            step = torch.minimum(step, 2 * T * 0.9 / correction.clamp(min=torch.finfo(correction.dtype).tiny))
        else:
            friction = K.valid_friction(friction, step, correction, T)
    return {"step": step, "friction": friction, "noise": noise, "correction": correction}
