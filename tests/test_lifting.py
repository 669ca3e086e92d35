import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS, Predictive
from torch import nn
from torch.func import functional_call

import pyro_bdl as bdl


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(1, 2, 3, padding=1)
        self.norm = nn.BatchNorm1d(2)

    def forward(self, x):
        return self.norm(self.conv1(x)).relu()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = Encoder()
        self.head = nn.Linear(2 * 5, 3)

    def forward(self, x):
        return self.head(self.encoder(x.unsqueeze(1)).flatten(1))


def _model(net, **kw):
    return bdl.BayesianModel(net, likelihood=bdl.likelihoods.Categorical(), **kw)


def test_site_names_are_module_paths_and_stable():
    torch.manual_seed(0)
    model = _model(Net())
    expected = ["encoder.conv1.weight", "encoder.conv1.bias", "encoder.norm.weight", "encoder.norm.bias",
                "head.weight", "head.bias"]
    assert model.weight_sites == expected
    trace = poutine.trace(model).get_trace(torch.randn(4, 5))
    latent = [n for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"] and n != "data"]
    assert latent[:-1] == expected and latent[-1] == "obs"
    assert [n for n in model.net.state_dict() if "running" in n]  # buffers are not sites
    assert bdl.BayesianModel(Net(), likelihood=bdl.likelihoods.Categorical(), prefix="bnn").weight_sites[0] == \
        "bnn.encoder.conv1.weight"


def test_deterministic_and_bayesian_patterns():
    net = Net()
    last = _model(net, bayesian="head.*")
    assert last.weight_sites == ["head.weight", "head.bias"]
    same = _model(net, deterministic="encoder.*")
    assert same.weight_sites == last.weight_sites
    x = torch.randn(3, 5)
    w = last.prior_sample(x)
    # the deterministic encoder runs with its current weights
    feats = net.encoder(x.unsqueeze(1)).flatten(1)
    assert torch.allclose(last.forward(w, x), feats @ w["head.weight"].T + w["head.bias"], atol=1e-6)
    with pytest.raises(ValueError, match="matches no parameter"):
        _model(net, deterministic="decoder.*")
    with pytest.raises(ValueError, match="no Bayesian parameters"):
        _model(net, deterministic="*")


def test_vectorised_forward_equals_loop():
    torch.manual_seed(0)
    net = Net()
    model = _model(net)
    x = torch.randn(7, 5)
    draws = {k: torch.stack([model.prior_sample(x)[k] for _ in range(6)]) for k in model.weight_sites}
    batched = model.forward(draws, x)
    assert batched.shape == (6, 7, 3)
    params = dict(net.named_parameters())
    for s in range(6):
        one = functional_call(net, {**params, **{k: v[s] for k, v in draws.items()}}, (x,))
        assert torch.allclose(batched[s], one, atol=1e-6)
    # draw dims of any rank
    grid = {k: v.reshape(2, 3, *v.shape[1:]) for k, v in draws.items()}
    assert torch.allclose(model.forward(grid, x).reshape(6, 7, 3), batched)


def test_predict_equals_loop_over_samples():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1))
    model = bdl.BayesianModel(net, likelihood=bdl.likelihoods.Gaussian(0.2))
    x, y = torch.randn(20, 3), torch.randn(20)
    post = bdl.fit(model, x, y, method="svi", num_steps=20, progress=False)
    draws = post.sample(50, seed=3)
    pred = post.predict(x, num_samples=50, seed=3)
    loop = torch.stack([functional_call(net, {k: draws[k][s] for k in model.weight_sites}, (x,)).squeeze(-1)
                        for s in range(50)])
    assert torch.allclose(pred.component.mean, loop, atol=1e-5)
    assert torch.allclose(pred.mean, loop.mean(0), atol=1e-5)


def test_pyro_predictive_parallel_works_on_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    model = bdl.BayesianModel(net, likelihood=bdl.likelihoods.Gaussian(scale=None))
    x = torch.randn(9, 3)
    out = Predictive(model, num_samples=5, parallel=True)(x)
    assert out["obs"].shape == (5, 9)
    assert out["0.weight"].shape[0] == 5 and out["noise_scale"].shape[0] == 5
    seq = Predictive(model, num_samples=5, parallel=False)(x)
    assert seq["obs"].shape == (5, 9)


def test_hierarchical_prior_declared_in_pyro_code():
    """A prior given as a function is called inside the model: it may draw hyperparameters."""
    torch.manual_seed(0)

    def prior():
        scale = pyro.sample("prior_scale", dist.LogNormal(0.0, 0.5))
        return bdl.priors.Gaussian(0.0, scale)

    net = nn.Linear(2, 1)
    model = bdl.BayesianModel(net, prior=prior, likelihood=bdl.likelihoods.Gaussian(0.3))
    x = torch.randn(30, 2)
    y = x @ torch.tensor([1.0, -1.0]) + 0.3 * torch.randn(30)
    post = bdl.fit(model, x, y, method="nuts", num_samples=100, warmup=100, progress=False)
    assert set(post.samples) == {"prior_scale", "weight", "bias"}
    assert post.samples["prior_scale"].std() > 0
    assert (post.predict(x).mean - y).abs().mean() < 0.5
    # parallel Predictive broadcasts the hyperprior over draws
    assert Predictive(model, num_samples=4, parallel=True)(x)["obs"].shape == (4, 30)


def test_lift_inside_a_user_pyro_model_runs_with_plain_pyro_nuts():
    torch.manual_seed(0)
    net = nn.Linear(2, 1)
    x = torch.randn(40, 2)
    y = x @ torch.tensor([0.5, 2.0]) + 0.1 * torch.randn(40)

    def user_model(x, y=None):
        s = pyro.sample("prior_scale", dist.HalfNormal(2.0))
        f = bdl.lift(net, prior=bdl.priors.Gaussian(0.0, s))
        out = f(x).squeeze(-1)
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, 0.1), obs=y)

    mcmc = MCMC(NUTS(user_model), num_samples=150, warmup_steps=150, disable_progbar=True)
    mcmc.run(x, y)
    w = mcmc.get_samples()["weight"].mean(0)
    assert torch.allclose(w, torch.tensor([[0.5, 2.0]]), atol=0.1)


def test_priors_per_parameter_and_fan_in():
    net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    prior = bdl.priors.PerParameter({"*.bias": bdl.priors.Laplace(0.0, 0.1), nn.Linear: bdl.priors.FanInGaussian(2.0)})
    model = bdl.BayesianModel(net, prior=prior, likelihood=bdl.likelihoods.Categorical())
    trace = poutine.trace(model).get_trace(torch.randn(3, 4))
    assert isinstance(trace.nodes["0.bias"]["fn"].base_dist, dist.Laplace)
    d = trace.nodes["2.weight"]["fn"]
    assert d.event_shape == (2, 16)
    assert torch.allclose(d.base_dist.scale, torch.tensor(2.0 / 16 ** 0.5))
    assert torch.allclose(trace.nodes["0.weight"]["fn"].base_dist.scale, torch.tensor(1.0))  # 2/sqrt(4)
    # a plain Pyro distribution is broadcast to every parameter
    m2 = bdl.BayesianModel(net, prior=dist.StudentT(3.0, 0.0, 1.0), likelihood=bdl.likelihoods.Categorical())
    t2 = poutine.trace(m2).get_trace(torch.randn(3, 4))
    assert t2.nodes["0.weight"]["fn"].event_shape == (16, 4)
    with pytest.raises(TypeError, match="cannot use"):
        bdl.BayesianModel(net, prior=3.0, likelihood=bdl.likelihoods.Categorical())


def test_lift_in_a_user_model_works_with_vectorised_predictive():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1))

    def user_model(x, y=None):
        s = pyro.sample("prior_scale", dist.LogNormal(0.0, 0.5))
        out = bdl.lift(net, prior=bdl.priors.Gaussian(0.0, s))(x).squeeze(-1)
        with pyro.plate("data", len(x)):
            pyro.sample("obs", dist.Normal(out, 0.1), obs=y)

    x = torch.randn(40, 1)
    out = Predictive(user_model, num_samples=50, parallel=True)(x)
    assert out["obs"].shape == (50, 40)
    # replaying given draws, vectorised, gives each draw's own network output
    draws = {k: v for k, v in out.items() if k != "obs"}
    assert Predictive(user_model, posterior_samples=draws, parallel=True)(x)["obs"].shape == (50, 40)


def test_fan_in_gaussian_keeps_a_hyperprior_scale_differentiable():
    """A tensor scale (a hyperprior draw) stays a tensor: log p(w | σ) has a gradient in σ."""
    import torch

    from pyro_bdl.priors import FanInGaussian

    scale = torch.tensor(0.7, requires_grad=True)
    w = torch.randn(5, 4)
    d = FanInGaussian(scale=scale).distribution("0.weight", w, torch.nn.Linear(4, 5))
    d.log_prob(w).backward()
    # d/dσ Σ log N(w; 0, σ²/4) = -n/σ + Σ w² · 4 / σ³
    expected = -w.numel() / 0.7 + (w ** 2).sum() * 4 / 0.7 ** 3
    assert torch.allclose(scale.grad, expected, rtol=1e-5)
