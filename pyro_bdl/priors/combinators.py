"""Priors built from others: a fixed Pyro distribution, a rule per parameter, and the coercion of
whatever a user passes as ``prior=`` (a Prior, a distribution, a ``{pattern: prior}`` dict, or a
function drawing hyperparameters) into a [`Prior`][pyro_bdl.priors.Prior]."""
from __future__ import annotations

import fnmatch
from typing import Any, Mapping, Sequence, Tuple, Union

import pyro.distributions as dist
import torch
from torch import nn

from .base import Prior, elementwise
from .standard import Gaussian


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

    def check_rules(self, params: Sequence[Tuple[str, nn.Module]]) -> None:
        """Every rule must match one of ``params`` (``(site name, owning module)`` of the Bayesian
        parameters): a glob or layer type that matches nothing is a typo or a rule for another
        network, and silently falling back to ``default`` would hide it (as strict as ``bayesian=``)."""
        names = [name for name, _ in params]
        for key, _ in self.rules:
            if isinstance(key, str):
                hit = any(fnmatch.fnmatchcase(name, key) for name in names)
            else:
                hit = any(isinstance(module, key) for _, module in params)
            if not hit:
                what = f"glob {key!r}" if isinstance(key, str) else f"layer type {key.__name__}"
                raise ValueError(f"prior rule {what} matches no Bayesian parameter of the network; its Bayesian "
                                 f"parameters are {names}. Fix the pattern (globs match whole site names, e.g. "
                                 "'0.*' or '*.bias') or drop the rule.")


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
