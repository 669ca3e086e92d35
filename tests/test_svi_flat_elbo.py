"""`FlatELBO` (a built-in guide's ELBO on the compiled potential) is Pyro's Trace_ELBO: the same gradient in the guide's
parameters (per draw where both use the same ε; in expectation for the low-rank guide, whose sampled log q adds a
zero-mean term), the same value up to the sampled entropy's ½(εᵀε − P), and it applies only where it should."""
import math

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO

import pyro_bdl as bdl
from blr import make_blr
from test_networks import LSTMNet, TwoInputs, _pairs, _sequences
from pyro_bdl.infer import svi
from pyro_bdl.infer.data import FitData
from pyro_bdl.model.potential import Objective


def _setup(guide, T=0.5, minibatch=True):
    problem = make_blr(n=60, d=3, seed=1)
    m = problem.model(T)
    fd = FitData(m, problem.x, problem.y, batch_size=15 if minibatch else None)
    N = fd.dataset_size
    pyro.set_rng_seed(0)
    with pyro.settings.context(module_local_params=True):
        g = svi.make_guide(m, guide, 0.3, None, m.initial_values())
        elbo = Trace_ELBO(max_plate_nesting=1)
        loss_fn = elbo(m, g)
        xb, yb = problem.x[:15], problem.y[:15]
        loss_fn(xb, yb, N)  # builds the parameters
        with torch.no_grad():  # a guide away from its start, so every parameter matters
            for p in loss_fn.parameters():
                p.add_(0.2 * torch.randn_like(p))
    objective = Objective(m, fd.example_x(2))
    return m, g, elbo, loss_fn, objective, xb, yb, N


def _grads(loss_fn, fn, seed):
    with pyro.settings.context(module_local_params=True):
        params = list(loss_fn.parameters())
        torch.manual_seed(seed)
        surrogate, value = fn()
        grads = torch.autograd.grad(surrogate, params)
    return torch.cat([g.reshape(-1) for g in grads]), float(value)


@pytest.mark.parametrize("guide", ["normal", "fullrank"])
@pytest.mark.parametrize("minibatch", [True, False])
def test_flat_elbo_has_trace_elbos_gradient_per_draw(guide, minibatch):
    m, g, elbo, loss_fn, objective, xb, yb, N = _setup(guide, minibatch=minibatch)
    flat = svi.FlatELBO.build(g, objective, minibatch, 1)
    pyro_side = svi.ControlVariateELBO(m, g, elbo) if minibatch else None
    for seed in range(3):
        ours, value = _grads(loss_fn, lambda: flat(xb, yb, N), seed)
        if pyro_side is None:
            def traced():
                loss = loss_fn(xb, yb, N)
                return loss, loss.detach()
            theirs, pyro_value = _grads(loss_fn, traced, seed)
        else:
            theirs, pyro_value = _grads(loss_fn, lambda: pyro_side(xb, yb, N), seed)
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
        # the same ε: the values differ by the sampled entropy's term ½(εᵀε − P) alone
        torch.manual_seed(seed)
        with pyro.settings.context(module_local_params=True):
            z, mu, _ = flat._draw()
            if guide == "normal":
                eps = torch.cat([((z[n] - mu[n]) / g._get_loc_and_scale(n)[1]).reshape(-1) for n in flat.names])
            else:
                L = g.scale[..., None] * g.scale_tril
                delta = torch.cat([(z[n] - mu[n]).reshape(-1) for n in flat.names])
                eps = torch.linalg.solve_triangular(L, delta[:, None], upper=False)[:, 0]
        eps, P = eps.detach(), eps.numel()
        assert value == pytest.approx(pyro_value + 0.5 * (float(eps @ eps) - P), rel=1e-5, abs=1e-3)


def test_flat_elbo_has_trace_elbos_gradient_on_average_for_the_lowrank_guide():
    """Pyro's sampled log q of a low-rank Gaussian depends on the parameters through δᵀΣ⁻¹δ (zero mean in
    expectation, not per draw): over 400 draws the mean gradients agree within their Monte-Carlo error."""
    m, g, elbo, loss_fn, objective, xb, yb, N = _setup("lowrank")
    flat = svi.FlatELBO.build(g, objective, True, 1)
    pyro_side = svi.ControlVariateELBO(m, g, elbo)
    ours = torch.stack([_grads(loss_fn, lambda: flat(xb, yb, N), s)[0] for s in range(400)])
    theirs = torch.stack([_grads(loss_fn, lambda: pyro_side(xb, yb, N), s + 10_000)[0] for s in range(400)])
    diff = ours.mean(0) - theirs.mean(0)
    se = (ours.var(0) / 400 + theirs.var(0) / 400).sqrt()
    assert (diff.abs() < 4.5 * se + 1e-6).all(), (diff / se).abs().max()


@pytest.mark.parametrize("guide", ["normal", "lowrank"])
def test_flat_elbo_with_several_particles_is_the_mean_of_single_draws(guide):
    """num_particles = 3 is the mean of three one-draw estimates on the same random stream (value and gradient):
    Trace_ELBO's estimator, without its vectorised traces."""
    m, g, elbo, loss_fn, objective, xb, yb, N = _setup(guide)
    three, one = svi.FlatELBO.build(g, objective, True, 3), svi.FlatELBO.build(g, objective, True, 1)
    ours, value = _grads(loss_fn, lambda: three(xb, yb, N), seed=5)
    torch.manual_seed(5)
    singles = []
    with pyro.settings.context(module_local_params=True):
        params = list(loss_fn.parameters())
        for _ in range(3):
            surrogate, v = one(xb, yb, N)
            singles.append((torch.cat([d.reshape(-1) for d in torch.autograd.grad(surrogate, params)]), float(v)))
    torch.testing.assert_close(ours, sum(d for d, _ in singles) / 3, rtol=1e-5, atol=1e-5)
    assert value == pytest.approx(sum(v for _, v in singles) / 3, rel=1e-6)


def test_flat_elbo_applies_only_to_built_in_guides_of_compiled_real_sites():
    m, g, elbo, loss_fn, objective, xb, yb, N = _setup("normal")
    assert svi.FlatELBO.build(g, objective, True, 1) is not None
    assert svi.FlatELBO.build(g, None, True, 1) is None
    traced = Objective(m, xb[:2], compiled=False)
    assert svi.FlatELBO.build(g, traced, True, 1) is None
    # a learned noise scale (a constrained site): Pyro's traces
    ds = bdl.data.load_dataset("diabetes", seed=0)
    model = bdl.BayesianModel(bdl.networks.mlp(ds.num_features, [4], 1, "tanh"), prior=bdl.priors.Gaussian(0.0, 1.0),
                              likelihood=bdl.likelihoods.Gaussian(scale=None))
    with pyro.settings.context(module_local_params=True):
        guide = svi.make_guide(model, "normal", 0.1, None, model.initial_values())
        Trace_ELBO(max_plate_nesting=1)(model, guide)(ds.x_train[:5], ds.y_train[:5], 100)
    assert svi.FlatELBO.build(guide, Objective(model, ds.x_train[:2]), True, 1) is None


def test_svi_fits_as_before_on_a_network(monkeypatch):
    """The fitted guide does not depend on which of the two ELBOs stepped it (same draws: the same gradients up to
    float rounding); fit's own run uses the flat one."""
    ds = bdl.data.load_dataset("digits", seed=0, train_size=200)
    results = {}
    for flat in (True, False):
        torch.manual_seed(0)
        model = bdl.BayesianModel(bdl.networks.mlp(ds.num_features, [8], 10, "relu"),
                                  prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Categorical())
        if not flat:
            monkeypatch.setattr(svi.FlatELBO, "build", classmethod(lambda cls, *args, **kwargs: None))
        results[flat] = bdl.fit(model, ds.x_train, ds.y_train, method="svi", steps=300, batch_size=50, seed=0,
                                progress=False)
    a, b = results[True].guide, results[False].guide
    for name, value in a.state_dict().items():
        torch.testing.assert_close(value, b.state_dict()[name], rtol=1e-3, atol=1e-3)
    assert math.isfinite(results[True].info["loss_slope"])


@pytest.mark.parametrize("net", ["lstm", "two_inputs"])
def test_flat_elbo_fits_an_lstm_and_a_two_input_network_as_the_traces_do(net, monkeypatch):
    """The compiled potential takes sequences and input tuples as the Pyro trace does: 40 minibatch steps of the
    mean-field guide end where the traced path ends."""
    if net == "lstm":
        x, y = _sequences(24)
        make = LSTMNet
    else:
        x1, x2, y = _pairs(24)
        x, make = (x1, x2), TwoInputs
    guides = {}
    for flat in (True, False):
        torch.manual_seed(0)
        model = bdl.BayesianModel(make(), prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Gaussian(0.5))
        if not flat:
            monkeypatch.setattr(svi.FlatELBO, "build", classmethod(lambda cls, *args, **kwargs: None))
        guides[flat] = bdl.fit(model, x, y, method="svi", steps=40, batch_size=8, seed=0, progress=False,
                               newton_steps=0).guide
    for name, value in guides[True].state_dict().items():
        torch.testing.assert_close(value, guides[False].state_dict()[name], rtol=1e-4, atol=1e-4)
