"""Deprecated module path: the torch -> JAX translation lives in `pyro_bdl.backends.jax`.

Kept importable for one release; import from ``pyro_bdl.backends`` (``to_jax``,
``supported_operations``, ...) instead.
"""
from .._util.deprecation import warn_moved
from .jax import JaxNetwork, UnsupportedOperationError, as_jax_array, supported_operations, to_jax

warn_moved("pyro_bdl.backends.jax_translate", "pyro_bdl.backends.jax")

__all__ = ["to_jax", "JaxNetwork", "UnsupportedOperationError", "supported_operations", "as_jax_array"]
