"""What an input batch is, and the checks of data fed to a model (run before any work).

An input batch ``x`` is either

* one tensor of shape ``(N, features...)``, passed to the network as ``net(x)``; or
* a tuple of tensors that share their first dim N, passed as ``net(x1, x2, ...)`` — one per
  positional argument of the network's ``forward`` (a list is taken as a tuple: PyTorch's
  ``DataLoader`` collates a dataset's ``((x1, x2), y)`` items into ``[[x1, x2], y]`` batches).

Everything that slices, splits, concatenates or evaluates inputs (fit's minibatches, predict's
chunks, BatchNorm refreshes, diagnostics, studies) goes through the helpers here
(`num_rows`, `take_rows`, `split_rows`, `cat_rows`, `as_args`), so
a multi-input network works with every method. Dict batches are refused with a message that
shows how to adapt them (a wrapper module whose ``forward`` takes the tensors positionally).

Every check error names the problem and the fix.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .._util.checks import as_tensor, check_finite

#: An input batch: one tensor, or a tuple of tensors sharing the first dim (one per ``forward`` argument).
Inputs = Union[torch.Tensor, Tuple[torch.Tensor, ...]]

SUPPORTED = ("x must be a tensor of shape (N, features...) or a tuple of tensors (x1, x2, ...) that share their "
             "first dim N, one per argument of the network's forward (forward(x1, x2)); a DataLoader must yield "
             "(x, y) batches with x of that form, e.g. ((x1, x2), y)")

DICT_ADAPTER = ("wrap the network so that its forward takes the tensors positionally, e.g.\n"
                "    class Positional(torch.nn.Module):\n"
                "        def __init__(self, net):\n"
                "            super().__init__(); self.net = net\n"
                "        def forward(self, a, b):\n"
                "            return self.net({'a': a, 'b': b})\n"
                "and give fit x = (a, b) (or a DataLoader yielding ((a, b), y))")


# -- the one definition of an input batch ---------------------------------------------------------
def is_multi(x: Inputs) -> bool:
    """True when ``x`` is a tuple of tensors (a multi-input network), False for one tensor."""
    return isinstance(x, tuple)


def as_args(x: Inputs) -> Tuple[torch.Tensor, ...]:
    """The positional arguments of the network's ``forward``: ``(x,)`` or the tuple itself."""
    return x if isinstance(x, tuple) else (x,)


def map_inputs(fn: Callable[[torch.Tensor], torch.Tensor], x: Inputs) -> Inputs:
    """``fn`` applied to each tensor of ``x``, keeping its form."""
    return tuple(fn(t) for t in x) if isinstance(x, tuple) else fn(x)


def num_rows(x: Inputs) -> int:
    """N, the number of rows (data points) of ``x``."""
    return as_args(x)[0].shape[0]


def take_rows(x: Inputs, index) -> Inputs:
    """Rows ``index`` (a slice or an index tensor) of every tensor of ``x``."""
    return map_inputs(lambda t: t[index], x)


def split_rows(x: Inputs, size: int) -> List[Inputs]:
    """``x`` in consecutive chunks of ``size`` rows (the last may be shorter)."""
    if not isinstance(x, tuple):
        return list(torch.split(x, size))
    return [tuple(parts) for parts in zip(*(torch.split(t, size) for t in x))]


def cat_rows(parts: Sequence[Inputs]) -> Inputs:
    """The chunks ``parts`` (all of one form) concatenated along the rows."""
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(ts) for ts in zip(*parts))
    return torch.cat(list(parts))


def describe(x: Inputs) -> str:
    """Per-row shape(s) of ``x`` for messages: ``(13,)`` or ``((13,), (4, 2))``."""
    if isinstance(x, tuple):
        return "(" + ", ".join(str(tuple(t.shape[1:])) for t in x) + ")"
    return str(tuple(x.shape[1:]))


# -- checks ------------------------------------------------------------------------------------------
def _component(value, name: str, min_dim: int, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    t = as_tensor(value, name)
    if t.dim() < min_dim:
        hint = "; for one feature use x.unsqueeze(-1)." if min_dim == 2 else "."
        raise ValueError(f"{name} must have a batch dimension, shape (N, features...), got {tuple(t.shape)}{hint}")
    check_finite(t, name)
    return t.to(dtype or torch.get_default_dtype()) if t.is_floating_point() else t


def as_inputs(x, name: str = "x", dtype: Optional[torch.dtype] = None) -> Inputs:
    """``x`` in canonical form (`Inputs`), with each tensor's shape, finiteness and dtype checked.

    Floating tensors are cast to ``dtype`` (the network's; default torch's default dtype); integer
    inputs (token ids) stay integer. The device is left as it is (see `pyro_bdl.infer.data`).

    One tensor (or numpy array) needs shape ``(N, features...)``; in a tuple (or list) of several,
    each needs at least the batch dim ``(N, ...)`` and all the same N.
    """
    if isinstance(x, dict):
        raise TypeError(f"{name} is a dict (keys {sorted(map(str, x))}); dict batches are not supported: "
                        f"{SUPPORTED}. To use a network that takes a dict, {DICT_ADAPTER}.")
    if isinstance(x, (tuple, list)):
        if not x or not all(torch.is_tensor(t) or isinstance(t, np.ndarray) for t in x):
            kinds = sorted({type(t).__name__ for t in x})
            raise TypeError(f"{name} is a {type(x).__name__} of {kinds or 'nothing'}; {SUPPORTED}. "
                            f"For a single input convert it with torch.as_tensor({name}).")
        if len(x) == 1:
            return _component(x[0], name, 2, dtype)
        parts = tuple(_component(t, f"{name}[{i}]", 1, dtype) for i, t in enumerate(x))
        rows = [t.shape[0] for t in parts]
        if len(set(rows)) != 1:
            raise ValueError(f"the tensors of {name} have different numbers of rows {rows}; every input of a "
                             "multi-input network needs one row per data point (the same first dim N).")
        if rows[0] == 0:
            raise ValueError(f"{name} is empty")
        return parts
    if not (torch.is_tensor(x) or isinstance(x, np.ndarray)):
        raise TypeError(f"{name} must be a torch.Tensor (or numpy array), got {type(x).__name__}; {SUPPORTED}. "
                        f"Convert it with torch.as_tensor({name}).")
    t = _component(x, name, 2, dtype)
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return t


def output_dim(model: "BayesianModel", x: Inputs) -> int:  # noqa: F821 (no import: the lifting imports this module)
    """Run the network once on two rows to learn its output width (and catch shape errors early)."""
    try:
        with torch.no_grad():
            rows = map_inputs(lambda t: t.to(model.network.device), take_rows(x, slice(0, 2)))
            out = model.forward(model.network.initial_weights(), rows)
    except (RuntimeError, TypeError, ValueError, IndexError) as err:
        count = len(as_args(x))
        raise ValueError(f"the network cannot take {'inputs' if count > 1 else 'an input'} of shape "
                         f"{describe(x)} per row{f' ({count} tensors)' if count > 1 else ''}: {err}. Check x's "
                         "feature dimension against the first layer (the one the network was fitted with), and "
                         "pass one tensor per argument of forward (a tuple (x1, x2) for forward(x1, x2)).") from err
    if not torch.is_tensor(out) or out.dim() != 2:
        shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(f"the network must output one tensor (batch, outputs), got {shape}; "
                         "end it with a Linear layer or add nn.Flatten().")
    return out.shape[1]


def check_inputs(model: "BayesianModel", x, run: bool = False) -> Inputs:  # noqa: F821
    """``x`` checked and in canonical form (see `as_inputs`).

    ``run=True`` also runs the network on two rows (`output_dim`), so inputs of the wrong
    width fail here with a clear message rather than deep inside a vectorised evaluation
    (predict, diagnostics).
    """
    x = as_inputs(x, "x", model.network.dtype)
    if run:
        output_dim(model, x)
    return x


def check_data(model: "BayesianModel", x, y) -> Tuple[Inputs, torch.Tensor]:  # noqa: F821
    """Validate a full data set or a first minibatch; return ``(x, y)`` in canonical form."""
    x = check_inputs(model, x)
    if y is None:
        raise ValueError("y is missing: pass fit(model, x, y) or a DataLoader yielding (x, y) batches.")
    y = as_tensor(y, "y")
    n = num_rows(x)
    if y.dim() == 0 or y.shape[0] != n:
        raise ValueError(f"x has {n} rows but y has {y.shape[0] if y.dim() else 'none (a scalar)'}; they must pair "
                         "up row by row.")
    check_finite(y, "y")
    y = model.likelihood.check_targets(y, output_dim(model, x))
    return x, y
