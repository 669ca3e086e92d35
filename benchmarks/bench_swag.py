"""SWAG benchmarks: the cost of collection over plain SGD, memory, and the digits table.

    python benchmarks/bench_swag.py            # cost + memory (about a minute)
    python benchmarks/bench_swag.py --digits   # also MAP / SWA / SWAG / Multi-SWAG on digits (~10 min)
    python benchmarks/bench_swag.py --augmented-only   # only table 4 (~1 min)
    python benchmarks/bench_swag.py --digits-mi [--held-out]  # only table 5 (~3 min)

1. Cost: the same SGD run (same epochs, schedule, data order) with and without SWAG
   collection, side by side and interleaved, for MLPs of growing size P. Collection is one
   O(K·P) update per epoch after ``swa_start``, so its overhead should be far below 10%.
2. Memory: the SWAG state is θ̄, Σ(θ−θ̄)² and D (K × P): (K + 2)·P numbers, O(K·P).
3. Digits (bundled scikit-learn data, MLP 64-100-10): test accuracy, NLL, ECE of MAP, a deep
   ensemble (M = 5, Adam), the final SGD iterate, SWA, SWAG-Diag, SWAG and Multi-SWAG (M = 5).
4. Multi-SWAG vs deep ensemble at defaults (``swa_lr="auto"``), with and without ±1-pixel shift
   augmentation: digits 500 training images, MLP 64-32-10, N(0, 1), batch 50, 40 epochs, M = 3,
   seeds 0 and 1, 90 predictive draws (``--augmented`` adds it to the cost run; ``--held-out`` uses
   1000 images, 64 hidden units and seeds 2, 3).
5. Predictive mutual information of SWAG and SGHMC at defaults, T = 1 and 0.1: digits 1000 training
   images, MLP 64-32-10 batch 100 (``--held-out``: 500 images, 64 hidden units, seed 1, batch 50), default lengths.
"""
from __future__ import annotations

import sys
import time
from typing import Optional

import pyro
import torch

import pyro_bdl as bdl
from pyro_bdl.examples.networks import mlp
from pyro_bdl.infer.data import FitData
from pyro_bdl.infer.swag import train_swag


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
                 num_models: int = 5, seed: int = 0, include_baselines: bool = True) -> list:
    """Test metrics on digits. Single-run rows (SGD final iterate, SWA, SWAG-Diag, SWAG) are the mean
    (and sd, ``nll_sd``) over the M SWAG runs that make up Multi-SWAG (seeds ``seed + m``): one run
    alone varies by ±15% in NLL with its initialisation and data order."""
    ds = bdl.data.load_dataset("digits", seed=0)

    def model():
        torch.manual_seed(seed)
        return bdl.BayesianModel(mlp(ds.num_features, [100], 10, "relu"), prior=bdl.priors.Gaussian(0.0, 1.0),
                                 likelihood=bdl.likelihoods.Categorical())

    # Tensors + batch_size: every fit shuffles with its own seed, whatever ran before it.
    data = dict(x=ds.x_train, y=ds.y_train, batch_size=64)
    rows = []

    def metrics(post, num_samples=30):
        return bdl.metrics.evaluate(post, ds.x_test, ds.y_test, num_samples=num_samples)

    if include_baselines:
        m = model()
        start = time.perf_counter()
        post = bdl.fit(m, ds.x_train, ds.y_train, method="map", num_steps=3000, lr=0.01, seed=seed, progress=False)
        rows.append({"method": "MAP (Adam, method='map')", **metrics(post), "nll_sd": 0.0,
                     "fit_s": time.perf_counter() - start})
        m = model()
        start = time.perf_counter()
        post = bdl.fit(m, method="ensemble", num_models=num_models, epochs=epochs, lr=0.01, seed=seed, progress=False,
                       **data)
        rows.append({"method": f"Deep ensemble (M={num_models})", **metrics(post), "nll_sd": 0.0,
                     "fit_s": time.perf_counter() - start})

    m = model()
    start = time.perf_counter()
    multi = bdl.fit(m, method="multiswag", num_models=num_models, epochs=epochs, swa_start=swa_start, lr=lr,
                    swa_lr=swa_lr, rank=rank, seed=seed, progress=False, **data)
    seconds = time.perf_counter() - start
    singles = {"SGD final iterate (MAP by SGD)": [], "SWA": [], "SWAG-Diag": [], "SWAG": []}
    for member in multi.members:
        final = {k: v[None, None] for k, v in member.guide.iterate().items()}
        for name, post in zip(singles, (bdl.SamplesPosterior(m, final, "sgd"), member.with_variant("swa"),
                                        member.with_variant("diagonal"), member)):
            singles[name].append(metrics(post))
    for name, results in singles.items():
        mean = {k: sum(r[k] for r in results) / len(results) for k in results[0]}
        sd = (sum((r["nll"] - mean["nll"]) ** 2 for r in results) / (len(results) - 1)) ** 0.5
        rows.append({"method": f"{name}, mean of {num_models}", **mean, "nll_sd": sd, "fit_s": seconds / num_models})
    rows.append({"method": f"Multi-SWAG (M={num_models})", **metrics(multi, 30 * num_models), "nll_sd": 0.0,
                 "fit_s": seconds})
    return rows


def augmented_table(seeds=(0, 1), num_models: int = 3, epochs: int = 40, train_size: int = 500,
                    hidden: int = 32) -> list:
    """Multi-SWAG (defaults, auto rates) against a deep ensemble with the same M, epochs and batches.
    ``--held-out`` runs seeds 2, 3 with 1000 images and 64 hidden units instead."""
    ds = bdl.data.load_dataset("digits", seed=0, train_size=train_size)
    rows = []
    for augment in (False, True):
        for seed in seeds:
            for method in ("ensemble", "multiswag"):
                torch.manual_seed(seed)
                model = bdl.BayesianModel(mlp(ds.num_features, [hidden], 10, "relu"), prior=bdl.priors.Gaussian(0.0, 1.0),
                                          likelihood=bdl.likelihoods.Categorical())
                start = time.perf_counter()
                post = bdl.fit(model, ds.x_train, ds.y_train, method=method, batch_size=50,
                               num_chains=num_models,
                               epochs=epochs, seed=seed, progress=False,
                               augment=ds.shift_augmentation(1) if augment else None)
                seconds = time.perf_counter() - start
                r = bdl.metrics.evaluate(post, ds.x_test, ds.y_test, num_samples=90)
                rows.append({"augment": str(augment), "seed": str(seed), "method": method, "accuracy": r["accuracy"],
                             "nll": r["nll"], "ece": r["ece"], "fit_s": seconds})
    return rows


def mutual_information(post, x, num_samples: int = 40, seed: int = 0) -> float:
    """Mean predictive mutual information over the points, (1/n) Σᵢ [H(mean_s p_s(xᵢ)) − mean_s H(p_s(xᵢ))]
    (nats), from the posterior's draws' class probabilities (`BMAPredictive.draw_means`)."""
    p = post.predict(x, num_samples=num_samples, seed=seed).draw_means.clamp_min(1e-12)  # (S, n, C)
    bma = p.mean(0)
    return float((-(bma * bma.log()).sum(-1) + (p * p.log()).sum(-1).mean(0)).mean())


def digits_mi_table(train_size: int = 1000, hidden: int = 32, seed: int = 0, batch_size: int = 100,
                    temperatures=(1.0, 0.1), methods=("swag", "sghmc"), num_samples: int = 40,
                    epochs: Optional[int] = None) -> list:
    """SWAG's predictive spread against SGHMC's at the same T, both at defaults (issue 13, item 5: SWAG's
    mutual information at least a quarter of SGHMC's). Digits ``train_size`` images, MLP 64-``hidden``-10
    ReLU, N(0, 1), batch ``batch_size``, each method's default length (``epochs``: one length for both instead);
    SGHMC with 2 chains."""
    ds = bdl.data.load_dataset("digits", seed=0, train_size=train_size)
    rows = []
    for T in temperatures:
        for method in methods:
            torch.manual_seed(seed)
            model = bdl.BayesianModel(mlp(ds.num_features, [hidden], 10, "relu"), prior=bdl.priors.Gaussian(0.0, 1.0),
                                      likelihood=bdl.likelihoods.Categorical(), temperature=T)
            extra = ({"num_chains": 2} if method == "sghmc" else {}) | ({} if epochs is None else {"epochs": epochs})
            start = time.perf_counter()
            post = bdl.fit(model, ds.x_train, ds.y_train, method=method, batch_size=batch_size, seed=seed,
                           progress=False, **extra)
            seconds = time.perf_counter() - start
            r = bdl.metrics.evaluate(post, ds.x_test, ds.y_test, num_samples=num_samples)
            rows.append({"T": str(T), "method": method, "mi": mutual_information(post, ds.x_test, num_samples),
                         "accuracy": r["accuracy"], "nll": r["nll"], "fit_s": seconds})
    return rows


def _print(rows, columns):
    width = {c: max([12] + [len(r[c]) for r in rows if isinstance(r[c], str)]) for c in columns}
    print(" | ".join(f"{c:>{width[c]}s}" for c in columns))
    for r in rows:
        print(" | ".join(f"{r[c]:>{width[c]}.4g}" if isinstance(r[c], float) else f"{str(r[c]):>{width[c]}s}"
                         for c in columns))


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    torch.set_num_threads(1)  # both arms alike; the shared machine makes multi-threaded timings erratic
    if "--digits-mi" in argv:
        held_out = "--held-out" in argv
        size, hidden, seed, batch = (500, 64, 1, 50) if held_out else (1000, 32, 0, 100)
        print(f"Predictive mutual information, SWAG vs SGHMC at defaults (digits {size}, MLP 64-{hidden}-10, "
              f"batch {batch}, default lengths, seed {seed})")
        rows = digits_mi_table(size, hidden, seed, batch)
        _print(rows, ["T", "method", "mi", "accuracy", "nll", "fit_s"])
        return {"digits_mi": rows}
    if "--augmented-only" in argv or "--augmented" in argv:
        size = "1000, MLP 64-64-10, seeds 2-3" if "--held-out" in argv else "500, MLP 64-32-10, seeds 0-1"
        print(f"Multi-SWAG vs deep ensemble (digits {size}, batch 50, 40 epochs, M = 3, defaults)")
        rows = (augmented_table((2, 3), train_size=1000, hidden=64) if "--held-out" in argv else augmented_table())
        _print(rows, ["augment", "seed", "method", "accuracy", "nll", "ece", "fit_s"])
        if "--augmented-only" in argv:
            return {"augmented": rows}
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
            out[f"digits_lr{lr}"] = rows = digits_table(lr, swa_lr, include_baselines=i == 0)
            _print(rows, ["method", "accuracy", "nll", "nll_sd", "ece", "brier", "fit_s"])
    return out


if __name__ == "__main__":
    main()
