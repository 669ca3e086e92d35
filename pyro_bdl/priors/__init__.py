"""Priors over network weights (see `pyro_bdl.priors.base` for the protocol).

A leaf of the package: it imports nothing else of pyro_bdl. Function-informed priors
(``FunctionalPrior``, ``GP``, ``rff_network``, ``prior_predictive``, ...) live in
`pyro_bdl.function_priors`; their old names here still work, with a ``DeprecationWarning``.
"""
from .._util.deprecation import moved_names
from .combinators import DistributionPrior, PerParameter, as_prior, resolve_prior
from .base import Prior, fan_in
from .standard import FanInGaussian, Gaussian, Laplace, StudentT

# Function-space priors moved to pyro_bdl.function_priors (they need the model layer, which needs priors).
__getattr__ = moved_names(__name__, {name: "pyro_bdl.function_priors" for name in (
    "FunctionalPrior", "GP", "KERNELS", "FunctionSampler", "as_target", "Box", "measurement_sampler",
    "prior_predictive", "sample_prior_weights", "function_distance", "rff_network", "Cosine",
    "gaussian_w2", "gaussian_w2_moments", "sqrtm_psd", "mmd", "dual_w1", "WassersteinCritic")})

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
