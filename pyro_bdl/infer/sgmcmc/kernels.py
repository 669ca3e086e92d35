r"""Pure SG-MCMC step rules: ``init(theta) -> state`` and ``update(state, grad, ...) -> state``.

Nothing here draws random numbers, reads data or keeps history: the chain
(`.chain.Chain`, on the one driver) passes the minibatch gradient, the standard normal noise ξ and the step
constants, so every rule can be tested on its own and reused by another driver (in the style
of the ``posteriors`` package and of NumPyro's kernels). Nothing changes its inputs except the
functions whose names end in ``_`` (`step_`, `update_moments_`), the in-place forms a driver
outside autograd uses to avoid θ-sized temporaries.

Conventions. θ ∈ ℝ^P is the flat unconstrained parameter, and the samplers simulate the
rescaled potential V(θ) = T·U_T(θ), where U_T is the tempered potential of
`Objective`; the target is exp(−V/T) = p_T(θ | D).
``grad`` is the minibatch estimate ĝ of ∇V (the driver multiplies ∇U_T by T). A step size
``G`` is a float or a ``(P,)`` tensor (a diagonal preconditioner times the step, G = ε·M⁻¹),
and ``grad_noise`` B̂ is an optional ``(P,)`` estimate of the variance of ĝ (the minibatch
gradient noise), subtracted from the injected noise.

**SGLD** (Welling & Teh 2011; preconditioned: Li, Chen, Carlson & Carin 2016, pSGLD, and
Ahn, Korattikara & Welling 2012)

    θ ← θ − G ĝ + √(2GT − G²B̂) ξ,

the Euler step of the Langevin diffusion whose stationary density is exp(−V/T); the gradient
noise of G ĝ has variance G²B, so injecting 2GT − G²B̂ makes the total 2GT when B̂ = B.

**SGHMC** (Chen, Fox & Guestrin 2014, eq. 15, in the "SGD with momentum" parametrisation;
scale-adapted as in Springenberg, Klein, Falkner & Hutter 2016)

    v ← (1 − α) v − G ĝ + √(2αGT − G²B̂) ξ,    θ ← θ + v,

with friction α ∈ (0, 1] (per coordinate allowed). v = hM⁻¹p is the displacement per step of
the momentum p ~ N(0, T·M) of Hamiltonian dynamics with mass M and time step h, G = h²M⁻¹.
The injected variance must be ≥ 0: α ≥ G B̂ / (2T) (Chen et al.'s condition α ≥ β̂), which
`valid_friction` enforces by raising α where needed. T → 0 gives SGD with momentum 1 − α.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple, Union

import torch

Step = Union[float, torch.Tensor]


def _noise_scale(variance: Step) -> Step:
    if isinstance(variance, torch.Tensor):
        return variance.clamp(min=0.0).sqrt()
    return math.sqrt(max(variance, 0.0))


class Coefficients(NamedTuple):
    """The constants of one step, v ← decay·v − G ĝ + scale·ξ (SGLD: θ ← θ − G ĝ + scale·ξ).

    ``step`` G, ``decay`` 1 − α (SGHMC; ``None`` for SGLD) and ``scale`` √(2αGT − G²B̂) (``None``:
    the noise-free step), each a float or a ``(P,)`` tensor. They depend on the stage's step size,
    friction and noise estimate only, so a driver computes them once per stage (`coefficients`)
    and reuses them at every step of a stage whose constants are frozen."""

    step: Step
    decay: Optional[Step]
    scale: Optional[Step]


def coefficients(kernel: str, step_size: Step, temperature: float, friction: Step = 1.0,
                 grad_noise: Optional[torch.Tensor] = None, noisy: bool = True) -> Coefficients:
    """The `Coefficients` of ``kernel`` (``"sgld"`` or ``"sghmc"``); ``noisy=False``: no noise term."""
    decay = None if kernel == "sgld" else 1.0 - friction
    if not noisy:
        return Coefficients(step_size, decay, None)
    variance, supplied = variance_parts(kernel, step_size, temperature, friction, grad_noise)
    if supplied is not None:
        variance = variance - supplied
    return Coefficients(step_size, decay, _noise_scale(variance))


def variance_parts(kernel: str, step_size: Step, temperature: float, friction: Step = 1.0,
                   grad_noise: Optional[torch.Tensor] = None) -> Tuple[Step, Optional[Step]]:
    """The injected noise's variance as ``(2αGT, G²B̂)``: the variance the dynamics need (α = 1 for SGLD) and the
    share the gradient noise B̂ already supplies (None without ``grad_noise``); the noise term's variance is their
    difference (`coefficients`; the spike guard scales the two parts separately, `pyro_bdl.infer.sgmcmc.guard.SpikeGuard`)."""
    needed = 2.0 * step_size * temperature if kernel == "sgld" else 2.0 * friction * step_size * temperature
    return needed, None if grad_noise is None else step_size * step_size * grad_noise


def _axpy_(out: torch.Tensor, a: Step, x: torch.Tensor) -> torch.Tensor:
    """out += a·x in place (a a float or a tensor): one pass, no temporary."""
    return out.addcmul_(a, x) if isinstance(a, torch.Tensor) else out.add_(x, alpha=a)


def _axmy_(out: torch.Tensor, a: Step, x: torch.Tensor) -> torch.Tensor:
    """out −= a·x in place."""
    return out.addcmul_(a, x, value=-1.0) if isinstance(a, torch.Tensor) else out.add_(x, alpha=-a)


def step_(theta: torch.Tensor, momentum: torch.Tensor, grad: torch.Tensor, c: Coefficients,
          noise: Optional[torch.Tensor]) -> None:
    """One step with `Coefficients` ``c``, **in place** on ``theta`` (and ``momentum`` for SGHMC,
    ``c.decay`` not ``None``): the one implementation of both update rules (module docs). Each term is a
    fused multiply-add into the state (no temporaries; what a driver outside autograd wants)."""
    if c.decay is None:  # SGLD: θ ← θ − G ĝ + scale·ξ
        _axmy_(theta, c.step, grad)
        if noise is not None and c.scale is not None:
            _axpy_(theta, c.scale, noise)
        return
    if isinstance(c.decay, torch.Tensor) or c.decay != 1.0:
        momentum.mul_(c.decay)
    _axmy_(momentum, c.step, grad)
    if noise is not None and c.scale is not None:
        _axpy_(momentum, c.scale, noise)
    theta.add_(momentum)


def sgld_step(theta: torch.Tensor, grad: torch.Tensor, step_size: Step, temperature: float,
              noise: Optional[torch.Tensor], grad_noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """One SGLD step, θ − G ĝ + √(2GT − G²B̂) ξ (``grad`` = ĝ ≈ ∇V, ``noise`` = ξ ~ N(0, I)).

    ``noise=None`` is the noise-free step (SGD; cSG-MCMC's exploration stage); ``grad_noise=None``
    means B̂ = 0 (Welling & Teh's rule). Returns a new tensor (``theta`` is not changed).
    """
    out = theta.clone()
    step_(out, out, grad, coefficients("sgld", step_size, temperature, grad_noise=grad_noise,
                                       noisy=noise is not None), noise)
    return out


def sghmc_step(theta: torch.Tensor, momentum: torch.Tensor, grad: torch.Tensor, step_size: Step,
               momentum_decay: Step, temperature: float, noise: Optional[torch.Tensor],
               grad_noise: Optional[torch.Tensor] = None):
    """One SGHMC step: v ← (1 − α) v − G ĝ + √(2αGT − G²B̂) ξ, then θ ← θ + v. Returns new ``(θ, v)``.

    ``noise=None`` gives SGD with momentum 1 − α (cSG-MCMC's exploration stage).
    """
    out, v = theta.clone(), momentum.clone()
    step_(out, v, grad, coefficients("sghmc", step_size, temperature, momentum_decay, grad_noise,
                                     noisy=noise is not None), noise)
    return out, v


# -- kernels as (init, update) pairs ---------------------------------------------------------------


class KernelState(NamedTuple):
    """The state of one chain: position θ and momentum v (zeros for SGLD)."""

    theta: torch.Tensor
    momentum: torch.Tensor


def init(theta: torch.Tensor) -> KernelState:
    """A chain at ``theta`` with zero momentum."""
    theta = theta.detach().clone()
    return KernelState(theta, torch.zeros_like(theta))


def update(state: KernelState, grad: torch.Tensor, *, kernel: str, step_size: Step, temperature: float,
           noise: Optional[torch.Tensor], friction: Step = 1.0,
           grad_noise: Optional[torch.Tensor] = None) -> KernelState:
    """One step of ``kernel`` (``"sgld"`` or ``"sghmc"``) from ``state`` with gradient ĝ = ``grad``
    (a new state; `step_` is the in-place form)."""
    if kernel == "sgld":
        return KernelState(sgld_step(state.theta, grad, step_size, temperature, noise, grad_noise), state.momentum)
    theta, v = sghmc_step(state.theta, state.momentum, grad, step_size, friction, temperature, noise, grad_noise)
    return KernelState(theta, v)


# -- gradient moments: what the adaptive preconditioner is built from -------------------------------


class GradientMoments(NamedTuple):
    """Running estimates from minibatch gradients.

    ``square``: the mean of ĝ² (per coordinate) since the last reset; ``noise``: the mean of the
    split-batch estimate of Var(ĝ) (`split_batch_noise`); ``count``/``noise_count``: how
    many steps they average; ``ema``: an exponential moving average of ĝ² (decay 0.99, or the
    decay passed to `update_moments`), bias corrected through ``ema_weight`` = 1 − Π decay (Kingma
    & Ba's correction for a varying decay), the RMSprop statistic of the exploration stage.
    """

    square: torch.Tensor
    noise: torch.Tensor
    count: int
    noise_count: int
    ema: torch.Tensor
    ema_weight: float
    mean: Optional[torch.Tensor] = None  # running mean of ĝ (same window as ``square``)
    ema_mean: Optional[torch.Tensor] = None  # EMA of ĝ (same decays as ``ema``)


EMA_DECAY = 0.99


def init_moments(theta: torch.Tensor) -> GradientMoments:
    """Empty moments for a chain at ``theta``."""
    z = torch.zeros_like(theta)
    return GradientMoments(z, z.clone(), 0, 0, z.clone(), 0.0, z.clone(), z.clone())


def reset_means(m: GradientMoments) -> GradientMoments:
    """Forget the running means (a new adaptation window), keep the EMA."""
    z = torch.zeros_like(m.square)
    return GradientMoments(z, z.clone(), 0, 0, m.ema, m.ema_weight, z.clone(), m.ema_mean)


def reset_ema(m: GradientMoments) -> GradientMoments:
    """Forget the EMA too (the gradient estimator changed, e.g. a new control-variate anchor)."""
    z = torch.zeros_like(m.square)
    return GradientMoments(m.square, m.noise, m.count, m.noise_count, z, 0.0, m.mean, z.clone())


def update_moments(m: GradientMoments, grad: torch.Tensor, grad_noise: Optional[torch.Tensor],
                   decay: float = EMA_DECAY, means: bool = True) -> GradientMoments:
    """Add one gradient (and its noise estimate, if any) to the running means (unless ``means=False``) and
    the EMA (``decay``): new moments (`update_moments_` is the in-place form)."""
    copy = GradientMoments(*(v.clone() if isinstance(v, torch.Tensor) else v for v in m))
    return update_moments_(copy, grad, grad_noise, decay, means)


def update_moments_(m: GradientMoments, grad: torch.Tensor, grad_noise: Optional[torch.Tensor],
                    decay: float = EMA_DECAY, means: bool = True) -> GradientMoments:
    """`update_moments` **in place** on ``m``'s tensors (returned with the new counts and weight):

        ema ← d·ema + (1 − d)·ĝ²,  ema_mean ← d·ema_mean + (1 − d)·ĝ,
        and with ``means``: x̄ ← (1 − 1/n)·x̄ + x/n for ĝ² (square), ĝ (mean) and B̂ (noise).
    """
    m.ema.mul_(decay).addcmul_(grad, grad, value=1 - decay)
    m.ema_mean.mul_(decay).add_(grad, alpha=1 - decay)
    weight = decay * m.ema_weight + (1 - decay)
    if not means:
        return m._replace(ema_weight=weight)
    count = m.count + 1
    m.square.mul_(1 - 1 / count).addcmul_(grad, grad, value=1 / count)
    m.mean.mul_(1 - 1 / count).add_(grad, alpha=1 / count)
    noise_count = m.noise_count
    if grad_noise is not None:
        noise_count += 1
        m.noise.mul_(1 - 1 / noise_count).add_(grad_noise, alpha=1 / noise_count)
    return m._replace(count=count, noise_count=noise_count, ema_weight=weight)


def centred(m: GradientMoments) -> GradientMoments:
    r"""The moments with ĝ² replaced by its variance, E[ĝ²] − E[ĝ]² (n/(n − 1)-corrected), in the window
    and the EMA.

    At stationarity E[∇V] = 0 under exp(−V/T), so both are T·H_ii + B_ii; away from it (a chain still
    drifting from its start at δ) the mean gradient ≈ Hδ would enter E[ĝ²] as if it were curvature, and
    the Fisher step lr·T/E[ĝ²] would shrink ∝ 1/δ², stalling the drift it should correct."""
    w = max(m.ema_weight, 1e-12)
    ema_var = (m.ema / w - (m.ema_mean / w) ** 2).clamp(min=0.0) * w
    n = m.count
    square = ((m.square - m.mean ** 2) * (n / (n - 1))).clamp(min=0.0) if n > 1 else m.square
    return m._replace(square=square, ema=ema_var)


def ema_square(m: GradientMoments) -> torch.Tensor:
    """The bias-corrected EMA of ĝ², ema / (1 − Π decay) (Kingma & Ba 2015's correction)."""
    return m.ema / max(m.ema_weight, 1e-12)


def split_batch_noise(g1: torch.Tensor, g2: torch.Tensor, n1: int, n2: int, dataset_size: int) -> torch.Tensor:
    r"""An unbiased estimate of Var(ĝ), the variance of a minibatch gradient, from its two halves.

    ĝ₁, ĝ₂ are the full-data gradient estimates (likelihood scaled by N/n_k) of two disjoint
    halves of a minibatch of m = n₁ + n₂ points drawn without replacement, and ĝ is the
    estimate of the whole minibatch. With s² the per-point gradient variance over the data set,
    Var(ĝ₁ − ĝ₂) = N² s² (1/n₁ + 1/n₂) · N/(N − 1) and Var(ĝ) = N² s² (N − m)/(m (N − 1)), so

        B̂ = (ĝ₁ − ĝ₂)² · (N − m) n₁ n₂ / (N m²),

    which is 0 for the full batch. The prior's gradient is the same in both halves and cancels.
    """
    m = n1 + n2
    return (g1 - g2) ** 2 * ((dataset_size - m) * n1 * n2 / (dataset_size * m * m))


# -- the adaptive step and friction ---------------------------------------------------------------------


def fisher_step_size(square: torch.Tensor, lr: float, temperature: float) -> torch.Tensor:
    r"""G_i = lr · T / E[ĝ_i²]: the step of the adaptive kernels.

    At stationarity E[ĝ_i²] = T·(H)_ii + B_ii for a locally Gaussian posterior with Hessian H of
    V (E[∇V ∇Vᵀ] = T·H under exp(−V/T)) and minibatch noise B. Without minibatch noise the
    preconditioned curvature G_i H_ii is then exactly ``lr`` — the squared oscillation
    frequency per step, whatever N, the curvature or T — and with noise it is smaller, while
    the noise's share of the dynamics, G_i B_ii / (2T), stays ≤ lr/2. This is the diagonal
    empirical-Fisher preconditioner of Ahn et al. (2012, SGFS), which makes ``lr`` a
    dimensionless number (default 0.05).
    """
    return lr * temperature / square.clamp(min=torch.finfo(square.dtype).tiny)


def rmsprop_step_size(square: torch.Tensor, lr: float, delta: float = 1e-8) -> torch.Tensor:
    """G_i = lr / (√E[ĝ_i²] + δ): the RMSprop preconditioner of pSGLD (Li et al. 2016)."""
    return lr / (square.sqrt() + delta)


def critical_friction(square: torch.Tensor, noise: torch.Tensor, step_size: torch.Tensor, temperature: float,
                      floor: float) -> torch.Tensor:
    r"""α_i = max(floor, 2 ω_i) with ω_i² = G_i · (E[ĝ_i²] − B̂_i) / T, clipped to 1.

    E[ĝ_i²] − B̂_i ≈ T·H_ii estimates the curvature without the minibatch noise, so ω_i is the
    oscillation frequency per step of coordinate i and α_i = 2ω_i damps it critically (the
    fastest relaxation of a damped oscillator). Coordinates whose gradient is all noise get
    the ``floor``.
    """
    curvature = (square - noise).clamp(min=0.0) / temperature
    omega = (step_size * curvature).sqrt()
    return torch.clamp(torch.maximum(2 * omega, torch.full_like(omega, floor)), max=1.0)


def valid_friction(friction: Step, step_size: Step, grad_noise: torch.Tensor, temperature: float,
                   margin: float = 0.1) -> torch.Tensor:
    r"""Raise α where needed so that the injected SGHMC noise 2αGT − G²B̂ stays ≥ 2·margin·αGT:
    α_i ≥ G_i B̂_i / (2T(1 − margin)) (Chen et al. 2014, §3.2: α ≥ β̂), at most 1."""
    need = step_size * grad_noise / (2 * temperature * (1 - margin))
    base = torch.as_tensor(friction, dtype=grad_noise.dtype, device=grad_noise.device)
    return torch.clamp(torch.maximum(base.expand_as(grad_noise), need), max=1.0)


# -- control-variate gradients (SGLD-CV, SGHMC-CV) ----------------------------------------------------------


def control_variate(grad: torch.Tensor, anchor_batch_grad: torch.Tensor, anchor_full_grad: torch.Tensor) -> torch.Tensor:
    r"""The control-variate gradient estimate ĝ_cv(θ) = ∇U(θ̂) + ĝ(θ) − ĝ(θ̂) (Baker, Fearnhead, Fox &
    Nemeth 2019, SGLD-CV; the SVRG-LD estimator of Dubey et al. 2016 with a fixed anchor).

    ``grad`` = ĝ(θ) and ``anchor_batch_grad`` = ĝ(θ̂) are the minibatch estimates (likelihood scaled
    by N/B) of the same minibatch at the chain's θ and at the anchor θ̂, ``anchor_full_grad`` =
    ∇U(θ̂) the full-data gradient at the anchor. Unbiased for ∇U(θ) (E ĝ(θ̂) = ∇U(θ̂)); its noise is
    that of (N/B) Σ_batch [∇u_i(θ) − ∇u_i(θ̂)] ≈ (N/B) Σ_batch ∇²u_i (θ − θ̂), of variance ∝ ‖θ − θ̂‖²,
    i.e. ∝ T near a mode, where the plain estimate's is T-independent.
    """
    return anchor_full_grad + grad - anchor_batch_grad


def prefer_control_variate(plain: GradientMoments, cv: GradientMoments, cost_factor: float = 2.0) -> bool:
    r"""``gradient="auto"``: use the control-variate gradient when, measured on the same warm-up steps, it
    shortens the chain's relaxation time by more than its ``cost_factor`` (a second minibatch gradient per step).

    Both estimates share the gradient signal S_i = E[ĝ_i²] − B_i (≈ T·H_ii at stationarity), estimated from
    the control variate's moments (its noise is the smaller one). With G_i = lr·T/E[ĝ_i²] the
    preconditioned curvature is G_iH_ii = lr·S_i/(S_i + B_i), so the relaxation time in steps grows like
    (S_i + B_i)/S_i (exactly for SGLD; conservative for critically damped SGHMC) and the slowest coordinate
    sets the run's: the control variate wins when cost_factor · max_i (S_i + B_i^cv)/S_i < max_i (S_i + B_i^plain)/S_i.
    """
    if cv.count == 0 or cv.noise_count == 0 or plain.noise_count == 0:
        return False
    signal = torch.maximum(cv.square - cv.noise, 1e-3 * cv.square).clamp(min=torch.finfo(cv.square.dtype).tiny)
    cost = lambda noise: float(((signal + noise.clamp(min=0.0)) / signal).max())  # noqa: E731
    return cost_factor * cost(cv.noise) < cost(plain.noise)
