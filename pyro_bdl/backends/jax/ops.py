"""Op translators: torch layers, functions and tensor methods as ``jax.numpy`` / ``jax.lax`` code.

Each translator takes torch's signature (arguments as torch passes them, JAX arrays in place
of tensors) and returns what torch would, computed with JAX. Module translators
(``mod_*``) take ``(module, get, *inputs)`` where ``get(name)`` is the module's parameter or
buffer value. A translator raises `Unsupported` for a configuration it cannot
express; `.graph` re-raises it as [`UnsupportedOperationError`][pyro_bdl.backends.UnsupportedOperationError] naming the
operation and where it occurs. Which torch callable maps to which translator is in
`.tables`.

Every translator is differentiable under ``jax.grad``, ``jax.jvp`` and ``jax.linearize``
(what NUTS uses); pooling is written with reshapes and strided slices rather than
``lax.reduce_window`` for that reason (see `max_pool`).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax import lax


class UnsupportedOperationError(ValueError):
    """A torch operation (layer, function or tensor method) without a JAX translation."""


class Unsupported(Exception):
    """Raised by a translator for an unsupported configuration; re-raised with the node's location."""


def as_jax_array(value: Any) -> jnp.ndarray:
    """A torch tensor, numpy array or JAX array as a JAX array (torch tensors are copied via numpy)."""
    if torch.is_tensor(value):
        value = value.detach().cpu().numpy()
    return jnp.asarray(value)


_HIGHEST = lax.Precision.HIGHEST  # full float32 matmuls/convolutions, as torch on CPU


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _ntuple(value: Any, n: int) -> Tuple:
    if isinstance(value, (tuple, list)):
        if len(value) == 1:
            return tuple(value) * n
        if len(value) != n:
            raise Unsupported(f"expected {n} values, got {value!r}")
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


def identity(x, *args, **kwargs):
    return x


# ---------------------------------------------------------------------------------------------
# elementwise activations (torch semantics)
# ---------------------------------------------------------------------------------------------
def relu(x, inplace=False):
    return jax.nn.relu(x)


def relu6(x, inplace=False):
    return jnp.clip(x, 0.0, 6.0)


def leaky_relu(x, negative_slope=0.01, inplace=False):
    return jnp.where(x >= 0, x, negative_slope * x)


def elu(x, alpha=1.0, inplace=False):
    return jnp.where(x > 0, x, alpha * jnp.expm1(jnp.minimum(x, 0.0)))


def celu(x, alpha=1.0, inplace=False):
    return jnp.where(x > 0, x, alpha * jnp.expm1(jnp.minimum(x, 0.0) / alpha))


def selu(x, inplace=False):
    return jax.nn.selu(x)


def gelu(x, approximate="none"):
    if approximate not in ("none", "tanh"):
        raise Unsupported(f"GELU approximate={approximate!r}")
    return jax.nn.gelu(x, approximate=approximate == "tanh")


def silu(x, inplace=False):
    return jax.nn.silu(x)


def mish(x, inplace=False):
    return x * jnp.tanh(jax.nn.softplus(x))


def softplus(x, beta=1.0, threshold=20.0):
    # torch reverts to the identity where beta * x > threshold (numerical stability)
    return jnp.where(beta * x > threshold, x, jax.nn.softplus(beta * x) / beta)


def softsign(x):
    return x / (1 + jnp.abs(x))


def hardtanh(x, min_val=-1.0, max_val=1.0, inplace=False):
    return jnp.clip(x, min_val, max_val)


def hardsigmoid(x, inplace=False):
    return jnp.clip(x / 6 + 0.5, 0.0, 1.0)


def hardswish(x, inplace=False):
    return x * jnp.clip(x / 6 + 0.5, 0.0, 1.0)


def logsigmoid(x):
    return jax.nn.log_sigmoid(x)


def tanhshrink(x):
    return x - jnp.tanh(x)


def softmax(x, dim=None, _stacklevel=3, dtype=None):
    if dim is None:
        raise Unsupported("softmax without dim (the implicit-dim legacy form); pass dim explicitly")
    return jax.nn.softmax(x if dtype is None else x.astype(_jax_dtype(dtype)), axis=dim)


def log_softmax(x, dim=None, _stacklevel=3, dtype=None):
    if dim is None:
        raise Unsupported("log_softmax without dim (the implicit-dim legacy form); pass dim explicitly")
    return jax.nn.log_softmax(x if dtype is None else x.astype(_jax_dtype(dtype)), axis=dim)


def prelu(x, weight):
    w = weight.reshape(_channel_shape(x)) if weight.size > 1 and x.ndim >= 2 else weight.reshape(())
    return jnp.where(x >= 0, x, w * x)


def dropout(x, p=0.5, training=True, inplace=False):
    if training:
        raise Unsupported("dropout in training mode (a random network); call dropout with "
                           "training=self.training so it is the identity in eval mode")
    return x


# ---------------------------------------------------------------------------------------------
# linear layers and convolutions
# ---------------------------------------------------------------------------------------------
def linear(x, weight, bias=None):
    out = jnp.matmul(x, weight.T, precision=_HIGHEST)
    return out if bias is None else out + bias


def bilinear(x1, x2, weight, bias=None):
    out = jnp.einsum("...i,oij,...j->...o", x1, weight, x2, precision=_HIGHEST)
    return out if bias is None else out + bias


_PAD_MODES = {"reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def conv(nd: int):
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
                raise Unsupported(f"padding={padding!r}")
        else:
            pads = [(p, p) for p in _ntuple(padding, nd)]
        if padding_mode != "zeros":
            if padding_mode not in _PAD_MODES:
                raise Unsupported(f"padding_mode={padding_mode!r}")
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


def _windows(x, nd: int, k, s, d, pads, fill, pad=jnp.pad):
    """The pooling windows of ``x`` (last ``nd`` dims) as a list of strided views, one per window offset.

    Window ``j`` of the output covers ``x_padded[j*s + o*d]`` for the offsets ``o`` in ``range(k)``;
    view ``o`` holds that element for every ``j``. A reduction over the views (max, sum) is the
    pooled output, written with pad + strided slices only, so it linearises (``jax.jvp``,
    ``jax.linearize``), where ``lax.reduce_window`` with a generic reducer does not.
    """
    lead = x.ndim - nd
    if any(a or b for a, b in pads):
        x = pad(x, [(0, 0)] * lead + list(pads), constant_values=fill)
    sizes = [(L - di * (ki - 1) - 1) // si + 1 for L, ki, si, di in zip(x.shape[lead:], k, s, d)]
    views = []
    for offset in np.ndindex(*k):
        idx = tuple(slice(o * di, o * di + (n - 1) * si + 1, si) for o, di, si, n in zip(offset, d, s, sizes))
        views.append(x[(Ellipsis,) + idx])
    return views


def _tiles(x, nd: int, k):
    """``x`` with each of its last ``nd`` dims ``L`` split into ``(L // k, k)``: non-overlapping windows."""
    lead = x.ndim - nd
    shape = x.shape[:lead]
    for L, ki in zip(x.shape[lead:], k):
        shape += (L // ki, ki)
    return x.reshape(shape), tuple(lead + 2 * i + 1 for i in range(nd))


def _non_overlapping(x, nd, k, s, p, d, extra) -> bool:
    return (tuple(s) == tuple(k) and all(di == 1 for di in d) and not any(p) and not any(extra)
            and all(L % ki == 0 for L, ki in zip(x.shape[-nd:], k)))


def max_pool(nd: int):
    def max_pool(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
        if return_indices:
            raise Unsupported("max pooling with return_indices=True")
        k, s, p, d, extra = _pool_geometry(x.shape, nd, kernel_size, stride, padding, dilation, ceil_mode)
        if _non_overlapping(x, nd, k, s, p, d, extra):  # the common MaxPool2d(2): one reshape + max
            tiles, axes = _tiles(x, nd, k)
            return jnp.max(tiles, axis=axes)
        views = _windows(x, nd, k, s, d, [(pi, pi + e) for pi, e in zip(p, extra)], -jnp.inf)
        out = views[0]
        for v in views[1:]:
            out = jnp.maximum(out, v)
        return out

    return max_pool


def avg_pool(nd: int):
    def avg_pool(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
                 divisor_override=None):
        k, s, p, d, extra = _pool_geometry(x.shape, nd, kernel_size, stride, padding, 1, ceil_mode)
        if _non_overlapping(x, nd, k, s, p, d, extra):
            tiles, axes = _tiles(x, nd, k)
            return jnp.sum(tiles, axis=axes) / (divisor_override or math.prod(k))
        views = _windows(x, nd, k, s, d, [(pi, pi + e) for pi, e in zip(p, extra)], 0.0)
        total = views[0]
        for v in views[1:]:
            total = total + v
        if divisor_override:
            return total / divisor_override
        # Divisor per window (a constant of the shapes): torch counts the zero padding
        # (count_include_pad) but never the extra right margin that ceil_mode adds.
        mask = np.ones(x.shape[-nd:])
        if count_include_pad:
            mask = np.pad(mask, [(pi, pi) for pi in p], constant_values=1.0)
            mask_pads = [(0, e) for e in extra]
        else:
            mask_pads = [(pi, pi + e) for pi, e in zip(p, extra)]
        count = sum(_windows(mask, nd, k, s, d, mask_pads, 0.0, pad=np.pad))
        return total / jnp.asarray(count, dtype=x.dtype)

    return avg_pool


def adaptive_pool(nd: int, reduce: Callable):
    def adaptive(x, output_size, return_indices=False):
        if return_indices:
            raise Unsupported("adaptive pooling with return_indices=True")
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
def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
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


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
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


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    axes = tuple(range(x.ndim - len(_shape_args([normalized_shape])), x.ndim))
    mean, var = jnp.mean(x, axis=axes, keepdims=True), jnp.var(x, axis=axes, keepdims=True)
    out = (x - mean) * lax.rsqrt(var + eps)
    if weight is not None:
        out = out * weight
    if bias is not None:
        out = out + bias
    return out


def rms_norm(x, normalized_shape, weight=None, eps=None):
    axes = tuple(range(x.ndim - len(_shape_args([normalized_shape])), x.ndim))
    eps = float(jnp.finfo(x.dtype).eps) if eps is None else eps
    out = x * lax.rsqrt(jnp.mean(x * x, axis=axes, keepdims=True) + eps)
    return out if weight is None else out * weight


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    n = x.shape[0]
    g = x.reshape(n, num_groups, -1)
    mean, var = jnp.mean(g, axis=-1, keepdims=True), jnp.var(g, axis=-1, keepdims=True)
    out = ((g - mean) * lax.rsqrt(var + eps)).reshape(x.shape)
    if weight is not None:
        out = out * weight.reshape(_channel_shape(x))
    if bias is not None:
        out = out + bias.reshape(_channel_shape(x))
    return out


def normalize(x, p=2.0, dim=1, eps=1e-12, out=None):
    norm = jnp.sum(jnp.abs(x) ** p, axis=dim, keepdims=True) ** (1.0 / p)
    return x / jnp.maximum(norm, eps)


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
               sparse=False):
    if max_norm is not None:
        raise Unsupported("embedding with max_norm (it renormalises the weights in place)")
    return jnp.take(weight, input, axis=0)


# ---------------------------------------------------------------------------------------------
# tensor manipulation and math (torch signatures)
# ---------------------------------------------------------------------------------------------
def flatten(x, start_dim=0, end_dim=-1):
    if x.ndim == 0:
        return x.reshape(1)
    s, e = start_dim % x.ndim, end_dim % x.ndim
    return x.reshape(x.shape[:s] + (math.prod(x.shape[s:e + 1]),) + x.shape[e + 1:])


def unflatten(x, dim, sizes):
    dim = dim % x.ndim
    return x.reshape(x.shape[:dim] + tuple(sizes) + x.shape[dim + 1:])


def cat(tensors, dim=0, axis=None, out=None):
    return jnp.concatenate(list(tensors), axis=dim if axis is None else axis)


def stack(tensors, dim=0, out=None):
    return jnp.stack(list(tensors), axis=dim)


def reshape(x, *shape):
    return jnp.reshape(x, _shape_args(shape))


def permute(x, *dims):
    return jnp.transpose(x, _shape_args(dims))


def transpose(x, dim0, dim1):
    return jnp.swapaxes(x, dim0, dim1)


def matrix_t(x):
    return x.T


def squeeze(x, dim=None):
    if dim is None:
        return jnp.squeeze(x)
    dims = tuple(d % max(x.ndim, 1) for d in (dim if isinstance(dim, (tuple, list)) else (dim,)))
    dims = tuple(d for d in dims if x.ndim and x.shape[d] == 1)  # torch: a non-singleton dim is left alone
    return jnp.squeeze(x, axis=dims) if dims else x


def unsqueeze(x, dim):
    return jnp.expand_dims(x, dim)


def expand(x, *sizes):
    sizes = _shape_args(sizes)
    lead = len(sizes) - x.ndim
    shape = tuple(x.shape[i - lead] if s == -1 else s for i, s in enumerate(sizes))
    return jnp.broadcast_to(x, shape)


def repeat(x, *sizes):
    return jnp.tile(x, _shape_args(sizes))


def size(x, dim=None):
    return tuple(x.shape) if dim is None else x.shape[dim]


def chunk(x, chunks, dim=0):
    n = x.shape[dim]
    step = -(-n // chunks)
    return tuple(lax.slice_in_dim(x, i, min(i + step, n), axis=dim) for i in range(0, n, step))


def split(x, split_size_or_sections, dim=0):
    n = x.shape[dim]
    if isinstance(split_size_or_sections, int):
        bounds = list(range(0, n, split_size_or_sections)) + [n]
    else:
        bounds = [0] + list(np.cumsum(split_size_or_sections))
    return tuple(lax.slice_in_dim(x, int(a), int(b), axis=dim) for a, b in zip(bounds[:-1], bounds[1:]))


def unbind(x, dim=0):
    return tuple(jnp.moveaxis(x, dim, 0))


def reduction(fn):
    def reduce(x, dim=None, keepdim=False, dtype=None, out=None, axis=None):
        dim = dim if axis is None else axis
        out = fn(x, axis=_axes(dim), keepdims=keepdim)
        return out if dtype is None else out.astype(_jax_dtype(dtype))

    return reduce


def var_std(fn):
    def reduce(x, dim=None, unbiased=None, keepdim=False, correction=None, out=None):
        if correction is None:
            correction = 0 if unbiased is False else 1
        return fn(x, axis=_axes(dim), ddof=correction, keepdims=keepdim)

    return reduce


def logsumexp(x, dim, keepdim=False, out=None):
    return jax.nn.logsumexp(x, axis=_axes(dim), keepdims=keepdim)


def max_min(fn, argfn, elementwise):
    def reduce(x, dim=None, keepdim=False, out=None):
        if dim is None:
            return fn(x)
        if not isinstance(dim, int):  # torch.max(a, b): elementwise
            return elementwise(x, dim)
        return fn(x, axis=dim, keepdims=keepdim), argfn(x, axis=dim, keepdims=keepdim)

    return reduce


def argreduce(fn):
    def reduce(x, dim=None, keepdim=False):
        return fn(x, axis=dim, keepdims=keepdim)

    return reduce


def norm(x, p="fro", dim=None, keepdim=False, dtype=None, out=None):
    if p in ("fro", 2, 2.0, None):
        return jnp.sqrt(jnp.sum(x * x, axis=_axes(dim), keepdims=keepdim))
    if p == 1:
        return jnp.sum(jnp.abs(x), axis=_axes(dim), keepdims=keepdim)
    return jnp.sum(jnp.abs(x) ** p, axis=_axes(dim), keepdims=keepdim) ** (1.0 / p)


def clamp(x, min=None, max=None, out=None):
    return jnp.clip(x, min, max)


def clamp_min(x, min):
    return jnp.maximum(x, min)


def clamp_max(x, max):
    return jnp.minimum(x, max)


def binary(fn):
    def op(x, other, alpha=None, out=None):
        return fn(x, other if alpha is None else alpha * other)

    return op


def div(x, other, rounding_mode=None, out=None):
    if rounding_mode is None:
        return jnp.true_divide(x, other)
    if rounding_mode == "floor":
        return jnp.floor_divide(x, other)
    if rounding_mode == "trunc":
        return jnp.trunc(jnp.true_divide(x, other))
    raise Unsupported(f"rounding_mode={rounding_mode!r}")


def matmul(a, b, out=None):
    return jnp.matmul(a, b, precision=_HIGHEST)


def einsum(equation, *operands):
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    return jnp.einsum(equation, *operands, precision=_HIGHEST)


def where(condition, x=None, y=None):
    if x is None:
        raise Unsupported("torch.where(condition) without values (data-dependent output shape)")
    return jnp.where(condition, x, y)


def masked_fill(x, mask, value):
    return jnp.where(mask, jnp.asarray(value, dtype=x.dtype), x)


def pad(x, pad, mode="constant", value=None):
    pairs = [(pad[i], pad[i + 1]) for i in range(0, len(pad), 2)]  # from the last dim backwards
    widths = [(0, 0)] * (x.ndim - len(pairs)) + pairs[::-1]
    if any(a < 0 or b < 0 for a, b in widths):
        raise Unsupported("negative padding (cropping)")
    if mode == "constant":
        return jnp.pad(x, widths, constant_values=0.0 if value is None else value)
    if mode not in _PAD_MODES:
        raise Unsupported(f"pad mode={mode!r}")
    return jnp.pad(x, widths, mode=_PAD_MODES[mode])


def _jax_dtype(dtype: Any):
    if isinstance(dtype, torch.dtype):
        return jnp.dtype(str(dtype).replace("torch.", ""))
    return dtype


def to(x, *args, **kwargs):
    dtype = kwargs.get("dtype")
    for a in args:
        if isinstance(a, torch.dtype):
            dtype = a
        elif hasattr(a, "dtype") and not isinstance(a, (str, torch.device)):
            dtype = a.dtype
    return x if dtype is None else x.astype(_jax_dtype(dtype))


def astype(dtype):
    def cast(x, *args, **kwargs):
        return x.astype(dtype)

    return cast


def type_as(x, other):
    return x.astype(other.dtype)


def like(fill):
    def like(x, dtype=None, **kwargs):
        return jnp.full_like(x, fill, dtype=None if dtype is None else _jax_dtype(dtype))

    return like


def full_like(x, fill_value, dtype=None, **kwargs):
    return jnp.full_like(x, fill_value, dtype=None if dtype is None else _jax_dtype(dtype))


def unary(fn):
    def op(x, out=None):
        return fn(x)

    return op


def power(x, exponent, out=None):
    return jnp.power(x, exponent)



# Leaf modules: translator(module, get, x) where get(name) is the module's parameter/buffer value.
_Getter = Callable[[str], Optional[jnp.ndarray]]


def mod_conv(nd):
    translate = conv(nd)

    def fn(m, get, x):
        return translate(x, get("weight"), get("bias"), m.stride, m.padding, m.dilation, m.groups, m.padding_mode)

    return fn


def mod_bn(m, get, x):
    use_batch = m.training or get("running_mean") is None
    return batch_norm(x, get("running_mean"), get("running_var"), get("weight"), get("bias"), use_batch, 0.0, m.eps)


def mod_instance_norm(m, get, x):
    use_input = m.training or not m.track_running_stats
    return instance_norm(x, get("running_mean"), get("running_var"), get("weight"), get("bias"), use_input, 0.0,
                          m.eps)


def mod_dropout(m, get, x):
    if m.training:
        raise Unsupported("dropout in training mode; the network is evaluated in eval() mode")
    return x


def act(fn, *attrs):
    return lambda m, get, x: fn(x, *(getattr(m, a) for a in attrs))
