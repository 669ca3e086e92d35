"""Is an SVI guide at the ELBO's stationary point? (issue 13, notes/issue-13-sweep.md, notes/issue-13-lead9.md)

The full-data tempered potential of a guide's flat latent vector (`full_data_potential`, shared with the finish,
`pyro_bdl.infer.svi.finish`), the Newton offset of the guide's mean (`stationarity_offsets`), and the reading of both
the mean and the variances with their Monte-Carlo noise (`stationarity_check`), warned about by
`warn_if_not_stationary`. The full-data gradient is `pyro_bdl.infer.stationarity.full_gradient` (one definition,
shared with MAP)."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, Tuple

import torch
from scipy.stats import t as student_t

from ...model.bayesian_model import BayesianModel
from ...model.potential import Objective
from ..data import FitData
from ..stationarity import POINT_TOLERANCE, STATIONARITY_TOLERANCE, StationarityWarning, full_gradient
from .gaussian import gaussian_view


#: the fewest antithetic pairs of guide draws the check after a fit draws (`pair_budget`)
STATIONARITY_PAIRS = 4
#: the most pairs for a non-Gaussian target (a network), within the fit's own cost (`pair_budget`)
MAX_PAIRS = 32
#: pair offsets that agree to this many guide sds (relative to 1 + the largest offset) are exact
EXACT_SPREAD = 1e-3
#: the error rate of each verdict: the worst coordinate's bound is simultaneous over the P coordinates (Bonferroni),
#: the pooled ones are two-sided Student-t intervals over the pairs
ALPHA = 0.05
#: the guide's variances more than this factor from the ELBO's optimum (the mean of diag(E_q[∇²U]Σ_q) outside
#: [1/2, 2]) warn: the issue-13 bar on a variance is [0.75, 1.33], and the check is a one-step estimate
VARIANCE_TOLERANCE = 2.0


@dataclass(frozen=True)
class StationarityCheck:
    """`stationarity_check`'s reading from ``pairs`` pairs of guide draws (``exact`` where the mean's are).

    The mean, in guide sds per coordinate (the guide's latent order): the Newton offsets ``offsets`` z̄ with their
    ``standard_errors`` (0 where exact); the ``worst`` coordinate and its simultaneous (1 − ALPHA) lower bound
    ``worst_bound``; the unbiased estimate ``mean_square`` of the mean squared offset over coordinates and its jackknife
    standard error ``mean_square_se``. The variances: ``variance_ratio``, the mean over coordinates of
    diag(E_q[∇²U]Σ_q) (1 at the optimum of every built-in family), and its standard error ``variance_ratio_se``."""
    offsets: torch.Tensor
    standard_errors: torch.Tensor
    pairs: int
    exact: bool
    worst: int
    worst_bound: float
    mean_square: float
    mean_square_se: float
    variance_ratio: float
    variance_ratio_se: float

    @property
    def rms(self) -> float:
        """The RMS offset per coordinate, √max(mean_square, 0) (the units of MAP's λ/√P)."""
        return math.sqrt(max(self.mean_square, 0.0))

    @property
    def t_quantile(self) -> float:
        """The two-sided (1 − ALPHA) Student-t quantile of the pooled verdicts."""
        return float(student_t.ppf(1 - ALPHA / 2, self.pairs - 1))

    @property
    def mean_off(self) -> bool:
        """Is the mean outside its tolerances beyond the draws' noise? The worst coordinate's lower bound above
        ``STATIONARITY_TOLERANCE``, or the mean square's interval above ``POINT_TOLERANCE``²."""
        return (self.worst_bound > STATIONARITY_TOLERANCE
                or self.mean_square - self.t_quantile * self.mean_square_se > POINT_TOLERANCE ** 2)

    @property
    def variance_off(self) -> bool:
        """Are the variances more than ``VARIANCE_TOLERANCE`` from their optimum beyond the draws' noise?"""
        noise = self.t_quantile * self.variance_ratio_se
        return (self.variance_ratio + noise < 1 / VARIANCE_TOLERANCE
                or self.variance_ratio - noise > VARIANCE_TOLERANCE)


def full_data_potential(model: BayesianModel, data: FitData, names, sizes, shapes, objective: Optional[Objective]):
    """U_b(θ) of one chunk, θ flat in the guide's latent order (``names``), for `stationarity.full_gradient`.

    The compiled potential (`Objective.potential`: no Pyro trace) where the model compiles and its latent sites are
    the guide's; the traced ``−model.log_joint`` otherwise. Both are −log p̃(D_b, w; N) (the guide's sites are all
    real, so θ = w and there is no Jacobian); they agree to rounding (`Objective` checks it on its first call)."""
    N = data.dataset_size
    if objective is not None and objective.compiled and set(objective.layout.names) == set(names):
        def compiled(theta, x, y):
            values = {n: t.reshape(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}
            return objective.potential(objective.layout.flatten(values), x, y, N)
        return compiled

    def traced(theta, x, y):
        values = {n: t.reshape(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}
        return -model.log_joint(values, x, y, dataset_size=N)
    return traced


def _pair(q, loss, data: FitData, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """One antithetic pair μ ± e, e = Lε ~ N(0, Σ_q): the mean's Newton offsets Σ_q·½(∇U(μ + e) + ∇U(μ − e))/√diag Σ_q
    and the variances' Stein terms e ⊙ ½(∇U(μ + e) − ∇U(μ − e)), both per coordinate."""
    e = q.root(torch.randn(q.eps_dim, generator=generator, dtype=q.mu.dtype).to(q.device))
    plus, minus = (full_gradient(loss, (q.mu + sign * e).to(q.dtype), data)[1].to(q.mu.dtype) for sign in (1.0, -1.0))
    return (q.cov_mv((plus + minus) / 2) / q.sd).detach(), (e * (plus - minus) / 2).detach()


def _draw_pairs(guide, model: BayesianModel, data: FitData, seed: int, objective: Optional[Objective]):
    """``(q, pairs)``: the guide as a flat Gaussian and an endless iterator of its `_pair` readings; None where the
    check is not defined."""
    if data.augment is not None:
        return None
    q = gaussian_view(guide)
    if q is None:
        return None
    generator = torch.Generator().manual_seed(seed + 2)
    loss = full_data_potential(model, data, q.names, q.sizes, q.shapes, objective)

    def pairs() -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield _pair(q, loss, data, generator)
    return q, pairs()


def stationarity_offsets(guide, model: BayesianModel, data: FitData, seed: int,
                         pairs: int = STATIONARITY_PAIRS, objective: Optional[Objective] = None) -> Optional[torch.Tensor]:
    """The guide mean's offset from the ELBO's stationary point, per coordinate, in the guide's sds (flat, the
    guide's latent order), from ``pairs`` antithetic pairs; None where it is not defined (a user guide, constrained
    sites, augmented data).

    At the optimum of the ELBO over the mean μ of a Gaussian guide q = N(μ, Σ_q), ∇_μ ELBO = −E_q[∇U] = 0, with U
    = −log p̃(D, w) the full-data tempered potential (Opper & Archambeau 2009). A Newton step from μ estimates the
    offset δ̂ = Σ_q·E_q[∇U], reported as z_k = δ̂_k/√(Σ_q)_kk. For a Gaussian posterior N(m, Λ⁻¹), E_q[∇U] = Λ(μ − m)
    exactly, so with the full-rank optimum Σ_q = Λ⁻¹ this is (μ − m)/sd, the mean error the issue-13 checks measure;
    with a mean-field Σ_q = diag(1/Λ_kk) it is the error along each coordinate with the others held (smaller where
    the posterior is correlated). E_q[∇U] is estimated from antithetic draws μ ± e (e ~ N(0, Σ_q)): a pair's average
    is unbiased for any U and exact for a quadratic one. Cost: 2·``pairs`` full passes over the data.
    The gradient is the full data's (`pyro_bdl.infer.stationarity.full_gradient`: Σ_b (B_b/N)·∇U_b counts the prior
    once and the likelihood exactly), on the compiled potential of ``objective`` where the model compiles (no Pyro
    trace per chunk) and on the traced log joint otherwise (`full_data_potential`). The Newton step measures in Σ_q,
    so it is only as good as the variances: `stationarity_check` checks those too, and reads both with their noise.
    """
    drawn = _draw_pairs(guide, model, data, seed, objective)
    if drawn is None:
        return None
    q, draws = drawn
    return torch.stack([next(draws)[0] for _ in range(pairs)]).mean(0).to(q.dtype)


def pair_budget(data: FitData, steps: int) -> int:
    """The pairs the check draws after a fit of ``steps`` minibatch steps: as many as cost no more rows than the fit
    did (a pair is 2 passes of N rows), between ``STATIONARITY_PAIRS`` and ``MAX_PAIRS``."""
    fit_rows = steps * data.random_batch_size
    return max(STATIONARITY_PAIRS, min(MAX_PAIRS, fit_rows // (2 * data.dataset_size)))


def _summarise(Z: torch.Tensor, R: torch.Tensor) -> StationarityCheck:
    """`StationarityCheck` of the (J, P) pair offsets Z and Stein terms R; exact where the offsets agree to
    ``EXACT_SPREAD``."""
    Z, R = Z.double(), R.double()
    J, P = Z.shape
    zbar = Z.mean(0)
    exact = float((Z - zbar).abs().max()) <= EXACT_SPREAD * (1 + float(zbar.abs().max()))
    if exact:
        se, c = torch.zeros_like(zbar), 0.0
        mean_square, mean_square_se = float(zbar.pow(2).mean()), 0.0
    else:
        se = Z.std(0) / math.sqrt(J)
        c = float(student_t.ppf(1 - ALPHA / (2 * P), J - 1))
        total, squares = Z.sum(0), Z.pow(2).sum(1)
        cross = float(total.pow(2).sum() - squares.sum())  # Σ_{i≠j} ⟨z_i, z_j⟩
        mean_square = cross / (J * (J - 1) * P)
        if J >= 3:
            leave_one_out = (cross - 2 * (Z @ total) + 2 * squares) / ((J - 1) * (J - 2) * P)
            mean_square_se = float(((J - 1) / J * (leave_one_out - leave_one_out.mean()).pow(2).sum()).sqrt())
        else:
            mean_square_se = math.inf  # no pair left out leaves a cross term
    margin = zbar.abs() - c * se
    worst = int(margin.argmax())
    per_pair = R.mean(1)  # each pair's mean of the Stein terms over coordinates: independent across pairs
    return StationarityCheck(offsets=zbar, standard_errors=se, pairs=J, exact=exact, worst=worst,
                             worst_bound=max(0.0, float(margin[worst])), mean_square=mean_square,
                             mean_square_se=mean_square_se, variance_ratio=float(per_pair.mean()),
                             variance_ratio_se=float(per_pair.std() / math.sqrt(J)))


def stationarity_check(guide, model: BayesianModel, data: FitData, seed: int, max_pairs: int = MAX_PAIRS,
                       objective: Optional[Objective] = None) -> Optional[StationarityCheck]:
    """Is the guide at the ELBO's optimum, mean and variances, as far as ``max_pairs`` antithetic pairs of guide
    draws can tell? None where it is not defined (as `stationarity_offsets`).

    **The mean** (`stationarity_offsets`). The pairs' offsets agree to rounding when U is quadratic over the guide's
    width (a Gaussian posterior): then they are exact (``exact``: no noise, the raw worst coordinate). Otherwise (a
    network) one pair's z_k has a noise sd of ≈ 0.5–3 guide sds per coordinate, heavy-tailed, so the largest of P raw
    offsets is mostly noise (2 pairs read 4.5–17 guide sds on a 2410-parameter MLP whose 512-pair offsets peak at
    1.2; notes/issue-13-lead9.md), and the check reads the pairs z_1 … z_J as

    * the worst coordinate by its simultaneous lower bound |z̄_k| − t·se_k, se_k the pairs' standard error and t the
      Student-t quantile with J − 1 degrees of freedom at 1 − ALPHA/(2P) (Bonferroni over the coordinates): a
      coordinate is reported off only as far as the noise allows;
    * the mean squared offset over coordinates by the U-statistic Σ_{i≠j}⟨z_i, z_j⟩/(J(J−1)P) (Hoeffding 1948),
      unbiased because distinct pairs are independent (the noise's own square cancels), with a jackknife standard
      error over pairs (Efron & Stein 1981). Pooled over coordinates it resolves an offset spread over many weights
      that no single coordinate shows.

    **The variances.** At the ELBO's optimum over the scales, ∂/∂s_k [E_q U − ½ log det Σ_q] = 0 gives
    (E_q[∇²U]Σ_q)_kk = 1 for each coordinate k of every built-in family: the mean-field σ_k² = 1/E_q[∂²_kk U], the
    full-rank Σ_q = E_q[∇²U]⁻¹ and the low-rank S(FFᵀ + I)S (its diagonal S). By Stein's lemma
    (E_q[∇U(μ + Lε)εᵀ] = E_q[∇²U]L), (E_q[∇²U]Σ_q)_kk = E_q[e_k·∂_kU(μ + e)], estimated by each pair's
    e ⊙ ½(∇U(μ + e) − ∇U(μ − e)) with no Hessian. Its mean over coordinates (per pair, so its standard error is
    the pairs' spread) below 1/``VARIANCE_TOLERANCE`` says the guide is narrower than its optimum — over-confident,
    and a Newton step measured in Σ_q then understates the mean's offset too; above ``VARIANCE_TOLERANCE``, wider.
    Both verdicts use two-sided Student-t intervals with J − 1 degrees of freedom.
    """
    drawn = _draw_pairs(guide, model, data, seed, objective)
    if drawn is None:
        return None
    _, draws = drawn
    pairs = [next(draws) for _ in range(max(2, max_pairs))]
    return _summarise(torch.stack([z for z, _ in pairs]), torch.stack([r for _, r in pairs]))


def stationarity_info(check: Optional[StationarityCheck]) -> Dict[str, Optional[float]]:
    """The run's ``info`` entries: ``stationarity_offset`` (the worst coordinate's bound, exact for a Gaussian
    posterior), ``stationarity_rms`` (the RMS offset) and ``variance_ratio`` (the mean of diag(E_q[∇²U]Σ_q), 1 at
    the optimum); None where the check is not defined."""
    if check is None:
        return {"stationarity_offset": None, "stationarity_rms": None, "variance_ratio": None}
    return {"stationarity_offset": check.worst_bound, "stationarity_rms": check.rms,
            "variance_ratio": check.variance_ratio}


def fit_check(guide, model: BayesianModel, data: FitData, seed: int, steps: int,
              objective: Optional[Objective] = None) -> Optional[StationarityCheck]:
    """`stationarity_check` with the fit's `pair_budget` (``steps``: the fit's length); None where it is not defined
    or not finite."""
    check = stationarity_check(guide, model, data, seed, pair_budget(data, steps), objective)
    if check is None or not (bool(torch.isfinite(check.offsets).all()) and math.isfinite(check.variance_ratio)):
        return None
    return check


def warn_if_not_stationary(guide, model: BayesianModel, data: FitData, seed: int, steps: int,
                           objective: Optional[Objective] = None) -> Optional[StationarityCheck]:
    """Run `fit_check` and warn (`StationarityWarning`) when it says the guide is off (`warn_stationarity`); returns
    the check (None where it is not defined or not finite)."""
    check = fit_check(guide, model, data, seed, steps, objective)
    warn_stationarity(check, steps, stacklevel=5)
    return check


def warn_stationarity(check: Optional[StationarityCheck], steps: int, stacklevel: int = 4) -> None:
    """A `StationarityWarning` when ``check`` says the guide's mean (`StationarityCheck.mean_off`) or variances
    (`StationarityCheck.variance_off`) are off, naming which and by how much."""
    if check is None:
        return
    found = []
    if check.mean_off:
        at_least, noise = (("", "") if check.exact else
                           ("at least ", f", beyond the noise of {check.pairs} pairs of draws"))
        found.append(f"its mean: a Newton step from it moves coordinate {check.worst} by {at_least}"
                     f"{check.worst_bound:.3g} guide sds and the {check.offsets.numel()} coordinates by "
                     f"{check.rms:.3g} RMS{noise} (the mean error is about that much for a near-Gaussian posterior)")
    if check.variance_off:
        side = "narrower (over-confident)" if check.variance_ratio < 1 else "wider"
        found.append(f"its variances, {side} than the optimum: diag(E_q[∇²U]Σ_q) averages "
                     f"{check.variance_ratio:.3g} ± {check.t_quantile * check.variance_ratio_se:.2g} over "
                     f"{check.pairs} pairs of draws, where the optimum has 1")
    if found:
        warnings.warn(f"svi: the guide is not at the ELBO's optimum after {steps} steps, in " + "; and in ".join(found)
                      + ". Run more steps (steps=...), or raise lr; see info['stationarity_offset'], "
                      "info['stationarity_rms'] and info['variance_ratio'].", StationarityWarning,
                      stacklevel=stacklevel)
