r"""Sampler-accuracy diagnostics of SG-MCMC: kinetic and configurational temperature.

Wenzel et al. (2020, "How good is the Bayes posterior in deep neural networks really?",
ICML, §4 and App. E) check that an SG-MCMC run samples the density it targets with two
temperature estimators whose expectation under the target is the run's temperature T. For a
run targeting p_T(θ) ∝ exp(−V(θ)/T) on θ ∈ ℝ^d (V = T·U_T, the rescaled tempered potential;
T is the run's temperature — with tempering, the target is the tempered posterior, so the
"target temperature" is T, not 1):

* **configurational temperature** T̂_conf = (1/d) (θ − θ₀)·∇V(θ). Integration by parts gives
  E[(θ_i − θ₀ᵢ) ∂_i V] = T under exp(−V/T) (when (θ_i − θ₀ᵢ) e^{−V/T} vanishes at infinity),
  for any V and any fixed θ₀ independent of θ. Wenzel et al. take θ₀ = 0; we take θ₀ = the
  chain's position when its sampling stage begins or, for cSG-MCMC (short stages), the last
  control-variate anchor before it (the mean θ of the first half of the warm-up): fixed before the
  steps it is averaged over, with the same expectation and a far smaller variance when the
  posterior sits away from 0. The stage's own first position is not independent of the draws
  that follow it (the chain has not forgotten it on a short stage), which biased the reading
  low — E[(θ₀ − μ)·H(θ − μ)] > 0 — on cSG-MCMC's short sampling stages; the anchor is half a
  warm-up earlier. It measures the *positions*: a chain whose draws are too spread out (a step size
  too large for its noise, untempered minibatch noise) reads T̂_conf > T. ∇V is the minibatch
  estimate, unbiased, so the average over the sampling steps is unbiased.
* **kinetic temperature** (SGHMC only) T̂_kin = (1/d) Σ_i p_i²/M_i for momentum p ~ N(0, T·M):
  E = T. In the samplers' parametrisation v = hM⁻¹p, G = h²M⁻¹ and the friction α of
  `pyro_bdl.inference.sgmcmc.kernels`, the discrete momentum recursion has stationary
  variance G·T/(1 − α/2) in a flat direction, so T̂_kin = (1/d) Σ_i v_i² (1 − α_i/2) / G_i.

Both are recorded at every sampling step of every chain. The reported value is the mean over a
chain's sampling steps, with a confidence interval from batch means: the series is cut into
10 contiguous batches and mean ± t₀.₉₇₅,₉ · sd(batch means)/√10 is the 95% interval, which
accounts for the autocorrelation of the chain as long as a batch is longer than it (the
per-step estimates are noisy — a minibatch gradient, one draw — so the interval is wide
unless the chain is long).

A [`SamplerWarning`][pyro_bdl.evaluate.diagnostics.SamplerWarning] is issued when a chain's interval excludes T *and* the estimate is
off by more than ``tolerance`` (default 30%) relatively (chains with fewer than 20 sampling
steps have no interval and are not judged): the first condition says the gap is
not Monte Carlo error, the second that it matters. It is also issued when a chain's interval is
so wide (half-width > ``max_spread`` × T, default 1) that it cannot tell T from 0 or 2T: such a
reading certifies nothing, whatever its mean (a few steps with extreme values dominate the
batch means — a transient at the start of a sampling stage, a chain still moving — or the
chain has too few sampling steps). Under random reshuffling (each epoch
visits every point once) the minibatch noise cancels over an epoch, so it barely widens the
positions but can heat the momentum: a high T̂_kin with T̂_conf ≈ T is that, not a bad sampler.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Sequence

import torch

NUM_BATCHES = 10
T_QUANTILE = 2.262  # Student t, 0.975 quantile, 9 degrees of freedom
TOLERANCE = 0.3
#: an interval whose half-width exceeds this multiple of T cannot certify the run (`unreliable`)
MAX_SPREAD = 1.0
NAMES = ("configurational_temperature", "kinetic_temperature")


class SamplerWarning(UserWarning):
    """An SG-MCMC chain's measured (kinetic or configurational) temperature disagrees with the
    temperature it targets: the draws do not follow p_T (see `pyro_bdl.diagnostics.sampler`)."""


def kinetic_temperature(momentum: torch.Tensor, step_size, friction) -> float:
    """T̂_kin = (1/d) Σ_i v_i² (1 − α_i/2) / G_i for one SGHMC state (momentum v, step G, friction α)."""
    return float((momentum * momentum * (1 - torch.as_tensor(friction) / 2) / step_size).mean())


def configurational_temperature(offset: torch.Tensor, grad: torch.Tensor) -> float:
    """T̂_conf = (1/d) (θ − θ₀)·ĝ, ``offset`` = θ − θ₀, ĝ the (minibatch) gradient of V = T·U_T at θ."""
    return float((offset * grad).mean())


def mean_with_interval(series: Sequence[float]) -> torch.Tensor:
    """``[mean, low, high]`` of a chain's per-step series with the batch-means 95% interval
    (module docs); the interval is NaN with fewer than 2 values per batch."""
    x = torch.as_tensor(list(series), dtype=torch.float64)
    if len(x) == 0:
        return torch.full((3,), math.nan, dtype=torch.float64)
    mean = float(x.mean())
    n = len(x) // NUM_BATCHES
    if n < 2:
        return torch.tensor([mean, math.nan, math.nan], dtype=torch.float64)
    means = x[len(x) - n * NUM_BATCHES:].reshape(NUM_BATCHES, n).mean(1)
    half = T_QUANTILE * float(means.std()) / math.sqrt(NUM_BATCHES)
    return torch.tensor([mean, mean - half, mean + half], dtype=torch.float64)


def disagreements(estimates: Dict[str, torch.Tensor], temperature: float,
                  tolerance: float = TOLERANCE) -> List[str]:
    """Lines naming every chain whose temperature estimate (``{name: (chains, 3)}``, as in an
    SG-MCMC posterior's ``info``) excludes ``temperature`` from its interval by more than
    ``tolerance`` relatively."""
    lines = []
    for name, table in estimates.items():
        for c, (mean, low, high) in enumerate(table.tolist()):
            if not (math.isfinite(mean) and math.isfinite(low) and math.isfinite(high)):
                continue  # too few sampling steps to tell Monte Carlo error from a real gap
            if not low <= temperature <= high and abs(mean / temperature - 1) > tolerance:
                kind = name.split("_")[0]
                lines.append(f"chain {c}: {kind} temperature {mean:.3g} (95% interval {low:.3g} to {high:.3g}) "
                             f"vs target T = {temperature:g}")
    return lines


def unreliable(estimates: Dict[str, torch.Tensor], temperature: float, max_spread: float = MAX_SPREAD) -> List[str]:
    """Lines naming every chain whose temperature interval (``{name: (chains, 3)}``) is too wide to judge:
    half-width > ``max_spread`` × ``temperature``, so it cannot tell T from 0 or 2T."""
    lines = []
    for name, table in estimates.items():
        for c, (mean, low, high) in enumerate(table.tolist()):
            if not (math.isfinite(low) and math.isfinite(high)):
                continue
            if (high - low) / 2 > max_spread * temperature:
                kind = name.split("_")[0]
                lines.append(f"chain {c}: {kind} temperature {mean:.3g} (95% interval {low:.3g} to {high:.3g}) "
                             f"vs target T = {temperature:g}")
    return lines


def warn_if_off(estimates: Dict[str, torch.Tensor], temperature: float, method: str,
                tolerance: float = TOLERANCE, max_spread: float = MAX_SPREAD, hint: str = "") -> None:
    """Issue a [`SamplerWarning`][pyro_bdl.evaluate.diagnostics.SamplerWarning] listing the chains that
    `disagreements` finds, and those whose interval is too wide to judge (`unreliable`), with the fix
    (``hint``: what the run's own settings add to it)."""
    off = disagreements(estimates, temperature, tolerance)
    wide = [line for line in unreliable(estimates, temperature, max_spread) if line not in off]
    parts = []
    if off:
        parts.append(
            f"{method} does not sample its target p_T: " + "; ".join(off) + ". A measured temperature above T "
            "means the step is too large for the curvature or the minibatch noise: lower lr (with a preconditioner, "
            "keep the default lr=None and preconditioner='fisher'), use larger batches, or raise momentum_decay; one "
            "below T means the chain has not mixed: run more epochs or a longer burn-in." + (f" {hint}" if hint else ""))
    if wide:
        parts.append(
            f"{method}'s sampler diagnostics are unreliable: " + "; ".join(wide) + f". An interval wider than "
            f"±{max_spread:g}·T cannot tell T from 0 or 2T, so it certifies nothing: a few sampling steps with "
            "extreme values dominate (a transient at the start of a sampling stage, a chain still moving; see "
            "sample_stats for the draws concerned) or the chains have too few sampling steps. Run more epochs "
            "(longer sampling stages) before trusting these draws.")
    if parts:
        warnings.warn(" ".join(parts), SamplerWarning, stacklevel=4)


def temperature_rows(posterior):
    """The temperature estimates of an SG-MCMC posterior as rows for
    [`pyro_bdl.diagnostics.summary`][pyro_bdl.evaluate.diagnostics.summary] (empty when the posterior has none)."""
    import pandas as pd

    info = getattr(posterior, "info", None) or {}
    rows, index = [], []
    target = info.get("temperature")
    for name in NAMES:
        table = info.get(name)
        if table is None:
            continue
        for c, (mean, low, high) in enumerate(torch.as_tensor(table).tolist()):
            index.append(f"{name}[{c}]")
            rows.append({"kind": "sampler", "input": -1, "output": c, "mean": mean, "ci_low": low,
                         "ci_high": high, "target": target})
    return pd.DataFrame(rows, index=index)
