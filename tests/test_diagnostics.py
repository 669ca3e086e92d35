"""Function-space convergence diagnostics: converged vs multimodal chains, within-chain R-hat, to_arviz."""
import warnings

import numpy as np
import pytest
import torch

import pyro_bdl as bdl
from pyro_bdl.diagnostics import ConvergenceWarning, summary, within_chain_rhat

az = pytest.importorskip("arviz")

NOISE = 0.5


def blr_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)
    y = x @ torch.tensor([1.0, -0.5]) + 0.3 + NOISE * torch.randn(n, generator=g)
    return x, y


def blr_posterior_mean(x, y, x_new):
    """Closed form: prior N(0, I) on (w, b), y ~ N(Xw + b, σ²): mean = Σ Xᵀy/σ², Σ = (I + XᵀX/σ²)⁻¹."""
    X = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    cov = torch.linalg.inv(torch.eye(3, dtype=torch.float64) + X.T @ X / NOISE**2)
    mean = cov @ X.T @ y.double() / NOISE**2
    return torch.cat([x_new, torch.ones(len(x_new), 1)], 1).double() @ mean


# -- the statistic itself -------------------------------------------------------------------------
def ar1(rng, chains, draws, rho=0.5, offsets=None):
    out = np.zeros((chains, draws))
    z = rng.normal(size=chains)
    for t in range(draws):
        z = rho * z + np.sqrt(1 - rho**2) * rng.normal(size=chains)
        out[:, t] = z
    return out + (0 if offsets is None else np.asarray(offsets)[:, None])


def test_within_chain_rhat_matches_arviz_on_the_same_sub_chains():
    """A chain cut into 4 quarters is what ArviZ's rank R-hat sees when given the chain's two halves
    as two chains (it splits each again): the numbers must agree to rounding."""
    rng = np.random.default_rng(0)
    draws = ar1(rng, 3, 200, offsets=[0.0, 5.0, -2.0])
    ours = within_chain_rhat(draws, num_splits=4)
    for c in range(3):
        halves = draws[c].reshape(2, 100)
        assert ours[c] == pytest.approx(float(az.rhat(halves, method="rank")), rel=1e-10)
    # vectorised over trailing dims
    stacked = within_chain_rhat(np.stack([draws, 2 * draws], -1), num_splits=4)
    assert stacked.shape == (3, 2) and np.allclose(stacked[:, 0], ours)
    # leading left-over draws are dropped
    assert np.allclose(within_chain_rhat(np.concatenate([draws[:, :3] + 50, draws], 1), num_splits=4), ours)


def test_within_chain_rhat_tells_modes_from_not_mixing():
    rng = np.random.default_rng(1)
    in_modes = ar1(rng, 4, 400, offsets=[-3.0, -3.0, 3.0, 3.0])  # stationary, but two modes
    assert float(az.rhat(in_modes, method="rank")) > 1.5
    assert within_chain_rhat(in_modes).max() < 1.05
    drifting = ar1(rng, 4, 400) + np.linspace(0, 4, 400)  # every chain still moving
    assert within_chain_rhat(drifting).min() > 1.2
    assert np.isnan(within_chain_rhat(np.ones((2, 10)))).all()  # constant: undefined
    assert within_chain_rhat(in_modes, num_splits=4).max() < 1.05
    with pytest.raises(ValueError, match="num_splits"):
        within_chain_rhat(in_modes, num_splits=1)


# -- converged chains -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blr_nuts():
    x, y = blr_data()
    torch.manual_seed(0)
    model = bdl.BayesianModel(torch.nn.Linear(2, 1), likelihood=bdl.likelihoods.Gaussian(scale=NOISE))
    post = bdl.fit(model, x, y, method="nuts", num_samples=250, warmup=150, num_chains=4, seed=1, progress=False)
    return post, x, y


def test_converged_blr_has_rhat_below_the_warning_level_and_no_warning(blr_nuts):
    post, x, y = blr_nuts
    x_test = torch.tensor([[-2.0, 1.0], [0.0, 0.0], [1.0, 1.0], [2.0, -2.0], [0.5, -1.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        table = summary(post, x=x_test)
    assert list(table.index) == [f"prediction[{i}]" for i in range(5)]
    # R-hat is itself estimated: healthy chains of this length exceed 1.01 by chance on some inputs (summary's
    # docstring), so the bar is the warning level 1.05; chains in different modes reach > 1.1 (test below).
    assert (table["r_hat"] < 1.05).all(), table["r_hat"]
    assert (table["within_chain_r_hat"] < 1.05).all()
    assert (table[["ess_bulk", "ess_tail"]] >= 400).all().all()
    assert table.attrs["flagged_inputs"] == []
    # the chains sample the closed-form posterior: predictive means within 4 MCSE (+ a float tolerance)
    exact = blr_posterior_mean(x, y, x_test).numpy()
    assert np.all(np.abs(table["mean"].to_numpy() - exact) < 4 * table["mcse_mean"].to_numpy() + 1e-3)
    # R-hat agrees with ArviZ's on the same quantity (through to_arviz)
    idata = post.to_arviz(x=x_test)
    assert np.allclose(az.rhat(idata, var_names=["prediction"], method="rank")["prediction"].values,
                       table["r_hat"].to_numpy())


def test_summary_with_weights_and_errors(blr_nuts):
    post, x, _ = blr_nuts
    table = summary(post, x=x[:3], weights=True)
    assert set(table["kind"]) == {"prediction", "weight"}
    assert {"weight[0, 0]", "weight[0, 1]", "bias[0]"} <= set(table.index)
    weights_only = summary(post, weights=True)
    assert set(weights_only["kind"]) == {"weight"}
    with pytest.raises(ValueError, match="needs inputs x"):
        summary(post)
    with pytest.raises(ValueError, match="rhat_threshold"):
        summary(post, x=x[:2], rhat_threshold=0.5)


# -- chains in different modes --------------------------------------------------------------------
def test_chains_in_different_modes_give_rhat_above_1_1_and_the_warning():
    """y = b + ε with a Cauchy likelihood and half the targets at +1, half at −1: the posterior of the
    (only Bayesian) bias b is symmetric with modes at ±1 and a barrier of ~20 nats at 0, which NUTS
    does not cross. Two chains start in each mode (init=dict)."""
    x = torch.zeros(20, 1)
    y = torch.cat([torch.ones(10), -torch.ones(10)])
    model = bdl.BayesianModel(torch.nn.Linear(1, 1), likelihood=bdl.likelihoods.StudentT(df=1.0, scale=0.2),
                              bayesian="bias")
    chains = []
    for c, mode in enumerate([1.0, -1.0, 1.0, -1.0]):
        chains.append(bdl.fit(model, x, y, method="nuts", num_samples=200, warmup=100, seed=c, progress=False,
                              init={"bias": torch.tensor([mode])}))
    samples = {k: torch.cat([p.samples[k] for p in chains]) for k in chains[0].samples}
    stats = {k: torch.cat([p.sample_stats[k] for p in chains]) for k in chains[0].sample_stats}
    post = bdl.SamplesPosterior(model, samples, "nuts", sample_stats=stats)
    assert torch.sign(post.samples["bias"].mean((1, 2))).tolist() == [1.0, -1.0, 1.0, -1.0]  # stayed in their modes

    x_test = torch.linspace(-1, 1, 5).unsqueeze(-1)
    with pytest.warns(ConvergenceWarning, match="different modes") as record:
        table = summary(post, x=x_test)
    assert (table["r_hat"] > 1.1).all()
    assert (table["within_chain_r_hat"] < 1.1).all()  # each chain is fine on its own
    assert table.attrs["diagnosis"]["different_modes"] == [0, 1, 2, 3, 4]
    assert "[0, 1, 2, 3, 4]" in str(record[0].message)
    # the ArviZ view shows the same thing
    idata = post.to_arviz(x=x_test)
    assert float(az.rhat(idata, var_names=["bias"])["bias"].max()) > 1.1


def test_point_estimate_diagnostics_are_undefined():
    x, y = blr_data(20)
    model = bdl.BayesianModel(torch.nn.Linear(2, 1), likelihood=bdl.likelihoods.Gaussian(scale=NOISE))
    post = bdl.fit(model, x, y, method="map", num_steps=20, progress=False)
    with pytest.warns(ConvergenceWarning, match="undefined"):
        table = summary(post, x=x[:2])
    assert table["r_hat"].isna().all()
