"""What [`pyro_bdl.fit`][pyro_bdl.fit] returns: one interface for every method, and its Bayesian model average.

* `base` — [`Posterior`][pyro_bdl.Posterior] (sample, predict, to_arviz, save/load);
* `samples` — stored draws (MCMC, SG-MCMC, MAP, ensembles) and trained guides (SVI);
* `mixture` — equal-weight mixtures (Multi-SWAG);
* `swag` — the SWAG Gaussian;
* `predictive` — [`BMAPredictive`][pyro_bdl.BMAPredictive], the predictive distribution;
* `arviz` — the one adapter to ``arviz.InferenceData``.
"""
from .base import Posterior
from .mixture import MixturePosterior
from .predictive import BMAPredictive
from .samples import GuidePosterior, SamplesPosterior
from .swag import SWAGPosterior

__all__ = ["Posterior", "SamplesPosterior", "GuidePosterior", "MixturePosterior", "SWAGPosterior", "BMAPredictive"]
