"""Finish a built-in Gaussian guide of a small model by the ELBO's fixed-point equations (issue 13).

Adam stops short of the ELBO's optimum on sharp or ill-conditioned posteriors (notes/issue-13-mapsvi.md: its
diagonal preconditioner moves along a rotated posterior's weak directions at gradient-descent speed, and its
minibatch noise floor is ≈ lr·lr_decay per coordinate whatever the posterior's width). For a Gaussian family
q = N(μ, Σ) and the full-data tempered potential U (T inside U, so the entropy's factor is 1), the optimum satisfies
(Opper & Archambeau 2009; Bonnet's and Price's theorems)

    E_q[∇U] = 0,    and Σ minimises  E_q[U] − ½ log det Σ  over the family,

which for the full-rank family is Σ⁻¹ = E_q[∇²U], for the mean-field family σ_k² = 1/E_q[∂²_kk U] (= T/Λ_kk for
a Gaussian posterior of precision Λ/T), and for the low-rank family has no closed form. `finish` takes up to
``steps`` steps of

1. **moments**: ḡ = E_q[∇U] and H̄ = E_q[∇²U] at the current q, from ``FINISH_PAIRS`` antithetic pairs of guide
   draws μ ± e with full-data gradients and Hessians (`full_hessian`); antithetic pairs make ḡ exact for a quadratic
   U, and H̄ is then constant;
2. **the step's target**: on the local quadratic model U ≈ Q(w) = ḡᵀ(w − μ) + ½(w − μ)ᵀH̄(w − μ) the free energy
   separates (`pyro_bdl.infer.svi.gaussian`): the mean goes to μ − H̄⁻¹ḡ (a Newton step with the *full* H̄ in every
   family: the Jacobi step μ − diag(H̄)⁻¹ḡ diverges on strongly correlated posteriors) and the covariance to the
   family's minimiser of ½ tr(H̄Σ) − ½ log det Σ (`Gaussian.covariance_optimum`). For the full-rank family this is
   the natural-gradient step of size 1 (Khan & Lin 2017; Khan & Rue 2023's Bayesian learning rule); for a Gaussian
   posterior (BLR) Q is U, so one step lands on the family's exact optimum from anywhere;
3. **acceptance** (`elbo_terms`, `elbo_gain`): a line search q_α = q + α(target − q) in the family's parameters
   (α = 1, ½, …, ``FINISH_LINE_SEARCH`` halvings) keeps the first q_α whose ELBO gain over the current q is at least
   ``FINISH_SIGNIFICANCE`` of its standard errors (and ≥ 0). The ELBO is estimated with the same
   ``FINISH_ELBO_PAIRS`` antithetic standard-normal draws for both (common random numbers, so the gain's error is
   that of the paired differences) and with Q as a control variate: E_q[Q] = ½(μ−c)ᵀH̄(μ−c) + ḡᵀ(μ−c) + ½ tr(H̄Σ) is
   exact, and only E_q[U − Q] is estimated (unbiased for any U; exact where U is quadratic, so there the comparison
   has no Monte Carlo noise at all, which without the control variate decides a nearly converged step by a coin
   flip; on a network the significance test keeps a step the draws cannot tell from a worse one from being taken).

The finish stops where H̄ is not positive definite (no Gaussian fixed point nearby: the usual case for a network,
whose guide keeps Adam's parameters and the existing `StationarityWarning` check), where no step of the line search
raises the ELBO, or once a step raises it by less than ``FINISH_CONVERGED`` nats. It applies to built-in guides with
real sites only, of at most ``FINISH_MAX_PARAMS`` parameters (P Hessian-vector products per draw), without data
augmentation (whose objective is an expectation over augmentations, not the full data's U).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import pyro
import torch

from ...model.bayesian_model import BayesianModel
from ...model.potential import Objective
from ..data import FitData
from ..stationarity import full_chunks, full_gradient, full_value
from .check import full_data_potential
from .gaussian import Gaussian, gaussian_view

#: the largest P whose guide is finished (the finish forms the P×P Hessian: P HVPs per draw)
FINISH_MAX_PARAMS = 200
#: antithetic pairs behind each step's E_q[∇U], E_q[∇²U], and behind its ELBO comparison
FINISH_PAIRS, FINISH_ELBO_PAIRS = 2, 8
#: step halvings of the line search between the current q and a step's target
FINISH_LINE_SEARCH = 4
#: a step is kept only if its ELBO gain is at least this many of its Monte Carlo standard errors (0 where U is quadratic)
FINISH_SIGNIFICANCE = 2.0
#: a step that raises the ELBO by less than this (nats) ends the finish: q is at the optimum to well within its MC error
FINISH_CONVERGED = 1e-4
#: finishing steps by default (``newton_steps``)
SVI_NEWTON_STEPS = 3


def full_hessian(loss, theta: torch.Tensor, data) -> torch.Tensor:
    """∇²U(θ) ``(P, P)`` over the full data (Σ_b (B_b/N)·∇²U_b, `stationarity.full_chunks`), for small P."""
    N = data.dataset_size
    out = torch.zeros(theta.numel(), theta.numel(), dtype=theta.dtype, device=theta.device)
    for xb, yb in full_chunks(data):
        w = yb.shape[0] / N
        out = out + w * torch.autograd.functional.hessian(lambda t: loss(t, xb, yb), theta.detach(), vectorize=True)
    return out


class Quadratic:
    """Q(w) = ḡᵀ(w − c) + ½(w − c)ᵀH̄(w − c), the control variate of `elbo` (module docs)."""

    def __init__(self, centre: torch.Tensor, grad: torch.Tensor, hess: torch.Tensor):
        self.c, self.g, self.h = centre, grad, hess

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        d = w - self.c
        return d @ self.g + 0.5 * ((d @ self.h) * d).sum(-1)

    def expectation(self, q: Gaussian) -> float:
        """E_q[Q] = Q(μ) + ½ tr(H̄Σ), exactly."""
        return float(self(q.mu)) + 0.5 * q.trace_h(self.h)


def moments(loss: Callable, q: Gaussian, data: FitData, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """(ḡ, H̄) = (E_q[∇U], E_q[∇²U]) from ``FINISH_PAIRS`` antithetic pairs of draws (float64, H̄ symmetrised)."""
    g = torch.zeros(q.size, dtype=q.mu.dtype, device=q.mu.device)
    h = torch.zeros(q.size, q.size, dtype=q.mu.dtype, device=q.mu.device)
    eps = torch.randn(FINISH_PAIRS, q.eps_dim, generator=generator, dtype=q.mu.dtype).to(q.mu.device)
    for e in q.root(eps):
        for sign in (1.0, -1.0):
            point = (q.mu + sign * e).to(q.dtype)
            g = g + full_gradient(loss, point, data)[1].to(g.dtype)
            h = h + full_hessian(loss, point, data).to(h.dtype)
    n = 2 * FINISH_PAIRS
    return g / n, (h + h.T) / (2 * n)


def elbo_terms(loss: Callable, q: Gaussian, data: FitData, eps: torch.Tensor, cv: Quadratic) -> Tuple[float, torch.Tensor]:
    """The ELBO(q) = −E_q[U] + ½ log det Σ (+ const) as ``(base, r)`` with ELBO ≈ base − mean(r): ``base`` =
    −E_q[Q] + ½ log det Σ exactly, and ``r`` ``(pairs,)`` each antithetic pair's mean of U − Q at μ ± Lε, ε the
    fixed standard normals ``eps`` (module docs)."""
    e = q.root(eps)
    r = [0.5 * (float(full_value(loss, (q.mu + d).to(q.dtype), data)) - float(cv(q.mu + d))
                + float(full_value(loss, (q.mu - d).to(q.dtype), data)) - float(cv(q.mu - d))) for d in e]
    return q.half_logdet() - cv.expectation(q), torch.tensor(r, dtype=torch.float64)


def elbo_gain(now: Tuple[float, torch.Tensor], then: Tuple[float, torch.Tensor]) -> Tuple[float, float]:
    """(ELBO(now) − ELBO(then), its Monte Carlo standard error) from `elbo_terms` on the same draws (paired)."""
    d = now[1] - then[1]
    return (now[0] - then[0]) - float(d.mean()), float(d.std() / math.sqrt(len(d))) if len(d) > 1 else 0.0


def finish(guide, model: BayesianModel, data: FitData, seed: int, objective: Optional[Objective],
           steps: int) -> int:
    """Up to ``steps`` fixed-point steps of the ELBO for a built-in Gaussian guide (module docs), in place; returns how
    many were kept (0 where the finish does not apply or no step raised the ELBO)."""
    if steps == 0 or data.augment is not None:
        return 0
    q = gaussian_view(guide)
    if q is None or q.size > FINISH_MAX_PARAMS:
        return 0
    loss = full_data_potential(model, data, q.names, q.sizes, q.shapes, objective)
    generator = torch.Generator().manual_seed(seed + 4)
    eps_elbo = torch.randn(FINISH_ELBO_PAIRS, q.eps_dim, generator=generator, dtype=q.mu.dtype).to(q.mu.device)
    taken = 0
    for _ in range(steps):
        g, h = moments(loss, q, data, generator)
        h_chol, info = torch.linalg.cholesky_ex(h)
        if int(info) != 0:  # H̄ not positive definite: no Gaussian fixed point nearby
            break
        delta = torch.cholesky_solve(g.unsqueeze(-1), h_chol).squeeze(-1)
        target = q.covariance_optimum(h)
        if target is None or not bool(torch.isfinite(delta).all()):
            break
        target = target.with_mean(q.mu - delta)
        cv = Quadratic(q.mu, g, h)
        current = elbo_terms(loss, q, data, eps_elbo, cv)
        accepted, alpha = None, 1.0
        for _ in range(FINISH_LINE_SEARCH + 1):
            trial = q.towards(target, alpha)
            gain, se = elbo_gain(elbo_terms(loss, trial, data, eps_elbo, cv), current)
            if math.isfinite(gain) and math.isfinite(se) and gain >= FINISH_SIGNIFICANCE * se:
                accepted = trial
                break
            alpha *= 0.5
        if accepted is None:
            break
        q, taken = accepted, taken + 1
        if gain < FINISH_CONVERGED:
            break
    if taken:
        with torch.no_grad(), pyro.settings.context(module_local_params=True):
            q.write(guide)
    return taken
