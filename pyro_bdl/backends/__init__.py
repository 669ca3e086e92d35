"""Backends that run a [`BayesianModel`][pyro_bdl.BayesianModel] outside Pyro.

The NumPyro/JAX backend (``fit(..., method="nuts", backend="numpyro")``) translates the
torch network into a pure JAX function ([`to_jax`][pyro_bdl.backends.to_jax]) and the model into a NumPyro model
with the same sites and log density ([`NumPyroModel`][pyro_bdl.backends.NumPyroModel]), so NumPyro's compiled NUTS/HMC
does the sampling. Importing this subpackage imports JAX and NumPyro (``pip install
pyro_bdl[jax]``).

* [`to_jax`][pyro_bdl.backends.to_jax] — ``torch.nn.Module`` → [`JaxNetwork`][pyro_bdl.backends.JaxNetwork], ``f(params, x)``;
* [`supported_operations`][pyro_bdl.backends.supported_operations] — the layers, functions and tensor methods it translates;
* [`UnsupportedOperationError`][pyro_bdl.backends.UnsupportedOperationError] — raised (a ``ValueError``) for anything else;
* [`NumPyroModel`][pyro_bdl.backends.NumPyroModel] — the Bayesian model as a NumPyro model; [`to_numpyro_distribution`][pyro_bdl.backends.to_numpyro_distribution].
"""
from .jax import JaxNetwork, UnsupportedOperationError, as_jax_array, supported_operations, to_jax
from .numpyro_model import NumPyroModel, check_translatable, to_numpyro_distribution

__all__ = [
    "to_jax",
    "JaxNetwork",
    "UnsupportedOperationError",
    "supported_operations",
    "as_jax_array",
    "NumPyroModel",
    "to_numpyro_distribution",
    "check_translatable",
]
