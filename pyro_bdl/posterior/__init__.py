"""What :func:`pyro_bdl.fit` returns: one interface for every method, and its Bayesian model average.

* :mod:`~pyro_bdl.posterior.base` — :class:`Posterior` (sample, predict, to_arviz, save/load);
* :mod:`~pyro_bdl.posterior.samples` — stored draws (MCMC, SG-MCMC, MAP, ensembles) and trained guides (SVI);
* :mod:`~pyro_bdl.posterior.mixture` — equal-weight mixtures (Multi-SWAG);
* :mod:`~pyro_bdl.posterior.swag` — the SWAG Gaussian;
* :mod:`~pyro_bdl.posterior.predictive` — :class:`BMAPredictive`, the predictive distribution;
* :mod:`~pyro_bdl.posterior.arviz` — the one adapter to ``arviz.InferenceData``.
"""
from .base import Posterior
from .mixture import MixturePosterior
from .predictive import BMAPredictive
from .samples import GuidePosterior, SamplesPosterior
from .swag import SWAGPosterior

__all__ = ["Posterior", "SamplesPosterior", "GuidePosterior", "MixturePosterior", "SWAGPosterior", "BMAPredictive"]
