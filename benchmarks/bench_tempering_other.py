"""Does every non-SG-MCMC method sample (or approximate) the tempered posterior p_T it claims? And the
cold-posterior effect on digits with and without augmentation. (The SG-MCMC rows are in
benchmarks/bench_tempering.py; the lead merges the two.)

    python benchmarks/bench_tempering_other.py            # both tables, ~3 minutes on one core
    python benchmarks/bench_tempering_other.py --blr      # only the regression table

1. Bayesian linear regression (y = Aβ + ε, 100 points, 2 features + bias, prior N(0, 1), noise 0.5),
   posterior tempering, minibatches of 10 for the minibatch methods. For each method and T the
   table gives the variance ratio var_method / var_exact(T) per coordinate (mean, min and max
   over the 3 coordinates; exact: var scales by T). 1 is right; a method that ignores T drifts
   like 1/T. MAP is a point (ratio 0) and is left out.

   * ``nuts``: Pyro NUTS, full batch (the reference: exact up to Monte-Carlo error);
   * ``svi``: mean-field normal guide, default options (its variances are the mean-field ones,
     below the exact marginals when coordinates correlate);
   * ``swag``: default options (``swa_lr="auto"``), 120 epochs;
   * ``ensemble``: 5 MAP members; their spread is the spread of the optima of different
     initialisations, zero on a convex problem: an ensemble does not represent p_T.

2. Digits (500 training images, MLP 64-32-10, prior N(0, 1)), test NLL at T ∈ {0.01, 0.1, 1}
   with and without random ±1-pixel shifts, one seed, for ``svi``, ``swag`` and ``sghmc``.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

import pyro_bdl as bdl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from blr import make_blr, moments  # noqa: E402

TEMPERATURES = (1.0, 0.1, 0.01)
BLR_METHODS = {
    "nuts": dict(method="nuts", num_samples=400, warmup=300),
    "svi": dict(method="svi", batch_size=10),
    "swag": dict(method="swag", batch_size=10, epochs=120),
    "ensemble": dict(method="ensemble", num_models=5, batch_size=10, epochs=60),
}


def blr_table(seed: int = 0) -> list:
    problem = make_blr(n=100, d=2, seed=seed)
    rows = []
    for name, options in BLR_METHODS.items():
        for T in TEMPERATURES:
            start = time.perf_counter()
            post = bdl.fit(problem.model(temperature=T), problem.x, problem.y, seed=seed, progress=False, **options)
            draws = post.sample(2000, seed=1) if name in ("svi", "swag") else post.samples
            if name not in ("svi", "swag"):
                draws = {k: v.reshape(-1, *v.shape[2:]) for k, v in draws.items()}
            _, cov = moments(draws)
            ratio = cov.diag() / problem.posterior(T)[1].diag()
            rows.append({"method": name, "T": T, "ratio_mean": float(ratio.mean()), "ratio_min": float(ratio.min()),
                         "ratio_max": float(ratio.max()), "seconds": time.perf_counter() - start})
    return rows


def digits_table(out_dir: str) -> "object":
    config = {
        "study": {"name": "tempering-digits"},
        "data": {"name": "digits", "train_size": 500, "augment": [False, True]},
        "model": {"network": "mlp", "hidden": [32], "activation": "relu", "prior": "gaussian", "prior_scale": 1.0},
        "inference": {"methods": ["svi", "swag", "sghmc"], "batch_size": 50, "predict_samples": 50,
                      "options": {"svi": {"epochs": 30}, "swag": {"epochs": 40}, "sghmc": {"lr": 1e-4, "epochs": 40}}},
        "grid": {"temperature": [0.01, 0.1, 1.0], "seeds": [0]},
    }
    study = bdl.studies.TemperatureStudy(config, output_dir=out_dir, workers=1, progress=False)
    df = study.run()
    return bdl.studies.summarise(df, ["nll", "accuracy"])


def _print(rows, columns):
    print(" | ".join(f"{c:>10s}" for c in columns))
    for r in rows:
        print(" | ".join(f"{r[c]:>10.3g}" if isinstance(r[c], float) else f"{str(r[c]):>10s}" for c in columns))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blr", action="store_true", help="only the regression table")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = {}
    print("Variance ratio var_method / var_exact(T) on Bayesian linear regression (1 = right)")
    out["blr"] = rows = blr_table()
    _print(rows, ["method", "T", "ratio_mean", "ratio_min", "ratio_max", "seconds"])
    if not args.blr:
        with tempfile.TemporaryDirectory() as tmp:
            summary = digits_table(tmp)
        print("\nDigits (500 train, MLP 64-32-10): test NLL and accuracy vs T, with and without ±1-pixel shifts")
        print(summary[["augment", "method", "temperature", "nll_mean", "accuracy_mean"]].to_string(
            index=False, float_format=lambda v: f"{v:.4f}"))
        for (method, augment), part in summary.groupby(["method", "augment"]):
            nll = dict(zip(part["temperature"], part["nll_mean"]))
            print(f"{method:6s} {'with' if augment else 'without'} augmentation: "
                  f"NLL(T=1) − NLL(T=0.01) = {nll[1.0] - nll[0.01]:+.4f}")
        out["digits"] = summary
    return out


if __name__ == "__main__":
    main()
