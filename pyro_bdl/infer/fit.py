"""``fit``: the one entry point for inference."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

import pyro
import torch

from ..model.bayesian_model import BayesianModel
from ..model.user_model import as_model
from ..posterior.base import Posterior
from .data import FitData
from .options import canonical, canonical_name, keyword_for
from .registry import METHODS
from .._util.checks import check_seed

_COMMON = ("seed", "progress")


def fit(model: BayesianModel, x: Any, y: Optional[torch.Tensor] = None, *, method: str = "svi", seed: int = 0,
        progress: Optional[bool] = None, batch_size: Optional[int] = None, temperature: Optional[float] = None,
        augment: Optional[Callable] = None, **options: Any) -> Posterior:
    """Run inference for ``model`` on data and return its [`Posterior`][pyro_bdl.Posterior].

    Args:
        model: a [`BayesianModel`][pyro_bdl.BayesianModel], or your own Pyro model ``model(x, y=None)`` built
            with [`lift`][pyro_bdl.lift] (its latent sites are discovered by running it once; see
            `pyro_bdl.model.user_model`).
        x, y: training inputs and targets as tensors, or ``x`` a ``DataLoader`` of ``(x, y)`` batches.
        method: one of [`methods`][pyro_bdl.methods] — ``"svi"``, ``"map"``, ``"nuts"``, ``"hmc"`` and those added
            by the other inference modules.
        seed: every method is reproducible given the seed.
        progress: progress bars (default: only on a terminal).
        batch_size: minibatch size for tensor data (methods that use minibatches).
        temperature: override the model's temperature T for this fit.
        augment: ``augment(x, generator) -> x`` applied to every training minibatch (data augmentation).
        **options: method options; see the method's function (e.g. `pyro_bdl.infer.svi.fit_svi`). Option names
            follow one vocabulary across methods (`pyro_bdl.infer.options`, docs: *Options*); a deprecated
            name (``num_models``, ``num_steps`` of an optimiser, ``burnin``, ``swa_start``) still works for one
            release with a ``DeprecationWarning`` naming its replacement.

    Every check (data shapes, labels, NaN/inf, T, method and option names) runs before any work.
    """
    model = as_model(model, x, y)  # a user's own lift-based Pyro model becomes a PyroModel
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available methods: {', '.join(sorted(METHODS))}")
    fn = METHODS[method]
    options = canonical(method, options)
    accepted = method_options(method)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"method {method!r} got unknown option(s) {unknown}; its options are {accepted}")
    keywords = inspect.signature(fn).parameters
    options = {keyword_for(method, name, keywords): value for name, value in options.items()}
    check_seed(seed)
    if temperature is not None:
        model = model.with_temperature(temperature)
    data = FitData(model, x, y, batch_size=batch_size, augment=augment)
    pyro.set_rng_seed(seed)
    posterior = fn(model, data, seed=seed, progress=progress, **options)
    posterior.info.setdefault("seed", seed)
    posterior.info.setdefault("temperature", model.temperature)
    posterior.info.setdefault("tempering", model.tempering)
    return posterior


def method_options(method: str) -> list:
    """Canonical names of the options ``fit(..., method=method, **options)`` accepts: its function's keywords,
    each in the one vocabulary (`pyro_bdl.infer.options`; deprecated spellings are accepted too but not listed)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available methods: {', '.join(sorted(METHODS))}")
    return [canonical_name(method, p) for p in inspect.signature(METHODS[method]).parameters
            if p not in ("model", "data") + _COMMON]


def methods() -> list:
    """Names of the available inference methods."""
    return sorted(METHODS)
