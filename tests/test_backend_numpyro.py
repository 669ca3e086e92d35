"""The NumPyro backend: identical log density, closed-form BLR posterior, same predictive as Pyro, errors."""
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

jax = pytest.importorskip("jax")
pytest.importorskip("numpyro")

import pyro_bdl as bdl  # noqa: E402
from pyro_bdl import likelihoods as L  # noqa: E402
from pyro_bdl import priors as P  # noqa: E402
from pyro_bdl.backends import NumPyroModel, UnsupportedOperationError, to_numpyro_distribution  # noqa: E402
from pyro_bdl.infer.mcmc import numpyro as numpyro_mcmc  # noqa: E402

STATS = {"diverging", "accept_prob", "step_size", "num_steps", "tree_depth", "energy"}


def mlp(d_in=2, hidden=5, d_out=1):
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, d_out))


def cnn(classes=3):
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(12, classes))


# name -> (network, input shape, likelihood, prior, temperature, tempering, extra model kwargs)
CASES = {
    "gauss_fixed_T1": (mlp, (20, 2), L.Gaussian(scale=0.3), None, 1.0, "posterior", {}),
    "gauss_fixed_cold_posterior": (mlp, (20, 2), L.Gaussian(scale=0.3), P.Gaussian(0.0, 0.7), 0.4, "posterior", {}),
    "learned_noise_likelihood_tempering": (mlp, (20, 2), L.Gaussian(scale=None), P.FanInGaussian(1.5), 0.3,
                                           "likelihood", {}),
    "heteroskedastic_warm": (lambda: mlp(d_out=2), (20, 2), L.Gaussian(scale=None, heteroskedastic=True),
                             P.Laplace(0.1, 0.5), 2.0, "posterior", {}),
    "student_learned_lognormal": (mlp, (20, 2), L.StudentT(df=3.0, scale=None, scale_prior=dist.LogNormal(-1.0, 0.5)),
                                  P.StudentT(4.0, 0.0, 0.8), 0.5, "posterior", {}),
    "vector_gaussian": (lambda: mlp(d_out=2), (20, 2), L.Gaussian(scale=0.5), dist.Normal(0.0, 0.5), 0.7,
                        "likelihood", {}),
    "categorical_per_parameter": (lambda: mlp(d_out=3), (20, 2), L.Categorical(),
                                  {"*.bias": P.Laplace(0.0, 0.3), nn.Linear: P.FanInGaussian(1.0)}, 0.25, "posterior",
                                  {}),
    "bernoulli_last_layer": (mlp, (20, 2), L.Bernoulli(), P.Gaussian(0.0, 2.0), 1.0, "posterior",
                             {"deterministic": "0.*"}),
    "cnn_batchnorm": (cnn, (10, 1, 4, 4), L.Categorical(), P.FanInGaussian(1.0), 0.5, "posterior", {}),
}


def _targets(lik, n, g):
    if isinstance(lik, L.Categorical):
        return torch.randint(0, 3, (n,), generator=g)
    if isinstance(lik, L.Bernoulli):
        return torch.randint(0, 2, (n,), generator=g).float()
    if isinstance(lik, L.Gaussian) and not lik.heteroskedastic and lik.scale == 0.5:
        return torch.randn(n, 2, generator=g)
    return torch.randn(n, generator=g)


@pytest.mark.parametrize("case", sorted(CASES))
def test_log_joint_equals_pyro(case):
    make, shape, lik, prior, T, mode, kwargs = CASES[case]
    torch.manual_seed(0)
    net = make()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    model = bdl.BayesianModel(net, prior=prior, likelihood=lik, temperature=T, tempering=mode, **kwargs)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(*shape, generator=g)
    y = lik.check_targets(_targets(lik, shape[0], g), model.forward(model.network.initial_weights(), x[:1]).shape[-1])
    nmodel = NumPyroModel(model)
    assert set(nmodel.sites) == set(model.latent_shapes(x))
    xj, yj = x.numpy(), y.numpy()
    log_joint = jax.jit(nmodel.log_joint, static_argnums=3)
    for seed in range(2):
        torch.manual_seed(seed)
        values = model.prior_sample(x) if seed else model.initial_values()
        for dataset_size in (None, 3 * shape[0]):
            with torch.no_grad():
                ref = float(model.log_joint(values, x, y, dataset_size))
            got = float(log_joint({k: v.numpy() for k, v in values.items()}, xj, yj, dataset_size))
            assert abs(got - ref) <= 1e-5 * abs(ref), (case, seed, dataset_size, got, ref)


def test_distribution_translation_and_unsupported_family():
    d = dist.Normal(torch.zeros(3), torch.ones(3)).expand((2, 3)).to_event(1)
    nd = to_numpyro_distribution(d, "w")
    assert nd.batch_shape == (2,) and nd.event_shape == (3,)
    with pytest.raises(ValueError, match="cannot translate the .*Delta.*backend='pyro'"):
        to_numpyro_distribution(dist.Delta(torch.zeros(3)), "w")


def test_model_errors_name_the_fix():
    x, y = torch.randn(10, 2), torch.randn(10)

    def hierarchical():
        return P.Gaussian(0.0, pyro.sample("prior_scale", dist.LogNormal(0.0, 1.0)))

    model = bdl.BayesianModel(mlp(), prior=hierarchical, likelihood=L.Gaussian(0.1))
    with pytest.raises(ValueError, match="function.*backend='pyro'"):
        bdl.fit(model, x, y, method="nuts", backend="numpyro", progress=False)

    class MyGaussian(L.Gaussian):
        pass

    model = bdl.BayesianModel(mlp(), likelihood=MyGaussian(0.1))
    with pytest.raises(ValueError, match="MyGaussian.*backend='pyro'"):
        bdl.fit(model, x, y, method="nuts", backend="numpyro", progress=False)


def test_bad_options_fail_before_sampling(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr(numpyro_mcmc, "sample_chains", boom)
    x, y = torch.randn(10, 2), torch.randn(10)
    model = bdl.BayesianModel(mlp(), likelihood=L.Gaussian(0.1))
    fit = lambda **kw: bdl.fit(model, x, y, method="nuts", progress=False, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="unknown backend"):
        fit(backend="jax")
    with pytest.raises(ValueError, match="chain_method applies to backend='numpyro'"):
        fit(backend="pyro", chain_method="vectorized")
    with pytest.raises(TypeError, match="jit_compile"):  # not an option: functional_call cannot be JIT-traced
        fit(backend="numpyro", jit_compile=True)
    with pytest.raises(ValueError, match="chain_method"):
        fit(backend="numpyro", chain_method="parallel-ish")
    with pytest.raises(ValueError, match="full data set"):
        fit(backend="numpyro", batch_size=5)
    with pytest.raises(ValueError, match="num_chains"):
        fit(backend="numpyro", num_chains=0)
    with pytest.raises(ValueError, match="unknown init"):
        fit(backend="numpyro", init="zeros")
    with pytest.raises(ValueError, match="not latent sites"):
        fit(backend="numpyro", init={"0.weight": torch.zeros(5, 2), "bogus": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        fit(backend="numpyro", init={"0.weight": torch.zeros(2, 5)})

    class Cumulative(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=-1)[:, :1]

    bad = bdl.BayesianModel(nn.Sequential(nn.Linear(2, 2), Cumulative()), likelihood=L.Gaussian(0.1))
    with pytest.raises(UnsupportedOperationError, match="cumsum.*'1'.*backend='pyro'"):
        bdl.fit(bad, x, y, method="nuts", backend="numpyro", progress=False)


# ----------------------------------------------------------------------------------------------
# Bayesian linear regression: the closed-form (tempered) posterior
# ----------------------------------------------------------------------------------------------
def blr_problem(n=30, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = x @ torch.tensor([1.0, -0.5]) + 0.3 + 0.5 * torch.randn(n, generator=g)
    return x, y


def blr_posterior(x, y, sigma, alpha, T, mode):
    """Mean and covariance of (w1, w2, b) under p_T(w|D); posterior tempering scales the covariance by T."""
    phi = np.concatenate([x.double().numpy(), np.ones((len(x), 1))], axis=1)
    lik_scale = 1.0 / T
    prior_scale = 1.0 / T if mode == "posterior" else 1.0
    precision = lik_scale * phi.T @ phi / sigma ** 2 + prior_scale * np.eye(3) / alpha ** 2
    cov = np.linalg.inv(precision)
    mean = cov @ (lik_scale * phi.T @ y.double().numpy() / sigma ** 2)
    return mean, cov


def check_blr(post, x, y, sigma, alpha, T, mode, tol_mean=0.15, tol_sd=0.12):
    mean, cov = blr_posterior(x, y, sigma, alpha, T, mode)
    s = post.flat_samples()
    theta = torch.cat([s["weight"].reshape(-1, 2), s["bias"].reshape(-1, 1)], dim=1).double().numpy()
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(theta.mean(0) - mean) < tol_mean * sd), (theta.mean(0), mean)
    assert np.all(np.abs(theta.std(0) / sd - 1) < tol_sd), (theta.std(0), sd)
    corr = cov / np.outer(sd, sd)
    assert np.all(np.abs(np.corrcoef(theta.T) - corr) < 0.1)


def blr_model(sigma, alpha, T, mode):
    return bdl.BayesianModel(nn.Linear(2, 1), prior=P.Gaussian(0.0, alpha), likelihood=L.Gaussian(scale=sigma),
                             temperature=T, tempering=mode)


def test_blr_closed_form_cold_posterior():
    torch.manual_seed(0)
    x, y = blr_problem()
    sigma, alpha, T = 0.5, 1.0, 0.5
    post = bdl.fit(blr_model(sigma, alpha, T, "posterior"), x, y, method="nuts", backend="numpyro", num_chains=2,
                   num_samples=1000, warmup=300, seed=0, progress=False)
    check_blr(post, x, y, sigma, alpha, T, "posterior")
    assert set(post.sample_stats) == STATS
    assert post.sample_stats["diverging"].shape == (2, 1000) and not post.sample_stats["diverging"].any()
    assert post.info["backend"] == "numpyro" and post.info["compile_time"] > 0
    # Tolerances catch a wrong temperature: the T = 1 posterior is √2 wider.
    with pytest.raises(AssertionError):
        check_blr(post, x, y, sigma, alpha, 1.0, "posterior")


@pytest.mark.slow
@pytest.mark.parametrize("T,mode,chain_method", [(1.0, "posterior", "vectorized"), (2.0, "likelihood", "sequential"),
                                                 (0.2, "likelihood", "sequential")])
def test_blr_closed_form_slow(T, mode, chain_method):
    torch.manual_seed(0)
    x, y = blr_problem(n=40, seed=1)
    sigma, alpha = 0.7, 0.8
    post = bdl.fit(blr_model(sigma, alpha, T, mode), x, y, method="nuts", backend="numpyro", num_chains=4,
                   num_samples=1500, warmup=500, seed=1, chain_method=chain_method, init="map", progress=False)
    check_blr(post, x, y, sigma, alpha, T, mode, tol_mean=0.1, tol_sd=0.08)


# ----------------------------------------------------------------------------------------------
# A small fit: the Posterior interface, HMC, learned noise, reproducibility
# ----------------------------------------------------------------------------------------------
def test_hmc_posterior_interface_and_reproducible(tmp_path):
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 16).unsqueeze(-1)
    y = torch.sin(3 * x[:, 0]) + 0.1 * torch.randn(16)
    model = bdl.BayesianModel(mlp(1, 4, 1), likelihood=L.Gaussian(scale=None))
    kw = dict(method="hmc", backend="numpyro", num_chains=2, num_samples=25, warmup=25, num_steps=8, seed=3,
              init="net", progress=False)
    post = bdl.fit(model, x, y, **kw)
    assert set(post.samples) == {"0.weight", "0.bias", "2.weight", "2.bias", "noise_scale"}
    assert post.samples["0.weight"].shape == (2, 25, 4, 1) and post.samples["noise_scale"].shape == (2, 25)
    assert post.samples["0.weight"].dtype == torch.float32 and (post.samples["noise_scale"] > 0).all()
    assert set(post.sample_stats) == STATS and post.sample_stats["num_steps"].eq(8).all()
    assert post.sample_stats["tree_depth"].eq(4).all()
    pred = post.predict(x[:3])
    assert pred.mean.shape == (3,) and torch.isfinite(pred.variance).all()
    path = tmp_path / "post.pt"
    post.save(str(path))
    again = bdl.Posterior.load(str(path))
    torch.testing.assert_close(again.predict(x[:3]).mean, pred.mean)
    # the chains start at the same point but are different chains
    assert not torch.equal(post.samples["0.weight"][0], post.samples["0.weight"][1])
    post2 = bdl.fit(model, x, y, **kw)
    for k in post.samples:
        torch.testing.assert_close(post.samples[k], post2.samples[k], rtol=0, atol=0)


@pytest.mark.slow
def test_partial_dict_init():
    torch.manual_seed(0)
    x, y = blr_problem()
    model = bdl.BayesianModel(nn.Linear(2, 1), likelihood=L.Gaussian(scale=None))
    post = bdl.fit(model, x, y, method="nuts", backend="numpyro", num_chains=2, num_samples=200, warmup=200,
                   init={"weight": torch.zeros(1, 2)}, progress=False)
    assert post.samples["noise_scale"].min() > 0
    assert abs(post.samples["noise_scale"].mean().item() - 0.5) < 0.15


# ----------------------------------------------------------------------------------------------
# The two backends give the same predictive distribution
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_backends_agree_on_small_bnn():
    import arviz as az

    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 1, generator=g) * 4 - 2
    y = torch.tanh(1.5 * x[:, 0]) + 0.3 * torch.randn(30, generator=g)
    torch.manual_seed(0)
    model = bdl.BayesianModel(mlp(1, 3, 1), prior=P.Gaussian(0.0, 1.0), likelihood=L.Gaussian(scale=0.3))
    x_test = torch.linspace(-2.5, 2.5, 7).unsqueeze(-1)
    posts = {
        "numpyro": bdl.fit(model, x, y, method="nuts", backend="numpyro", num_chains=4, num_samples=1000,
                           warmup=500, seed=0, progress=False),
        "pyro": bdl.fit(model, x, y, method="nuts", backend="pyro", num_chains=2, num_samples=300, warmup=200,
                        seed=0, progress=False, max_tree_depth=6),
    }
    stats = {}
    for name, post in posts.items():
        f = model.forward({k: post.samples[k] for k in model.weight_sites}, x_test)[..., 0]  # (chains, draws, 7)
        ess = np.array([az.ess(f[..., i].numpy()) for i in range(f.shape[-1])])
        mean, sd = f.mean((0, 1)).numpy(), f.std((0, 1)).numpy()
        stats[name] = (mean, sd, sd / np.sqrt(ess))
    (m1, s1, e1), (m2, s2, e2) = stats["numpyro"], stats["pyro"]
    z = np.abs(m1 - m2) / np.sqrt(e1 ** 2 + e2 ** 2)
    assert np.all(z < 4), z
    assert np.all(np.abs(s1 / s2 - 1) < 0.3), (s1, s2)
