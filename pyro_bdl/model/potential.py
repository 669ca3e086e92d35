"""The tempered log posterior as a function of one flat, unconstrained vector.

Gradient-based methods (MAP by SGD, SWAG, SG-MCMC, ensemble members) work on

    U(θ) = −log p̃(D_batch, w(θ)) − log |det ∂w/∂θ|,

where θ ∈ ℝ^P stacks every latent site in [`WeightLayout`][pyro_bdl.WeightLayout] order,
mapped to its support by ``biject_to`` (weights are unconstrained already; a learned noise
scale is log-transformed), and log p̃ is [`BayesianModel.log_joint`][pyro_bdl.BayesianModel] — the model's own
trace, so dataset-size scaling (N/B) and temperature (1/T) are applied exactly as for SVI
and NUTS. The Jacobian term is not tempered: q(θ) = p_T(w(θ)) |∂w/∂θ| is the density whose
pushforward through w(θ) is the tempered posterior (as in Pyro's own HMC potential).

Two evaluations of the same density:

* **compiled** (default whenever the model allows it): no Pyro trace per step. The prior
  distributions are built once (they are constants when the prior draws no hyperparameters), and

      log p̃ = s_prior · [Σ_l log p(w_l) + log p(σ)] + s_lik · (N/B) · Σ_{i∈batch} log p(yᵢ | f(xᵢ; w), σ),

  with s_prior = `prior_scale`, s_lik =
  `likelihood_scale`, f by ``torch.func.functional_call`` and p(y | f)
  from the likelihood's own `distribution` — the same
  definitions the Pyro model uses. On its first call it is checked against the traced density at a
  random point; a mismatch raises, naming both values.
* **traced**: [`BayesianModel.log_joint`][pyro_bdl.BayesianModel], used for hierarchical priors (a prior that draws its
  hyperparameters with ``pyro.sample``) and whenever ``compiled=False``.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Tuple

import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import biject_to
from torch.distributions.transforms import identity_transform

from .bayesian_model import BayesianModel
from .inputs import take_rows
from .lifting import latent_sites
from .._util.random import seeded
from ..priors.base import Prior
from ..priors.combinators import as_prior
from . import tempering
from .layout import WeightLayout
from .sites import OBS_SITE


class Objective:
    """Flat unconstrained parametrisation of every latent site of ``model``, and its tempered log density.

    Args:
        model: the Bayesian model.
        example_x: a few inputs, used once to discover the latent sites and their supports.
        compiled: evaluate the log density without a Pyro trace (see the module docstring);
            ``None`` (default) compiles when the prior draws no hyperparameters.
    """

    def __init__(self, model: BayesianModel, example_x: torch.Tensor, compiled: Optional[bool] = None):
        self.model = model
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(model).get_trace(take_rows(example_x, slice(0, 1)))
        sites = {n: s for n, s in latent_sites(trace).items() if n != OBS_SITE}
        self.transforms = {n: biject_to(s["fn"].support) for n, s in sites.items()}
        shapes = {n: self.transforms[n].inv(s["value"]).shape for n, s in sites.items()}
        self.layout = WeightLayout(tuple(shapes), tuple(torch.Size(v) for v in shapes.values()))
        self._identity = {n for n, t in self.transforms.items() if t == identity_transform}
        compilable = self._compilable(sites)
        if compiled and not compilable:
            raise ValueError("compiled=True needs a prior without hyperprior sites (every latent site a weight or "
                             f"the likelihood's noise); this model has {sorted(set(sites) - self._known_sites())}. "
                             "Use compiled=None or False (the traced density).")
        self.compiled = compilable if compiled is None else bool(compiled)
        self._verified = not self.compiled
        if self.compiled:
            self._priors = self._prior_distributions()

    # -- the compiled density -------------------------------------------------------------
    def _known_sites(self):
        return set(self.model.weight_sites) | set(self.model.likelihood_sites)

    def _compilable(self, sites) -> bool:
        prior = self.model.network.prior
        if not getattr(self.model, "compilable", True):  # a user's own Pyro model: only its trace knows the density
            return False
        if not isinstance(prior, Prior) and not isinstance(prior, (dist.Distribution, Mapping)):
            return False  # a function: it may draw hyperparameters inside the trace
        return not getattr(as_prior(prior), "hierarchical", False) and set(sites) == self._known_sites()

    def _prior_distributions(self) -> Dict[str, dist.Distribution]:
        net = self.model.network
        prior = as_prior(net.prior)
        out = {net.site_name(n): prior.distribution(net.site_name(n), net._values[n], net.owner(n)) for n in net.param_names}
        for site in self.model.likelihood_sites:
            out[site] = self.model.likelihood.scale_prior
        return out

    def _compiled_log_joint(self, values: Dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                            dataset_size: Optional[int]) -> torch.Tensor:
        model = self.model
        s_prior = tempering.prior_scale(model.temperature, model.tempering)
        s_lik = tempering.likelihood_scale(model.temperature, model.tempering)
        log_prior = sum(d.log_prob(values[name]).sum() for name, d in self._priors.items())
        weights = {k: values[k] for k in model.weight_sites}
        params = {k: values[k] for k in model.likelihood_sites}
        out = model.forward(weights, x)
        batch = out.shape[-2]
        n_over_b = 1.0 if dataset_size is None else int(dataset_size) / batch
        log_lik = model.likelihood.distribution(out, params).log_prob(y).sum()
        return s_prior * log_prior + (s_lik * n_over_b) * log_lik

    def _verify(self, x: torch.Tensor, y: torch.Tensor, dataset_size: Optional[int]) -> None:
        """Check the compiled density against the Pyro trace at a random point (once, on the first batch)."""
        with torch.no_grad(), seeded(0):
            start = self.initial()
            theta = start + 0.1 * torch.randn(self.size, dtype=start.dtype, device=start.device)  # near the start
            values = self.constrain(theta)[0]
            compiled = float(self._compiled_log_joint(values, x, y, dataset_size))
            traced = float(self.model.log_joint(values, x, y, dataset_size))
        if not math.isclose(compiled, traced, rel_tol=1e-4, abs_tol=1e-3):
            raise RuntimeError(f"the compiled log density ({compiled:.6g}) differs from the Pyro trace's ({traced:.6g}) "
                               "for this model; pass compiled=False to use the trace, and please report the model.")
        self._verified = True

    def log_joint(self, values: Dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                  dataset_size: Optional[int] = None) -> torch.Tensor:
        """The tempered log joint log p̃(D_batch, w) at constrained ``values`` (compiled or traced)."""
        if not self.compiled:
            return self.model.log_joint(values, x, y, dataset_size)
        if not self._verified:
            self._verify(x, y, dataset_size)
        return self._compiled_log_joint(values, x, y, dataset_size)

    @property
    def size(self) -> int:
        return self.layout.size

    def to_unconstrained(self, values: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Constrained site values -> flat θ."""
        return self.layout.flatten({n: self.transforms[n].inv(values[n]) for n in self.layout.names})

    def to_constrained(self, theta: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Flat θ ``(..., P)`` -> constrained site values ``{site: (..., *shape)}``."""
        return {n: self.transforms[n](u) for n, u in self.layout.unflatten(theta).items()}

    def initial(self, values: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """θ at ``values`` (default: the model's initial values: the network's current weights)."""
        return self.to_unconstrained(values if values is not None else self.model.initial_values()).detach().clone()

    def constrain(self, theta: torch.Tensor) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
        """Flat θ ``(..., P)`` -> ``(values, log_dets)``: each site's constrained value w = t(u) and its
        log|det ∂w/∂u| summed over the site's own dims (shape ``(...,)``). The one place the change of
        variables is computed: the potential, the SWAG guide's point mass and the samplers all use it."""
        values, log_dets = {}, {}
        parts = self.layout.unflatten(theta)
        for name, shape in zip(self.layout.names, self.layout.shapes):
            u, t = parts[name], self.transforms[name]
            if name in self._identity:  # weights: unconstrained already, log|det| = 0 (skipped on the hot path)
                values[name] = u
                continue
            v = t(u)
            log_det = t.log_abs_det_jacobian(u, v)
            if len(shape):
                log_det = log_det.reshape(*log_det.shape[: log_det.dim() - len(shape)], -1).sum(-1)
            values[name], log_dets[name] = v, log_det
        return values, log_dets

    def log_density(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                    dataset_size: Optional[int] = None) -> torch.Tensor:
        """log p̃(D, w(θ)) + log|det ∂w/∂θ| on a (mini)batch; differentiable in θ."""
        values, log_dets = self.constrain(theta)
        log_det = sum(log_dets.values(), torch.zeros((), dtype=theta.dtype, device=theta.device))
        return self.log_joint(values, x, y, dataset_size) + log_det

    def potential(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                  dataset_size: Optional[int] = None) -> torch.Tensor:
        """U(θ) = −log density (what optimisers minimise and samplers use as energy)."""
        return -self.log_density(theta, x, y, dataset_size)

    def grad(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             dataset_size: Optional[int] = None):
        """``(U(θ), ∇U(θ))`` on a minibatch."""
        theta = theta.detach().requires_grad_(True)
        u = self.potential(theta, x, y, dataset_size)
        (g,) = torch.autograd.grad(u, theta)
        return u.detach(), g
