"""The ready-made Bayesian neural network: a lifted network, a likelihood and a temperature in one Pyro model."""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

import torch
from pyro import poutine
from pyro.infer.autoguide.initialization import InitMessenger, init_to_median
from torch import nn

from . import tempering
from .._util.random import seeded
from .inputs import take_rows
from .layout import Weights, WeightLayout
from .lifting import LiftedNetwork, Patterns, latent_sites
from .likelihoods import Likelihood
from .sites import OBS_SITE
from .tempering import check_temperature as tempering_check


class BayesianModel:
    """A Bayesian neural network as a Pyro model: priors, likelihood and temperature.

    The model is p_T(w | D) ∝ (∏ᵢ p(yᵢ | f(xᵢ; w)) · p(w))^(1/T) (``tempering="posterior"``)
    or p(D | w)^(1/T) p(w) (``tempering="likelihood"``), see `pyro_bdl.tempering`.

    Call it as any Pyro model: ``model(x, y=None, dataset_size=None)``; with a minibatch of a
    larger data set pass ``dataset_size=N`` so the likelihood is scaled by N/B.
    Sites: one per Bayesian parameter (named by module path), the likelihood's latent
    parameters (``"noise_scale"`` when learned), any hyperprior sites, and ``"obs"``.

    Args:
        net: the ``torch.nn.Module``.
        prior: see `pyro_bdl.priors`; default iid N(0, 1).
        likelihood: see `pyro_bdl.likelihoods`; required.
        temperature: T > 0 (1 is Bayes, < 1 cold).
        tempering: ``"posterior"`` or ``"likelihood"``.
        deterministic, bayesian, prefix: see [`LiftedNetwork`][pyro_bdl.LiftedNetwork].
    """

    #: Whether `pyro_bdl.model.potential.Objective` may evaluate the density without a Pyro trace (the
    #: model is network + `Likelihood`); models written in Pyro code (`pyro_bdl.model.user_model`) are traced.
    compilable: bool = True

    def __init__(self, net: nn.Module, prior: Any = None, likelihood: Optional[Likelihood] = None,
                 temperature: float = 1.0, tempering: str = "posterior", deterministic: Patterns = None,
                 bayesian: Patterns = None, prefix: str = ""):
        if likelihood is None:
            raise ValueError("BayesianModel needs a likelihood, e.g. likelihood=pyro_bdl.likelihoods.Gaussian(scale=0.1) "
                             "for regression or pyro_bdl.likelihoods.Categorical() for classification.")
        if not isinstance(likelihood, Likelihood):
            raise TypeError(f"likelihood must be a pyro_bdl.likelihoods.Likelihood, got {type(likelihood).__name__}")
        self.network = LiftedNetwork(net, prior=prior, deterministic=deterministic, bayesian=bayesian, prefix=prefix)
        self.likelihood = likelihood
        self.tempering = tempering
        self.temperature = tempering_check(temperature, tempering)

    # -- convenience --------------------------------------------------------------------
    @property
    def net(self) -> nn.Module:
        """The wrapped ``torch.nn.Module`` (its parameters are the prior's templates, not the draws)."""
        return self.network.net

    @property
    def weight_sites(self) -> List[str]:
        """Names of the Bayesian weight sites, one per parameter, by module path (``"0.weight"``)."""
        return self.network.sites

    @property
    def likelihood_sites(self) -> Tuple[str, ...]:
        """Latent sites of the likelihood (``("noise_scale",)`` when it learns its noise, else empty)."""
        return tuple(self.likelihood.param_sites)

    @property
    def layout(self) -> WeightLayout:
        """The [`WeightLayout`][pyro_bdl.WeightLayout] of the weight sites."""
        return self.network.layout

    @property
    def device(self) -> torch.device:
        """The network's device: `fit` moves each batch there and posteriors predict there."""
        return self.network.device

    @property
    def dtype(self) -> torch.dtype:
        """The network's floating dtype (a float64 network needs no change of torch's default dtype)."""
        return self.network.dtype

    def to(self, device: Any = None, dtype: Optional[torch.dtype] = None) -> "BayesianModel":
        """Move the network to ``device`` and/or ``dtype`` (in place, like ``nn.Module.to``); returns self."""
        self.network.net.to(device=device, dtype=dtype)
        self.network._sync()
        return self

    def with_temperature(self, temperature: float, tempering: Optional[str] = None) -> "BayesianModel":
        """A copy at another temperature (the network is shared, not copied)."""
        new = copy.copy(self)
        new.tempering = self.tempering if tempering is None else tempering
        new.temperature = tempering_check(temperature, new.tempering)
        return new

    def forward(self, weights: Weights, x: torch.Tensor,
                buffers: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """Network output for given weights (vectorised over leading draw dims); ``buffers``:
        optional per-draw buffer values, see [`LiftedNetwork.forward`][pyro_bdl.LiftedNetwork]."""
        return self.network.forward(weights, x, buffers)

    # -- the Pyro model -----------------------------------------------------------------
    def __call__(self, x: torch.Tensor, y: Optional[torch.Tensor] = None,
                 dataset_size: Optional[int] = None) -> torch.Tensor:
        T, mode = self.temperature, self.tempering
        with tempering.tempered_prior(T, mode):
            weights = self.network.sample_weights()
            lik_params = self.likelihood.sample_params(self.device, self.dtype)
        out = self.network.plate_aligned(self.network.forward(weights, x), weights)
        with tempering.tempered_likelihood(T, mode):
            self.likelihood(out, y, dataset_size=dataset_size, params=lik_params)
        return out

    def log_joint(self, values: Dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  dataset_size: Optional[int] = None) -> torch.Tensor:
        """The tempered log joint at ``values`` on a (mini)batch: the Pyro trace's log density.

        log p̃ = s_prior · log p(w) + (1/T) · (N/B) · Σ_{i∈batch} log p(yᵢ | xᵢ, w), with
        s_prior = 1/T (posterior tempering) or 1 (likelihood tempering). Differentiable in ``values``.
        Gradient-based samplers and optimisers (MAP, SWAG, SG-MCMC) all use this one function.
        """
        conditioned = poutine.condition(self, data=values)
        trace = poutine.trace(conditioned).get_trace(x, y, dataset_size)
        missing = [name for name, site in latent_sites(trace).items() if name not in values]
        if missing:
            raise ValueError(f"log_joint needs values for every latent site; missing {missing}")
        return trace.log_prob_sum()

    def prior_sample(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One draw of every latent site (weights, likelihood and hyperprior sites) from the prior."""
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(self).get_trace(take_rows(x, slice(0, 1)))
        return {name: site["value"] for name, site in latent_sites(trace).items() if name != OBS_SITE}

    def latent_shapes(self, x: torch.Tensor) -> Dict[str, torch.Size]:
        """Names and shapes of every latent site (weights, likelihood and hyperprior sites)."""
        return {name: value.shape for name, value in self.prior_sample(x).items()}

    def initial_values(self, seed: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """A natural starting point for every latent site, on the network's device and dtype.

        Weights: the network's current values (``seed``: a fresh default initialisation, see
        [`LiftedNetwork.initial_weights`][pyro_bdl.LiftedNetwork]). Every other latent site — a learned
        noise scale, the hyperprior sites of a hierarchical prior (``prior=`` a function) — at its prior
        median: ``icdf(0.5)`` where the distribution has one, else the median of a few draws made
        under ``seed`` (0 when None), so the start is reproducible.
        """
        weights = self.network.initial_weights(seed)
        like = next(iter(weights.values()))

        def central(site: dict) -> torch.Tensor:
            if site["name"] in weights:
                return weights[site["name"]]
            fn = site["fn"]
            try:
                value = fn.icdf(torch.full(fn.shape(), 0.5, dtype=like.dtype, device=like.device))
            except (NotImplementedError, AttributeError, TypeError, RuntimeError, ValueError):
                with seeded(0 if seed is None else seed):
                    value = init_to_median(site)
            return value.to(like.device, like.dtype) if value.is_floating_point() else value.to(like.device)

        with poutine.block(), torch.no_grad(), InitMessenger(central):
            trace = poutine.trace(self._sample_prior).get_trace()
        return {name: site["value"].detach().clone() if name not in weights else site["value"]
                for name, site in latent_sites(trace).items()}

    def as_values(self, values: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """User-given site values (``init={site: value}``: tensors, arrays or numbers) as tensors on the
        network's device, floating ones in its dtype (integer ones keep theirs): the one place a user's
        starting point meets the network's device."""
        device, dtype = self.device, self.dtype
        out = {}
        for name, value in values.items():
            t = torch.as_tensor(value)
            out[name] = t.to(device, dtype) if t.is_floating_point() else t.to(device)
        return out

    def _sample_prior(self) -> None:
        """The latent part of the model (weights, hyperprior and likelihood sites) without data."""
        with tempering.tempered_prior(self.temperature, self.tempering):
            self.network.sample_weights()
            self.likelihood.sample_params(self.device, self.dtype)

    def __repr__(self) -> str:
        return (f"BayesianModel(net={type(self.net).__name__}, prior={self.network.prior!r}, likelihood={self.likelihood!r}, "
                f"temperature={self.temperature}, tempering={self.tempering!r}, sites={len(self.weight_sites)})")


