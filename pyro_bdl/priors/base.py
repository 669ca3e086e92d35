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

import fnmatch
from typing import Any, Mapping, Optional, Sequence, Tuple, Union

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


def as_hyper(value: Any, shape: torch.Size) -> torch.Tensor:
    """A hyperparameter as a tensor that broadcasts against a parameter of ``shape``.

    Scalars stay scalars. A tensor of exactly ``shape`` is per-entry. Any other tensor (e.g. a
    hyperprior sample of batch shape ``(S, 1)`` under vectorised inference) gets ``len(shape)``
    singleton dims appended so its dims stay batch dims.
    """
    if not torch.is_tensor(value):
        value = torch.as_tensor(value, dtype=torch.get_default_dtype())
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


class DistributionPrior(Prior):
    """A fixed Pyro distribution, broadcast to every parameter it is used for."""

    def __init__(self, base: dist.Distribution):
        if not isinstance(base, dist.Distribution):
            raise TypeError(f"expected a Pyro distribution, got {type(base).__name__}")
        self.base = base

    def distribution(self, name, param, module):
        shape = param.shape
        base = self.base
        if base.event_shape == shape:
            return base
        if base.event_shape == torch.Size() and (base.batch_shape == torch.Size() or base.batch_shape == shape):
            return elementwise(base, shape)
        raise ValueError(
            f"prior {base} has batch shape {tuple(base.batch_shape)} and event shape {tuple(base.event_shape)} "
            f"but parameter {name!r} has shape {tuple(shape)}; use a scalar distribution (it is broadcast) "
            "or one of exactly that shape."
        )


Rule = Tuple[Union[str, type], Prior]


class PerParameter(Prior):
    """Choose a prior per parameter: the first rule that matches wins, else ``default``.

    Rules are ``{pattern or module type: prior}``; a string is a glob on the site name
    (``"*.bias"``, ``"head.*"``), a type matches the module that owns the parameter
    (``torch.nn.Conv2d``).

    >>> from pyro_bdl.priors import Gaussian, FanInGaussian
    >>> prior = PerParameter({"*.bias": Gaussian(0, 1), torch.nn.Linear: FanInGaussian()})
    """

    def __init__(self, rules: Mapping[Union[str, type], Any], default: Any = None):
        from .standard import Gaussian

        self.rules: Sequence[Rule] = [(key, as_prior(value)) for key, value in rules.items()]
        for key, _ in self.rules:
            if not isinstance(key, (str, type)):
                raise TypeError(f"prior rule keys must be glob strings or nn.Module types, got {key!r}")
        self.default = as_prior(default) if default is not None else Gaussian(0.0, 1.0)

    @property
    def hierarchical(self) -> bool:
        """True when any rule's prior (or the default) draws hyperparameters itself (see [`Prior`][pyro_bdl.priors.Prior])."""
        return self.default.hierarchical or any(prior.hierarchical for _, prior in self.rules)

    def select(self, name: str, module: nn.Module) -> Prior:
        """The first rule matching ``name`` (a glob) or ``module`` (a layer type), else the default."""
        for key, prior in self.rules:
            if isinstance(key, str) and fnmatch.fnmatchcase(name, key):
                return prior
            if isinstance(key, type) and isinstance(module, key):
                return prior
        return self.default

    def distribution(self, name, param, module):
        return self.select(name, module).distribution(name, param, module)


def as_prior(obj: Any) -> Prior:
    """Coerce a [`Prior`][pyro_bdl.priors.Prior], a Pyro distribution or a ``{pattern: prior}`` mapping to a Prior."""
    if isinstance(obj, Prior):
        return obj
    if isinstance(obj, dist.Distribution):
        return DistributionPrior(obj)
    if isinstance(obj, Mapping):
        return PerParameter(obj)
    raise TypeError(
        f"cannot use {obj!r} as a prior: pass a pyro_bdl.priors.Prior (e.g. Gaussian(0, 1)), a Pyro "
        "distribution, a {'glob or layer type': prior} dict, or a function that returns one of these."
    )


def resolve_prior(obj: Any) -> Prior:
    """Like [`as_prior`][pyro_bdl.priors.as_prior], but a plain function is first called (inside the model trace).

    This is how hierarchical priors are declared in ordinary Pyro code: the function may
    draw hyperparameters with ``pyro.sample`` and return a prior that uses them.
    """
    if callable(obj) and not isinstance(obj, (Prior, dist.Distribution, Mapping, type)):
        return as_prior(obj())
    return as_prior(obj)


def fan_in(param: torch.Tensor, name: Optional[str] = None) -> int:
    """Fan-in of a weight tensor: ``prod(shape[1:])`` (Linear: in_features; ConvNd: in/groups·kernel)."""
    if param.dim() < 2:
        raise ValueError(f"fan-in is defined for weights with >= 2 dims, {name or 'parameter'} has shape {tuple(param.shape)}")
    return int(torch.tensor(param.shape[1:]).prod())
