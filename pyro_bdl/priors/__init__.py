"""Priors over network weights (see :mod:`pyro_bdl.priors.base` for the protocol)."""
from .base import DistributionPrior, PerParameter, Prior, as_prior, fan_in, resolve_prior
from .standard import FanInGaussian, Gaussian, Laplace, StudentT

__all__ = [
    "Prior",
    "Gaussian",
    "FanInGaussian",
    "Laplace",
    "StudentT",
    "PerParameter",
    "DistributionPrior",
    "as_prior",
    "resolve_prior",
    "fan_in",
]
