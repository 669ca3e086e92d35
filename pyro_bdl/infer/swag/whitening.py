"""SWAG's dense linear whitening of θ from measured minibatch gradients, for small models (issue 13).

(SG-MCMC whitens by the full-data Hessian instead, `pyro_bdl.infer.sgmcmc.whitening`: Mandt et al.'s result below
needs the noise covariance V itself.)

Diagonal preconditioners (SWAG's Mandt rates, SG-MCMC's Fisher) are exact only when the gradient noise V is
diagonal in the coordinates they act in. A rotated, ill-conditioned posterior (Bayesian linear regression with a
correlated design) breaks that: along its stiff combinations the diagonal rates are far too large, along the weak
ones far too small, and a collection or chain of any practical length does not spread like the posterior.

A fixed linear change of coordinates θ = θ₀ + Lφ fixes it without touching the methods: with LᵀVL = I the noise is
white in φ, so the diagonal rules, run on φ's gradients Lᵀ∇U, meet their premise; a diagonal rate vector r in φ is
the dense preconditioner L·diag(r)·Lᵀ in θ. For SWAG this is Mandt et al. (2017, Sec. 4)'s full-preconditioner
result: SGD with ε = 2(1 − β)/N · V⁻¹ has the stationary covariance (N·A)⁻¹ for *any* Hessian A — here
ε = c·L·Lᵀ = c·V⁻¹. The change is constant, so densities and every expectation are unchanged.

V is estimated from n ≳ P gradients, so the sample covariance is shrunk towards its diagonal (Schäfer & Strimmer
2005, target "D": the variances are kept, the correlations r_ij are multiplied by 1 − λ with

    λ* = Σ_{i≠j} Var̂(r_ij) / Σ_{i≠j} r_ij²,   Var̂(r_ij) ≈ (1 − r_ij²)² / n,

clipped to [0, 1]), which keeps it positive definite and makes it the diagonal rule again when the measured
correlations are no larger than their noise. Cost: P² per whitened gradient, P³ once; hence ``DENSE_MAX_PARAMS``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..sgmcmc.whitening import DENSE_MAX_SIZE

#: the largest θ for which ``preconditioner="auto"`` whitens densely: SG-MCMC's limit (P² per step, the P×P factor in
#: every checkpoint; `pyro_bdl.infer.sgmcmc.whitening`)
DENSE_MAX_PARAMS = DENSE_MAX_SIZE
#: gradients measured per parameter for a dense estimate (n ≥ 4P: the shrinkage weight λ* is then small)
GRADIENTS_PER_PARAM = 4

PRECONDITIONERS = ("auto", "dense", "fisher")  # the names SG-MCMC uses for the same choice


def check_preconditioner(value) -> str:
    if value not in PRECONDITIONERS:
        raise ValueError(f"preconditioner must be 'auto' (dense for a generalised linear model of ≤ "
                         f"{DENSE_MAX_PARAMS} parameters, else 'fisher'), 'dense' or 'fisher' (the diagonal rates from "
                         f"the gradients' second moments); got {value!r}")
    return value


def is_linear(net) -> bool:
    """Whether ``net`` is an affine map of its input (a ``torch.nn.Linear``, or a ``Sequential`` of them and of
    reshaping layers): the model is then a generalised linear model, its posterior log-concave and unimodal."""
    if isinstance(net, nn.Linear):
        return True
    return (isinstance(net, nn.Sequential) and len(net) > 0
            and all(isinstance(m, (nn.Linear, nn.Identity, nn.Flatten)) for m in net))


def use_dense(preconditioner: str, objective) -> bool:
    """Whether ``preconditioner`` (`check_preconditioner`) whitens the θ of ``objective`` (a
    `pyro_bdl.model.potential.Objective`) densely: ``"dense"``, or ``"auto"`` for a generalised linear model
    (`is_linear`) of at most `DENSE_MAX_PARAMS` parameters whose density compiles (weights and the likelihood's
    noise only: no hyperprior sites).

    Why only there by default: a GLM's Fisher equals its Hessian near the mode, so the measured noise is the
    curvature the whitening is meant to undo, and its posterior is the Gaussian the full covariance describes. A
    network's empirical Fisher is far from its Hessian for confident or dead units (`GradientNoise`), and its
    default path is kept as it was measured on digits; a hyperprior's coordinates get no data noise at all (their
    gradient is the prior's), so V is singular there."""
    if preconditioner == "dense":
        return True
    return (preconditioner == "auto" and objective.size <= DENSE_MAX_PARAMS and objective.compiled
            and is_linear(objective.model.net))


def shrunk_covariance(grads: torch.Tensor) -> torch.Tensor:
    """The covariance of the rows of ``grads`` ``(n, P)``, its correlations shrunk towards 0 by Schäfer & Strimmer's
    λ* (module docs); float64."""
    g = grads.detach().to(torch.float64)
    n = g.shape[0]
    centred = g - g.mean(0)
    cov = centred.T @ centred / max(1, n - 1)
    sd = cov.diagonal().clamp_min(1e-300).sqrt()
    corr = cov / (sd[:, None] * sd[None, :])
    off = ~torch.eye(cov.shape[0], dtype=torch.bool, device=cov.device)
    r2 = corr[off] ** 2
    denominator = float(r2.sum())
    lam = 1.0 if denominator <= 0 else min(1.0, max(0.0, float(((1 - r2) ** 2).sum()) / (n * denominator)))
    shrunk = torch.where(off, (1 - lam) * corr, torch.ones_like(corr))
    return shrunk * (sd[:, None] * sd[None, :])


def example_covariance(example_grads, chunks) -> torch.Tensor:
    """Cov_i(g_i) over every data point i, from the per-example gradients ``example_grads(x, y)`` ``(rows, P)`` of
    each chunk ``(x, y)`` of ``chunks`` (float64, two-pass free: sums of g and ggᵀ, centred at the first chunk's
    mean). A minibatch of B points drawn with replacement has gradient covariance Cov_i(g_i)/B exactly."""
    total, n, shift = None, 0, None
    for xb, yb in chunks:
        g = example_grads(xb, yb).detach().to(torch.float64)
        if shift is None:
            shift = g.mean(0)
            total = (torch.zeros_like(shift), torch.zeros(g.shape[1], g.shape[1], dtype=torch.float64,
                                                           device=g.device))
        c = g - shift
        total = (total[0] + c.sum(0), total[1] + c.T @ c)
        n += g.shape[0]
    mean = total[0] / n
    return (total[1] - n * torch.outer(mean, mean)) / max(1, n - 1)


def whitening_factor(grads: torch.Tensor) -> Optional[torch.Tensor]:
    """L ``(P, P)`` with Lᵀ·V·L = I for V the `shrunk_covariance` of ``grads`` ``(n, P)`` (`covariance_whitening`)."""
    return covariance_whitening(shrunk_covariance(grads), grads.dtype)


def covariance_whitening(cov: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """L ``(P, P)`` with Lᵀ·V·L = I for V = ``cov`` (L = C⁻ᵀ, V = CCᵀ), in ``dtype``; ``None`` where V is not positive
    definite (a coordinate without noise), so the caller stays diagonal."""
    cov = cov.to(torch.float64)
    chol, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0 or not bool(torch.isfinite(chol).all()):
        return None
    eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    factor = torch.linalg.solve_triangular(chol, eye, upper=False).T  # C⁻ᵀ
    return factor.to(dtype)
