"""Posterior → ``arviz.InferenceData``: the one adapter between pyro_bdl and ArviZ.

The arrays are built here, ``(chain, draw, ...)`` shaped, from the generic posterior interface
only — [`draws_by_chain`][pyro_bdl.Posterior] (independent runs such as MCMC chains,
ensemble members or Multi-SWAG components are chains; a guide's draws are one chain),
[`predictive_for`][pyro_bdl.Posterior] and, when a sampler recorded them,
``posterior.sample_stats`` — and handed to ``az.from_dict``. ``az.from_pyro`` is not used: it
silently drops the log_likelihood group unless the model broadcasts over a sample dimension,
and ArviZ 1.x has no ``from_pyro`` and another ``from_dict`` form; `_from_dict` speaks both.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..model.sites import DATA_PLATE, OBS_SITE
from .._util.random import seeded
from .._util.checks import as_tensor
from ..model.inputs import as_args, check_inputs, num_rows

# pyro_bdl's sampler statistics → ArviZ's conventional sample_stats names.
SAMPLE_STATS_NAMES = {
    "diverging": "diverging",
    "accept_prob": "acceptance_rate",
    "step_size": "step_size",
    "num_steps": "n_steps",
    "tree_depth": "tree_depth",
    "energy": "energy",
}

PREDICTION = "prediction"  # the function-space variable E[y | x, w] in the posterior group
OBS = OBS_SITE  # the observed variable keeps the model's site name
DATA_DIM = DATA_PLATE  # and the data dimension the data plate's


def arviz():
    """Import ArviZ lazily (``import pyro_bdl`` must not need it) with a clear error if missing."""
    try:
        import arviz as az
    except ImportError:  # pragma: no cover - arviz is in the test extra
        raise ImportError("ArviZ is needed for diagnostics: pip install pyro_bdl[arviz] "
                          "(or pip install arviz)") from None
    return az


def _numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bool:
        return t.numpy()
    return t.numpy() if not t.is_floating_point() else t.double().numpy()


def _module_dims(module: nn.Module, attr: str, ndim: int) -> Optional[List[str]]:
    """Dimension names of a parameter from its layer type (None: unknown layer)."""
    if isinstance(module, nn.Linear) or isinstance(module, nn.Bilinear):
        return {"weight": ["out", "in"] if ndim == 2 else None, "bias": ["out"]}.get(attr)
    if isinstance(module, nn.modules.conv._ConvNd):
        if attr == "weight":
            return ["out_channels", "in_channels"] + [f"kernel_{i}" for i in range(ndim - 2)]
        return ["out_channels"] if attr == "bias" else None
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
        return ["channels"] if attr in ("weight", "bias") else None
    if isinstance(module, nn.LayerNorm):
        return [f"normalized_{i}" for i in range(ndim)] if attr in ("weight", "bias") else None
    if isinstance(module, nn.Embedding):
        return ["num_embeddings", "embedding_dim"] if attr == "weight" else None
    return None


def weight_dims(model, site: str, shape: torch.Size) -> List[str]:
    """ArviZ dims of a weight site, named after its layer: ``"0.weight"`` of a Linear layer gets
    ``["0.out", "0.in"]`` and ``"0.bias"`` gets ``["0.out"]``, so a layer's weight and bias share
    their output coordinate; convolutions get ``out_channels``/``in_channels``/``kernel_i``.
    Other sites fall back to ``"<site>_dim_<i>"``."""
    network = model.network
    for pname in network.param_names:
        if network.site_name(pname) != site:
            continue
        path, _, attr = pname.rpartition(".")
        names = _module_dims(network.owner(pname), attr, len(shape))
        if names is not None and len(names) == len(shape):
            layer = network.site_name(path) if path else network.prefix
            return [f"{layer}.{n}" if layer else n for n in names]
        break
    return [f"{site}_dim_{i}" for i in range(len(shape))]


def _value_dims(extra: int, kind: str) -> List[str]:
    if extra == 0:
        return []
    if extra == 1:
        return ["class" if kind == "classification" else "target"]
    return [f"target_dim_{i}" for i in range(extra)]


def _from_dict(groups: Dict[str, Dict[str, np.ndarray]], dims: Dict[str, List[str]], attrs: Dict[str, Any]):
    """``az.from_dict`` in ArviZ 0.x (one keyword per group) and 1.x (a dict of groups) form."""
    az = arviz()
    groups = {k: v for k, v in groups.items() if v}
    params = inspect.signature(az.from_dict).parameters
    if "posterior" in params:  # ArviZ < 1
        group_attrs = {f"{g}_attrs": dict(attrs) for g in ("posterior", "sample_stats") if g in groups}
        return az.from_dict(**groups, dims=dims, attrs=attrs, **group_attrs)
    # ArviZ 1.x (arviz_base, Python >= 3.12): attributes per group, "/" for the whole tree.
    group_attrs = {g: dict(attrs) for g in ("posterior", "sample_stats") if g in groups}
    return az.from_dict(groups, dims=dims, attrs={"/": attrs, **group_attrs})  # pragma: no cover


@torch.no_grad()
def to_arviz(posterior, x: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None, num_samples: int = 100,
             seed: Optional[int] = 0, batch_size: Optional[int] = None):
    """Build an ``arviz.InferenceData`` for any [`Posterior`][pyro_bdl.Posterior].

    Groups:

    * ``posterior`` — every latent site ``(chain, draw, *shape)`` from
      ``posterior.draws_by_chain(num_samples, seed)`` (stored draws for samplers; ``num_samples``
      draws as one chain for guides), dims named after the layers ([`weight_dims`][pyro_bdl.evaluate.diagnostics.weight_dims]); with
      ``x``, also ``prediction`` = E[y | x, w] per draw (regression mean, class probabilities),
      the identifiable function-space quantity to check convergence on.
    * ``posterior_predictive`` — ``obs``: one y ~ p(y | x, w) per draw (needs ``x``).
    * ``log_likelihood`` — ``obs``: log p(yᵢ | xᵢ, w) per draw and point (needs ``x`` and ``y``),
      untempered, which is what ``az.loo``/``az.waic`` need.
    * ``observed_data`` (``obs`` = y) and ``constant_data`` (``x``).
    * ``sample_stats`` — the sampler's per-draw statistics under ArviZ's names
      (``diverging``, ``acceptance_rate``, ``step_size``, ``n_steps``, ``tree_depth``,
      ``energy``), when the posterior recorded them.

    A point estimate (MAP: one chain of one draw) converts too, but R-hat, ESS and LOO are
    undefined for a single draw.
    """
    model = posterior.model
    if y is not None and x is None:
        raise ValueError("y needs its inputs: pass to_arviz(x=..., y=...)")
    draws = posterior.draws_by_chain(num_samples, seed=seed)
    if not isinstance(draws, dict) or not draws:
        raise ValueError(f"{type(posterior).__name__}.draws_by_chain returned no draws")
    lead = {tuple(v.shape[:2]) for v in draws.values()}
    if len(lead) != 1 or any(v.dim() < 2 for v in draws.values()):
        raise ValueError(f"draws_by_chain must return (chains, draws, ...) arrays with shared leading dims, got {lead}")
    (C, D), = lead

    groups: Dict[str, Dict[str, np.ndarray]] = {"posterior": {}, "posterior_predictive": {}, "log_likelihood": {},
                                                "observed_data": {}, "constant_data": {}, "sample_stats": {}}
    dims: Dict[str, List[str]] = {}
    for site, value in draws.items():
        groups["posterior"][site] = _numpy(value)
        dims[site] = weight_dims(model, site, value.shape[2:])

    if x is not None:
        x = check_inputs(model, x, run=True)
        flat = {k: v.reshape(C * D, *v.shape[2:]) for k, v in draws.items()}
        pred = posterior.predictive_for(flat, x, batch_size=batch_size)
        if PREDICTION in draws:
            raise ValueError(f"a latent site is named {PREDICTION!r}, which to_arviz uses for predictions; rename it")
        means = pred.draw_means
        value_dims = _value_dims(means.dim() - 2, pred.kind)
        groups["posterior"][PREDICTION] = _numpy(means.reshape(C, D, *means.shape[1:]))
        dims[PREDICTION] = [DATA_DIM] + value_dims
        with seeded(seed):
            y_rep = pred.component.sample()
        groups["posterior_predictive"][OBS] = _numpy(y_rep.reshape(C, D, *y_rep.shape[1:]))
        dims[OBS] = [DATA_DIM] + _value_dims(y_rep.dim() - 2, "regression")
        for i, part in enumerate(as_args(x)):  # a multi-input network's inputs as x, x_1, x_2, ...
            name = "x" if i == 0 else f"x_{i}"
            groups["constant_data"][name] = _numpy(part)
            dims[name] = [DATA_DIM] + (["feature" if i == 0 else f"{name}_feature"] if part.dim() == 2 else
                                       [f"{name}_dim_{j}" for j in range(part.dim() - 1)])
        if y is not None:
            y = model.likelihood.check_targets(as_tensor(y, "y"), pred.outputs.shape[-1])
            if y.shape[0] != num_rows(x):
                raise ValueError(f"x has {num_rows(x)} rows but y has {y.shape[0]}; they must pair up row by row")
            loglik = pred.component.log_prob(y)  # (S, B): the untempered pointwise log likelihood
            groups["log_likelihood"][OBS] = _numpy(loglik.reshape(C, D, -1))
            groups["observed_data"][OBS] = _numpy(y)

    stats = getattr(posterior, "sample_stats", None) or {}
    for name, value in stats.items():
        value = torch.as_tensor(value)
        if tuple(value.shape[:2]) != (C, D):
            warnings.warn(f"sample statistic {name!r} has shape {tuple(value.shape)}, not (chains, draws) = {(C, D)}; "
                          "left out of sample_stats")
            continue
        groups["sample_stats"][SAMPLE_STATS_NAMES.get(name, name)] = _numpy(value)

    attrs = {"inference_library": "pyro_bdl", "inference_library_version": __version__, "method": str(posterior.method)}
    for key in ("temperature", "tempering", "seed", "backend"):
        if isinstance(posterior.info.get(key), (int, float, str)):
            attrs[key] = posterior.info[key]
    return _from_dict(groups, dims, attrs)
