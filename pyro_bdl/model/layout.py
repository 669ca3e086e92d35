"""Flattening weights: the one map between ``{site name: tensor}`` and a flat vector.

SWAG's moments, SG-MCMC state, the NumPyro backend's initial values and ArviZ arrays all
go through [`WeightLayout`][pyro_bdl.WeightLayout], so the order of coordinates is defined once: the order
of the sites as the model declares them (module registration order).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Mapping, Tuple

import torch

Weights = Dict[str, torch.Tensor]


@dataclass(frozen=True)
class WeightLayout:
    """Ordered site names and shapes; ``flatten``/``unflatten`` keep leading batch dims.

    >>> layout = WeightLayout.from_weights({"0.weight": torch.zeros(3, 2), "0.bias": torch.zeros(3)})
    >>> layout.size
    9
    """

    names: Tuple[str, ...]
    shapes: Tuple[torch.Size, ...]

    @classmethod
    def from_weights(cls, weights: Mapping[str, torch.Tensor], batch_ndim: int = 0) -> "WeightLayout":
        """The layout of ``{site: tensor}``, ignoring the first ``batch_ndim`` (draw) dims of each tensor."""
        names = tuple(weights)
        shapes = tuple(torch.Size(weights[n].shape[batch_ndim:]) for n in names)
        return cls(names, shapes)

    @property
    def numels(self) -> Tuple[int, ...]:
        """Number of entries of each site, in layout order."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def size(self) -> int:
        """Total number of scalar weights P."""
        return sum(self.numels)

    def flatten(self, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``{name: (*batch, *shape)}`` -> ``(*batch, P)``."""
        missing = [n for n in self.names if n not in weights]
        if missing:
            raise KeyError(f"weights are missing sites {missing}")
        parts = []
        for name, shape in zip(self.names, self.shapes):
            value = weights[name]
            batch = value.shape[: value.dim() - len(shape)]
            parts.append(value.reshape(*batch, -1))
        return torch.cat(parts, dim=-1)

    def unflatten(self, flat: torch.Tensor) -> Weights:
        """``(*batch, P)`` -> ``{name: (*batch, *shape)}`` (views, no copies)."""
        if flat.shape[-1] != self.size:
            raise ValueError(f"expected a last dimension of {self.size} weights, got {flat.shape[-1]}")
        batch = flat.shape[:-1]
        out: Weights = {}
        for name, shape, chunk in zip(self.names, self.shapes, flat.split(list(self.numels), dim=-1)):
            out[name] = chunk.reshape((*batch, *shape))  # a tuple: scalar sites have shape ()
        return out
