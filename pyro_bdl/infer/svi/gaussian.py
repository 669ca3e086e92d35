"""The built-in guides as flat Gaussians q = N(μ, Σ) over the guide's latent vector (its sites in trace order).

One view per family, shared by the stationarity check (`pyro_bdl.infer.svi.check`) and the finish
(`pyro_bdl.infer.svi.finish`): a draw μ + Lε, the product Σv, the marginal sds, ½ log det Σ, and the family's
minimiser of the Gaussian free energy on a quadratic potential (below). The parameters are held in float64 in the
guide's own parametrisation, so any point of the family is a valid guide and a step between two of them (the
finish's line search) stays in the family:

* mean-field (``AutoNormal``): Σ = diag(s²), held as (μ, log s);
* low-rank (``AutoLowRankMultivariateNormal``): Σ = S(FFᵀ + I)S with S = diag(s) and F the ``(P, r)``
  ``cov_factor`` (Pyro's parametrisation), held as (μ, F, log s);
* full-rank (``AutoMultivariateNormal``): Σ = LLᵀ, L lower triangular with a positive diagonal.

No family forms a P×P matrix except full-rank's own factor, so the check also runs on networks.

**Free energy on a quadratic.** For U(w) = const + gᵀ(w − c) + ½(w − c)ᵀH(w − c) (H positive definite) the negative
ELBO of q = N(μ, Σ) is U(μ) + ½ tr(HΣ) − ½ log det Σ + const: the mean and the covariance separate. The mean's
optimum is c − H⁻¹g in every family; the covariance's (`covariance_optimum`) is

* full-rank: Σ = H⁻¹;
* mean-field: s_k² = 1/H_kk (Bishop 2006, §10.1.2; with the tempered U, the T/Λ_kk of the untempered precision);
* low-rank: no closed form; minimised over (F, log s) by L-BFGS (below).
"""
from __future__ import annotations

import math
from typing import List, Optional

import pyro
import torch
from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoMultivariateNormal, AutoNormal
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import PyroParam
from torch.distributions import constraints

from .guides import _is_real

#: L-BFGS iterations of the low-rank covariance optimum (each costs O(P²r) flops: cheap for P ≤ 200)
LOWRANK_ITERATIONS = 500


class Gaussian:
    """q = N(μ, Σ) of a built-in guide, flat (module docs). ``names``/``shapes``: the guide's sites in order."""

    def __init__(self, names: List[str], shapes: List[torch.Size], mu: torch.Tensor, dtype: torch.dtype,
                 device: torch.device):
        self.names, self.shapes, self.mu = names, shapes, mu
        self.sizes = [math.prod(s) for s in shapes]
        self.dtype, self.device = dtype, device  # the guide's (the potential is evaluated in them)

    @property
    def size(self) -> int:
        return self.mu.numel()

    def with_mean(self, mu: torch.Tensor) -> "Gaussian":
        out = self._like()
        out.mu = mu
        return out

    def _like(self) -> "Gaussian":
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        return out

    # family-specific: eps_dim, draw, cov_mv, sd, half_logdet, covariance_optimum, towards, write


class MeanField(Gaussian):
    def __init__(self, names, shapes, mu, log_s, dtype, device):
        super().__init__(names, shapes, mu, dtype, device)
        self.log_s = log_s

    @property
    def eps_dim(self) -> int:
        return self.size

    def root(self, eps: torch.Tensor) -> torch.Tensor:
        """Lε with Σ = LLᵀ, for ε ``(..., eps_dim)`` standard normal: the draw is μ + Lε."""
        return self.log_s.exp() * eps

    def cov_mv(self, v: torch.Tensor) -> torch.Tensor:
        return self.log_s.exp().pow(2) * v

    @property
    def sd(self) -> torch.Tensor:
        return self.log_s.exp()

    def half_logdet(self) -> float:
        return float(self.log_s.sum())

    def trace_h(self, h: torch.Tensor) -> float:
        """tr(HΣ)."""
        return float((h.diagonal() * self.log_s.exp().pow(2)).sum())

    def covariance_optimum(self, h: torch.Tensor) -> "MeanField":
        out = self._like()
        out.log_s = -0.5 * h.diagonal().log()
        return out

    def towards(self, other: "MeanField", alpha: float) -> "MeanField":
        out = self._like()
        out.mu = self.mu + alpha * (other.mu - self.mu)
        out.log_s = self.log_s + alpha * (other.log_s - self.log_s)
        return out

    def write(self, guide) -> None:
        mus = torch.split(self.mu, self.sizes)
        sds = torch.split(self.log_s.exp(), self.sizes)
        for name, shape, m, s in zip(self.names, self.shapes, mus, sds):
            event_dim = guide._event_dims[name]
            deep_setattr(guide.locs, name, PyroParam(m.reshape(shape).to(self.dtype), constraints.real, event_dim))
            deep_setattr(guide.scales, name, PyroParam(s.reshape(shape).to(self.dtype), guide.scale_constraint,
                                                       event_dim))


class LowRank(Gaussian):
    def __init__(self, names, shapes, mu, factor, log_s, dtype, device):
        super().__init__(names, shapes, mu, dtype, device)
        self.factor, self.log_s = factor, log_s

    @property
    def eps_dim(self) -> int:
        return self.size + self.factor.shape[1]

    def root(self, eps: torch.Tensor) -> torch.Tensor:
        r = self.factor.shape[1]
        return self.log_s.exp() * (eps[..., :r] @ self.factor.T + eps[..., r:])

    def cov_mv(self, v: torch.Tensor) -> torch.Tensor:
        s = self.log_s.exp()
        sv = s * v
        return s * (self.factor @ (self.factor.T @ sv) + sv)

    @property
    def sd(self) -> torch.Tensor:
        return self.log_s.exp() * (1 + self.factor.pow(2).sum(-1)).sqrt()

    def half_logdet(self) -> float:
        r = self.factor.shape[1]
        inner = torch.eye(r, dtype=self.factor.dtype, device=self.factor.device) + self.factor.T @ self.factor
        return float(self.log_s.sum() + 0.5 * torch.logdet(inner))

    def trace_h(self, h: torch.Tensor) -> float:
        s = self.log_s.exp()
        b = s[:, None] * h * s[None, :]
        return float(b.diagonal().sum() + (self.factor * (b @ self.factor)).sum())

    def covariance_optimum(self, h: torch.Tensor) -> Optional["LowRank"]:
        """argmin over (F, s) of ½ tr(HΣ) − ½ log det Σ, Σ = S(FFᵀ + I)S (module docs), by L-BFGS from the current
        (F, s); None if it does not end finite.

        In the variables t = s·√H_kk the objective is the same with H replaced by its unit-diagonal
        Ĥ = D^(−½)HD^(−½) (D = diag H; the change adds a constant), so the solve does not see H's scale (posterior
        sds from 10⁻⁵ to 10): ½ Σ_ij t_i Ĥ_ij t_j (FFᵀ + I)_ij − Σ log t − ½ log det(I + FᵀF), with gradients by
        autograd (O(P²r) per evaluation). The low-rank part is invariant to F → FR (R orthogonal), which L-BFGS
        does not mind; F = 0 is a saddle, away from which Pyro's random initial F starts."""
        d = h.diagonal().sqrt()
        hn = h / d[:, None] / d[None, :]
        factor = self.factor.detach().clone().requires_grad_(True)
        log_t = (self.log_s + d.log()).detach().clone().requires_grad_(True)
        eye_p = torch.eye(self.size, dtype=h.dtype, device=h.device)
        eye_r = torch.eye(factor.shape[1], dtype=h.dtype, device=h.device)

        def objective():
            t = log_t.exp()
            m = factor @ factor.T + eye_p
            return 0.5 * (t[:, None] * hn * t[None, :] * m).sum() - log_t.sum() - 0.5 * torch.logdet(
                eye_r + factor.T @ factor)

        opt = torch.optim.LBFGS([factor, log_t], lr=1.0, max_iter=LOWRANK_ITERATIONS, tolerance_grad=1e-10,
                                tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            value = objective()
            value.backward()
            return value

        with torch.enable_grad():
            opt.step(closure)
        if not (bool(torch.isfinite(factor).all()) and bool(torch.isfinite(log_t).all())):
            return None
        out = self._like()
        out.factor, out.log_s = factor.detach(), log_t.detach() - d.log()
        return out

    def towards(self, other: "LowRank", alpha: float) -> "LowRank":
        out = self._like()
        out.mu = self.mu + alpha * (other.mu - self.mu)
        out.factor = self.factor + alpha * (other.factor - self.factor)
        out.log_s = self.log_s + alpha * (other.log_s - self.log_s)
        return out

    def write(self, guide) -> None:
        guide.loc.data.copy_(self.mu.to(self.dtype))
        guide.cov_factor.data.copy_(self.factor.to(self.dtype))
        guide.scale = PyroParam(self.log_s.exp().to(self.dtype), guide.scale_constraint)


class FullRank(Gaussian):
    def __init__(self, names, shapes, mu, chol, dtype, device):
        super().__init__(names, shapes, mu, dtype, device)
        self.chol = chol

    @property
    def eps_dim(self) -> int:
        return self.size

    def root(self, eps: torch.Tensor) -> torch.Tensor:
        return eps @ self.chol.T

    def cov_mv(self, v: torch.Tensor) -> torch.Tensor:
        return self.chol @ (self.chol.T @ v)

    @property
    def sd(self) -> torch.Tensor:
        return self.chol.pow(2).sum(-1).sqrt()

    def half_logdet(self) -> float:
        return float(self.chol.diagonal().log().sum())

    def trace_h(self, h: torch.Tensor) -> float:
        return float((self.chol * (h @ self.chol)).sum())

    def covariance_optimum(self, h: torch.Tensor) -> Optional["FullRank"]:
        """Σ = H⁻¹ (module docs), as its Cholesky factor; None if H⁻¹ is not numerically positive definite."""
        h_chol, info = torch.linalg.cholesky_ex(h)
        if int(info) != 0:
            return None
        cov = torch.cholesky_inverse(h_chol)
        chol, info = torch.linalg.cholesky_ex((cov + cov.T) / 2)
        if int(info) != 0:
            return None
        out = self._like()
        out.chol = chol
        return out

    def towards(self, other: "FullRank", alpha: float) -> "FullRank":
        # both factors are lower triangular with positive diagonals, so every convex combination is one too
        out = self._like()
        out.mu = self.mu + alpha * (other.mu - self.mu)
        out.chol = self.chol + alpha * (other.chol - self.chol)
        return out

    def write(self, guide) -> None:
        scale = self.chol.diagonal()
        guide.loc.data.copy_(self.mu.to(self.dtype))
        guide.scale = PyroParam(scale.to(self.dtype), guide.scale_constraint)
        guide.scale_tril = PyroParam((self.chol / scale.unsqueeze(-1)).to(self.dtype), guide.scale_tril_constraint)


def gaussian_view(guide) -> Optional[Gaussian]:
    """The built-in ``guide`` as a flat `Gaussian` (float64 copies of its parameters; module docs), or None for a
    user's guide or one with a constrained site (a learned noise scale: its unconstrained coordinate is no weight)."""
    if not isinstance(guide, (AutoNormal, AutoLowRankMultivariateNormal, AutoMultivariateNormal)):
        return None
    names = [name for name, _ in guide.prototype_trace.iter_stochastic_nodes()]
    if not all(_is_real(guide.prototype_trace.nodes[n]["fn"].support) for n in names):
        return None
    f64 = torch.float64
    with torch.no_grad(), pyro.settings.context(module_local_params=True):
        if isinstance(guide, AutoNormal):
            parts = [guide._get_loc_and_scale(n) for n in names]
            shapes = [loc.shape for loc, _ in parts]
            loc = torch.cat([l.detach().reshape(-1) for l, _ in parts])
            sd = torch.cat([s.detach().reshape(-1) for _, s in parts])
            return MeanField(names, shapes, loc.to(f64), sd.to(f64).log(), loc.dtype, loc.device)
        shapes = [guide.prototype_trace.nodes[n]["value"].shape for n in names]
        loc = guide.loc.detach()
        if isinstance(guide, AutoLowRankMultivariateNormal):
            return LowRank(names, shapes, loc.to(f64), guide.cov_factor.detach().to(f64),
                           guide.scale.detach().to(f64).log(), loc.dtype, loc.device)
        chol = guide.scale.detach()[..., None] * guide.scale_tril.detach()
        return FullRank(names, shapes, loc.to(f64), chol.to(f64), loc.dtype, loc.device)
