"""The hand-batched forward of K plain-MLP weight sets (`pyro_bdl.model.stacked_mlp`) against vmap and one run at a time."""
import pytest
import torch
from torch import nn

import pyro_bdl as bdl
from pyro_bdl.infer import stacking
from pyro_bdl.model.potential import Objective
from pyro_bdl.model.stacked_mlp import stacked_plan


def _model(net, likelihood, prior=None, **kw):
    return bdl.BayesianModel(net, prior=prior if prior is not None else bdl.priors.Gaussian(0.0, 0.7),
                             likelihood=likelihood, **kw)


def _data(kind, K=3, B=7, d=4):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(K, B, d, generator=g)
    if kind == "classification":
        y = torch.randint(0, 3, (K, B), generator=g)
    elif kind == "binary":
        y = torch.randint(0, 2, (K, B), generator=g).float()
    elif kind == "vector":
        y = torch.randn(K, B, 2, generator=g)
    else:
        y = torch.randn(K, B, generator=g)
    return x, y


def _mlp(out, act=nn.Tanh):
    return nn.Sequential(nn.Linear(4, 8), act(), nn.Linear(8, out))


CASES = {
    "regression": lambda: _model(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 1)),
                                 bdl.likelihoods.Gaussian(scale=0.3)),
    "classification": lambda: _model(nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3)),
                                     bdl.likelihoods.Categorical()),
    "learned noise": lambda: _model(nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 1)),
                                    bdl.likelihoods.Gaussian(scale=None)),
    "no bias, fixed layer": lambda: _model(nn.Sequential(nn.Linear(4, 8, bias=False), nn.Tanh(), nn.Linear(8, 1)),
                                           bdl.likelihoods.Gaussian(scale=0.3), deterministic=["0.*"]),
    "binary": lambda: _model(_mlp(1), bdl.likelihoods.Bernoulli()),
    "student-t, laplace prior": lambda: _model(_mlp(1), bdl.likelihoods.StudentT(df=4.0, scale=0.5),
                                               prior=bdl.priors.Laplace(0.0, 0.5)),
    "heteroskedastic, fan-in prior": lambda: _model(_mlp(2), bdl.likelihoods.Gaussian(scale=None, heteroskedastic=True),
                                                    prior=bdl.priors.FanInGaussian()),
    "vector targets": lambda: _model(_mlp(2, nn.ReLU), bdl.likelihoods.Gaussian(scale=0.3)),
}
KIND = {"classification": "classification", "binary": "binary", "vector targets": "vector"}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("shared", [False, True])
def test_stacked_potential_equals_vmap_and_single_runs(case, shared):
    model = CASES[case]()
    x, y = _data(KIND.get(case, "regression"))
    if shared:
        x, y = x[0], y[0]
    objective = Objective(model, x if shared else x[0])
    K = 3
    g = torch.Generator().manual_seed(2)
    theta = torch.stack([objective.initial() for _ in range(K)]) + 0.3 * torch.randn(K, objective.size, generator=g)
    N = 50
    assert objective.stacked_potential(theta, x, y, N, shared) is None  # not verified yet: the caller vmaps
    singles = torch.stack([objective.potential(theta[k], x if shared else x[k], y if shared else y[k], N)
                           for k in range(K)])
    batched = objective.stacked_potential(theta, x, y, N, shared)
    assert batched is not None and batched.shape == (K,)
    # only a transformed site (the learned noise scale) leaves a part to vmap; everything else is summed per run
    assert objective._fast._rows == (case != "learned noise")
    vmapped = torch.func.vmap(lambda t, a, b: objective.potential(t, a, b, N),
                              in_dims=(0, None, None) if shared else (0, 0, 0))(theta, x, y)
    torch.testing.assert_close(batched, singles, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(batched, vmapped, rtol=1e-6, atol=1e-5)
    # gradients through the hand-batched path equal each run's own
    grad = stacking.StackedGradient(lambda t, a, b: objective.potential(t, a, b, N),
                                    lambda t, a, b: objective.grad(t, a, b, N),
                                    lambda t, a, b, s: objective.stacked_potential(t, a, b, N, s))
    u, g_all = grad(theta, x, y, shared)
    for k in range(K):
        u_k, g_k = objective.grad(theta[k], x if shared else x[k], y if shared else y[k], N)
        torch.testing.assert_close(g_all[k], g_k, rtol=1e-5, atol=1e-4)


def test_only_plain_mlps_are_batched_by_hand():
    assert stacked_plan(nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))) is not None
    assert stacked_plan(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))) is None  # buffers
    assert stacked_plan(nn.Sequential(nn.Flatten(), nn.Linear(4, 1))) is None  # reshapes: not elementwise
    assert stacked_plan(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Tanh())) is None
    shared = nn.Linear(3, 3)
    assert stacked_plan(nn.Sequential(shared, nn.Tanh(), shared)) is None  # tied weights
    assert stacked_plan(nn.Sequential(nn.Tanh())) is None


def test_stacked_ensemble_takes_the_hand_batched_path(monkeypatch):
    """A stacked ensemble of a plain MLP uses the hand-batched potential after the first step, and its members
    equal members fitted one at a time."""
    calls = {"batched": 0}
    original = Objective.stacked_potential

    def counting(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls["batched"] += out is not None
        return out

    monkeypatch.setattr(Objective, "stacked_potential", counting)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = torch.sin(x.sum(-1)) + 0.1 * torch.randn(64, generator=g)

    def fit(stack):
        model = _model(nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 1)), bdl.likelihoods.Gaussian(scale=0.1))
        return bdl.fit(model, x, y, method="ensemble", num_chains=3, epochs=3, batch_size=16, lr=1e-2, seed=0,
                       progress=False, stack=stack)

    stacked = fit(True)
    assert calls["batched"] > 0
    sequential = fit(False)
    xt = torch.linspace(-2, 2, 9).unsqueeze(-1).expand(9, 3)
    torch.testing.assert_close(stacked.predict(xt).mean, sequential.predict(xt).mean, rtol=1e-4, atol=1e-4)


def test_inputs_with_more_dims_keep_vmap():
    """A Linear applied to (B, steps, features) inputs acts on the last dim: that batch is vmapped, not batched by hand."""
    model = _model(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)), bdl.likelihoods.Gaussian(scale=0.3))
    x = torch.randn(3, 5, 2, 4)
    y = torch.randn(3, 5, 2)
    objective = Objective(model, x[0])
    theta = torch.stack([objective.initial() for _ in range(3)])
    objective.potential(theta[0], x[0], y[0], 10)  # verified
    assert objective.stacked_potential(theta, x, y, 10, False) is None
    assert objective.stacked_potential(theta, x[:, :, 0], y[:, :, 0], 10, False) is not None
