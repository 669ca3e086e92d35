"""Temperature: the one definition every inference method uses.

A tempered posterior at temperature ``T > 0`` is (Wenzel et al. 2020; Izmailov et al. 2021)

* ``tempering="posterior"`` (default):  p_T(w | D) ∝ (p(D | w) · p(w))^(1/T)
* ``tempering="likelihood"``:           p_T(w | D) ∝ p(D | w)^(1/T) · p(w)

``T = 1`` is the Bayes posterior, ``T < 1`` a "cold" posterior, ``T > 1`` a warm one.
For a Gaussian posterior (Bayesian linear regression) posterior tempering keeps the mean
and multiplies the covariance by ``T``.

It is implemented as ``poutine.scale`` factors on the prior sites and on the likelihood
site, so any Pyro inference algorithm (SVI, NUTS, the SWAG guide, SG-MCMC on the traced
log density) sees the tempered density without knowing about temperature.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

from pyro import poutine

TEMPERING_MODES = ("posterior", "likelihood")


def check_temperature(temperature: float, tempering: str = "posterior") -> float:
    """Validate ``temperature`` and ``tempering``; return ``temperature`` as a float."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        try:
            temperature = float(temperature)  # 0-d tensors, numpy scalars
        except (TypeError, ValueError):
            raise TypeError(
                f"temperature must be a positive number, got {type(temperature).__name__}; "
                "pass e.g. temperature=1.0 (Bayes) or temperature=0.1 (cold)."
            ) from None
    temperature = float(temperature)
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(
            f"temperature must be finite and > 0, got {temperature}; T=1 is the Bayes posterior, "
            "0 < T < 1 a cold posterior. For the T -> 0 limit use method='map'."
        )
    if tempering not in TEMPERING_MODES:
        raise ValueError(
            f"tempering must be one of {TEMPERING_MODES}, got {tempering!r}: 'posterior' tempers "
            "likelihood and prior, 'likelihood' tempers the likelihood only."
        )
    return temperature


def prior_scale(temperature: float, tempering: str = "posterior") -> float:
    """Factor multiplying log p(w): 1/T under posterior tempering, 1 under likelihood tempering."""
    return 1.0 / temperature if tempering == "posterior" else 1.0


def likelihood_scale(temperature: float, tempering: str = "posterior") -> float:
    """Factor multiplying log p(D | w): always 1/T."""
    return 1.0 / temperature


@contextmanager
def _scaled(factor: float) -> Iterator[None]:
    if factor == 1.0:
        yield
    else:
        with poutine.scale(scale=factor):
            yield


def tempered_prior(temperature: float, tempering: str = "posterior"):
    """Context in which prior sample sites are tempered (``poutine.scale`` by `prior_scale`)."""
    return _scaled(prior_scale(temperature, tempering))


def tempered_likelihood(temperature: float, tempering: str = "posterior"):
    """Context in which the observation site is tempered (``poutine.scale`` by 1/T)."""
    return _scaled(likelihood_scale(temperature, tempering))
