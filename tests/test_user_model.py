"""``fit`` on a user's own lift-based Pyro model (`pyro_bdl.model.user_model`).

The user model below is Bayesian linear regression written in Pyro; the same model as a
`BayesianModel` has the closed-form posterior of tests/blr.py. They must have the same tempered,
dataset-size-scaled log joint (checked exactly), and each method must recover the closed form.
"""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_bdl as bdl
from pyro_bdl.model.user_model import PyroModel

from blr import as_matrix, assert_gaussian_close, make_blr


def blr_user_model(b, net):
    def user_model(x, y=None):
        f = bdl.lift(net, prior=bdl.priors.Gaussian(0.0, b.prior_scale))
        out = f(x).squeeze(-1)
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(out, b.noise), obs=y)
    return user_model


def _pair(b, temperature=1.0, tempering="posterior"):
    model = b.model(temperature, tempering)
    user = PyroModel(blr_user_model(b, model.net), b.x, b.y, temperature=temperature, tempering=tempering)
    return model, user


@pytest.mark.parametrize("temperature,tempering", [(1.0, "posterior"), (0.3, "posterior"), (0.5, "likelihood")])
def test_same_tempered_minibatch_log_joint_as_bayesian_model(temperature, tempering):
    b = make_blr(n=30)
    model, user = _pair(b, temperature, tempering)
    assert user.weight_sites == model.weight_sites and user.observed == ("y",) and user.likelihood_sites == ()
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        values = {"weight": torch.randn(1, 2, generator=g), "bias": torch.randn(1, generator=g)}
        for rows, N in ((slice(0, 30), None), (slice(3, 13), 30)):
            x, y = b.x[rows], b.y[rows]
            assert torch.allclose(user.log_joint(values, x, y, N), model.log_joint(values, x, y, N), rtol=1e-6)


@pytest.mark.parametrize("method,options", [
    pytest.param("nuts", dict(backend="pyro", num_samples=300, warmup=150), marks=pytest.mark.slow),
    ("sgld", dict(batch_size=10, epochs=200)),  # the SG-MCMC default before it was stated in steps (600 steps)
    pytest.param("svi", dict(num_steps=1500), marks=pytest.mark.slow),
])
def test_user_model_recovers_the_closed_form(method, options):
    """Default options (minibatches for SGLD): the posterior of the Pyro-written BLR is the closed form."""
    b = make_blr(n=30)
    model, user = _pair(b)
    post = bdl.fit(user.fn, b.x, b.y, method=method, seed=0, **options)
    assert isinstance(post.model, PyroModel)
    draws = post.sample(1000, seed=0) if method == "svi" else post.sample()
    mean, cov = b.posterior()
    tol = dict(nuts=(0.35, 0.35), sgld=(0.8, 0.6), svi=(0.35, 0.6))[method]
    assert_gaussian_close(*_moments(draws), mean, cov, *tol)
    pred = post.predict(b.x[:5])
    assert pred.mean.shape == (5,) and torch.isfinite(pred.variance).all()


def _moments(draws):
    m = as_matrix(draws)
    return m.mean(0), torch.cov(m.T)


@pytest.mark.parametrize("method,options", [
    ("map", dict(num_steps=300, lr=0.05)), ("svi", dict(num_steps=300, lr=0.05)),
    ("nuts", dict(backend="pyro", num_samples=40, warmup=40)), ("swag", dict(batch_size=10, epochs=20)),
    ("sghmc", dict(batch_size=10, epochs=200)),
    ("csgmcmc", dict(batch_size=10, epochs=200)), ("ensemble", dict(num_models=2, num_steps=300, lr=0.05)),
])
def test_user_model_every_gradient_method_runs_near_the_posterior(method, options):
    b = make_blr(n=30)
    model, user = _pair(b)
    post = bdl.fit(user.fn, b.x, b.y, method=method, seed=0, **options)
    mean, cov = b.posterior()
    m = as_matrix(post.sample(200, seed=0) if method in ("swag", "svi") else post.sample())
    z = ((m.mean(0) - mean) / cov.diag().sqrt()).abs().max()
    assert z < 1.5, f"{method}: mean {m.mean(0)} vs {mean}"
    assert post.predict(b.x[:3]).mean.shape == (3,)


def test_user_model_with_a_hyperprior_and_learned_noise_and_temperature():
    b = make_blr(n=30)
    net = torch.nn.Linear(2, 1)

    def user_model(x, y=None):
        scale = pyro.sample("prior_scale", dist.LogNormal(0.0, 0.5))
        noise = pyro.sample("noise", dist.HalfNormal(1.0))
        out = bdl.lift(net, prior=bdl.priors.Gaussian(0.0, scale))(x).squeeze(-1)
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, noise), obs=y)

    post = bdl.fit(user_model, b.x, b.y, method="sgld", batch_size=10, epochs=60, seed=0, temperature=0.5)
    assert post.model.temperature == 0.5 and set(post.model.likelihood_sites) == {"prior_scale", "noise"}
    draws = post.sample()
    assert draws["noise"].min() > 0 and 0.2 < draws["noise"].mean() < 1.2
    assert post.predict(b.x[:3]).mean.shape == (3,)


def test_clear_errors_for_models_fit_cannot_take():
    b = make_blr(n=10)
    net = torch.nn.Linear(2, 1)

    def unobserved(x, y=None):
        out = bdl.lift(net)(x).squeeze(-1)
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, 0.1))

    def no_latent(x, y=None):
        out = net(x).squeeze(-1)
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, 0.1), obs=y)

    def no_network(x, y=None):
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(w * x[:, 0], 0.1), obs=y)

    def inside_plate(x, y=None):  # weights sampled inside the data plate: one set per data point
        f = bdl.lift(net)
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(f(x).squeeze(-1), 0.1), obs=y)

    with pytest.raises(ValueError, match="called inside a plate"):
        bdl.fit(inside_plate, b.x, b.y, method="map")
    with pytest.raises(ValueError, match="observes nothing"):
        bdl.fit(unobserved, b.x, b.y, method="map")
    with pytest.raises(TypeError, match="calls no lifted network"):
        bdl.fit(no_latent, b.x, b.y, method="map")
    with pytest.raises(TypeError, match="calls no lifted network"):
        bdl.fit(no_network, b.x, b.y, method="map")
    with pytest.raises(TypeError, match="torch.nn.Module: wrap it"):
        bdl.fit(net, b.x, b.y, method="map")
    with pytest.raises(TypeError, match="BayesianModel or your own Pyro model"):
        bdl.fit("model", b.x, b.y, method="map")
    with pytest.raises(ValueError, match="failed"):
        bdl.fit(lambda x, y=None: 1 / 0, b.x, b.y, method="map")


def test_no_latent_sites_is_a_clear_error():
    b = make_blr(n=10)
    net = torch.nn.Linear(2, 1)

    def all_fixed(x, y=None):  # the lifted network's weights are conditioned away: nothing latent
        f = bdl.lift(net)
        with pyro.condition(data={"weight": net.weight.detach(), "bias": net.bias.detach()}):
            out = f(x).squeeze(-1)
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, 0.1), obs=y)

    with pytest.raises(ValueError, match="no latent sample sites"):
        bdl.fit(all_fixed, b.x, b.y, method="map")
