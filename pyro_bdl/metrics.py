"""Metrics of predictive distributions (:class:`~pyro_bdl.predictive.BMAPredictive`).

Classification: accuracy, negative log likelihood, Brier score, expected calibration error.
Regression: RMSE, NLL of the predictive mixture, central-interval coverage, CRPS.
All averages are over test points; NLL uses log-sum-exp over draws (no log(0)).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch

from .predictive import BMAPredictive


def _class_probs(pred: BMAPredictive) -> torch.Tensor:
    p = pred.probs
    if p.dim() == 1:  # Bernoulli: probability of class 1
        p = torch.stack([1 - p, p], -1)
    return p


def accuracy(pred: BMAPredictive, y: torch.Tensor) -> float:
    """Fraction of points whose most probable class (under the BMA) is the label."""
    return float((_class_probs(pred).argmax(-1) == y.long()).float().mean())


def nll(pred: BMAPredictive, y: torch.Tensor) -> float:
    """Mean negative log predictive density, −(1/n) Σᵢ log p(yᵢ | xᵢ, D)."""
    return float(-pred.log_prob(y).mean())


def brier(pred: BMAPredictive, y: torch.Tensor) -> float:
    """Brier score (1/n) Σᵢ Σ_c (p_ic − 1[yᵢ = c])² (Brier 1950)."""
    p = _class_probs(pred)
    onehot = torch.nn.functional.one_hot(y.long(), p.shape[-1]).to(p.dtype)
    return float(((p - onehot) ** 2).sum(-1).mean())


def ece(pred: BMAPredictive, y: torch.Tensor, num_bins: int = 15) -> float:
    """Expected calibration error with equal-width confidence bins (Guo et al. 2017).

    ECE = Σ_b (n_b / n) · |acc(b) − conf(b)|, bins ((k−1)/K, k/K]; confidence 0 falls in the first bin
    and confidence 1 in the last, so every prediction lands in a bin.
    """
    p = _class_probs(pred)
    conf, guess = p.max(-1)
    correct = (guess == y.long()).to(p.dtype)
    bins = torch.clamp(torch.ceil(conf * num_bins).long() - 1, 0, num_bins - 1)
    total = torch.zeros(num_bins, dtype=p.dtype).index_add_(0, bins, torch.ones_like(conf))
    gap = torch.zeros(num_bins, dtype=p.dtype).index_add_(0, bins, correct - conf)
    return float(gap.abs().sum() / conf.numel())


def rmse(pred: BMAPredictive, y: torch.Tensor) -> float:
    """Root mean squared error of the predictive mean."""
    return float(((pred.mean - y) ** 2).mean().sqrt())


def coverage(pred: BMAPredictive, y: torch.Tensor, level: float = 0.9) -> float:
    """Fraction of targets inside the central ``level`` predictive interval (ideal: ``level``)."""
    lo, hi = pred.interval(level)
    return float(((y >= lo) & (y <= hi)).float().mean())


def crps(pred: BMAPredictive, y: torch.Tensor, num_samples: int = 1000, seed: int = 0) -> float:
    """Continuous ranked probability score, CRPS = E|Y − y| − ½ E|Y − Y'| (Gneiting & Raftery 2007),
    estimated from ``num_samples`` predictive draws (lower is better)."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        a = pred.sample((num_samples,), generator=g)
        b = pred.sample((num_samples,), generator=g)
    return float(((a - y).abs().mean(0) - 0.5 * (a - b).abs().mean(0)).mean())


def evaluate(posterior, x: torch.Tensor, y: torch.Tensor, num_samples: Optional[int] = None,
             seed: int = 0) -> Dict[str, float]:
    """Test metrics of a posterior's Bayesian model average.

    Classification: ``accuracy``, ``nll``, ``brier``, ``ece``. Regression: ``rmse``, ``nll``,
    ``coverage_90``, ``crps``.
    """
    pred = posterior.predict(x, num_samples=num_samples, seed=seed)
    y = posterior.model.likelihood.check_targets(torch.as_tensor(y), pred.outputs.shape[-1])
    if pred.kind == "classification":
        return {"accuracy": accuracy(pred, y), "nll": nll(pred, y), "brier": brier(pred, y), "ece": ece(pred, y)}
    return {"rmse": rmse(pred, y), "nll": nll(pred, y), "coverage_90": coverage(pred, y, 0.9), "crps": crps(pred, y)}
