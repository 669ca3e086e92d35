"""Dispatch tables: which torch callable is translated by which op translator (`.ops`).

* `FUNCTIONS` — ``torch.*``, ``torch.nn.functional.*`` and Python operators (fx
  ``call_function`` targets) -> translator;
* `METHODS` — ``Tensor`` method names (fx ``call_method`` targets) -> translator;
* `MODULES` — ``torch.nn`` layer types kept whole by the tracer -> ``translator(module, get, *inputs)``.

[`supported_operations`][pyro_bdl.backends.supported_operations] lists them; it is the contract of the translation: every
entry evaluates, differentiates and linearises in JAX (tests/test_backend_jax_translate.py).
"""
from __future__ import annotations

import builtins
import operator
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp
import torch
import torch.nn.functional as F
from jax import lax
from torch import nn

from . import ops

__all__ = ["FUNCTIONS", "METHODS", "MODULES", "supported_operations", "function_name"]

_UNARY = {
    "exp": jnp.exp, "log": jnp.log, "sin": jnp.sin, "cos": jnp.cos, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
    "abs": jnp.abs, "sqrt": jnp.sqrt, "rsqrt": lax.rsqrt, "square": jnp.square, "log1p": jnp.log1p,
    "expm1": jnp.expm1, "erf": jax.scipy.special.erf, "neg": jnp.negative, "negative": jnp.negative,
    "sign": jnp.sign, "floor": jnp.floor, "ceil": jnp.ceil, "round": jnp.round, "reciprocal": jnp.reciprocal,
    "exp2": jnp.exp2, "log2": jnp.log2, "atan": jnp.arctan, "sinh": jnp.sinh, "cosh": jnp.cosh,
}
_ACTIVATIONS = {
    "relu": ops.relu, "relu6": ops.relu6, "leaky_relu": ops.leaky_relu, "elu": ops.elu, "celu": ops.celu, "selu": ops.selu,
    "gelu": ops.gelu, "silu": ops.silu, "mish": ops.mish, "softplus": ops.softplus, "softsign": ops.softsign,
    "hardtanh": ops.hardtanh, "hardsigmoid": ops.hardsigmoid, "hardswish": ops.hardswish, "logsigmoid": ops.logsigmoid,
    "tanhshrink": ops.tanhshrink, "softmax": ops.softmax, "log_softmax": ops.log_softmax,
}
_SHARED = {  # names with the same meaning as torch.X, torch.nn.functional.X (ops.where it exists) and Tensor.X
    **{k: ops.unary(v) for k, v in _UNARY.items()},
    "relu": ops.relu, "softmax": ops.softmax, "log_softmax": ops.log_softmax, "flatten": ops.flatten, "unflatten": ops.unflatten,
    "reshape": ops.reshape, "permute": ops.permute, "transpose": ops.transpose, "swapaxes": ops.transpose, "t": ops.matrix_t,
    "squeeze": ops.squeeze, "unsqueeze": ops.unsqueeze, "chunk": ops.chunk, "split": ops.split, "unbind": ops.unbind,
    "sum": ops.reduction(jnp.sum), "mean": ops.reduction(jnp.mean), "prod": ops.reduction(jnp.prod),
    "amax": ops.reduction(jnp.max), "amin": ops.reduction(jnp.min), "var": ops.var_std(jnp.var), "std": ops.var_std(jnp.std),
    "logsumexp": ops.logsumexp, "max": ops.max_min(jnp.max, jnp.argmax, jnp.maximum),
    "min": ops.max_min(jnp.min, jnp.argmin, jnp.minimum), "argmax": ops.argreduce(jnp.argmax),
    "argmin": ops.argreduce(jnp.argmin), "norm": ops.norm, "clamp": ops.clamp, "clip": ops.clamp, "clamp_min": ops.clamp_min,
    "clamp_max": ops.clamp_max, "add": ops.binary(jnp.add), "sub": ops.binary(jnp.subtract),
    "subtract": ops.binary(jnp.subtract), "mul": ops.binary(jnp.multiply), "multiply": ops.binary(jnp.multiply),
    "div": ops.div, "divide": ops.div, "true_divide": ops.div, "matmul": ops.matmul, "mm": ops.matmul, "bmm": ops.matmul,
    "pow": ops.power, "maximum": jnp.maximum, "minimum": jnp.minimum, "masked_fill": ops.masked_fill,
    "where": ops.where, "tile": ops.repeat, "zeros_like": ops.like(0), "ones_like": ops.like(1),
    "full_like": ops.full_like,
}

FUNCTIONS: Dict[Any, Callable] = {}
for _name, _fn in _SHARED.items():
    for _ns in (torch, F):
        if callable(getattr(_ns, _name, None)):
            FUNCTIONS[getattr(_ns, _name)] = _fn
for _name, _fn in _ACTIVATIONS.items():
    for _ns in (torch, F):
        if callable(getattr(_ns, _name, None)):
            FUNCTIONS[getattr(_ns, _name)] = _fn
FUNCTIONS.update({
    torch.cat: ops.cat, torch.concat: ops.cat, torch.concatenate: ops.cat, torch.stack: ops.stack, torch.einsum: ops.einsum,
    F.linear: ops.linear, F.bilinear: ops.bilinear, F.conv1d: ops.conv(1), F.conv2d: ops.conv(2), F.conv3d: ops.conv(3),
    F.max_pool1d: ops.max_pool(1), F.max_pool2d: ops.max_pool(2), F.max_pool3d: ops.max_pool(3),
    F.avg_pool1d: ops.avg_pool(1), F.avg_pool2d: ops.avg_pool(2), F.avg_pool3d: ops.avg_pool(3),
    F.adaptive_avg_pool1d: ops.adaptive_pool(1, jnp.mean), F.adaptive_avg_pool2d: ops.adaptive_pool(2, jnp.mean),
    F.adaptive_avg_pool3d: ops.adaptive_pool(3, jnp.mean), F.adaptive_max_pool1d: ops.adaptive_pool(1, jnp.max),
    F.adaptive_max_pool2d: ops.adaptive_pool(2, jnp.max), F.adaptive_max_pool3d: ops.adaptive_pool(3, jnp.max),
    F.batch_norm: ops.batch_norm, F.instance_norm: ops.instance_norm, F.layer_norm: ops.layer_norm,
    F.group_norm: ops.group_norm, F.normalize: ops.normalize, F.embedding: ops.embedding, F.pad: ops.pad, F.prelu: ops.prelu,
    F.dropout: ops.dropout, F.dropout1d: ops.dropout, F.dropout2d: ops.dropout, F.dropout3d: ops.dropout,
    F.alpha_dropout: ops.dropout, F.feature_alpha_dropout: ops.dropout,
    torch.tanh: ops.unary(jnp.tanh), torch.sigmoid: ops.unary(jax.nn.sigmoid), F.tanh: ops.unary(jnp.tanh),
    F.sigmoid: ops.unary(jax.nn.sigmoid),
    operator.add: operator.add, operator.sub: operator.sub, operator.mul: operator.mul,
    operator.truediv: operator.truediv, operator.floordiv: operator.floordiv, operator.mod: operator.mod,
    operator.pow: operator.pow, operator.matmul: ops.matmul, operator.neg: operator.neg, operator.pos: operator.pos,
    operator.abs: operator.abs, operator.getitem: operator.getitem, operator.eq: operator.eq,
    operator.ne: operator.ne, operator.lt: operator.lt, operator.le: operator.le, operator.gt: operator.gt,
    operator.ge: operator.ge, operator.and_: operator.and_, operator.or_: operator.or_,
    builtins.getattr: getattr,
})
if hasattr(F, "rms_norm"):
    FUNCTIONS[F.rms_norm] = ops.rms_norm

METHODS: Dict[str, Callable] = {**_SHARED, **{k: v for k, v in _ACTIVATIONS.items() if hasattr(torch.Tensor, k)}}
METHODS.update({
    "view": ops.reshape, "view_as": lambda x, other: x.reshape(other.shape),
    "reshape_as": lambda x, other: x.reshape(other.shape), "expand": ops.expand,
    "expand_as": lambda x, other: jnp.broadcast_to(x, other.shape), "repeat": ops.repeat, "size": ops.size,
    "dim": lambda x: x.ndim, "numel": lambda x: x.size, "contiguous": ops.identity, "clone": ops.identity,
    "detach": lambda x: lax.stop_gradient(x), "float": ops.astype(jnp.float32), "double": ops.astype(jnp.float64),
    "half": ops.astype(jnp.float16), "long": ops.astype(jnp.int32), "int": ops.astype(jnp.int32), "bool": ops.astype(bool),
    "to": ops.to, "type_as": ops.type_as, "__getitem__": operator.getitem,
    "where": lambda x, condition, y: jnp.where(condition, x, y),  # x.where(c, y) is torch.where(c, x, y)
    **{f"__{op}__": getattr(operator, op) for op in ("add", "sub", "mul", "truediv", "matmul", "neg", "pow")},
    **{f"__r{op}__": (lambda f: lambda x, o: f(o, x))(getattr(operator, op))
       for op in ("add", "sub", "mul", "truediv", "matmul", "pow")},
})

MODULES: Dict[type, Callable] = {
    nn.Linear: lambda m, get, x: ops.linear(x, get("weight"), get("bias")),
    nn.Bilinear: lambda m, get, x1, x2: ops.bilinear(x1, x2, get("weight"), get("bias")),
    nn.Conv1d: ops.mod_conv(1), nn.Conv2d: ops.mod_conv(2), nn.Conv3d: ops.mod_conv(3),
    nn.BatchNorm1d: ops.mod_bn, nn.BatchNorm2d: ops.mod_bn, nn.BatchNorm3d: ops.mod_bn,
    nn.InstanceNorm1d: ops.mod_instance_norm, nn.InstanceNorm2d: ops.mod_instance_norm,
    nn.InstanceNorm3d: ops.mod_instance_norm,
    nn.LayerNorm: lambda m, get, x: ops.layer_norm(x, m.normalized_shape, get("weight"), get("bias"), m.eps),
    nn.GroupNorm: lambda m, get, x: ops.group_norm(x, m.num_groups, get("weight"), get("bias"), m.eps),
    nn.Embedding: lambda m, get, x: ops.embedding(x, get("weight"), m.padding_idx, m.max_norm),
    nn.Dropout: ops.mod_dropout, nn.Dropout1d: ops.mod_dropout, nn.Dropout2d: ops.mod_dropout, nn.Dropout3d: ops.mod_dropout,
    nn.AlphaDropout: ops.mod_dropout, nn.FeatureAlphaDropout: ops.mod_dropout, nn.Identity: lambda m, get, x: x,
    nn.Flatten: ops.act(ops.flatten, "start_dim", "end_dim"), nn.Unflatten: ops.act(ops.unflatten, "dim", "unflattened_size"),
    nn.ReLU: ops.act(ops.relu), nn.ReLU6: ops.act(ops.relu6), nn.LeakyReLU: ops.act(ops.leaky_relu, "negative_slope"),
    nn.ELU: ops.act(ops.elu, "alpha"), nn.CELU: ops.act(ops.celu, "alpha"), nn.SELU: ops.act(ops.selu),
    nn.GELU: ops.act(ops.gelu, "approximate"), nn.SiLU: ops.act(ops.silu), nn.Mish: ops.act(ops.mish),
    nn.Softplus: ops.act(ops.softplus, "beta", "threshold"), nn.Softsign: ops.act(ops.softsign),
    nn.Tanh: lambda m, get, x: jnp.tanh(x), nn.Sigmoid: lambda m, get, x: jax.nn.sigmoid(x),
    nn.Hardtanh: ops.act(ops.hardtanh, "min_val", "max_val"), nn.Hardsigmoid: ops.act(ops.hardsigmoid),
    nn.Hardswish: ops.act(ops.hardswish), nn.LogSigmoid: ops.act(ops.logsigmoid), nn.Tanhshrink: ops.act(ops.tanhshrink),
    nn.Softmax: ops.act(ops.softmax, "dim"), nn.LogSoftmax: ops.act(ops.log_softmax, "dim"),
    nn.PReLU: lambda m, get, x: ops.prelu(x, get("weight")),
    nn.MaxPool1d: ops.act(ops.max_pool(1), "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    nn.MaxPool2d: ops.act(ops.max_pool(2), "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    nn.MaxPool3d: ops.act(ops.max_pool(3), "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    nn.AvgPool1d: ops.act(ops.avg_pool(1), "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    nn.AvgPool2d: ops.act(ops.avg_pool(2), "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                       "divisor_override"),
    nn.AvgPool3d: ops.act(ops.avg_pool(3), "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                       "divisor_override"),
    nn.AdaptiveAvgPool1d: ops.act(ops.adaptive_pool(1, jnp.mean), "output_size"),
    nn.AdaptiveAvgPool2d: ops.act(ops.adaptive_pool(2, jnp.mean), "output_size"),
    nn.AdaptiveAvgPool3d: ops.act(ops.adaptive_pool(3, jnp.mean), "output_size"),
    nn.AdaptiveMaxPool1d: ops.act(ops.adaptive_pool(1, jnp.max), "output_size", "return_indices"),
    nn.AdaptiveMaxPool2d: ops.act(ops.adaptive_pool(2, jnp.max), "output_size", "return_indices"),
    nn.AdaptiveMaxPool3d: ops.act(ops.adaptive_pool(3, jnp.max), "output_size", "return_indices"),
}
if hasattr(nn, "RMSNorm"):
    MODULES[nn.RMSNorm] = lambda m, get, x: ops.rms_norm(x, m.normalized_shape, get("weight"), m.eps)


def supported_operations() -> Dict[str, list]:
    """What the JAX translation covers: ``{"modules": [...], "functions": [...], "methods": [...]}``.

    ``modules`` are ``torch.nn`` layers translated whole; any other module (your own, or a
    subclass with its own ``forward``) is traced into and needs its operations ops.to be in
    ``functions`` (``torch.*``, ``torch.nn.functional.*``, Python operators) and ``methods``
    (``Tensor`` methods).
    """
    return {
        "modules": sorted(f"torch.nn.{m.__name__}" for m in MODULES),
        "functions": sorted({function_name(f) for f in FUNCTIONS}),
        "methods": sorted(k for k in METHODS if not k.startswith("__") and hasattr(torch.Tensor, k)),
    }


def function_name(fn: Any) -> str:
    name = getattr(fn, "__name__", repr(fn))
    module = getattr(fn, "__module__", None)
    if fn in (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
              F.adaptive_max_pool3d):
        return "torch.nn.functional." + next(k for k, v in vars(F).items() if v is fn)
    if module is None or module.startswith("torch._C"):
        module = "torch"
    if module in ("_operator", "operator"):
        module = "operator"
    return f"{module}.{name}"
