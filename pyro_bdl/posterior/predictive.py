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
from typing import Callable, Optional, Sequence, Union

import numpy as np
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
        return torch.as_tensor(stats.t.cdf(z, base.df.detach().cpu().numpy()), dtype=value.dtype, device=value.device)
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

    @property
    def num_inputs(self) -> int:
        """B, the number of inputs."""
        return self.component.batch_shape[1]

    @property
    def output_dim(self) -> int:
        """The network's output width (the last dimension of `outputs`)."""
        return self.outputs.shape[-1]

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
        """log p(y | x, D) = logsumexp_s log p(y | x, w_s) − log S, per data point ``(B,)``.

        ``y`` holds one target per input row given to ``predict``: shape `target_shape`.
        """
        y = self._check_targets(y, "log_prob")
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
        qs = torch.as_tensor(q, dtype=self.outputs.dtype, device=self.outputs.device)
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

    @property
    def target_shape(self) -> torch.Size:
        """The shape of targets ``y`` for `log_prob`: ``(B,)`` for one output, ``(B, D)`` for D."""
        return self.component.batch_shape[1:] + self.component.event_shape

    def _check_targets(self, y, what: str) -> torch.Tensor:
        if not torch.is_tensor(y):
            if not isinstance(y, np.ndarray):
                raise TypeError(f"{what} needs y as a torch.Tensor (or numpy array), got {type(y).__name__}; "
                                "convert it with torch.as_tensor(y)")
            y = torch.from_numpy(y)
        expected = tuple(self.target_shape)
        if tuple(y.shape) != expected:
            B = expected[0]
            rows = f"{y.shape[0]} targets" if y.dim() else "a scalar"
            raise ValueError(f"{what}: y has shape {tuple(y.shape)} but this predictive is over {B} inputs and needs "
                             f"y of shape {expected}{f' ({rows} given)' if not y.dim() or y.shape[0] != B else ''}; "
                             "pass the targets of exactly the x given to predict, in the same order.")
        if self.kind == "classification":
            if y.is_floating_point() and not torch.equal(y, y.round()):
                raise ValueError(f"{what}: classification targets must be class labels (integers), got fractional values")
            if isinstance(_base(self.component), dist.Categorical):
                C = _base(self.component).probs.shape[-1]
                if ((y < 0) | (y >= C)).any():
                    raise ValueError(f"{what}: class labels must lie in 0..{C - 1}, got values from {int(y.min())} "
                                     f"to {int(y.max())}")
                y = y.long()
            else:
                y = y.to(self.outputs.dtype)
        else:
            y = y.to(self.outputs.dtype)
        return y.to(self.outputs.device)  # targets meet the predictions on their device

    def _require_regression(self, what: str) -> None:
        if self.kind != "regression":
            raise AttributeError(f"{what} is defined for regression likelihoods; use probs for classification")

    def __repr__(self) -> str:
        return f"BMAPredictive(kind={self.kind!r}, num_samples={self.num_samples}, batch={tuple(self.component.batch_shape[1:])})"


class ChunkedBMAPredictive(BMAPredictive):
    """The same Bayesian model average, computed a chunk of inputs at a time to bound memory.

    ``forward(start, stop)`` returns the outputs ``(S, stop − start, out_dim)`` of all S draws on
    inputs ``start:stop``, and ``build(outputs)`` their component distributions. Every summary — mean, variance, probabilities,
    ``log_prob``, ``cdf``, quantiles, entropy, samples — is computed chunk by chunk and only the
    per-input results, of size O(B), are kept; the S × B components exist one chunk at a time.
    `component`, `outputs` and `draw_means` are per-draw, O(S · B): asking for
    them evaluates every chunk and keeps it all.

    Args:
        forward: ``(start, stop) -> outputs`` for those inputs.
        build: ``outputs -> component`` (the likelihood's distribution, batch shape ``(S, rows)``).
        num_inputs: B.
        rows: inputs per chunk.
        num_samples, output_dim, kind: S, the network's output width, ``"regression"`` /
            ``"classification"``.
        draws_per_block: how many draws ``forward`` evaluates at once (a record, for reports).
    """

    def __init__(self, forward: Callable[[int, int], torch.Tensor], build: Callable[[torch.Tensor], dist.Distribution],
                 num_inputs: int, rows: int, num_samples: int, output_dim: int, kind: str,
                 draws_per_block: Optional[int] = None):
        self._forward = forward
        self.draws_per_block = num_samples if draws_per_block is None else draws_per_block
        self._build = build
        self._num_inputs = num_inputs
        self.rows = max(1, int(rows))
        self._num_samples = num_samples
        self._output_dim = output_dim
        self.kind = kind
        self._full: Optional[BMAPredictive] = None

    @property
    def num_samples(self) -> int:
        """S, the number of draws."""
        return self._num_samples

    @property
    def num_inputs(self) -> int:
        """B, the number of inputs."""
        return self._num_inputs

    @property
    def output_dim(self) -> int:
        """The network's output width."""
        return self._output_dim

    def _chunk(self, a: int, b: int) -> BMAPredictive:
        outputs = self._forward(a, b)
        return BMAPredictive(self._build(outputs), outputs, self.kind)

    def _spans(self):
        return [(a, min(a + self.rows, self._num_inputs)) for a in range(0, self._num_inputs, self.rows)]

    def _over(self, fn, dim: int = 0, arg: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``fn(chunk predictive[, arg rows])`` for every chunk, concatenated along ``dim``."""
        parts = []
        for a, b in self._spans():
            pred = self._chunk(a, b)
            parts.append(fn(pred) if arg is None else fn(pred, _rows(arg, a, b, self._num_inputs)))
        return torch.cat(parts, dim)

    def _materialised(self) -> BMAPredictive:
        if self._full is None:
            outputs = torch.cat([self._forward(a, b) for a, b in self._spans()], dim=-2)
            self._full = BMAPredictive(self._build(outputs), outputs, self.kind)
        return self._full

    @property
    def component(self) -> dist.Distribution:  # type: ignore[override]
        """p(y | x, w_s) for all draws and inputs, ``(S, B)``: materialised (O(S · B) memory)."""
        return self._materialised().component

    @property
    def outputs(self) -> torch.Tensor:  # type: ignore[override]
        """The raw outputs ``(S, B, out_dim)``: materialised (O(S · B) memory)."""
        return self._materialised().outputs

    @property
    def draw_means(self) -> torch.Tensor:
        """E[y | x, w_s] per draw ``(S, B, ...)`` (kept whole: O(S · B))."""
        return self._over(lambda p: p.draw_means, dim=1)

    @property
    def probs(self) -> torch.Tensor:
        """BMA class probabilities, streamed over chunks."""
        return self._over(lambda p: p.probs)

    @property
    def mean(self) -> torch.Tensor:
        """E[y | x, D], streamed over chunks."""
        return self._over(lambda p: p.mean)

    @property
    def variance(self) -> torch.Tensor:
        """Var[y | x, D] (aleatoric + epistemic), streamed over chunks."""
        return self._over(lambda p: p.variance)

    @property
    def aleatoric_variance(self) -> torch.Tensor:
        """E_s[Var(y | x, w_s)], streamed over chunks."""
        return self._over(lambda p: p.aleatoric_variance)

    @property
    def epistemic_variance(self) -> torch.Tensor:
        """Var_s[E(y | x, w_s)], streamed over chunks."""
        return self._over(lambda p: p.epistemic_variance)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """log p(y | x, D) per input, streamed over chunks."""
        return self._over(lambda p, yb: p.log_prob(yb), arg=torch.as_tensor(y))

    def cdf(self, value: torch.Tensor) -> torch.Tensor:
        """Mixture CDF at ``value`` (per input or broadcast), streamed over chunks."""
        self._require_regression("cdf")
        return self._over(lambda p, v: p.cdf(v), arg=torch.as_tensor(value))

    def quantile(self, q: Union[float, Sequence[float], torch.Tensor], iters: int = 60) -> torch.Tensor:
        """Mixture quantiles by bisection, chunk by chunk."""
        self._require_regression("quantile")
        qs = torch.as_tensor(q)
        return self._over(lambda p: p.quantile(q, iters), dim=qs.dim())

    def entropy(self) -> torch.Tensor:
        """Entropy of the BMA class probabilities, streamed over chunks."""
        return self._over(lambda p: p.entropy())

    def sample(self, sample_shape: Sequence[int] = (), generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draws y ~ p(y | x, D), chunk by chunk."""
        shape = torch.Size(sample_shape)
        return self._over(lambda p: p.sample(shape, generator=generator), dim=len(shape))

    def __repr__(self) -> str:
        return (f"ChunkedBMAPredictive(kind={self.kind!r}, num_samples={self.num_samples}, "
                f"batch={self.num_inputs}, rows_per_chunk={self.rows}, draws_per_block={self.draws_per_block})")


def _rows(value: torch.Tensor, a: int, b: int, n: int) -> torch.Tensor:
    # Per-input arguments (targets y, cdf points) are cut like the inputs; scalars broadcast.
    return value[a:b] if value.dim() > 0 and value.shape[0] == n else value
