"""Inspect chains with ArviZ.

NUTS on a small Bayesian neural network (wine, 3 classes), four chains, then the checks a
careful user runs before trusting the draws:

1. trace and rank plots of a weight and of a prediction (ArviZ, on ``post.to_arviz``);
2. function-space R-hat / ESS with ``bdl.diagnostics.summary`` — weights are not identifiable
   (hidden units can be permuted), so convergence is judged on predictions; weight R-hat is
   shown for comparison only;
3. PSIS-LOO (``az.loo``) on the training data, next to the test log predictive density;
4. the reliability diagram of the Bayesian model average on the test set.

Run: ``python tutorials/inspect_chains.py`` (small, ~30 s of CPU time) or ``--full`` (~35 min wall on 2 busy cores).
Figures are written as PNG into ``out_dir``.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Dict

import matplotlib

matplotlib.use("Agg")

import arviz as az  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import pyro_bdl as bdl  # noqa: E402
from pyro_bdl.examples.networks import mlp  # noqa: E402


def main(full: bool = False, out_dir: str = "tutorials/figures") -> Dict[str, object]:
    os.makedirs(out_dir, exist_ok=True)
    settings = (dict(hidden=8, train_size=None, num_samples=300, warmup=300, max_tree_depth=7) if full else
                dict(hidden=4, train_size=60, num_samples=40, warmup=40, max_tree_depth=4))

    # -- data and model -------------------------------------------------------------------------
    ds = bdl.data.load_dataset("wine", seed=0, train_size=settings["train_size"])
    torch.manual_seed(0)
    net = mlp(ds.num_features, [settings["hidden"]], ds.num_classes, activation="tanh")
    model = bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Categorical())

    # -- four NUTS chains, each from its own prior draw ------------------------------------------
    post = bdl.fit(model, ds.x_train, ds.y_train, method="nuts", num_chains=4, seed=0, progress=full,
                   num_samples=settings["num_samples"], warmup=settings["warmup"],
                   max_tree_depth=settings["max_tree_depth"])
    divergences = int(post.sample_stats["diverging"].sum())

    # -- ArviZ: trace and rank plots --------------------------------------------------------------
    idata = post.to_arviz(x=ds.x_test, y=ds.y_test)
    figures = {}
    coords = {"data": [0, 1], "class": [0]}
    axes = az.plot_trace(idata, var_names=["2.bias", "prediction"], coords={**coords, "2.out": [0]},
                         compact=False)
    figures["trace"] = _save(np.asarray(axes).flat[0].figure, out_dir, "inspect_chains_trace.png")
    axes = az.plot_rank(idata, var_names=["2.bias", "prediction"], coords={**coords, "2.out": [0]})
    figures["rank"] = _save(np.asarray(axes).flat[0].figure, out_dir, "inspect_chains_rank.png")
    axes = az.plot_energy(idata)
    figures["energy"] = _save(np.asarray(axes).flat[0].figure if np.ndim(axes) else axes.figure, out_dir,
                              "inspect_chains_energy.png")

    # -- function-space R-hat and ESS (weights for information) ----------------------------------
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", bdl.diagnostics.ConvergenceWarning)
        table = bdl.diagnostics.summary(post, x=ds.x_test, weights=True)
    warned = any(issubclass(w.category, bdl.diagnostics.ConvergenceWarning) for w in caught)
    pred_rows, weight_rows = table[table["kind"] == "prediction"], table[table["kind"] == "weight"]
    figures["rhat"] = _save(bdl.plots.rhat_ess_over_inputs(table, title="function-space diagnostics (test inputs)"),
                            out_dir, "inspect_chains_rhat.png")

    # -- PSIS-LOO on the training data vs the test log predictive density --------------------------
    idata_train = post.to_arviz(x=ds.x_train, y=ds.y_train)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # high Pareto k is reported in the result instead
        loo = az.loo(idata_train, pointwise=True)
    pred = post.predict(ds.x_test)
    test_lpd = float(pred.log_prob(ds.y_test).mean())

    # -- calibration -------------------------------------------------------------------------------
    figures["reliability"] = _save(bdl.plots.reliability_diagram(pred, ds.y_test, num_bins=10), out_dir,
                                   "inspect_chains_reliability.png")
    metrics = bdl.metrics.evaluate(post, ds.x_test, ds.y_test)

    result = {
        "num_chains": post.num_chains,
        "num_draws": post.num_draws,
        "divergences": divergences,
        "rhat_predictions_max": float(pred_rows["r_hat"].max()),
        "rhat_predictions_median": float(pred_rows["r_hat"].median()),
        "rhat_weights_median": float(weight_rows["r_hat"].median()),
        "within_chain_rhat_predictions_max": float(pred_rows["within_chain_r_hat"].max()),
        "ess_bulk_predictions_min": float(pred_rows["ess_bulk"].min()),
        "flagged_inputs": len(table.attrs["flagged_inputs"]),
        "convergence_warning": warned,
        "elpd_loo_per_point": float(loo.elpd_loo) / loo.n_data_points,
        "p_loo": float(loo.p_loo),
        "pareto_k_max": float(np.max(loo.pareto_k.values)),
        "test_lpd_per_point": test_lpd,
        **metrics,
        "figures": figures,
    }
    print(f"NUTS: {result['num_chains']} chains x {result['num_draws']} draws, {divergences} divergences")
    print(f"R-hat on predictions: max {result['rhat_predictions_max']:.3f}, median "
          f"{result['rhat_predictions_median']:.3f}; on weights (information only): median "
          f"{result['rhat_weights_median']:.3f}")
    print(f"bulk ESS of predictions: min {result['ess_bulk_predictions_min']:.0f}; "
          f"{result['flagged_inputs']} of {len(ds.x_test)} test inputs flagged")
    print(f"PSIS-LOO elpd per training point {result['elpd_loo_per_point']:.3f} (p_loo {result['p_loo']:.1f}, "
          f"max Pareto k {result['pareto_k_max']:.2f}); test log predictive density per point {test_lpd:.3f}")
    print("test metrics: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    print("figures: " + ", ".join(figures.values()))
    return result


def _save(fig, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


if __name__ == "__main__":
    main(full="--full" in sys.argv)
