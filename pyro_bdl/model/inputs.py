"""Checks of data fed to a model (inputs, targets), run before any work; each error names the problem and the fix."""
from __future__ import annotations

from typing import Tuple

import torch

from .._util.checks import as_tensor, check_finite
from .bayesian_model import BayesianModel


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
