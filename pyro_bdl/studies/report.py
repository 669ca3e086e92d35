"""A study's results, rebuilt from its cell files: the tidy table, plots of metric vs T, a report.

* [`results_table`][pyro_bdl.studies.results_table] — one row per cell: grid coordinates, settings, metrics, timings,
  diagnostics (``diag_*``), sorted by augment, method, temperature, seed;
* [`summarise`][pyro_bdl.studies.summarise] — mean, standard deviation and count over seeds per (augment, method, T);
* [`plot_metric`][pyro_bdl.studies.plot_metric] — a metric against T (log axis), one line per method, error bars ±1 sd
  over seeds, one panel per augmentation setting;
* [`write_report`][pyro_bdl.studies.write_report] — ``results.csv``, ``plots/<metric>_vs_T.png`` and ``report.md``.

With a reference (``[reference]``, Izmailov et al. 2021) every cell's row gains ``agreement``
(the fraction of test points where its top class is the reference's) and ``total_variation``
(mean ½ Σ_c |p(c|x) − p_ref(c|x)|) against the reference at the same T (and augmentation, when
the reference uses it), computed here from the test-set probabilities each cell stores, and
``reference_converged``; the reference's own row carries its convergence figures
(``r_hat_max``, ``ess_bulk_min``, ``num_divergences``, ``self_agreement``, ...). With
``[evaluation]`` rows carry ``accuracy_{kind}_{severity}`` and ``nll_{kind}_{severity}``.
[`plot_agreement`][pyro_bdl.studies.plot_agreement] draws the agreement / TV bar chart per method and [`plot_shift`][pyro_bdl.studies.plot_shift] the
accuracy and NLL against corruption severity.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd

from .._util import io

CLASSIFICATION_METRICS = ("accuracy", "nll", "ece", "brier")
REGRESSION_METRICS = ("rmse", "nll", "coverage_90", "crps")
#: metrics where larger is better (all others: smaller is better)
HIGHER_IS_BETTER = ("accuracy",)
COORDINATES = ["augment", "method", "temperature", "seed"]
#: columns comparing a cell with the reference (Izmailov et al. 2021)
COMPARISON_METRICS = ("agreement", "total_variation")
#: the reference row's convergence figures (see pyro_bdl.studies.cells.reference_diagnostics)
REFERENCE_FIGURES = ("r_hat_max", "r_hat_fraction_above", "ess_bulk_min", "num_divergences", "self_agreement",
                     "self_total_variation")
_SHIFT = re.compile(r"^(accuracy|rmse|nll)_([a-z_]+)_([1-5])$")


def reference_label(method: str) -> str:
    """The ``method`` entry of a reference row: ``"reference (nuts)"``."""
    return f"reference ({method})"


def _comparisons(records: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Agreement and TV of every record with the reference that serves its (T, augment): key -> columns."""
    refs = {}
    for r in records:
        s = r["spec"]
        if s.get("role") == "reference":
            for augment in s.get("compare", [s["augment"]]):
                refs[(s["temperature"], augment)] = r
    out: Dict[str, Dict[str, Any]] = {}
    for r in records:
        s = r["spec"]
        ref = refs.get((s["temperature"], s["augment"]))
        if ref is None or s.get("role") == "reference":
            continue
        cols: Dict[str, Any] = {"agreement": np.nan, "total_variation": np.nan,
                                "reference_converged": ref.get("reference", {}).get("converged")}
        if "test_probs" in r and "test_probs" in ref:
            p, q = np.asarray(r["test_probs"], dtype=float), np.asarray(ref["test_probs"], dtype=float)
            if p.shape == q.shape:
                cols["agreement"] = float((p.argmax(-1) == q.argmax(-1)).mean())
                cols["total_variation"] = float(np.clip(0.5 * np.abs(p - q).sum(-1), 0.0, 1.0).mean())
        out[r["key"]] = cols
    return out


def results_table(records: Iterable[Dict[str, Any]]) -> pd.DataFrame:
    """The tidy table of finished cells: one row per cell record."""
    records = list(records)
    compared = _comparisons(records)
    rows = []
    for r in records:
        s = r["spec"]
        reference = s.get("role") == "reference"
        row = {"study": s.get("study"), "role": "reference" if reference else "method",
               "method": reference_label(s["method"]) if reference else s["method"],
               "temperature": s["temperature"], "seed": s["seed"],
               "augment": s["augment"], "data": s["data"]["name"], "n_train": r.get("n_train"),
               "n_test": r.get("n_test"), "network": s["model"]["network"],
               "hidden": "-".join(map(str, s["model"]["hidden"])), "prior": s["model"]["prior"],
               "prior_scale": s["model"]["prior_scale"], "tempering": s["model"]["tempering"],
               "epochs": s["fit"].get("epochs"), "batch_size": s["fit"].get("batch_size")}
        row.update(r["metrics"])
        row.update(compared.get(r["key"], {}))
        if reference:
            figures = r.get("reference", {})
            row.update({k: figures.get(k) for k in REFERENCE_FIGURES})
            row["reference_converged"] = figures.get("converged")
        row.update({"fit_seconds": r["fit_seconds"], "eval_seconds": r["eval_seconds"],
                    "wall_seconds": r.get("wall_seconds")})
        row.update({f"diag_{k}": v for k, v in r.get("diagnostics", {}).items()})
        row["cell"] = r["key"]
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=["study"] + COORDINATES + list(CLASSIFICATION_METRICS) + ["cell"])
    df = pd.DataFrame(rows)
    metrics = metric_columns(df)
    later = set(REFERENCE_FIGURES) | {"reference_converged"}
    first = [c for c in df.columns if c not in metrics and not c.startswith("diag_") and c != "cell"
             and not c.endswith("_seconds") and c not in later]
    rest = [c for c in df.columns if c not in first and c not in metrics and c != "cell"]
    df = df[first + metrics + rest + ["cell"]]
    return df.sort_values(COORDINATES, kind="stable").reset_index(drop=True)


def metric_columns(df: pd.DataFrame) -> List[str]:
    """The metrics present in a results table, in a fixed order: the task's metrics, agreement and
    TV with the reference, then the metrics under each corruption (`shift_columns`)."""
    names = CLASSIFICATION_METRICS if "accuracy" in df.columns else REGRESSION_METRICS
    return [m for m in names + COMPARISON_METRICS if m in df.columns] + shift_columns(df)


def shift_columns(df: pd.DataFrame) -> List[str]:
    """The ``accuracy_{kind}_{severity}`` / ``nll_{kind}_{severity}`` columns, by kind, severity, metric."""
    found = [(m.group(2), int(m.group(3)), m.group(1), c) for c in df.columns for m in [_SHIFT.match(str(c))] if m]
    return [c for *_, c in sorted(found, key=lambda t: (t[0], t[1], t[2] != "accuracy" and t[2] != "rmse"))]


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
        io.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), suffix=".png")
        plt.close(fig)
    return fig


def _fig(path: Optional[str]):
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Optional[str]) -> None:
    if path is not None:
        import matplotlib.pyplot as plt

        io.atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"), suffix=".png")
        plt.close(fig)


def _setting(temperature: float, augment: bool) -> str:
    return f"T={temperature:g}" + (", augmented" if augment else "")


def plot_agreement(df: pd.DataFrame, path: Optional[str] = None):
    """Agreement and total variation with the reference per method (Izmailov et al. 2021, their
    bar chart): one bar per method and (T, augmentation) setting, error bars ±1 sd over seeds;
    bars against a reference that has not converged are hatched. Saves a PNG when ``path`` is given."""
    plt = _fig(path)
    part = df[(df["role"] == "method") & df["agreement"].notna()]
    if part.empty:
        raise ValueError("no cell has an agreement with a reference (is there a [reference] section, and has it run?)")
    summary = summarise(part, list(COMPARISON_METRICS))
    converged = part.groupby(["augment", "method", "temperature"])["reference_converged"].apply(
        lambda v: bool(v.fillna(False).astype(bool).all())).reset_index()
    summary = summary.merge(converged, on=["augment", "method", "temperature"])
    by_agreement = summary.groupby("method")["agreement_mean"].mean().sort_values(ascending=False)
    methods = list(by_agreement.index)  # best agreement first
    settings = sorted({(t, a) for t, a in zip(summary["temperature"], summary["augment"])})
    width = 0.8 / len(settings)
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 0.55 * len(methods) * 2 + 2), 3.8))
    for ax, metric, label in zip(axes, COMPARISON_METRICS, ("agreement (higher is better)",
                                                            "total variation (lower is better)")):
        for i, (t, a) in enumerate(settings):
            rows = summary[(summary["temperature"] == t) & (summary["augment"] == a)].set_index("method")
            rows = rows.reindex(methods)
            xs = np.arange(len(methods)) + (i - (len(settings) - 1) / 2) * width
            bars = ax.bar(xs, rows[f"{metric}_mean"], width, yerr=rows[f"{metric}_sd"], capsize=3,
                          label=_setting(t, a))
            for bar, ok in zip(bars, rows["reference_converged"].fillna(True)):
                if not ok:
                    bar.set_hatch("//")
        ax.set_xticks(np.arange(len(methods)))
        ax.set_xticklabels(methods, rotation=30, ha="right")
        ax.set_ylabel(label)
        lo = float((summary[f"{metric}_mean"] - summary[f"{metric}_sd"]).min())
        hi = float((summary[f"{metric}_mean"] + summary[f"{metric}_sd"]).max())
        pad = max(0.02, 0.15 * (hi - lo))  # zoomed in: the methods differ by a few per cent
        ax.set_ylim(max(0.0, lo - pad) if metric == "agreement" else 0.0, min(1.0, hi + pad))
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_title("agreement with the reference")
    axes[1].set_title("total variation from the reference")
    if len(settings) > 1:
        axes[1].legend(fontsize=8)
    if not summary["reference_converged"].all():
        fig.suptitle("hatched: the reference has NOT converged (R-hat above threshold)", color="crimson")
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_shift(df: pd.DataFrame, path: Optional[str] = None, temperature: Optional[float] = None,
               augment: Optional[bool] = None):
    """Accuracy (regression: RMSE) and NLL against corruption severity per method, one column per
    corruption kind (severity 0: the clean test set), mean ±1 sd over seeds; the reference dashed
    (Izmailov et al. 2021, their covariate-shift panel). With several temperatures or augmentation
    settings pick one with ``temperature`` / ``augment`` (default: T = 1 if present, else the
    first; no augmentation if present)."""
    plt = _fig(path)
    columns = shift_columns(df)
    if not columns:
        raise ValueError("the table has no corruption metrics (is there an [evaluation] section?)")
    if temperature is None:
        temps = sorted(df["temperature"].unique())
        temperature = 1.0 if 1.0 in temps else temps[0]
    if augment is None:
        augment = False if (~df["augment"].astype(bool)).any() else True
    part = df[(df["temperature"] == temperature) & (df["augment"].astype(bool) == augment)]
    if part.empty:  # a full-batch reference runs without augmentation only
        raise ValueError(f"no cells at T={temperature:g}, augment={augment}")
    refs = df[(df["role"] == "reference") & (df["temperature"] == temperature)]
    part = pd.concat([part[part["role"] == "method"], refs])
    found = sorted({(m.group(2), m.group(1)) for c in columns for m in [_SHIFT.match(c)]})
    kinds = sorted({k for k, _ in found})
    first = "accuracy" if "accuracy" in df.columns else "rmse"
    fig, axes = plt.subplots(2, len(kinds), figsize=(4.4 * len(kinds), 6.4), sharex=True, squeeze=False)
    for j, kind in enumerate(kinds):
        for i, metric in enumerate((first, "nll")):
            ax = axes[i, j]
            for method, rows in part.groupby("method", sort=True):
                severities = sorted(int(_SHIFT.match(c).group(3)) for c in columns
                                    if _SHIFT.match(c).group(2) == kind and _SHIFT.match(c).group(1) == metric)
                cols = [metric] + [f"{metric}_{kind}_{s}" for s in severities]
                mean, sd = rows[cols].mean(), rows[cols].std(ddof=1).fillna(0.0)
                ref = str(method).startswith("reference")
                ax.errorbar([0] + severities, mean.values, yerr=sd.values, marker="o", capsize=3, label=method,
                            **({"color": "black", "ls": "--"} if ref else {}))
            ax.set_ylabel(metric + ("  (higher is better)" if metric in HIGHER_IS_BETTER else "  (lower is better)"))
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"{kind}, {_setting(temperature, augment)}")
            else:
                ax.set_xlabel("corruption severity (0: clean test set)")
    axes[0, -1].legend(title="method", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return fig


def comparison_table(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Per (augment, T, method): mean ± sd over seeds of agreement, TV, accuracy, NLL and every
    corruption metric; values against a reference that has not converged are marked ``(!)``."""
    metrics = [m for m in ("agreement", "total_variation", "accuracy", "rmse", "nll") if m in df.columns]
    metrics += shift_columns(df)
    s = summarise(df, metrics)
    flags = df.groupby(["augment", "method", "temperature"])["reference_converged"].apply(
        lambda v: v.notna().any() and not v.dropna().astype(bool).all()) if "reference_converged" in df else None
    out = s[["augment", "method", "temperature"]].copy()
    for m in metrics:
        out[m] = [("nan" if not np.isfinite(mu) else f"{mu:.{digits}f}" + (f" ± {sd:.{digits}f}" if n > 1 else ""))
                  for mu, sd, n in zip(s[f"{m}_mean"], s[f"{m}_sd"], s[f"{m}_n"])]
    if flags is not None:
        marked = [bool(flags.get((a, meth, t), False)) for a, meth, t in zip(out["augment"], out["method"],
                                                                            out["temperature"])]
        itself = [str(meth).startswith("reference (") for meth in out["method"]]
        for m in COMPARISON_METRICS:
            if m in out:
                out[m] = ["(itself)" if ref else v + " (!)" if flag else v
                          for v, flag, ref in zip(out[m], marked, itself)]
    return out.rename(columns={"total_variation": "TV"})


def reference_section(df: pd.DataFrame) -> List[str]:
    """The report's lines on the reference: its convergence figures and, loudly, whether it converged."""
    refs = df[df["role"] == "reference"] if "role" in df.columns else df.iloc[0:0]
    if refs.empty:
        return []
    lines = ["## The reference", ""]
    bad = refs[~refs["reference_converged"].fillna(False).astype(bool)]
    if len(bad):
        lines += [f"> **WARNING: the reference has NOT converged** at {', '.join(_setting(t, a) for t, a in zip(bad['temperature'], bad['augment']))}: "
                  "its largest function-space R-hat exceeds the threshold, so it is not a trustworthy stand-in "
                  "for the exact posterior. Comparisons against it are marked (!) below; run more chains, longer "
                  "warmup and more draws (or a smaller model) before reading them as distances to the posterior.", ""]
    cols = ["method", "temperature", "augment"] + [c for c in REFERENCE_FIGURES if c in refs.columns] + [
        "reference_converged", "accuracy", "nll", "fit_seconds"]
    table = refs[[c for c in cols if c in refs.columns]].copy()
    for c in table.columns:
        if table[c].dtype.kind == "f":
            table[c] = table[c].map(lambda v: f"{v:.4g}")
    lines += ["Function-space convergence (class probabilities at the first `diagnostic_inputs` test inputs, "
              "default 100): the largest rank-normalised split R-hat over every input and class, the share above the threshold, the smallest bulk ESS, "
              "divergent transitions, and the agreement / TV between the model averages of the two halves of "
              "its chains on the whole test set (near 1 / 0 when converged).", "", _markdown_table(table), ""]
    return lines


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


def _comparison_section(df: pd.DataFrame, out_dir: str, paths: Dict[str, Any]) -> List[str]:
    """The report's table and figures of agreement / TV with the reference and of the metrics under
    covariate shift (whichever the study has)."""
    has_agreement = "agreement" in df.columns and df["agreement"].notna().any()
    shifts = shift_columns(df)
    if not has_agreement and not shifts:
        return []
    lines = ["## Methods against the reference and under covariate shift (mean ± sd over seeds)", ""]
    if has_agreement:
        lines += ["Agreement: the share of test points where a method's top class is the reference's; TV: the "
                  "mean total variation between its predictive and the reference's (Izmailov et al. 2021).", ""]
    lines += [_markdown_table(comparison_table(df)), ""]
    if has_agreement:
        path = os.path.join(out_dir, "plots", "agreement.png")
        plot_agreement(df, path)
        paths["plots"]["agreement"] = path
        lines += ["![agreement and total variation per method](plots/agreement.png)", ""]
    if shifts:
        for t in sorted(df["temperature"].unique()):
            for a in sorted(df[df["temperature"] == t]["augment"].astype(bool).unique()):
                name = f"shift_T{t:g}{'_aug' if a else ''}"
                path = os.path.join(out_dir, "plots", f"{name}.png")
                plot_shift(df, path, temperature=t, augment=a)
                paths["plots"][name] = path
                lines += [f"![accuracy and NLL vs corruption severity, {_setting(t, a)}](plots/{name}.png)", ""]
    return lines


def write_report(df: pd.DataFrame, out_dir: str, title: str = "Temperature study", total_cells: Optional[int] = None,
                 failed: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Write ``results.csv``, ``plots/<metric>_vs_T.png`` and ``report.md`` into ``out_dir``.

    Returns the paths written (``{"csv": ..., "plots": {metric: path}, "report": ...}``).
    """
    os.makedirs(out_dir, exist_ok=True)
    csv_path = os.path.join(out_dir, "results.csv")
    io.atomic_write(csv_path, lambda tmp: df.to_csv(tmp, index=False), suffix=".csv")
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
        metrics = [m for m in metric_columns(df) if m not in shift_columns(df)
                   and (m not in COMPARISON_METRICS or df["temperature"].nunique() > 1)]  # else: in the table
        for metric in metrics:
            path = os.path.join(out_dir, "plots", f"{metric}_vs_T.png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            plot_metric(df[df[metric].notna()], metric, path, title=f"{title}: {metric}")
            paths["plots"][metric] = path
        lines += reference_section(df)
        lines += _comparison_section(df, out_dir, paths)
        if df["temperature"].nunique() > 1:  # one temperature: nothing to summarise across T
            lines += ["## Cold-posterior summary", ""] + cold_posterior_summary(df, "nll")
            if "accuracy" in metrics:
                lines += cold_posterior_summary(df, "accuracy")
        for metric in metrics:
            lines += ["", f"## {metric} (mean ± sd over seeds)", "",
                      _markdown_table(metric_grid(df[df[metric].notna()], metric)), "",
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

    io.atomic_write(paths["report"], write, suffix=".md")
    return paths
