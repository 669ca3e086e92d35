"""A user's own Pyro model, written with [`lift`][pyro_bdl.lift], as a model [`pyro_bdl.fit`][pyro_bdl.fit] takes.

``fit(user_model, x, y, method=...)`` accepts any callable ``user_model(x, y=None)`` that

* calls one lifted network (``bdl.lift(net, prior)(x)``) — its parameters are the weight sites;
* observes the targets at one or more sample sites (``pyro.sample("obs", ..., obs=y)``) inside a
  plate over the rows it is given (``pyro.plate("data", len(x))``);
* may draw any other latent sites (hyperpriors, a noise scale) with ``pyro.sample``.

Its latent sites are discovered by running it once (`PyroModel`). Dataset-size scaling and the
temperature are applied by `PyroModel` as for [`BayesianModel`][pyro_bdl.BayesianModel], with the
factors of `pyro_bdl.model.tempering`: each observed site is scaled by s_lik · N/B, each latent
site by s_prior, so a minibatch of B rows estimates the tempered full-data log joint

    log p̃ = s_prior · Σ_latent log p(z) + s_lik · (N/B) · Σ_{observed, i ∈ batch} log p(yᵢ | z).

The model's density is known only through its trace, so gradient-based methods (MAP, SWAG, SG-MCMC)
use the traced potential (``Objective`` with ``compiled=False``); predictions run the model
vectorised over the posterior draws and average the observed site's distribution.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from . import tempering
from .bayesian_model import BayesianModel
from .inputs import Inputs, map_inputs, num_rows, take_rows
from .layout import Weights
from .lifting import LiftedNetwork, latent_sites, recording
from .likelihoods import Likelihood
from .tempering import check_temperature

CLASSIFICATION = (dist.Categorical, dist.Bernoulli, dist.OneHotCategorical)
NEEDS = ("fit(model, x, y) takes a pyro_bdl.BayesianModel or your own Pyro model: a callable model(x, y=None) "
         "that calls one bdl.lift(net, prior) network on x and observes y, e.g. "
         "pyro.sample('obs', dist.Normal(f(x).squeeze(-1), 0.1), obs=y) inside pyro.plate('data', len(x))")


class _Scaled(Messenger):
    """Scale observed sample sites by ``observed`` and latent ones by ``latent`` (plate subsample sites untouched)."""

    def __init__(self, latent: float, observed: float):
        super().__init__()
        self.latent, self.observed = latent, observed

    def _process_message(self, msg: dict) -> None:
        if msg["type"] != "sample" or site_is_subsample(msg):
            return
        factor = self.observed if msg["is_observed"] else self.latent
        if factor != 1.0:
            msg["scale"] = factor * msg["scale"]


def _base(fn: dist.Distribution) -> dist.Distribution:
    while isinstance(fn, (dist.Independent, dist.MaskedDistribution)) or hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


class TracedLikelihood(Likelihood):
    """The likelihood of a user's Pyro model: whatever its observed site does (known through its trace).

    Targets are passed to the model as given (floating ones in the network's dtype); the predictive
    distribution comes from tracing the model (`PyroModel.traced_components`), not from here.
    """

    def __init__(self, sites: Tuple[str, ...], kind: str):
        self.sites, self.kind = sites, kind

    def check_targets(self, y: torch.Tensor, out_dim: int) -> torch.Tensor:
        return y

    def distribution(self, output, params=None):
        raise TypeError("a user's Pyro model has no separate likelihood: its predictive distribution comes from "
                        "running the model (PyroModel.traced_components)")


def _rows(x: Any, n: int) -> Any:
    return map_inputs(lambda t: torch.as_tensor(t)[:n], tuple(x) if isinstance(x, list) else x)


class PyroModel(BayesianModel):
    """A user's own Pyro model ``fn(x, y=None)`` (built with [`lift`][pyro_bdl.lift]) as a model `fit` takes.

    Args:
        fn: the Pyro model; see the module docs for what it must do.
        example_x, example_y: a couple of training rows, used once to run ``fn`` and discover its
            lifted network, latent sites and observed sites.
        temperature, tempering: see `pyro_bdl.tempering`; the factors are applied by site kind
            (module docs), so ``fn`` itself must not scale its sites.

    Raises ``TypeError``/``ValueError`` naming the problem for a model without a lifted network,
    with several, without an observed site or without latent sites.
    """

    compilable = False

    def __init__(self, fn: Callable, example_x: Inputs, example_y: torch.Tensor, temperature: float = 1.0,
                 tempering: str = "posterior"):
        if not callable(fn):
            raise TypeError(f"{NEEDS}; got a {type(fn).__name__}")
        self.fn = fn
        self.tempering = tempering
        self.temperature = check_temperature(temperature, tempering)
        x, y = _rows(example_x, 2), torch.as_tensor(example_y)[:2]
        name = getattr(fn, "__name__", type(fn).__name__)
        with recording() as networks, poutine.block(), torch.no_grad():
            try:
                trace = poutine.trace(fn).get_trace(x, y)
            except Exception as err:
                raise ValueError(f"running the model {name}(x, y) on two training rows failed ({type(err).__name__}: "
                                 f"{err}); {NEEDS}") from err
        nets = {id(n.net): n for n in networks}
        if not nets:
            raise TypeError(f"the model {name} calls no lifted network; {NEEDS}")
        if len(nets) > 1:
            raise ValueError(f"the model {name} calls {len(nets)} different lifted networks; fit supports one "
                             "(lift a module holding all of them, e.g. an nn.ModuleDict, or use pyro.infer directly)")
        self.network: LiftedNetwork = networks[0]
        observed = [n for n, s in trace.nodes.items() if s["type"] == "sample" and s["is_observed"]
                    and not site_is_subsample(s)]
        if not observed:
            raise ValueError(f"the model {name} observes nothing: it must observe the targets, "
                             f"pyro.sample('obs', ..., obs=y), so that fit has a likelihood")
        latent = list(latent_sites(trace))
        if not latent:
            raise ValueError(f"the model {name} has no latent sample sites; there is nothing to infer")
        missing = [s for s in self.network.sites if s not in latent]
        if missing:
            raise ValueError(f"the lifted network's sites {missing} are not latent sites of {name} (observed or "
                             "conditioned?); lift the network with the parameters you want inferred")
        for site, shape in zip(self.network.sites, self.network.layout.shapes):
            got = tuple(trace.nodes[site]["value"].shape)
            if got != tuple(shape):
                raise ValueError(f"the weight site {site!r} of {name} has shape {got}, not the parameter's {tuple(shape)}: "
                                 "the lifted network was called inside a plate, which gives every data point its own "
                                 "weights. Call it outside the data plate: out = f(x), then "
                                 "with pyro.plate('data', len(x)): pyro.sample('obs', ..., obs=y)")
        self.observed: Tuple[str, ...] = tuple(observed)
        kind = "classification" if isinstance(_base(trace.nodes[observed[0]]["fn"]), CLASSIFICATION) else "regression"
        self.likelihood = TracedLikelihood(self.observed, kind)
        self.latent_names: Tuple[str, ...] = tuple(latent)
        self._example = (map_inputs(lambda t: t.to(self.network.dtype) if t.is_floating_point() else t, x),
                         y.to(self.network.dtype) if y.is_floating_point() else y)

    @property
    def likelihood_sites(self) -> Tuple[str, ...]:
        """Latent sites other than the network's weights (hyperpriors, a learned noise, ...)."""
        return tuple(n for n in self.latent_names if n not in self.network.sites)

    def __call__(self, x: Inputs, y: Optional[torch.Tensor] = None, dataset_size: Optional[int] = None) -> Any:
        """Run ``fn(x, y)`` with latent sites scaled by s_prior and observed ones by s_lik · N/B.
        Without ``y`` the observed sites are hidden from traces (they are not latent variables)."""
        T, mode = self.temperature, self.tempering
        n_over_b = 1.0 if dataset_size is None else int(dataset_size) / num_rows(x)
        with _Scaled(tempering.prior_scale(T, mode), tempering.likelihood_scale(T, mode) * n_over_b):
            if y is None:
                with poutine.block(hide=list(self.observed)):
                    return self.fn(x)
            return self.fn(x, y)

    def _sample_prior(self) -> None:
        # The model's latent part needs its data: run it on the stored example rows.
        self(*self._example)

    def prior_sample(self, x: Inputs) -> Dict[str, torch.Tensor]:
        """One prior draw of every latent site."""
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(self).get_trace(take_rows(x, slice(0, 1)))
        return {name: site["value"] for name, site in latent_sites(trace).items()}

    def traced_components(self, draws: Weights, x: Inputs) -> Tuple[torch.Tensor, dist.Distribution]:
        """``(outputs, component)`` for the Bayesian model average at ``x`` over ``draws`` ``{site: (S, ...)}``:
        the network outputs ``(S, B, out)`` and the observed site's distribution, batch ``(S, B)``, from one
        run of the model vectorised over the draws (a plate of S left of the model's own)."""
        num = next(iter(draws.values())).shape[0]
        values = {k: v.reshape(num, 1, *v.shape[1:]) for k, v in draws.items() if k in self.latent_names}
        with poutine.block(), torch.no_grad(), pyro.plate("_bdl_draws", num, dim=-2):
            trace = poutine.trace(poutine.condition(self.fn, data=values)).get_trace(x)
        site = trace.nodes[self.observed[0]]
        weights = {k: draws[k] for k in self.network.sites}
        return self.network.forward(weights, x), site["fn"]

    def __repr__(self) -> str:
        return (f"PyroModel(fn={getattr(self.fn, '__name__', self.fn)!r}, net={type(self.net).__name__}, "
                f"latent={list(self.latent_names)}, observed={list(self.observed)}, temperature={self.temperature}, "
                f"tempering={self.tempering!r})")


def as_model(model: Any, x: Any, y: Any) -> BayesianModel:
    """``model`` if it is a [`BayesianModel`][pyro_bdl.BayesianModel], else a `PyroModel` of the user's Pyro
    model, discovered on the first rows of ``x``, ``y`` (or of the DataLoader's first batch)."""
    if isinstance(model, BayesianModel):
        return model
    if not callable(model) or isinstance(model, (torch.nn.Module, type)):
        hint = (" (a torch.nn.Module: wrap it, BayesianModel(net, prior=..., likelihood=...))"
                if isinstance(model, torch.nn.Module) else "")
        raise TypeError(f"{NEEDS}; got a {type(model).__name__}{hint}")
    if isinstance(x, torch.utils.data.DataLoader):
        first = next(iter(x), None)
        if first is None or not isinstance(first, (tuple, list)) or len(first) != 2:
            raise ValueError("the DataLoader must yield (x, y) batches")
        x, y = first
    if y is None:
        raise ValueError("y is missing: a Pyro model is fitted to fit(model, x, y) (or a DataLoader of (x, y))")
    return PyroModel(model, x, y)
