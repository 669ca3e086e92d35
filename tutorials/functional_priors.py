"""Tutorial: function-informed priors — choose weight priors by what they say about functions.

A weight prior is only a means to a prior over functions (Wilson & Izmailov 2020). Here we

1. fit the per-layer prior scales of a tanh MLP so that its prior over functions matches a GP
   with an RBF kernel (Tran et al. 2022), and plot prior function draws before (iid N(0, 1),
   fan-in N(0, 1/fan_in)) and after fitting, next to GP draws and the random-Fourier-feature
   cosine network whose prior *is* that GP (no fitting);
2. on the bundled diabetes regression data, pick the target GP's hyperparameters by maximising
   its marginal likelihood (empirical Bayes, as Tran et al. do for UCI data), fit the network prior to
   that GP at the training inputs, and compare the test negative log predictive density (NLL) of
   Bayesian neural networks with the fitted prior, an iid N(0, 1) prior and a fan-in prior.

Inference for part 2: mean-field SVI for a few hundred steps by default (fast, runs in the tests);
with ``--full``, NUTS on the NumPyro backend (2 chains of 500 warm-up + 500 draws on a 10-16-1 tanh
net) over 5 random train/test splits.

    python tutorials/functional_priors.py [--full]
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
from pyro_bdl.examples.networks import mlp  # noqa: E402
from pyro_bdl.priors import FanInGaussian, Gaussian  # noqa: E402
from pyro_bdl.function_priors import GP, Box, FunctionalPrior  # noqa: E402


def empirical_bayes_gp(x: torch.Tensor, y: torch.Tensor):
    """RBF GP hyperparameters by type-II maximum likelihood (scikit-learn), and its test predictor."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import RBF, ConstantKernel, WhiteKernel

    kernel = ConstantKernel(1.0) * RBF(3.0) + WhiteKernel(0.5)
    gpr = GaussianProcessRegressor(kernel, random_state=0).fit(x.numpy(), y.numpy())
    k = gpr.kernel_
    gp = GP("rbf", lengthscale=float(k.k1.k2.length_scale), variance=float(k.k1.k1.constant_value))
    return gp, gpr, float(k.k2.noise_level)


def gp_nll(gpr, noise: float, x: torch.Tensor, y: torch.Tensor) -> float:
    """Test NLL of the exact GP regression posterior predictive (the target itself, for reference)."""
    mu, sd = gpr.predict(x.numpy(), return_std=True)  # sd includes the white-noise term
    var = np.maximum(sd ** 2, 1e-9)
    return float(np.mean(0.5 * np.log(2 * np.pi * var) + 0.5 * (y.numpy() - mu) ** 2 / var))


def part1_prior_draws(full: bool, out_dir: str) -> Dict[str, float]:
    torch.manual_seed(0)
    net = mlp(1, [50, 50], 1, "tanh")
    gp, box = GP("rbf", lengthscale=1.0, variance=1.0), Box(-3.0, 3.0)
    fitted = FunctionalPrior.fit(net, gp, box, steps=1000 if full else 150, seed=0, num_samples=128,
                                 num_points=40, lr=0.08, eval_samples=256, eval_repeats=2)
    print(fitted)
    rff_net, rff_prior = bdl.function_priors.rff_network(1, 500, lengthscale=1.0, variance=1.0)
    grid = torch.linspace(-3, 3, 200).unsqueeze(-1)
    panels = [
        ("iid N(0, 1)", bdl.function_priors.prior_predictive(net, Gaussian(0.0, 1.0), grid, 8, seed=1)),
        ("fan-in N(0, 1/fan_in)", bdl.function_priors.prior_predictive(net, FanInGaussian(1.0), grid, 8, seed=1)),
        ("fitted to the GP", bdl.function_priors.prior_predictive(net, fitted, grid, 8, seed=1)),
        ("GP(RBF, ℓ=1, σ²=1)", gp.sample(grid, 8, torch.Generator().manual_seed(1)).unsqueeze(-1)),
        ("RFF cosine net, H=500", bdl.function_priors.prior_predictive(rff_net, rff_prior, grid, 8, seed=1)),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), sharex=True)
    for ax, (title, f) in zip(axes, panels):
        ax.plot(grid.squeeze(-1), f.squeeze(-1).T, lw=1)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(-4, 4)
        ax.set_xlabel("x")
    axes[0].set_ylabel("f(x)  (iid N(0,1): clipped)")
    fig.suptitle("prior function draws of a 1-50-50-1 tanh MLP, before and after fitting to a GP", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "functional_prior_draws.png"), dpi=120)
    plt.close(fig)

    check = dict(num_samples=512, num_points=40, seed=123, num_repeats=3)
    out, floor = {}, 0.0
    for name, n, p in (("iid", net, Gaussian(0.0, 1.0)), ("fan_in", net, FanInGaussian(1.0)), ("fitted", net, fitted),
                       ("rff", rff_net, rff_prior)):
        d = bdl.function_priors.function_distance(n, p, gp, box, **check)
        out[name], floor = d["distance"], d["floor"]
    out["floor"] = floor  # GP vs GP with the same inputs and number of draws
    print("held-out Gaussian W2 to the GP: " + ", ".join(f"{k} {v:.3f}" for k, v in out.items()))
    return out


def part2_diabetes(full: bool) -> Dict[str, object]:
    method = "nuts" if full else "svi"
    hidden = 16
    options = (dict(num_samples=500, warmup=500, num_chains=2, backend="numpyro") if full
               else dict(num_steps=400, lr=0.02, num_particles=2))
    seeds = (0, 1, 2, 3, 4) if full else (0,)
    rows = []
    for split in seeds:
        ds = bdl.data.load_dataset("diabetes", seed=split, train_size=100)
        gp, gpr, noise = empirical_bayes_gp(ds.x_train, ds.y_train)
        torch.manual_seed(split)
        net = mlp(ds.num_features, [hidden], 1, "tanh")
        fitted = FunctionalPrior.fit(net, gp, ds.x_train, steps=500 if full else 100, seed=split, num_samples=128,
                                     num_points=64, eval_samples=256, eval_repeats=2)
        rows.append({"split": split, "prior": "exact GP (target, reference)", "nll": gp_nll(gpr, noise, ds.x_test, ds.y_test),
                     "rmse": float(np.sqrt(np.mean((gpr.predict(ds.x_test.numpy()) - ds.y_test.numpy()) ** 2)))})
        for name, prior in (("fitted to GP", fitted), ("iid N(0,1)", Gaussian(0.0, 1.0)),
                            ("fan-in", FanInGaussian(1.0))):
            model = bdl.BayesianModel(net, prior=prior, likelihood=bdl.likelihoods.Gaussian(scale=None))
            start = time.perf_counter()
            post = bdl.fit(model, ds.x_train, ds.y_train, method=method, seed=split, progress=False, **options)
            m = bdl.metrics.evaluate(post, ds.x_test, ds.y_test, num_samples=1000 if full else 100)
            rows.append({"split": split, "prior": name, "nll": m["nll"], "rmse": m["rmse"],
                         "coverage_90": m["coverage_90"], "seconds": time.perf_counter() - start})
            print(f"split {split} {name:<14} {method}: NLL {m['nll']:.3f}  RMSE {m['rmse']:.3f}  "
                  f"90% coverage {m['coverage_90']:.2f}  ({rows[-1]['seconds']:.0f} s)", flush=True)
    summary = {}
    for name in dict.fromkeys(r["prior"] for r in rows):
        nll = [r["nll"] for r in rows if r["prior"] == name]
        rmse = [r["rmse"] for r in rows if r["prior"] == name]
        summary[name] = {"nll": float(np.mean(nll)), "nll_se": float(np.std(nll) / max(1, len(nll) - 1) ** 0.5),
                         "rmse": float(np.mean(rmse))}
    print(f"\ndiabetes (100 training points, {len(seeds)} split(s)), 10-{hidden}-1 tanh BNN, {method}:")
    print(f"{'prior':<30}{'test NLL':>10}{'± se':>8}{'RMSE':>8}")
    for name, s in summary.items():
        print(f"{name:<30}{s['nll']:>10.3f}{s['nll_se']:>8.3f}{s['rmse']:>8.3f}")
    return {"method": method, "rows": rows, "summary": summary}


def main(full: bool = False, out_dir: str = "tutorials/figures") -> dict:
    os.makedirs(out_dir, exist_ok=True)
    distances = part1_prior_draws(full, out_dir)
    diabetes = part2_diabetes(full)
    return {"distances": distances, **diabetes}


if __name__ == "__main__":
    main(full="--full" in sys.argv)
