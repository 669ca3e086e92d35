"""Digits (sklearn's bundled 8×8 images): test accuracy, NLL and ECE of MAP, a deep ensemble (M=5),
SGLD, SGHMC and cyclical SG-MCMC on one MLP (64-100-10, tanh), in one run.

    python benchmarks/bench_sgmcmc_digits.py              # one seed
    python benchmarks/bench_sgmcmc_digits.py --seeds 3    # mean ± std over seeds 0, 1, 2

Model: prior N(0, 1) on every weight, Categorical likelihood, T = 1, minibatches of 128
(1347 training and 450 test images, fixed stratified split). Every method gets 200 epochs of
gradient steps (ensemble members 60 each, as in the issue), so the costs are comparable:

* MAP: Adam, lr 0.01 decayed ×0.1, 200 epochs;
* ensemble: 5 such MAP members (fresh initialisations, seeds s..s+4), 60 epochs each;
* SGLD: ε = 1e-4 on the full-data potential (per data point 0.13), burn-in 50 epochs, a draw per epoch;
* SGHMC: ε = 1e-5, friction α = 0.05 (effective SGD rate ε/α = 2e-4), burn-in 50, a draw per epoch;
* cSG-MCMC: α₀ = 0.5 per data point, 4 cycles, β = 0.8, 3 draws per cycle (12), SGLD inner sampler.

torch runs on one thread (the machine is shared; small networks gain nothing from more).
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import pyro_bdl as bdl
from pyro_bdl.cli import mlp

METHODS = {
    "map": dict(method="map", epochs=200, lr=0.01),
    "ensemble (M=5)": dict(method="ensemble", num_models=5, epochs=60, lr=0.01),
    "sgld": dict(method="sgld", lr=1e-4, epochs=200, burnin=50, thin=1),
    "sghmc": dict(method="sghmc", lr=1e-5, momentum_decay=0.05, epochs=200, burnin=50, thin=1),
    "csgmcmc": dict(method="csgmcmc", lr=0.5, cycles=4, exploration=0.8, samples_per_cycle=3, epochs=200),
}


def run(seed: int, methods=METHODS):
    ds = bdl.data.load_dataset("digits")
    rows = {}
    for name, opts in methods.items():
        torch.manual_seed(seed)
        net = mlp(ds.num_features, [100], ds.output_dim, "tanh")
        model = bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Categorical())
        start = time.perf_counter()
        post = bdl.fit(model, ds.loader(128, seed=seed), seed=seed, progress=False, **opts)
        seconds = time.perf_counter() - start
        m = bdl.metrics.evaluate(post, ds.x_test, ds.y_test)
        draws = post.num_chains * post.num_draws
        rows[name] = {**m, "seconds": seconds, "draws": draws}
        print(f"  seed {seed} {name:15s} acc {m['accuracy']:.4f} nll {m['nll']:.4f} ece {m['ece']:.4f} "
              f"({draws} draws, {seconds:.1f} s)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [run(s) for s in range(args.seeds)]

    def cell(name, key, fmt):
        vals = torch.tensor([r[name][key] for r in results], dtype=torch.float64)
        if len(vals) == 1:
            return format(float(vals[0]), fmt)
        return f"{format(float(vals.mean()), fmt)} ± {format(float(vals.std()), fmt)}"

    print(f"\ndigits, MLP 64-100-10 tanh, N(0,1) prior, T=1, batch 128; {args.seeds} seed(s)")
    header = f"| {'method':15s} | {'accuracy':>15s} | {'NLL':>15s} | {'ECE':>15s} | draws | fit s |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name in METHODS:
        print(f"| {name:15s} | {cell(name, 'accuracy', '.4f'):>15s} | {cell(name, 'nll', '.4f'):>15s} | "
              f"{cell(name, 'ece', '.4f'):>15s} | {results[0][name]['draws']:5d} | "
              f"{sum(r[name]['seconds'] for r in results) / len(results):5.1f} |")


if __name__ == "__main__":
    main()
