"""SWAG and Multi-SWAG: Gaussian posteriors from the SGD trajectory, and mixtures over basins.

``method="swag"`` (Maddox et al. 2019) runs SGD with momentum on the per-data-point MAP
objective of the tempered model,

    L(θ) = −(1/N) [log p̃(D_batch, w(θ)) + log|det ∂w/∂θ|]
         = (1/T)·(mean minibatch NLL) + s_prior·(−log p(w))/N,

with log p̃ = [`log_joint`][pyro_bdl.BayesianModel] through
`Objective` (N/B scaling and temperature are the core's).
For a Gaussian prior N(0, σ²) the prior term is weight decay with coefficient 1/(σ²N) — the
prior precision over N — so the SGD fixed point is the mode of the tempered posterior.

**Temperature.** SGD steps on T·L (temperature-free units: under posterior tempering T·L is the
T = 1 objective, whose mode is p_T's), so ``lr`` means the same at every T and a cold run does
not diverge; the collected covariance is multiplied by T (the guide's ``scale`` is
``scale·T``). For a Gaussian approximation around the mode this is exactly p_T's covariance
under posterior tempering (and (N·A_T)⁻¹ under likelihood tempering). The price: the SWA mean
averages iterates that spread like the T = 1 posterior, so its error in units of p_T's sd grows
like 1/√T for a given run length.

**Schedule.** ``lr`` for the first half of ``swa_start`` epochs, a linear decay to ``lr/5``
(or a numeric ``swa_lr``) until 90% of ``swa_start`` (Maddox et al.). Then:

* ``swa_lr="auto"`` (default): per-coordinate rates ε_k = 2(1−β)/(N·E[g_k²]) from the measured
  minibatch gradient noise (Mandt et al. 2017, Thm. 2; `GradientNoise`), on minibatches drawn *with
  replacement*, a snapshot every max(N/(2B), 1/(1−β)) steps. Three steps keep the theory's premises:

  1. the rates are capped at κ, the largest cap under which the preconditioned heavy ball is within
     2× of its continuous-time limit, λ_max(ε^½Aε^½) = 1 + β (`stability_cap`; A from Hessian-vector
     products), instead of a fixed multiple of ``lr``;
  2. a burn-in (`_start_auto`) halves all rates by a factor f until the linear (OU) picture holds:
     its excess loss is not above the OU prediction tr(εV)/(4(1−β)) (`stationary_excess`) by more
     than 3 standard errors;
  3. the collected covariance is multiplied by c = max(1/f, min_k ε_k*/ε_k)
     (`GradientNoise.covariance_scale`): the stationary covariance solves a Lyapunov equation linear
     in a global rate scale, so the halvings keep the iterate local without shrinking the spread;
  4. each direction of the low-rank part is then shrunk, never widened, to what equipartition supports
     (`equipartition_directions`): the variance λ along v is cut to 1/(vᵀAv) where λ·vᵀAv > 1, with vᵀAv
     the secant curvature at ±√3 sd (E_p[(v·δ)(v·∇U)] = 1 for the target; Wenzel et al. 2020).

  On linear regression the SWAG covariance is then within 2× of the exact (tempered) posterior
  (with a fixed rate and reshuffled epochs it is 0.1–0.3×); on digits SWAG's predictive mutual
  information is 0.11–0.29 of SGHMC's at T = 1 (`benchmarks/bench_swag.py --digits-mi`; 0.26–0.85
  before step 4, at a worse NLL on every setting), and Multi-SWAG's NLL is within 0.003–0.023 of a
  deep ensemble's without augmentation and below it with augmentation. With data
  augmentation the noise is measured on paired augmentations of the same batches; the burn-in check
  and c count only the data's sampling noise, not the augmentation's (`GradientNoise`). The
  run's c is ``info["covariance_scale"]`` and the direction factors ``info["direction_scales"]``.
* a number: constant ``swa_lr`` on reshuffled epochs, a snapshot after every epoch (the paper).

``method="multiswag"`` (Wilson & Izmailov 2020) runs M independent SWAG fits from fresh
initialisations and data orders (member m: seed ``spawn_seeds(seed, M)[m]``), optionally in parallel
processes, and returns their equal-weight mixture ([`MixturePosterior`][pyro_bdl.MixturePosterior]).

With BatchNorm, SGD uses batch statistics and every posterior draw gets its own statistics,
recomputed by one pass over the training inputs (`pyro_bdl.batchnorm`); networks
without BatchNorm skip this.

Runs can be checkpointed after every epoch (``checkpoint=path``) and resumed with identical
results: the iterate, momentum, SWAG moments, data-order generator and RNG states are saved.
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import pyro
import torch
from pyro.infer.autoguide import init_to_value

from .._util import checkpoint as checkpoints
from .._util.checks import check_int, is_invalid_parameter_error
from .._util.random import spawn_seeds
from ..guides.swag import SWAG
from ..model import batchnorm
from ..model.bayesian_model import BayesianModel
from ..model.inputs import take_rows
from ..model.potential import Objective
from ..posterior.mixture import MixturePosterior
from ..posterior.swag import SWAGPosterior
from ..model.tempering import likelihood_scale
from . import driver
from .data import FitData
from .divergence import DivergenceCheck, loss_floor
from .ensemble import MEMORY_SHARE, _free_memory as free_memory, member_bytes, stack_size
from .map import MAPRule, example_batch
from .members import run_members
from .registry import register

#: the driver's checkpoint of SWAG runs (`train_runs`); files of the loop before the driver are not read
CHECKPOINT_KIND = "pyro_bdl.swag.driver"


def swag_learning_rate(epoch: int, lr: float, swa_lr: float, swa_start: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based) in Maddox et al. (2019), with t = epoch/swa_start:

    lr for t ≤ 0.5; lr·(1 − (1 − swa_lr/lr)·(t − 0.5)/0.4) for 0.5 < t ≤ 0.9; swa_lr for t > 0.9
    (so constant ``swa_lr`` while snapshots are collected).
    """
    if swa_start <= 0:
        return swa_lr
    t = epoch / swa_start
    ratio = swa_lr / lr
    if t <= 0.5:
        factor = 1.0
    elif t <= 0.9:
        factor = 1.0 - (1.0 - ratio) * (t - 0.5) / 0.4
    else:
        factor = ratio
    return lr * factor


# -- the auto rates ---------------------------------------------------------------------------
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

    def __init__(self, like: torch.Tensor):
        self.count, self.mean, self.m2 = 0, torch.zeros_like(like), torch.zeros_like(like)
        self.factor = 1.0  # halved by the stability trial of _start_auto while the rates are too large
        # Σ g(b, a₁)·g(b, a₂) over paired augmentations of the same batches, and their number
        self.cross, self.pairs = torch.zeros_like(like), 0
        self.cap = math.inf  # the rate cap _start_auto chose (stability_cap)
        self.reference, self.allowed = math.nan, math.inf  # θ₀'s loss and the excess the burn-in allowed

    def update(self, grad: torch.Tensor) -> None:
        self.count += 1
        delta = grad - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (grad - self.mean)

    def update_pair(self, grad: torch.Tensor, other: torch.Tensor) -> None:
        """Record the gradients of one batch under two independent augmentations (class docs); ``grad``
        also enters the total moments."""
        self.update(grad)
        self.cross += grad * other
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
        return shrink * 2 * (1 - momentum) / (dataset_size * moment)

    def rates(self, dataset_size: int, batch_size: int, momentum: float, cap: float) -> torch.Tensor:
        """ε_k (class docs, from the total `second_moment`) times the stability factor, capped at ``cap``."""
        rates = self.factor * self._unscaled(self.second_moment(), dataset_size, batch_size, momentum)
        return torch.nan_to_num(rates, nan=cap, posinf=cap).clamp(max=self.factor * cap)

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
                "allowed": self.allowed}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"].clone(), state["m2"].clone()
        self.factor = state["factor"]
        self.cross = state.get("cross", torch.zeros_like(self.mean)).clone()  # checkpoints before paired measurement
        self.pairs = state.get("pairs", 0)
        self.cap = state.get("cap", math.inf)
        self.reference, self.allowed = state.get("reference", math.nan), state.get("allowed", math.inf)


#: swa_lr="auto" rates are at most AUTO_CAP·lr only where the stability bound cannot be computed (no finite rate)
AUTO_CAP = 10.0
#: i.i.d. minibatch gradients measured at the end of the pre-collection phase before auto rates are first used
MIN_NOISE_BATCHES = 32


def _paired_batches(data: FitData, num_batches: int, generator: torch.Generator):
    """Like `FitData.random_batches`, but each batch under two independent augmentations: (x₁, x₂, y)."""
    x, y = data._host_full()
    for _ in range(num_batches):
        idx = torch.randint(data.dataset_size, (data.random_batch_size,), generator=generator).to(y.device)
        xb, yb = take_rows(x, idx), y[idx]
        (x1, y1), (x2, _) = (data.to_device((data.augment(xb, generator), yb)) for _ in range(2))
        yield x1, x2, y1


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
    capping (linear regression) κ ends at or above every ε_k* and the cap is inert."""
    full = torch.nan_to_num(noise._unscaled(noise.second_moment(), dataset_size, batch_size, momentum),
                            nan=math.inf, posinf=math.inf)
    finite = full[torch.isfinite(full)]
    if finite.numel() == 0:
        return None
    kappa = float(finite.median())
    v = torch.randn(full.shape, generator=torch.Generator().manual_seed(0), dtype=full.dtype).to(full.device)
    for _ in range(iterations):
        root = full.clamp(max=kappa).sqrt()
        lam = 0.0
        for _ in range(power_steps):
            v = v / v.norm()
            w = root * hvp(root * v)
            lam, v = float(v @ w), w
        if not lam > 0 or not math.isfinite(lam):
            break
        kappa *= (1 + momentum) / lam
        if kappa >= float(finite.max()):
            return float(finite.max())
    return kappa


#: points in the fixed batch of `equipartition_directions` (at least 4B; the whole data set when smaller)
EQUIPARTITION_POINTS = 512


@torch.no_grad()
def equipartition_directions(guide: SWAG, scale: float, grad) -> torch.Tensor:
    """Shrink SWAG's low-rank part, direction by direction, to the spread equipartition supports; returns the
    factors b (one per direction, in (0, 1]) and rewrites the guide's deviations D in place.

    For the target p ∝ exp(−U), integration by parts gives E_p[(v·(θ − θ̄))(v·∇U(θ))] = |v|² for every
    constant v (Wenzel et al. 2020's configurational temperature, along v). Along an eigenvector v of the
    low-rank covariance scale·DᵀD/(k − 1) (variance λ, draws δ = √λ·z·v), the Gaussian's left side is
    C = √λ·E[z·h(z)] with h(z) = v·(∇U(θ̄ + √λ z v) − ∇U(θ̄ − √λ z v))/2, evaluated by the 3-point
    Gauss–Hermite rule, C = √λ·h(√3)/√3 (exact for a quartic U along v; C = λ·vᵀAv on a quadratic). Where
    C > 1 the direction is spread wider than the loss's climb along it allows, and λ is cut to λ/C; where
    C ≤ 1 it is left alone (1/(vᵀAv) is the *conditional* variance, a lower bound on the marginal one, so it
    may only cap). On digits these are the directions where the rescaled SGD spread (c, `covariance_scale`)
    climbs faster than a quadratic: the cap brings Multi-SWAG's NLL back near the deep ensemble's.
    ``grad(θ)`` is ∇U on one fixed batch (scaled to the data set). Cost: 2 gradients per direction.
    The rewrite is D ← R·D with R = Q·diag(√b)·Qᵀ (D = Q·diag(s)·Vᵀ), so DᵀD ← V·diag(b·s²)·Vᵀ."""
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


def _start_auto(theta: torch.Tensor, data: FitData, generator: torch.Generator, momentum: float, gradient,
                t: float, every: int, cap: float, hvp=None) -> GradientNoise:
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
    """
    N = data.dataset_size
    noise = GradientNoise(theta.detach())
    ref = []
    num = max(MIN_NOISE_BATCHES, data.num_batches)
    if data.augment is None:
        for xb, yb in data.random_batches(num, generator):
            ref.append(t * float(gradient(xb, yb).detach()))
            noise.update(theta.grad)
    else:
        for xa, xb, yb in _paired_batches(data, num, generator):
            ref.append(t * float(gradient(xa, yb).detach()))
            first = theta.grad.detach().clone()
            gradient(xb, yb)
            noise.update_pair(first, theta.grad)
    ref_t = torch.tensor(ref, dtype=torch.float64)
    if hvp is not None:
        x, y = data._host_full()
        idx = torch.randperm(N, generator=generator)[:min(N, 4 * data.random_batch_size)].to(y.device)
        batch = data.to_device((take_rows(x, idx), y[idx]))  # one fixed operator, so the power iteration converges
        kappa = stability_cap(noise, lambda v: hvp(v, batch), N, data.random_batch_size, momentum)
        cap = cap if kappa is None else kappa
    noise.cap = cap
    theta0 = theta.detach().clone()
    burn = max(data.num_batches, 2 * every)
    # The first half of the burn-in is the transient from θ₀ (≥ one relaxation time, `every`); the stationary
    # excess is judged on the second half, so a loss that is still climbing fails.
    judged = burn - burn // 2
    se = float(ref_t.std()) * math.sqrt(1 / len(ref) + 1 / judged)
    for _ in range(20):
        opt = torch.optim.SGD([theta], lr=1.0, momentum=momentum)
        rates = noise.rates(N, data.random_batch_size, momentum, cap)
        # The rescaled covariance (covariance_scale) is right only where the linear (OU) picture holds at
        # these rates: the null hypothesis "quadratic" predicts this mean excess exactly; test it at 3 s.e.
        # (2× the prediction let SWAG spread wider than SGHMC at a worse NLL on digits 500.)
        allowed = noise.stationary_excess(rates, momentum) + 3 * se
        total, count, stable = 0.0, 0, True
        for i, (xb, yb) in enumerate(data.random_batches(burn, generator)):
            value = t * float(gradient(xb, yb).detach())
            theta.grad.mul_(rates)
            opt.step()
            if not math.isfinite(value) or value - float(ref_t.mean()) > 100 * allowed:
                stable = False
                break
            if i >= burn // 2:
                total, count = total + value, count + 1
        if stable and total / count - float(ref_t.mean()) <= allowed:
            noise.reference, noise.allowed = float(ref_t.mean()), allowed
            return noise
        with torch.no_grad():
            theta.copy_(theta0)
        noise.factor /= 2
    warnings.warn("SWAG's auto learning rates stayed unstable after 20 halvings; its covariance may be wrong. "
                  "Pass a numeric swa_lr.", RuntimeWarning, stacklevel=4)
    return noise


# -- the step rule ----------------------------------------------------------------------------
@contextlib.contextmanager
def _weights_valid(lr: float):
    """A distribution refusing NaN/inf weights (the traced path validates) is SWAG diverging: say so, naming lr."""
    try:
        yield
    except ValueError as err:
        if not is_invalid_parameter_error(err):
            raise
        raise FloatingPointError(f"SWAG diverged: the weights became NaN or inf (a distribution got invalid "
                                 f"parameters); lower lr (now {lr:g}) or check the data scale") from None


class SWAGRule(MAPRule):
    """SWAG's step rule (`pyro_bdl.infer.driver`) for K runs stacked as θ ``(K, P)``.

    Heavy-ball SGD (torch's update: b ← βb + g, θ ← θ − ε·b, b = g at a fresh start) on the per-data-point
    objective in temperature-free units, T·L(θ) = T·U(θ)/N (module docs; U includes the log-Jacobian,
    as the guide's Delta sites do), with the schedule `swag_learning_rate` per epoch. With
    ``swa_lr="auto"`` each run, from ``swa_start`` on, has its own noise estimate, rates ε_k (g ← ε ⊙ g,
    step 1), stability cap, burn-in and instability guard (`GradientNoise`, `_start_auto`); its
    minibatches are then i.i.d. (`_Batches`). The SWAG moments of every run — mean, Welford's squared
    deviations, the ring of the last ``rank`` deviations (`pyro_bdl.guides.SWAG.collect`'s update, elementwise,
    so run k's moments are what run k alone would collect) — are part of the state, collected at the end of
    every epoch past ``swa_start`` (numeric ``swa_lr``) or every ``every`` steps (auto). The losses and
    gradients of the K runs come from `MAPRule.value_and_grad` (one vmapped forward and one backward; one
    run at a time for networks vmap cannot batch).
    """

    def __init__(self, objective: Objective, data: FitData, *, epochs: int, swa_start: int, lr: float, swa_lr: Any,
                 momentum: float, rank: int, collect: bool):
        super().__init__(objective, data.dataset_size, lr, 1.0, epochs * data.num_batches)
        model = objective.model
        self.data, self.per_epoch = data, data.num_batches
        self.epochs, self.swa_start, self.swa_lr, self.beta = epochs, swa_start, swa_lr, float(momentum)
        self.auto, self.rank, self.collect = swa_lr == "auto", rank, collect
        self.temperature = model.temperature
        self.norm_mode = (model.network.batch_statistics if batchnorm.has_batchnorm(model.net)
                          else contextlib.nullcontext)
        # With auto rates the iterate relaxes in ≈ N/(2B) steps (Fisher ≈ Hessian) and the momentum forgets
        # in 1/(1 − β) steps: snapshots the longer of the two apart are nearly independent.
        self.every = max(1, round(self.N / (2 * data.random_batch_size)), round(1 / (1 - momentum)))
        self.state: Optional[Dict[str, Any]] = None  # the latest state (the burn-in at swa_start works on it)

    def loss(self, theta: torch.Tensor, x, y: torch.Tensor) -> torch.Tensor:
        """T·L(θ) = T·(U(θ)/N) on a batch, the objective SGD follows (its gradient exactly as the loop before the
        driver took it, ``(t * loss).backward()``)."""
        return self.temperature * (self.objective.potential(theta, x, y, self.N) / self.N)

    def schedule(self, epoch: int) -> float:
        """The exploration rate of ``epoch`` (`swag_learning_rate`; towards lr/5 before auto rates)."""
        return swag_learning_rate(epoch, self.lr, self.lr / 5 if self.auto else float(self.swa_lr), self.swa_start)

    def lr_at(self, step: int) -> float:
        """The rate of ``step``'s epoch (auto: run 0's geometric mean rate), named by a divergence message."""
        epoch = step // self.per_epoch
        record = self.state["lr"][0] if self.state is not None else []
        return record[epoch] if epoch < len(record) else self.schedule(epoch)

    def init(self, theta: torch.Tensor) -> Dict[str, Any]:
        K, P = theta.shape
        zeros = theta.new_zeros
        self.state = {"theta": theta.detach().clone(), "momentum": zeros(K, P), "fresh": [True] * K, "step": 0,
                      "mean": zeros(K, P), "sq_dev": zeros(K, P), "deviations": zeros(K, self.rank, P), "count": 0,
                      "noise": [None] * K, "rates": None, "lr": [[] for _ in range(K)]}
        return self.state

    def update(self, state: Dict[str, Any], batch: driver.Batch,
               generators: Sequence[torch.Generator]) -> Tuple[Dict[str, Any], torch.Tensor]:
        self.state = state
        step, theta = state["step"], state["theta"]
        epoch, i = divmod(step, self.per_epoch)
        auto = self.auto and epoch >= self.swa_start
        N, B = self.N, self.data.random_batch_size
        if i == 0:  # a new epoch: its rates (auto: from each run's noise measured so far)
            if auto:
                state["rates"] = torch.stack([n.rates(N, B, self.beta, n.cap) for n in state["noise"]])
                for record, rates in zip(state["lr"], state["rates"]):
                    record.append(float(rates.log().mean().exp()))  # the record is the rates' geometric mean
            else:
                for record in state["lr"]:
                    record.append(self.schedule(epoch))
        with _weights_valid(self.lr), self.norm_mode():
            scaled, grad = self.value_and_grad(theta, batch)  # T·L and ∇(T·L), (K,) and (K, P)
        if auto:
            for k, noise in enumerate(state["noise"]):
                noise.update(grad[k])
            grad = grad * state["rates"]
        lr = 1.0 if auto else state["lr"][0][-1]
        buf = state["momentum"]
        buf.mul_(self.beta).add_(grad)
        for k, fresh in enumerate(state["fresh"]):
            if fresh:  # a fresh optimiser's first step: b = g
                buf[k].copy_(grad[k])
                state["fresh"][k] = False
        theta.add_(buf, alpha=-lr)
        value = scaled / self.temperature if self.temperature != 1 else scaled.clone()  # L, per data point
        if auto:
            for k, v in enumerate(scaled.tolist()):  # one host read per step, as the loop before the driver did
                noise = state["noise"][k]
                if not math.isfinite(v) or v - noise.reference > 100 * noise.allowed:
                    # The burn-in's instability test, kept while collecting (the rates follow the measured
                    # noise): back to the SWA mean (or θ₀'s neighbourhood) at half the rates, fresh momentum.
                    noise.factor /= 2
                    state["rates"][k] = noise.rates(N, B, self.beta, noise.cap)
                    state["fresh"][k] = True
                    if state["count"]:
                        theta[k].copy_(state["mean"][k])
                    value[k] = noise.reference / self.temperature
        if self.collect and ((auto and (step + 1) % self.every == 0) or
                             (not self.auto and i == self.per_epoch - 1 and epoch + 1 > self.swa_start)):
            self.collect_snapshot(state)
        state["step"] = step + 1
        return state, value

    @staticmethod
    @torch.no_grad()
    def collect_snapshot(state: Dict[str, Any]) -> None:
        """`pyro_bdl.guides.SWAG.collect` for every run: θ̄ += (θ − θ̄)/n, S += (θ − θ̄_old)(θ − θ̄_new), D's newest row."""
        n = state["count"] + 1
        theta, mean = state["theta"], state["mean"]
        delta = theta - mean
        mean.add_(delta / n)
        deviation = theta - mean
        state["sq_dev"].add_(delta * deviation)
        state["deviations"][:, (n - 1) % state["deviations"].shape[1]] = deviation
        state["count"] = n

    def member_closures(self, theta: torch.Tensor):
        """A leaf copy of one run's θ ``(P,)``, its gradient ``gradient(x, y)`` (L, ∇(T·L) left in ``.grad``) and
        Hessian-vector products ``hvp(v, (x, y))`` of T·L (double backward): what `_start_auto` steps on."""
        theta = theta.detach().clone().requires_grad_(True)
        t, N = self.temperature, self.N

        def gradient(xb, yb):
            theta.grad = None
            with _weights_valid(self.lr), self.norm_mode():
                loss = self.objective.potential(theta, xb, yb, N) / N
            (t * loss).backward()
            return loss

        def hvp(v, batch):
            xb, yb = batch
            point = theta.detach().requires_grad_(True)
            with self.norm_mode():
                loss = t * self.objective.potential(point, xb, yb, N) / N
            (g,) = torch.autograd.grad(loss, point, create_graph=True)
            (hv,) = torch.autograd.grad(g @ v, point)
            return hv.detach()

        return theta, gradient, hvp

    def begin_auto(self, k: int, generator: torch.Generator) -> None:
        """Run k's noise measurement, stability cap and burn-in (`_start_auto`) from its current iterate, drawn
        from its own generator; then fresh momentum at the new rates."""
        state = self.state
        theta, gradient, hvp = self.member_closures(state["theta"][k])
        state["noise"][k] = _start_auto(theta, self.data, generator, self.beta, gradient, self.temperature,
                                        self.every, AUTO_CAP * self.lr, hvp)
        with torch.no_grad():
            state["theta"][k].copy_(theta)
        state["fresh"][k] = True

    def save(self, state: Dict[str, Any]) -> Dict[str, Any]:
        out = {k: (v.detach().clone() if torch.is_tensor(v) else v) for k, v in state.items()
               if k not in ("noise", "lr", "fresh")}
        out["noise"] = [None if n is None else {k: (v.clone() if torch.is_tensor(v) else v)
                                                for k, v in n.state_dict().items()} for n in state["noise"]]
        out["lr"], out["fresh"] = [list(r) for r in state["lr"]], list(state["fresh"])
        return out

    def restore(self, saved: Dict[str, Any]) -> Dict[str, Any]:
        state = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in saved.items()}
        state["lr"], state["fresh"] = [list(r) for r in saved["lr"]], list(saved["fresh"])
        noises = []
        for k, s in enumerate(saved["noise"]):
            noise = None
            if s is not None:
                noise = GradientNoise(state["theta"][k])
                noise.load_state_dict(s)
            noises.append(noise)
        state["noise"] = noises
        self.state = state
        return state


class _Batches:
    """The fit's data as `pyro_bdl.infer.driver.drive` sees it for SWAG: reshuffled epochs (`FitData.epoch`) while
    exploring; with ``swa_lr="auto"``, from ``swa_start`` on, i.i.d. minibatches (`FitData.random_batches`), run k's
    burn-in (`SWAGRule.begin_auto`) drawn from its own generator just before its first such batch — the order of
    random draws of one SWAG run. Everything else is the `FitData`'s."""

    def __init__(self, data: FitData, rule: SWAGRule, runs: int):
        self._data, self._rule, self._runs, self._opened = data, rule, runs, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)

    @property
    def minibatched(self) -> bool:
        # Stacked runs never share a batch: each draws its own i.i.d. batches (and burn-in) once collecting.
        return self._data.minibatched or self._runs > 1

    def epoch(self, generator: Optional[torch.Generator] = None):
        k = self._opened % self._runs  # the driver opens the runs' epochs in run order
        self._opened += 1
        rule = self._rule
        epoch = rule.state["step"] // rule.per_epoch
        if rule.auto and epoch >= rule.swa_start:
            return self._iid(k, generator, epoch == rule.swa_start)
        return self._data.epoch(generator)

    def _iid(self, k: int, generator: torch.Generator, first: bool):
        if first:  # lazily, at the epoch's first batch: after every earlier draw of run k's generator
            self._rule.begin_auto(k, generator)
        yield from self._data.random_batches(self._data.num_batches, generator)


def train_runs(guides: Sequence[SWAG], data: FitData, seeds: Sequence[int], *, epochs: int, swa_start: int,
               lr: float, swa_lr: Any, momentum: float, progress: Optional[bool] = None,
               checkpoint: Optional[str] = None, fingerprint: Optional[Dict[str, Any]] = None, collect: bool = True,
               desc: str = "swag") -> Tuple[List[Dict[str, Any]], torch.Tensor, float]:
    """K SWAG runs stacked on the driver (`SWAGRule`), run k from guide k's ``loc`` with seed ``seeds[k]``; the
    results are written into the guides (iterate and moments). Returns each run's history (per-epoch ``loss`` and
    ``lr``, ``snapshot_every``, ``covariance_scale``, ``direction_scales``), the loss per step ``(K, steps)`` and
    the wall time."""
    objective = guides[0].objective
    model = objective.model
    N, K = data.dataset_size, len(guides)
    rule = SWAGRule(objective, data, epochs=epochs, swa_start=swa_start, lr=lr, swa_lr=swa_lr, momentum=momentum,
                    rank=guides[0].rank, collect=collect)
    every = rule.every
    if swa_lr == "auto" and collect and (epochs - swa_start) * data.num_batches < 10 * every:
        warnings.warn(f"SWAG will collect only {(epochs - swa_start) * data.num_batches // every} nearly independent "
                      f"snapshots ({(epochs - swa_start) * data.num_batches} steps past swa_start, one per {every}); "
                      "its covariance will be noisy and too small. Raise epochs or use minibatches (batch_size).",
                      RuntimeWarning, stacklevel=4)
    theta0 = torch.stack([g.loc_unconstrained.detach() for g in guides])
    x0, y0 = example_batch(data)
    with torch.no_grad():  # verifies the compiled density once, outside vmap
        objective.potential(theta0[0], x0, y0, N)
    # the loss is per data point: floor / N, one nat per point is 1/T
    checks = [DivergenceCheck(desc, lr, floor=loss_floor(model, x0, y0, N, "point") / N,
                              unit=likelihood_scale(model.temperature, model.tempering)) for _ in range(K)]
    result = driver.drive(rule, theta0, _Batches(data, rule, K), steps=epochs * data.num_batches, seeds=seeds,
                          desc=desc, progress=progress, checks=checks, lr_at=rule.lr_at, checkpoint=checkpoint,
                          fingerprint=fingerprint)
    state = rule.state = result.state
    if collect and state["count"] == 0:  # a run shorter than one snapshot interval: its final iterate
        SWAGRule.collect_snapshot(state)
    histories = []
    losses = result.loss.tolist()
    B = data.random_batch_size
    for k, guide in enumerate(guides):
        with torch.no_grad():
            guide.loc_unconstrained.copy_(state["theta"][k])
            guide.swa_mean.copy_(state["mean"][k])
            guide.swa_sq_dev.copy_(state["sq_dev"][k])
            guide.swa_deviations.copy_(state["deviations"][k])
            guide.swa_count.fill_(state["count"])
        per_epoch = []
        for e in range(epochs):  # the per-epoch mean, summed as the loop before the driver summed it
            total = 0.0
            for v in losses[k][e * data.num_batches:(e + 1) * data.num_batches]:
                total = total + v
            per_epoch.append(total / data.num_batches)
        noise = state["noise"][k]
        history: Dict[str, Any] = {"loss": per_epoch, "lr": state["lr"][k],
                                   "snapshot_every": every if swa_lr == "auto" else data.num_batches}
        history["covariance_scale"] = (1.0 if noise is None or swa_lr != "auto" else
                                       noise.covariance_scale(noise.rates(N, B, momentum, noise.cap), N, B, momentum))
        history["direction_scales"] = torch.ones(0)
        if noise is not None and swa_lr == "auto" and collect:
            history["direction_scales"] = _equipartition(rule, guide, data, seeds[k], history["covariance_scale"])
        histories.append(history)
    return histories, result.loss, result.wall_time


def _equipartition(rule: SWAGRule, guide: SWAG, data: FitData, seed: int, covariance_scale: float) -> torch.Tensor:
    """Step 4 of the auto rule (`equipartition_directions`) on one fitted run, ∇U on a fixed batch drawn with ``seed``."""
    N = data.dataset_size
    x, y = data._host_full()
    points = min(N, max(EQUIPARTITION_POINTS, 4 * data.random_batch_size))
    idx = torch.randperm(N, generator=torch.Generator().manual_seed(seed))[:points].to(y.device)
    xb, yb = data.to_device((take_rows(x, idx), y[idx]))

    def grad_u(point):
        point = point.detach().requires_grad_(True)
        with rule.norm_mode():
            (g,) = torch.autograd.grad(rule.objective.potential(point, xb, yb, N), point)
        return g

    return equipartition_directions(guide, guide.scale * covariance_scale, grad_u)


def train_swag(guide: SWAG, data: FitData, *, epochs: int, swa_start: int, lr: float, swa_lr: Any,
               momentum: float, seed: int, progress: Optional[bool] = None, checkpoint: Optional[str] = None,
               collect: bool = True, desc: str = "swag") -> Dict[str, Any]:
    """SGD with momentum on the per-data-point MAP objective, collecting SWAG snapshots (one run of `train_runs`).

    Args:
        guide: a set-up [`SWAG`][pyro_bdl.guides.SWAG] guide; its ``loc`` is the iterate.
        epochs, swa_start, lr, swa_lr, momentum: the schedule (see `swag_learning_rate`).
        seed: seeds the data order (and augmentation).
        checkpoint: the driver's state, saved after every epoch; if the file exists, the run resumes from it.
        collect: ``False`` runs plain SGD with the same schedule (the benchmark's baseline).

    Returns:
        ``{"loss": per-epoch mean loss, "lr": per-epoch learning rate, "wall_time", "snapshot_every",
        "covariance_scale", "direction_scales"}``.
    """
    theta = guide.loc_unconstrained
    fp = None if checkpoint is None else checkpoints.fingerprint(
        guide.objective.model, data, CHECKPOINT_KIND,
        dict(epochs=epochs, swa_start=swa_start, lr=lr, swa_lr=swa_lr, momentum=momentum, collect=collect,
             rank=guide.rank), seed, start=checkpoints.tensor_hash(theta.detach()), num_parameters=guide.num_parameters)
    (history,), loss, wall_time = train_runs([guide], data, [seed], epochs=epochs, swa_start=swa_start, lr=lr,
                                             swa_lr=swa_lr, momentum=momentum, progress=progress,
                                             checkpoint=checkpoint, fingerprint=fp, collect=collect, desc=desc)
    history["wall_time"], history["steps_loss"] = wall_time, loss
    return history


def _check_options(epochs, swa_start, lr, swa_lr, momentum) -> Tuple[int, Any]:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if swa_start is None:
        swa_start = (3 * epochs) // 4
    if isinstance(swa_start, bool) or not isinstance(swa_start, int) or not 0 <= swa_start < epochs:
        raise ValueError(f"swa_start must be an integer in [0, epochs) = [0, {epochs}) so that at least one "
                         f"snapshot is collected, got {swa_start!r}")
    for name, value in (("lr", lr), ("swa_lr", None if swa_lr == "auto" else swa_lr)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    return swa_start, ("auto" if swa_lr in (None, "auto") else float(swa_lr))


def _initial_values(model: BayesianModel, init: Any, seed: int) -> Dict[str, torch.Tensor]:
    if init is None or init == "net":
        return model.initial_values()
    if init == "fresh":
        return model.initial_values(seed=seed)
    if isinstance(init, dict):
        return model.as_values(init)
    raise ValueError(f"unknown init {init!r}; use 'net' (the network's weights), 'fresh' (a seeded default "
                     "initialisation) or a dict of initial values")


_check_checkpoint = checkpoints.check_path


def _guide(model: BayesianModel, data: FitData, options: Dict[str, Any], values: Dict[str, torch.Tensor],
           scale: float) -> SWAG:
    """A set-up SWAG guide starting at ``values`` (its ``loc`` is a run's θ₀)."""
    guide = SWAG(model, rank=options["rank"], scale=scale, variant=options["variant"], var_clamp=options["var_clamp"],
                 init_loc_fn=init_to_value(values=values))
    x0, y0 = next(iter(data.epoch()))
    with pyro.settings.context(module_local_params=True):
        guide.setup(x0, y0, data.dataset_size)
    return guide


def _run_group(model: BayesianModel, data: FitData, members: Sequence[int], seeds: Sequence[int],
               inits: Sequence[Dict[str, torch.Tensor]], progress: Optional[bool], options: Dict[str, Any],
               checkpoint: Optional[str], fingerprint_seed: int, desc: str) -> List[Tuple[SWAG, Dict[str, Any]]]:
    """SWAG runs ``members`` (seeds ``seeds``, starting values ``inits``) stacked on the driver: each run's guide
    (moments, final iterate, ``scale`` with its Lyapunov factor) and its records."""
    guides = [_guide(model, data, options, v, options["scale"] * model.temperature) for v in inits]
    theta0 = torch.stack([g.loc_unconstrained.detach() for g in guides])
    run_options = {k: options[k] for k in ("epochs", "swa_start", "lr", "swa_lr", "momentum", "rank")}
    fp = None if checkpoint is None else checkpoints.fingerprint(
        model, data, CHECKPOINT_KIND, dict(run_options, collect=True), fingerprint_seed, members=list(members),
        seeds=list(seeds), start=checkpoints.tensor_hash(theta0), num_parameters=guides[0].num_parameters)
    histories, loss, wall_time = train_runs(
        guides, data, seeds, epochs=options["epochs"], swa_start=options["swa_start"], lr=options["lr"],
        swa_lr=options["swa_lr"], momentum=options["momentum"], progress=progress, checkpoint=checkpoint,
        fingerprint=fp, desc=desc)
    out = []
    for k, (guide, history) in enumerate(zip(guides, histories)):
        guide.scale = guide.scale * history["covariance_scale"]  # Lyapunov rescaling (GradientNoise.covariance_scale)
        # The driver's info schema (pyro_bdl.infer.driver.info): loss (1, steps), options, wall_time (stacked runs:
        # an equal share of their group's); "losses" (per-epoch means, a list) is kept for one release.
        info = driver.info(loss[k:k + 1], options, wall_time / len(guides), losses=history["loss"], lr=history["lr"],
                           num_snapshots=guide.num_snapshots, snapshot_every=history["snapshot_every"],
                           covariance_scale=history["covariance_scale"], direction_scales=history["direction_scales"],
                           num_parameters=guide.num_parameters, seed=seeds[k])
        out.append((guide, info))
    return out


def _member_group(model: BayesianModel, data: FitData, members: Sequence[int], seeds: Sequence[int],
                  progress: Optional[bool], options: Dict[str, Any], checkpoint: Optional[str], seed: int,
                  desc: str) -> List[Tuple[Dict[str, torch.Tensor], Dict[str, Any]]]:
    # May run in a worker process: returns plain state, rebuilt on the caller's model.
    inits = [_initial_values(model, "fresh", s) for s in seeds]
    return [(guide.state_dict(), info) for guide, info in
            _run_group(model, data, members, seeds, inits, progress, options, checkpoint, seed, desc)]


def _posterior(model: BayesianModel, data: FitData, guide: SWAG, method: str, info: Dict[str, Any]) -> SWAGPosterior:
    bn_inputs = bn_batch = None
    if batchnorm.has_batchnorm(model.net):
        bn_inputs = data.full()[0]
        bn_batch = data.loader.batch_size if data.minibatched else None
    return SWAGPosterior(model, guide, method, bn_inputs=bn_inputs, bn_batch_size=bn_batch, info=info)


@register("swag")
def fit_swag(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool], epochs: int = 60,
             swa_start: Optional[int] = None, lr: float = 0.05, swa_lr: Any = "auto", momentum: float = 0.9,
             rank: int = 20, scale: float = 0.5, variant: str = "swag", var_clamp: float = 1e-30, init: Any = "net",
             checkpoint: Optional[str] = None) -> SWAGPosterior:
    """SWA-Gaussian (Maddox et al. 2019): SGD on the MAP objective, then a Gaussian fitted to its iterates.

    Args:
        epochs: passes over the data.
        swa_start: epochs before collection starts (default 3/4 of ``epochs``); one snapshot is
            collected after every later epoch, so ``epochs − swa_start`` snapshots in all.
        lr: exploration learning rate on the per-data-point objective T·L (module docs).
        swa_lr: ``"auto"`` (default; posterior-matching rates, module docs) or a constant
            collection rate (the paper's schedule, `swag_learning_rate`).
        momentum: SGD momentum.
        rank: K, deviation columns kept; scale: covariance scale of the draws (0.5).
        variant: ``"swag"``, ``"diagonal"`` (SWAG-Diag) or ``"swa"`` (the mean only).
        var_clamp: floor on the diagonal variance.
        init: ``"net"`` (the network's weights), ``"fresh"`` (seeded default init) or a dict of values.
        checkpoint: the driver's state, saved after every epoch; an interrupted run resumes from it.

    ``info``: the driver's ``loss`` ``(1, steps)`` (per step), ``options``, ``wall_time``; ``losses`` (per-epoch
    means), ``lr`` (per epoch), ``num_snapshots``, ``snapshot_every``, ``covariance_scale``, ``direction_scales``.
    """
    swa_start, swa_lr = _check_options(epochs, swa_start, lr, swa_lr, momentum)
    SWAG(model, rank=rank, scale=scale, variant=variant, var_clamp=var_clamp)  # validates before any work
    options = dict(epochs=epochs, swa_start=swa_start, lr=float(lr), swa_lr=swa_lr, momentum=float(momentum),
                   rank=rank, scale=scale, variant=variant, var_clamp=var_clamp)
    init_values = _initial_values(model, init, seed)
    ((guide, info),) = _run_group(model, data, [0], [seed], [init_values], progress, options,
                                  _check_checkpoint(checkpoint), seed, "swag")
    info.update({k: options[k] for k in ("epochs", "swa_start", "swa_lr", "rank")})
    return _posterior(model, data, guide, "swag", info)


def _stack_size(stack: Union[str, bool, int], num_models: int, model: BayesianModel, data: FitData,
                rank: int) -> int:
    """Members stepped together (`pyro_bdl.infer.ensemble.stack_size`); ``"auto"`` also counts each member's SWAG
    moments (mean, squared deviations, ``rank`` deviation rows, momentum: (rank + 3)·P more values)."""
    objective = Objective(model, data.example_x(2))
    size = stack_size(stack, num_models, model, data, objective)
    if stack == "auto":
        theta = objective.initial()
        extra = (rank + 3) * objective.size * theta.element_size()
        per_member = member_bytes(model, data, objective.size) + extra
        size = int(max(1, min(size, free_memory(theta.device) * MEMORY_SHARE // per_member)))
    return size


@register("multiswag")
def fit_multiswag(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool], num_models: int = 5,
                  workers: int = 1, epochs: int = 60, swa_start: Optional[int] = None, lr: float = 0.05,
                  swa_lr: Any = "auto", momentum: float = 0.9, rank: int = 20, scale: float = 0.5,
                  variant: str = "swag", var_clamp: float = 1e-30, stack: Union[str, bool, int] = "auto",
                  checkpoint: Optional[str] = None) -> MixturePosterior:
    """Multi-SWAG (Wilson & Izmailov 2020): an equal-weight mixture of ``num_models`` SWAG posteriors.

    Member m starts from a fresh default initialisation and data order, both seeded with
    ``spawn_seeds(seed, num_models)[m]``, so the members settle in different basins. Members are stepped
    together (``torch.func.vmap``, `SWAGRule`), each with its own data order, augmentation, auto rates, stability
    cap, burn-in and instability guard, so a stacked member equals the member fitted alone with its seed (to float
    rounding). ``stack``: ``"auto"`` (as many as a quarter of the free memory holds), ``True``, ``False`` (one at a
    time) or a number; ``workers`` > 1 runs groups of members in parallel processes. With ``checkpoint="run.pt"``
    the group whose first member is m checkpoints to ``run.member<m>.pt`` (one file per member with
    ``stack=False``); finished groups are read back, not retrained. Other options as for `fit_swag`.
    ``predict(x, num_samples=S)`` splits the S draws evenly over the members; ``draws_by_chain`` gives one chain
    per member.
    """
    check_int(num_models, "num_models", 1)
    check_int(workers, "workers", 1)
    swa_start, swa_lr = _check_options(epochs, swa_start, lr, swa_lr, momentum)
    SWAG(model, rank=rank, scale=scale, variant=variant, var_clamp=var_clamp)
    checkpoint = _check_checkpoint(checkpoint)
    options = dict(epochs=epochs, swa_start=swa_start, lr=float(lr), swa_lr=swa_lr, momentum=float(momentum),
                   rank=rank, scale=scale, variant=variant, var_clamp=var_clamp)
    size = _stack_size(stack, num_models, model, data, rank)
    if workers > 1:  # spread the members over the processes
        size = min(size, math.ceil(num_models / workers))
    groups = [list(range(i, min(i + size, num_models))) for i in range(0, num_models, size)]
    root, ext = os.path.splitext(checkpoint) if checkpoint is not None else (None, None)
    seeds = spawn_seeds(seed, num_models)
    args = [(model, data, g, [seeds[m] for m in g], progress if workers == 1 else False, options,
             None if checkpoint is None else f"{root}.member{g[0]}{ext}", seed,
             f"swag {g[0] + 1}/{num_models}" if len(g) == 1 else f"swag {g[0] + 1}-{g[-1] + 1}/{num_models}")
            for g in groups]
    results = [r for group in run_members(_member_group, args, workers) for r in group]
    x0, y0 = next(iter(data.epoch()))
    members = []
    for state, info in results:
        guide = SWAG(model, rank=rank, scale=scale * model.temperature * info["covariance_scale"], variant=variant,
                     var_clamp=var_clamp, init_loc_fn=init_to_value(values=model.initial_values()))
        with pyro.settings.context(module_local_params=True):
            guide.setup(x0, y0, data.dataset_size)
        guide.load_state_dict(state)
        members.append(_posterior(model, data, guide, "swag", info))
    infos = [m.info for m in members]
    return MixturePosterior(members, "multiswag", info={
        "loss": torch.cat([i["loss"] for i in infos]),
        "options": dict(options, num_models=num_models, workers=workers, stack=stack),
        "wall_time": sum(i["wall_time"] for i in infos),  # summed over groups (CPU time when run in parallel)
        "num_models": num_models, "members": infos, "epochs": epochs, "swa_start": swa_start, "swa_lr": swa_lr,
        "rank": rank, "stack": size, "member_seeds": seeds})
