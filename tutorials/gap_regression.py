"""Tutorial: uncertainty that grows away from the data.

A Bayesian MLP is fitted to 1-D data with a gap in the inputs, by MAP, mean-field SVI and
NUTS. MAP has only the noise σ as its predictive spread; the Bayesian posteriors add the
spread of the functions they average over (the epistemic variance Var_s E[y | x, w_s]),
which is small where there are data and grows inside the gap and beyond the data's range.

The second half shows the same model written as ordinary Pyro code: the network is lifted
with ``bdl.lift`` inside a user's model, whose prior scale is itself a random variable.

Run: ``python tutorials/gap_regression.py`` (small) or ``--full``.
"""
from __future__ import annotations

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as dist  # noqa: E402
import torch  # noqa: E402

import pyro_bdl as bdl  # noqa: E402


def make_model(width: int) -> bdl.BayesianModel:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))
    return bdl.BayesianModel(net, prior=bdl.priors.FanInGaussian(scale=2.0, bias_scale=2.0),
                             likelihood=bdl.likelihoods.Gaussian(scale=0.1))


def region_std(pred: bdl.BMAPredictive, x: torch.Tensor, data) -> dict:
    """Mean epistemic std inside the gap, beyond the data, and among the training inputs."""
    sd = pred.epistemic_variance.sqrt()
    x = x.squeeze(-1)
    return {
        "data": float(sd[((x > -1.8) & (x < -0.7)) | ((x > 1.2) & (x < 1.8))].mean()),
        "gap": float(sd[(x > -0.2) & (x < 0.7)].mean()),
        "outside": float(sd[x.abs() > 2.5].mean()),
    }


def user_pyro_model(net: torch.nn.Module):
    """The same BNN declared in plain Pyro: a hyperprior on the weight scale, then the lifted network."""

    def model(x, y=None):
        scale = pyro.sample("prior_scale", dist.LogNormal(0.0, 0.5))
        f = bdl.lift(net, prior=bdl.priors.Gaussian(0.0, scale))
        out = f(x).squeeze(-1)
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, 0.1), obs=y)

    return model


def main(full: bool = False, out_dir: str = "tutorials/figures") -> dict:
    os.makedirs(out_dir, exist_ok=True)
    data = bdl.data.gap_regression(n=80 if full else 40)
    width = 50 if full else 10
    settings = {
        "map": dict(num_steps=3000 if full else 800, lr=0.02),
        "svi": dict(num_steps=6000 if full else 1500, lr=0.02, num_particles=4),
        # small: a capped tree depth keeps the test quick; the full run lets NUTS build its trees
        "nuts": dict(num_samples=500 if full else 60, warmup=500 if full else 60, num_chains=2 if full else 1,
                     max_tree_depth=10 if full else 5, init="map"),
    }
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), sharey=True)
    results = {}
    for ax, (method, options) in zip(axes, settings.items()):
        post = bdl.fit(make_model(width), data.x_train, data.y_train, method=method, seed=0, **options)
        pred = post.predict(data.x_test, num_samples=200)
        lo, hi = pred.interval(0.9)
        results[method] = region_std(pred, data.x_test, data)
        xs = data.x_test.squeeze(-1)
        ax.fill_between(xs, lo, hi, alpha=0.3, label="90% predictive")
        ax.plot(xs, pred.mean, lw=2, label="BMA mean")
        ax.scatter(data.x_train.squeeze(-1), data.y_train, s=8, c="k", label="data")
        ax.set_title(f"{method}: gap std {results[method]['gap']:.2f}, data std {results[method]['data']:.2f}")
        ax.set_xlabel("x")
    axes[0].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, "gap_regression.png"), dpi=120)
    plt.close(fig)

    # The same network in a user's own Pyro model, run with Pyro's NUTS directly.
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(1, width), torch.nn.Tanh(), torch.nn.Linear(width, 1))
    kernel = pyro.infer.NUTS(user_pyro_model(net), max_tree_depth=10 if full else 4)
    mcmc = pyro.infer.MCMC(kernel, num_samples=300 if full else 30, warmup_steps=300 if full else 30,
                           disable_progbar=not full)
    mcmc.run(data.x_train, data.y_train)
    results["user_model_prior_scale"] = float(mcmc.get_samples()["prior_scale"].mean())
    for method, r in results.items():
        print(method, r)
    return results


if __name__ == "__main__":
    main(full="--full" in sys.argv)
