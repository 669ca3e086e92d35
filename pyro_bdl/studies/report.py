"""A study's results, rebuilt from its cell files: the tidy table, plots of metric vs T, a report.

* [`results_table`][pyro_bdl.studies.results_table] — one row per cell: grid coordinates, settings, metrics, timings,
  diagnostics (``diag_*``), sorted by augment, method, temperature, seed;
* [`summarise`][pyro_bdl.studies.summarise] — mean, standard deviation and count over seeds per (augment, method, T);
* [`plot_metric`][pyro_bdl.studies.plot_metric] — a metric against T (log axis), one line per method, error bars ±1 sd
  over seeds, one panel per augmentation setting;
* [`write_report`][pyro_bdl.studies.write_report] — ``results.csv``, ``plots/<metric>_vs_T.png`` and ``report.md``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd

from .._util import checkpoint

CLASSIFICATION_METRICS = ("accuracy", "nll", "ece", "brier")
REGRESSION_METRICS = ("rmse", "nll", "coverage_90", "crps")
#: metrics where larger is better (all others: smaller is better)
HIGHER_IS_BETTER = ("accuracy",)
COORDINATES = ["augment", "method", "temperature", "seed"]


def results_table(records: Iterable[Dict[str, Any]]) -> pd.DataFrame:
    """The tidy table of finished cells: one row per cell record."""
    rows = []
    for r in records:
        s = r["spec"]
        row = {"study": s.get("study"), "method": s["method"], "temperature": s["temperature"], "seed": s["seed"],
               "augment": s["augment"], "data": s["data"]["name"], "n_train": r.get("n_train"),
               "n_test": r.get("n_test"), "network": s["model"]["network"],
               "hidden": "-".join(map(str, s["model"]["hidden"])), "prior": s["model"]["prior"],
               "prior_scale": s["model"]["prior_scale"], "tempering": s["model"]["tempering"],
               "epochs": s["fit"].get("epochs"), "batch_size": s["fit"].get("batch_size")}
        row.update(r["metrics"])
        row.update({"fit_seconds": r["fit_seconds"], "eval_seconds": r["eval_seconds"],
                    "wall_seconds": r.get("wall_seconds")})
        row.update({f"diag_{k}": v for k, v in r.get("diagnostics", {}).items()})
        row["cell"] = r["key"]
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["study"] + COORDINATES + list(CLASSIFICATION_METRICS) + ["cell"])
    df = pd.DataFrame(rows)
    metrics = metric_columns(df)
    first = [c for c in df.columns if c not in metrics and not c.startswith("diag_") and c != "cell"
             and not c.endswith("_seconds")]
    rest = [c for c in df.columns if c not in first and c not in metrics and c != "cell"]
    df = df[first + metrics + rest + ["cell"]]
    return df.sort_values(COORDINATES, kind="stable").reset_index(drop=True)


def metric_columns(df: pd.DataFrame) -> List[str]:
    """The metrics present in a results table, in a fixed order."""
    names = CLASSIFICATION_METRICS if "accuracy" in df.columns else REGRESSION_METRICS
    return [m for m in names if m in df.columns]


def summarise(df: pd.DataFrame, metrics: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Mean, sd (ddof=1; 0 for one seed) and number of seeds of each metric per (augment, method, T)."""
    metrics = list(metrics or metric_columns(df))
    grouped = df.groupby(["augment", "method", "temperature"])[metrics]
    mean, sd, n = grouped.mean(), grouped.std(ddof=1).fillna(0.0), grouped.count()
    out = pd.concat({"mean": mean, "sd": sd, "n": n}, axis=1)
    out.columns = [f"{m}_{stat}" for stat, m in out.columns]
    return out.reset_index()


def plot_metric(df: pd.DataFrame, metric: str, path: Optional[str] = None, ax=None, title: Optional[str] = None):
    """``metric`` against T on a log axis: one line per method, error bars ±1 sd over seeds,
    one panel per augmentation setting (sharing the y axis). Saves a PNG when ``path`` is given."""
    import matplotlib

    if path is not None and ax is None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    summary = summarise(df, [metric])
    augments = sorted(bool(a) for a in summary["augment"].unique())
    single = augments == [False]
    if ax is None:
        fig, axes = plt.subplots(1, len(augments), figsize=(4.8 * len(augments), 3.8), sharey=True, squeeze=False)
        axes = axes[0]
    else:
        axes = np.atleast_1d(ax)
        fig = axes[0].figure
        if len(axes) != len(augments):
            raise ValueError(f"plot_metric needs {len(augments)} axes (one per augmentation setting), got {len(axes)}")
    for panel, augment in zip(axes, augments):
        part = summary[summary["augment"] == augment]
        for method, rows in part.groupby("method", sort=True):
            rows = rows.sort_values("temperature")
            panel.errorbar(rows["temperature"], rows[f"{metric}_mean"], yerr=rows[f"{metric}_sd"], marker="o",
                           capsize=3, label=method)
        panel.set_xscale("log")
        panel.axvline(1.0, color="grey", lw=0.8, ls=":")
        panel.set_xlabel("temperature T (log scale; T = 1 is Bayes)")
        panel.set_title((title or metric) if single else f"{'with' if augment else 'without'} augmentation")
        panel.grid(alpha=0.3)
    axes[0].set_ylabel(metric + ("  (higher is better)" if metric in HIGHER_IS_BETTER else "  (lower is better)"))
    axes[-1].legend(title="method", fontsize=8)
    if title and not single:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        checkpoint.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), suffix=".png")
        plt.close(fig)
    return fig


def _markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(str(v) for v in row.values) + " |")
    return "\n".join(lines)


def metric_grid(df: pd.DataFrame, metric: str, digits: int = 3) -> pd.DataFrame:
    """A (method, augment) × T table of ``mean ± sd`` over seeds for one metric."""
    s = summarise(df, [metric])
    s["value"] = [f"{m:.{digits}f}" + (f" ± {sd:.{digits}f}" if n > 1 else "")
                  for m, sd, n in zip(s[f"{metric}_mean"], s[f"{metric}_sd"], s[f"{metric}_n"])]
    grid = s.pivot_table(index=["method", "augment"], columns="temperature", values="value", aggfunc="first")
    grid.columns = [f"T={t:g}" for t in grid.columns]
    return grid.reset_index()


def cold_posterior_summary(df: pd.DataFrame, metric: str = "nll") -> List[str]:
    """One line per (method, augment): the best T for ``metric`` and the change from T = 1 to the
    coldest T (a cold-posterior effect: the coldest T beats T = 1)."""
    lines = []
    better = max if metric in HIGHER_IS_BETTER else min
    s = summarise(df, [metric])
    for (method, augment), rows in s.groupby(["method", "augment"]):
        by_t = dict(zip(rows["temperature"], rows[f"{metric}_mean"]))
        best_t = better(by_t, key=by_t.get)
        line = f"- {method}, {'with' if augment else 'without'} augmentation: best {metric} {by_t[best_t]:.4f} at T={best_t:g}"
        coldest = min(by_t)
        if 1.0 in by_t and coldest < 1.0:
            line += f"; T={coldest:g} vs T=1: {by_t[coldest]:.4f} vs {by_t[1.0]:.4f}"
        lines.append(line)
    return lines


def write_report(df: pd.DataFrame, out_dir: str, title: str = "Temperature study", total_cells: Optional[int] = None,
                 failed: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Write ``results.csv``, ``plots/<metric>_vs_T.png`` and ``report.md`` into ``out_dir``.

    Returns the paths written (``{"csv": ..., "plots": {metric: path}, "report": ...}``).
    """
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, "results.csv")
    checkpoint.atomic_write(csv_path, lambda tmp: df.to_csv(tmp, index=False), suffix=".csv")
    paths: Dict[str, Any] = {"csv": csv_path, "plots": {}, "report": os.path.join(out_dir, "report.md")}
    lines = [f"# {title}", ""]
    n = len(df)
    lines.append(f"{n} of {total_cells if total_cells is not None else n} cells finished"
                 + (f", {len(failed)} failed" if failed else "") + ". Table: `results.csv` (one row per cell).")
    if n:
        first = df.iloc[0]
        lines += ["", f"Data: {first['data']} (n_train={first['n_train']}, n_test={first['n_test']}); "
                  f"network: {first['network']} {first['hidden']}; prior: {first['prior']} (scale {first['prior_scale']}); "
                  f"tempering: {first['tempering']}. Methods: {', '.join(sorted(df['method'].unique()))}; "
                  f"seeds: {', '.join(map(str, sorted(df['seed'].unique())))}.", ""]
        metrics = metric_columns(df)
        for metric in metrics:
            path = os.path.join(out_dir, "plots", f"{metric}_vs_T.png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            plot_metric(df, metric, path, title=f"{title}: {metric}")
            paths["plots"][metric] = path
        lines += ["## Cold-posterior summary", ""] + cold_posterior_summary(df, "nll")
        if "accuracy" in metrics:
            lines += cold_posterior_summary(df, "accuracy")
        for metric in metrics:
            lines += ["", f"## {metric} (mean ± sd over seeds)", "", _markdown_table(metric_grid(df, metric)), "",
                      f"![{metric} vs T](plots/{metric}_vs_T.png)"]
        lines += ["", "## Time", "", f"Total fit time {df['fit_seconds'].sum():.1f} s over {n} cells "
                  f"(mean {df['fit_seconds'].mean():.1f} s per cell)."]
    if failed:
        lines += ["", "## Failed cells (rerun the same command to retry them)", ""]
        for key, error in failed.items():
            last = error.strip().splitlines()[-1] if error.strip() else "?"
            lines.append(f"- `{key}`: {last}")
    text = "\n".join(lines) + "\n"

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)

    checkpoint.atomic_write(paths["report"], write, suffix=".md")
    return paths
