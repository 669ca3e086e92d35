"""to_arviz for every registered inference method, and the InferenceData it builds.

SMALL_OPTIONS holds small settings for each method name in ``bdl.methods()``; a method that is
registered without an entry fails ``test_every_method_has_small_settings`` with instructions, so
methods merged later are covered automatically once they add a line here.
"""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import pyro_bdl as bdl  # noqa: E402
from pyro_bdl.diagnostics import to_arviz, weight_dims  # noqa: E402

az = pytest.importorskip("arviz")

# method name -> list of small option sets (each a separate test case)
SMALL_OPTIONS = {
    "map": [dict(num_steps=30)],
    "svi": [dict(guide=g, num_steps=30) for g in ("normal", "lowrank", "fullrank")],
    "nuts": [dict(num_samples=20, warmup=20, num_chains=2, max_tree_depth=4)],
    "hmc": [dict(num_samples=20, warmup=20, num_chains=2, num_steps=4)],
    # SG-MCMC: the plain kernel (these lr are plain step sizes). The adaptive kernel fits its step to one
    # full-batch gradient in a 1-step warm-up here and its loss jumps 450× (it did before too, unnoticed; the
    # SG-MCMC loop's divergence check now stops it: notes/issue-13-sgmcmc.md). This test is about to_arviz.
    "sgld": [dict(lr=1e-3 * 24, epochs=6, warmup=2, num_chains=2, preconditioner=None)],  # ε = lr/N, N = 24
    "sghmc": [dict(lr=1e-3 * 24, epochs=6, warmup=2, num_chains=2, preconditioner=None)],
    "csgmcmc": [dict(lr=0.05, epochs=20, cycles=2, exploration=0.5, samples_per_cycle=2, num_chains=2,
                     preconditioner=None)],
    "ensemble": [dict(num_models=3, num_steps=30)],
    "swag": [dict(batch_size=8, epochs=6, swa_start=3, lr=0.01, rank=3)],
    "multiswag": [dict(num_models=2, batch_size=8, epochs=6, swa_start=3, lr=0.01, rank=3)],
}

GROUPS = ("posterior", "posterior_predictive", "log_likelihood", "observed_data", "constant_data")
CASES = [(name, opts) for name in bdl.methods() for opts in SMALL_OPTIONS.get(name, [])]


def small_problem(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(24, 2, generator=g)
    y = torch.tanh(x[:, 0]) - 0.5 * x[:, 1] + 0.1 * torch.randn(24, generator=g)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    # learned noise: a likelihood site in the posterior group besides the weights
    model = bdl.BayesianModel(net, likelihood=bdl.likelihoods.Gaussian(scale=None))
    return model, x, y


def test_every_method_has_small_settings():
    missing = [name for name in bdl.methods() if name not in SMALL_OPTIONS]
    assert not missing, (f"inference method(s) {missing} are registered but have no entry in SMALL_OPTIONS in "
                         f"{__file__}; add small, fast options for them so to_arviz is tested on every method")


@pytest.mark.parametrize("method,options", CASES, ids=[f"{n}-{'-'.join(map(str, o.values()))}" for n, o in CASES])
def test_to_arviz_and_arviz_functions_run_for_every_method(method, options):
    model, x, y = small_problem()
    post = bdl.fit(model, x, y, method=method, seed=0, progress=False, **options)
    draws = post.draws_by_chain(50)
    C, D = next(iter(draws.values())).shape[:2]

    idata = post.to_arviz(x=x, y=y, num_samples=50)
    assert set(GROUPS) <= set(idata.groups())
    assert dict(idata.posterior.sizes)["chain"] == C and dict(idata.posterior.sizes)["draw"] == D
    assert set(draws) | {"prediction"} == set(idata.posterior.data_vars)
    assert idata.posterior["0.weight"].dims == ("chain", "draw", "0.out", "0.in")
    assert idata.posterior["2.bias"].dims == ("chain", "draw", "2.out")
    assert idata.log_likelihood["obs"].shape == (C, D, len(x))
    assert idata.posterior_predictive["obs"].shape == (C, D, len(x))
    np.testing.assert_allclose(idata.observed_data["obs"].values, y.numpy(), rtol=1e-6)
    if method in ("nuts", "hmc"):
        assert {"diverging", "acceptance_rate", "step_size", "n_steps", "tree_depth", "energy"} <= set(
            idata.sample_stats.data_vars)
    elif getattr(post, "sample_stats", None):  # e.g. SG-MCMC's per-draw step size and loss pass through
        assert set(post.sample_stats) <= set(idata.sample_stats.data_vars)

    summary = az.summary(idata, var_names=["0.weight", "noise_scale"])
    assert len(summary) == 6 + 1
    axes = az.plot_trace(idata, var_names=["2.bias", "noise_scale"])
    assert np.asarray(axes).shape == (2, 2)
    az.plot_rank(idata, var_names=["noise_scale"])
    plt.close("all")
    if C * D >= 2:
        loo = az.loo(idata)
        assert np.isfinite(loo.elpd_loo) and loo.n_data_points == len(x)
    else:  # a point estimate (MAP) has one draw: PSIS-LOO is undefined and ArviZ cannot compute it
        assert method == "map"


def test_log_likelihood_is_the_untempered_pointwise_likelihood():
    model, x, y = small_problem()
    post = bdl.fit(model.with_temperature(0.5), x, y, method="nuts", num_samples=10, warmup=10, num_chains=2,
                   max_tree_depth=4, progress=False)
    idata = post.to_arviz(x=x, y=y)
    c, d = 1, 7
    w = {k: v[c, d] for k, v in post.samples.items()}
    out = model.forward({k: w[k] for k in model.weight_sites}, x)[:, 0]
    expected = torch.distributions.Normal(out, w["noise_scale"]).log_prob(y)
    np.testing.assert_allclose(idata.log_likelihood["obs"].values[c, d], expected.double().numpy(), rtol=1e-5)
    np.testing.assert_allclose(idata.posterior["prediction"].values[c, d], out.double().numpy(), rtol=1e-5)
    np.testing.assert_allclose(idata.sample_stats["energy"].values, post.sample_stats["energy"].double().numpy())
    assert idata.posterior.attrs["method"] == "nuts" and idata.posterior.attrs["temperature"] == 0.5
    assert idata.attrs["inference_library"] == "pyro_bdl"


def test_guide_draws_are_one_chain_and_classification_groups():
    torch.manual_seed(0)
    x = torch.randn(30, 2)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 0] > 1).long()
    model = bdl.BayesianModel(torch.nn.Linear(2, 3), likelihood=bdl.likelihoods.Categorical())
    post = bdl.fit(model, x, y, method="svi", num_steps=30, progress=False)
    idata = to_arviz(post, x=x, y=y, num_samples=40, seed=3)
    assert dict(idata.posterior.sizes)["chain"] == 1 and dict(idata.posterior.sizes)["draw"] == 40
    assert idata.posterior["prediction"].dims == ("chain", "draw", "data", "class")
    np.testing.assert_allclose(idata.posterior["prediction"].sum("class").values, 1.0, rtol=1e-5)
    assert idata.posterior["weight"].dims == ("chain", "draw", "out", "in")
    assert set(np.unique(idata.posterior_predictive["obs"].values)) <= {0, 1, 2}
    # same seed, same draws
    again = to_arviz(post, x=x, y=y, num_samples=40, seed=3)
    np.testing.assert_array_equal(idata.posterior["weight"].values, again.posterior["weight"].values)
    assert np.isfinite(az.loo(idata).elpd_loo)
    # no inputs: only the posterior group
    bare = to_arviz(post, num_samples=5)
    assert bare.groups() == ["posterior"]
    with pytest.raises(ValueError, match="y needs its inputs"):
        to_arviz(post, y=y)


def test_weight_dims_are_named_after_the_layers():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 2))
    model = bdl.BayesianModel(net, likelihood=bdl.likelihoods.Categorical(), prefix="net")
    assert weight_dims(model, "net.0.weight", torch.Size([4, 1, 3, 3])) == [
        "net.0.out_channels", "net.0.in_channels", "net.0.kernel_0", "net.0.kernel_1"]
    assert weight_dims(model, "net.0.bias", torch.Size([4])) == ["net.0.out_channels"]
    assert weight_dims(model, "net.2.weight", torch.Size([2, 144])) == ["net.2.out", "net.2.in"]
    assert weight_dims(model, "noise_scale", torch.Size([])) == []
    assert weight_dims(model, "hyper", torch.Size([3])) == ["hyper_dim_0"]


def test_arviz_1x_from_dict_form_is_used_when_available(monkeypatch):
    """ArviZ 1.x's from_dict takes one dict of groups and per-group attrs; the adapter must speak it."""
    seen = {}

    def from_dict_1x(data, *, dims=None, attrs=None):
        seen.update(data=data, dims=dims, attrs=attrs)
        return "datatree"

    monkeypatch.setattr(az, "from_dict", from_dict_1x)
    model, x, y = small_problem()
    post = bdl.fit(model, x, y, method="map", num_steps=5, progress=False)
    assert post.to_arviz(x=x, y=y) == "datatree"
    assert set(GROUPS) == set(seen["data"])
    assert seen["data"]["log_likelihood"]["obs"].shape == (1, 1, len(x))
    assert seen["attrs"]["/"]["method"] == "map" and seen["attrs"]["posterior"]["inference_library"] == "pyro_bdl"
    assert seen["dims"]["0.weight"] == ["0.out", "0.in"]
