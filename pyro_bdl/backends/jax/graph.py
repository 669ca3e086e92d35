"""The fx interpreter: capture a network's forward with `torch.fx` and evaluate the graph in JAX.

[`to_jax`][pyro_bdl.backends.to_jax] traces the forward once (supported ``torch.nn`` layers stay whole, every
other module is traced into) and checks every node against the dispatch tables
(`.tables`); [`JaxNetwork`][pyro_bdl.backends.JaxNetwork] walks the graph with JAX values. Under ``jax.jit`` the
walk happens once, at trace time, so the compiled code is that of a hand-written JAX
network.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import jax.numpy as jnp
import torch
from torch import fx, nn

from .ops import Unsupported, UnsupportedOperationError, as_jax_array
from .tables import FUNCTIONS, METHODS, MODULES, function_name

__all__ = ["to_jax", "JaxNetwork"]

# Only what is true of the Pyro backend whatever the network: it evaluates torch itself, so it needs no
# translation (whether every layer also batches under its vmap-based evaluation is its own matter).
_REMEDY = ("backend='pyro' runs the torch network itself and needs no JAX translation; for the NumPyro backend, "
           "rewrite that part with supported operations (pyro_bdl.backends.supported_operations()).")


class _Tracer(fx.Tracer):
    """Keeps the supported torch.nn layers whole and traces into every other module."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m) in MODULES


def _node_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, _ = list(stack.values())[-1]
        return path or "<root>"
    return "<root>"


def _node_op(node: fx.Node, modules: Mapping[str, nn.Module]) -> str:
    if node.op == "call_module":
        return f"layer torch.nn.{type(modules[node.target]).__name__}" if type(modules[node.target]).__module__.startswith(
            "torch.nn") else f"layer {type(modules[node.target]).__qualname__}"
    if node.op == "call_function":
        return f"function {function_name(node.target)}"
    if node.op == "call_method":
        return f"tensor method .{node.target}()"
    return f"{node.op} {node.target}"


def _unsupported(node: fx.Node, modules: Mapping[str, nn.Module], detail: str = "") -> UnsupportedOperationError:
    detail = f" ({detail})" if detail else ""
    return UnsupportedOperationError(
        f"the NumPyro/JAX backend cannot translate {_node_op(node, modules)}{detail} used at module path "
        f"{_node_path(node)!r}. {_REMEDY}")


class JaxNetwork:
    """A torch network as a pure JAX function: ``out = jax_net(params, x)``.

    ``params`` maps each name in `param_names` (the network's ``named_parameters``
    names, e.g. ``"0.weight"``) to an array of that parameter's shape; every other
    parameter and buffer is a constant (`constants`, taken from the module at
    translation time; pass one in ``params`` to override it). ``x`` is a JAX or numpy array
    (or a torch tensor) shaped as the torch network's input. The function is pure, so it
    can be ``jax.jit``-ed, differentiated and ``jax.vmap``-ed over parameter draws.

    `structure_key` is a hashable description of the network without its values (the
    graph, each layer's configuration, parameter and constant shapes): the NumPyro backend
    caches compiled programs by it, with the parameters and `constants` as arguments.

    Build it with [`to_jax`][pyro_bdl.backends.to_jax].
    """

    def __init__(self, net: nn.Module, graph: fx.Graph, root: nn.Module, param_names: Sequence[str]):
        self.graph = graph
        self._modules = dict(root.named_modules())
        self._root = root
        # Aliases (tied weights) resolve to the canonical name that named_parameters reports.
        canonical: Dict[int, str] = {}
        self._alias: Dict[str, str] = {}
        for name, t in list(net.named_parameters(remove_duplicate=False)) + list(net.named_buffers(remove_duplicate=False)):
            if t is None:
                continue
            self._alias[name] = canonical.setdefault(id(t), name)
        self.param_names: Tuple[str, ...] = tuple(param_names)
        free = set(self.param_names)
        self.constants: Dict[str, jnp.ndarray] = {}
        for name, t in list(net.named_parameters()) + list(net.named_buffers()):
            if name not in free and t is not None:
                self.constants[name] = as_jax_array(t)
        self._nodes = list(graph.nodes)
        for node in self._nodes:  # plain tensor attributes read by the forward are constants too
            if node.op == "get_attr" and self._alias.get(node.target, node.target) not in self.constants \
                    and node.target not in free:
                value = _get_attr(root, node.target)
                if torch.is_tensor(value):
                    self.constants[node.target] = as_jax_array(value)
        self.structure_key = _structure_key(graph, self._modules, self.param_names, net, self.constants)
        placeholders = [n for n in self._nodes if n.op == "placeholder"]
        if not placeholders:
            raise UnsupportedOperationError("the network's forward takes no input")
        for extra in placeholders[1:]:
            if not extra.args:  # no default value
                raise UnsupportedOperationError(
                    f"the network's forward takes more than one input ({[n.target for n in placeholders]}); "
                    "the NumPyro backend (and BayesianModel) call it with one input x. " + _REMEDY)

    def _value(self, name: str, values: Mapping[str, jnp.ndarray]) -> Optional[jnp.ndarray]:
        name = self._alias.get(name, name)
        if name in values:
            return values[name]
        return None

    def __call__(self, params: Mapping[str, Any], x: Any) -> jnp.ndarray:
        missing = [n for n in self.param_names if n not in params]
        if missing:
            raise KeyError(f"params is missing {missing}; the JAX network takes {list(self.param_names)}")
        values = {**self.constants, **params}
        env: Dict[fx.Node, Any] = {}
        first = True

        def load(a):
            return env[a]

        for node in self._nodes:
            op = node.op
            if op == "placeholder":
                env[node] = as_jax_array(x) if first else node.args[0]
                first = False
                continue
            if op == "output":
                return fx.node.map_arg(node.args[0], load)
            args = fx.node.map_arg(node.args, load)
            kwargs = fx.node.map_arg(node.kwargs, load)
            try:
                if op == "get_attr":
                    v = self._value(node.target, values)
                    env[node] = _get_attr(self._root, node.target) if v is None else v  # a non-tensor attribute
                elif op == "call_module":
                    prefix = node.target + "." if node.target else ""
                    env[node] = MODULES[type(self._modules[node.target])](
                        self._modules[node.target], lambda n, p=prefix: self._value(p + n, values), *args, **kwargs)
                elif op == "call_function":
                    env[node] = FUNCTIONS[node.target](*args, **kwargs)
                elif op == "call_method":
                    env[node] = METHODS[node.target](*args, **kwargs)
                else:  # pragma: no cover - fx has no other node kinds
                    raise Unsupported(f"fx node kind {op!r}")
            except Unsupported as err:
                raise _unsupported(node, self._modules, str(err)) from None
            except TypeError as err:
                raise _unsupported(node, self._modules, f"with these arguments: {err}") from None
        raise AssertionError("graph without output")  # pragma: no cover

    def __repr__(self) -> str:
        return f"JaxNetwork(params={list(self.param_names)}, constants={list(self.constants)})"


def _structure_key(graph: fx.Graph, modules: Mapping[str, nn.Module], param_names: Sequence[str], net: nn.Module,
                   constants: Mapping[str, Any]) -> Tuple:
    """Everything a compiled program of the network depends on except the parameter and constant values.

    The graph's text (operations, their order, and every Python constant of the forward), each
    leaf layer's type and configuration (public attributes: stride, eps, ...; tensors excluded),
    and the names, shapes and dtypes of the free parameters and the constants. Two networks with
    equal keys compile to the same XLA program.
    """
    shapes = {n: (tuple(t.shape), str(t.dtype)) for n, t in net.named_parameters()}
    leaves = []
    for path, m in modules.items():
        if type(m) in MODULES:
            config = sorted((k, repr(v)) for k, v in vars(m).items()
                            if not k.startswith("_") and not torch.is_tensor(v) and not isinstance(v, nn.Module))
            leaves.append((path, f"{type(m).__module__}.{type(m).__qualname__}", tuple(config)))
    return (str(graph), tuple(leaves), tuple((n, shapes[n]) for n in param_names),
            tuple((n, tuple(v.shape), str(v.dtype)) for n, v in constants.items()))


def _get_attr(root: nn.Module, target: str) -> Any:
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def to_jax(net: nn.Module, params: Optional[Iterable[str]] = None) -> JaxNetwork:
    """Translate ``net`` into a pure JAX function ``f(params, x)`` (a [`JaxNetwork`][pyro_bdl.backends.JaxNetwork]).

    The forward is captured once with ``torch.fx`` and every operation is mapped to
    ``jax.numpy``/``jax.lax``, so ``f(params, x)`` equals ``torch.func.functional_call(net, params, x)``
    in ``eval()`` mode up to float rounding. Dropout is the identity; BatchNorm uses its
    running statistics, which are constants of ``f``.

    Args:
        net: the network (it is not modified; evaluate it in ``eval()`` mode to compare).
        params: names of the parameters that become inputs of ``f`` (default: all of
            ``net.named_parameters()``); the others are constants at their current values.

    Raises:
        UnsupportedOperationError: (a ``ValueError``) an operation has no translation or the
            forward cannot be captured as a graph (data-dependent Python control flow); the
            message names the operation and the module path. ``backend="pyro"`` needs no translation.

    Example::

        f = to_jax(net)
        out = f({k: jnp.asarray(v.detach().cpu().numpy()) for k, v in net.named_parameters()}, x)
    """
    if not isinstance(net, nn.Module):
        raise TypeError(f"to_jax expects a torch.nn.Module, got {type(net).__name__}")
    names = [n for n, _ in net.named_parameters()]
    params = names if params is None else list(params)
    unknown = [p for p in params if p not in names]
    if unknown:
        raise ValueError(f"{unknown} are not parameters of the network; its parameters are {names}")
    tracer = _Tracer()
    try:
        graph = tracer.trace(net)
    except Exception as err:  # fx raises TraceError, TypeError, RuntimeError, ... from user code
        stack = list(tracer.module_stack.values())
        where = ""
        if stack:
            path, mtype = stack[-1]
            where = f" in module {path or '<root>'!r} ({getattr(mtype, '__name__', mtype)})"
        raise UnsupportedOperationError(
            f"the NumPyro/JAX backend could not capture the network's forward as a graph{where}: "
            f"{type(err).__name__}: {err}. torch.fx needs a forward without Python control flow that depends on "
            f"tensor values or shapes. {_REMEDY}") from err
    modules = dict(net.named_modules())
    for node in graph.nodes:
        if node.op == "call_function" and node.target not in FUNCTIONS:
            raise _unsupported(node, modules)
        if node.op == "call_method" and node.target not in METHODS:
            raise _unsupported(node, modules)
        if node.op == "call_module" and type(modules[node.target]) not in MODULES:  # pragma: no cover
            raise _unsupported(node, modules)
    return JaxNetwork(net, graph, net, params)
