"""What a prior is: an object that makes the distribution of one network parameter.

A prior is asked, for each Bayesian parameter, ``prior.distribution(name, param, module)``
and must return a Pyro distribution whose ``event_shape`` is ``param.shape`` (the whole
tensor is one event, so the log density sums over its entries). ``module`` is the leaf
module that owns the parameter, so a prior can depend on the layer (fan-in, layer type).

Anything of the following is accepted wherever a prior is expected ([`as_prior`][pyro_bdl.priors.as_prior]):

* a [`Prior`][pyro_bdl.priors.Prior];
* a Pyro distribution, scalar (broadcast to every entry) or of the parameter's shape;
* a mapping ``{pattern or layer type: prior}`` (a [`PerParameter`][pyro_bdl.priors.PerParameter]), where patterns are
  shell-style globs on the site name (``"*.bias"``, ``"0.*"``) and types match the owning module.
"""
from __future__ import annotations

from typing import Any, Optional, Union

import pyro.distributions as dist
import torch
from torch import nn


class Prior:
    """Base class: ``distribution(name, param, module)`` gives the prior of one parameter."""

    #: True when `distribution` itself draws hyperparameters with ``pyro.sample`` (a hierarchical
    #: prior such as ``FunctionalPrior(..., hyper_scales=...)``): it then only makes sense inside a Pyro
    #: model trace, and backends that translate fixed distributions (NumPyro) must refuse it.
    hierarchical: bool = False

    def distribution(self, name: str, param: torch.Tensor, module: nn.Module) -> dist.Distribution:
        """The prior p(w) of parameter ``name``: a distribution with ``event_shape == param.shape``.

        Args:
            name: the site name (module path, e.g. ``"0.weight"``).
            param: the parameter's current value (its shape and dtype are the template).
            module: the leaf module that owns it (for layer-dependent priors, e.g. fan-in).
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def as_hyper(value: Any, shape: Union[torch.Size, torch.Tensor]) -> torch.Tensor:
    """A hyperparameter as a tensor that broadcasts against a parameter of ``shape``.

    ``shape`` may be the parameter itself: a number then becomes a tensor of the parameter's dtype
    and device (a float64 or CUDA network gets a prior of its own dtype and device).
    Scalars stay scalars. A tensor of exactly ``shape`` is per-entry. Any other tensor (e.g. a
    hyperprior sample of batch shape ``(S, 1)`` under vectorised inference) gets ``len(shape)``
    singleton dims appended so its dims stay batch dims.
    """
    like = shape if torch.is_tensor(shape) else None
    shape = shape.shape if like is not None else shape
    if not torch.is_tensor(value):
        value = torch.as_tensor(value, dtype=torch.get_default_dtype() if like is None else like.dtype,
                                device=None if like is None else like.device)
    k = len(shape)
    if value.dim() == 0 or k == 0:
        return value
    if tuple(value.shape) == tuple(shape):
        return value
    return value.reshape(value.shape + (1,) * k)


def elementwise(base: dist.Distribution, shape: torch.Size) -> dist.Distribution:
    """Make ``base`` (elementwise parameters) a distribution with event shape ``shape``."""
    batch = torch.broadcast_shapes(base.batch_shape, shape)
    return base.expand(batch).to_event(len(shape))


def fan_in(param: torch.Tensor, name: Optional[str] = None) -> int:
    """Fan-in of a weight tensor: ``prod(shape[1:])`` (Linear: in_features; ConvNd: in/groups·kernel)."""
    if param.dim() < 2:
        raise ValueError(f"fan-in is defined for weights with >= 2 dims, {name or 'parameter'} has shape {tuple(param.shape)}")
    return int(torch.tensor(param.shape[1:]).prod())
