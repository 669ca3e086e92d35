"""NUTS and HMC: Pyro's kernels on the torch network, or NumPyro's compiled kernels on its JAX translation."""
from .init import INITS, initial_point
from .methods import BACKENDS, fit_hmc, fit_nuts

__all__ = ["BACKENDS", "INITS", "fit_hmc", "fit_nuts", "initial_point"]
