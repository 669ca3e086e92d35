"""Distances between two distributions over functions, given draws of function values.

Draws are matrices ``(num_draws, num_values)``: row s holds one function evaluated at the
measurement inputs (all outputs flattened). Three distances:

* [`gaussian_w2`][pyro_bdl.function_priors.gaussian_w2] — the closed-form 2-Wasserstein distance between the Gaussians fitted to
  the two sets of draws (means μ, covariances Σ; Dowson & Landau 1982, Givens & Shortt 1984):

      W₂²(N(μ₁, Σ₁), N(μ₂, Σ₂)) = ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁^{½} Σ₂ Σ₁^{½})^{½}.

  Cheap and stable; it compares only first and second moments, which is all there is to a GP.
* [`WassersteinCritic`][pyro_bdl.function_priors.WassersteinCritic] / [`dual_w1`][pyro_bdl.function_priors.dual_w1] — the 1-Wasserstein distance in its
  Kantorovich–Rubinstein dual form, W₁(p, q) = sup_{‖φ‖_L ≤ 1} E_p[φ(f)] − E_q[φ(f)], with φ a
  neural critic kept 1-Lipschitz by a gradient penalty (Gulrajani et al. 2017) or spectral
  normalisation (Miyato et al. 2018). This is the objective of Tran et al. 2022 ("All you need is a
  good functional prior for Bayesian deep learning", JMLR), exact for non-Gaussian processes too.
* [`mmd`][pyro_bdl.function_priors.mmd] — the kernel maximum mean discrepancy (Gretton et al. 2012), a second, moment-free check.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .._util.random import seeded
from .._util.checks import check_int


def _as_draws(f: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.is_tensor(f):
        raise TypeError(f"{what} must be a tensor of function draws (num_draws, num_values), got {type(f).__name__}")
    if f.dim() == 3:  # (draws, points, outputs) -> one vector per draw
        f = f.reshape(f.shape[0], -1)
    if f.dim() != 2 or f.shape[0] < 2:
        raise ValueError(f"{what} must have shape (num_draws >= 2, num_values), got {tuple(f.shape)}")
    return f


def sqrtm_psd(C: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a positive semi-definite matrix by eigendecomposition,
    C^{½} = V diag(√max(λ, 0)) Vᵀ (negative round-off eigenvalues are clipped to 0)."""
    C = 0.5 * (C + C.transpose(-1, -2))
    evals, evecs = torch.linalg.eigh(C)
    return (evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)) @ evecs.transpose(-1, -2)


def gaussian_w2_moments(mean1: torch.Tensor, cov1: torch.Tensor, mean2: torch.Tensor, cov2: torch.Tensor,
                        rel_eps: float = 1e-10) -> torch.Tensor:
    """W₂ between N(mean1, cov1) and N(mean2, cov2) (see the module docstring).

    Numerics: Σ₁^{½} comes from a symmetric eigendecomposition, and tr (Σ₁^{½} Σ₂ Σ₁^{½})^{½}
    = Σᵢ √λᵢ from the *eigenvalues only* of the symmetric matrix Σ₁^{½} Σ₂ Σ₁^{½}. The gradient of
    eigenvalues, V diag(g) Vᵀ, has none of the 1/(λᵢ − λⱼ) terms of an eigenvector gradient, so it
    stays finite when eigenvalues repeat (rank-deficient sample covariances); eigenvalues below
    ``rel_eps`` · λ_max are treated as zero (√ has an infinite slope at 0). Gradients with respect to
    ``cov2`` are stable; pass the fixed distribution (the target) first. Computed in float64.
    """
    dtype = cov2.dtype
    m1, C1, m2, C2 = (t.to(torch.float64) for t in (mean1, cov1, mean2, cov2))
    root1 = sqrtm_psd(C1)
    inner = root1 @ C2 @ root1
    inner = 0.5 * (inner + inner.transpose(-1, -2))
    lam = torch.linalg.eigvalsh(inner)
    floor = rel_eps * lam.detach().abs().max().clamp_min(1e-300)
    cross = torch.where(lam > floor, lam.clamp_min(floor).sqrt(), torch.zeros_like(lam)).sum(-1)
    w2sq = ((m1 - m2) ** 2).sum(-1) + C1.diagonal(dim1=-2, dim2=-1).sum(-1) + C2.diagonal(dim1=-2, dim2=-1).sum(-1) \
        - 2.0 * cross
    return w2sq.clamp_min(0).add(1e-30).sqrt().to(dtype)


def moments(f: torch.Tensor):
    """Sample mean and covariance (divisor S − 1) of draws ``(S, M)``."""
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def gaussian_w2(f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """W₂ between the Gaussians fitted (sample mean and covariance) to draws ``f`` and ``g``.

    ``f``, ``g``: ``(num_draws, num_values)`` (or ``(num_draws, points, outputs)``); the draw counts may
    differ. Differentiable; the square root is taken of the covariance that needs no gradient (the
    distance is symmetric), so gradients flow through eigenvalues only.
    """
    f, g = _as_draws(f, "f"), _as_draws(g, "g")
    if f.shape[1] != g.shape[1]:
        raise ValueError(f"f and g must hold values at the same points: {f.shape[1]} vs {g.shape[1]} values per draw")
    if f.requires_grad and not g.requires_grad:
        f, g = g, f
    mf, cf = moments(f.to(torch.float64))
    mg, cg = moments(g.to(torch.float64))
    return gaussian_w2_moments(mf, cf, mg, cg).to(g.dtype)


def mmd(f: torch.Tensor, g: torch.Tensor, bandwidth: Optional[float] = None) -> torch.Tensor:
    """Unbiased squared MMD with a Gaussian kernel exp(−‖u − v‖² / 2h²) between draws ``f`` and ``g``
    (Gretton et al. 2012); ``h`` defaults to the median distance of the pooled draws."""
    f, g = _as_draws(f, "f"), _as_draws(g, "g")
    if f.shape[1] != g.shape[1]:
        raise ValueError(f"f and g must hold values at the same points: {f.shape[1]} vs {g.shape[1]} values per draw")
    f, g = f.to(torch.float64), g.to(torch.float64)
    pooled = torch.cat([f, g])
    d2 = torch.cdist(pooled, pooled) ** 2
    if bandwidth is None:
        off = d2[~torch.eye(len(pooled), dtype=torch.bool)]
        bandwidth = float(off.detach().median().clamp_min(1e-12).sqrt())
    k = torch.exp(-d2 / (2.0 * bandwidth ** 2))
    n, m = len(f), len(g)
    kff, kgg, kfg = k[:n, :n], k[n:, n:], k[:n, n:]
    term_f = (kff.sum() - kff.diagonal().sum()) / (n * (n - 1))
    term_g = (kgg.sum() - kgg.diagonal().sum()) / (m * (m - 1))
    return term_f + term_g - 2.0 * kfg.mean()


LIPSCHITZ = ("penalty", "spectral")


class WassersteinCritic(nn.Module):
    """A critic φ: ℝ^M → ℝ for the dual form W₁(p, q) = sup_{‖φ‖_L ≤ 1} E_p φ − E_q φ.

    The critic is an MLP with LeakyReLU units. It is kept (approximately) 1-Lipschitz by either

    * ``lipschitz="penalty"``: the WGAN-GP term λ E_{f̂}[(‖∇φ(f̂)‖ − 1)²] at random interpolates
      f̂ = t f + (1 − t) g, t ~ U(0, 1) (Gulrajani et al. 2017), which Tran et al. 2022 use, or
    * ``lipschitz="spectral"``: spectral normalisation of every weight matrix (Miyato et al. 2018);
      LeakyReLU is 1-Lipschitz, so φ is, but the class is smaller and the estimate lower.

    `update` takes critic steps (Adam) that maximise E_f φ − E_g φ − penalty on detached draws;
    `dual` is the differentiable estimate E_f φ − E_g φ that the prior's parameters minimise.

    Args:
        num_values: M, the length of one function draw (points × outputs).
        hidden: hidden widths.
        lipschitz: ``"penalty"`` or ``"spectral"``.
        penalty: λ of the gradient penalty.
        lr: the critic's Adam step size.
        seed: initialisation seed.
    """

    def __init__(self, num_values: int, hidden: Sequence[int] = (128, 128), lipschitz: str = "penalty",
                 penalty: float = 10.0, lr: float = 1e-3, seed: int = 0):
        super().__init__()
        if lipschitz not in LIPSCHITZ:
            raise ValueError(f"lipschitz must be one of {LIPSCHITZ}, got {lipschitz!r}")
        check_int(num_values, 'num_values', 1)
        if not penalty > 0 or not lr > 0:
            raise ValueError(f"penalty and lr must be > 0, got penalty={penalty!r}, lr={lr!r}")
        self.num_values = num_values
        self.lipschitz = lipschitz
        self.penalty_weight = float(penalty)
        self._generator = torch.Generator().manual_seed(seed)
        layers, width = [], num_values
        with seeded(seed):
            for h in list(hidden) + [1]:
                linear = nn.Linear(width, h)
                if lipschitz == "spectral":
                    linear = nn.utils.parametrizations.spectral_norm(linear)
                layers += [linear, nn.LeakyReLU(0.2)]
                width = h
        self.net = nn.Sequential(*layers[:-1])
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr, betas=(0.5, 0.9))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f).squeeze(-1)

    def dual(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """E_f φ − E_g φ: the dual estimate of W₁ (a lower bound for any 1-Lipschitz φ)."""
        f, g = _as_draws(f, "f"), _as_draws(g, "g")
        return self(f).mean() - self(g).mean()

    def gradient_penalty(self, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """λ E[(‖∇φ(f̂)‖₂ − 1)²] at interpolates of paired draws (Gulrajani et al. 2017)."""
        n = min(len(f), len(g))
        t = torch.rand(n, 1, generator=self._generator, dtype=f.dtype)
        mix = (t * f[:n] + (1 - t) * g[:n]).requires_grad_(True)
        (grad,) = torch.autograd.grad(self(mix).sum(), mix, create_graph=True)
        return self.penalty_weight * ((grad.norm(dim=-1) - 1) ** 2).mean()

    def update(self, f: torch.Tensor, g: torch.Tensor, steps: int = 1) -> float:
        """``steps`` critic ascent steps on E_f φ − E_g φ (− penalty); returns the last dual estimate."""
        f, g = _as_draws(f, "f").detach(), _as_draws(g, "g").detach()
        if f.shape[1] != self.num_values or g.shape[1] != self.num_values:
            raise ValueError(f"the critic takes {self.num_values} values per draw, got {f.shape[1]} and {g.shape[1]}")
        value = float("nan")
        for _ in range(steps):
            self.optimizer.zero_grad()
            est = self.dual(f, g)
            loss = -est
            if self.lipschitz == "penalty":
                loss = loss + self.gradient_penalty(f, g)
            loss.backward()
            self.optimizer.step()
            value = float(est.detach())
        return value


def dual_w1(f: torch.Tensor, g: torch.Tensor, steps: int = 500, seed: int = 0, **critic_options) -> float:
    """W₁ between the empirical distributions of draws ``f`` and ``g`` by training a fresh
    [`WassersteinCritic`][pyro_bdl.function_priors.WassersteinCritic] for ``steps`` steps; returns its final dual estimate E_f φ − E_g φ."""
    f, g = _as_draws(f, "f"), _as_draws(g, "g")
    if f.shape[1] != g.shape[1]:
        raise ValueError(f"f and g must hold values at the same points: {f.shape[1]} vs {g.shape[1]} values per draw")
    critic = WassersteinCritic(f.shape[1], seed=seed, **critic_options)
    critic.update(f, g, steps)
    with torch.no_grad():
        return float(critic.dual(f, g))
