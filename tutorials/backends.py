"""Two NUTS backends, one model: Pyro on the torch network vs NumPyro on its JAX translation.

The same [`pyro_bdl.BayesianModel`][pyro_bdl.BayesianModel] — a small tanh network with N(0, 1) priors and a
Gaussian likelihood — is sampled by NUTS twice on the 1-D regression with a gap
(`pyro_bdl.data.gap_regression`):

* ``backend="pyro"``: Pyro's NUTS evaluates the torch network step by step;
* ``backend="numpyro"``: the network is translated once into a JAX function
  ([`pyro_bdl.backends.to_jax`][pyro_bdl.backends.to_jax]) and NumPyro's NUTS runs compiled by XLA.

Both return the same kind of [`SamplesPosterior`][pyro_bdl.SamplesPosterior] with the same site
names, so prediction, saving and diagnostics do not care which backend produced it. The
tutorial plots the two predictive bands (they should agree, and widen inside the gap and
beyond the data) and reports wall time, compilation time, time per leapfrog step and
effective samples per second of the predictions at a few test inputs. The default (small)
runs are dominated by compilation and too short for a meaningful ESS; ``--full`` runs long
enough for ESS/s to show the difference (see also ``benchmarks/bench_numpyro.py``).

Run ``python tutorials/backends.py`` (small, ~40 s of CPU time) or ``--full``.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Dict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import pyro_bdl as bdl  # noqa: E402


def min_bulk_ess(f: torch.Tensor) -> float:
    """Minimum bulk ESS over inputs of predictions ``f`` shaped (chains, draws, inputs)."""
    import arviz as az

    f = f.numpy()
    return float(min(az.ess(np.ascontiguousarray(f[..., i]), method="bulk") for i in range(f.shape[-1])))


def main(full: bool = False, out_dir: str = "tutorials/figures") -> Dict[str, Dict[str, float]]:
    data = bdl.data.gap_regression(n=80, noise=0.1, seed=0)
    hidden = 20 if full else 10
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
    model = bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Gaussian(0.1))

    # Same sampler settings for both; the Pyro backend gets a smaller budget because it is much slower.
    depth = 10 if full else 6
    settings = {
        "numpyro": dict(num_chains=4 if full else 2, warmup=1000 if full else 100, num_samples=1000 if full else 100),
        "pyro": dict(num_chains=1, warmup=100 if full else 30, num_samples=100 if full else 30),
    }
    x_grid = data.x_test
    probe = torch.linspace(-2.8, 2.8, 8).unsqueeze(-1)  # where ESS of the predictions is measured
    results, bands = {}, {}
    for backend, kw in settings.items():
        start = time.perf_counter()
        post = bdl.fit(model, data.x_train, data.y_train, method="nuts", backend=backend, max_tree_depth=depth,
                       seed=0, progress=False, **kw)
        wall = time.perf_counter() - start
        pred = post.predict(x_grid)
        with torch.no_grad():
            f_probe = model.forward({k: post.samples[k] for k in model.weight_sites}, probe)[..., 0]
        ess = min_bulk_ess(f_probe)
        in_gap = (x_grid[:, 0] > -0.5) & (x_grid[:, 0] < 1.0)
        on_data = ((x_grid[:, 0] > -2) & (x_grid[:, 0] < -0.5)) | ((x_grid[:, 0] > 1.0) & (x_grid[:, 0] < 2))
        sd = pred.variance.sqrt()
        # Time per leapfrog step (= per gradient evaluation), compilation excluded: the cost NUTS pays over and
        # over, independent of how long the run is. Warmup steps are assumed to be as long as the kept ones.
        steps = post.sample_stats["num_steps"].double().mean().item() * kw["num_chains"] * (kw["warmup"] + kw["num_samples"])
        compile_s = float(post.info.get("compile_time", 0.0))
        bands[backend] = (pred.mean, pred.quantile(0.025), pred.quantile(0.975))
        results[backend] = {
            "wall_s": wall,
            "compile_s": compile_s,
            "ms_per_leapfrog_step": 1e3 * (wall - compile_s) / steps,
            "draws": kw["num_chains"] * kw["num_samples"],
            "min_bulk_ess": ess,
            "ess_per_s": ess / wall,
            "divergences": int(post.sample_stats["diverging"].sum()),
            "sd_on_data": float(sd[on_data].mean()),
            "sd_in_gap": float(sd[in_gap].mean()),
            "rmse_test_on_data": float((pred.mean[on_data] - data.y_test[on_data]).pow(2).mean().sqrt()),
        }
    diff = (bands["numpyro"][0] - bands["pyro"][0]).abs()
    on_data = ((x_grid[:, 0] > -2) & (x_grid[:, 0] < -0.5)) | ((x_grid[:, 0] > 1.0) & (x_grid[:, 0] < 2))
    results["comparison"] = {
        "speedup_ess_per_s": results["numpyro"]["ess_per_s"] / results["pyro"]["ess_per_s"],
        "speedup_per_leapfrog_step": results["pyro"]["ms_per_leapfrog_step"] / results["numpyro"]["ms_per_leapfrog_step"],
        "max_mean_diff_on_data": float(diff[on_data].max()),
    }

    os.makedirs(out_dir, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, (backend, (mean, lo, hi)) in zip(axes, bands.items()):
        r = results[backend]
        ax.axvspan(-0.5, 1.0, color="0.92", label="gap (no data)")
        ax.fill_between(x_grid[:, 0], lo, hi, alpha=0.3, label="95% predictive interval")
        ax.plot(x_grid[:, 0], mean, label="predictive mean")
        ax.scatter(data.x_train[:, 0], data.y_train, s=8, color="k", label="training data")
        ax.set_title(f"backend={backend!r}: {r['draws']} draws in {r['wall_s']:.0f} s "
                     f"({r['compile_s']:.0f} s compiling), {r['ms_per_leapfrog_step']:.2g} ms/leapfrog step", fontsize=9)
        ax.set_xlabel("x")
    axes[0].set_ylabel("y")
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"NUTS on a 1-{hidden}-1 tanh BNN: a leapfrog step is "
                 f"{results['comparison']['speedup_per_leapfrog_step']:.0f}× faster on the NumPyro backend "
                 f"({results['comparison']['speedup_ess_per_s']:.1f}× the ESS/s here, compilation included)")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "backends_predictive.png"), dpi=110)
    plt.close(fig)

    print(f"{'backend':<8} {'draws':>6} {'wall s':>8} {'compile s':>10} {'ms/step':>8} {'min ESS':>8} {'ESS/s':>8} "
          f"{'sd data':>8} {'sd gap':>8}")
    for backend in settings:
        r = results[backend]
        print(f"{backend:<8} {r['draws']:>6} {r['wall_s']:>8.1f} {r['compile_s']:>10.1f} "
              f"{r['ms_per_leapfrog_step']:>8.3g} {r['min_bulk_ess']:>8.0f} {r['ess_per_s']:>8.3g} "
              f"{r['sd_on_data']:>8.3f} {r['sd_in_gap']:>8.3f}")
    c = results["comparison"]
    print(f"speed-up per leapfrog step: {c['speedup_per_leapfrog_step']:.0f}×; ESS/s (compilation included, tiny "
          f"runs are dominated by it): {c['speedup_ess_per_s']:.1f}×; largest difference of the predictive means "
          f"where there is data: {c['max_mean_diff_on_data']:.3f}")
    return results


if __name__ == "__main__":
    main(full="--full" in sys.argv)
