"""Networks by name: the small fully connected nets the CLI and studies build from a config.

`mlp` builds ``in_dim → hidden... → out_dim``; `resolve_factory` turns a network
name (``"mlp"``) or an import path ``"package.module:factory"`` into the function that builds it.
"""
from __future__ import annotations

import importlib
from typing import Callable, List

import torch

ACTIVATIONS = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}


def mlp(in_dim: int, hidden: List[int], out_dim: int, activation: str = "tanh") -> torch.nn.Sequential:
    """A fully connected network ``in_dim → hidden... → out_dim`` with tanh or ReLU units."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    layers, width = [], in_dim
    for h in hidden:
        layers += [torch.nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    layers.append(torch.nn.Linear(width, out_dim))
    return torch.nn.Sequential(*layers)


def resolve_factory(path: str) -> Callable[..., torch.nn.Module]:
    """The callable named by ``"package.module:factory"`` (``"package.module:Class"`` works too).

    Raises ``ValueError`` naming what is wrong: a malformed path, a module that does not import,
    or a missing or non-callable attribute.
    """
    if not isinstance(path, str) or path.count(":") != 1 or not all(path.split(":")):
        raise ValueError(f"network {path!r} is neither 'mlp' nor an import path 'package.module:factory'")
    module_name, attr = path.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"network {path!r}: cannot import module {module_name!r} ({err}); "
                         "is it installed or on PYTHONPATH?") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"network {path!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"network {path!r}: {attr!r} is not callable; it must build and return an nn.Module")
    return obj
