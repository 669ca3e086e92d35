"""Function-informed priors: weight priors judged, and fitted, by the prior over functions they induce.

[`FunctionalPrior`][pyro_bdl.function_priors.FunctionalPrior] fits per-layer Gaussian scales so that the network's prior over functions
matches a target [`GP`][pyro_bdl.function_priors.GP] at measurement inputs (Tran et al. 2022); [`rff_network`][pyro_bdl.function_priors.rff_network] is an
architecture + prior whose prior over functions is an RBF GP without fitting; [`prior_predictive`][pyro_bdl.function_priors.prior_predictive]
draws functions from any prior.

* `targets` — GP targets (kernels) and function samplers;
* `inputs` — measurement inputs (a box, points, a sampler);
* `distances` — Gaussian W2, MMD, dual W1 with a Lipschitz critic;
* `fit` — prior draws of functions and the fit itself;
* `rff` — random-Fourier-feature networks.
"""
from .distances import WassersteinCritic, dual_w1, gaussian_w2, gaussian_w2_moments, mmd, sqrtm_psd
from .fit import FunctionalPrior, function_distance, prior_predictive, sample_prior_weights
from .inputs import Box, measurement_sampler
from .rff import Cosine, rff_network
from .targets import GP, KERNELS, FunctionSampler, as_target

__all__ = [
    "FunctionalPrior", "GP", "KERNELS", "FunctionSampler", "as_target", "Box", "measurement_sampler",
    "prior_predictive", "sample_prior_weights", "function_distance", "rff_network", "Cosine",
    "gaussian_w2", "gaussian_w2_moments", "sqrtm_psd", "mmd", "dual_w1", "WassersteinCritic",
]
