"""What [`pyro_bdl.fit`][pyro_bdl.fit] returns: one interface for every inference method.

* ``sample(n)`` — n weight draws ``{site: (n, *shape)}``;
* ``predict(x, num_samples)`` — the Bayesian model average ([`BMAPredictive`][pyro_bdl.BMAPredictive]);
* ``save(path)`` / ``Posterior.load(path)`` — a file that reloads in a fresh process.

Kinds of posterior:

* [`SamplesPosterior`][pyro_bdl.SamplesPosterior] — stored draws with a chain dimension ``(chains, draws, ...)``:
  MCMC, SG-MCMC, MAP (one chain of one draw), deep ensembles (one chain per member);
* [`GuidePosterior`][pyro_bdl.GuidePosterior] — a trained Pyro guide that draws as many samples as asked (SVI);
* [`MixturePosterior`][pyro_bdl.MixturePosterior] — an equal-weight mixture of independent posteriors (Multi-SWAG).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from .._util import checkpoint
from ..model.bayesian_model import BayesianModel
from ..model.inputs import check_inputs
from ..model.layout import Weights
from .arviz import to_arviz
from .predictive import BMAPredictive

FORMAT = "pyro_bdl.posterior"
FORMAT_VERSION = 1


class Posterior:
    """Base class: subclasses implement `sample`.

    Attributes:
        model: the [`BayesianModel`][pyro_bdl.BayesianModel] it is a posterior of.
        method: the inference method that produced it (``"nuts"``, ``"svi"``, ...).
        info: method-specific records (losses, step sizes, timings).
    """

    def __init__(self, model: BayesianModel, method: str, info: Optional[Dict[str, Any]] = None):
        self.model = model
        self.method = method
        self.info = dict(info or {})

    def sample(self, num_samples: int, seed: Optional[int] = None) -> Weights:
        """``num_samples`` draws of every latent site, ``{site: (num_samples, *shape)}``."""
        raise NotImplementedError

    def _predict_draws(self, num_samples: Optional[int], seed: Optional[int]) -> Weights:
        return self.sample(100 if num_samples is None else num_samples, seed=seed)

    def _buffers_for(self, draws: Weights) -> Optional[Dict[str, torch.Tensor]]:
        """Per-draw values of network buffers for ``draws``, or ``None`` for the network's stored ones.

        Posteriors over networks with BatchNorm override this to recompute each draw's
        statistics (SWAG, `pyro_bdl.batchnorm`).
        """
        return None

    def draws_by_chain(self, num_samples: int = 100, seed: Optional[int] = 0) -> Weights:
        """Draws grouped as ``{site: (chains, draws, *shape)}`` for diagnostics (ArviZ).

        Independent runs are separate chains (MCMC chains, SG-MCMC runs, ensemble members,
        Multi-SWAG components), so between-run spread shows in R-hat. A single guide is one chain.
        """
        return {k: v.unsqueeze(0) for k, v in self.sample(num_samples, seed=seed).items()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor, num_samples: Optional[int] = None, seed: Optional[int] = 0,
                batch_size: Optional[int] = None) -> BMAPredictive:
        """The Bayesian model average at inputs ``x``: p(y | x, D) ≈ (1/S) Σ_s p(y | x, w_s).

        All S draws are evaluated in one vectorised call per input chunk (``batch_size`` rows
        at a time; default all). ``num_samples=None`` uses every stored draw (sample-based
        posteriors) or 100 draws (guides).
        """
        x = check_inputs(self.model, x)
        return self.predictive_for(self._predict_draws(num_samples, seed), x, batch_size=batch_size)

    @torch.no_grad()
    def predictive_for(self, draws: Weights, x: torch.Tensor, batch_size: Optional[int] = None) -> BMAPredictive:
        """The Bayesian model average over given draws ``{site: (S, *shape)}`` at inputs ``x``.

        `predict` and the diagnostics (`pyro_bdl.diagnostics`, which need the
        per-draw components chain by chain) both go through here.
        """
        buffers = self._buffers_for(draws)
        weights = {k: draws[k] for k in self.model.weight_sites}
        chunks = [x] if batch_size is None else torch.split(x, batch_size)
        outputs = torch.cat([self.model.forward(weights, xb, buffers) for xb in chunks], dim=-2)
        # Likelihood parameters are per draw: give them a singleton data dim to align with (S, B).
        lik = {k: draws[k].reshape(draws[k].shape[0], 1) for k in self.model.likelihood_sites}
        component = self.model.likelihood.distribution(outputs, lik)
        return BMAPredictive(component, outputs, self.model.likelihood.kind)

    def to_arviz(self, x: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None,
                 num_samples: int = 100, seed: Optional[int] = 0, **kwargs: Any):
        """This posterior as an ``arviz.InferenceData`` (needs ``arviz``: ``pip install pyro_bdl[arviz]``).

        Groups: posterior (every latent site, chains as in `draws_by_chain`, plus the
        function-space ``prediction`` E[y | x, w] when ``x`` is given), posterior_predictive and
        log_likelihood at ``x`` (``y`` needed for the latter), observed_data, constant_data and,
        for samplers, sample_stats. ``num_samples`` draws are taken from posteriors that sample on
        demand (guides); stored draws (MCMC) are used as they are. See [`pyro_bdl.diagnostics.to_arviz`][pyro_bdl.evaluate.diagnostics.to_arviz].
        """
        return to_arviz(self, x=x, y=y, num_samples=num_samples, seed=seed, **kwargs)

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write the posterior (model, network, draws or guide) to ``path`` atomically."""
        checkpoint.save(path, {"format": FORMAT, "version": FORMAT_VERSION, "posterior": self})

    @staticmethod
    def load(path: str) -> "Posterior":
        """Read a posterior written by `save`. The file is a pickle: load only files you trust."""
        blob = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ValueError(f"{path} is not a pyro_bdl posterior file (written by Posterior.save)")
        if blob["version"] > FORMAT_VERSION:
            raise ValueError(f"{path} was written by a newer pyro_bdl (format {blob['version']}); upgrade pyro_bdl")
        return blob["posterior"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r}, model={self.model!r})"
