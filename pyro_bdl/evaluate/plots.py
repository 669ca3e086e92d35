"""Plots with matplotlib. Every function returns the ``Figure`` (it never calls ``plt.show()``);
pass ``ax`` to draw into an existing axes.

* `predictive_band` — 1-D regression: BMA mean and central predictive intervals;
* `reliability_diagram` — accuracy against confidence in equal-width bins, with the ECE;
* `rhat_ess_over_inputs` — function-space R-hat and ESS per input, from
  [`pyro_bdl.diagnostics.summary`][pyro_bdl.evaluate.diagnostics.summary].

For trace, rank, energy and LOO plots use ArviZ on [`to_arviz`][pyro_bdl.Posterior].
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from . import metrics
from ..posterior.predictive import BMAPredictive


def _axes(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=figsize)
        return fig, ax
    return ax.figure, ax


def _np(t) -> "object":
    return torch.as_tensor(t).detach().cpu().double().numpy()


def predictive_band(pred, x: torch.Tensor, *, levels: Sequence[float] = (0.5, 0.9),
                    x_train: Optional[torch.Tensor] = None, y_train: Optional[torch.Tensor] = None,
                    x_test: Optional[torch.Tensor] = None, y_test: Optional[torch.Tensor] = None,
                    num_samples: Optional[int] = None, ax=None, title: Optional[str] = None):
    """Predictive mean and central intervals of a 1-D regression over inputs ``x``.

    Args:
        pred: a regression [`BMAPredictive`][pyro_bdl.BMAPredictive] at ``x`` or a posterior
            (then ``posterior.predict(x, num_samples)`` is used).
        x: inputs ``(B,)`` or ``(B, 1)``, plotted in sorted order.
        levels: central interval coverages, shaded from wide (light) to narrow (dark).
        x_train, y_train / x_test, y_test: data to overlay as points.
    """
    x = torch.as_tensor(x)
    if x.dim() == 2 and x.shape[1] == 1:
        x1 = x[:, 0]
    elif x.dim() == 1:
        x1, x = x, x.unsqueeze(-1)
    else:
        raise ValueError(f"predictive_band plots one input feature; x has shape {tuple(x.shape)}")
    if not isinstance(pred, BMAPredictive):
        pred = pred.predict(x, num_samples=num_samples)
    if pred.kind != "regression":
        raise ValueError("predictive_band is for regression; use reliability_diagram for classification")
    if pred.mean.dim() != 1 or pred.mean.shape[0] != x1.shape[0]:
        raise ValueError(f"the predictive covers {tuple(pred.mean.shape)} outputs, expected ({x1.shape[0]},) "
                         "scalar predictions at x")
    if not levels or any(not 0 < lv < 1 for lv in levels):
        raise ValueError(f"levels must be coverages in (0, 1), got {levels}")
    order = torch.argsort(x1)
    xs = _np(x1[order])
    fig, ax = _axes(ax, (7, 4))
    for i, level in enumerate(sorted(levels, reverse=True)):
        lo, hi = pred.interval(level)
        ax.fill_between(xs, _np(lo[order]), _np(hi[order]), color="C0", alpha=0.15 + 0.2 * i,
                        linewidth=0, label=f"{level:.0%} interval")
    ax.plot(xs, _np(pred.mean[order]), color="C0", lw=2, label="predictive mean")
    if x_train is not None and y_train is not None:
        ax.scatter(_np(x_train).reshape(-1), _np(y_train).reshape(-1), s=12, color="k", zorder=3, label="train")
    if x_test is not None and y_test is not None:
        ax.scatter(_np(x_test).reshape(-1), _np(y_test).reshape(-1), s=8, color="C3", alpha=0.5, zorder=2,
                   label="test")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def reliability_diagram(pred, y: torch.Tensor, *, num_bins: int = 15, ax=None, title: Optional[str] = None):
    """Reliability diagram: accuracy per equal-width confidence bin against the diagonal.

    Bars show each bin's accuracy (bins as in `pyro_bdl.metrics.calibration_bins`, so
    every prediction lands in a bin), the red segments the gap to the bin's mean confidence;
    the title gives the ECE. Bars under the diagonal mean overconfidence.

    Args:
        pred: a classification [`BMAPredictive`][pyro_bdl.BMAPredictive] or class probabilities ``(n, C)``.
        y: class indices ``(n,)``.
    """
    bins = metrics.calibration_bins(pred, y, num_bins)
    value = metrics.ece(pred, y, num_bins)
    edges = _np(bins.edges)
    width = edges[1] - edges[0]
    centers = edges[:-1] + width / 2
    acc = _np(bins.accuracy.nan_to_num(0.0))
    conf = _np(bins.confidence)
    count = _np(bins.count)
    fig, ax = _axes(ax, (4.5, 4.5))
    ax.bar(centers, acc, width=width * 0.95, color="C0", edgecolor="k", linewidth=0.5, label="accuracy")
    for c, a, k, n in zip(centers, acc, conf, count):
        if n > 0:
            ax.plot([c, c], [a, k], color="C3", lw=2)
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.plot([], [], color="C3", lw=2, label="gap to confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title or f"ECE = {value:.3f} ({num_bins} bins, n = {int(count.sum())})")
    ax.legend(loc="upper left", fontsize="small")
    return fig


def rhat_ess_over_inputs(table, x: Optional[torch.Tensor] = None, *, rhat_threshold: float = 1.01,
                         ess_threshold: float = 400.0, title: Optional[str] = None):
    """Function-space R-hat (top) and bulk/tail ESS (bottom) per input.

    Args:
        table: the DataFrame of [`pyro_bdl.diagnostics.summary`][pyro_bdl.evaluate.diagnostics.summary] (its ``prediction`` rows;
            for several outputs per input the worst is shown: largest R-hat, smallest ESS).
        x: 1-D inputs to use as the horizontal axis (default: the input index).
    """
    import matplotlib.pyplot as plt

    pred = table[table["kind"] == "prediction"]
    if pred.empty:
        raise ValueError("the table has no prediction rows; call diagnostics.summary(post, x=...)")
    grouped = pred.groupby("input")
    rhat = grouped["r_hat"].max()
    within = grouped["within_chain_r_hat"].max()
    ess_bulk, ess_tail = grouped["ess_bulk"].min(), grouped["ess_tail"].min()
    pos = rhat.index.to_numpy()
    xlabel = "input index"
    if x is not None:
        xv = _np(x).reshape(len(_np(x)), -1)
        if xv.shape[1] != 1 or xv.shape[0] != len(pos):
            raise ValueError(f"x must hold one value per input ({len(pos)}), got shape {tuple(_np(x).shape)}")
        pos, xlabel = xv[pos, 0], "x"
    order = pos.argsort()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    ax1.plot(pos[order], rhat.to_numpy()[order], "o-", ms=3, label="R-hat (between chains)")
    ax1.plot(pos[order], within.to_numpy()[order], "s-", ms=3, alpha=0.7, label="within-chain R-hat")
    ax1.axhline(rhat_threshold, color="C3", ls="--", lw=1, label=f"threshold {rhat_threshold}")
    ax1.set_ylabel("R-hat")
    ax1.legend(fontsize="small")
    ax2.plot(pos[order], ess_bulk.to_numpy()[order], "o-", ms=3, label="bulk ESS")
    ax2.plot(pos[order], ess_tail.to_numpy()[order], "s-", ms=3, label="tail ESS")
    ax2.axhline(ess_threshold, color="C3", ls="--", lw=1, label=f"threshold {ess_threshold:g}")
    ax2.set_ylabel("ESS")
    ax2.set_xlabel(xlabel)
    ax2.legend(fontsize="small")
    if title:
        ax1.set_title(title)
    fig.tight_layout()
    return fig
