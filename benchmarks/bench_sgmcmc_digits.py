"""Digits (sklearn's bundled 8×8 images): test accuracy, NLL and ECE of MAP, a deep ensemble (M=5),
SGLD, SGHMC and cyclical SG-MCMC on one MLP (64-100-10, tanh), in one run.

    python benchmarks/bench_sgmcmc_digits.py              # one seed
    python benchmarks/bench_sgmcmc_digits.py --seeds 3    # mean ± std over seeds 0, 1, 2

Model: prior N(0, 1) on every weight, Categorical likelihood, minibatches of 128 (1347 training
and 450 test images, fixed stratified split). The options are the issue's examples:

* MAP: Adam, lr 0.01 decayed ×0.1, 100 epochs;
* ensemble: 5 members trained exactly like the MAP, from fresh initialisations (seeds s..s+4);
* SGLD: ε = 1e-4 on the full-data potential (0.13 per data point), 200 epochs, burn-in 50, a draw per epoch;
* SGHMC: ε = 1e-4, friction α = 0.05, 200 epochs, burn-in 50, a draw per epoch;
* cSG-MCMC: α₀ = 0.5 per data point, 4 cycles, β = 0.8, 3 draws per cycle (12), SGLD inner sampler, 200 epochs.

The three samplers run at T = 1 (the Bayes posterior) and again at T = 0.1 (a cold posterior,
posterior tempering), with the same step sizes (the samplers step on T·U_T, see
`pyro_bdl.infer.sgmcmc`).

torch runs on one thread (the machine is shared; small networks gain nothing from more).
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import pyro_bdl as bdl
from pyro_bdl.examples.networks import mlp

SAMPLERS = {
    # the plain kernels with the papers' step sizes (preconditioner=None): ``epsilon`` is ε on the full-data potential,
    # passed as lr = N·ε (lr is per data point, `run`)
    "sgld": dict(method="sgld", epsilon=1e-4, epochs=200, warmup=50, thin=1, preconditioner=None),
    "sghmc": dict(method="sghmc", epsilon=1e-4, momentum_decay=0.05, epochs=200, warmup=50, thin=1, preconditioner=None),
    "csgmcmc": dict(method="csgmcmc", lr=0.5, cycles=4, exploration=0.8, samples_per_cycle=3, epochs=200,
                    preconditioner=None, sampler="sgld"),
}
METHODS = {
    "map": dict(method="map", epochs=100, lr=0.01),
    "ensemble (M=5)": dict(method="ensemble", num_models=5, epochs=100, lr=0.01),
    **SAMPLERS,
    **{f"{name}, T=0.1": dict(opts, temperature=0.1) for name, opts in SAMPLERS.items()},
}


def run(seed: int, methods=METHODS):
    ds = bdl.data.load_dataset("digits")
    rows = {}
    for name, opts in methods.items():
        if "epsilon" in opts:
            opts = dict(opts)
            opts["lr"] = opts.pop("epsilon") * len(ds.y_train)
        torch.manual_seed(seed)
        net = mlp(ds.num_features, [100], ds.output_dim, "tanh")
        model = bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Categorical())
        start = time.perf_counter()
        post = bdl.fit(model, ds.loader(128, seed=seed), seed=seed, progress=False, **opts)
        seconds = time.perf_counter() - start
        m = bdl.metrics.evaluate(post, ds.x_test, ds.y_test)
        draws = post.num_chains * post.num_draws
        rows[name] = {**m, "seconds": seconds, "draws": draws}
        print(f"  seed {seed} {name:18s} acc {m['accuracy']:.4f} nll {m['nll']:.4f} ece {m['ece']:.4f} "
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

    print(f"\ndigits, MLP 64-100-10 tanh, N(0,1) prior, batch 128; {args.seeds} seed(s)")
    header = f"| {'method':18s} | {'accuracy':>15s} | {'NLL':>15s} | {'ECE':>15s} | draws | fit s |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name in METHODS:
        print(f"| {name:18s} | {cell(name, 'accuracy', '.4f'):>15s} | {cell(name, 'nll', '.4f'):>15s} | "
              f"{cell(name, 'ece', '.4f'):>15s} | {results[0][name]['draws']:5d} | "
              f"{sum(r[name]['seconds'] for r in results) / len(results):5.1f} |")


if __name__ == "__main__":
    main()
