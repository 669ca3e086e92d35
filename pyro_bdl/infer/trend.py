"""Was an optimiser's loss still falling when its run ended? (issue 13, notes/issue-13-lead10.md)

A loss history that is flat proves nothing about convergence (`pyro_bdl.infer.stationarity`: it is flat long before an
ill-conditioned posterior's weak directions have moved), but one that still falls beyond its noise proves the run has
not converged. On the digits MLP (1347 images, P = 6570) default mean-field SVI (2000 steps) ends 1.1 nats per data
point above the ELBO a 16000-step run reaches, with its test NLL 0.126 against 0.095, while the guide's stationarity
check reads an RMS mean offset of 0.36 and a variance ratio of 0.50, both inside their tolerances: the guide's sds are
still growing towards the prior along the many weights the data hardly touch.

The reading. With ``q`` = ⌊n/4⌋ steps per quarter of an n-step history L, compare the third and the last quarter:

    slope = (mean L[third quarter] − mean L[last quarter]) / unit · RATE_STEPS / q,

the loss's fall per ``RATE_STEPS`` (100) steps in nats per data point (``unit`` = N/T for a total loss, so the figure
does not depend on N or T). Its standard error comes from batch means (``TREND_BATCHES`` contiguous batches per
quarter: the steps' losses are autocorrelated through the parameters, batch means are not, to first order; a trend
inside a quarter only inflates them, which errs towards not flagging). The run was *still falling* when the slope's
one-sided (1 − ``ALPHA``) lower bound, slope − t·se (Student t, 2·TREND_BATCHES − 2 degrees of freedom), exceeds
``TREND_TOLERANCE``.

Across warm restarts (``period``: the schedule's length, when the history holds several) the last quarter is read
against the same quarter of the schedule before, both at the schedule's final rates: the slope is what the last
schedule gained. `fit(method="svi")` at its default length runs on by such restarts while the slope says falling.

This is ADVI's convergence rule (Kucukelbir et al. 2017, §3.5; Stan's ``tol_rel_obj = 0.01`` on the ELBO's change per
``eval_elbo = 100`` iterations) with two changes: the change is measured in nats per data point instead of relative to
|ELBO| (whose additive constants, such as a Gaussian likelihood's normaliser, are arbitrary), and beyond the noise of a
minibatch history (ADVI evaluates the ELBO afresh with many draws). Measured on digits MLPs (the note): 2000 steps fall
by 0.03–0.09 per 100 steps (flagged), 8000 by 0.003 and 16000 by 0.0006. Under an exponentially decayed learning rate
the last quarter runs at the smallest rates, so its slope understates what more steps would gain: the verdict errs
towards silence.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from scipy.stats import t as student_t

from .stationarity import StationarityWarning

#: contiguous batches per quarter behind the slope's standard error
TREND_BATCHES = 10
#: a run whose loss still fell by more than this many nats per data point per RATE_STEPS steps over its last quarter
#: (beyond the noise) has not converged (module docs: ADVI's tolerance)
TREND_TOLERANCE = 0.01
#: the slope's unit of steps (ADVI's eval_elbo)
RATE_STEPS = 100
#: the one-sided error rate of the verdict on a flat history
ALPHA = 0.05


@dataclass(frozen=True)
class LossTrend:
    """`loss_trend`'s reading: the loss's ``slope`` at the end of the run (its fall from the third to the last
    quarter, in nats per data point per RATE_STEPS steps), its standard error ``se`` and the ``steps`` per quarter."""
    slope: float
    se: float
    steps: int

    @property
    def lower_bound(self) -> float:
        """The slope's one-sided (1 − ALPHA) lower confidence bound."""
        return self.slope - float(student_t.ppf(1 - ALPHA, 2 * TREND_BATCHES - 2)) * self.se

    @property
    def falling(self) -> bool:
        """The loss was still falling by more than ``TREND_TOLERANCE`` beyond its noise."""
        return self.lower_bound > TREND_TOLERANCE


def _batch_means(values: torch.Tensor) -> torch.Tensor:
    size = values.numel() // TREND_BATCHES
    return values[values.numel() - size * TREND_BATCHES:].reshape(TREND_BATCHES, size).mean(1)


def loss_trend(history: Sequence[float], unit: float, period: Optional[int] = None) -> Optional[LossTrend]:
    """The trend of one run's loss ``history`` (its per-step values, in order) at its end (module docs); ``unit``: the
    loss of one nat per data point (N/T for a total loss). ``period``: the length of the learning-rate schedule, when
    the history holds several in a row (warm restarts): its last quarter is then compared with the same quarter of
    the schedule before, both at the same final rates, so the slope is what the last schedule gained. None for a
    history of fewer than 4·TREND_BATCHES steps or with non-finite values."""
    if not unit > 0:
        raise ValueError(f"unit must be > 0, got {unit!r}")
    values = torch.as_tensor(history, dtype=torch.float64).reshape(-1)
    period = values.numel() if period is None else min(int(period), values.numel())
    quarter = period // 4
    lag = period if values.numel() >= 2 * period else quarter
    if quarter < TREND_BATCHES or not bool(torch.isfinite(values[-quarter - lag:]).all()):
        return None
    before = _batch_means(values[-quarter - lag:values.numel() - lag])
    last = _batch_means(values[-quarter:])
    per = RATE_STEPS / (unit * lag)
    se = math.sqrt(float(before.var() + last.var()) / TREND_BATCHES) * per
    return LossTrend(slope=float(before.mean() - last.mean()) * per, se=se, steps=quarter)


def trend_info(trend: Optional[LossTrend]) -> Dict[str, Optional[float]]:
    """The info entries of a run's trend: ``loss_slope`` and ``loss_slope_se`` (nats per data point per RATE_STEPS
    steps; None where the history is too short)."""
    return {"loss_slope": None if trend is None else trend.slope, "loss_slope_se": None if trend is None else trend.se}


def warn_if_falling(method: str, losses: torch.Tensor, unit: float, quiet: Sequence[bool] = (),
                    period: Optional[int] = None, stacklevel: int = 3) -> List[Optional[LossTrend]]:
    """`loss_trend` of each run's history (rows of ``losses``, ``(K, steps)``; ``period`` as there), with a
    `StationarityWarning` when a run that is not ``quiet`` (e.g. one a finish moved after its history ended) was still
    falling."""
    rows = torch.as_tensor(losses).reshape(len(losses), -1)
    trends = [loss_trend(row, unit, period) for row in rows]
    quiet = list(quiet) + [False] * (len(trends) - len(quiet))
    bad = [(t, k) for k, (t, q) in enumerate(zip(trends, quiet)) if t is not None and not q and t.falling]
    if bad:
        trend, k = max(bad, key=lambda pair: pair[0].lower_bound)
        steps = len(losses[0])
        which = "" if len(trends) == 1 else f" of run {k} ({len(bad)} of {len(trends)} runs)"
        warnings.warn(f"{method}: the loss{which} was still falling when the run ended, by {trend.slope:.3g} ± "
                      f"{trend.se:.2g} nats per data point per {RATE_STEPS} steps over the last {trend.steps} of "
                      f"{steps} steps (tolerance {TREND_TOLERANCE} beyond the noise), so the run has not converged. "
                      f"Run more steps (e.g. steps={4 * steps}) or raise lr; see info['loss_slope'].",
                      StationarityWarning, stacklevel=stacklevel)
    return trends
