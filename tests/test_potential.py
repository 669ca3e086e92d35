"""The flat tempered potential: the compiled density equals the Pyro trace's, for every model feature."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_bdl as bdl
from pyro_bdl.model.potential import Objective


def _mlp(inp=3, out=1, hidden=5):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(inp, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, out))


def _data(n=12, inp=3, classes=None):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, inp, generator=g)
    y = torch.randint(classes, (n,), generator=g) if classes else torch.randn(n, generator=g)
    return x, y


CASES = {
    "gaussian fixed noise": lambda: (bdl.BayesianModel(_mlp(), prior=bdl.priors.Gaussian(0.0, 0.7),
                                                       likelihood=bdl.likelihoods.Gaussian(scale=0.3)), _data()),
    "fan-in, cold T": lambda: (bdl.BayesianModel(_mlp(), prior=bdl.priors.FanInGaussian(1.3),
                                                 likelihood=bdl.likelihoods.Gaussian(scale=0.3), temperature=0.1), _data()),
    "learned noise, likelihood tempering": lambda: (bdl.BayesianModel(
        _mlp(), likelihood=bdl.likelihoods.Gaussian(scale=None), temperature=4.0, tempering="likelihood"), _data()),
    "heteroskedastic student-t prior": lambda: (bdl.BayesianModel(
        _mlp(out=2), prior=bdl.priors.StudentT(3.0, 0.5), likelihood=bdl.likelihoods.Gaussian(scale=None, heteroskedastic=True)), _data()),
    "categorical, per-parameter prior": lambda: (bdl.BayesianModel(
        _mlp(out=4), prior={"*.bias": bdl.priors.Laplace(0.0, 0.2), "*": bdl.priors.Gaussian(0.0, 1.0)},
        likelihood=bdl.likelihoods.Categorical(), temperature=0.3), _data(classes=4)),
    "bernoulli, pyro distribution prior": lambda: (bdl.BayesianModel(
        _mlp(), prior=dist.Normal(0.0, 2.0), likelihood=bdl.likelihoods.Bernoulli()), (_data()[0], (_data()[1] > 0).long())),
    "student-t likelihood, bayesian last layer": lambda: (bdl.BayesianModel(
        _mlp(), likelihood=bdl.likelihoods.StudentT(df=4.0, scale=0.5), bayesian="2.*"), _data()),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dataset_size", [None, 100])
def test_compiled_density_equals_the_pyro_trace(case, dataset_size):
    model, (x, y) = CASES[case]()
    compiled = Objective(model, x)
    traced = Objective(model, x, compiled=False)
    assert compiled.compiled and not traced.compiled
    y = model.likelihood.check_targets(y, model.forward(model.network.initial_weights(), x[:2]).shape[-1])
    for seed in range(3):  # a few random points, unconstrained so the noise site moves too
        theta = compiled.initial() + 0.3 * torch.randn(compiled.size, generator=torch.Generator().manual_seed(seed))
        a = compiled.log_density(theta, x, y, dataset_size)
        b = traced.log_density(theta, x, y, dataset_size)
        assert math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-4), (case, float(a), float(b))
        ga = compiled.grad(theta, x, y, dataset_size)[1]
        gb = traced.grad(theta, x, y, dataset_size)[1]
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-4)


def test_temperature_and_minibatch_scaling_enter_once():
    # A wrong factor would be off by T or by N/B: check the exact relations.
    model, (x, y) = CASES["gaussian fixed noise"]()
    o1, o2 = Objective(model, x), Objective(model.with_temperature(0.25), x)
    theta = o1.initial()  # weights only: no Jacobian term
    assert math.isclose(float(o2.log_density(theta, x, y, 48)), 4.0 * float(o1.log_density(theta, x, y, 48)), rel_tol=1e-6)
    log_prior = float(sum(d.log_prob(v).sum() for d, v in zip(o1._priors.values(), model.network.initial_weights().values())))
    log_lik = float(o1.log_density(theta, x, y)) - log_prior
    assert math.isclose(float(o1.log_density(theta, x, y, 3 * len(x))), log_prior + 3 * log_lik, rel_tol=1e-6)


def test_hierarchical_prior_uses_the_trace():
    def prior():
        s = pyro.sample("prior_scale", dist.LogNormal(0.0, 1.0))
        return bdl.priors.Gaussian(0.0, s)

    model = bdl.BayesianModel(_mlp(), prior=prior, likelihood=bdl.likelihoods.Gaussian(scale=0.3))
    x, y = _data()
    objective = Objective(model, x)
    assert not objective.compiled and "prior_scale" in objective.layout.names
    with pytest.raises(ValueError, match="hyperprior sites"):
        Objective(model, x, compiled=True)
    theta = objective.initial({**model.initial_values(), "prior_scale": torch.tensor(0.5)})
    u, g = objective.grad(theta, x, y)
    assert torch.isfinite(u) and torch.isfinite(g).all()


def test_a_wrong_compiled_density_is_caught_at_first_use():
    model, (x, y) = CASES["gaussian fixed noise"]()
    objective = Objective(model, x)
    objective._priors = {k: dist.Normal(0.0, 5.0).expand(d.event_shape).to_event(len(d.event_shape))
                         for k, d in objective._priors.items()}  # a compiled prior that disagrees with the model
    with pytest.raises(RuntimeError, match="differs from the Pyro trace"):
        objective.log_density(objective.initial(), x, y)


# -- the flat hot path: closed forms, merged terms, vmap -----------------------------------------------
FAST_CASES = {
    "per-entry tensor scale, laplace with a loc": lambda: (bdl.BayesianModel(
        _mlp(), prior={"0.weight": bdl.priors.Gaussian(0.1, torch.linspace(0.5, 2.0, 15).reshape(5, 3)),
                       "*.bias": bdl.priors.Laplace(0.2, 0.5), "*": bdl.priors.StudentT(5.0, 0.0, 0.8)},
        likelihood=bdl.likelihoods.Gaussian(scale=0.4), temperature=0.5), _data()),
    "vector targets, learned noise, cold likelihood tempering": lambda: (bdl.BayesianModel(
        _mlp(out=2), likelihood=bdl.likelihoods.Gaussian(scale=None), temperature=0.2, tempering="likelihood"),
        (_data()[0], torch.randn(12, 2, generator=torch.Generator().manual_seed(3)))),
    "student-t likelihood, learned noise, a generic distribution prior": lambda: (bdl.BayesianModel(
        _mlp(), prior=dist.Gumbel(0.0, 1.5), likelihood=bdl.likelihoods.StudentT(df=3.0, scale=None)), _data()),
    "heteroskedastic student-t likelihood, fan-in": lambda: (bdl.BayesianModel(
        _mlp(out=2), prior=bdl.priors.FanInGaussian(2.0, bias_scale=0.3),
        likelihood=bdl.likelihoods.StudentT(df=5.0, scale=None, heteroskedastic=True)), _data()),
}


def _targets(model, x, y):
    return model.likelihood.check_targets(y, model.forward(model.network.initial_weights(), x[:2]).shape[-1])


@pytest.mark.parametrize("case", sorted(FAST_CASES))
@pytest.mark.parametrize("dataset_size", [None, 60])
def test_flat_hot_path_equals_the_pyro_trace(case, dataset_size):
    model, (x, y) = FAST_CASES[case]()
    y = _targets(model, x, y)
    fast, traced = Objective(model, x), Objective(model, x, compiled=False)
    for seed in range(3):
        theta = fast.initial() + 0.3 * torch.randn(fast.size, generator=torch.Generator().manual_seed(seed))
        a, b = fast.log_density(theta, x, y, dataset_size), traced.log_density(theta, x, y, dataset_size)
        assert math.isclose(float(a), float(b), rel_tol=1e-5, abs_tol=1e-4), (case, float(a), float(b))
        torch.testing.assert_close(fast.grad(theta, x, y, dataset_size)[1], traced.grad(theta, x, y, dataset_size)[1],
                                   rtol=1e-4, atol=1e-4)


def test_iid_gaussian_prior_is_one_closed_form_term_over_theta():
    model, (x, y) = CASES["gaussian fixed noise"]()
    objective = Objective(model, x)
    objective.log_density(objective.initial(), x, y)  # builds and verifies the hot path
    fast = objective._fast
    assert fast.whole and [t.kind for _, _, t in fast.terms] == ["normal"] and not fast.others
    learned = Objective(bdl.BayesianModel(_mlp(), likelihood=bdl.likelihoods.Gaussian(scale=None)), x)
    learned.log_density(learned.initial(), x, y)
    assert [(i, j, t.kind) for i, j, t in learned._fast.terms] == [(0, 4, "normal")]  # weights; the noise is separate
    assert [s for s, *_ in learned._fast.others] == ["noise_scale"]


@pytest.mark.parametrize("prior", [dist.Normal(torch.tensor(0.3), torch.tensor(1.7)), dist.Laplace(-0.2, 0.4),
                                   dist.StudentT(4.0, 0.1, 0.9), dist.Gumbel(0.0, 1.0)])
def test_closed_form_priors_equal_log_prob(prior):
    from pyro_bdl.priors.closed_form import flat_log_density

    shape = torch.Size([3, 4])
    d = prior.expand(shape).to_event(2)
    w = torch.randn(12, dtype=torch.float64)
    fast = flat_log_density(d, shape)
    assert fast.kind == ("distribution" if isinstance(prior, dist.Gumbel) else type(prior).__name__.lower())
    expected = d.log_prob(w.reshape(shape).float()).double()
    assert math.isclose(float(fast(w)), float(expected), rel_tol=1e-5)
    assert math.isclose(float(fast(w[:5], w[5:])), float(expected), rel_tol=1e-5)  # pieces of the site


@pytest.mark.parametrize("likelihood, out, y", [
    (bdl.likelihoods.Gaussian(scale=0.3), 1, torch.randn(7)),
    (bdl.likelihoods.Gaussian(scale=None), 1, torch.randn(7)),
    (bdl.likelihoods.Gaussian(scale=0.5), 3, torch.randn(7, 3)),
    (bdl.likelihoods.Gaussian(scale=None, heteroskedastic=True), 2, torch.randn(7)),
    (bdl.likelihoods.StudentT(df=3.0, scale=0.7), 1, torch.randn(7)),
    (bdl.likelihoods.Categorical(), 4, torch.randint(4, (7,))),
    (bdl.likelihoods.Bernoulli(), 1, torch.randint(2, (7,)).float()),
])
def test_likelihood_log_prob_sum_equals_the_distribution(likelihood, out, y):
    output = torch.randn(7, out, requires_grad=True)
    params = {"noise_scale": torch.tensor(0.8)} if likelihood.param_sites else None
    fast = likelihood.log_prob_sum(output, y, params)
    slow = likelihood.distribution(output, params).log_prob(y).sum()
    assert math.isclose(fast.item(), slow.item(), rel_tol=1e-5, abs_tol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(fast, output)[0], torch.autograd.grad(slow, output)[0])


@pytest.mark.parametrize("case", ["gaussian fixed noise", "learned noise, likelihood tempering",
                                  "categorical, per-parameter prior"])
def test_potential_is_vmappable_over_theta(case):
    # Ensemble members / chains are stacked by vmap over θ: the potential must be a pure function of θ.
    model, (x, y) = CASES[case]()
    y = _targets(model, x, y)
    objective = Objective(model, x)
    thetas = objective.initial() + 0.3 * torch.randn(4, objective.size, generator=torch.Generator().manual_seed(0))
    stacked = torch.func.vmap(lambda t: objective.potential(t, x, y, 50))(thetas)  # first use (the check) inside vmap
    loop = torch.stack([objective.potential(t, x, y, 50) for t in thetas])
    torch.testing.assert_close(stacked, loop)
    grads = torch.func.vmap(torch.func.grad(lambda t: objective.potential(t, x, y, 50)))(thetas)
    torch.testing.assert_close(grads, torch.stack([objective.grad(t, x, y, 50)[1] for t in thetas]))


class _Tied(torch.nn.Module):
    """Encoder and decoder share one weight matrix (a tied autoencoder-style regressor)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc, self.dec, self.head = torch.nn.Linear(3, 4), torch.nn.Linear(4, 3), torch.nn.Linear(3, 1)
        self.dec.weight = self.enc.weight  # one Parameter in two modules: a single Bayesian site "enc.weight"

    def forward(self, x):
        h = torch.tanh(self.enc(x))
        return self.head(torch.nn.functional.linear(h, self.dec.weight.T, self.dec.bias))


def test_hot_path_reties_shared_weights_and_uses_fixed_parameters():
    x, y = _data()
    tied = bdl.BayesianModel(_Tied(), likelihood=bdl.likelihoods.Gaussian(scale=0.5))
    partly_fixed = bdl.BayesianModel(_mlp(), likelihood=bdl.likelihoods.Gaussian(scale=0.5), deterministic="0.*")
    for model in (tied, partly_fixed):
        fast, traced = Objective(model, x), Objective(model, x, compiled=False)
        theta = fast.initial() + 0.2 * torch.randn(fast.size, generator=torch.Generator().manual_seed(0))
        assert math.isclose(float(fast.log_density(theta, x, y, 30)), float(traced.log_density(theta, x, y, 30)),
                            rel_tol=1e-5)
        torch.testing.assert_close(fast.grad(theta, x, y, 30)[1], traced.grad(theta, x, y, 30)[1])
    assert "dec.weight" not in tied.weight_sites and tied.network._tied and not partly_fixed.network._tied
