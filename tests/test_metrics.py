"""Metrics against hand-computed values, edge cases and synthetic calibration."""
import math

import pyro.distributions as dist
import pytest
import torch

import pyro_bdl as bdl
from pyro_bdl import metrics as m
from pyro_bdl.posterior.predictive import BMAPredictive

P = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.25, 0.25, 0.5], [1.0, 0.0, 0.0]], dtype=torch.float64)
Y = torch.tensor([0, 2, 2, 0])


def categorical_bma(probs_per_draw: torch.Tensor) -> BMAPredictive:
    """A BMA whose S draws have the given class probabilities (S, B, C)."""
    logits = probs_per_draw.log()
    return BMAPredictive(dist.Categorical(logits=logits), logits, "classification")


def gaussian_bma(loc: torch.Tensor, scale: torch.Tensor) -> BMAPredictive:
    """A regression BMA with components N(loc, scale²), loc and scale (S, B)."""
    return BMAPredictive(dist.Normal(loc, scale), loc.unsqueeze(-1), "regression")


def test_hand_computed_classification_metrics():
    assert m.accuracy(P, Y) == pytest.approx(0.75)
    assert m.nll(P, Y) == pytest.approx(-(math.log(0.7) + math.log(0.3) + math.log(0.5) + 0.0) / 4)
    assert m.brier(P, Y) == pytest.approx((0.14 + 0.86 + 0.375 + 0.0) / 4)
    # 10 bins: confidences 0.7, 0.6, 0.5 sit exactly on edges and belong to the bin below; 1.0 to the last.
    bins = m.calibration_bins(P, Y, 10)
    assert bins.count.tolist() == [0, 0, 0, 0, 1, 1, 1, 0, 0, 1]
    assert m.ece(P, Y, 10) == pytest.approx((0.3 + 0.6 + 0.5 + 0.0) / 4)
    h = -(0.7 * math.log(0.7) + 0.2 * math.log(0.2) + 0.1 * math.log(0.1))
    assert m.predictive_entropy(P)[0].item() == pytest.approx(h)
    assert m.predictive_entropy(P)[3].item() == 0.0  # 0·log 0 = 0, no NaN
    assert m.entropy(P) == pytest.approx(float(m.predictive_entropy(P).mean()))


def test_bma_metrics_match_the_averaged_probabilities():
    draws = torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.4, 0.6]]], dtype=torch.float64)  # (S=2, B=2, C=2)
    pred = categorical_bma(draws)
    y = torch.tensor([0, 0])
    mean = draws.mean(0)  # [[0.7, 0.3], [0.3, 0.7]]
    assert m.nll(pred, y) == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2)
    assert m.accuracy(pred, y) == pytest.approx(0.5)
    assert m.brier(pred, y) == pytest.approx(m.brier(mean, y))
    assert m.ece(pred, y) == pytest.approx(m.ece(mean, y))


def test_all_correct_with_confidence_exactly_one():
    p = torch.eye(3)[[0, 1, 2, 2]]
    y = torch.tensor([0, 1, 2, 2])
    assert m.accuracy(p, y) == 1.0
    assert m.nll(p, y) == 0.0
    assert m.brier(p, y) == 0.0
    assert m.ece(p, y) == 0.0
    assert m.entropy(p) == 0.0
    assert m.calibration_bins(p, y).count[-1] == 4  # confidence 1 lands in the last bin


def test_confidence_one_and_wrong_is_finite():
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([1, 1])
    assert math.isfinite(m.nll(p, y))  # clamped, no log(0)
    assert m.ece(p, y) == pytest.approx(0.5)  # bin 1.0: accuracy 1/2, confidence 1
    assert m.brier(p, y) == pytest.approx(1.0)


def test_one_class():
    p = torch.ones(5, 1)  # a single class: every prediction certain and right
    y = torch.zeros(5, dtype=torch.long)
    assert (m.accuracy(p, y), m.nll(p, y), m.brier(p, y), m.ece(p, y), m.entropy(p)) == (1.0, 0.0, 0.0, 0.0, 0.0)
    # Labels from one class only, three-class predictions.
    q = torch.tensor([[0.8, 0.1, 0.1], [0.4, 0.5, 0.1]])
    yq = torch.tensor([0, 0])
    assert m.accuracy(q, yq) == 0.5
    assert m.brier(q, yq) == pytest.approx((0.04 + 0.01 + 0.01 + 0.36 + 0.25 + 0.01) / 2)


def test_bernoulli_probabilities():
    p = torch.tensor([0.9, 0.2], dtype=torch.float64)  # P(y = 1)
    y = torch.tensor([1, 1])
    assert m.accuracy(p, y) == 0.5
    assert m.nll(p, y) == pytest.approx(-(math.log(0.9) + math.log(0.2)) / 2)


def test_nll_is_stable_for_extreme_logits():
    logits = torch.tensor([[[1000.0, -1000.0]], [[-1000.0, 1000.0]]])  # two draws, one point
    pred = BMAPredictive(dist.Categorical(logits=logits), logits, "classification")
    # each class has BMA probability 1/2 exactly; the naive log(mean(softmax)) would still work here but
    # the single-draw log density (−2000) must not become −inf:
    assert m.nll(pred, torch.tensor([0])) == pytest.approx(math.log(2))
    single = BMAPredictive(dist.Categorical(logits=logits[:1]), logits[:1], "classification")
    assert m.nll(single, torch.tensor([1])) == pytest.approx(2000.0)


def test_gaussian_mixture_nll():
    loc = torch.tensor([[0.0], [2.0]], dtype=torch.float64)
    scale = torch.tensor([[1.0], [0.5]], dtype=torch.float64)
    pred = gaussian_bma(loc, scale)
    y = torch.tensor([1.0], dtype=torch.float64)
    density = 0.5 * (math.exp(-0.5) / math.sqrt(2 * math.pi) + math.exp(-0.5 * 4) / (0.5 * math.sqrt(2 * math.pi)))
    assert m.nll(pred, y) == pytest.approx(-math.log(density))
    far = torch.tensor([200.0], dtype=torch.float64)  # both densities underflow; log-sum-exp does not
    assert math.isfinite(m.nll(pred, far))


def test_calibrated_and_overconfident_synthetic_predictors():
    g = torch.Generator().manual_seed(0)
    n = 20000
    conf = 0.5 + 0.5 * torch.rand(n, generator=g, dtype=torch.float64)
    guess = torch.randint(2, (n,), generator=g)
    probs = torch.stack([1 - conf, conf], -1)
    probs = torch.where(guess[:, None] == 1, probs, probs.flip(-1))
    u = torch.rand(n, generator=g, dtype=torch.float64)
    y_calibrated = torch.where(u < conf, guess, 1 - guess)
    true_conf = 0.5 + (conf - 0.5) / 3  # actually right far less often than claimed
    y_over = torch.where(u < true_conf, guess, 1 - guess)
    assert m.ece(probs, y_calibrated) < 0.02
    assert m.ece(probs, y_over) > 0.1
    assert m.ece(probs, y_over) == pytest.approx(float((conf - true_conf).mean()), abs=0.02)


def test_auroc_by_hand_and_ood():
    assert m.auroc(torch.tensor([0.1, 0.4, 0.35]), torch.tensor([0.8, 0.4])) == pytest.approx(5.5 / 6)
    assert m.auroc(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])) == pytest.approx(0.5)
    sure = torch.tensor([[0.98, 0.01, 0.01], [0.01, 0.97, 0.02]])
    unsure = torch.full((3, 3), 1 / 3)
    assert m.ood_auroc(sure, unsure) == 1.0
    assert m.ood_auroc(unsure, sure) == 0.0
    with pytest.raises(ValueError, match="at least one"):
        m.auroc(torch.tensor([]), torch.tensor([1.0]))


def test_agreement_and_total_variation_by_hand():
    pa = torch.tensor([[0.7, 0.3], [0.4, 0.6]])
    pb = torch.tensor([[0.6, 0.4], [0.6, 0.4]])
    assert m.agreement(pa, pb) == 0.5
    assert m.total_variation(pa, pb) == pytest.approx(0.15)
    assert m.agreement(pa, pa) == 1.0 and m.total_variation(pa, pa) == 0.0
    with pytest.raises(ValueError, match="same inputs"):
        m.agreement(pa, pb[:1])


def test_total_variation_regression_matches_closed_form():
    mu = torch.tensor([0.0, 1.0, 3.0], dtype=torch.float64)
    a = gaussian_bma(torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64))
    b = gaussian_bma(mu[None], torch.ones(1, 3, dtype=torch.float64))
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = (2 * normal.cdf(mu / 2) - 1).mean()  # TV(N(0,1), N(μ,1)) = 2Φ(μ/2) − 1
    assert m.total_variation(a, b) == pytest.approx(float(expected), abs=1e-4)
    # a two-component mixture against itself, and draw order does not matter
    f64 = dict(dtype=torch.float64)
    mix = gaussian_bma(torch.tensor([[0.0], [2.0]], **f64), torch.tensor([[1.0], [0.3]], **f64))
    mix_flipped = gaussian_bma(torch.tensor([[2.0], [0.0]], **f64), torch.tensor([[0.3], [1.0]], **f64))
    assert m.total_variation(mix, mix_flipped) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="classification predictives"):
        m.agreement(a, b)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="not logits"):
        m.accuracy(torch.tensor([[2.0, -1.0]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="0..2"):
        m.accuracy(P, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="one class index per point"):
        m.brier(P, Y[:2])
    with pytest.raises(TypeError):
        m.accuracy([0.5, 0.5], Y)


def test_evaluate_with_ood_inputs():
    torch.manual_seed(0)
    x = torch.randn(60, 2)
    y = (x[:, 0] > 0).long()
    model = bdl.BayesianModel(torch.nn.Linear(2, 2), likelihood=bdl.likelihoods.Categorical())
    post = bdl.fit(model, x, y, method="map", num_steps=100, lr=0.1, progress=False)
    out = m.evaluate(post, x, y, x_ood=torch.zeros(20, 2))  # on the decision boundary: maximal entropy
    assert set(out) == {"accuracy", "nll", "brier", "ece", "entropy", "ood_auroc"}
    assert out["accuracy"] > 0.9 and out["ood_auroc"] > 0.9
