"""Translate a ``torch.nn.Module`` into a pure JAX function ``f(params, x)``.

The network's ``forward`` is captured once as a graph with `torch.fx` (symbolic
tracing: supported ``torch.nn`` layers stay whole, everything else — custom ``forward``
methods, residual additions, concatenation, reshapes, elementwise ops, matmul — is traced
into individual operations). [`JaxNetwork`][pyro_bdl.backends.JaxNetwork] then evaluates that graph with
``jax.numpy`` / ``jax.lax`` operations, so ``jax.jit``, ``jax.grad`` and ``jax.vmap`` see a
plain JAX program: under ``jit`` the graph walk happens once, at trace time, and the
compiled code is the same as a hand-written JAX network.

Parameters listed in ``JaxNetwork.param_names`` are inputs (keyed by their
``named_parameters`` names); every other parameter and every buffer (BatchNorm running
statistics) is a constant taken from the module when it was translated. The network is
evaluated as in ``eval()`` mode: dropout is the identity and BatchNorm uses its running
statistics.

An operation without a JAX translation raises [`UnsupportedOperationError`][pyro_bdl.backends.UnsupportedOperationError] (a
``ValueError``) at translation time, naming the operation and the module path where it
occurs; ``backend="pyro"`` runs any torch network. [`supported_operations`][pyro_bdl.backends.supported_operations] lists
what is translated.

The translation is split in three modules: `.ops` (the op translators), `.tables`
(which torch callable each translates) and `.graph` (the fx capture and interpreter).
"""
from .graph import JaxNetwork, to_jax
from .ops import UnsupportedOperationError, as_jax_array
from .tables import supported_operations

__all__ = ["to_jax", "JaxNetwork", "UnsupportedOperationError", "supported_operations", "as_jax_array"]
