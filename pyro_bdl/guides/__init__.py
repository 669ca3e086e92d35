"""Pyro guides for Bayesian neural networks.

* [`SWAG`][pyro_bdl.guides.SWAG] — SWA-Gaussian (Maddox et al. 2019): a point-mass guide while SGD runs on the
  MAP objective, then a Gaussian fitted to the SGD trajectory (mean, diagonal and low-rank
  covariance) that ``pyro.infer.Predictive`` draws from.
"""
from .swag import SWAG, SWAGNormal

__all__ = ["SWAG", "SWAGNormal"]
