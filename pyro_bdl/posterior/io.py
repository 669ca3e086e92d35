"""Saving and loading posteriors as tensors plus plain data: reading a file never runs code.

A posterior file (``torch.save`` of tensors and plain containers, read back with
``torch.load(weights_only=True)`` through `pyro_bdl._util.io.read`) holds:

* ``kind`` and ``method`` — which [`Posterior`][pyro_bdl.Posterior] class and which inference method;
* ``model`` — a plain description of the model (network structure, Bayesian parameters, prior,
  likelihood, temperature, tempering; `pyro_bdl._util.checkpoint.model_description`);
* ``network`` — the network's ``state_dict`` (fixed weights and buffers, e.g. BatchNorm statistics);
* ``state`` — the posterior's own tensors (draws, guide parameters, SWAG moments), and ``info``;
* ``factory`` — optionally, ``"package.module:function"`` that rebuilds the model.

The file holds no Python objects, so loading needs the model: ``Posterior.load(path, model=...)``
with the [`BayesianModel`][pyro_bdl.BayesianModel] built as when saving (it is checked against the saved
description and gets the saved network state), ``net=...`` (plus ``prior=``/``likelihood=``) to
build it, or ``factory=True`` to import and call the factory recorded at save time — the only case
that runs code, and only the code the user named when saving.
"""
from __future__ import annotations

import importlib
import json
import os
from typing import Any, Dict, Optional, Union

import numpy as np
import torch
from torch import nn

from .._util import checkpoint
from .._util.io import read, write
from ..model.bayesian_model import BayesianModel

FORMAT = "pyro_bdl.posterior"
FORMAT_VERSION = 2  # 1: the whole object pickled (unsafe; no longer read)
KINDS: Dict[str, type] = {}  # kind -> Posterior subclass; each subclass with a ``kind`` registers itself
_RESAVE = f"save the posterior again with Posterior.save (this pyro_bdl writes format {FORMAT_VERSION})"


def plain(value: Any) -> Any:
    """``value`` as tensors and builtin containers only; anything else becomes its ``repr`` (for
    free-form records such as ``post.info``)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.generic):  # before float: np.float64 is a float subclass
        return value.item()
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, np.ndarray):
        return torch.as_tensor(value)
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value) if type(value) in (list, tuple) else [plain(v) for v in value]
    if isinstance(value, dict):
        return {k if isinstance(k, (str, int)) else str(k): plain(v) for k, v in value.items()}
    return repr(value)


def check_factory(factory: Any) -> Optional[str]:
    """``"package.module:function"`` (checked for form only; nothing is imported), or None."""
    if factory is None:
        return None
    if not isinstance(factory, str) or factory.count(":") != 1 or not all(factory.split(":")):
        raise ValueError(f"factory must be a 'package.module:function' string, got {factory!r}")
    return factory


def save_posterior(post: Any, path: Union[str, os.PathLike], factory: Optional[str] = None) -> None:
    """Write ``post`` to ``path`` atomically (see the module docs for the content)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path (str or os.PathLike), got {type(path).__name__}")
    blob = {"format": FORMAT, "version": FORMAT_VERSION, "kind": post.kind, "method": post.method,
            "model": json.dumps(checkpoint.model_description(post.model), sort_keys=True),
            "factory": check_factory(factory), "network": dict(post.model.net.state_dict()),
            "info": plain(post.info), "state": post._to_state()}
    write(os.fspath(path), blob)


def _import_factory(spec: str, path: str) -> Any:
    module_name, attr = spec.split(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"{path}: cannot import the model factory {spec!r} ({err}); make it importable "
                         "or pass model=... instead") from None
    if not callable(obj):
        raise TypeError(f"the factory {spec!r} is not callable")
    return obj()


def _model_for(path: str, blob: Dict[str, Any], saved: Dict[str, Any], model: Any, net: Any, prior: Any,
               likelihood: Any, factory: Any) -> BayesianModel:
    given = [name for name, v in (("model", model), ("net", net), ("factory", factory)) if v not in (None, False)]
    if len(given) > 1:
        raise ValueError(f"pass one of model=, net= or factory= to Posterior.load, not {' and '.join(given)}")
    if (prior is not None or likelihood is not None) and net is None:
        raise ValueError("prior= and likelihood= go with net= (to build the model); with model= they are the model's")
    if factory is not None and factory is not False:
        if factory is True:
            factory = blob.get("factory")
            if factory is None:
                raise ValueError(f"{path} records no model factory (save with post.save(path, "
                                 "factory='package.module:function')); pass model=... instead")
        made = _import_factory(check_factory(factory), path)
        if isinstance(made, nn.Module):
            net = made
        elif isinstance(made, BayesianModel):
            model = made
        else:
            raise TypeError(f"the factory {factory!r} returned a {type(made).__name__}; it must return a "
                            "pyro_bdl.BayesianModel (or a torch.nn.Module)")
    if net is not None:
        if not isinstance(net, nn.Module):
            raise TypeError(f"net must be a torch.nn.Module, got {type(net).__name__}")
        if likelihood is None:
            raise ValueError("Posterior.load(path, net=...) also needs likelihood=... (the one used when saving)")
        model = BayesianModel(net, prior=prior, likelihood=likelihood, temperature=saved["temperature"],
                              tempering=saved["tempering"], bayesian=saved["bayesian"], prefix=saved["prefix"])
    if model is None:
        hint = (f" or factory=True to import and call the recorded factory {blob['factory']!r} (runs that code)"
                if blob.get("factory") else "")
        raise ValueError(f"{path} holds the posterior's tensors but no Python objects, so Posterior.load needs the "
                         f"model: Posterior.load(path, model=...) with the BayesianModel built as when saving "
                         f"(same network class, prior, likelihood, temperature){hint}")
    if not isinstance(model, BayesianModel):
        raise TypeError(f"model must be a pyro_bdl.BayesianModel, got {type(model).__name__}")
    return model


def _check_same_model(path: str, saved: Dict[str, Any], model: BayesianModel) -> None:
    current = json.loads(json.dumps(checkpoint.model_description(model), sort_keys=True))
    saved = dict(saved, network={k: v for k, v in saved["network"].items() if k != "fixed_values"})
    current["network"].pop("fixed_values")
    for desc in (saved, current):  # dtypes are mapped on load (a float32 file into a float64 model): compare shapes
        tensors = desc["network"].get("tensors")
        if isinstance(tensors, list):
            desc["network"] = dict(desc["network"], tensors=[t[:2] for t in tensors])
    diff = checkpoint.differences(saved, current)
    if diff:
        raise ValueError(f"{path}: the model given to Posterior.load differs from the saved one in {', '.join(diff)}; "
                         "build it as when saving (same network, prior, likelihood, temperature and tempering)")


def mapped(obj: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """``obj`` (tensors in plain containers) with every tensor on ``device`` and every floating tensor
    in ``dtype``; integer tensors (counts, indices) keep their dtype."""
    if torch.is_tensor(obj):
        return obj.to(device, dtype) if obj.is_floating_point() else obj.to(device)
    if isinstance(obj, dict):
        return {k: mapped(v, device, dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(mapped(v, device, dtype) for v in obj)
    return obj


def load_posterior(path: Any, model: Optional[BayesianModel] = None, *, net: Optional[nn.Module] = None,
                   prior: Any = None, likelihood: Any = None, factory: Union[bool, str, None] = None,
                   guide: Optional[nn.Module] = None, map_location: Any = None) -> Any:
    """Read a posterior written by `save_posterior` (see [`pyro_bdl.Posterior.load`][pyro_bdl.Posterior]).

    The file is read on the CPU whatever device it was saved from; its tensors then go to
    ``map_location`` (the network is moved there too) or, by default, to the model's own device, and
    its floating tensors to the model's dtype."""
    if factory is not None and not isinstance(factory, (bool, str)):
        raise TypeError(f"factory must be True (use the recorded one) or a 'package.module:function' string, "
                        f"got {type(factory).__name__}")
    blob = read(path, FORMAT, FORMAT_VERSION, "posterior", _RESAVE)
    path = os.fspath(path)
    try:
        saved = json.loads(blob["model"])
        cls = KINDS[blob["kind"]]
        state, method, info = blob["state"], blob["method"], blob["info"]
        network = blob["network"]
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path} is a damaged posterior file (missing or bad {err}); {_RESAVE}") from None
    model = _model_for(path, blob, saved, model, net, prior, likelihood, factory)
    _check_same_model(path, saved, model)
    if guide is not None and blob["kind"] != "guide":
        raise ValueError(f"guide= is for posteriors of a Pyro guide (SVI); {path} holds a {blob['kind']!r} posterior")
    if map_location is not None:
        model.to(torch.device(map_location) if not isinstance(map_location, torch.device) else map_location)
    with torch.no_grad():
        model.net.load_state_dict(network)  # copied into the network's own device and dtype
    state = mapped(state, model.device, model.dtype)
    try:
        return cls._from_state(model, state, method=method, info=info, guide=guide)
    except (KeyError, TypeError, RuntimeError) as err:
        raise ValueError(f"{path}: the {blob['kind']!r} posterior state does not fit the model ({err}); "
                         f"{_RESAVE}") from None


__all__ = ["save_posterior", "load_posterior", "plain", "check_factory", "mapped", "FORMAT", "KINDS"]
