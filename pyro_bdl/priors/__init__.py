"""Priors over network weights (see `pyro_bdl.priors.base` for the protocol).

Function-informed priors (`pyro_bdl.priors.functional`): `FunctionalPrior` fits
per-layer Gaussian scales so that the network's prior over functions matches a target
`GP` (Tran et al. 2022); `rff_network` is an architecture + prior whose prior over
functions is an RBF GP without fitting; `prior_predictive` draws functions from any prior.
"""
from .base import DistributionPrior, PerParameter, Prior, as_prior, fan_in, resolve_prior
from .standard import FanInGaussian, Gaussian, Laplace, StudentT
from .gp import GP, KERNELS, FunctionSampler, as_target
from .wasserstein import WassersteinCritic, dual_w1, gaussian_w2, gaussian_w2_moments, mmd, sqrtm_psd
from .functional import Box, FunctionalPrior, function_distance, measurement_sampler, prior_predictive, sample_prior_weights
from .rff import Cosine, rff_network

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
    # function-informed priors
    "FunctionalPrior",
    "GP",
    "KERNELS",
    "FunctionSampler",
    "as_target",
    "Box",
    "measurement_sampler",
    "prior_predictive",
    "sample_prior_weights",
    "function_distance",
    "rff_network",
    "Cosine",
    "gaussian_w2",
    "gaussian_w2_moments",
    "sqrtm_psd",
    "mmd",
    "dual_w1",
    "WassersteinCritic",
]
