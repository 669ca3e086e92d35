"""A [`BayesianModel`][pyro_bdl.BayesianModel] as a NumPyro model with the same sites and log density.

[`NumPyroModel`][pyro_bdl.backends.NumPyroModel] mirrors the Pyro model site by site:

* one ``numpyro.sample`` site per Bayesian parameter, named as in Pyro (``"0.weight"``), whose
  distribution is the one the model's [`Prior`][pyro_bdl.priors.Prior] makes for that parameter,
  translated family by family ([`to_numpyro_distribution`][pyro_bdl.backends.to_numpyro_distribution]);
* ``"noise_scale"`` when a Gaussian / Student-t likelihood learns its noise;
* ``"obs"`` in ``numpyro.plate("data", B)``, scaled by N/B when ``dataset_size=N`` is given;
* the network evaluated by its JAX translation ([`to_jax`][pyro_bdl.backends.to_jax]).

Temperature is applied with ``numpyro.handlers.scale`` by the factors of
`pyro_bdl.tempering` (``prior_scale`` on the prior sites, ``likelihood_scale`` on
``"obs"``), so the NumPyro log joint is

    log p̃ = s_prior · log p(w) + (1/T) · (N/B) · Σᵢ log p(yᵢ | f(xᵢ; w)),

exactly [`BayesianModel.log_joint`][pyro_bdl.BayesianModel].
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as ndist
import pyro.distributions as pdist
import torch
from numpyro.infer.util import log_density
from pyro.distributions.torch_distribution import ExpandedDistribution

from .._util.random import seeded
from ..model import likelihoods as L
from ..model import tempering
from ..model.bayesian_model import BayesianModel
from ..priors.base import Prior
from ..priors.combinators import resolve_prior
from .jax_translate import JaxNetwork, as_jax_array, to_jax

__all__ = ["NumPyroModel", "to_numpyro_distribution", "check_translatable"]

# torch / Pyro family -> (NumPyro class, [(NumPyro argument, torch attribute)]). Looked up along the
# MRO, so Pyro's wrappers (pyro.distributions.Normal) and plain torch distributions both match.
_FAMILIES = {
    torch.distributions.Normal: (ndist.Normal, [("loc", "loc"), ("scale", "scale")]),
    torch.distributions.Laplace: (ndist.Laplace, [("loc", "loc"), ("scale", "scale")]),
    torch.distributions.StudentT: (ndist.StudentT, [("df", "df"), ("loc", "loc"), ("scale", "scale")]),
    torch.distributions.Cauchy: (ndist.Cauchy, [("loc", "loc"), ("scale", "scale")]),
    torch.distributions.HalfNormal: (ndist.HalfNormal, [("scale", "scale")]),
    torch.distributions.HalfCauchy: (ndist.HalfCauchy, [("scale", "scale")]),
    torch.distributions.LogNormal: (ndist.LogNormal, [("loc", "loc"), ("scale", "scale")]),
    torch.distributions.Gamma: (ndist.Gamma, [("concentration", "concentration"), ("rate", "rate")]),
    torch.distributions.InverseGamma: (ndist.InverseGamma, [("concentration", "concentration"), ("rate", "rate")]),
    torch.distributions.Exponential: (ndist.Exponential, [("rate", "rate")]),
    torch.distributions.Uniform: (ndist.Uniform, [("low", "low"), ("high", "high")]),
    torch.distributions.Beta: (ndist.Beta, [("concentration1", "concentration1"), ("concentration0", "concentration0")]),
    torch.distributions.Chi2: (ndist.Chi2, [("df", "df")]),
    torch.distributions.Gumbel: (ndist.Gumbel, [("loc", "loc"), ("scale", "scale")]),
    torch.distributions.Weibull: (ndist.Weibull, [("scale", "scale"), ("concentration", "concentration")]),
    torch.distributions.MultivariateNormal: (ndist.MultivariateNormal, [("loc", "loc"), ("scale_tril", "scale_tril")]),
    torch.distributions.LowRankMultivariateNormal: (
        ndist.LowRankMultivariateNormal, [("loc", "loc"), ("cov_factor", "cov_factor"), ("cov_diag", "cov_diag")]),
    pdist.SoftLaplace: (ndist.SoftLaplace, [("loc", "loc"), ("scale", "scale")]),
    pdist.AsymmetricLaplace: (ndist.AsymmetricLaplace, [("loc", "loc"), ("scale", "scale"), ("asymmetry", "asymmetry")]),
}

_REMEDY = "backend='pyro' works with any prior and likelihood."


def _param(t: Any) -> jnp.ndarray:
    """A distribution parameter as a JAX array; a broadcast view of one value becomes that scalar."""
    if not torch.is_tensor(t):
        return jnp.asarray(t)
    t = t.detach()
    if t.dim() > 0 and t.numel() > 0 and all(s == 0 for s in t.stride()):
        t = t.reshape(-1)[0]
    return as_jax_array(t)


def to_numpyro_distribution(d: torch.distributions.Distribution, what: str = "distribution",
                            check: bool = True) -> ndist.Distribution:
    """The NumPyro distribution with the same family, parameters, batch and event shape as ``d``.

    Handles ``Independent`` (``.to_event``), ``expand`` and the families Normal, Laplace,
    StudentT, Cauchy, HalfNormal, HalfCauchy, LogNormal, Gamma, InverseGamma, Exponential,
    Uniform, Beta, Chi2, Gumbel, Weibull, MultivariateNormal, LowRankMultivariateNormal,
    SoftLaplace and AsymmetricLaplace. With ``check`` the two log densities are compared at a
    draw of ``d``.

    Raises:
        ValueError: a family without a translation (``what`` names where it is used).
    """
    out = _translate(d, what)
    if check:
        _check_same_density({what: (d, out)})
    return out


def _translate(d: Any, what: str) -> ndist.Distribution:
    if isinstance(d, torch.distributions.Independent):
        return _translate(d.base_dist, what).to_event(d.reinterpreted_batch_ndims)
    if isinstance(d, ExpandedDistribution):
        return _translate(d.base_dist, what).expand(tuple(d.batch_shape))
    for cls in type(d).__mro__:
        if cls in _FAMILIES:
            ncls, args = _FAMILIES[cls]
            out = ncls(**{n: _param(getattr(d, a)) for n, a in args})
            if tuple(out.batch_shape) != tuple(d.batch_shape):
                out = out.expand(tuple(d.batch_shape))
            return out
    raise ValueError(f"the NumPyro backend cannot translate the {type(d).__name__} distribution of {what}; "
                     f"supported families: {sorted(c.__name__ for c in _FAMILIES)} (with .expand/.to_event). {_REMEDY}")


def _check_same_density(pairs: Dict[str, Tuple[torch.distributions.Distribution, ndist.Distribution]]) -> None:
    """Compare torch and NumPyro log densities of each ``{what: (d, nd)}`` pair at a draw of ``d`` (one jitted call)."""
    values, expected = {}, {}
    for what, (d, nd) in pairs.items():
        if tuple(nd.batch_shape) != tuple(d.batch_shape) or tuple(nd.event_shape) != tuple(d.event_shape):
            raise ValueError(f"translating the distribution of {what} changed its shape (batch {tuple(d.batch_shape)}, "
                             f"event {tuple(d.event_shape)} -> {tuple(nd.batch_shape)}, {tuple(nd.event_shape)}). {_REMEDY}")
        with seeded(0), torch.no_grad():
            value = d.sample()
            expected[what] = float(d.log_prob(value).sum())
        values[what] = as_jax_array(value)
    got = jax.jit(lambda v: {w: jnp.sum(pairs[w][1].log_prob(v[w])) for w in v})(values)
    for what, lp_torch in expected.items():
        lp_jax = float(got[what])
        if not abs(lp_torch - lp_jax) <= 1e-4 * max(1.0, abs(lp_torch)):
            raise ValueError(f"the NumPyro translation of the {type(pairs[what][0]).__name__} distribution of {what} has "
                             f"a different log density ({lp_jax} vs {lp_torch} in torch). {_REMEDY}")


def _is_function_prior(prior: Any) -> bool:
    return callable(prior) and not isinstance(prior, (Prior, torch.distributions.Distribution, Mapping, type))


def check_translatable(model: BayesianModel) -> None:
    """Raise ``ValueError``/``TypeError`` if ``model`` cannot run on the NumPyro backend (before any work)."""
    if not isinstance(model, BayesianModel):
        raise TypeError(f"expected a pyro_bdl.BayesianModel, got {type(model).__name__}")
    prior = model.network.prior
    if _is_function_prior(prior) or resolve_prior(prior).hierarchical:
        raise ValueError(
            "the NumPyro backend cannot translate a hierarchical prior (a function, or a prior such as "
            "FunctionalPrior.fit(..., hierarchical=True), that draws pyro.sample hyperparameters): its Pyro code "
            "cannot run inside JAX. Use backend='pyro' for hierarchical priors, or give a fixed prior "
            "(pyro_bdl.priors.Gaussian, FanInGaussian, a non-hierarchical FunctionalPrior, a per-parameter dict, ...).")
    if type(model.likelihood) not in _LIKELIHOODS:
        raise ValueError(f"the NumPyro backend translates the likelihoods "
                         f"{[c.__name__ for c in _LIKELIHOODS]} of pyro_bdl.likelihoods, not "
                         f"{type(model.likelihood).__name__}. {_REMEDY}")


_LIKELIHOODS = (L.Gaussian, L.StudentT, L.Categorical, L.Bernoulli)


class _Likelihood:
    """NumPyro version of a `pyro_bdl.likelihoods` likelihood (same parametrisation)."""

    def __init__(self, lik: L.Likelihood):
        self.lik = lik
        self.noise_prior = None
        self.translated: Dict[str, Tuple[Any, ndist.Distribution]] = {}  # for the density check
        if isinstance(lik, L._LocScale) and lik.learned:
            what = f"the likelihood's {lik.noise_site!r}"
            self.noise_prior = to_numpyro_distribution(lik.scale_prior, what, check=False)
            self.translated[what] = (lik.scale_prior, self.noise_prior)

    def sample_params(self) -> Dict[str, jnp.ndarray]:
        if self.noise_prior is None:
            return {}
        return {self.lik.noise_site: numpyro.sample(self.lik.noise_site, self.noise_prior)}

    def distribution(self, output: jnp.ndarray, params: Dict[str, jnp.ndarray]) -> ndist.Distribution:
        lik = self.lik
        if isinstance(lik, L.Categorical):
            return ndist.Categorical(logits=output)
        if isinstance(lik, L.Bernoulli):
            return ndist.Bernoulli(logits=output[..., 0])
        if lik.heteroskedastic:  # mean and raw-scale columns, σ = softplus(raw) + min_scale
            d = output.shape[-1] // 2
            loc, scale = output[..., :d], jax.nn.softplus(output[..., d:]) + lik.min_scale
        else:
            loc = output
            scale = params[lik.noise_site] if lik.learned else jnp.asarray(lik.scale, dtype=output.dtype)
        vector = loc.shape[-1] > 1
        if not vector:
            loc = loc[..., 0]
            scale = scale[..., 0] if jnp.ndim(scale) > 0 else scale
        base = ndist.Normal(loc, scale) if isinstance(lik, L.Gaussian) else ndist.StudentT(lik.df, loc, scale)
        return base.to_event(1) if vector else base

    def __call__(self, output: jnp.ndarray, y: Optional[jnp.ndarray], dataset_size: Optional[int],
                 params: Dict[str, jnp.ndarray]) -> jnp.ndarray:
        batch = output.shape[-2]
        d = self.distribution(output, params)
        size = batch if dataset_size is None else int(dataset_size)
        with numpyro.plate(L.DATA_PLATE, batch, dim=-1), numpyro.handlers.scale(scale=size / batch):
            return numpyro.sample(L.OBS_SITE, d, obs=y)


class NumPyroModel:
    """``model`` (a [`BayesianModel`][pyro_bdl.BayesianModel]) as a NumPyro model ``(x, y=None, dataset_size=None)``.

    Same site names, same distributions, same temperature and tempering mode, hence the same
    tempered log joint (`log_joint`) as the Pyro model. ``x`` and ``y`` are JAX/numpy
    arrays (or torch tensors); ``y`` as the likelihood's ``check_targets`` returns it.

    Raises ``ValueError`` (before any work) for what cannot be translated: a hierarchical
    prior given as a function, a distribution family or likelihood without a NumPyro
    counterpart, an operation of the network without a JAX translation.
    """

    def __init__(self, model: BayesianModel):
        check_translatable(model)
        self.model = model
        network = model.network
        self.net: JaxNetwork = to_jax(network.net, params=network.param_names)
        prior = resolve_prior(network.prior)
        params = dict(network.net.named_parameters())
        self.priors: Dict[str, Tuple[str, ndist.Distribution]] = {}
        translated = {}
        for name in network.param_names:
            site = network.site_name(name)
            d = prior.distribution(site, params[name].detach(), network.owner(name))
            what = f"parameter {site!r}"
            self.priors[site] = (name, to_numpyro_distribution(d, what, check=False))
            translated[what] = (d, self.priors[site][1])
        self.likelihood = _Likelihood(model.likelihood)
        _check_same_density({**translated, **self.likelihood.translated})
        self.prior_scale = tempering.prior_scale(model.temperature, model.tempering)
        self.likelihood_scale = tempering.likelihood_scale(model.temperature, model.tempering)

    @property
    def sites(self) -> Tuple[str, ...]:
        """Latent sites: the weights (Pyro order) and the likelihood's parameters."""
        return tuple(self.priors) + tuple(self.model.likelihood_sites)

    def forward(self, weights: Dict[str, jnp.ndarray], x: jnp.ndarray) -> jnp.ndarray:
        """Network output for one set of weights keyed by site name."""
        return self.net({name: weights[site] for site, (name, _) in self.priors.items()}, x)

    def __call__(self, x: Any, y: Any = None, dataset_size: Optional[int] = None) -> jnp.ndarray:
        x = as_jax_array(x)
        y = None if y is None else as_jax_array(y)
        with numpyro.handlers.scale(scale=self.prior_scale):
            weights = {site: numpyro.sample(site, d) for site, (_, d) in self.priors.items()}
            lik_params = self.likelihood.sample_params()
        out = self.forward(weights, x)
        with numpyro.handlers.scale(scale=self.likelihood_scale):
            self.likelihood(out, y, dataset_size, lik_params)
        return out

    def log_joint(self, values: Dict[str, Any], x: Any, y: Any, dataset_size: Optional[int] = None) -> jnp.ndarray:
        """The tempered log joint at ``values`` (``{site: array}``): NumPyro's ``log_density`` of this model.

        Equal to [`BayesianModel.log_joint`][pyro_bdl.BayesianModel] of the Pyro model up to float rounding.
        """
        missing = [s for s in self.sites if s not in values]
        if missing:
            raise ValueError(f"log_joint needs values for every latent site; missing {missing}")
        values = {k: as_jax_array(v) for k, v in values.items()}
        lp, _ = log_density(self, (x, y, dataset_size), {}, values)
        return lp

    def verify(self, values: Dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> None:
        """Check the translation at ``values`` against the Pyro model: network outputs on a few rows and the log joint.

        Raises ``ValueError`` if they disagree beyond float32 rounding (a translation bug:
        please report it; ``backend="pyro"`` is unaffected).
        """
        rows = x[:8]
        with torch.no_grad():
            weights = {s: values[s] for s in self.priors}
            out_torch = self.model.forward(weights, rows).numpy()
        out_jax = np.asarray(jax.jit(self.forward)({k: as_jax_array(v) for k, v in weights.items()}, as_jax_array(rows)))
        if out_jax.shape != out_torch.shape or not np.all(
                np.abs(out_jax - out_torch) <= 1e-3 * (1.0 + np.abs(out_torch).max())):
            raise ValueError(
                "the JAX translation of the network disagrees with torch (max abs difference "
                f"{np.abs(out_jax - out_torch).max() if out_jax.shape == out_torch.shape else 'shape ' + str(out_jax.shape)}"
                f" on shape {out_torch.shape}). Please report this; {_REMEDY}")
        with torch.no_grad():
            lp_torch = float(self.model.log_joint(values, x, y))
        lp_jax = float(jax.jit(self.log_joint)({k: as_jax_array(v) for k, v in values.items()}, as_jax_array(x),
                                               as_jax_array(y)))
        if not abs(lp_torch - lp_jax) <= 1e-4 * max(1.0, abs(lp_torch)):
            raise ValueError(f"the NumPyro model's log joint ({lp_jax}) differs from the Pyro model's ({lp_torch}). "
                             f"Please report this; {_REMEDY}")

    def __repr__(self) -> str:
        return f"NumPyroModel({self.model!r})"
