"""Whether SG-MCMC draws have mixed along the posterior's slow directions: split R-hat on principal directions.

The temperature diagnostics (`pyro_bdl.evaluate.diagnostics.sampler`) check that the chain's *step* is right: the
configurational temperature ⟨θ·∇U⟩/P is a per-coordinate average, dominated by the stiff directions, which mix in a
few steps. A diagonal preconditioner (G_i = lr·T/E[ĝ_i²]) cannot undo a rotated condition number: in the metric
φ = θ/√G the dynamics are isotropic with curvature G^½ H G^½, whose largest eigenvalue is ≈ lr and whose smallest is
≈ lr/κ_eff, so the softest mode relaxes in ≈ κ_eff/lr steps. When that is not short against the sampling stage, the
temperatures read T (the stiff modes are right) while the draws are too narrow along the soft mode. Measured on a
rotated Bayesian linear regression with κ(XᵀX) = 10³ (`benchmarks/bench_blr_sweep.py` configs 0 and 2): variance
ratios 0.86–0.90, worst coordinate 0.35–0.6, the mean 0.2–0.6 sd off, no temperature warning.

The softest modes are the directions of largest variance of φ, so the check projects the draws (pooled over chains,
in the preconditioner's metric) on their leading principal directions and computes the rank-normalised split R-hat
of Vehtari et al. (2021) on each: every chain cut into two halves, the halves of all chains compared (so with
several chains it compares chains too). A chain that has not relaxed along a direction differs between its halves.
The principal directions are only estimable when the draws outnumber the coordinates: with P ≫ D the sample
principal directions of an autocorrelated trajectory are its lowest Fourier modes, whatever the posterior
(Antognini & Sohl-Dickstein 2018, "PCA of high dimensional random walks with comparison to neural network
training"), and split R-hat on them reads large for any chain. The check therefore runs only when the draws number
at least ``MIN_DRAWS_PER_COORDINATE`` × P (small models: GLMs, BLR, a few dozen parameters); for networks, use the
function-space R-hat of `pyro_bdl.diagnostics.summary` after the fit.
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import torch

from ...evaluate.diagnostics.convergence import _rhat_subchains, _z_scale
from ...evaluate.diagnostics.sampler import SamplerWarning

#: split R-hat above this on a principal direction warns. 1.01 is the strict bar of Vehtari et al. (2021) for final
#: inference on ≥ 4 chains; a default SG-MCMC run has 1–4 chains of ~150 draws, where the statistic's own sd is a
#: few 0.01 (the split halves' means differ by ~√(2/ESS) sd), so the warning uses the classic 1.1 (Gelman et al.
#: 2013, BDA3 §11.4) and catches a chain that has not relaxed along the direction.
RHAT_THRESHOLD = 1.1
#: the check needs at least this many draws (all chains) per coordinate to estimate principal directions
MIN_DRAWS_PER_COORDINATE = 4
#: and at least this many draws per split half
MIN_DRAWS_PER_HALF = 10


def principal_split_rhat(draws: torch.Tensor, scale: Optional[torch.Tensor] = None) -> Optional[np.ndarray]:
    """Rank-normalised split R-hat (bulk and tail, the larger) of ``draws`` ``(chains, D, P)`` projected on the P
    principal directions of the pooled draws, largest variance first, after dividing coordinate i by
    ``scale[i]`` (the preconditioner's √G_i; default 1). ``None`` when there are too few draws to estimate the
    directions (fewer than ``MIN_DRAWS_PER_COORDINATE`` × P in all, or ``MIN_DRAWS_PER_HALF`` per chain half)."""
    C, D, P = draws.shape
    half = D // 2
    if half < MIN_DRAWS_PER_HALF or C * D < MIN_DRAWS_PER_COORDINATE * P:
        return None
    phi = draws.detach().to("cpu", torch.float64)
    if scale is not None:
        phi = phi / scale.detach().to("cpu", torch.float64)
    flat = phi.reshape(C * D, P)
    centred = flat - flat.mean(0)
    if not torch.isfinite(centred).all():
        return None
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # rows: principal directions, largest first
    proj = (phi @ vh.T).numpy()  # (C, D, P)
    kept = proj[:, D - 2 * half:]  # leading left-over draw dropped, as `within_chain_rhat`
    halves = np.moveaxis(kept.reshape(C, 2, half, P), -1, 0).reshape(P, 2 * C * half)  # (P, all draws)
    bulk = _z_scale(halves, axis=-1).reshape(P, 2 * C, half)
    folded = np.abs(halves - np.median(halves, axis=-1, keepdims=True))
    tail = _z_scale(folded, axis=-1).reshape(P, 2 * C, half)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.maximum(_rhat_subchains(bulk), _rhat_subchains(tail))
    return np.where(np.ptp(halves, axis=-1) > 0, out, np.nan)


def warn_if_not_mixed(rhat: Optional[np.ndarray], method: str, num_chains: int, epochs: int,
                      threshold: float = RHAT_THRESHOLD) -> None:
    """A [`SamplerWarning`][pyro_bdl.evaluate.diagnostics.SamplerWarning] when a principal direction's split R-hat
    exceeds ``threshold``, naming the fix."""
    if rhat is None or not np.isfinite(rhat).any():
        return
    worst = int(np.nanargmax(rhat))
    if rhat[worst] <= threshold:
        return
    bad = int((rhat > threshold).sum())
    more = "" if num_chains >= 4 else f", or more chains (num_chains={num_chains}; 4 compare the halves better)"
    warnings.warn(
        f"{method}: the draws have not mixed along {bad} of the posterior's {len(rhat)} principal directions (split "
        f"R-hat {rhat[worst]:.3g} > {threshold:g} on the {_ordinal(worst + 1)} largest, in the preconditioner's "
        "metric): the chains' halves disagree, so their spread and mean along it are off although the temperatures "
        "may read T (they are dominated by the stiff directions). This happens on correlated, ill-conditioned "
        "posteriors, which a diagonal preconditioner cannot whiten, and when the sampling stage is short. Run more "
        f"epochs (epochs={epochs}: several times more){more}; "
        "info['split_rhat'] holds the values.",
        SamplerWarning, stacklevel=4)


def _ordinal(k: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(k, f"{k}th")
