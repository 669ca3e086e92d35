"""Input checks that run before any inference work, each error naming the problem and the fix."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from .lifting import BayesianModel


def as_tensor(value, name: str) -> torch.Tensor:
    if torch.is_tensor(value):
        return value
    try:
        import numpy as np

        if isinstance(value, np.ndarray):
            t = torch.from_numpy(value)
            return t.to(torch.get_default_dtype()) if t.is_floating_point() else t
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"{name} must be a torch.Tensor (or numpy array), got {type(value).__name__}; "
                    f"convert it with torch.as_tensor({name}).")


def check_finite(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point() and not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).nonzero()[0].tolist()
        raise ValueError(f"{name} contains NaN or inf (first at index {bad}); drop or impute those rows before fitting.")


def output_dim(model: BayesianModel, x: torch.Tensor) -> int:
    """Run the network once on two rows to learn its output width (and catch shape errors early)."""
    try:
        with torch.no_grad():
            out = model.forward(model.network.initial_weights(), x[:2])
    except RuntimeError as err:
        raise ValueError(f"the network cannot take inputs of shape {tuple(x.shape[1:])} per row: {err}. "
                         "Check x's feature dimension against the first layer.") from err
    if out.dim() != 2:
        raise ValueError(f"the network must output (batch, outputs), got shape {tuple(out.shape)}; "
                         "end it with a Linear layer or add nn.Flatten().")
    return out.shape[1]


def check_inputs(model: BayesianModel, x) -> torch.Tensor:
    x = as_tensor(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must have a batch dimension, shape (N, features...), got {tuple(x.shape)}; "
                         "for one feature use x.unsqueeze(-1).")
    if x.shape[0] == 0:
        raise ValueError("x is empty")
    check_finite(x, "x")
    return x.to(torch.get_default_dtype()) if x.is_floating_point() else x


def check_data(model: BayesianModel, x, y) -> Tuple[torch.Tensor, torch.Tensor]:
    """Validate a full data set or a first minibatch; return ``(x, y)`` in canonical form."""
    x = check_inputs(model, x)
    if y is None:
        raise ValueError("y is missing: pass fit(model, x, y) or a DataLoader yielding (x, y) batches.")
    y = as_tensor(y, "y")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}; they must pair up row by row.")
    check_finite(y, "y")
    y = model.likelihood.check_targets(y, output_dim(model, x))
    return x, y


def check_positive_int(value, name: str, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value
