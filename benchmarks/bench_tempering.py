"""Does every method sample the tempered posterior p_T it claims? Variance ratio vs T.

    python benchmarks/bench_tempering.py                 # all sections, small runs (~5 min on 1 core)
    python benchmarks/bench_tempering.py --epochs 600    # longer SG-MCMC runs
    python benchmarks/bench_tempering.py --quick         # one problem (N=256), for a quick look
    python benchmarks/bench_tempering.py --digits-only   # only the digits NLL-vs-T table

Section "SG-MCMC on regression": Bayesian linear regression with minibatches (closed-form
tempered posterior, tests/blr.py) on two problems of different size and curvature; for each
method at its DEFAULT options and, side by side, the plain kernel (``preconditioner=None``
SGHMC with the old default lr=1e-4, the baseline), the ratio Var(draws) / (T · exact variance)
averaged over coordinates (1 is right), its worst coordinate, and the mean error in posterior
sds. Each section is one function; other sections add their own function and a line in ``main``.

Section "SG-MCMC on digits": the cold-posterior experiment (Wenzel et al. 2020) on 500 digits
training images, MLP 64-32-10 ReLU, prior N(0, 1), batches of 50, with and without random ±1-pixel
shifts: test NLL and accuracy vs T for ``sghmc`` and ``csgmcmc`` at their default options, run length included
(``--digits-epochs N`` fixes it; a 100-epoch run, 1000 steps, left the augmented T = 0.01 chains unmixed), through `pyro_bdl.studies.TemperatureStudy` as in
benchmarks/bench_tempering_other.py (whose svi/swag rows complete the table). With augmentation the
default ``gradient="auto"`` uses the plain minibatch gradient (a control variate needs fixed data).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from typing import Optional

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))  # this checkout, not an installed copy
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
import pyro_bdl as bdl  # noqa: E402
from blr import as_matrix, make_blr  # noqa: E402

TEMPERATURES = (1.0, 0.1, 0.01)
PROBLEMS = {"N=64, d=2, σ=0.5, B=16": dict(n=64, d=2, seed=1, batch=16),
            "N=256, d=3, σ=0.2, B=32": dict(n=256, d=3, seed=2, noise=0.2, batch=32)}


def _ratio(post, blr, T):
    draws = as_matrix(post.flat_samples())
    mean, cov = blr.posterior(T)
    ratio = draws.var(0) / cov.diag()
    z = ((draws.mean(0) - mean) / cov.diag().sqrt()).abs().max()
    return float(ratio.mean()), float((ratio.log().abs()).max().exp()), float(z)


def _row(cells, widths):
    return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths))


def sgmcmc_regression(epochs: int = 150, chains: int = 2, problems=PROBLEMS) -> None:
    """Variance ratio vs T for sgld / sghmc / csgmcmc at defaults and the plain-kernel baseline."""
    variants = {"sgld": dict(method="sgld"), "sghmc": dict(method="sghmc"),
                "csgmcmc": dict(method="csgmcmc", cycles=2, samples_per_cycle=25),
                "sghmc plain (baseline)": dict(method="sghmc", preconditioner=None)}
    widths = (24, 24, 6, 11, 13, 11, 6, 4, 6)
    print("## SG-MCMC on Bayesian linear regression with minibatches: Var / (T · exact)\n")
    print(_row(("method", "problem", "T", "var ratio", "worst coord×", "mean err/sd", "T_conf", "cv", "s"), widths))
    for name, opts in variants.items():
        for label, spec in problems.items():
            spec = dict(spec)
            batch = spec.pop("batch")
            blr = make_blr(**spec)
            for T in TEMPERATURES:
                t0 = time.time()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        post = bdl.fit(blr.model(T), blr.x, blr.y, batch_size=batch, epochs=epochs,
                                       num_chains=chains, seed=0, progress=False, **opts)
                    except FloatingPointError:
                        print(_row((name, label, T, "diverged", "", "", "", "", f"{time.time() - t0:.0f}"), widths))
                        continue
                ratio, worst, z = _ratio(post, blr, T)
                conf = float(post.info["configurational_temperature"][:, 0].mean()) / T
                cv = post.info.get("control_variate")
                cv = "-" if cv is None else f"{int(cv.sum())}/{len(cv)}"
                print(_row((name, label, T, f"{ratio:.2f}", f"{worst:.2f}", f"{z:.2f}", f"{conf:.2f}", cv,
                            f"{time.time() - t0:.0f}"), widths), flush=True)
    print("\n(var ratio: mean over coordinates, 1 = exact; worst coord×: max over coordinates of the ratio or "
          "its inverse; T_conf: configurational temperature / T, averaged over chains; cv: chains whose sampling "
          "stage used the control-variate gradient, chosen by the default gradient='auto')\n")


def sgmcmc_digits(epochs: Optional[int] = None, methods=("sghmc", "csgmcmc"), lr=None) -> None:
    """Test NLL vs T on digits, with and without shift augmentation, for the SG-MCMC methods at defaults
    (``lr``: override the default step for every method). A cell that fails (diverges) is listed, not fatal."""
    config = {
        "study": {"name": "tempering-digits-sgmcmc"},
        "data": {"name": "digits", "train_size": 500, "augment": [False, True]},
        "model": {"network": "mlp", "hidden": [32], "activation": "relu", "prior": "gaussian", "prior_scale": 1.0},
        "inference": {"methods": list(methods), "batch_size": 50, "predict_samples": 50,
                      "options": {m: {**({} if epochs is None else {"epochs": epochs}),
                                      **({} if lr is None else {"lr": lr})} for m in methods}},
        "grid": {"temperature": [0.01, 0.1, 1.0], "seeds": [0]},
    }
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = bdl.studies.TemperatureStudy(config, output_dir=tmp, workers=1, progress=False)
        try:
            df = study.run()
        except bdl.studies.StudyError as e:  # diverged cells: report them, tabulate the rest
            print(f"failed cells: {e}")
            df = study.run(raise_on_failure=False)
        summary = bdl.studies.summarise(df, ["nll", "accuracy"])
    length = "the default length" if epochs is None else f"{epochs} epochs"
    print(f"## SG-MCMC on digits (500 train, MLP 64-32-10 ReLU, N(0,1), batch 50, {length}, "
          f"{'defaults' if lr is None else f'lr={lr}, other options default'}): "
          "test NLL and accuracy vs T, with and without ±1-pixel shifts\n")
    print(summary[["augment", "method", "temperature", "nll_mean", "accuracy_mean"]].to_string(
        index=False, float_format=lambda v: f"{v:.4f}"))
    for (method, augment), part in summary.groupby(["method", "augment"]):
        nll = dict(zip(part["temperature"], part["nll_mean"]))
        diff = lambda cold: f"{nll[1.0] - nll[cold]:+.4f}" if 1.0 in nll and cold in nll else "n/a"  # noqa: E731
        print(f"{method:8s} {'with' if augment else 'without'} augmentation: NLL(T=1) − NLL(T=0.1) = {diff(0.1)}, "
              f"NLL(T=1) − NLL(T=0.01) = {diff(0.01)}")
    print(f"({time.time() - t0:.0f} s)\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="only the N=256 regression")
    parser.add_argument("--digits-only", action="store_true", help="only the digits NLL-vs-T table")
    parser.add_argument("--no-digits", action="store_true", help="only the regression table")
    parser.add_argument("--digits-epochs", type=int, default=None, help="default: the methods' own run length")
    parser.add_argument("--digits-lr", type=float, default=None, help="override the SG-MCMC step on digits")
    args = parser.parse_args()
    torch.set_num_threads(1)
    problems = {k: v for k, v in PROBLEMS.items() if not args.quick or k.startswith("N=256")}
    if not args.digits_only:
        sgmcmc_regression(args.epochs, args.chains, problems)
    if not args.no_digits:
        sgmcmc_digits(args.digits_epochs, lr=args.digits_lr)


if __name__ == "__main__":
    main()
