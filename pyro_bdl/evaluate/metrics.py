"""Metrics of predictive distributions.

Every classification metric takes a [`BMAPredictive`][pyro_bdl.BMAPredictive] or a tensor of
class probabilities ``(n, C)`` (a 1-D tensor is read as Bernoulli probabilities of class 1);
regression metrics take a [`BMAPredictive`][pyro_bdl.BMAPredictive]. Averages are over test
points.

Classification: `accuracy`, `nll`, `brier`, `ece` (with
`calibration_bins` behind the reliability diagram), `entropy`, `ood_auroc`.
Regression: `rmse`, `nll` (the Gaussian-mixture NLL of the BMA), `coverage`,
`crps`. Between two predictive distributions (Izmailov et al. 2021, "What are Bayesian
neural network posteriors really like?", §5): `agreement` and `total_variation`.

Numerics: the BMA log density is a log-sum-exp over draws of each draw's log density, which
the likelihood computes from logits (no log(0)); probabilities given directly are clamped at the
smallest normal float before a log, and 0·log 0 is taken as 0.
"""
from __future__ import annotations

import math
from typing import Dict, NamedTuple, Optional, Union

import torch

from .._util.random import seeded
from ..posterior.predictive import BMAPredictive, _base
from .._util.checks import check_int

Predictive = Union[BMAPredictive, torch.Tensor]


# -- inputs --------------------------------------------------------------------------------
def _as_tensor(value, name: str) -> torch.Tensor:
    if torch.is_tensor(value):
        return value
    try:
        import numpy as np

        if isinstance(value, np.ndarray):
            return torch.from_numpy(value)
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"{name} must be a BMAPredictive or a torch.Tensor, got {type(value).__name__}")


def _targets(y, like: torch.Tensor, name: str = "y") -> torch.Tensor:
    """Targets on the predictions' device (a CUDA posterior with CPU targets), floating ones in their dtype."""
    y = _as_tensor(y, name)
    return y.to(like.device, like.dtype) if y.is_floating_point() and like.is_floating_point() else y.to(like.device)


def _class_probs(pred: Predictive) -> torch.Tensor:
    """BMA class probabilities ``(n, C)`` of a predictive or a probability tensor."""
    if isinstance(pred, BMAPredictive):
        p = pred.probs
    else:
        p = _as_tensor(pred, "pred")
        if not p.is_floating_point():
            raise TypeError("class probabilities must be a floating point tensor")
        if p.dim() not in (1, 2):
            raise ValueError(f"class probabilities must have shape (n, C) or (n,) (Bernoulli), got {tuple(p.shape)}")
        if ((p < 0) | (p > 1)).any() or not torch.isfinite(p).all():
            raise ValueError("class probabilities must lie in [0, 1]; pass probabilities, not logits "
                             "(use logits.softmax(-1))")
        if p.dim() == 2 and not torch.allclose(p.sum(-1), torch.ones((), dtype=p.dtype, device=p.device), atol=1e-4):
            raise ValueError("each row of class probabilities must sum to 1; pass probabilities, not logits")
    if p.dim() == 1:  # Bernoulli: probability of class 1
        p = torch.stack([1 - p, p], -1)
    return p


def _labels(y, p: torch.Tensor) -> torch.Tensor:
    y = _as_tensor(y, "y").to(p.device)
    if y.dim() == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape != p.shape[:1]:
        raise ValueError(f"labels have shape {tuple(y.shape)} but there are {p.shape[0]} predictions; pass one class "
                         "index per point")
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise ValueError("labels must be class indices (integers)")
    y = y.long()
    if ((y < 0) | (y >= p.shape[-1])).any():
        raise ValueError(f"labels must lie in 0..{p.shape[-1] - 1}")
    return y


def _safe_log(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


def _require(pred: Predictive, kind: str, what: str) -> BMAPredictive:
    if not isinstance(pred, BMAPredictive) or pred.kind != kind:
        raise TypeError(f"{what} needs a {kind} BMAPredictive (posterior.predict(x)), got {type(pred).__name__}"
                        + (f" of kind {pred.kind!r}" if isinstance(pred, BMAPredictive) else ""))
    return pred


# -- classification ------------------------------------------------------------------------
def accuracy(pred: Predictive, y: torch.Tensor) -> float:
    """Fraction of points whose most probable class (under the BMA) is the label."""
    p = _class_probs(pred)
    return float((p.argmax(-1) == _labels(y, p)).float().mean())


def nll(pred: Predictive, y: torch.Tensor) -> float:
    """Mean negative log predictive density, −(1/n) Σᵢ log p(yᵢ | xᵢ, D).

    For a BMA, log p(y | x, D) = logsumexp_s log p(y | x, w_s) − log S (stable; per-draw log
    densities come from logits). With Gaussian likelihoods this is the NLL of the Gaussian
    mixture (1/S) Σ_s N(y; μ_s(x), σ_s²(x)). Probability tensors: −log max(p_y, tiny).
    """
    if isinstance(pred, BMAPredictive):
        y = _as_tensor(y, "y")
        return float(-pred.log_prob(y).mean())
    p = _class_probs(pred)
    y = _labels(y, p)
    return float(-_safe_log(p.gather(-1, y[:, None])[:, 0]).mean())


def brier(pred: Predictive, y: torch.Tensor) -> float:
    """Brier score (1/n) Σᵢ Σ_c (p_ic − 1[yᵢ = c])² (Brier 1950); 0 is perfect, 2 the worst."""
    p = _class_probs(pred)
    onehot = torch.nn.functional.one_hot(_labels(y, p), p.shape[-1]).to(p.dtype)
    return float(((p - onehot) ** 2).sum(-1).mean())


class CalibrationBins(NamedTuple):
    """Per-bin statistics of equal-width confidence bins (empty bins have count 0 and NaN means)."""

    edges: torch.Tensor  # (K + 1,)
    count: torch.Tensor  # (K,)
    confidence: torch.Tensor  # (K,) mean confidence in the bin
    accuracy: torch.Tensor  # (K,) fraction correct in the bin


def calibration_bins(pred: Predictive, y: torch.Tensor, num_bins: int = 15) -> CalibrationBins:
    """Bin the top-1 confidence into ``num_bins`` equal-width bins ((k−1)/K, k/K].

    Confidence 1 falls in the last bin and the smallest confidences in the first, so every
    prediction lands in a bin. Behind `ece` and `pyro_bdl.plots.reliability_diagram`.
    """
    check_int(num_bins, 'num_bins', 1)
    p = _class_probs(pred)
    conf, guess = p.max(-1)
    correct = (guess == _labels(y, p)).to(p.dtype)
    # Inner edges k/K by division (correctly rounded, so a confidence of exactly 0.7 equals the
    # edge 7/10 and falls in the bin below it, as ((k−1)/K, k/K] says; ceil(conf·K) would not).
    like = dict(dtype=p.dtype, device=p.device)
    inner = torch.arange(1, num_bins, **like) / num_bins
    bins = torch.bucketize(conf, inner, right=False)
    count = torch.zeros(num_bins, **like).index_add_(0, bins, torch.ones_like(conf))
    conf_sum = torch.zeros(num_bins, **like).index_add_(0, bins, conf)
    correct_sum = torch.zeros(num_bins, **like).index_add_(0, bins, correct)
    nan = torch.full_like(count, float("nan"))
    nonempty = count > 0
    edges = torch.cat([torch.zeros(1, **like), inner, torch.ones(1, **like)])
    return CalibrationBins(edges, count,
                           torch.where(nonempty, conf_sum / count.clamp_min(1), nan),
                           torch.where(nonempty, correct_sum / count.clamp_min(1), nan))


def ece(pred: Predictive, y: torch.Tensor, num_bins: int = 15) -> float:
    """Expected calibration error with equal-width confidence bins (Guo et al. 2017).

    ECE = Σ_b (n_b / n) · |acc(b) − conf(b)|, bins ((k−1)/K, k/K]; see `calibration_bins`.
    """
    bins = calibration_bins(pred, y, num_bins)
    gap = (bins.accuracy - bins.confidence).abs().nan_to_num(0.0)
    return float((bins.count * gap).sum() / bins.count.sum())


def predictive_entropy(pred: Predictive) -> torch.Tensor:
    """Per-point entropy of the BMA class probabilities, H = −Σ_c p_c log p_c (nats), ``(n,)``.

    0·log 0 is taken as 0. High entropy marks inputs the model is unsure about (data or model
    uncertainty), the usual score for out-of-distribution detection.
    """
    p = _class_probs(pred)
    return 0.0 - torch.special.xlogy(p, p).sum(-1)  # 0.0 − (…): no negative zeros


def entropy(pred: Predictive) -> float:
    """Mean predictive entropy over the points, (1/n) Σᵢ H[p(y | xᵢ, D)] (nats)."""
    return float(predictive_entropy(pred).mean())


def auroc(scores_negative: torch.Tensor, scores_positive: torch.Tensor) -> float:
    """Area under the ROC curve for telling positives (high scores) from negatives.

    AUROC = P(s⁺ > s⁻) + ½ P(s⁺ = s⁻), computed from average ranks (Mann–Whitney U), so
    ties count one half. 1: perfect separation; 0.5: chance.
    """
    neg = _as_tensor(scores_negative, "scores_negative").detach().reshape(-1).cpu().double()
    pos = _as_tensor(scores_positive, "scores_positive").detach().reshape(-1).cpu().double()
    if len(neg) == 0 or len(pos) == 0:
        raise ValueError("AUROC needs at least one score in each group (in-distribution and out-of-distribution)")
    if not (torch.isfinite(neg).all() and torch.isfinite(pos).all()):
        raise ValueError("scores must be finite")
    from scipy.stats import rankdata

    ranks = rankdata(torch.cat([neg, pos]).numpy())
    u = ranks[len(neg):].sum() - len(pos) * (len(pos) + 1) / 2
    return float(u / (len(neg) * len(pos)))


def ood_auroc(pred_in: Predictive, pred_out: Predictive) -> float:
    """How well predictive entropy separates out-of-distribution inputs (positives) from test
    inputs (negatives): the AUROC of the entropy scores (Lakshminarayanan et al. 2017; Ovadia et
    al. 2019). 0.5 means the model is as sure on the OOD inputs as on the test inputs."""
    return auroc(predictive_entropy(pred_in), predictive_entropy(pred_out))


# -- comparing two predictive distributions ------------------------------------------------
def agreement(pred_a: Predictive, pred_b: Predictive) -> float:
    """Top-1 agreement (Izmailov et al. 2021, eq. 5): (1/n) Σᵢ 1[argmax_c p_a(c|xᵢ) = argmax_c p_b(c|xᵢ)].

    Used to compare an approximate posterior's predictions with a reference (HMC); 1 is perfect.
    Classification only (for regression use `total_variation`).
    """
    for p in (pred_a, pred_b):
        if isinstance(p, BMAPredictive) and p.kind != "classification":
            raise ValueError("agreement compares top-1 classes and needs classification predictives; "
                             "for regression use total_variation")
    pa, pb = _class_probs(pred_a), _class_probs(pred_b)
    _same_shape(pa, pb)
    return float((pa.argmax(-1) == pb.argmax(-1)).float().mean())


def total_variation(pred_a: Predictive, pred_b: Predictive, num_points: int = 1024) -> float:
    """Mean total variation distance between two predictive distributions (Izmailov et al. 2021, eq. 6):
    (1/n) Σᵢ ½ ∫ |p_a(y | xᵢ) − p_b(y | xᵢ)| dy, in [0, 1]; 0 means identical predictions.

    Classification: ½ Σ_c |p_a(c|x) − p_b(c|x)|. Regression (scalar targets): the integral by
    the trapezoid rule on ``num_points`` grid points spanning ±12 scales around every
    component of both mixtures.
    """
    a_reg = isinstance(pred_a, BMAPredictive) and pred_a.kind == "regression"
    b_reg = isinstance(pred_b, BMAPredictive) and pred_b.kind == "regression"
    if a_reg != b_reg:
        raise ValueError("total_variation needs two predictives of the same kind "
                         "(both regression or both classification)")
    if not a_reg:
        pa, pb = _class_probs(pred_a), _class_probs(pred_b)
        _same_shape(pa, pb)
        return float(0.5 * (pa - pb).abs().sum(-1).mean())
    check_int(num_points, 'num_points', 16)
    if pred_a.component.event_shape or pred_b.component.event_shape:
        raise ValueError("total_variation supports scalar regression targets only")
    if pred_a.component.batch_shape[1:] != pred_b.component.batch_shape[1:]:
        raise ValueError(f"the predictives cover different inputs: batch {tuple(pred_a.component.batch_shape[1:])} "
                         f"vs {tuple(pred_b.component.batch_shape[1:])}")
    lo = torch.minimum(_support(pred_a, -12.0), _support(pred_b, -12.0))
    hi = torch.maximum(_support(pred_a, 12.0), _support(pred_b, 12.0))
    t = torch.linspace(0, 1, num_points, dtype=lo.dtype, device=lo.device)
    integrand = []
    for chunk in torch.split(t, 128):
        grid = lo + (hi - lo) * chunk[:, None]  # (G, B)
        integrand.append((_mixture_log_prob(pred_a, grid).exp() - _mixture_log_prob(pred_b, grid).exp()).abs())
    diff = torch.cat(integrand)  # (num_points, B)
    step = (hi - lo) / (num_points - 1)
    integral = step * (diff.sum(0) - 0.5 * (diff[0] + diff[-1]))
    return float((0.5 * integral).clamp(0, 1).mean())


def _same_shape(pa: torch.Tensor, pb: torch.Tensor) -> None:
    if pa.shape != pb.shape:
        raise ValueError(f"the two predictives disagree in shape: {tuple(pa.shape)} vs {tuple(pb.shape)}; "
                         "predict both at the same inputs")


def _support(pred: BMAPredictive, k: float) -> torch.Tensor:
    base = _base(pred.component)
    loc = pred.component.mean if not hasattr(base, "loc") else base.loc
    scale = base.scale if hasattr(base, "scale") else pred.component.variance.sqrt()
    loc, scale = torch.broadcast_tensors(loc, scale)
    ends = loc + k * scale
    return ends.min(0).values if k < 0 else ends.max(0).values


def _mixture_log_prob(pred: BMAPredictive, grid: torch.Tensor) -> torch.Tensor:
    """log (1/S) Σ_s p(grid | w_s) for a grid ``(G, B)`` → ``(G, B)``."""
    lp = pred.component.log_prob(grid[:, None, :])  # (G, S, B)
    return torch.logsumexp(lp, dim=1) - math.log(pred.num_samples)


# -- regression ----------------------------------------------------------------------------
def rmse(pred: BMAPredictive, y: torch.Tensor) -> float:
    """Root mean squared error of the predictive mean."""
    mean = pred.mean
    return float(((mean - _targets(y, mean)) ** 2).mean().sqrt())


def coverage(pred: BMAPredictive, y: torch.Tensor, level: float = 0.9) -> float:
    """Fraction of targets inside the central ``level`` predictive interval (ideal: ``level``)."""
    lo, hi = pred.interval(level)
    y = _targets(y, lo)
    return float(((y >= lo) & (y <= hi)).float().mean())


def crps(pred: BMAPredictive, y: torch.Tensor, num_samples: int = 1000, seed: int = 0) -> float:
    """Continuous ranked probability score, CRPS = E|Y − y| − ½ E|Y − Y'| (Gneiting & Raftery 2007),
    estimated from ``num_samples`` predictive draws (lower is better)."""
    g = torch.Generator().manual_seed(seed)
    with seeded(seed):
        a = pred.sample((num_samples,), generator=g)
        b = pred.sample((num_samples,), generator=g)
    y = _targets(y, a)
    return float(((a - y).abs().mean(0) - 0.5 * (a - b).abs().mean(0)).mean())


# -- all at once ---------------------------------------------------------------------------
def evaluate(posterior, x: torch.Tensor, y: torch.Tensor, num_samples: Optional[int] = None,
             seed: int = 0, x_ood: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Test metrics of a posterior's Bayesian model average.

    Classification: ``accuracy``, ``nll``, ``brier``, ``ece``; with out-of-distribution inputs
    ``x_ood`` also ``entropy`` (mean, on ``x``) and ``ood_auroc``. Regression: ``rmse``, ``nll``,
    ``coverage_90``, ``crps``.
    """
    pred = posterior.predict(x, num_samples=num_samples, seed=seed)
    y = posterior.model.likelihood.check_targets(torch.as_tensor(y), pred.output_dim)
    if pred.kind == "classification":
        out = {"accuracy": accuracy(pred, y), "nll": nll(pred, y), "brier": brier(pred, y), "ece": ece(pred, y)}
        if x_ood is not None:
            pred_ood = posterior.predict(x_ood, num_samples=num_samples, seed=seed)
            out["entropy"] = entropy(pred)
            out["ood_auroc"] = ood_auroc(pred, pred_ood)
        return out
    if x_ood is not None:
        raise ValueError("x_ood (entropy-based OOD detection) is defined for classification")
    return {"rmse": rmse(pred, y), "nll": nll(pred, y), "coverage_90": coverage(pred, y, 0.9), "crps": crps(pred, y)}
