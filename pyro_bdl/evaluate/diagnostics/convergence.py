"""Convergence diagnostics in function space.

Neural-network weights are not identifiable: permuting hidden units (or flipping the signs
around an odd activation) leaves the function unchanged, so chains that agree on every
prediction can disagree on every weight. R-hat and ESS are therefore computed on predictions
E[y | x, w] at chosen inputs by default; weight diagnostics are available for information.

* R-hat: rank-normalised split R-hat, the larger of the bulk and the folded (tail) version,
  and bulk / tail ESS and the MCSE of the mean (Vehtari, Gelman, Simpson, Carpenter & Bürkner
  2021, "Rank-normalization, folding, and localization: an improved R-hat for assessing
  convergence of MCMC", Bayesian Analysis 16(2)) — computed by ArviZ.
* Within-chain split R-hat (Sommer, Wimmer, Papamarkou, Bothmann, Bischl & Rügamer 2024,
  "Connecting the dots: is mode-connectedness the key to feasible sample-based inference in
  Bayesian neural networks?", ICML): the same statistic computed on each chain alone, split
  into sub-chains. Multimodal BNN posteriors make the between-chain R-hat large even when every
  chain samples its own mode well; a within-chain R-hat near 1 says exactly that ("chains in
  different modes"), a large one that a chain is not stationary ("chains not mixing").
"""
from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ...model.inputs import Inputs, check_inputs
from ...posterior.arviz import PREDICTION, arviz
from ...posterior.base import Posterior
from ..._util.checks import check_int, check_seed
from . import sampler


class ConvergenceWarning(UserWarning):
    """Function-space R-hat or ESS fail their thresholds at some inputs."""


# -- the statistics -------------------------------------------------------------------------
def _z_scale(values: np.ndarray, axis: int) -> np.ndarray:
    """Rank normalisation: z = Φ⁻¹((r − 3/8) / (S + 1/4)) with average ranks r over ``axis``
    (Vehtari et al. 2021, eq. 14)."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    n = values.shape[axis]
    return ndtri((rankdata(values, axis=axis) - 0.375) / (n + 0.25))


def _rhat_subchains(z: np.ndarray) -> np.ndarray:
    """Classic R-hat over sub-chains on axis −2 (draws on axis −1):
    R̂ = √(((n − 1)/n · W + B/n) / W), W the mean within-sub-chain variance, B/n the variance of
    the sub-chain means (Gelman et al. 2013, BDA3 §11.4)."""
    n = z.shape[-1]
    within = z.var(axis=-1, ddof=1).mean(axis=-1)
    between_over_n = z.mean(axis=-1).var(axis=-1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(((n - 1) / n * within + between_over_n) / within)


def within_chain_rhat(draws: np.ndarray, num_splits: int = 2) -> np.ndarray:
    """Within-chain split R-hat (Sommer et al. 2024), one value per chain.

    Each chain is cut into ``num_splits`` consecutive sub-chains of ⌊D / num_splits⌋ draws
    (leading left-over draws are dropped) and the rank-normalised R-hat of Vehtari et al. (2021)
    is computed across those sub-chains only: the larger of the bulk R-hat of the rank-normalised
    draws and the tail R-hat of the rank-normalised |draw − median|. Only the chain's own draws
    enter, so a chain that is stationary in its mode scores ≈ 1 even when other chains sit
    elsewhere.

    Args:
        draws: ``(chains, draws, *shape)``.
        num_splits: sub-chains per chain (2 gives the split-R-hat of that chain alone).

    Returns:
        ``(chains, *shape)``; NaN where a sub-chain is constant or too short (< 2 draws).
    """
    draws = np.asarray(draws, dtype=float)
    if draws.ndim < 2:
        raise ValueError(f"draws must have shape (chains, draws, ...), got {draws.shape}")
    check_int(num_splits, 'num_splits', 2)
    C, D = draws.shape[:2]
    rest = draws.shape[2:]
    n = D // num_splits
    if n < 2:
        return np.full((C, *rest), np.nan)
    kept = draws[:, D - n * num_splits:].reshape(C, num_splits * n, -1)  # (C, K·n, Q)
    kept = np.moveaxis(kept, 1, -1)  # (C, Q, K·n)
    bulk = _z_scale(kept, axis=-1).reshape(*kept.shape[:-1], num_splits, n)
    folded = np.abs(kept - np.median(kept, axis=-1, keepdims=True))
    tail = _z_scale(folded, axis=-1).reshape(*kept.shape[:-1], num_splits, n)
    constant = np.ptp(kept, axis=-1) == 0
    out = np.maximum(_rhat_subchains(bulk), _rhat_subchains(tail))
    out[constant] = np.nan
    return out.reshape(C, *rest)


def _dataset(values: Dict[str, np.ndarray]):
    az = arviz()
    return az.convert_to_dataset({k: np.asarray(v, dtype=float) for k, v in values.items()})


def _stats(draws: np.ndarray, num_splits: int) -> Dict[str, np.ndarray]:
    """Per-quantity statistics of ``(chains, draws, Q)`` → ``{column: (Q,)}``."""
    az = arviz()
    C, D = draws.shape[:2]
    ds = _dataset({"v": draws})
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        rhat = az.rhat(ds, method="rank")["v"].values
        ess_bulk = az.ess(ds, method="bulk")["v"].values
        ess_tail = az.ess(ds, method="tail")["v"].values
        mcse = az.mcse(ds, method="mean")["v"].values
        within = within_chain_rhat(draws, num_splits)
        within_max = np.full(draws.shape[2:], np.nan) if np.isnan(within).all() else np.nanmax(within, axis=0)
    flat = draws.reshape(C * D, -1)
    return {"mean": flat.mean(0), "sd": flat.std(0, ddof=1) if C * D > 1 else np.full(flat.shape[1], np.nan),
            "mcse_mean": mcse, "ess_bulk": ess_bulk, "ess_tail": ess_tail, "r_hat": rhat,
            "within_chain_r_hat": within_max}


# -- draws ----------------------------------------------------------------------------------
@torch.no_grad()
def prediction_draws(posterior, x: Inputs, num_samples: Optional[int] = None, seed: Optional[int] = 0,
                     batch_size: Optional[int] = None) -> np.ndarray:
    """E[y | x, w] for every draw, chain by chain: ``(chains, draws, B, ...)`` (numpy).

    Regression: the predicted mean; classification: the class probabilities (or P(y = 1) for
    Bernoulli). This is the function-space quantity the diagnostics use.
    """
    x = check_inputs(posterior.model, x, run=True)
    draws = posterior.draws_by_chain(*(() if num_samples is None else (num_samples,)), seed=seed)
    C, D = next(iter(draws.values())).shape[:2]
    flat = {k: v.reshape(C * D, *v.shape[2:]) for k, v in draws.items()}
    means = posterior.predictive_for(flat, x, batch_size=batch_size).draw_means
    return means.reshape(C, D, *means.shape[1:]).double().numpy()


# -- the table ------------------------------------------------------------------------------
def _labels(name: str, shape: Sequence[int]) -> List[str]:
    if len(shape) == 0:
        return [name]
    return [f"{name}[{', '.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


def _rows(name: str, kind: str, draws: np.ndarray, num_splits: int, input_axis: bool):
    import pandas as pd

    C, D, *shape = draws.shape
    table = pd.DataFrame(_stats(draws.reshape(C, D, -1), num_splits), index=_labels(name, shape))
    idx = np.array(list(np.ndindex(*shape))) if shape else np.zeros((1, 0), dtype=int)
    table.insert(0, "kind", kind)
    if input_axis:
        table.insert(1, "input", idx[:, 0])
        table.insert(2, "output", idx[:, 1] if idx.shape[1] > 1 else 0)
    else:
        table.insert(1, "input", -1)
        table.insert(2, "output", -1)
    return table


def _list(indices: Sequence[int], limit: int = 20) -> str:
    indices = [int(i) for i in indices]
    shown = ", ".join(map(str, indices[:limit]))
    return f"[{shown}{', ...' if len(indices) > limit else ''}]"


STRICT_RHAT = 1.01


def summary(posterior, x: Optional[Inputs] = None, *, weights: bool = False, num_samples: Optional[int] = None,
            seed: Optional[int] = 0, batch_size: Optional[int] = None, rhat_threshold: float = 1.05,
            ess_threshold: Optional[float] = None, within_threshold: float = 1.1, num_splits: int = 2,
            warn: bool = True):
    """Convergence table of a posterior: R-hat, bulk/tail ESS and MCSE on predictions at ``x``.

    Rows ``prediction[i]`` (regression) or ``prediction[i, c]`` (class c) hold E[y | xᵢ, w]
    across draws; with ``weights=True`` rows for every scalar weight follow (information only:
    weights are not identifiable, so their R-hat is large for healthy multimodal posteriors).
    Columns: ``kind`` (``"prediction"``/``"weight"``), ``input``, ``output``, ``mean``, ``sd``,
    ``mcse_mean``, ``ess_bulk``, ``ess_tail``, ``r_hat`` (rank-normalised split R-hat, Vehtari et
    al. 2021) and ``within_chain_r_hat`` (the largest over chains of the within-chain split
    R-hat, Sommer et al. 2024; [`within_chain_rhat`][pyro_bdl.evaluate.diagnostics.within_chain_rhat]).

    **What is flagged.** A [`ConvergenceWarning`][pyro_bdl.evaluate.diagnostics.ConvergenceWarning] lists the inputs where a prediction has
    R-hat > ``rhat_threshold`` or bulk/tail ESS < ``ess_threshold``, and tells apart chains that
    sit in different modes (within-chain R-hat ≤ ``within_threshold``) from chains that do not
    mix. The same lists are in ``table.attrs["flagged_inputs"]`` and ``table.attrs["diagnosis"]``.

    * R-hat needs several chains: with one chain (SVI, SWAG, one MCMC chain) it is not computed and
      never flagged; ``table.attrs["notes"]`` says "one chain: R-hat not available".
    * ``rhat_threshold=1.05`` warns; R-hat between 1.01 and 1.05 is listed in
      ``table.attrs["diagnosis"]["rhat_above_1.01"]`` without a warning. Vehtari et al. (2021)
      recommend R-hat < 1.01 as the bar for final results, but R-hat is itself estimated from
      finite draws: for 4 well-mixed chains of bulk ESS ≈ 500 (AR(1) draws, simulated), 16% of
      quantities exceed 1.01 by chance and none 1.05 (ESS ≈ 200: 68% and 0.4%). Across dozens of
      test inputs the strict bar would alarm on healthy runs (R-hat 1.0108 with ESS ≈ 800 is one),
      so 1.05 — Vehtari et al.'s own earlier practical cut-off, well above the estimate's chance
      spread — warns, and 1.01 is information. Pass ``rhat_threshold=1.01`` for the strict check.
    * ``ess_threshold`` defaults to 100 × the number of chains, Vehtari et al.'s (2021, §4.2)
      recommendation for a reliable R-hat and MCSE (400 for 4 chains).
    * The within-chain threshold is looser (default 1.1, the classic cut-off of Gelman et al. 2013)
      because each within-chain R-hat rests on one chain's draws only: healthy chains of a few
      hundred draws reach 1.05 by chance. "Different modes" is reported only where the
      within-chain R-hat exists and says each chain is stationary.

    SG-MCMC posteriors add rows ``configurational_temperature[c]`` and ``kinetic_temperature[c]``
    (kind ``"sampler"``, ``output`` = chain c) with the chain's estimate in ``mean``, its 95%
    interval in ``ci_low``/``ci_high`` and the run's temperature in ``target``
    (`pyro_bdl.evaluate.diagnostics.sampler`); the same disagreement test as at fit time
    is applied and reported with a [`SamplerWarning`][pyro_bdl.evaluate.diagnostics.SamplerWarning] when ``warn``.

    Args:
        posterior: any [`Posterior`][pyro_bdl.Posterior].
        x: inputs for the function-space rows (a few dozen representative test inputs suffice); a
            tensor, or a tuple of tensors for a multi-input network.
        weights: add weight rows.
        num_samples: draws per chain for posteriors that draw on demand (guides); ignored by
            stored samples. Default: the posterior's own default.
        seed, batch_size: as in [`predict`][pyro_bdl.Posterior].
        rhat_threshold, ess_threshold, within_threshold: see above.
        num_splits: sub-chains per chain for the within-chain R-hat (>= 2).
        warn: issue the [`ConvergenceWarning`][pyro_bdl.evaluate.diagnostics.ConvergenceWarning] (the attrs are filled either way).
    Returns:
        a ``pandas.DataFrame`` indexed by quantity.
    """
    import pandas as pd

    if not isinstance(posterior, Posterior):
        raise TypeError(f"summary needs a posterior returned by pyro_bdl.fit (a pyro_bdl.Posterior), got "
                        f"{type(posterior).__name__}")
    if x is None and not weights:
        raise ValueError("summary needs inputs x for the function-space diagnostics (or weights=True for "
                         "weight diagnostics only), e.g. summary(posterior, x_test[:50])")
    for name, flag in (("weights", weights), ("warn", warn)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be True or False, got {flag!r}")
    check_int(num_samples, "num_samples (draws per chain; None: the posterior's default)", 1, allow_none=True)
    check_int(batch_size, "batch_size (rows of x per call; None: all)", 1, allow_none=True)
    check_int(num_splits, "num_splits (sub-chains per chain for the within-chain R-hat)", 2)
    if seed is not None:
        check_seed(seed)
    for name, value, low in (("rhat_threshold", rhat_threshold, 1.0), ("within_threshold", within_threshold, 1.0),
                             ("ess_threshold", ess_threshold, 0.0)):
        if value is None and name == "ess_threshold":
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= low:
            raise ValueError(f"{name} must be a number >= {low}, got {value!r}")
    parts = []
    num_chains = None
    if x is not None:
        f = prediction_draws(posterior, x, num_samples=num_samples, seed=seed, batch_size=batch_size)
        num_chains = f.shape[0]
        shape = (f.shape[0], f.shape[1], f.shape[2], int(np.prod(f.shape[3:], dtype=int)))
        parts.append(_rows(PREDICTION, "prediction", f.reshape(shape) if f.ndim > 3 else f, num_splits, True))
    if weights:
        draws = posterior.draws_by_chain(*(() if num_samples is None else (num_samples,)), seed=seed)
        for site, value in draws.items():
            num_chains = value.shape[0]
            parts.append(_rows(site, "weight", value.detach().double().numpy(), num_splits, False))
    sampler_rows = sampler.temperature_rows(posterior)
    if len(sampler_rows):
        parts.append(sampler_rows)
        if warn:
            estimates = {n: posterior.info[n] for n in sampler.NAMES if n in posterior.info}
            sampler.warn_if_off(estimates, posterior.info["temperature"], posterior.method)
    table = pd.concat(parts)
    table.attrs["num_chains"] = int(num_chains)
    table.attrs["notes"] = ["one chain: R-hat not available (run several chains, or fit several times, to "
                            "compare them)"] if num_chains == 1 else []
    table.attrs["flagged_inputs"] = []
    table.attrs["diagnosis"] = {"different_modes": [], "not_mixing": [], "low_ess": [], "rhat_above_1.01": []}
    if x is not None:
        if ess_threshold is None:
            ess_threshold = 100.0 * num_chains
        _flag(table, rhat_threshold, ess_threshold, within_threshold, warn, num_chains)
    return table


def _flag(table, rhat_threshold, ess_threshold, within_threshold, warn, num_chains) -> None:
    pred = table[table["kind"] == "prediction"]
    by_input = pred.groupby("input")
    rhat = by_input["r_hat"].max()  # NaN-aware max: a NaN only if every output is NaN
    ess = by_input[["ess_bulk", "ess_tail"]].min().min(axis=1)
    ess_nan = by_input[["ess_bulk", "ess_tail"]].apply(lambda d: d.isna().any().any())
    within = by_input["within_chain_r_hat"].max()

    multi = num_chains > 1
    # Undefined: no ESS (one draw, or predictions that never change), and no R-hat where it should exist.
    undefined = ess_nan & rhat.isna() if multi else ess_nan
    if not multi:  # one chain: R-hat does not exist, so it flags nothing
        rhat = rhat.astype(float) * np.nan
    bad_rhat = rhat > rhat_threshold  # False where R-hat is NaN
    strict = (rhat > STRICT_RHAT) & ~bad_rhat
    bad_ess = (ess < ess_threshold) & ~undefined
    stationary = within <= within_threshold  # False where the within-chain R-hat is NaN
    modes = bad_rhat & stationary
    not_mixing = bad_rhat & (within > within_threshold)
    unexplained = bad_rhat & within.isna()
    flagged = sorted(set(rhat.index[bad_rhat | bad_ess | undefined]))
    table.attrs["flagged_inputs"] = [int(i) for i in flagged]
    table.attrs["diagnosis"] = {"different_modes": [int(i) for i in rhat.index[modes]],
                                "not_mixing": [int(i) for i in rhat.index[not_mixing]],
                                "low_ess": [int(i) for i in ess.index[bad_ess]],
                                "rhat_above_1.01": [int(i) for i in rhat.index[strict]]}
    if not warn or not flagged:
        return
    n_inputs = len(rhat)
    criteria = (f"R-hat > {rhat_threshold} or " if multi else "") + f"bulk/tail ESS < {ess_threshold:g}"
    lines = [f"function-space diagnostics flag {len(flagged)} of {n_inputs} inputs {_list(flagged)} ({criteria})."]
    if not multi:
        lines.append("One chain: R-hat not available.")
    if undefined.any():
        lines.append(f"R-hat and ESS are undefined at {_list(rhat.index[undefined])}: too few draws per chain "
                     "(a point estimate such as MAP has one) or predictions that never change.")
    if modes.any():
        lines.append(f"R-hat > {rhat_threshold} at {_list(rhat.index[modes])} while every chain's within-chain "
                     f"R-hat is <= {within_threshold}: each chain is stationary but the chains sit in different "
                     "modes and predict differently there (Sommer et al. 2024). Pooling them averages over modes the "
                     "sampler cannot cross; run more chains to weigh the modes, or report per-chain results.")
    if not_mixing.any():
        lines.append(f"R-hat > {rhat_threshold} at {_list(rhat.index[not_mixing])} with within-chain R-hat > "
                     f"{within_threshold}: the chains are not mixing (not stationary); run longer warmup and "
                     "more draws, or check step size and divergences.")
    if unexplained.any():
        lines.append(f"R-hat > {rhat_threshold} at {_list(rhat.index[unexplained])}: the chains disagree (too few "
                     "draws per chain for the within-chain R-hat to say whether they are stationary); draw more.")
    low = ess.index[bad_ess]
    if len(low):
        lines.append(f"bulk or tail ESS < {ess_threshold:g} at {_list(low)}: the Monte Carlo error of the "
                     "predictions there is large; draw more samples.")
    warnings.warn(" ".join(lines), ConvergenceWarning, stacklevel=3)
