"""Backends that run a :class:`~pyro_bdl.BayesianModel` outside Pyro.

The NumPyro/JAX backend (``fit(..., method="nuts", backend="numpyro")``) translates the
torch network into a pure JAX function (:func:`to_jax`) and the model into a NumPyro model
with the same sites and log density (:class:`NumPyroModel`), so NumPyro's compiled NUTS/HMC
does the sampling. Importing this subpackage imports JAX and NumPyro (``pip install
pyro_bdl[jax]``).

* :func:`to_jax` — ``torch.nn.Module`` → :class:`JaxNetwork`, ``f(params, x)``;
* :func:`supported_operations` — the layers, functions and tensor methods it translates;
* :class:`UnsupportedOperationError` — raised (a ``ValueError``) for anything else;
* :class:`NumPyroModel` — the Bayesian model as a NumPyro model; :func:`to_numpyro_distribution`.
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
