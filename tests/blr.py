"""Bayesian linear regression: the closed-form posterior every inference method is checked against.

Model: y = A β + ε, A = [X, 1] (a torch ``Linear`` with bias), β ~ N(0, s² I), ε ~ N(0, σ² I).
Posterior precision Λ = AᵀA/σ² + I/s², mean μ = Λ⁻¹ Aᵀy / σ².
Tempered (Wenzel et al. 2020):
* posterior tempering, (p(y|β) p(β))^(1/T): precision Λ/T, mean μ (covariance × T);
* likelihood tempering, p(y|β)^(1/T) p(β): precision AᵀA/(Tσ²) + I/s², mean Λ_T⁻¹ Aᵀy/(Tσ²).
Coordinates are ordered like the model's sites: weight entries, then bias.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import pyro_bdl as bdl


@dataclass
class BLR:
    x: torch.Tensor
    y: torch.Tensor
    prior_scale: float
    noise: float

    def model(self, temperature: float = 1.0, tempering: str = "posterior") -> bdl.BayesianModel:
        torch.manual_seed(0)
        net = torch.nn.Linear(self.x.shape[1], 1)
        return bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, self.prior_scale),
                                 likelihood=bdl.likelihoods.Gaussian(scale=self.noise),
                                 temperature=temperature, tempering=tempering)

    def design(self) -> torch.Tensor:
        x = self.x.double()
        return torch.cat([x, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)

    def posterior(self, temperature: float = 1.0, tempering: str = "posterior"):
        """(mean, covariance) of the (tempered) posterior over [weight..., bias], float64."""
        A, y = self.design(), self.y.double()
        lik_T = temperature
        eye = torch.eye(A.shape[1], dtype=torch.float64)
        prec = A.T @ A / (self.noise ** 2 * lik_T) + eye / self.prior_scale ** 2
        if tempering == "posterior":
            prec = (A.T @ A / self.noise ** 2 + eye / self.prior_scale ** 2) / temperature
            cov = torch.linalg.inv(prec)
            mean = cov @ A.T @ y / (self.noise ** 2 * temperature)
        else:
            cov = torch.linalg.inv(prec)
            mean = cov @ A.T @ y / (self.noise ** 2 * lik_T)
        return mean, cov


def make_blr(n: int = 30, d: int = 2, noise: float = 0.5, prior_scale: float = 1.0, seed: int = 0) -> BLR:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    beta = torch.tensor([1.0, -0.5, 0.8, 0.3][:d])
    y = x @ beta + 0.3 + noise * torch.randn(n, generator=g)
    return BLR(x, y, prior_scale, noise)


def make_rotated_blr(n: int = 50, d: int = 5, noise: float = 0.02, cond: float = 1e3, prior_scale: float = 1.0,
                     seed: int = 101) -> BLR:
    """A BLR with an ill-conditioned, rotated design: X = √n·Q·diag(cond^(−j/(2(d−1))))·Vᵀ (Q, V random orthonormal,
    X's columns centred), so κ(XᵀX) = cond along directions that are no coordinate axis; true β ~ N(0, 1), bias 0.3."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(z - z.mean(0))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    x = n ** 0.5 * q @ torch.diag(cond ** (-torch.linspace(0, 1, d, dtype=torch.float64) / 2)) @ v.T
    y = x @ torch.randn(d, generator=g, dtype=torch.float64) + 0.3 + noise * torch.randn(n, generator=g, dtype=torch.float64)
    return BLR(x.float(), y.float(), prior_scale, noise)


def as_matrix(draws: dict) -> torch.Tensor:
    """Weight draws {site: (S, ...)} -> (S, d+1) float64 matrix [weight..., bias]."""
    return torch.cat([draws["weight"].reshape(len(draws["weight"]), -1),
                      draws["bias"].reshape(len(draws["bias"]), -1)], dim=1).double()


def moments(draws: dict):
    m = as_matrix(draws)
    return m.mean(0), torch.cov(m.T)


def assert_gaussian_close(mean, cov, true_mean, true_cov, mean_tol: float, cov_tol: float) -> None:
    """Mean within ``mean_tol`` posterior sds; covariance within ``cov_tol`` relative (Frobenius, after whitening)."""
    sd = true_cov.diag().sqrt()
    z = ((mean - true_mean) / sd).abs().max().item()
    assert z < mean_tol, f"mean off by {z:.3f} posterior sds (tol {mean_tol}): {mean} vs {true_mean}"
    # Whitened covariance L⁻¹ Σ̂ L⁻ᵀ should be the identity.
    L = torch.linalg.cholesky(true_cov)
    W = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, cov, upper=False).T, upper=False)
    err = (W - torch.eye(len(W), dtype=W.dtype)).norm().item() / len(W) ** 0.5
    assert err < cov_tol, f"covariance off by {err:.3f} (tol {cov_tol}):\n{cov}\nvs\n{true_cov}"
