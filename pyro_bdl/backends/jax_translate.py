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
"""
from __future__ import annotations

import builtins
import math
import operator
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F
from jax import lax
from torch import fx, nn

__all__ = ["to_jax", "JaxNetwork", "UnsupportedOperationError", "supported_operations", "as_jax_array"]

_HIGHEST = lax.Precision.HIGHEST  # full float32 matmuls/convolutions, as torch on CPU


class UnsupportedOperationError(ValueError):
    """A torch operation (layer, function or tensor method) without a JAX translation."""


class _Unsupported(Exception):
    """Raised by a translator for an unsupported configuration; re-raised with the node's location."""


def as_jax_array(value: Any) -> jnp.ndarray:
    """A torch tensor, numpy array or JAX array as a JAX array (torch tensors are copied via numpy)."""
    if torch.is_tensor(value):
        value = value.detach().cpu().numpy()
    return jnp.asarray(value)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _ntuple(value: Any, n: int) -> Tuple:
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return tuple(value) * n
        if len(value) != n:
            raise _Unsupported(f"expected {n} values, got {value!r}")
        return tuple(value)
    return (value,) * n


def _axes(dim: Any) -> Any:
    """torch ``dim`` (int, list, tuple or None) as a JAX ``axis``."""
    if isinstance(dim, list):
        return tuple(dim)
    if dim == ():
        return None  # torch: an empty dim list reduces over everything
    return dim


def _shape_args(args: Sequence) -> Tuple[int, ...]:
    """``view(2, -1)`` and ``view((2, -1))`` both mean the shape ``(2, -1)``."""
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        return tuple(args[0])
    return tuple(args)


def _channel_shape(x: jnp.ndarray) -> Tuple[int, ...]:
    """Broadcast shape of a per-channel (dim 1) vector against ``x`` of shape (N, C, *)."""
    return (1, -1) + (1,) * (x.ndim - 2)


def _identity(x, *args, **kwargs):
    return x


# ---------------------------------------------------------------------------------------------
# elementwise activations (torch semantics)
# ---------------------------------------------------------------------------------------------
def _relu(x, inplace=False):
    return jax.nn.relu(x)


def _relu6(x, inplace=False):
    return jnp.clip(x, 0.0, 6.0)


def _leaky_relu(x, negative_slope=0.01, inplace=False):
    return jnp.where(x >= 0, x, negative_slope * x)


def _elu(x, alpha=1.0, inplace=False):
    return jnp.where(x > 0, x, alpha * jnp.expm1(jnp.minimum(x, 0.0)))


def _celu(x, alpha=1.0, inplace=False):
    return jnp.where(x > 0, x, alpha * jnp.expm1(jnp.minimum(x, 0.0) / alpha))


def _selu(x, inplace=False):
    return jax.nn.selu(x)


def _gelu(x, approximate="none"):
    if approximate not in ("none", "tanh"):
        raise _Unsupported(f"GELU approximate={approximate!r}")
    return jax.nn.gelu(x, approximate=approximate == "tanh")


def _silu(x, inplace=False):
    return jax.nn.silu(x)


def _mish(x, inplace=False):
    return x * jnp.tanh(jax.nn.softplus(x))


def _softplus(x, beta=1.0, threshold=20.0):
    # torch reverts to the identity where beta * x > threshold (numerical stability)
    return jnp.where(beta * x > threshold, x, jax.nn.softplus(beta * x) / beta)


def _softsign(x):
    return x / (1 + jnp.abs(x))


def _hardtanh(x, min_val=-1.0, max_val=1.0, inplace=False):
    return jnp.clip(x, min_val, max_val)


def _hardsigmoid(x, inplace=False):
    return jnp.clip(x / 6 + 0.5, 0.0, 1.0)


def _hardswish(x, inplace=False):
    return x * jnp.clip(x / 6 + 0.5, 0.0, 1.0)


def _logsigmoid(x):
    return jax.nn.log_sigmoid(x)


def _tanhshrink(x):
    return x - jnp.tanh(x)


def _softmax(x, dim=None, _stacklevel=3, dtype=None):
    if dim is None:
        raise _Unsupported("softmax without dim (the implicit-dim legacy form); pass dim explicitly")
    return jax.nn.softmax(x if dtype is None else x.astype(_jax_dtype(dtype)), axis=dim)


def _log_softmax(x, dim=None, _stacklevel=3, dtype=None):
    if dim is None:
        raise _Unsupported("log_softmax without dim (the implicit-dim legacy form); pass dim explicitly")
    return jax.nn.log_softmax(x if dtype is None else x.astype(_jax_dtype(dtype)), axis=dim)


def _prelu(x, weight):
    w = weight.reshape(_channel_shape(x)) if weight.size > 1 and x.ndim >= 2 else weight.reshape(())
    return jnp.where(x >= 0, x, w * x)


def _dropout(x, p=0.5, training=True, inplace=False):
    if training:
        raise _Unsupported("dropout in training mode (a random network); call dropout with "
                           "training=self.training so it is the identity in eval mode")
    return x


# ---------------------------------------------------------------------------------------------
# linear layers and convolutions
# ---------------------------------------------------------------------------------------------
def _linear(x, weight, bias=None):
    out = jnp.matmul(x, weight.T, precision=_HIGHEST)
    return out if bias is None else out + bias


def _bilinear(x1, x2, weight, bias=None):
    out = jnp.einsum("...i,oij,...j->...o", x1, weight, x2, precision=_HIGHEST)
    return out if bias is None else out + bias


_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _conv(nd: int):
    spatial = "DHW"[3 - nd:]

    def conv(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
        unbatched = x.ndim == nd + 1
        if unbatched:
            x = x[None]
        stride, dilation = _ntuple(stride, nd), _ntuple(dilation, nd)
        if isinstance(padding, str):
            if padding == "valid":
                pads = [(0, 0)] * nd
            elif padding == "same":
                # torch pads total // 2 on the left and the remainder on the right
                totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:])]
                pads = [(t // 2, t - t // 2) for t in totals]
            else:
                raise _Unsupported(f"padding={padding!r}")
        else:
            pads = [(p, p) for p in _ntuple(padding, nd)]
        if padding_mode != "zeros":
            if padding_mode not in _PAD_MODES:
                raise _Unsupported(f"padding_mode={padding_mode!r}")
            x = jnp.pad(x, [(0, 0), (0, 0)] + pads, mode=_PAD_MODES[padding_mode])
            pads = [(0, 0)] * nd
        lhs = "NC" + spatial
        out = lax.conv_general_dilated(x, weight, window_strides=stride, padding=pads, rhs_dilation=dilation,
                                       feature_group_count=groups, dimension_numbers=(lhs, "OI" + spatial, lhs),
                                       precision=_HIGHEST)
        if bias is not None:
            out = out + bias.reshape(_channel_shape(out))
        return out[0] if unbatched else out

    return conv


# ---------------------------------------------------------------------------------------------
# pooling
# ---------------------------------------------------------------------------------------------
def _pool_geometry(shape, nd, kernel_size, stride, padding, dilation, ceil_mode):
    k = _ntuple(kernel_size, nd)
    s = _ntuple(k if stride is None or stride == [] or stride == () else stride, nd)
    p, d = _ntuple(padding, nd), _ntuple(dilation, nd)
    extra = []
    for L, ki, si, pi, di in zip(shape[-nd:], k, s, p, d):
        span = L + 2 * pi - di * (ki - 1) - 1
        out = (-(-span // si) if ceil_mode else span // si) + 1
        if ceil_mode and (out - 1) * si >= L + pi:
            out -= 1  # the last window must start inside the input or the left padding
        extra.append(max(0, (out - 1) * si + di * (ki - 1) + 1 - (L + 2 * pi)))
    return k, s, p, d, extra


def _max_pool(nd: int):
    def max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        if return_indices:
            raise _Unsupported("max pooling with return_indices=True")
        lead = x.ndim - nd
        k, s, p, d, extra = _pool_geometry(x.shape, nd, kernel_size, stride, padding, dilation, ceil_mode)
        init = jnp.array(-jnp.inf, dtype=x.dtype)
        return lax.reduce_window(x, init, lax.max, (1,) * lead + k, (1,) * lead + s,
                                 [(0, 0)] * lead + [(pi, pi + e) for pi, e in zip(p, extra)],
                                 window_dilation=(1,) * lead + d)

    return max_pool


def _avg_pool(nd: int):
    def avg_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        lead = x.ndim - nd
        k, s, p, d, extra = _pool_geometry(x.shape, nd, kernel_size, stride, padding, 1, ceil_mode)
        window, strides = (1,) * lead + k, (1,) * lead + s
        pads = [(0, 0)] * lead + [(pi, pi + e) for pi, e in zip(p, extra)]
        zero = jnp.array(0, dtype=x.dtype)
        total = lax.reduce_window(x, zero, lax.add, window, strides, pads)
        if divisor_override:
            return total / divisor_override
        # Divisor per window: torch counts the zero padding (count_include_pad) but never the
        # extra right margin that ceil_mode adds.
        mask = jnp.ones(x.shape[lead:], dtype=x.dtype)
        if count_include_pad:
            mask = jnp.pad(mask, [(pi, pi) for pi in p], constant_values=1)
            mask_pads = [(0, e) for e in extra]
        else:
            mask_pads = [(pi, pi + e) for pi, e in zip(p, extra)]
        count = lax.reduce_window(mask, zero, lax.add, k, s, mask_pads)
        return total / count

    return avg_pool


def _adaptive_pool(nd: int, reduce: Callable):
    def adaptive(x, output_size, return_indices=False):
        if return_indices:
            raise _Unsupported("adaptive pooling with return_indices=True")
        sizes = _ntuple(output_size, nd)
        for i, o in enumerate(sizes):
            if o is None:
                continue
            axis = x.ndim - nd + i
            L = x.shape[axis]
            if L % o == 0:  # equal bins: one reshape
                x = reduce(x.reshape(x.shape[:axis] + (o, L // o) + x.shape[axis + 1:]), axis=axis + 1)
            else:  # torch's bins: [floor(j L / o), ceil((j + 1) L / o))
                parts = [reduce(lax.slice_in_dim(x, (j * L) // o, -(-((j + 1) * L) // o), axis=axis), axis=axis,
                                keepdims=True) for j in range(o)]
                x = jnp.concatenate(parts, axis=axis)
        return x

    return adaptive


# ---------------------------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------------------------
def _batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    if training or running_mean is None:
        axes = (0,) + tuple(range(2, x.ndim))
        mean, var = jnp.mean(x, axis=axes), jnp.var(x, axis=axes)
    else:
        mean, var = running_mean, running_var
    shape = _channel_shape(x) if x.ndim >= 2 else (-1,)
    out = (x - mean.reshape(shape)) * lax.rsqrt(var.reshape(shape) + eps)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    return out


def _instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                   momentum=0.1, eps=1e-5):
    if use_input_stats or running_mean is None:
        axes = tuple(range(2, x.ndim))
        mean, var = jnp.mean(x, axis=axes, keepdims=True), jnp.var(x, axis=axes, keepdims=True)
    else:
        mean, var = running_mean.reshape(_channel_shape(x)), running_var.reshape(_channel_shape(x))
    out = (x - mean) * lax.rsqrt(var + eps)
    if weight is not None:
        out = out * weight.reshape(_channel_shape(x))
    if bias is not None:
        out = out + bias.reshape(_channel_shape(x))
    return out


def _layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    axes = tuple(range(x.ndim - len(_shape_args([normalized_shape])), x.ndim))
    mean, var = jnp.mean(x, axis=axes, keepdims=True), jnp.var(x, axis=axes, keepdims=True)
    out = (x - mean) * lax.rsqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def _rms_norm(x, normalized_shape, weight=None, eps=None):
    axes = tuple(range(x.ndim - len(_shape_args([normalized_shape])), x.ndim))
    eps = float(jnp.finfo(x.dtype).eps) if eps is None else eps
    out = x * lax.rsqrt(jnp.mean(x * x, axis=axes, keepdims=True) + eps)
    return out if weight is None else out * weight


def _group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    n, c = x.shape[0], x.shape[1]
    g = x.reshape(n, num_groups, -1)
    mean, var = jnp.mean(g, axis=-1, keepdims=True), jnp.var(g, axis=-1, keepdims=True)
    out = ((g - mean) * lax.rsqrt(var + eps)).reshape(x.shape)
    if weight is not None:
        out = out * weight.reshape(_channel_shape(x))
    if bias is not None:
        out = out + bias.reshape(_channel_shape(x))
    return out


def _normalize(x, p=2.0, dim=1, eps=1e-12, out=None):
    norm = jnp.sum(jnp.abs(x) ** p, axis=dim, keepdims=True) ** (1.0 / p)
    return x / jnp.maximum(norm, eps)


def _embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
               sparse=False):
    if max_norm is not None:
        raise _Unsupported("embedding with max_norm (it renormalises the weights in place)")
    return jnp.take(weight, input, axis=0)


# ---------------------------------------------------------------------------------------------
# tensor manipulation and math (torch signatures)
# ---------------------------------------------------------------------------------------------
def _flatten(x, start_dim=0, end_dim=-1):
    if x.ndim == 0:
        return x.reshape(1)
    s, e = start_dim % x.ndim, end_dim % x.ndim
    return x.reshape(x.shape[:s] + (math.prod(x.shape[s:e + 1]),) + x.shape[e + 1:])


def _unflatten(x, dim, sizes):
    dim = dim % x.ndim
    return x.reshape(x.shape[:dim] + tuple(sizes) + x.shape[dim + 1:])


def _cat(tensors, dim=0, axis=None, out=None):
    return jnp.concatenate(list(tensors), axis=dim if axis is None else axis)


def _stack(tensors, dim=0, out=None):
    return jnp.stack(list(tensors), axis=dim)


def _reshape(x, *shape):
    return jnp.reshape(x, _shape_args(shape))


def _permute(x, *dims):
    return jnp.transpose(x, _shape_args(dims))


def _transpose(x, dim0, dim1):
    return jnp.swapaxes(x, dim0, dim1)


def _t(x):
    return x.T


def _squeeze(x, dim=None):
    if dim is None:
        return jnp.squeeze(x)
    dims = tuple(d % max(x.ndim, 1) for d in (dim if isinstance(dim, (tuple, list)) else (dim,)))
    dims = tuple(d for d in dims if x.ndim and x.shape[d] == 1)  # torch: a non-singleton dim is left alone
    return jnp.squeeze(x, axis=dims) if dims else x


def _unsqueeze(x, dim):
    return jnp.expand_dims(x, dim)


def _expand(x, *sizes):
    sizes = _shape_args(sizes)
    lead = len(sizes) - x.ndim
    shape = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes))
    return jnp.broadcast_to(x, shape)


def _repeat(x, *sizes):
    return jnp.tile(x, _shape_args(sizes))


def _size(x, dim=None):
    return tuple(x.shape) if dim is None else x.shape[dim]


def _chunk(x, chunks, dim=0):
    n = x.shape[dim]
    step = -(-n // chunks)
    return tuple(lax.slice_in_dim(x, i, min(i + step, n), axis=dim) for i in range(0, n, step))


def _split(x, split_size_or_sections, dim=0):
    n = x.shape[dim]
    if isinstance(split_size_or_sections, int):
        bounds = list(range(0, n, split_size_or_sections)) + [n]
    else:
        bounds = [0] + list(np.cumsum(split_size_or_sections))
    return tuple(lax.slice_in_dim(x, int(a), int(b), axis=dim) for a, b in zip(bounds[:-1], bounds[1:]))


def _unbind(x, dim=0):
    return tuple(jnp.moveaxis(x, dim, 0))


def _reduction(fn):
    def reduce(x, dim=None, keepdim=False, dtype=None, out=None, axis=None):
        dim = dim if axis is None else axis
        out = fn(x, axis=_axes(dim), keepdims=keepdim)
        return out if dtype is None else out.astype(_jax_dtype(dtype))

    return reduce


def _var_std(fn):
    def reduce(x, dim=None, unbiased=None, keepdim=False, correction=None, out=None):
        if correction is None:
            correction = 0 if unbiased is False else 1
        return fn(x, axis=_axes(dim), ddof=correction, keepdims=keepdim)

    return reduce


def _logsumexp(x, dim, keepdim=False, out=None):
    return jax.nn.logsumexp(x, axis=_axes(dim), keepdims=keepdim)


def _max_min(fn, argfn, elementwise):
    def reduce(x, dim=None, keepdim=False, out=None):
        if dim is None:
            return fn(x)
        if not isinstance(dim, int):  # torch.max(a, b): elementwise
            return elementwise(x, dim)
        return fn(x, axis=dim, keepdims=keepdim), argfn(x, axis=dim, keepdims=keepdim)

    return reduce


def _argreduce(fn):
    def reduce(x, dim=None, keepdim=False):
        return fn(x, axis=dim, keepdims=keepdim)

    return reduce


def _norm(x, p="fro", dim=None, keepdim=False, dtype=None, out=None):
    if p in ("fro", 2, 2.0, None):
        return jnp.sqrt(jnp.sum(x * x, axis=_axes(dim), keepdims=keepdim))
    if p == 1:
        return jnp.sum(jnp.abs(x), axis=_axes(dim), keepdims=keepdim)
    return jnp.sum(jnp.abs(x) ** p, axis=_axes(dim), keepdims=keepdim) ** (1.0 / p)


def _clamp(x, min=None, max=None, out=None):
    return jnp.clip(x, min, max)


def _clamp_min(x, min):
    return jnp.maximum(x, min)


def _clamp_max(x, max):
    return jnp.minimum(x, max)


def _binary(fn):
    def op(x, other, alpha=None, out=None):
        return fn(x, other if alpha is None else alpha * other)

    return op


def _div(x, other, rounding_mode=None, out=None):
    if rounding_mode is None:
        return jnp.true_divide(x, other)
    if rounding_mode == "floor":
        return jnp.floor_divide(x, other)
    if rounding_mode == "trunc":
        return jnp.trunc(jnp.true_divide(x, other))
    raise _Unsupported(f"rounding_mode={rounding_mode!r}")


def _matmul(a, b, out=None):
    return jnp.matmul(a, b, precision=_HIGHEST)


def _einsum(equation, *operands):
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    return jnp.einsum(equation, *operands, precision=_HIGHEST)


def _where(condition, x=None, y=None):
    if x is None:
        raise _Unsupported("torch.where(condition) without values (data-dependent output shape)")
    return jnp.where(condition, x, y)


def _masked_fill(x, mask, value):
    return jnp.where(mask, jnp.asarray(value, dtype=x.dtype), x)


def _pad(x, pad, mode="constant", value=None):
    pairs = [(pad[i], pad[i + 1]) for i in range(0, len(pad), 2)]  # from the last dim backwards
    widths = [(0, 0)] * (x.ndim - len(pairs)) + pairs[::-1]
    if any(a < 0 or b < 0 for a, b in widths):
        raise _Unsupported("negative padding (cropping)")
    if mode == "constant":
        return jnp.pad(x, widths, constant_values=0.0 if value is None else value)
    if mode not in _PAD_MODES:
        raise _Unsupported(f"pad mode={mode!r}")
    return jnp.pad(x, widths, mode=_PAD_MODES[mode])


def _jax_dtype(dtype: Any):
    if isinstance(dtype, torch.dtype):
        return jnp.dtype(str(dtype).replace("torch.", ""))
    return dtype


def _to(x, *args, **kwargs):
    dtype = kwargs.get("dtype")
    for a in args:
        if isinstance(a, torch.dtype):
            dtype = a
        elif hasattr(a, "dtype") and not isinstance(a, (str, torch.device)):
            dtype = a.dtype
    return x if dtype is None else x.astype(_jax_dtype(dtype))


def _astype(dtype):
    def cast(x, *args, **kwargs):
        return x.astype(dtype)

    return cast


def _type_as(x, other):
    return x.astype(other.dtype)


def _like(fill):
    def like(x, dtype=None, **kwargs):
        return jnp.full_like(x, fill, dtype=None if dtype is None else _jax_dtype(dtype))

    return like


def _full_like(x, fill_value, dtype=None, **kwargs):
    return jnp.full_like(x, fill_value, dtype=None if dtype is None else _jax_dtype(dtype))


def _unary(fn):
    def op(x, out=None):
        return fn(x)

    return op


def _pow(x, exponent, out=None):
    return jnp.power(x, exponent)


# ---------------------------------------------------------------------------------------------
# tables: torch functions, tensor methods and leaf modules
# ---------------------------------------------------------------------------------------------
_UNARY = {
    "exp": jnp.exp, "log": jnp.log, "sin": jnp.sin, "cos": jnp.cos, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid,
    "abs": jnp.abs, "sqrt": jnp.sqrt, "rsqrt": lax.rsqrt, "square": jnp.square, "log1p": jnp.log1p,
    "expm1": jnp.expm1, "erf": jax.scipy.special.erf, "neg": jnp.negative, "negative": jnp.negative,
    "sign": jnp.sign, "floor": jnp.floor, "ceil": jnp.ceil, "round": jnp.round, "reciprocal": jnp.reciprocal,
    "exp2": jnp.exp2, "log2": jnp.log2, "atan": jnp.arctan, "sinh": jnp.sinh, "cosh": jnp.cosh,
}
_ACTIVATIONS = {
    "relu": _relu, "relu6": _relu6, "leaky_relu": _leaky_relu, "elu": _elu, "celu": _celu, "selu": _selu,
    "gelu": _gelu, "silu": _silu, "mish": _mish, "softplus": _softplus, "softsign": _softsign,
    "hardtanh": _hardtanh, "hardsigmoid": _hardsigmoid, "hardswish": _hardswish, "logsigmoid": _logsigmoid,
    "tanhshrink": _tanhshrink, "softmax": _softmax, "log_softmax": _log_softmax,
}
_SHARED = {  # names with the same meaning as torch.X, torch.nn.functional.X (where it exists) and Tensor.X
    **{k: _unary(v) for k, v in _UNARY.items()},
    "relu": _relu, "softmax": _softmax, "log_softmax": _log_softmax, "flatten": _flatten, "unflatten": _unflatten,
    "reshape": _reshape, "permute": _permute, "transpose": _transpose, "swapaxes": _transpose, "t": _t,
    "squeeze": _squeeze, "unsqueeze": _unsqueeze, "chunk": _chunk, "split": _split, "unbind": _unbind,
    "sum": _reduction(jnp.sum), "mean": _reduction(jnp.mean), "prod": _reduction(jnp.prod),
    "amax": _reduction(jnp.max), "amin": _reduction(jnp.min), "var": _var_std(jnp.var), "std": _var_std(jnp.std),
    "logsumexp": _logsumexp, "max": _max_min(jnp.max, jnp.argmax, jnp.maximum),
    "min": _max_min(jnp.min, jnp.argmin, jnp.minimum), "argmax": _argreduce(jnp.argmax),
    "argmin": _argreduce(jnp.argmin), "norm": _norm, "clamp": _clamp, "clip": _clamp, "clamp_min": _clamp_min,
    "clamp_max": _clamp_max, "add": _binary(jnp.add), "sub": _binary(jnp.subtract),
    "subtract": _binary(jnp.subtract), "mul": _binary(jnp.multiply), "multiply": _binary(jnp.multiply),
    "div": _div, "divide": _div, "true_divide": _div, "matmul": _matmul, "mm": _matmul, "bmm": _matmul,
    "pow": _pow, "maximum": jnp.maximum, "minimum": jnp.minimum, "masked_fill": _masked_fill,
    "where": _where, "tile": _repeat, "zeros_like": _like(0), "ones_like": _like(1),
    "full_like": _full_like,
}

_FUNCTIONS: Dict[Any, Callable] = {}
for _name, _fn in _SHARED.items():
    for _ns in (torch, F):
        if callable(getattr(_ns, _name, None)):
            _FUNCTIONS[getattr(_ns, _name)] = _fn
for _name, _fn in _ACTIVATIONS.items():
    for _ns in (torch, F):
        if callable(getattr(_ns, _name, None)):
            _FUNCTIONS[getattr(_ns, _name)] = _fn
_FUNCTIONS.update({
    torch.cat: _cat, torch.concat: _cat, torch.concatenate: _cat, torch.stack: _stack, torch.einsum: _einsum,
    F.linear: _linear, F.bilinear: _bilinear, F.conv1d: _conv(1), F.conv2d: _conv(2), F.conv3d: _conv(3),
    F.max_pool1d: _max_pool(1), F.max_pool2d: _max_pool(2), F.max_pool3d: _max_pool(3),
    F.avg_pool1d: _avg_pool(1), F.avg_pool2d: _avg_pool(2), F.avg_pool3d: _avg_pool(3),
    F.adaptive_avg_pool1d: _adaptive_pool(1, jnp.mean), F.adaptive_avg_pool2d: _adaptive_pool(2, jnp.mean),
    F.adaptive_avg_pool3d: _adaptive_pool(3, jnp.mean), F.adaptive_max_pool1d: _adaptive_pool(1, jnp.max),
    F.adaptive_max_pool2d: _adaptive_pool(2, jnp.max), F.adaptive_max_pool3d: _adaptive_pool(3, jnp.max),
    F.batch_norm: _batch_norm, F.instance_norm: _instance_norm, F.layer_norm: _layer_norm,
    F.group_norm: _group_norm, F.normalize: _normalize, F.embedding: _embedding, F.pad: _pad, F.prelu: _prelu,
    F.dropout: _dropout, F.dropout1d: _dropout, F.dropout2d: _dropout, F.dropout3d: _dropout,
    F.alpha_dropout: _dropout, F.feature_alpha_dropout: _dropout,
    torch.tanh: _unary(jnp.tanh), torch.sigmoid: _unary(jax.nn.sigmoid), F.tanh: _unary(jnp.tanh),
    F.sigmoid: _unary(jax.nn.sigmoid),
    operator.add: operator.add, operator.sub: operator.sub, operator.mul: operator.mul,
    operator.truediv: operator.truediv, operator.floordiv: operator.floordiv, operator.mod: operator.mod,
    operator.pow: operator.pow, operator.matmul: _matmul, operator.neg: operator.neg, operator.pos: operator.pos,
    operator.abs: operator.abs, operator.getitem: operator.getitem, operator.eq: operator.eq,
    operator.ne: operator.ne, operator.lt: operator.lt, operator.le: operator.le, operator.gt: operator.gt,
    operator.ge: operator.ge, operator.and_: operator.and_, operator.or_: operator.or_,
    builtins.getattr: getattr,
})
if hasattr(F, "rms_norm"):
    _FUNCTIONS[F.rms_norm] = _rms_norm

_METHODS: Dict[str, Callable] = {**_SHARED, **{k: v for k, v in _ACTIVATIONS.items() if hasattr(torch.Tensor, k)}}
_METHODS.update({
    "view": _reshape, "view_as": lambda x, other: x.reshape(other.shape),
    "reshape_as": lambda x, other: x.reshape(other.shape), "expand": _expand,
    "expand_as": lambda x, other: jnp.broadcast_to(x, other.shape), "repeat": _repeat, "size": _size,
    "dim": lambda x: x.ndim, "numel": lambda x: x.size, "contiguous": _identity, "clone": _identity,
    "detach": lambda x: lax.stop_gradient(x), "float": _astype(jnp.float32), "double": _astype(jnp.float64),
    "half": _astype(jnp.float16), "long": _astype(jnp.int32), "int": _astype(jnp.int32), "bool": _astype(bool),
    "to": _to, "type_as": _type_as, "__getitem__": operator.getitem,
    "where": lambda x, condition, y: jnp.where(condition, x, y),  # x.where(c, y) is torch.where(c, x, y)
    **{f"__{op}__": getattr(operator, op) for op in ("add", "sub", "mul", "truediv", "matmul", "neg", "pow")},
    **{f"__r{op}__": (lambda f: lambda x, o: f(o, x))(getattr(operator, op))
       for op in ("add", "sub", "mul", "truediv", "matmul", "pow")},
})

# Leaf modules: translator(module, get, x) where get(name) is the module's parameter/buffer value.
_Getter = Callable[[str], Optional[jnp.ndarray]]


def _mod_conv(nd):
    conv = _conv(nd)

    def fn(m, get, x):
        return conv(x, get("weight"), get("bias"), m.stride, m.padding, m.dilation, m.groups, m.padding_mode)

    return fn


def _mod_bn(m, get, x):
    use_batch = m.training or get("running_mean") is None
    return _batch_norm(x, get("running_mean"), get("running_var"), get("weight"), get("bias"), use_batch, 0.0, m.eps)


def _mod_instance_norm(m, get, x):
    use_input = m.training or not m.track_running_stats
    return _instance_norm(x, get("running_mean"), get("running_var"), get("weight"), get("bias"), use_input, 0.0,
                          m.eps)


def _mod_dropout(m, get, x):
    if m.training:
        raise _Unsupported("dropout in training mode; the network is evaluated in eval() mode")
    return x


def _act(fn, *attrs):
    return lambda m, get, x: fn(x, *(getattr(m, a) for a in attrs))


_MODULES: Dict[type, Callable] = {
    nn.Linear: lambda m, get, x: _linear(x, get("weight"), get("bias")),
    nn.Bilinear: lambda m, get, x1, x2: _bilinear(x1, x2, get("weight"), get("bias")),
    nn.Conv1d: _mod_conv(1), nn.Conv2d: _mod_conv(2), nn.Conv3d: _mod_conv(3),
    nn.BatchNorm1d: _mod_bn, nn.BatchNorm2d: _mod_bn, nn.BatchNorm3d: _mod_bn,
    nn.InstanceNorm1d: _mod_instance_norm, nn.InstanceNorm2d: _mod_instance_norm,
    nn.InstanceNorm3d: _mod_instance_norm,
    nn.LayerNorm: lambda m, get, x: _layer_norm(x, m.normalized_shape, get("weight"), get("bias"), m.eps),
    nn.GroupNorm: lambda m, get, x: _group_norm(x, m.num_groups, get("weight"), get("bias"), m.eps),
    nn.Embedding: lambda m, get, x: _embedding(x, get("weight"), m.padding_idx, m.max_norm),
    nn.Dropout: _mod_dropout, nn.Dropout1d: _mod_dropout, nn.Dropout2d: _mod_dropout, nn.Dropout3d: _mod_dropout,
    nn.AlphaDropout: _mod_dropout, nn.FeatureAlphaDropout: _mod_dropout, nn.Identity: lambda m, get, x: x,
    nn.Flatten: _act(_flatten, "start_dim", "end_dim"), nn.Unflatten: _act(_unflatten, "dim", "unflattened_size"),
    nn.ReLU: _act(_relu), nn.ReLU6: _act(_relu6), nn.LeakyReLU: _act(_leaky_relu, "negative_slope"),
    nn.ELU: _act(_elu, "alpha"), nn.CELU: _act(_celu, "alpha"), nn.SELU: _act(_selu),
    nn.GELU: _act(_gelu, "approximate"), nn.SiLU: _act(_silu), nn.Mish: _act(_mish),
    nn.Softplus: _act(_softplus, "beta", "threshold"), nn.Softsign: _act(_softsign),
    nn.Tanh: lambda m, get, x: jnp.tanh(x), nn.Sigmoid: lambda m, get, x: jax.nn.sigmoid(x),
    nn.Hardtanh: _act(_hardtanh, "min_val", "max_val"), nn.Hardsigmoid: _act(_hardsigmoid),
    nn.Hardswish: _act(_hardswish), nn.LogSigmoid: _act(_logsigmoid), nn.Tanhshrink: _act(_tanhshrink),
    nn.Softmax: _act(_softmax, "dim"), nn.LogSoftmax: _act(_log_softmax, "dim"),
    nn.PReLU: lambda m, get, x: _prelu(x, get("weight")),
    nn.MaxPool1d: _act(_max_pool(1), "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    nn.MaxPool2d: _act(_max_pool(2), "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    nn.MaxPool3d: _act(_max_pool(3), "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
    nn.AvgPool1d: _act(_avg_pool(1), "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"),
    nn.AvgPool2d: _act(_avg_pool(2), "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                       "divisor_override"),
    nn.AvgPool3d: _act(_avg_pool(3), "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                       "divisor_override"),
    nn.AdaptiveAvgPool1d: _act(_adaptive_pool(1, jnp.mean), "output_size"),
    nn.AdaptiveAvgPool2d: _act(_adaptive_pool(2, jnp.mean), "output_size"),
    nn.AdaptiveAvgPool3d: _act(_adaptive_pool(3, jnp.mean), "output_size"),
    nn.AdaptiveMaxPool1d: _act(_adaptive_pool(1, jnp.max), "output_size", "return_indices"),
    nn.AdaptiveMaxPool2d: _act(_adaptive_pool(2, jnp.max), "output_size", "return_indices"),
    nn.AdaptiveMaxPool3d: _act(_adaptive_pool(3, jnp.max), "output_size", "return_indices"),
}
if hasattr(nn, "RMSNorm"):
    _MODULES[nn.RMSNorm] = lambda m, get, x: _rms_norm(x, m.normalized_shape, get("weight"), m.eps)


def supported_operations() -> Dict[str, list]:
    """What the JAX translation covers: ``{"modules": [...], "functions": [...], "methods": [...]}``.

    ``modules`` are ``torch.nn`` layers translated whole; any other module (your own, or a
    subclass with its own ``forward``) is traced into and needs its operations to be in
    ``functions`` (``torch.*``, ``torch.nn.functional.*``, Python operators) and ``methods``
    (``Tensor`` methods).
    """
    return {
        "modules": sorted(f"torch.nn.{m.__name__}" for m in _MODULES),
        "functions": sorted({_function_name(f) for f in _FUNCTIONS}),
        "methods": sorted(k for k in _METHODS if not k.startswith("__")),
    }


def _function_name(fn: Any) -> str:
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


# ---------------------------------------------------------------------------------------------
# graph capture and evaluation
# ---------------------------------------------------------------------------------------------
_REMEDY = ("backend='pyro' still works with this network (it runs torch directly); for the NumPyro backend, "
           "rewrite that part with supported operations (pyro_bdl.backends.supported_operations()).")


class _Tracer(fx.Tracer):
    """Keeps the supported torch.nn layers whole and traces into every other module."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m) in _MODULES


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
        return f"function {_function_name(node.target)}"
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
                    if v is None:  # a plain tensor attribute (a constant of the forward)
                        v = as_jax_array(_get_attr(self._root, node.target))
                    env[node] = v
                elif op == "call_module":
                    prefix = node.target + "." if node.target else ""
                    env[node] = _MODULES[type(self._modules[node.target])](
                        self._modules[node.target], lambda n, p=prefix: self._value(p + n, values), *args, **kwargs)
                elif op == "call_function":
                    env[node] = _FUNCTIONS[node.target](*args, **kwargs)
                elif op == "call_method":
                    env[node] = _METHODS[node.target](*args, **kwargs)
                else:  # pragma: no cover - fx has no other node kinds
                    raise _Unsupported(f"fx node kind {op!r}")
            except _Unsupported as err:
                raise _unsupported(node, self._modules, str(err)) from None
            except TypeError as err:
                raise _unsupported(node, self._modules, f"with these arguments: {err}") from None
        raise AssertionError("graph without output")  # pragma: no cover

    def __repr__(self) -> str:
        return f"JaxNetwork(params={list(self.param_names)}, constants={list(self.constants)})"


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
            message names the operation and the module path. ``backend="pyro"`` still works.

    Example::

        f = to_jax(net)
        out = f({k: jnp.asarray(v.detach().numpy()) for k, v in net.named_parameters()}, x)
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
        if node.op == "call_function" and node.target not in _FUNCTIONS:
            raise _unsupported(node, modules)
        if node.op == "call_method" and node.target not in _METHODS:
            raise _unsupported(node, modules)
        if node.op == "call_module" and type(modules[node.target]) not in _MODULES:  # pragma: no cover
            raise _unsupported(node, modules)
    return JaxNetwork(net, graph, net, params)
