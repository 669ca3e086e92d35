"""SWAG benchmarks: the cost of collection over plain SGD, memory, and the digits table.

    python benchmarks/bench_swag.py            # cost + memory (about a minute)
    python benchmarks/bench_swag.py --digits   # also MAP / SWA / SWAG / Multi-SWAG on digits (~10 min)

1. Cost: the same SGD run (same epochs, schedule, data order) with and without SWAG
   collection, side by side and interleaved, for MLPs of growing size P. Collection is one
   O(K·P) update per epoch after ``swa_start``, so its overhead should be far below 10%.
2. Memory: the SWAG state is θ̄, Σ(θ−θ̄)² and D (K × P): (K + 2)·P numbers, O(K·P).
3. Digits (bundled scikit-learn data, MLP 64-100-10): test accuracy, NLL, ECE of MAP, the final
   SGD iterate, SWA, SWAG-Diag, SWAG and Multi-SWAG (M = 5).
"""
from __future__ import annotations

import sys
import time

import pyro
import torch

import pyro_bdl as bdl
from pyro_bdl.cli import mlp
from pyro_bdl.inference.data import FitData
from pyro_bdl.inference.swag import train_swag


def _guide(model, data, rank):
    guide = bdl.guides.SWAG(model, rank=rank)
    x0, y0 = next(iter(data.epoch()))
    with pyro.settings.context(module_local_params=True):
        guide.setup(x0, y0, data.dataset_size)
    return guide


def cost_table(repeats: int = 3, epochs: int = 10, rank: int = 20) -> list:
    ds = bdl.data.load_dataset("digits", seed=0)
    rows = []
    for hidden in ([100], [512, 512], [1024, 1024]):
        torch.manual_seed(0)
        model = bdl.BayesianModel(mlp(ds.num_features, hidden, 10, "relu"), prior=bdl.priors.Gaussian(0.0, 1.0),
                                  likelihood=bdl.likelihoods.Categorical())
        data = FitData(model, ds.x_train, ds.y_train, batch_size=64)
        times = {False: [], True: []}
        for _ in range(repeats):
            for collect in (False, True):  # interleaved, so load on the machine hits both alike
                guide = _guide(model, data, rank)
                start = time.perf_counter()
                train_swag(guide, data, epochs=epochs, swa_start=epochs // 2, lr=0.05, swa_lr=0.01, momentum=0.9,
                           seed=0, progress=False, collect=collect)
                times[collect].append(time.perf_counter() - start)
        guide = _guide(model, data, rank)
        theta = guide.loc.detach()
        start = time.perf_counter()
        for _ in range(50):
            guide.collect(theta)
        per_collect = (time.perf_counter() - start) / 50
        P = guide.num_parameters
        state = sum(b.numel() * b.element_size() for b in guide.buffers())
        sgd, swag = min(times[False]), min(times[True])
        rows.append({"hidden": "-".join(map(str, hidden)), "P": P, "sgd_s": sgd, "swag_s": swag,
                     "overhead_pct": 100 * (swag / sgd - 1), "collect_ms": 1000 * per_collect,
                     "epoch_ms": 1000 * sgd / epochs, "state_mb": state / 2 ** 20,
                     "state_over_P": state / (P * guide.swa_mean.element_size())})
    return rows


def digits_table(lr: float = 0.05, swa_lr: float = 0.01, epochs: int = 60, swa_start: int = 40, rank: int = 20,
                 num_models: int = 5, seed: int = 0, include_map: bool = True) -> list:
    ds = bdl.data.load_dataset("digits", seed=0)

    def model():
        torch.manual_seed(seed)
        return bdl.BayesianModel(mlp(ds.num_features, [100], 10, "relu"), prior=bdl.priors.Gaussian(0.0, 1.0),
                                 likelihood=bdl.likelihoods.Categorical())

    loader = ds.loader(batch_size=64, seed=seed)
    options = dict(epochs=epochs, swa_start=swa_start, lr=lr, swa_lr=swa_lr, rank=rank, seed=seed, progress=False)
    rows = []

    def evaluate(name, post, seconds, num_samples=30):
        m = bdl.metrics.evaluate(post, ds.x_test, ds.y_test, num_samples=num_samples)
        rows.append({"method": name, **m, "fit_s": seconds})

    if include_map:
        m = model()
        start = time.perf_counter()
        post = bdl.fit(m, ds.x_train, ds.y_train, method="map", num_steps=3000, lr=0.01, seed=seed, progress=False)
        evaluate("MAP (Adam, method='map')", post, time.perf_counter() - start)

    m = model()
    start = time.perf_counter()
    swag = bdl.fit(m, loader, method="swag", **options)
    seconds = time.perf_counter() - start
    final = {k: v.unsqueeze(0).unsqueeze(0) for k, v in swag.guide.iterate().items()}
    evaluate("SGD final iterate", bdl.SamplesPosterior(m, final, "sgd"), seconds)
    evaluate("SWA", swag.with_variant("swa"), seconds)
    evaluate("SWAG-Diag", swag.with_variant("diagonal"), seconds)
    evaluate("SWAG", swag, seconds)

    m = model()
    start = time.perf_counter()
    multi = bdl.fit(m, loader, method="multiswag", num_models=num_models, **options)
    evaluate(f"Multi-SWAG (M={num_models})", multi, time.perf_counter() - start, num_samples=30 * num_models)
    return rows


def _print(rows, columns):
    print(" | ".join(f"{c:>12s}" for c in columns))
    for r in rows:
        print(" | ".join(f"{r[c]:>12.4g}" if isinstance(r[c], float) else f"{str(r[c]):>12s}" for c in columns))


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(1)  # both arms alike; the shared machine makes multi-threaded timings erratic
    print("SWAG collection cost over plain SGD (same epochs, schedule and data order; min of interleaved runs)")
    cost = cost_table()
    _print(cost, ["hidden", "P", "sgd_s", "swag_s", "overhead_pct", "epoch_ms", "collect_ms", "state_mb",
                  "state_over_P"])
    print("state_over_P = SWAG state / P numbers = K + 2 (K = 20): memory O(K·P)")
    out = {"cost": cost}
    if "--digits" in argv:
        for i, (lr, swa_lr) in enumerate([(0.05, 0.01), (0.1, 0.1)]):
            print(f"\nDigits (MLP 64-100-10, batch 64, 60 epochs, swa_start 40, K = 20, lr {lr}, swa_lr {swa_lr}; "
                  "450 test images)")
            out[f"digits_lr{lr}"] = rows = digits_table(lr, swa_lr, include_map=i == 0)
            _print(rows, ["method", "accuracy", "nll", "ece", "brier", "fit_s"])
    return out


if __name__ == "__main__":
    main()
