r"""The dense preconditioner of small models: a frozen linear whitening θ = θ̂ + Lφ (``preconditioner="dense"``,
the default ``"auto"`` for models of at most `DENSE_MAX_SIZE` coordinates).

**Why.** A diagonal preconditioner G (`.kernels.fisher_step_size`) cannot undo a rotated condition number: in the
metric φ = θ/√G the curvature G^½HG^½ keeps the condition number κ_eff of H's correlations, so the softest mode
relaxes in ≈ κ_eff/lr steps (`.mixing`): a BLR with κ(XᵀX) = 10³ along rotated directions needs ~10⁴–10⁵ steps.

**The map.** At the start of the first burn-in window (where the noise-free exploration has brought the chain to
θ̂ near a mode) the Hessian of V = T·U_T on the full data is computed at θ̂ (P Hessian-vector products, one pass
over the data each: O(N·P²) once), symmetrised and made positive definite by the eigenvalue map λ ↦ max(|λ|,
10⁻⁶·max|λ|) (the |H| metric of saddle-free Newton, Dauphin et al. 2014; a Gaussian posterior, a GLM and any chain
at a minimum have λ > 0 and are untouched); with H = QΛQᵀ, L = QΛ^(−½), so LᵀHL = I. From then on the chain runs in
φ = L⁻¹(θ − θ̂) on the potential V_φ(φ) = V(θ̂ + Lφ), with ∇_φV = Lᵀ∇_θV. Because the map is affine with a
constant Jacobian, exp(−V_φ/T) is p_T pushed forward to φ: **every kernel of the package runs unchanged in φ** and
samples p_T there — its Fisher step G_i = lr·T/E[(Lᵀĝ)_i²] (≈ lr/(1 + B_φ,ii/T): the curvature in φ is I), the
critical friction, the split-batch noise estimate (computed from the halves' φ-gradients), the control variate, the
spike guard — and the draws θ = θ̂ + Lφ are draws of p_T. The temperature diagnostics keep their meaning: the
configurational temperature ⟨(φ − φ₀)·∇_φV⟩ = ⟨(θ − θ₀)·∇_θV⟩ (Lφ − Lφ₀ = θ − θ₀) is the same number under any
affine map; the kinetic temperature is that of φ's momentum under its own G. The prior-curvature floor becomes
diag(Lᵀ diag(c) L) (the diagonal of the prior's Hessian in φ). This is the "frozen" limit of the Riemannian
preconditioning of Girolami & Calderhead (2011) / Patterson & Teh (2013) and of SGFS's full preconditioner
(Ahn, Korattikara & Welling 2012), which uses the empirical Fisher instead of the Hessian; frozen, it needs no Γ
correction term (the chain stays time-homogeneous, as the diagonal kernel's frozen constants do). Why the Hessian
and not the empirical Fisher of the minibatch gradients: at the default cold T the minibatch noise dominates
E[ĝĝᵀ] (B ≫ T·H), and the split-batch estimate of the per-point Fisher is 0 for full batches and biased for a
misspecified likelihood; the Hessian at θ̂ is exact for any Gaussian posterior and is the Laplace precision
otherwise.

**Cost.** P Hessian-vector products once per chain (P³ for the eigendecomposition), then two P×P matrix-vector
products per gradient evaluation (θ = θ̂ + Lφ and Lᵀĝ) and one per draw. The default switches it on up to
`DENSE_MAX_SIZE` coordinates (measured in notes/issue-13-dense.md); above, ``"auto"`` is the diagonal Fisher kernel,
bit for bit the run of earlier releases. Chains of a dense run are stepped one after another within each step (the
stacked vmap path evaluates all chains at one θ matrix; each chain's map is its own), which is the documented
``stack=False`` path with the same grouping and checkpoints.
"""
from __future__ import annotations

from typing import Dict, Optional

import pyro
import torch

from ...model.inputs import num_rows, take_rows
from ...model.potential import Objective
from ..data import FitData
from .gradients import anchor_at, full_data

#: ``preconditioner="auto"`` is dense up to this many coordinates (P): above it the P×P products per step cost more
#: than a small model's minibatch gradient, and the P Hessian-vector products of the set-up pass more than a burn-in
#: (notes/issue-13-dense.md)
DENSE_MAX_SIZE = 256
#: eigenvalues of the Hessian below this fraction of the largest |eigenvalue| are raised to it (|H|, floored)
EIGEN_FLOOR = 1e-6
#: the Newton point of the map's shift (`whiten`) is halved at most this many times until it lowers U
NEWTON_HALVINGS = 10


def full_hessian(objective: Objective, data: FitData, theta: torch.Tensor, temperature: float) -> torch.Tensor:
    """The Hessian of V = T·U_T on the full data at ``theta``, ``(P, P)``: the chunks' Hessians of the full-data
    estimate (likelihood scaled by N/n) weighted by n/N, as `.gradients.anchor_at` sums gradients."""
    x, y = full_data(data)
    N = data.dataset_size
    size = max(data.random_batch_size, 1024)
    theta = theta.detach()
    H = torch.zeros(theta.numel(), theta.numel(), dtype=theta.dtype, device=theta.device)
    with pyro.validation_enabled(False):
        for i in range(0, N, size):
            xb, yb = take_rows(x, slice(i, i + size)), y[i:i + size]
            h = torch.autograd.functional.hessian(lambda t: objective.potential(t, xb, yb, N), theta)
            H += h * (num_rows(xb) / N)
    return temperature * 0.5 * (H + H.T)


def whitening_map(hessian: torch.Tensor) -> torch.Tensor:
    """L with LᵀHL = I for the positive-definite |H| (eigenvalues floored at `EIGEN_FLOOR` × the largest): L = QΛ^(−½)."""
    lam, Q = torch.linalg.eigh(hessian.double())
    lam = lam.abs()
    lam = lam.clamp(min=max(float(lam.max()) * EIGEN_FLOOR, torch.finfo(torch.float64).tiny))
    return (Q * lam.rsqrt()).to(hessian.dtype)


class Whitened:
    """The objective in φ: ``grad(φ, x, y, N)`` = (U(θ̂ + Lφ), Lᵀ∇U(θ̂ + Lφ)) — what `.gradients` calls ``objective``
    (its plain, split-batch and control-variate estimates and the anchors' full-data gradients all go through it)."""

    def __init__(self, objective: Objective, shift: torch.Tensor, L: torch.Tensor):
        self.objective, self.shift, self.L = objective, shift, L
        self.model = objective.model

    def to_theta(self, phi: torch.Tensor) -> torch.Tensor:
        return torch.addmv(self.shift, self.L, phi)

    def to_phi(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(self.L, theta - self.shift)

    def grad(self, phi: torch.Tensor, x, y, dataset_size: Optional[int] = None):
        u, g = self.objective.grad(self.to_theta(phi), x, y, dataset_size)
        return u, torch.mv(self.L.T, g)

    def floor(self, curvature: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The prior-curvature floor in φ: diag(Lᵀ diag(c) L)."""
        return None if curvature is None else (self.L * self.L * curvature.to(self.L).unsqueeze(1)).sum(0)


def full_potential(objective: Objective, data: FitData, theta: torch.Tensor) -> float:
    """U_T on the full data at ``theta`` (chunked as `full_hessian`)."""
    x, y = full_data(data)
    N = data.dataset_size
    size = max(data.random_batch_size, 1024)
    total = 0.0
    with pyro.validation_enabled(False), torch.no_grad():
        for i in range(0, N, size):
            xb, yb = take_rows(x, slice(i, i + size)), y[i:i + size]
            total += float(objective.potential(theta, xb, yb, N)) * (num_rows(xb) / N)
    return total


def whiten(objective: Objective, data: FitData, theta: torch.Tensor, temperature: float) -> Dict[str, torch.Tensor]:
    r"""The map at ``theta``: ``{"shift": θ̂, "L": L}``, what a chain's state keeps (and a checkpoint saves).

    L whitens the Hessian H at ``theta``; the shift θ̂ is the damped Newton point θ − λ·H⁻¹∇U(θ) = θ − λ·LLᵀ∇V(θ)
    (λ = 1, halved while it does not lower the full-data U_T, at most `NEWTON_HALVINGS` times; 0 if none does),
    the mode of a Gaussian posterior and the Laplace approximation's centre otherwise. Why: the noise-free
    exploration ends short of the mode along the soft directions (a diagonal RMSprop descent has the diagonal
    preconditioner's κ_eff), and a chain that starts many posterior sds (√T) off drifts in with a Fisher step that
    reads the drift's gradient as curvature (E[ĝ²] ∝ distance²) — at T = 0.01 chains were still relaxing at the end
    of a default run (configurational temperature −0.06 for T = 0.01). The chain starts the warm-up at θ̂ (φ = 0)."""
    L = whitening_map(full_hessian(objective, data, theta, temperature))
    grad = anchor_at(objective, data, theta)["grad"]  # ∇U_T on the full data
    direction = -(L @ (L.T @ grad)) * temperature  # −H_V⁻¹∇V with ∇V = T·∇U_T
    here, lam = full_potential(objective, data, theta), 1.0
    for _ in range(NEWTON_HALVINGS):
        if full_potential(objective, data, theta + lam * direction) < here:
            break
        lam *= 0.5
    else:
        lam = 0.0
    return {"shift": (theta + lam * direction).detach().clone(), "L": L}
