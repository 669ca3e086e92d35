"""The loss-trend verdict (`pyro_bdl.infer.trend`): was the loss still falling when the run ended?

Synthetic histories with a known slope and AR(1) noise check that the standard error is calibrated and the verdict
flags at its error rate at the tolerance; a default SVI run on a digits MLP (still falling, notes/issue-13-lead10.md) warns."""
import warnings

import pytest
import torch

import pyro_bdl as bdl
from blr import make_blr
from pyro_bdl.infer import svi
from pyro_bdl.infer.stationarity import StationarityWarning
from pyro_bdl.infer.trend import ALPHA, RATE_STEPS, TREND_TOLERANCE, loss_trend, warn_if_falling


def _histories(n, slope, noise, reps, seed, rho=0.8):
    """``reps`` histories of ``n`` steps falling by ``slope`` per RATE_STEPS steps (unit 1) with AR(1) noise of
    marginal sd ``noise`` (lag-one correlation ``rho``, like a minibatch optimiser's losses)."""
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(reps, n, generator=gen, dtype=torch.float64) * noise * (1 - rho ** 2) ** 0.5
    ar = torch.zeros(reps, n, dtype=torch.float64)
    ar[:, 0] = torch.randn(reps, generator=gen, dtype=torch.float64) * noise
    for t in range(1, n):
        ar[:, t] = rho * ar[:, t - 1] + eps[:, t]
    return 5.0 - slope / RATE_STEPS * torch.arange(n, dtype=torch.float64) + ar


def test_the_slope_and_its_standard_error_are_calibrated():
    """Flat histories: the slope's z-score has sd ≈ 1 (the batch means' error is the right size) and almost none
    is flagged; at a true slope equal to the tolerance about ALPHA are flagged; at 5× it (se ≈ tolerance) nearly all."""
    n, noise, reps = 2000, 0.26, 400  # se ≈ 0.01 = the tolerance
    flat = [loss_trend(h, 1.0) for h in _histories(n, 0.0, noise, reps, seed=0)]
    z = torch.tensor([t.slope / t.se for t in flat])
    assert abs(float(z.mean())) < 0.2 and 0.8 < float(z.std()) < 1.25, (float(z.mean()), float(z.std()))
    assert 0.006 < sum(t.se for t in flat) / reps < 0.016
    assert sum(t.falling for t in flat) <= 0.02 * reps  # z > t + tolerance/se ≈ 2.7: 0.4% expected
    edge = [loss_trend(h, 1.0).falling for h in _histories(n, TREND_TOLERANCE, noise, reps, seed=1)]
    assert 0.2 * ALPHA < sum(edge) / reps < 2.5 * ALPHA, sum(edge)
    clear = [loss_trend(h, 1.0).falling for h in _histories(n, 5 * TREND_TOLERANCE, noise, reps, seed=2)]
    assert sum(clear) / reps > 0.95, sum(clear)


def test_the_slope_is_in_nats_per_data_point_per_rate_steps():
    """A noiseless history falling by 3 per 100 steps on a total loss of unit N/T = 50 reads 0.06 at any length (its
    se is the trend's own spread within a quarter: a conservative 0.14 of the slope)."""
    for n in (400, 4000):
        trend = loss_trend(100.0 - 0.03 * torch.arange(n, dtype=torch.float64), 50.0)
        assert trend.slope == pytest.approx(0.06, rel=1e-9) and trend.se == pytest.approx(0.0081, rel=0.05)
        assert trend.steps == n // 4 and trend.falling


def test_short_or_nonfinite_histories_have_no_trend_and_unit_must_be_positive():
    assert loss_trend(torch.ones(39), 1.0) is None
    history = torch.ones(400)
    history[-5] = float("nan")
    assert loss_trend(history, 1.0) is None
    with pytest.raises(ValueError, match="unit must be > 0"):
        loss_trend(torch.ones(400), 0.0)


def test_warn_if_falling_names_the_run_and_skips_quiet_runs():
    losses = torch.stack([torch.full((2000,), 3.0), 10.0 - 0.01 * torch.arange(2000.0)])
    with pytest.warns(StationarityWarning, match=r"svi: the loss of run 1 \(1 of 2 runs\) was still falling.*"
                                                 r"0\.1 ± 0.*steps=8000"):
        trends = warn_if_falling("svi", losses, 10.0)
    assert not trends[0].falling and trends[1].falling
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_falling("svi", losses, 10.0, quiet=[False, True])


def test_the_slope_across_warm_restarts_compares_the_schedules_ends():
    """Two 800-step schedules, each falling from a restart: with ``period`` the last quarter is read against the
    previous schedule's last quarter (the same final rates), so equal ends read 0 and ends 1.6 apart read 0.2."""
    t = torch.arange(800, dtype=torch.float64)
    one = 10.0 - 0.01 * t
    same = torch.cat([one, one])
    assert loss_trend(same, 1.0).slope > 0.9  # within the last schedule it falls by 1 per 100 steps
    assert loss_trend(same, 1.0, period=800).slope == pytest.approx(0.0, abs=1e-12)
    lower = torch.cat([one, one - 1.6])
    assert loss_trend(lower, 1.0, period=800).slope == pytest.approx(1.6 * RATE_STEPS / 800, rel=1e-9)
    # a single schedule reads its third against its last quarter whatever the period says
    assert loss_trend(one, 1.0, period=800).slope == pytest.approx(loss_trend(one, 1.0).slope)


def _digits_fit(**options):
    ds = bdl.data.load_dataset("digits", seed=0, train_size=300)
    torch.manual_seed(0)
    model = bdl.BayesianModel(bdl.networks.mlp(ds.num_features, [16], 10, "relu"),
                              prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Categorical())
    return bdl.fit(model, ds.x_train, ds.y_train, method="svi", batch_size=50, seed=0, progress=False, **options)


def test_svi_at_a_given_length_on_a_digits_mlp_warns_that_its_loss_is_still_falling():
    """2000 steps of mean-field SVI on 300 digits with a 16-unit MLP still fall by ≈ 0.03 nats per data point per 100
    steps at their end (the sds are still growing towards the prior), inside the stationarity check's tolerances:
    the trend is what says so. About 3 s."""
    with pytest.warns(StationarityWarning, match=r"svi: the loss was still falling.*steps=8000"):
        post = _digits_fit(steps=2000)
    assert post.info["loss_slope"] - 2 * post.info["loss_slope_se"] > TREND_TOLERANCE
    assert post.info["extensions"] == 0


def test_svi_at_its_default_length_runs_on_while_its_loss_still_falls():
    """The default length is extended by warm restarts of the schedule until a schedule's end gains less than the
    tolerance on the one before (or MAX_EXTENSIONS are spent): the same fit ends lower and quiet."""
    fixed = _digits_fit(steps=2000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StationarityWarning)
        post = _digits_fit()
    k = post.info["extensions"]
    assert 1 <= k <= svi.MAX_EXTENSIONS and post.info["loss"].shape == (1, 2000 * (1 + k))
    assert post.info["loss_slope"] < fixed.info["loss_slope"]
    end = lambda p: float(p.info["loss"][0, -500:].mean())  # noqa: E731
    assert end(post) < end(fixed) - 0.05 * 300  # > 0.05 nats per data point lower
    # a length the user gives is kept
    assert _digits_fit(epochs=300).info["loss"].shape == (1, 1800)


def test_svi_records_the_slope_per_run_and_stays_quiet_after_a_finish():
    """On linear regression the finish moves the guide after Adam, so its history does not speak for the result:
    no trend warning, but the slope is recorded (per member with several runs)."""
    problem = make_blr(n=200, d=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StationarityWarning)
        post = bdl.fit(problem.model(), problem.x, problem.y, method="svi", steps=400, batch_size=20, seed=0,
                       progress=False, num_chains=2)
    for member in post.members:
        assert member.info["newton_steps_taken"] > 0
        assert isinstance(member.info["loss_slope"], float) and member.info["loss_slope_se"] >= 0


def test_svi_runs_of_several_chains_are_extended_together():
    """With num_chains = 2 every run is extended while any still falls, so the loss history stays (K, steps); each
    member reads its own slope. About 15 s (20 s under load)."""
    post = _digits_fit(num_chains=2)
    k = post.info["extensions"]
    assert k >= 1 and post.info["loss"].shape == (2, 2000 * (1 + k + post.info["polished"]))
    assert all(isinstance(m.info["loss_slope"], float) for m in post.members)
