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
from .jax import JaxNetwork, as_jax_array, to_jax

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


@jax.jit
def _log_probs(dists: Dict[str, ndist.Distribution], values: Dict[str, jnp.ndarray]) -> Dict[str, jnp.ndarray]:
    # Module level, so JAX compiles it once per structure (distributions are pytrees), not once per call.
    return {w: jnp.sum(dists[w].log_prob(values[w])) for w in values}


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
    got = _log_probs({w: nd for w, (_, nd) in pairs.items()}, values)
    for what, lp_torch in expected.items():
        lp_jax = float(got[what])
        if not np.isfinite(lp_torch):  # the distribution itself, not its translation, is at fault
            raise ValueError(f"the {type(pairs[what][0]).__name__} distribution of {what} has log density {lp_torch} "
                             f"at a draw from itself in torch: its parameters are degenerate in "
                             f"{torch.get_default_dtype()} (e.g. a scale below ~1e-19 squares to 0 in float32); "
                             "use a larger scale (or float64)")
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
    """NumPyro version of a `pyro_bdl.likelihoods` likelihood: same link (the likelihood's own
    ``_loc_scale``), same sites. The learned noise's prior is a run-time argument (`noise_prior`)."""

    def __init__(self, lik: L.Likelihood):
        self.lik = lik
        self.noise_prior = None
        self.translated: Dict[str, Tuple[Any, ndist.Distribution]] = {}  # for the density check
        if isinstance(lik, L._LocScale) and lik.learned:
            what = f"the likelihood's {lik.noise_site!r}"
            self.noise_prior = to_numpyro_distribution(lik.scale_prior, what, check=False)
            self.translated[what] = (lik.scale_prior, self.noise_prior)

    @property
    def structure_key(self) -> Tuple:
        """What the compiled model bakes in: the family and its options (fixed scale, df, ...)."""
        return (type(self.lik).__qualname__, repr(self.lik))

    def sample_params(self, noise_prior: Optional[ndist.Distribution]) -> Dict[str, jnp.ndarray]:
        if noise_prior is None:
            return {}
        return {self.lik.noise_site: numpyro.sample(self.lik.noise_site, noise_prior)}

    def distribution(self, output: jnp.ndarray, params: Dict[str, jnp.ndarray]) -> ndist.Distribution:
        lik = self.lik
        if isinstance(lik, L.Categorical):
            return ndist.Categorical(logits=output)
        if isinstance(lik, L.Bernoulli):
            return ndist.Bernoulli(logits=output[..., 0])
        loc, scale = lik._loc_scale(output, params, softplus=jax.nn.softplus)
        base = ndist.Normal(loc, scale) if isinstance(lik, L.Gaussian) else ndist.StudentT(lik.df, loc, scale)
        return lik._event(base, loc, output)

    def __call__(self, output: jnp.ndarray, y: Optional[jnp.ndarray], data_scale: Any,
                 params: Dict[str, jnp.ndarray]) -> jnp.ndarray:
        d = self.distribution(output, params)
        with numpyro.plate(L.DATA_PLATE, output.shape[-2], dim=-1), numpyro.handlers.scale(scale=data_scale):
            return numpyro.sample(L.OBS_SITE, d, obs=y)


def data_scale(dataset_size: Optional[int], batch: int) -> float:
    """N/B: the factor on the minibatch log likelihood (1 for the full data)."""
    return 1.0 if dataset_size is None else int(dataset_size) / batch


class NumPyroModel:
    """``model`` (a [`BayesianModel`][pyro_bdl.BayesianModel]) as a NumPyro model ``(x, y=None, dataset_size=None)``.

    Same site names, same distributions, same temperature and tempering mode, hence the same
    tempered log joint (`log_joint`) as the Pyro model. ``x`` and ``y`` are JAX/numpy
    arrays (or torch tensors); ``y`` as the likelihood's ``check_targets`` returns it.

    The model is split into structure and values, so that one compiled program serves every
    model with the same structure: `model_fn` ``(args, x, y, data_scale)`` is the NumPyro
    model with every value a run-time argument — `args` holds the prior distributions
    (NumPyro distributions are JAX pytrees: their parameters are leaves), the learned noise's
    prior, the tempering factors ``prior_scale`` and ``likelihood_scale``, and the network's
    constants (fixed parameters, BatchNorm statistics) — and `structure_key` describes
    everything the program bakes in (network graph and layer configuration, sites, likelihood
    family and options, shapes).

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

    @property
    def args(self) -> Dict[str, Any]:
        """The run-time arguments of `model_fn`: every value the log density depends on (a pytree)."""
        dtype = jnp.result_type(float)
        return {"priors": {site: d for site, (_, d) in self.priors.items()}, "noise_prior": self.likelihood.noise_prior,
                "prior_scale": jnp.asarray(self.prior_scale, dtype),
                "likelihood_scale": jnp.asarray(self.likelihood_scale, dtype), "constants": dict(self.net.constants)}

    @property
    def structure_key(self) -> Tuple:
        """Hashable: equal keys mean `model_fn` traces to the same program for args of the same structure."""
        return (self.net.structure_key, tuple((s, n) for s, (n, _) in self.priors.items()), self.likelihood.structure_key)

    def forward(self, weights: Dict[str, jnp.ndarray], x: jnp.ndarray,
                constants: Optional[Dict[str, jnp.ndarray]] = None) -> jnp.ndarray:
        """Network output for one set of weights keyed by site name (``constants``: default the network's)."""
        values = {name: weights[site] for site, (name, _) in self.priors.items()}
        return self.net({**(self.net.constants if constants is None else constants), **values}, x)

    def model_fn(self, args: Dict[str, Any], x: Any, y: Any = None, data_scale: Any = 1.0) -> jnp.ndarray:
        """The NumPyro model with its values as arguments (`args`); ``data_scale`` is N/B."""
        x = as_jax_array(x)
        y = None if y is None else as_jax_array(y)
        with numpyro.handlers.scale(scale=args["prior_scale"]):
            weights = {site: numpyro.sample(site, args["priors"][site]) for site in self.priors}
            lik_params = self.likelihood.sample_params(args["noise_prior"])
        out = self.forward(weights, x, args["constants"])
        with numpyro.handlers.scale(scale=args["likelihood_scale"]):
            self.likelihood(out, y, data_scale, lik_params)
        return out

    def __call__(self, x: Any, y: Any = None, dataset_size: Optional[int] = None) -> jnp.ndarray:
        return self.model_fn(self.args, x, y, data_scale(dataset_size, jnp.shape(x)[0]))

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

    def verify(self, values: Dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
               computed: Optional[Tuple[Any, Any]] = None) -> None:
        """Check the translation at ``values`` against the Pyro model: network outputs on 8 rows and the log joint.

        ``computed``: the JAX side ``(outputs on x[:8], log joint)`` when the caller already has
        them (the NumPyro sampler computes them in its compiled initialisation); otherwise
        they are computed here. Raises ``ValueError`` if they disagree beyond float32 rounding
        (a translation bug: please report it; ``backend="pyro"`` is unaffected), or if the log
        joint is not finite there (naming the site whose log density is not finite).
        """
        rows = x[:8]
        weights = {s: values[s] for s in self.priors}
        if computed is None:
            jv = {k: as_jax_array(v) for k, v in values.items()}
            computed = (self.forward({s: jv[s] for s in self.priors}, as_jax_array(rows)),
                        self.log_joint(jv, as_jax_array(x), as_jax_array(y)))
        out_jax, lp_jax = np.asarray(computed[0]), float(computed[1])
        with torch.no_grad():
            out_torch = self.model.forward(weights, rows).detach().cpu().numpy()
            lp_torch = float(self.model.log_joint(values, x, y))
        if out_jax.shape != out_torch.shape or not np.all(
                np.abs(out_jax - out_torch) <= 1e-3 * (1.0 + np.abs(out_torch).max())):
            raise ValueError(
                "the JAX translation of the network disagrees with torch (max abs difference "
                f"{np.abs(out_jax - out_torch).max() if out_jax.shape == out_torch.shape else 'shape ' + str(out_jax.shape)}"
                f" on shape {out_torch.shape}). Please report this; {_REMEDY}")
        if not (np.isfinite(lp_torch) and np.isfinite(lp_jax)):
            raise ValueError(f"the log density is {lp_torch} (Pyro) / {lp_jax} (NumPyro) at the starting point: "
                             f"{self.explain_nonfinite(values, x, y)}")
        if not abs(lp_torch - lp_jax) <= 1e-4 * max(1.0, abs(lp_torch)):
            raise ValueError(f"the NumPyro model's log joint ({lp_jax}) differs from the Pyro model's ({lp_torch}). "
                             f"Please report this; {_REMEDY}")

    def explain_nonfinite(self, values: Dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> str:
        """Which term of the log joint is not finite at ``values``, and what to do (for error messages).

        Looks at each prior site (is the value in its prior's support? is its prior's density
        finite there?), then the network output, then the likelihood.
        """
        dists = {site: d for site, (_, d) in self.priors.items()}
        if self.likelihood.noise_prior is not None:
            dists[self.model.likelihood.noise_site] = self.likelihood.noise_prior
        for site, d in dists.items():
            if site not in values:
                continue
            v = as_jax_array(values[site])
            lp = float(jnp.sum(d.log_prob(v)))
            if not np.isfinite(lp):
                inside = bool(jnp.all(d.support(v)))
                why = ("the value lies outside the support of its prior" if not inside else
                       f"its prior {type(d).__name__} has log density {lp} there (a prior scale far below the "
                       f"value's size overflows float32: log N(w | 0, s) ≈ -w²/2s²; check the prior's scale)")
                return (f"site {site!r}: {why}. Start elsewhere (init='prior' draws from the prior; a dict init must "
                        f"lie inside each prior's support) or fix the prior.")
        jv = {k: as_jax_array(v) for k, v in values.items()}
        out = np.asarray(self.forward({s: jv[s] for s in self.priors}, as_jax_array(x)))
        if not np.all(np.isfinite(out)):
            return ("the network output is not finite there (overflowing weights or inputs); standardise the inputs "
                    "or start from smaller weights (init='prior' with a narrower prior, or init='net').")
        return ("the likelihood of the data is not finite there (e.g. a noise scale at 0, labels outside the "
                "likelihood's support, or outputs far from the data); check the data and the likelihood, or start "
                "elsewhere (init='map').")

    def __repr__(self) -> str:
        return f"NumPyroModel({self.model!r})"
