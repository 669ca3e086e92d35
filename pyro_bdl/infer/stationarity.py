"""Is a fitted point at a stationary point of the full-data potential? Newton steps and decrements, shared by
MAP, deep ensembles and SVI (issue 13, notes/issue-13-sweep.md, notes/issue-13-mapsvi.md).

A minibatch optimiser's loss history cannot say whether it converged: it is noisy, and it is flat long before an
ill-conditioned posterior's weak directions have moved. What can is the full-data gradient of the tempered potential

    U(θ) = −log p̃(D, w(θ)),   ∇U(θ) = Σ_b (B_b/N)·∇U_b(θ),   U_b = −log p̃(D_b, w(θ); N),

(each chunk's potential scaled to the full data by N/B_b, so the prior is counted once and the likelihood exactly),
measured in the units of the posterior: its sds.

**Point estimates (MAP, ensemble members).** With H = ∇²U at θ (the precision of the Laplace posterior at T,
since U carries the 1/T), the Newton step δ = H⁻¹∇U and the *Newton decrement*

    λ² = ∇Uᵀ H⁻¹ ∇U = δᵀ H δ

(Boyd & Vandenberghe 2004, §9.5.1) measure the distance from θ to the mode m of the local quadratic model in
posterior sds: for U quadratic, θ − m = δ and λ is the Mahalanobis distance ‖θ − m‖_H. By Cauchy–Schwarz every linear
functional vᵀθ (every coordinate) is off by at most λ of its posterior sd, and U(θ) − U(m) ≈ λ²/2. A draw from the
posterior has E[(w − m)ᵀH(w − m)] = P, so we report the root-mean-square offset

    z_rms = λ / √P

(how far the point is from the mode per direction, in posterior sds; 1 = as far as a typical posterior draw) as
``info["stationarity_offset"]`` and warn above ``POINT_TOLERANCE`` (0.4: twice the issue-13 bar of 0.2 sd on the
mean). λ itself is ``info["newton_decrement"]``.

δ is solved by conjugate gradients with Hessian–vector products (double backward; Pearlmutter 1994), so H is never
formed. The gradient is always the full data's; the Hessian is that of a fixed subsample of ≤ ``HESSIAN_ROWS`` rows
scaled by N/S (unbiased; exact when N ≤ ``HESSIAN_ROWS``), as in subsampled Newton methods (Byrd et al. 2011;
Roosta-Khorasani & Mahoney 2019): a Hessian error of relative size ε only slows the Newton iteration to a linear rate
≈ ε, while a gradient error would move its fixed point. CG runs at most min(P, ``CG_ITERATIONS``) iterations (exact for
P ≤ that in exact arithmetic) and stops at non-positive curvature (Steihaug 1983). There H is not positive definite:
the quadratic model has no minimum, λ is not a distance to a mode and "posterior sd" has no Laplace meaning (the
usual case for a network: in a 65-parameter tanh MLP every solve, after 150 or 2000 Adam steps, met negative
curvature), so the offset is None and no Newton step is taken from that point.

`newton_refine` uses the same solve to *finish* a minibatch run: up to ``steps`` damped Newton steps θ ← θ − αδ, with α
halved from 1 until the full-data U decreases by the Armijo amount α·λ²/4 (no step that raises U is taken), stopping
once z_rms < ``CONVERGED``, and never from a point whose solve met negative curvature (a step along a Steihaug
direction does lower U, but where it lands depends on float rounding, and no mode is in reach of the model). On a
Gaussian posterior (Bayesian linear regression) one exact step lands on the mode from
anywhere; for a network it converges quadratically inside the basin and never leaves it uphill.

**Gaussian guides (SVI).** `svi.stationarity_offsets` estimates the same Newton offset with the guide's covariance in
place of H⁻¹ and E_q[∇U] in place of ∇U; its gradient is `full_gradient` on the compiled potential where the model
compiles (one definition of the full-data gradient); `svi.stationarity_check` reads it beyond the noise of its guide
draws, with the RMS offset against ``POINT_TOLERANCE`` as here, and checks the guide's variances as well.

Cost, per decrement: one full-data gradient pass, and ≤ CG_ITERATIONS Hessian–vector products (≈ 3 passes each) on
≤ HESSIAN_ROWS rows; a refinement adds ≤ 1 + ``LINE_SEARCH`` forward passes over the data per Newton step. Above
``LARGE_PARAMS`` parameters (networks) there is neither refinement nor check (the offset is None): a network's
Hessian is indefinite at the end of a run anyway (above), and even a cut-down check (10 CG iterations on 1024 rows)
cost 7× the whole fit of an 8-member ensemble of bench_engine's 30k MLP trained for 3 epochs (3.3 s vs 0.46 s, 1 thread),
work no user asked for that would also have put the stacked ensemble at 1.03× the time of 8 single fits.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Iterator, List, Optional, Tuple

import torch

from ..model.inputs import take_rows

#: `svi.stationarity_check`'s worst coordinate above this many guide sds (beyond the draws' noise) warns: the issue-13
#: bar on a mean is 0.2 posterior sd on average, 0.4 for the worst coordinate; a Newton estimate of twice that is
#: clearly outside it
STATIONARITY_TOLERANCE = 0.8
#: a point estimate's RMS Newton offset λ/√P above this many posterior sds warns (twice the issue-13 mean bar of 0.2)
POINT_TOLERANCE = 0.4
#: `newton_refine` stops once λ/√P is below this (then the point is within 0.05 posterior sd of the mode per direction)
CONVERGED = 0.05
#: Newton steps that finish a MAP / ensemble member's run by default (`newton_refine`)
NEWTON_STEPS = 5
#: the most CG iterations per Newton solve
CG_ITERATIONS = 50
#: the rows the Hessian–vector products use (a fixed subsample above this; exact below)
HESSIAN_ROWS = 4096
#: rows per chunk of a full-data pass for a small model (bounds the memory of one forward/backward; `chunk_rows`)
CHUNK_ROWS = 8192
#: step halvings of the Armijo line search
LINE_SEARCH = 12
#: above this many parameters: no Newton refinement and no check (module docs)
LARGE_PARAMS = 20_000


class StationarityWarning(UserWarning):
    """A fitted point or guide mean is not at a stationary point of its objective (module docs): run longer."""


Loss = Callable[[torch.Tensor, object, torch.Tensor], torch.Tensor]  # U_b(θ) of one chunk, scaled to the full data


def chunk_rows(data, size: int) -> int:
    """Rows per chunk of a full-data pass for a θ of ``size`` parameters: ``CHUNK_ROWS`` for small models (few
    activations per row), the training batch size above ``LARGE_PARAMS`` (a chunk then needs about the memory of a
    training step; an HVP's double backward about three times that)."""
    return CHUNK_ROWS if size <= LARGE_PARAMS else max(1, min(CHUNK_ROWS, data.random_batch_size))


def full_chunks(data, rows: int = CHUNK_ROWS) -> Iterator[Tuple[object, torch.Tensor]]:
    """The full data set in chunks of ≤ ``rows`` rows (tensors), or one pass of a user's ``DataLoader``."""
    if data.user_loader:
        with torch.random.fork_rng(devices=[]):  # the loader's shuffle must not move the global RNG
            yield from data.epoch()
        return
    x, y = data.full()
    n = y.shape[0]
    for i in range(0, n, rows):
        part = slice(i, min(n, i + rows))
        yield take_rows(x, part), y[part]


def full_value(loss: Loss, theta: torch.Tensor, data) -> torch.Tensor:
    """U(θ) = Σ_b (B_b/N)·U_b(θ) over the full data (module docs), without a graph."""
    N = data.dataset_size
    with torch.no_grad():
        chunks = full_chunks(data, chunk_rows(data, theta.numel()))
        return sum((yb.shape[0] / N) * loss(theta, xb, yb) for xb, yb in chunks)


def full_gradient(loss: Loss, theta: torch.Tensor, data) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(U(θ), ∇U(θ))`` over the full data: Σ_b (B_b/N)·U_b, one backward pass per chunk."""
    N = data.dataset_size
    value, grad = torch.zeros((), dtype=theta.dtype, device=theta.device), torch.zeros_like(theta)
    for xb, yb in full_chunks(data, chunk_rows(data, theta.numel())):
        t = theta.detach().requires_grad_(True)
        u = (yb.shape[0] / N) * loss(t, xb, yb)
        (g,) = torch.autograd.grad(u, t)
        value, grad = value + u.detach(), grad + g
    return value, grad


def hessian_rows(data, rows: int, seed: int, chunk: int = CHUNK_ROWS) -> List[Tuple[object, torch.Tensor]]:
    """The subsample the Hessian–vector products use: all rows when N ≤ ``rows``, else ``rows`` rows drawn without
    replacement by a generator seeded ``seed`` (a user's loader: its first batches), in chunks of ≤ ``chunk``."""
    N = data.dataset_size
    if N <= rows:
        return list(full_chunks(data, chunk))
    if data.user_loader:
        out, have = [], 0
        for xb, yb in full_chunks(data):
            out.append((xb, yb))
            have += yb.shape[0]
            if have >= rows:
                break
        return out
    x, y = data.full()
    idx = torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:rows].to(y.device)
    return [(take_rows(x, idx[i:i + chunk]), y[idx[i:i + chunk]]) for i in range(0, rows, chunk)]


def hvp(loss: Loss, theta: torch.Tensor, chunks, N: int, v: torch.Tensor) -> torch.Tensor:
    """H_S·v: the Hessian of Σ_c (B_c/S)·U_c at θ (S = the subsample's rows; each U_c is scaled to N already) times v."""
    S = sum(yb.shape[0] for _, yb in chunks)
    out = torch.zeros_like(theta)
    for xb, yb in chunks:
        t = theta.detach().requires_grad_(True)
        u = (yb.shape[0] / S) * loss(t, xb, yb)
        (g,) = torch.autograd.grad(u, t, create_graph=True)
        (hv,) = torch.autograd.grad(g, t, grad_outputs=v)
        out = out + hv.detach()
    return out


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iterations: int,
                       rtol: float = 1e-6) -> Tuple[torch.Tensor, bool]:
    """x ≈ A⁻¹b by conjugate gradients from 0; ``(x, positive)``, ``positive`` False when a search direction had
    pᵀAp ≤ 0 (CG stops there, Steihaug 1983). bᵀx_k increases towards bᵀA⁻¹b for SPD A (a lower bound)."""
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = r @ r
    stop = (rtol * b.norm()) ** 2
    for _ in range(iterations):
        if rr <= stop:
            break
        ap = matvec(p)
        curvature = p @ ap
        if not bool(curvature > 0) or not bool(torch.isfinite(curvature)):
            return x, False
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, True


class Decrement:
    """One Newton solve at θ: the full-data ``value`` U and ``grad`` ∇U, the step ``delta`` ≈ H⁻¹∇U, the decrement
    ``lam`` = √(∇Uᵀδ) and ``rms`` = λ/√P (module docs); ``positive`` False if CG met non-positive curvature."""

    def __init__(self, loss: Loss, theta: torch.Tensor, data, chunks, iterations: int):
        self.value, self.grad = full_gradient(loss, theta, data)
        # CG in float64 where the device has it: an ill-conditioned H (κ ≈ 10⁵ here) loses little to float32 HVPs,
        # but CG's own recurrences lose orthogonality fast in float32
        work = torch.float64 if theta.device.type == "cpu" else theta.dtype
        N = data.dataset_size
        matvec = lambda v: hvp(loss, theta, chunks, N, v.to(theta.dtype)).to(work)
        delta, self.positive = conjugate_gradient(matvec, self.grad.to(work), min(theta.numel(), iterations))
        self.delta = delta.to(theta.dtype)
        lam2 = float(self.grad.to(work) @ delta)
        self.lam = math.sqrt(max(lam2, 0.0)) if math.isfinite(lam2) else math.nan
        self.rms = self.lam / math.sqrt(theta.numel())


def newton_refine(loss: Loss, theta: torch.Tensor, data, steps: int, seed: int) -> Tuple[torch.Tensor, Optional["Decrement"]]:
    """Up to ``steps`` damped Newton steps from θ ``(P,)`` on the full-data U (module docs); ``(θ, decrement at θ)``.

    The returned decrement is the one at the returned θ (a last solve after the last step), so it is the point's
    stationarity check; ``steps=0`` only checks. Above ``LARGE_PARAMS`` nothing is done: ``(θ, None)``."""
    theta = theta.detach().clone()
    if theta.numel() > LARGE_PARAMS:
        return theta, None
    iterations = CG_ITERATIONS
    chunks = hessian_rows(data, HESSIAN_ROWS, seed, chunk_rows(data, theta.numel()))
    dec = Decrement(loss, theta, data, chunks, iterations)
    for _ in range(steps):
        if (not dec.positive or not math.isfinite(dec.lam) or dec.rms < CONVERGED
                or not bool(torch.isfinite(dec.delta).all())):
            break
        u0, accepted = float(dec.value), None
        alpha = 1.0
        for _ in range(LINE_SEARCH):
            trial = theta - alpha * dec.delta
            u = float(full_value(loss, trial, data))
            if math.isfinite(u) and u <= u0 - 0.25 * alpha * dec.lam ** 2:  # Armijo on the quadratic model's decrease
                accepted = trial
                break
            alpha *= 0.5
        if accepted is None:  # no step decreases U enough: θ stays (its decrement is reported)
            break
        theta = accepted
        dec = Decrement(loss, theta, data, chunks, iterations)
    return theta, dec


def point_message(method: str, steps: int, worst: float, which: str) -> str:
    return (f"{method}: the fitted point{which} is not at a mode of the full-data potential after {steps} optimiser "
            f"steps: its Newton decrement puts it {worst:.3g} posterior sds from the mode per direction (RMS; "
            f"tolerance {POINT_TOLERANCE}). Run more steps (steps=...), raise lr, or allow more Newton steps "
            "(newton_steps=...); see info['stationarity_offset'].")


def warn_point(method: str, steps: int, offsets: List[Optional[float]], stacklevel: int = 3) -> None:
    """Warn (`StationarityWarning`) when any run's RMS Newton offset exceeds ``POINT_TOLERANCE``."""
    bad = [(z, k) for k, z in enumerate(offsets) if z is not None and not z <= POINT_TOLERANCE]
    if not bad:
        return
    worst, k = max(bad, key=lambda t: (math.isnan(t[0]), t[0]))
    which = "" if len(offsets) == 1 else f" of member {k} ({len(bad)} of {len(offsets)} members)"
    warnings.warn(point_message(method, steps, worst, which), StationarityWarning, stacklevel=stacklevel)
