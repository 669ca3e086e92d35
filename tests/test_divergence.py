"""The one divergence check (issue 13 item 6, issue 17's finite divergence) and SVI's per-guide care."""
import math

import pytest
import torch

import pyro_bdl as bdl
from pyro_bdl.infer.divergence import DivergenceCheck, DivergenceError, loss_floor
from blr import make_blr


def _classifier(hidden=4, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(64, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10))
    return bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Categorical())


def test_check_flags_non_finite_growth_and_values_below_the_floor():
    check = DivergenceCheck("svi", lr=0.1, floor=0.0, unit=1.0)
    check.check(10.0, 0)
    check.check(500.0, 1)  # 50× the initial excess: a bumpy but working run
    with pytest.raises(DivergenceError, match=r"lr=0.1; try lr=0.01"):
        check.check(2000.0, 2)
    below = DivergenceCheck("svi", 0.1, floor=0.0)
    below.check(5.0, 0)
    below.check(-4.0, 1)  # within the slack of a one-sample ELBO estimate
    with pytest.raises(DivergenceError, match="below the smallest attainable value"):
        below.check(-6.0, 2)
    with pytest.raises(DivergenceError, match="not finite"):
        DivergenceCheck("map", 0.1).check(math.nan, 0)
    assert issubclass(DivergenceError, FloatingPointError)


def test_loss_floor_is_the_closed_form_bound():
    problem = make_blr(n=20, d=2)
    for T in (1.0, 0.1):
        model = problem.model(temperature=T)
        # −log N(y; f, σ²) ≥ ½ log(2πσ²) per point, −log N(w; 0, 1) ≥ ½ log 2π per weight, both × 1/T
        point = (20 * 0.5 * math.log(2 * math.pi * 0.25) + 3 * 0.5 * math.log(2 * math.pi)) / T
        assert loss_floor(model, problem.x, problem.y, 20, "point") == pytest.approx(point)
        # ELBO: the prior part's bound is −log ∫ p(w)^(1/T) dw, 0 at T = 1
        a = 1 / T
        prior = -3 * ((1 - a) / 2 * math.log(2 * math.pi) - 0.5 * math.log(a))
        assert loss_floor(model, problem.x, problem.y, 20, "elbo") == pytest.approx(
            20 * 0.5 * math.log(2 * math.pi * 0.25) / T + prior)
    ds = bdl.data.load_dataset("digits", train_size=50)
    assert loss_floor(_classifier(), ds.x_train, ds.y_train, 50, "elbo") == 0.0  # NLL ≥ 0, KL ≥ 0
    learned = bdl.BayesianModel(torch.nn.Linear(2, 1), likelihood=bdl.likelihoods.Gaussian(scale=None))
    assert loss_floor(learned, problem.x, problem.y, 20, "point") == -math.inf  # σ → 0 has no floor


@pytest.mark.parametrize("method, options", [
    ("map", dict(lr=1e6, num_steps=50)),
    ("ensemble", dict(lr=1e6, num_models=2, num_steps=50)),
    ("svi", dict(lr=1e6, num_steps=50)),
])
def test_huge_learning_rates_stop_with_an_error_naming_lr(method, options):
    problem = make_blr(n=30, d=2)  # issue 17: MAP/ensemble at lr=1e6 predicted −5e5 without a word
    with pytest.raises(DivergenceError, match=r"lr=1e\+06.*try lr=100000"):
        bdl.fit(problem.model(), problem.x, problem.y, method=method, seed=0, progress=False, **options)


def test_swag_on_one_data_point_stops_instead_of_reaching_huge_losses():
    problem = make_blr(n=1, d=2)  # issue 17: SWAG on one point ran on at loss 7.5e9
    with pytest.raises(DivergenceError, match="swag diverged"):
        bdl.fit(problem.model(), problem.x, problem.y, method="swag", epochs=30, lr=5.0, seed=0, progress=False)


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_full_rank_svi_converges_on_a_small_mlp_at_defaults(seed):
    ds = bdl.data.load_dataset("digits", seed=0, train_size=300)
    finals = {}
    for guide in ("normal", "fullrank"):
        post = bdl.fit(_classifier(seed=seed), ds.x_train, ds.y_train, method="svi", guide=guide, num_steps=600,
                       seed=seed, progress=False)
        finals[guide] = sum(post.info["losses"][-50:]) / 50
        assert bdl.metrics.accuracy(post.predict(ds.x_test, num_samples=30), ds.y_test) > 0.8
    # the full-rank family contains the mean-field one: its (negative) ELBO must not be worse
    assert finals["fullrank"] < finals["normal"] * 1.02, finals
