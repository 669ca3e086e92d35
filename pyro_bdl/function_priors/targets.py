"""Targets for function-informed priors: Gaussian processes and user-supplied function samplers.

A *target* is anything that draws function values at given inputs:

    target.sample(x, num_samples, generator) -> (num_samples, len(x))

[`GP`][pyro_bdl.function_priors.GP] is a zero-mean (or constant-mean) Gaussian process f ~ GP(m, k) with one of the
stationary kernels below (r = ‖x − x'‖ after dividing every input dimension by its lengthscale ℓ,
σ² the variance):

* ``"rbf"`` (squared exponential):  k(r) = σ² exp(−r²/2)
* ``"matern32"``:                    k(r) = σ² (1 + √3 r) exp(−√3 r)
* ``"matern52"``:                    k(r) = σ² (1 + √5 r + 5r²/3) exp(−√5 r)
* ``"periodic"`` (MacKay 1998), a product over input dimensions d with period p:
  k(x, x') = σ² exp(−2 Σ_d sin²(π |x_d − x'_d| / p_d) / ℓ_d²)

(Rasmussen & Williams 2006, ch. 4). ``lengthscale`` (and ``period``) may be one number or one
per input dimension (ARD). A kernel may also be any callable ``k(x1, x2) -> (n1, n2)`` matrix.

[`FunctionSampler`][pyro_bdl.function_priors.FunctionSampler] wraps a user function ``fn(x, num_samples, generator)`` as a target,
so a prior can be fitted to any process one can draw from (e.g. a GP with a random lengthscale).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Union

import torch
from .._util.checks import check_int

KERNELS = ("rbf", "matern32", "matern52", "periodic")

Hyper = Union[float, Sequence[float], torch.Tensor]


def _positive(value: Hyper, what: str) -> torch.Tensor:
    if isinstance(value, bool):
        raise TypeError(f"GP {what} must be a positive number or a tensor of them, got {value!r}")
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"GP {what} must be a positive number or a tensor of them, got {value!r}") from None
    if t.dim() > 1 or t.numel() == 0 or not torch.isfinite(t).all() or not (t > 0).all():
        raise ValueError(f"GP {what} must be a positive finite number (or a 1-D tensor of them, one per input "
                         f"dimension), got {value!r}")
    return t


def _as_rows(x: torch.Tensor, what: str = "x") -> torch.Tensor:
    if not torch.is_tensor(x):
        raise TypeError(f"{what} must be a torch.Tensor of shape (n, input_dim), got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{what} must have shape (n, input_dim), got {tuple(x.shape)}; for 1-D inputs use "
                         f"{what}.unsqueeze(-1)")
    return x


class GP:
    """A Gaussian process f ~ GP(mean, k) to match a network's prior over functions to.

    Args:
        kernel: ``"rbf"``, ``"matern32"``, ``"matern52"``, ``"periodic"`` (see the module docstring)
            or a callable ``k(x1, x2) -> (n1, n2)``.
        lengthscale: ℓ > 0, one number or one per input dimension.
        variance: σ² > 0, the marginal variance k(x, x).
        period: p > 0 of the periodic kernel (one number or one per input dimension).
        mean: the constant mean function m(x) = mean.
        jitter: added to the diagonal (times σ²) before the Cholesky factorisation.

    >>> gp = GP("matern52", lengthscale=0.5, variance=2.0)
    >>> gp.sample(torch.linspace(-1, 1, 5).unsqueeze(-1), 3, torch.Generator().manual_seed(0)).shape
    torch.Size([3, 5])
    """

    def __init__(self, kernel: Union[str, Callable] = "rbf", lengthscale: Hyper = 1.0, variance: float = 1.0,
                 period: Hyper = 1.0, mean: float = 0.0, jitter: float = 1e-6):
        if isinstance(kernel, str):
            if kernel not in KERNELS:
                raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS} or pass a callable k(x1, x2)")
        elif not callable(kernel):
            raise TypeError(f"kernel must be a name in {KERNELS} or a callable k(x1, x2), got {type(kernel).__name__}")
        self.kernel = kernel
        self.lengthscale = _positive(lengthscale, "lengthscale")
        var = _positive(variance, "variance")
        if var.dim() != 0:
            raise ValueError(f"GP variance must be one positive number, got {variance!r}")
        self.variance = var
        self.period = _positive(period, "period")
        if isinstance(mean, bool) or not isinstance(mean, (int, float)) or not math.isfinite(mean):
            raise ValueError(f"GP mean must be a finite number, got {mean!r}")
        self.mean = float(mean)
        if not isinstance(jitter, (int, float)) or jitter < 0:
            raise ValueError(f"jitter must be a non-negative number, got {jitter!r}")
        self.jitter = float(jitter)

    def _check_dims(self, x: torch.Tensor, value: torch.Tensor, what: str) -> None:
        if value.dim() == 1 and value.numel() not in (1, x.shape[-1]):
            raise ValueError(f"GP {what} has {value.numel()} entries but the inputs have {x.shape[-1]} dimensions")

    def covariance(self, x1: torch.Tensor, x2: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The kernel matrix K[i, j] = k(x1[i], x2[j]) (``x2`` defaults to ``x1``), in ``x1``'s dtype."""
        x1 = _as_rows(x1, "x1")
        x2 = x1 if x2 is None else _as_rows(x2, "x2")
        if x1.shape[-1] != x2.shape[-1]:
            raise ValueError(f"x1 and x2 have different input dimensions ({x1.shape[-1]} vs {x2.shape[-1]})")
        if callable(self.kernel):
            return torch.as_tensor(self.kernel(x1, x2)).to(x1.dtype)
        a, b = x1.to(torch.float64), x2.to(torch.float64)
        self._check_dims(a, self.lengthscale, "lengthscale")
        var = self.variance
        if self.kernel == "periodic":
            self._check_dims(a, self.period, "period")
            diff = (a.unsqueeze(-2) - b.unsqueeze(-3)).abs()  # (n1, n2, d)
            s = torch.sin(math.pi * diff / self.period) / self.lengthscale
            k = var * torch.exp(-2.0 * (s ** 2).sum(-1))
            return k.to(x1.dtype)
        a, b = a / self.lengthscale, b / self.lengthscale
        sq = ((a.unsqueeze(-2) - b.unsqueeze(-3)) ** 2).sum(-1)
        if self.kernel == "rbf":
            k = var * torch.exp(-0.5 * sq)
        else:
            r = sq.clamp_min(0).sqrt()
            if self.kernel == "matern32":
                k = var * (1 + math.sqrt(3) * r) * torch.exp(-math.sqrt(3) * r)
            else:
                k = var * (1 + math.sqrt(5) * r + 5.0 / 3.0 * sq) * torch.exp(-math.sqrt(5) * r)
        return k.to(x1.dtype)

    def sample(self, x: torch.Tensor, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``num_samples`` draws f(x) = m + L z, z ~ N(0, I), LLᵀ = K + jitter·σ²·I: shape ``(num_samples, n)``."""
        x = _as_rows(x)
        check_int(num_samples, "num_samples")
        K = self.covariance(x.to(torch.float64))
        n = K.shape[-1]
        eye = torch.eye(n, dtype=K.dtype)
        scale = float(K.diagonal().mean()) if n else 1.0
        L, info = torch.linalg.cholesky_ex(K + self.jitter * scale * eye)
        if int(info) != 0:  # e.g. duplicated inputs of a smooth kernel: fall back to the PSD square root
            evals, evecs = torch.linalg.eigh(K)
            L = evecs * evals.clamp_min(0).sqrt()
        z = torch.randn(num_samples, n, dtype=torch.float64, generator=generator)
        return (self.mean + z @ L.T).to(x.dtype)

    def __repr__(self) -> str:
        def fmt(t: torch.Tensor) -> str:
            return f"{float(t):g}" if t.numel() == 1 else str([round(float(v), 4) for v in t])

        kernel = self.kernel if isinstance(self.kernel, str) else getattr(self.kernel, "__name__", "custom")
        extra = f", period={fmt(self.period)}" if self.kernel == "periodic" else ""
        mean = f", mean={self.mean:g}" if self.mean else ""
        return f"GP(kernel={kernel!r}, lengthscale={fmt(self.lengthscale)}, variance={fmt(self.variance)}{extra}{mean})"


class FunctionSampler:
    """A user-supplied process to match: ``fn(x, num_samples, generator) -> (num_samples, len(x))``.

    ``x`` has shape ``(n, input_dim)``; draw all randomness from ``generator`` (a seeded
    ``torch.Generator``) so fits are reproducible.

    >>> def random_sines(x, n, g):                        # f(x) = a sin(ω x + φ)
    ...     a, w, p = torch.randn(3, n, 1, generator=g)
    ...     return a * torch.sin(w * x[:, 0] + p)
    >>> target = FunctionSampler(random_sines)
    """

    def __init__(self, fn: Callable[[torch.Tensor, int, Optional[torch.Generator]], torch.Tensor], name: str = ""):
        if not callable(fn):
            raise TypeError(f"FunctionSampler needs a callable fn(x, num_samples, generator), got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "sampler")

    def sample(self, x: torch.Tensor, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``num_samples`` function draws at the rows of ``x`` from the wrapped sampler: shape ``(num_samples, n)``."""
        x = _as_rows(x)
        check_int(num_samples, "num_samples")
        out = torch.as_tensor(self.fn(x, num_samples, generator))
        if tuple(out.shape) != (num_samples, x.shape[0]):
            raise ValueError(f"the function sampler {self.name!r} returned shape {tuple(out.shape)}; it must return "
                             f"(num_samples, len(x)) = ({num_samples}, {x.shape[0]})")
        return out.to(x.dtype)

    def __repr__(self) -> str:
        return f"FunctionSampler({self.name})"


def as_target(target: Any) -> Any:
    """A [`GP`][pyro_bdl.function_priors.GP], any object with ``sample(x, num_samples, generator)``, or a plain function
    ``fn(x, num_samples, generator)`` (wrapped in [`FunctionSampler`][pyro_bdl.function_priors.FunctionSampler])."""
    if hasattr(target, "sample") and callable(target.sample):
        return target
    if callable(target):
        return FunctionSampler(target)
    raise TypeError(f"cannot use {target!r} as a target: pass a pyro_bdl.function_priors.GP(kernel=..., lengthscale=..., "
                    "variance=...), an object with sample(x, num_samples, generator), or a function with that signature")


