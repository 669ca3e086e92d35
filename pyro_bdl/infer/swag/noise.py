"""SWAG's posterior-matching rates (``swa_lr="auto"``): the measured gradient noise and Mandt's rates
(`GradientNoise`), the heavy ball's stability cap (`stability_cap`), the burn-in that checks the OU picture
(`_start_auto`) and the per-direction equipartition cap (`equipartition_directions`). The maths is in
the docstrings here and in `pyro_bdl.infer.swag`'s (steps 1–4)."""
from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Optional, Sequence

import torch

from ...guides.swag import SWAG
from ...model.inputs import take_rows
from ..data import FitData
from ..divergence import DivergenceError
from ..stationarity import CHUNK_ROWS, full_chunks
from .whitening import GRADIENTS_PER_PARAM, covariance_whitening, example_covariance, whitening_factor


class GradientNoise:
    """Running per-coordinate variance V_kk of i.i.d. minibatch gradients (Welford), and the SGD
    rates whose stationary spread is the posterior's (Mandt et al. 2017).

    Near a mode, SGD with rates ε (a diagonal preconditioner) on the per-data-point objective L is
    an Ornstein–Uhlenbeck process whose stationary covariance Σ solves εAΣ + ΣAε = εVε, with A
    the Hessian of L and V the covariance of one minibatch gradient. The posterior's covariance
    (N A)⁻¹ solves it exactly when ε_k = 2 / (N V_kk) and V is diagonal, whatever A is
    (Mandt et al. 2017, Sec. 4 and Thm. 2; the prior's curvature is part of A, the prior adds no
    noise). Heavy-ball momentum β makes the effective rate ε/(1 − β), so

        ε_k = 2 (1 − β) / (N V_kk)

(times a discrete-time correction close to 1, see `rates`).

    It needs minibatches drawn independently (with replacement): the theory's noise is i.i.d.
    and reshuffled epochs' noise sums to zero over an epoch (on linear regression, epoch-end
    iterates then spread only 0.1–0.2× the posterior). V is measured on the gradients SGD
    already computes; near the mode their variation from the moving iterate (AΣA = A/N) is
    B/N of the noise (B the batch size) and is neglected.

    Stability needs Fisher ≈ Hessian (noise where there is curvature). In a network, weights with
    almost no gradient noise (into dead ReLU units, or fitted so confidently that the empirical
    Fisher is far below the Hessian; Kunstner et al. 2019) get huge ε_k, so the rates are capped at
    the heavy ball's stability bound (`stability_cap`). On linear regression the cap never binds;
    on digits MLPs it binds for most weights. A capped coordinate is spread less than Mandt's rate
    would spread it, and `covariance_scale` rescales the covariance by the one global factor the
    Lyapunov equation allows (see there); the rest of the gap to the posterior is SGD's shape.

    **Augmentation.** With random augmentation a minibatch gradient g(b, a) depends on the batch b
    and on the augmentation draw a, and its second moment splits as

        E[g²] = E_b[ḡ_b²] + E_b[Var_a(g | b)],   ḡ_b = E_a[g | b],

    the data-sampling part (what the data's Fisher sets) and the augmentation part. Two independent
    augmentations a₁, a₂ of the same batch are conditionally independent, so their cross moment
    E[g(b, a₁) g(b, a₂)] = E_b[ḡ_b²] estimates the sampling part alone (`update_pair`; the
    augmentation part is E[g²] minus it, and E[(g₁ − g₂)²]/2 is the same thing). The *rates* stay
    Mandt's from the total E[g²]: the OU argument only needs the noise SGD actually feels, whatever
    its source, and then gives the augmented likelihood's posterior. The *sampling part* sets
    `_start_auto`'s allowance (`stationary_excess`) and the share ρ in `covariance_scale`: on digits
    with ±1-pixel shifts it is a median 25% of the total, and counting the total let the collection
    wander off the mode.
    """

    def __init__(self, like: torch.Tensor, whitening: Optional[torch.Tensor] = None):
        # L (P, P) of a dense whitening θ = θ₀ + Lφ (`pyro_bdl.infer.swag.whitening`): every moment here is then φ's
        # (gradients Lᵀg), and the rates are φ's diagonal ones, L·diag(ε)·Lᵀ in θ (`precondition`)
        self.whitening = whitening
        self.count, self.mean, self.m2 = 0, torch.zeros_like(like), torch.zeros_like(like)
        self.factor = 1.0  # halved by the stability trial of _start_auto while the rates are too large
        # Σ g(b, a₁)·g(b, a₂) over paired augmentations of the same batches, and their number
        self.cross, self.pairs = torch.zeros_like(like), 0
        self.cap = math.inf  # the rate cap _start_auto chose (stability_cap)
        self.reference, self.allowed = math.nan, math.inf  # θ₀'s loss and the excess the burn-in allowed

    def whiten(self, grad: torch.Tensor) -> torch.Tensor:
        """θ's gradient in the whitened coordinates φ, Lᵀg (``grad`` itself without a whitening)."""
        return grad if self.whitening is None else grad @ self.whitening

    def color(self, v: torch.Tensor) -> torch.Tensor:
        """A direction in φ as θ's, L·v (``v`` itself without a whitening)."""
        return v if self.whitening is None else self.whitening @ v

    def precondition(self, grad: torch.Tensor, rates: torch.Tensor) -> torch.Tensor:
        """The preconditioned step direction of θ's gradient: ε ⊙ g, or L·(ε ⊙ Lᵀg) with a whitening."""
        if self.whitening is None:
            return grad * rates
        return ((grad @ self.whitening) * rates) @ self.whitening.T

    def update(self, grad: torch.Tensor) -> None:
        """Record one minibatch gradient of θ (whitened first where there is a whitening)."""
        grad = self.whiten(grad)
        self.count += 1
        delta = grad - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (grad - self.mean)

    def update_pair(self, grad: torch.Tensor, other: torch.Tensor) -> None:
        """Record the gradients of one batch under two independent augmentations (class docs); ``grad``
        also enters the total moments."""
        self.update(grad)
        self.cross += self.whiten(grad) * self.whiten(other)
        self.pairs += 1

    def second_moment(self) -> torch.Tensor:
        """The uncentred E[g²] = V + (mean gradient)²: V at the mode, and smaller (safer) rates where
        the iterate is still drifting (a steady gradient with little noise is not flat)."""
        return self.m2 / max(1, self.count - 1) + self.mean ** 2

    def sampling_moment(self) -> torch.Tensor:
        """The data-sampling part E_b[ḡ_b²] of `second_moment` (class docs): the paired cross moment
        (clamped at 0 where its noise makes it negative), or the total without paired measurements."""
        if self.pairs == 0:
            return self.second_moment()
        return (self.cross / self.pairs).clamp(min=0.0)

    def _unscaled(self, moment: torch.Tensor, dataset_size: int, batch_size: int, momentum: float) -> torch.Tensor:
        # Discrete-time correction: heavy ball on a quadratic with curvature a has stationary variance
        # εV(1+β) / (a(1−β)(2(1+β) − εa)), not εV/(2a(1−β)); with the gradient noise as curvature
        # (Fisher ≈ Hessian: a ≈ B·V), εa = 2(1−β)B/N, so the rates shrink by 1/(1 + (1−β)B/((1+β)N)).
        shrink = 1.0 / (1.0 + (1 - momentum) * batch_size / ((1 + momentum) * dataset_size))
        if self.whitening is not None:
            # The moving iterate's share: gradients measured along the collection vary by A·Σ·A = A/N (Σ = (NA)⁻¹)
            # besides the noise V ≈ A/B (Fisher ≈ Hessian, exact for a GLM near its mode), so E[g²] ≈ V·(1 + B/N)
            # and V is that over 1 + B/N. Without it a collection with B/N = 0.5 spread 0.6–0.7× the posterior.
            # (Only with the dense whitening, whose noise is all measured on the moving iterate; a network's
            # Fisher is far from its Hessian, and its path is kept as it was.)
            moment = moment / (1.0 + batch_size / dataset_size)
        return shrink * 2 * (1 - momentum) / (dataset_size * moment)

    def rates(self, dataset_size: int, batch_size: int, momentum: float, cap: float) -> torch.Tensor:
        """ε_k (class docs, from the total `second_moment`) times the stability factor, capped at ``cap``."""
        rates = self.factor * self._unscaled(self.second_moment(), dataset_size, batch_size, momentum)
        return torch.nan_to_num(rates, nan=cap, posinf=cap).clamp(max=self.factor * cap)

    def left_bound(self, value: float) -> bool:
        """The burn-in's instability test on one batch's loss T·L: not finite, or above θ₀'s loss by more than 100×
        the excess the trial allowed (`_start_auto`; kept while relaxing and collecting)."""
        return not math.isfinite(value) or value - self.reference > 100 * self.allowed

    def stationary_excess(self, rates: torch.Tensor, momentum: float) -> float:
        """The OU prediction of the mean excess loss per data point of SGD at ``rates``, from the data's
        sampling noise: ½·tr(AΣ) = Σ_k ε_k S_k / (4(1 − β)).

        Exact for any A and V on a quadratic: the trace of the Lyapunov equation εAΣ + ΣAε = εVε/(1 − β)
        (heavy ball's effective rate ε/(1 − β)) gives 2·tr(AΣ) = tr(εV)/(1 − β). S is `sampling_moment`
        (the total without augmentation): augmentation noise also moves the iterate, but counting it let
        the collection wander off the mode on augmented digits (accuracy 0.79 instead of 0.9)."""
        return float((rates * self.sampling_moment()).sum()) / (4 * (1 - momentum))

    def covariance_scale(self, rates: torch.Tensor, dataset_size: int, batch_size: int, momentum: float) -> float:
        """c = min_k ε_k*/ε_k ≥ 1/factor: the covariance of SGD at the rates c·ε that bring the closest coordinate
        to its Mandt rate ε_k* (class docs), relative to the covariance at the collection rates ε.

        The stationary covariance solves the Lyapunov equation εAΣ + ΣAε = εVε, which is linear in a global
        scalar: rates c·ε give c·Σ, for any A and V (not only diagonal ones). So the collection can run at the
        rates the stability trial found safe (`_start_auto`: the iterate stays at the mode) while the covariance
        is that of the larger rates. Only a global c follows from the equation (a per-coordinate rescaling does
        not: SGD's spread in one coordinate is driven by the others through A), and c is the largest global
        one under which no coordinate is spread wider than Mandt's rate would spread it. Where some coordinate
        is below the cap this is exactly 1/factor, undoing the trial's halvings.

        Σ is linear in V as well, and the trace of the same equation gives tr(AΣ) = ½·tr(εV) exactly: the
        expected excess loss of the spread is ¼·Σ_k ε_k V_kk/(1 − β), a sum over the noise's sources. With
        augmentation only the data-sampling part (`sampling_moment`) is posterior spread, so c is multiplied by
        ρ = Σ_k ε_k S_k / Σ_k ε_k E[g_k²] (S the sampling part), which gives the spread the excess loss of the
        sampling noise alone; without augmentation ρ = 1."""
        moment = self.second_moment()
        full = self._unscaled(moment, dataset_size, batch_size, momentum)
        ratio = float(torch.nan_to_num(full / rates, nan=math.inf, posinf=math.inf).min())
        c = max(1.0 / self.factor, ratio) if math.isfinite(ratio) else 1.0 / self.factor
        if self.pairs:
            c *= min(1.0, float((rates * self.sampling_moment()).sum() / (rates * moment).sum().clamp_min(1e-300)))
        return c

    def state_dict(self) -> Dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "factor": self.factor,
                "cross": self.cross, "pairs": self.pairs, "cap": self.cap, "reference": self.reference,
                "allowed": self.allowed, "whitening": self.whitening}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"].clone(), state["m2"].clone()
        self.factor = state["factor"]
        self.cross = state.get("cross", torch.zeros_like(self.mean)).clone()  # checkpoints before paired measurement
        self.pairs = state.get("pairs", 0)
        self.cap = state.get("cap", math.inf)
        self.reference, self.allowed = state.get("reference", math.nan), state.get("allowed", math.inf)
        white = state.get("whitening")
        self.whitening = None if white is None else white.clone()


def far_start_advice(warmup: Optional[int] = None) -> str:
    """The fixes for a collection that starts far from a mode, one wording for every message that names them
    (the relaxation bound, a divergence or exhausted halvings in the collection, an extrapolated c)."""
    now = "" if warmup is None else f" (now {warmup} epochs of exploration)"
    return (f"raise warmup{now}, start from a fitted solution (init=<a fit(method='map') posterior>), "
            "or pass a numeric swa_lr")


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


#: halvings of the auto rates (stability trial and collection together) before a run gives up: a factor 10⁶
STABILITY_HALVINGS = 20


class _LeftBound(Exception):
    """`_start_auto`'s relaxation left the bound its stability trial accepted."""


#: a Lyapunov rescaling c above this is an extrapolation the stationary picture cannot vouch for: measured c
#: runs 0.25–15 on BLRs, digits and fresh networks, 10⁷–10¹⁹⁰ from starts far from any mode (notes/issue-13-lead7)
EXTRAPOLATION_WARNING = 1e3


#: the exploration step of ``lr="auto"`` where the curvature allows it (Maddox et al. 2019's schedule)
LR_CEILING = 0.05


#: minibatches whose sharpest one sets the exploration step (`exploration_lr`)
LR_PROBE_BATCHES = 8


def exploration_lr(hvps: Sequence, size: int, like: torch.Tensor, momentum: float, ceiling: float = LR_CEILING,
                   power_steps: int = 20) -> float:
    """The exploration step η of ``lr="auto"``: min(``ceiling``, (1 + β)/(2 λ̂)), λ̂ the largest Hessian eigenvalue
    of the per-data-point objective over a few minibatches at the run's start (power iteration on each batch's
    Hessian-vector products ``hvps[i](v)``; ``size`` = P).

    Heavy ball with step η and momentum β on a fixed quadratic diverges once ηλ ≥ 2(1 + β). Minibatches make the
    curvature itself random, which shrinks the stable region (a mean-square condition): on linear regression with
    B = 5–50 points, η = (1 + β)/λ_max of the full data — half the deterministic limit — diverged for B ≤ 20,
    while a quarter of the limit on the sharpest of 8 minibatches, this rule, ran at every B tried
    (`notes/issue-15-lead2.md`). Maddox et al.'s 0.05 is the ceiling: classifiers have λ̂ ≈ 1 at their start
    (digits MLPs), so the ceiling binds and their runs are as before; a Gaussian likelihood of scale σ has
    λ ∝ 1/σ² (≈ 1.4·10³ on the README's gap regression with σ = 0.1), where 0.05 diverges in the first epoch.

    **Back-off** (`pyro_bdl.infer.swag.rule.train_runs`). With batches smaller than the parameter count the rule
    can still diverge: on linear regression with N = 500, B = 5, P = 6 (`notes/issue-13-sweep.md`, config 5) no
    single batch breaks the bound (the sharpest of 4000 has η·λ = 1.26 < 2(1 + β) = 3.8), and neither does the
    one-dimensional mean-square bound 2λ/E[λ_B²] of the sharpest direction (0.046 > η = 0.016); what grows is the
    product of rotating rank-deficient batch Hessians, whose growth rate (the top Lyapunov exponent of a random
    matrix product) has no closed form. A bound that covered it would have to be estimated by running the
    product, which is what the run itself does, so a run whose exploration diverges at an automatic step is
    restarted from its start at half the step, with a RuntimeWarning, up to `EXPLORATION_RETRIES` times (config
    5 runs at the first halving). A run that does not diverge pays nothing."""
    v0 = torch.randn(size, generator=torch.Generator().manual_seed(0), dtype=like.dtype).to(like.device)
    sharpest = 0.0
    for hvp in hvps:
        v, lam = v0, 0.0
        for _ in range(power_steps):
            v = v / v.norm()
            w = hvp(v)
            lam, v = float(v @ w), w
        if math.isfinite(lam):
            sharpest = max(sharpest, lam)
    if not sharpest > 0:
        return ceiling
    return min(ceiling, (1 + momentum) / (2 * sharpest))


#: extra relax-and-read-again rounds of a dense burn-in (`_start_auto`)
RELAXATION_ROUNDS = 3
#: swa_lr="auto" rates are at most AUTO_CAP·lr only where the stability bound cannot be computed (no finite rate)
AUTO_CAP = 10.0
#: i.i.d. minibatch gradients measured at the end of the pre-collection phase before auto rates are first used
MIN_NOISE_BATCHES = 32


def stability_cap(noise: "GradientNoise", hvp, dataset_size: int, batch_size: int, momentum: float,
                  iterations: int = 3, power_steps: int = 20) -> Optional[float]:
    """κ with λ_max(ε^½ A ε^½) = 1 + β for the rates ε_k = min(ε_k*, κ): the largest cap on Mandt's rates under
    which the preconditioned heavy ball stays within a factor 2 of its continuous-time (OU) limit.

    Heavy ball with preconditioner ε on a quadratic with Hessian A is stable iff every eigenvalue ελ of
    ε^½Aε^½ lies in (0, 2(1 + β)), and its stationary variance along an eigenvector is the OU one times
    2(1 + β)/(2(1 + β) − ελ) (see `GradientNoise._unscaled`): at ελ = 1 + β that factor is 2, and it grows
    without bound towards the edge. λ_max comes from a power iteration on Hessian-vector products
    ``hvp(v)`` of one fixed batch of 4B points (a subsample's λ_max is, if anything, above the data's); the fixed point κ ← κ(1 + β)/λ_max(κ) is approached monotonically from
    either side (λ_max(κ)/κ decreases in κ), from κ₀ = the median Mandt rate. Where no coordinate needs
    capping (linear regression) the cap is the uniform growth of the measured rates that would bring λ_max to
    1 + β, above every ε_k*: inert unless the rates, re-read as the noise estimate matures, grow that far."""
    full = torch.nan_to_num(noise._unscaled(noise.second_moment(), dataset_size, batch_size, momentum),
                            nan=math.inf, posinf=math.inf)
    finite = full[torch.isfinite(full)]
    if finite.numel() == 0:
        return None
    kappa, top = float(finite.median()), float(finite.max())
    v = torch.randn(full.shape, generator=torch.Generator().manual_seed(0), dtype=full.dtype).to(full.device)

    def sharpest(cap: float) -> float:
        nonlocal v
        root = full.clamp(max=cap).sqrt()
        lam = 0.0
        for _ in range(power_steps):
            v = v / v.norm()
            w = root * hvp(root * v)
            lam, v = float(v @ w), w
        return lam

    for _ in range(iterations):
        lam = sharpest(kappa)
        if not lam > 0 or not math.isfinite(lam):
            break
        kappa *= (1 + momentum) / lam
        if kappa >= top:
            # No coordinate needs capping. The rates are re-read from the running noise estimate every epoch, and
            # they grow when θ₀'s drift (the mean gradient in `second_moment`) fades, so a cap at today's largest
            # rate would bind later and make `covariance_scale` rescale a collection that ran at Mandt's rates
            # (sweep config 3: c = 2.14, covariance 2.3× the posterior). The cap is the uniform growth of every
            # rate at which the bound would bind: κ = max ε*·(1 + β)/λ_max(ε*^½Aε*^½) ≥ max ε* (λ_max/κ
            # decreases in κ, so λ_max(ε*) ≤ 1 + β here).
            lam = sharpest(top)
            return top * (1 + momentum) / lam if lam > 0 and math.isfinite(lam) else top
    return kappa


#: points in the fixed batch of `equipartition_directions` (at least 4B; the whole data set when smaller)
EQUIPARTITION_POINTS = 512


#: antithetic pairs of full SWAG draws per fixed-point iteration of the full-draw reading (`equipartition_full_draws`)
FULL_DRAW_PAIRS = 64
#: fixed-point iterations of the full-draw reading (the readings couple through the diagonal part)
FULL_DRAW_ITERATIONS = 3


@torch.no_grad()
def equipartition_directions(guide: SWAG, scale: float, grad, reading: str = "slice") -> torch.Tensor:
    """Shrink SWAG's low-rank part, direction by direction, to the spread equipartition supports; returns the
    factors b (one per direction, in (0, 1]) and rewrites the guide's deviations D in place.

    For the target p ∝ exp(−U), integration by parts gives E_p[(v·(θ − θ̄))(v·∇U(θ))] = |v|² for every
    constant v (Wenzel et al. 2020's configurational temperature, along v). Along an eigenvector v of the
    low-rank covariance scale·DᵀD/(k − 1) (variance λ, draws δ = √λ·z·v), the Gaussian's left side is
    C = √λ·E[z·h(z)] with h(z) = v·(∇U(θ̄ + √λ z v) − ∇U(θ̄ − √λ z v))/2, evaluated by the 3-point
    Gauss–Hermite rule, C = √λ·h(√3)/√3 (exact for a quartic U along v; C = λ·vᵀAv on a quadratic). Where
    C > 1, λ is cut to λ/C; where C ≤ 1 it is left alone.

    **This cut is biased narrow** and is kept as a guard, not as an exact rule. C is read on a one-dimensional
    slice through θ̄, so at the exact posterior's marginal variance λ = vᵀΣv it reads (vᵀΣv)(vᵀΣ⁻¹v) ≥ 1
    (Cauchy–Schwarz), with equality only along eigenvectors of the posterior covariance Σ: off them the cut
    takes λ down towards the conditional variance 1/(vᵀAv), a lower bound on the marginal one (6.6× too narrow
    on a BLR with posterior correlation −0.92, `tests/test_bench_reference.py`). Measured against a full-batch
    NUTS reference on digits (`benchmarks/bench_reference.py`, `notes/issue-13-reference.md`): without the cut
    single SWAG is closer to the reference in 10 of 10 cells but only by 0.001–0.012 TV, while Multi-SWAG
    members from fresh starts, whose Lyapunov rescaling c (`covariance_scale`) over-spreads them, reach 14–29×
    the width the full-draw identity allows at 1000 images (TV 0.029 → 0.072, NLL 0.100 → 0.189). The cut
    catches those. ``reading="full"`` reads the identity on SWAG's full draws instead
    (`equipartition_full_draws`, which the exact posterior satisfies along any direction). Measured against the
    same reference it is *further* from it than the slice in 12 of 12 (cell, seed, SWAG / Multi-SWAG) cases at
    300–1000 images, T = 1: on these fits the full draws read 1.7–5× the slice (the curvature along v averaged
    over q is larger than at θ̄), so it cuts more, not less (`notes/issue-13-fulldraw.md`). The slice stays the
    default.
    ``grad(θ)`` is ∇U on one fixed batch (scaled to the data set). Cost: 2 gradients per direction.
    The rewrite is D ← R·D with R = Q·diag(√b)·Qᵀ (D = Q·diag(s)·Vᵀ), so DᵀD ← V·diag(b·s²)·Vᵀ."""
    if reading == "full":
        return equipartition_full_draws(guide, scale, grad)
    if reading != "slice":
        raise ValueError(f"reading must be 'slice' or 'full', got {reading!r}")
    k = min(guide.num_snapshots, guide.rank)
    if k < 2:
        return torch.ones(0)
    D = guide.swa_deviations[:k]  # row order is irrelevant to DᵀD
    q, s, vt = torch.linalg.svd(D, full_matrices=False)
    lam = scale * s ** 2 / (k - 1)
    b = torch.ones_like(lam)
    mean = guide.swa_mean
    node = math.sqrt(3.0)
    for j in range(lam.numel()):  # min(k, P) directions
        if not lam[j] > 1e-12 * float(lam.max()):
            continue
        step = (lam[j].sqrt() * node) * vt[j]
        with torch.enable_grad():
            h = 0.5 * float(vt[j] @ (grad(mean + step) - grad(mean - step)))
        c = float(lam[j].sqrt()) * h / node
        if math.isfinite(c) and c > 1:
            b[j] = 1 / c
    guide.swa_deviations[:k] = (q * b.sqrt()) @ q.t() @ D
    return b


@torch.no_grad()
def equipartition_full_draws(guide: SWAG, scale: float, grad, num_pairs: int = FULL_DRAW_PAIRS,
                             iterations: int = FULL_DRAW_ITERATIONS, seed: int = 0) -> torch.Tensor:
    """The per-direction cut of `equipartition_directions` with the identity read on SWAG's *full* draws; returns
    the factors b ∈ (0, 1] (one per low-rank direction) and rewrites the guide's deviations D in place.

    **Identity.** For p ∝ exp(−U) and any constant θ̄ and v, integration by parts gives
    E_p[(v·(θ − θ̄))(v·∇U(θ))] = |v|² (Wenzel et al. 2020, App. E, the configurational temperature along v). The
    exact posterior reads 1 along *every* direction, not only along its covariance's eigenvectors, which is what
    the slice reading of `equipartition_directions` gets wrong. Here the left side is read on the SWAG Gaussian
    q = N(θ̄, scale·(diag(σ²) + DᵀD/(k − 1))) itself, diagonal part included, along each unit eigendirection v_j
    of the low-rank part (variance λ_j = scale·s_j²/(k − 1)):

        C_j = E_q[(v_j·δ)(v_j·∇U(θ̄ + δ))],   δ = √scale·(σ ⊙ z₁ + Dᵀz₂/√(k − 1)).

    **Estimator.** S antithetic pairs ±δ_s: Ĉ_j = (1/S) Σ_s (v_j·δ_s)·v_j·(∇U(θ̄ + δ_s) − ∇U(θ̄ − δ_s))/2, which
    removes the term (v_j·δ)(v_j·∇U(θ̄)) — zero in expectation but the dominant noise when the SWA mean is not a
    stationary point — and is exact on a quadratic along with every odd term. One pair serves all directions.

    **Monte-Carlo error.** On a quadratic U = ½θᵀAθ, (x, y) = (v·δ, v·Aδ) is Gaussian and
    Var(xy) = E[x²]E[y²] + C², so the relative standard error is √((κ + 1)/S) with
    κ = (vᵀΣ_q v)(vᵀAΣ_qAv)/C² ≥ 1 (Cauchy–Schwarz again: the spread of v·Aδ that the other directions
    and the diagonal part feed into it). κ = 1 along Σ_q's eigenvectors at C = 1 (s.e. 0.18 at S = 64); κ grows
    with the coupling. Measured on digits MLPs: a median relative s.e. of 0.23 at S = 64.

    **Fixed point.** On the quadratic C_j = λ_j·v_jᵀAv_j + v_jᵀAΣ_d v_j (Σ_d = scale·diag(σ²); the low-rank
    directions are orthonormal, so their cross terms vanish): the directions couple through the diagonal part
    only, and a plain cut λ_j/C_j overshoots when the diagonal's share is positive. The iteration
    b_j ← min(1, b_j/Ĉ_j(b)) on common random numbers (the same z each time, so the noise does not accumulate)
    has the fixed point b_j = (1 − r_j)/(λ_j a_jj) of the linear picture (r_j the diagonal's share), approached
    within a few steps when r_j ≪ 1; where r_j ≥ 1 the diagonal part alone over-spreads v_j, b_j falls
    geometrically and is floored at 1/64 of λ_j (that is the diagonal's fault, which this step does not touch).
    b never exceeds 1: the rule only cuts, as the slice does.

    What the reading can and cannot do for a low-rank Gaussian: by Stein's lemma C_j = v_jᵀE_q[∇²U]Σ_q v_j =
    λ_j·v_jᵀE_q[∇²U]v_j + (the diagonal part's share). C_j = 1 asks q to be self-consistent along v_j (the
    λ_j-stationarity of KL(q‖p) when the diagonal part is negligible: ∂/∂λ_j of E_q U − ½ log det Σ_q is
    ½(v_jᵀE_q[∇²U]v_j − 1/λ_j)), not to carry the marginal variance v_jᵀΣv_j that the posterior's correlations
    with directions outside q's span add; it is exact when q is the posterior, which a rank-k SWAG Gaussian is
    not. On a quadratic it is the slice's reading plus the diagonal's share, so it cuts at least as much as the
    slice wherever that share is positive. On digits MLPs (`benchmarks/bench_reference.py --split`) both parts
    raise it: the low-rank share alone is 1.7–5× the slice's reading (the curvature along v averaged over q
    exceeds the curvature at θ̄) and the diagonal share adds 0.2–1.0; the cut is then narrower than the slice's,
    and further from a NUTS reference (hence not the default).

    **Cost.** 2·S gradients of U per iteration on the fixed batch, whatever the rank (2·64·3 = 384 at defaults,
    against 2 per direction for the slice), plus O((k + P)·S) for the draws."""
    k = min(guide.num_snapshots, guide.rank)
    if k < 2:
        return torch.ones(0)
    D = guide.swa_deviations[:k]
    q, s, vt = torch.linalg.svd(D, full_matrices=False)
    lam = scale * s ** 2 / (k - 1)
    live = lam > 1e-12 * float(lam.max())
    mean = guide.swa_mean
    sd = (scale * guide.variance).sqrt()
    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn((num_pairs, mean.numel()), generator=gen, dtype=torch.float64).to(mean)
    z2 = torch.randn((num_pairs, lam.numel()), generator=gen, dtype=torch.float64).to(mean)
    diag_draws = z1 * sd  # the diagonal part, fixed across iterations
    b = torch.ones_like(lam)
    for _ in range(iterations):
        # low-rank part in its eigenbasis: Dᵀz/√(k − 1) ~ N(0, Vᵀdiag(s²)V/(k − 1)) = Σ_j √(λ_j b_j) w_j v_j
        delta = diag_draws + (z2 * (lam * b).sqrt()) @ vt
        reading = torch.zeros_like(lam)
        for d in delta:
            with torch.enable_grad():
                dg = 0.5 * (grad(mean + d) - grad(mean - d))
            reading += (vt @ d) * (vt @ dg)
        reading /= num_pairs
        if not bool(torch.isfinite(reading).all()):
            break
        b = torch.where(live & (reading > 0), (b / reading.clamp_min(1e-300)).clamp(max=1.0), b).clamp(min=1 / 64)
    guide.swa_deviations[:k] = (q * b.sqrt()) @ q.t() @ D
    return b


def relaxation_steps(noise: GradientNoise, rates: torch.Tensor, dataset_size: int, batch_size: int,
                     momentum: float, every: int, snapshots: int) -> int:
    """Steps of SGD at ``rates`` after which θ₀'s offset no longer inflates the collection's covariance by more
    than half its own standard error (0 where the estimate does not apply: some rate is at the stability cap).

    **Offset.** The mean minibatch gradient ḡ measured at θ₀ (``noise``, n batches; ḡ² less its own noise V/n)
    is Aδ for an offset δ from the mode. With Fisher ≈ Hessian (A_ii ≈ B·V_ii, V the minibatch gradient
    variance, the assumption Mandt's rates rest on) and the posterior sd of coordinate i at least
    (N·A_ii)^(−½), the offset in posterior sds is d_i² = N·ḡ_i²/(B·V_ii).

    **Relaxation.** Heavy ball at rate ε_i on curvature a relaxes like exp(−t/τ_i), τ_i = (1 − β)/(ε_i·a)
    steps (effective rate ε/(1 − β), overdamped); at Mandt's rate τ = N/(2B), but the rates the burn-in
    runs at are E[g²]/V times smaller while θ₀ drifts (`GradientNoise.second_moment`), and τ with them.

    **Length.** Snapshots every ``every`` steps from an offset r (in sds) add Σ_j r²e^(−2j·every/τ) / K
    = r² / (K(1 − e^(−2·every/τ))) to the covariance's diagonal (relative to the posterior's), K =
    ``snapshots``. A sample variance of K independent snapshots has relative standard error √(2/K), so the
    residual is allowed r_i² ≤ ½√(2/K)·K(1 − e^(−2·every/τ_i)), reached after t_i = (τ_i/2)·ln(d_i²/r_i²)
    steps; the answer is max_i t_i. (Sweep config 13, d = 1, N = 5000, σ = 0.02, B = 32: d ≈ 19, rates
    3.5× low, τ ≈ 270, t ≈ 690 steps where the old burn-in had 157.)

    Where the cap binds (networks: Fisher ≪ Hessian for confident or dead weights) neither d_i nor τ_i can be
    read from the noise, and 0 is returned: the burn-in is the stability trial alone, as before.

    **Bound.** At most the collection's own length, ``snapshots · every`` steps: a coordinate of almost no
    gradient noise (a dead unit, a start far from any mode) has τ_i → ∞, and an unbounded relaxation ran for
    over 10 minutes on a 131-parameter net; a start that needs longer is too far for the collection's rates,
    and `_start_auto` warns."""
    full = noise._unscaled(noise.second_moment(), dataset_size, batch_size, momentum)
    if noise.count < 2 or not bool((full < noise.cap).all()):
        return 0
    var = noise.m2 / (noise.count - 1)
    drift = (noise.mean ** 2 - var / noise.count).clamp(min=0.0)  # ḡ², unbiased
    offset2 = dataset_size * drift / (batch_size * var)
    tau = (1 - momentum) / (rates * batch_size * var)
    allowed2 = 0.5 * math.sqrt(2 / max(1, snapshots)) * max(1, snapshots) * -torch.expm1(-2 * every / tau)
    steps = 0.5 * tau * torch.log(offset2 / allowed2)
    steps = torch.nan_to_num(steps, nan=0.0, posinf=0.0, neginf=0.0).clamp(min=0.0)
    limit = collection_steps(every, snapshots)
    return min(limit, int(math.ceil(float(steps.max())))) if steps.numel() else 0


def collection_steps(every: int, snapshots: int) -> int:
    """The collection's length in steps, the bound on `relaxation_steps`."""
    return max(1, snapshots) * every


def _start_auto(theta: torch.Tensor, data: FitData, generator: torch.Generator, momentum: float, gradient,
                t: float, every: int, cap: float, hvp=None, snapshots: int = 0, dense: bool = False,
                example_gradients=None) -> GradientNoise:
    """Measure the gradient noise at the pre-collection iterate θ₀, cap the rates at the stability bound
    (`stability_cap`, when ``hvp`` gives Hessian-vector products), then check the auto rates on a
    burn-in run of i.i.d. batches (no snapshots), halving them until the iterate stays near the mode.

    On a quadratic, SGD at rates ε lies on average tr(εV)/(4(1 − β)) per data point above the minimum
    (`GradientNoise.stationary_excess`, exact by the trace of the Lyapunov equation). Where the iterate
    leaves the quadratic region (nets that fit their data, directions only the prior holds, units that
    come alive) the loss climbs above that. A burn-in whose mean loss over its second half (the first is
    the transient from θ₀) exceeds θ₀'s by more than the prediction plus 3 standard errors, or that
    diverges, is restarted from θ₀ at half the rates. The halvings do not shrink SWAG's covariance:
    `GradientNoise.covariance_scale` undoes them, which is valid exactly where the linear picture holds.

    With augmentation each measured batch is evaluated under two independent augmentations, so that
    the noise splits into its data-sampling and augmentation parts (`GradientNoise`); the prediction
    counts the sampling part only.

    The accepted burn-in is then continued at the same rates until θ₀'s offset has relaxed below the noise of
    a covariance from ``snapshots`` snapshots (`relaxation_steps`; no extra steps where the cap binds).
    A burn-in that fails `STABILITY_HALVINGS` times raises `DivergenceError` (`SWAGRule.begin_auto` adds the
    step; `train_runs` names the fixes).
    """
    N = data.dataset_size
    noise = GradientNoise(theta.detach())
    ref = []
    num = max(MIN_NOISE_BATCHES, data.num_batches)
    # dense: the gradients are kept until the whitening is known (n ≥ GRADIENTS_PER_PARAM·P of them)
    kept: Optional[list] = [] if dense else None
    measured = max(num, GRADIENTS_PER_PARAM * theta.numel()) if dense else num
    if data.augment is None:
        for xb, yb in data.random_batches(measured, generator):
            ref.append(t * float(gradient(xb, yb).detach()))
            if kept is None:
                noise.update(theta.grad)
            else:
                kept.append((theta.grad.detach().clone(),))
    else:
        for xa, xb, yb in data.paired_batches(measured, generator):
            ref.append(t * float(gradient(xa, yb).detach()))
            first = theta.grad.detach().clone()
            gradient(xb, yb)
            if kept is None:
                noise.update_pair(first, theta.grad)
            else:
                kept.append((first, theta.grad.detach().clone()))
    def whitening(kept: list) -> Optional[torch.Tensor]:
        # Dense: the minibatch noise covariance Cov_i(g_i)/B read exactly from every point's gradient at θ's
        # current value where the model allows (`example_gradients`), else estimated from the kept gradients.
        if example_gradients is not None and data.augment is None:
            chunks = full_chunks(data, CHUNK_ROWS)
            cov = example_covariance(example_gradients, chunks) / data.random_batch_size
            return covariance_whitening(cov, theta.dtype)
        return whitening_factor(torch.stack(kept))

    if kept is not None:
        noise = GradientNoise(theta.detach(), whitening([g[0] for g in kept]))
        for g in kept:
            noise.update(*g) if len(g) == 1 else noise.update_pair(*g)
    ref_t = torch.tensor(ref, dtype=torch.float64)
    fallback = cap
    if hvp is not None:
        x, y = data._host_full()
        idx = torch.randperm(N, generator=generator)[:min(N, 4 * data.random_batch_size)].to(y.device)
        batch = data.to_device((take_rows(x, idx), y[idx]))  # one fixed operator, so the power iteration converges

    def capped(noise: GradientNoise) -> float:
        if hvp is None:
            return fallback
        kappa = stability_cap(noise, lambda v: noise.whiten(hvp(noise.color(v), batch)), N, data.random_batch_size,
                              momentum)
        return fallback if kappa is None else kappa

    cap = noise.cap = capped(noise)

    def sgd(noise: GradientNoise, rates: torch.Tensor, steps: int, keep: int, record) -> None:
        # ``steps`` more steps of the accepted burn-in's optimiser (``opt``) at ``rates``, the last ``keep`` steps'
        # θ-gradients passed to ``record`` before they are preconditioned
        for i, (xb, yb) in enumerate(data.random_batches(steps, generator)):
            if noise.left_bound(t * float(gradient(xb, yb).detach())):
                raise _LeftBound  # the trial's instability test, kept while relaxing at the accepted rates
            if i >= steps - keep:
                record(theta.grad)
            theta.grad.copy_(noise.precondition(theta.grad, rates))
            opt.step()

    def relax_whitened(noise: GradientNoise, white: torch.Tensor, kept: list) -> GradientNoise:
        # Dense: the noise, its rates and their cap in the coordinates read at the relaxed iterate; then, while
        # the offset measured there is still above the collection's noise, relax on and read again (at most
        # RELAXATION_ROUNDS times). The first extension's length came from θ₀'s noise, which the offset itself
        # inflates (residuals (xᵀδ)² add to σ²: 1.8× at 20 sds on a BLR), so it under-estimated the relaxation
        # time; reading the offset again where it is smaller converges on "relaxed" from measurements alone.
        for round in range(RELAXATION_ROUNDS + 1):
            fresh = GradientNoise(theta.detach(), white)
            for g in kept:
                fresh.update(g)
            fresh.factor, fresh.reference, fresh.allowed = noise.factor, noise.reference, noise.allowed
            fresh.cap = capped(fresh)
            noise = fresh
            rates = noise.rates(N, data.random_batch_size, momentum, noise.cap)
            more = relaxation_steps(noise, rates, N, data.random_batch_size, momentum, every, snapshots)
            if more <= 0 or round == RELAXATION_ROUNDS:
                return noise
            kept = []
            sgd(noise, rates, max(more, measured), measured, lambda g: kept.append(g.detach().clone()))
            white = whitening(kept)
            if white is None:
                white = noise.whitening
        return noise

    def relax(noise: GradientNoise, rates: torch.Tensor, extra: int) -> GradientNoise:
        # A dense whitening read at θ₀ is stale too: off the mode the gradients' covariance is shaped by θ₀'s
        # residuals (on a rotated BLR with κ = 10³ it put SWAG's spread 30× off along one direction), so it
        # is read again on the relaxed, moving iterate's gradients, as the collection will see them.
        rewhiten = noise.whitening is not None and data.augment is None
        if extra > 0 or rewhiten:
            # The noise measured at θ₀ is stale once θ has relaxed: its mean gradient (ḡ² in E[g²], which
            # kept the rates low while θ drifted) is not the relaxed iterate's. Re-measure it on the last
            # `num` steps' gradients (on the moving iterate, as the collection measures it; the class docs).
            # With augmentation the paired split is only measured at θ₀, so the θ₀ estimate is kept.
            keep = 0 if data.augment is not None else measured if rewhiten else num
            fresh = GradientNoise(theta.detach(), noise.whitening)
            kept: list = []
            sgd(noise, rates, max(extra, keep), keep,
                (lambda g: kept.append(g.detach().clone())) if rewhiten else fresh.update)
            white = whitening(kept) if rewhiten else None
            if white is not None:
                return relax_whitened(noise, white, kept)
            if data.augment is None:
                noise.count, noise.mean, noise.m2 = fresh.count, fresh.mean, fresh.m2
        return noise

    theta0 = theta.detach().clone()
    burn = max(data.num_batches, 2 * every)
    # The first half of the burn-in is the transient from θ₀ (≥ one relaxation time, `every`); the stationary
    # excess is judged on the second half, so a loss that is still climbing fails.
    judged = burn - burn // 2
    se = float(ref_t.std()) * math.sqrt(1 / len(ref) + 1 / judged)
    for _ in range(STABILITY_HALVINGS):
        opt = torch.optim.SGD([theta], lr=1.0, momentum=momentum)
        rates = noise.rates(N, data.random_batch_size, momentum, cap)
        # The rescaled covariance (covariance_scale) is right only where the linear (OU) picture holds at
        # these rates: the null hypothesis "quadratic" predicts this mean excess exactly; test it at 3 s.e.
        # (2× the prediction let SWAG spread wider than SGHMC at a worse NLL on digits 500.)
        noise.reference = float(ref_t.mean())
        noise.allowed = noise.stationary_excess(rates, momentum) + 3 * se
        total, count, stable = 0.0, 0, True
        for i, (xb, yb) in enumerate(data.random_batches(burn, generator)):
            value = t * float(gradient(xb, yb).detach())
            theta.grad.copy_(noise.precondition(theta.grad, rates))
            opt.step()
            if noise.left_bound(value):
                stable = False
                break
            if i >= burn // 2:
                total, count = total + value, count + 1
        if stable and total / count - noise.reference <= noise.allowed:
            # θ₀'s transient: the trial's burn-in is one relaxation time at Mandt's rate, but θ₀ can be many
            # posterior sds off and the rates start low, so relax on until the offset is below the collection's
            # own noise (`relaxation_steps`), at the accepted rates, same optimiser.
            needed = relaxation_steps(noise, rates, N, data.random_batch_size, momentum, every, snapshots)
            try:
                relaxed = relax(noise, rates, needed - burn)
            except _LeftBound:
                # The relaxation (up to a collection's length) runs far longer than the trial it extends: a fresh
                # 4-16-3 net from warmup=0 passed the trial and then left for |θ| = 275 and 2149 (from 7) while
                # relaxing, and every collection step from there failed. It is the trial failing late.
                relaxed = None
            if relaxed is not None:
                if needed >= collection_steps(every, snapshots):
                    warnings.warn(f"SWAG's collection starts far from a mode: relaxing from it at the collection's "
                                  f"rates would take longer than the collection itself ({needed} steps, cut there), "
                                  "so the covariance may be inflated by the start's offset. "
                                  f"{_sentence(far_start_advice())}.", RuntimeWarning, stacklevel=4)
                return relaxed
        with torch.no_grad():
            theta.copy_(theta0)
        noise.factor /= 2
    # Every trial left the quadratic region: c ≥ 2^STABILITY_HALVINGS would scale up a collection that cannot
    # move (c = 1.7·10⁷ to 5·10⁹⁵ measured on a 4-16-3 toy from warmup=0), so there is no covariance to report.
    raise DivergenceError(f"swag's burn-in left the quadratic region at every one of {STABILITY_HALVINGS} halvings of "
                          "its auto rates")
