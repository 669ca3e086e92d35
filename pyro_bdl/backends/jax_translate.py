"""Deprecated module path: the torch -> JAX translation lives in :mod:`pyro_bdl.backends.jax`.

Kept importable for one release; import from ``pyro_bdl.backends`` (``to_jax``,
``supported_operations``, ...) instead.
"""
import warnings

from .jax import JaxNetwork, UnsupportedOperationError, as_jax_array, supported_operations, to_jax

warnings.warn("pyro_bdl.backends.jax_translate is deprecated; import from pyro_bdl.backends (or "
              "pyro_bdl.backends.jax) instead", DeprecationWarning, stacklevel=2)

__all__ = ["to_jax", "JaxNetwork", "UnsupportedOperationError", "supported_operations", "as_jax_array"]
