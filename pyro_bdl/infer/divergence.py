"""One divergence check for every optimisation loop (SVI, MAP, ensembles, SWAG; SG-MCMC reuses it).

A run has *diverged* when its loss

* is not finite (NaN or ±inf);
* grows by orders of magnitude past its start: ``loss − floor > growth · max(start − floor, unit)``
  (``growth = 100``), where ``start`` is the first loss and ``unit`` one nat per data point at
  temperature T (``N/T`` for a total loss), so a well-started run bouncing around is never stopped;
* falls below any attainable value: ``loss < floor − max(start − floor, unit)``.

The floor is a valid lower bound of the loss (`loss_floor`), from the model's trace.
With ``a`` the prior's tempering factor (1/T for posterior tempering, 1 for likelihood
tempering) and ``s = (1/T)·N/B`` the likelihood's:

* likelihood part ``s · Σ −log p(yᵢ | w)``: ≥ 0 for discrete likelihoods (Categorical,
  Bernoulli: a probability is at most 1); for a continuous likelihood with a *fixed* scale,
  ≥ s · Σ −log p(mode) (e.g. N·½log(2πσ²)/T for a Gaussian); unbounded (no floor) when the
  noise scale is learned or predicted (σ → 0 drives the density to infinity);
* prior part of a point estimate (MAP, ensembles, SWAG's SGD): ``a · (−log p(w)) ≥ −a · log p(mode)``
  for every site whose prior has a mode (Normal, Laplace, Student-t, …);
* prior part of the negative ELBO, ``E_q[−a log p(w)] − H(q)``: its minimum over all densities q
  is ``−log ∫ p(w)^a dw`` (Gibbs' variational principle: the minimiser is q ∝ p^a). At T = 1
  (``a = 1``) that is 0 — the KL divergence is non-negative — for any prior; for ``a ≠ 1`` it is
  ``−[(1 − a)/2 · log(2πσ²) − ½ log a]`` per coordinate of a Normal(·, σ) prior and
  ``−[(1 − a) log(2b) − log a]`` of a Laplace(·, b); other priors at ``a ≠ 1`` give no floor.

The ELBO bound holds for the expectation; a one-sample estimate fluctuates around it by a few
nats, far less than the slack ``max(start − floor, unit)``. A floor of −∞ turns the lower check off.

The check costs one comparison of a Python float per step: loops pass the loss value they
already read for their history (no extra host synchronisation).
"""
from __future__ import annotations

import math
from typing import Optional

import pyro.distributions as dist
import torch
from pyro import poutine

from ..model.bayesian_model import BayesianModel
from ..model.lifting import latent_sites
from ..model.sites import OBS_SITE

#: how many times its initial excess over the floor a loss may grow before the run is stopped
GROWTH = 100.0


class DivergenceError(FloatingPointError):
    """An optimisation or sampling run diverged (its loss left the range a working run can reach).

    ``what`` is the symptom alone (method, step, loss and why) and ``step`` the step, so that a caller that
    knows the cause better than the learning rate can re-raise with its own fix."""

    what: str = ""
    step: Optional[int] = None


class DivergenceCheck:
    """Stop a run whose loss diverges; call ``check(loss, step)`` with each step's loss value.

    Args:
        method: the method's name, for the message (``"svi"``, ``"swag"``, ...).
        lr: the learning rate in use (named in the message with the fix).
        floor: a valid lower bound of the loss (`loss_floor`; ``-inf``: none).
        unit: the loss of one nat per data point (``N/T`` for total losses, ``1/T`` per data point).
        growth: how many times its initial excess over the floor the loss may grow.

    The first finite loss checked is the start. Raises `DivergenceError` (a
    ``FloatingPointError``) naming the loss, the step, the learning rate and the fix.
    """

    def __init__(self, method: str, lr: float, floor: float = -math.inf, unit: float = 1.0,
                 growth: float = GROWTH):
        if not unit > 0 or not growth > 1:
            raise ValueError(f"unit must be > 0 and growth > 1, got unit={unit!r}, growth={growth!r}")
        self.method, self.lr, self.floor, self.unit, self.growth = method, lr, float(floor), float(unit), float(growth)
        self.start: Optional[float] = None

    def _fail(self, value: float, step: int, why: str, lr: Optional[float]) -> None:
        now = "" if lr is None or math.isclose(lr, self.lr) else f", {lr:g} at this step of its schedule"
        what = f"{self.method} diverged at step {step}: the loss is {value:.4g}, {why}"
        err = DivergenceError(f"{what}. Lower the learning rate (lr={self.lr:g}{now}; try lr={self.lr / 10:g}) or "
                              "check the data scale (standardise inputs and regression targets).")
        err.what, err.step = what, step
        raise err

    def check(self, value: float, step: int, lr: Optional[float] = None) -> None:
        """Raise `DivergenceError` if ``value`` (this step's loss) shows divergence.
        ``lr``: the current learning rate when a schedule changes it."""
        if not math.isfinite(value):
            self._fail(value, step, "not finite", lr)
        if self.start is None:
            self.start = value
            if value < self.floor - self.unit:
                self._fail(value, step, f"below the smallest attainable value {self.floor:.4g}", lr)
            return
        base = self.floor if math.isfinite(self.floor) else self.start
        excess = max(self.start - base, self.unit, abs(self.start) if not math.isfinite(self.floor) else 0.0)
        if value - base > self.growth * excess:
            self._fail(value, step, f"more than {self.growth:g} times its initial excess {excess:.4g} over "
                       f"{'the attainable minimum' if math.isfinite(self.floor) else 'its start'} {base:.4g}", lr)
        if value < self.floor - excess:
            self._fail(value, step, f"below the smallest attainable value {self.floor:.4g}", lr)


def _base(fn):
    while isinstance(fn, (dist.Independent, torch.distributions.Independent)):
        fn = fn.base_dist
    return fn


def _max_log_density(fn) -> float:
    """Σ log p(mode) of a site's distribution (its largest log density), or +inf when unknown."""
    try:
        return float(fn.log_prob(fn.mode).sum())
    except (NotImplementedError, AttributeError, ValueError, RuntimeError):
        return math.inf


def _log_integral_of_power(fn, a: float) -> float:
    """log ∫ p(w)^a dw summed over the site's coordinates (0 at a = 1), +inf when unknown."""
    if a == 1.0:
        return 0.0
    base = _base(fn)
    size = float(torch.Size(fn.batch_shape + fn.event_shape).numel())
    if isinstance(base, torch.distributions.Normal):
        var = torch.broadcast_to(base.scale, fn.batch_shape + fn.event_shape) ** 2
        return float(((1 - a) / 2 * torch.log(2 * math.pi * var)).sum()) - size * 0.5 * math.log(a)
    if isinstance(base, torch.distributions.Laplace):
        b = torch.broadcast_to(base.scale, fn.batch_shape + fn.event_shape)
        return float(((1 - a) * torch.log(2 * b)).sum()) - size * math.log(a)
    return math.inf


def loss_floor(model: BayesianModel, x: torch.Tensor, y: torch.Tensor, dataset_size: int,
               kind: str = "point") -> float:
    """A lower bound of the loss −log p̃(D, w) (``kind="point"``) or of the negative ELBO
    (``kind="elbo"``) of ``model`` on N = ``dataset_size`` points, from one trace on a batch
    ``(x, y)`` (module docs give the maths). ``-inf`` when no bound is known."""
    if kind not in ("point", "elbo"):
        raise ValueError(f"kind must be 'point' or 'elbo', got {kind!r}")
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(model).get_trace(x, y, dataset_size)
    floor = 0.0
    latent = latent_sites(trace)
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or (name not in latent and not site["is_observed"]):
            continue
        fn, scale = site["fn"], float(site["scale"])
        if site["is_observed"]:
            if _base(fn).support.is_discrete:
                continue  # −log p(y | w) ≥ 0
            lik = model.likelihood
            if getattr(lik, "learned", True) or getattr(lik, "heteroskedastic", True):
                return -math.inf  # a learned or predicted noise scale has no floor
            floor -= scale * _max_log_density(fn)
        elif kind == "point":
            if not _base(fn).support == torch.distributions.constraints.real:
                return -math.inf  # SWAG's unconstrained potential adds an unbounded Jacobian here
            floor -= scale * _max_log_density(fn)
        else:
            floor -= _log_integral_of_power(fn, scale)
    return floor if math.isfinite(floor) else -math.inf


def nonfinite_start_message(trace, value: float) -> str:
    """Why the loss ``value`` is not finite at step 0, from a model ``trace`` at the starting point (its log probs
    computed): the sites whose log density is not finite there, and where to look. Shared by every method whose
    first loss is already non-finite (``svi``'s guide draw, ``map``'s start)."""
    bad = [name for name, site in trace.nodes.items()
           if site["type"] == "sample" and not torch.isfinite(site["log_prob_sum"])]
    where = (f"the log density of site(s) {bad} is not finite there" if bad else "the log joint is not finite there")
    hint = ("; a prior scale far below the weights' size overflows float32 (log N(w | 0, s) ≈ -w²/2s²): "
            "check the prior's scale" if bad and all(b != OBS_SITE for b in bad) else
            "; check the likelihood (noise scale, labels) and the data")
    return (f"the loss is {value} at the starting point (step 0, before any update), so the learning rate is not "
            f"the cause: {where}{hint}.")
