"""The Bayesian model average as a distribution.

Given S posterior draws w_s, the predictive distribution at an input x is the equal-weight
mixture (Wilson & Izmailov 2020, eq. 1, by simple Monte Carlo)

    p(y | x, D) ≈ (1/S) Σ_s p(y | x, w_s).

[`BMAPredictive`][pyro_bdl.BMAPredictive] holds the S component distributions (batch shape ``(S, B)``) and
gives the mixture's mean, variance (law of total variance), probabilities, log density
(log-sum-exp over draws), quantiles (bisection on the mixture CDF) and samples.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import pyro.distributions as dist
import torch


def _base(d: dist.Distribution) -> dist.Distribution:
    while isinstance(d, dist.Independent):
        d = d.base_dist
    return d


def _cdf(d: dist.Distribution, value: torch.Tensor) -> torch.Tensor:
    base = _base(d)
    if isinstance(base, dist.StudentT):
        from scipy import stats  # torch has no Student-t CDF

        z = ((value - base.loc) / base.scale).detach().cpu().numpy()
        return torch.as_tensor(stats.t.cdf(z, base.df.detach().cpu().numpy()), dtype=value.dtype)
    return base.cdf(value)


class BMAPredictive:
    """Equal-weight mixture of ``component`` over its first batch dimension (the S draws).

    Attributes:
        component: p(y | x, w_s) for every draw, batch shape ``(S, B)`` (+ event shape).
        outputs: the raw network outputs ``(S, B, out_dim)``.
        kind: ``"regression"`` or ``"classification"``.
    """

    def __init__(self, component: dist.Distribution, outputs: torch.Tensor, kind: str):
        if len(component.batch_shape) < 2:
            raise ValueError("component must have batch shape (S, B)")
        self.component = component
        self.outputs = outputs
        self.kind = kind

    @property
    def num_samples(self) -> int:
        """S, the number of posterior draws the predictive averages over."""
        return self.component.batch_shape[0]

    # -- moments ------------------------------------------------------------------------
    @property
    def draw_means(self) -> torch.Tensor:
        """E[y | x, w_s] for every draw, ``(S, B, ...)``: the function-space value of each draw
        (regression: the predicted location — the mean, or for Student-t, whose mean may not
        exist, its location; classification: the class probabilities ``(S, B, C)``, or the
        probability of class 1 ``(S, B)`` for Bernoulli). Unlike logits or weights it is
        identifiable, so convergence diagnostics use it."""
        base = _base(self.component)
        if self.kind == "classification":
            return base.probs
        if isinstance(base, dist.StudentT):
            return base.loc.expand(self.component.batch_shape + self.component.event_shape)
        return self.component.mean

    @property
    def probs(self) -> torch.Tensor:
        """Classification: BMA class probabilities, the mean over draws of p(y | x, w_s). ``(B, C)`` or ``(B,)`` (Bernoulli)."""
        if self.kind != "classification":
            raise AttributeError("probs is defined for classification likelihoods; use mean/variance for regression")
        return _base(self.component).probs.mean(0)

    @property
    def mean(self) -> torch.Tensor:
        """E[y | x, D]: the average of the draws' means (for Categorical, the class probabilities)."""
        if isinstance(_base(self.component), dist.Categorical):
            return self.probs
        return self.component.mean.mean(0)

    @property
    def variance(self) -> torch.Tensor:
        """Var[y | x, D] = E_s[Var(y | w_s)] + Var_s[E(y | w_s)] (aleatoric + epistemic)."""
        if isinstance(_base(self.component), dist.Categorical):
            p = self.probs
            return p * (1 - p)
        return self.aleatoric_variance + self.epistemic_variance

    @property
    def aleatoric_variance(self) -> torch.Tensor:
        """E_s[Var(y | x, w_s)]: noise the model expects even with known weights."""
        return self.component.variance.mean(0)

    @property
    def epistemic_variance(self) -> torch.Tensor:
        """Var_s[E(y | x, w_s)]: spread of the draws' means, the uncertainty about the weights."""
        return self.component.mean.var(0, unbiased=False)

    @property
    def stddev(self) -> torch.Tensor:
        """Predictive standard deviation, sqrt(Var[y | x, D]) (aleatoric + epistemic)."""
        return self.variance.sqrt()

    # -- densities ----------------------------------------------------------------------
    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x, D) = logsumexp_s log p(y | x, w_s) − log S, per data point ``(B,)``."""
        lp = self.component.log_prob(y)
        return torch.logsumexp(lp, dim=0) - math.log(self.num_samples)

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        """Regression: mixture CDF (1/S) Σ_s F(value | w_s)."""
        self._require_regression("cdf")
        return _cdf(self.component, value).mean(0)

    def quantile(self, q: Union[float, Sequence[float], torch.Tensor], iters: int = 60) -> torch.Tensor:
        """Regression: the q-quantile(s) of the mixture, by bisection on its CDF.

        Returns shape ``(B, ...)`` for a float ``q`` and ``(len(q), B, ...)`` for several.
        """
        self._require_regression("quantile")
        qs = torch.as_tensor(q, dtype=self.outputs.dtype)
        if ((qs <= 0) | (qs >= 1)).any():
            raise ValueError(f"quantile levels must lie in (0, 1), got {q}")
        mean, std = self.component.mean, self.component.variance.sqrt()
        lo0 = (mean - 50 * std).min(0).values
        hi0 = (mean + 50 * std).max(0).values
        out = []
        for level in qs.reshape(-1):
            lo, hi = lo0.clone(), hi0.clone()
            for _ in range(iters):
                mid = (lo + hi) / 2
                below = self.cdf(mid) < level
                lo = torch.where(below, mid, lo)
                hi = torch.where(below, hi, mid)
            out.append((lo + hi) / 2)
        result = torch.stack(out)
        return result[0] if qs.dim() == 0 else result.reshape(*qs.shape, *result.shape[1:])

    def interval(self, coverage: float = 0.9) -> torch.Tensor:
        """Central predictive interval ``(2, B, ...)``: the (1−c)/2 and (1+c)/2 quantiles."""
        a = (1 - coverage) / 2
        return self.quantile([a, 1 - a])

    def entropy(self) -> torch.Tensor:
        """Classification: entropy of the BMA class probabilities, H[p(y | x, D)]."""
        p = self.probs
        if isinstance(_base(self.component), dist.Bernoulli):
            p = torch.stack([1 - p, p], -1)
        return -(p * torch.log(p.clamp_min(1e-45))).sum(-1)

    def sample(self, sample_shape: Sequence[int] = (), generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draws y ~ p(y | x, D): pick a weight draw uniformly, then sample its likelihood."""
        shape = torch.Size(sample_shape)
        n = max(1, math.prod(shape))
        ys = self.component.sample((n,))  # (n, S, B, ...)
        pick = torch.randint(self.num_samples, (n,), generator=generator)
        out = ys[torch.arange(n), pick]
        return out.reshape(*shape, *out.shape[1:])

    def _require_regression(self, what: str) -> None:
        if self.kind != "regression":
            raise AttributeError(f"{what} is defined for regression likelihoods; use probs for classification")

    def __repr__(self) -> str:
        return f"BMAPredictive(kind={self.kind!r}, num_samples={self.num_samples}, batch={tuple(self.component.batch_shape[1:])})"
