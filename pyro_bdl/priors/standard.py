"""Standard weight priors: iid Gaussian, fan-in scaled Gaussian, Laplace, Student-t."""
from __future__ import annotations

from typing import Optional

import pyro.distributions as dist
import torch

from .base import Prior, as_hyper, elementwise, fan_in


class Gaussian(Prior):
    """iid Gaussian prior, w_i ~ N(loc, scale²).

    ``scale`` may be a tensor drawn from a hyperprior inside a Pyro model (hierarchical prior).
    """

    def __init__(self, loc=0.0, scale=1.0):
        _check_scale(scale, "Gaussian")
        self.loc = loc
        self.scale = scale

    def distribution(self, name, param, module):
        shape = param.shape
        return elementwise(dist.Normal(as_hyper(self.loc, param), as_hyper(self.scale, param)), shape)


class FanInGaussian(Prior):
    """Fan-in scaled Gaussian (NNGP / He-style), w ~ N(0, scale² / fan_in).

    Weight matrices and conv kernels get std ``scale / sqrt(fan_in)`` with
    ``fan_in = prod(weight.shape[1:])`` (Neal 1996; Lee et al. 2018), so the variance of a
    unit's pre-activation does not grow with the layer width. One-dimensional parameters
    (biases, norm-layer scales) get std ``bias_scale`` (default: ``scale``), as the NNGP's σ_b.
    """

    def __init__(self, scale: float = 1.0, bias_scale: Optional[float] = None):
        _check_scale(scale, "FanInGaussian")
        if bias_scale is not None:
            _check_scale(bias_scale, "FanInGaussian bias")
        self.scale = scale
        self.bias_scale = bias_scale

    def std(self, name: str, param: torch.Tensor) -> torch.Tensor:
        """The prior std of ``param``: ``scale / sqrt(fan_in)`` for weights, ``bias_scale`` for 1-D parameters.

        A tensor ``scale`` (a hyperprior draw) stays a tensor, so gradients and batch dims flow through it.
        """
        if param.dim() >= 2:
            return as_hyper(self.scale, param) / fan_in(param, name) ** 0.5
        return as_hyper(self.scale if self.bias_scale is None else self.bias_scale, param)

    def distribution(self, name, param, module):
        shape = param.shape
        return elementwise(dist.Normal(torch.zeros((), dtype=param.dtype, device=param.device), self.std(name, param)), shape)


class Laplace(Prior):
    """iid Laplace prior, p(w) = exp(-|w - loc| / scale) / (2 scale): heavier tails, sparsity."""

    def __init__(self, loc=0.0, scale=1.0):
        _check_scale(scale, "Laplace")
        self.loc = loc
        self.scale = scale

    def distribution(self, name, param, module):
        shape = param.shape
        return elementwise(dist.Laplace(as_hyper(self.loc, param), as_hyper(self.scale, param)), shape)


class StudentT(Prior):
    """iid Student-t prior with ``df`` degrees of freedom (heavy-tailed; Fortuin et al. 2022)."""

    def __init__(self, df=3.0, loc=0.0, scale=1.0):
        _check_scale(scale, "StudentT")
        _check_scale(df, "StudentT df")
        self.df = df
        self.loc = loc
        self.scale = scale

    def distribution(self, name, param, module):
        shape = param.shape
        return elementwise(
            dist.StudentT(as_hyper(self.df, param), as_hyper(self.loc, param), as_hyper(self.scale, param)), shape
        )


def _check_scale(value, what: str) -> None:
    if torch.is_tensor(value):
        return  # hyperprior samples are validated by their own distribution
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{what} prior scale must be a positive number, got {value!r}")
