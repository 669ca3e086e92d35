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
  definitions the Pyro model uses. On one flat θ of shape ``(P,)`` the per-step hot path
  (`_FlatPotential`) evaluates the same density without building distributions: θ is split once
  into per-site views, iid Gaussian / Laplace / Student-t priors are closed forms with their constants
  precomputed (`pyro_bdl.priors.closed_form`), the network is called through
  [`LiftedNetwork.functional_forward`][pyro_bdl.LiftedNetwork] (no shape checks) and the likelihood
  through its closed-form `log_prob_sum` (no validation). It is a pure function of θ — no
  ``.item()``, no in-place update, no branch on values — so ``torch.func.vmap`` stacks ensemble members
  or chains over a leading dim of θ. On its first call the compiled density is checked against the
  traced one at a point near the start; a mismatch raises, naming both values.
* **traced**: [`BayesianModel.log_joint`][pyro_bdl.BayesianModel], used for hierarchical priors (a prior that draws its
  hyperparameters with ``pyro.sample``) and whenever ``compiled=False``.
"""
from __future__ import annotations

import inspect
import math
from typing import Dict, List, Mapping, Optional, Tuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch.distributions import biject_to
from torch.distributions.transforms import IndependentTransform, Transform, identity_transform

from .bayesian_model import BayesianModel
from .inputs import take_rows
from .lifting import latent_sites
from ..priors.base import Prior
from ..priors.closed_form import FlatLogDensity, flat_log_density
from ..priors.combinators import as_prior
from . import tempering
from .layout import WeightLayout
from .sites import OBS_SITE
from .stacked_mlp import stacked_forward, stacked_plan


def _is_identity(transform: Transform) -> bool:
    """True for the identity map, also when wrapped as ``IndependentTransform`` (a weight site's support
    is ``independent(real, k)``, whose bijection is the identity reinterpreted over k dims)."""
    while isinstance(transform, IndependentTransform):
        transform = transform.base_transform
    return transform == identity_transform


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
        self._identity = {n for n, t in self.transforms.items() if _is_identity(t)}
        self._fast: Optional[_FlatPotential] = None  # the hot path, built from the compiled priors at first use
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
            out[site] = self.model.likelihood.noise_prior(self.model.device, self.model.dtype)
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
        """Check the compiled density against the Pyro trace at a point near the start (once, on the first batch).

        Both compiled evaluations are checked: the one on site values (`log_joint`) and the flat hot
        path on θ (`log_density`), which is built here from the compiled priors.
        """
        self._fast = _FlatPotential(self)
        with torch.no_grad():
            start = self.initial()
            # A fixed pseudo-random point near the start, drawn without an RNG: the first call may run
            # inside torch.func.vmap, which refuses random operations.
            step = torch.arange(1, self.size + 1, dtype=start.dtype, device=start.device)
            theta = start + 0.1 * torch.sin(12.9898 * step)
            values, log_dets = self.constrain(theta)
            log_det = float(sum(log_dets.values(), torch.zeros(())))
            compiled = float(self._compiled_log_joint(values, x, y, dataset_size))
            flat = float(self._fast(theta, x, y, dataset_size)) - log_det
            traced = float(self.model.log_joint(values, x, y, dataset_size))
        for name, value in (("compiled", compiled), ("flat compiled", flat)):
            if not math.isclose(value, traced, rel_tol=1e-4, abs_tol=1e-3):
                self._fast = None
                raise RuntimeError(f"the {name} log density ({value:.6g}) differs from the Pyro trace's ({traced:.6g}) "
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

    def prior_curvature(self) -> torch.Tensor:
        r"""A lower bound on the diagonal of the Hessian of −log p̃ per coordinate of θ, from the prior alone:
        ``s_prior / Var_prior(w_i)`` for weights with a finite prior variance (``s_prior`` the tempering factor
        of the prior, `pyro_bdl.model.tempering.prior_scale`), 0 elsewhere (constrained sites, hyperpriors, a
        traced density, infinite variance).

        For a Gaussian prior N(μ, σ²) it is exactly the prior's share s_prior/σ² of H_ii, and since
        H = H_likelihood + H_prior with H_likelihood ⪰ 0 in expectation (its Fisher information),
        E[ĝ_i²] ≥ H_ii ≥ s_prior/σ_i² at stationarity. Adaptive samplers floor their curvature estimates at it:
        a coordinate whose gradient happened to be ≈ 0 in a short estimation window (a dead ReLU unit) would
        otherwise get a step G_i ∝ 1/E[ĝ_i²] without bound."""
        out = torch.zeros(self.size, dtype=self.initial().dtype, device=self.initial().device)
        if not self.compiled:
            return out
        s_prior = tempering.prior_scale(self.model.temperature, self.model.tempering)
        offset = 0
        for name, shape in zip(self.layout.names, self.layout.shapes):
            n = int(torch.Size(shape).numel())
            d = self._priors.get(name)
            if name in self._identity and d is not None:
                try:
                    var = d.variance
                except (NotImplementedError, AttributeError):
                    var = None
                if var is not None:
                    var = torch.as_tensor(var, dtype=out.dtype, device=out.device).expand(shape).reshape(-1)
                    prec = torch.where(torch.isfinite(var) & (var > 0), 1.0 / var, torch.zeros_like(var))
                    out[offset:offset + n] = s_prior * prec
            offset += n
        return out

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
        """log p̃(D, w(θ)) + log|det ∂w/∂θ| on a (mini)batch; differentiable in θ.

        For one θ of shape ``(P,)`` on a compiled model this is the flat hot path (closed-form priors
        on chunks of θ, the network called on views of θ, the likelihood's `log_prob_sum`): a pure
        function of θ, so ``torch.func.vmap`` stacks members or chains over a leading dim of θ.
        """
        if self.compiled and theta.dim() == 1:
            if not self._verified:
                self._verify(x, y, dataset_size)
            return self._fast(theta, x, y, dataset_size)
        values, log_dets = self.constrain(theta)
        log_det = sum(log_dets.values(), torch.zeros((), dtype=theta.dtype, device=theta.device))
        return self.log_joint(values, x, y, dataset_size) + log_det

    def potential(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                  dataset_size: Optional[int] = None) -> torch.Tensor:
        """U(θ) = −log density (what optimisers minimise and samplers use as energy)."""
        return -self.log_density(theta, x, y, dataset_size)

    def stacked_potential(self, theta: torch.Tensor, x, y: torch.Tensor, dataset_size: Optional[int] = None,
                          shared: bool = False) -> Optional[torch.Tensor]:
        """U at each row of θ ``(K, P)``, ``(K,)``, with the K forward passes of a plain-MLP network batched by hand
        (`_FlatPotential.stacked`); ``x``, ``y`` hold each run's rows ``(K, B, ...)`` or one batch for all
        (``shared``). ``None`` where this path does not apply (a traced or not yet verified density, another
        network): the caller vmaps `potential` instead, which gives the same numbers."""
        if not self.compiled or not self._verified or self._fast is None or theta.dim() != 2:
            return None
        log_q = self._fast.stacked(theta, x, y, dataset_size, shared)
        return None if log_q is None else -log_q

    def grad(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
             dataset_size: Optional[int] = None):
        """``(U(θ), ∇U(θ))`` on a minibatch."""
        theta = theta.detach().requires_grad_(True)
        u = self.potential(theta, x, y, dataset_size)
        (g,) = torch.autograd.grad(u, theta)
        return u.detach(), g


class _FlatPotential:
    """The compiled log density as a function of one flat θ ``(P,)``: the per-step hot path.

        log q(θ) = s_prior·[Σ_terms log p(θ_terms) + Σ_other log p(w_s)] + s_lik·(N/B)·Σᵢ log p(yᵢ | f(xᵢ; w), σ)
                   + Σ_other log|det ∂w_s/∂u_s|.

    θ is split once into one chunk per site (views, no copies). Weight sites with an identity transform
    are their chunks; their priors are `FlatLogDensity` terms on those chunks, adjacent sites with the
    same constant hyperparameters merged into one (an iid Gaussian prior over every layer is one squared
    norm of θ).
    Other sites (a learned noise scale, a weight with a constrained prior support) are transformed and
    use their own distribution. The network gets views of θ reshaped to each parameter's shape, through
    `LiftedNetwork.functional_forward` (no shape checks). Built from
    ``objective._priors`` at the first call, then checked against the trace (`Objective._verify`).
    """

    def __init__(self, objective: Objective):
        model = objective.model
        self.model = model
        self.network = model.network
        self.likelihood = model.likelihood
        names = objective.layout.names
        self.numels = list(objective.layout.numels)
        shapes = dict(zip(names, objective.layout.shapes))
        index = {name: i for i, name in enumerate(names)}
        identity = objective._identity
        param_of = {model.network.site_name(p): p for p in model.network.param_names}
        # Network parameters on identity sites are views of θ's chunks; every other site is transformed.
        self.views = [(param_of[s], index[s], shapes[s]) for s in model.weight_sites if s in identity]
        self.others = [(s, index[s], shapes[s], objective.transforms[s], objective._priors[s])
                       for s in names if s not in identity]
        self.other_weights = [(param_of[s], s) for s in model.weight_sites if s not in identity]
        self.lik_sites = list(model.likelihood_sites)
        # Prior terms over runs of chunks [i, j) of θ.split(numels); adjacent identity sites whose priors
        # have the same constant hyperparameters share one term.
        terms: List[Tuple[int, int, FlatLogDensity]] = []
        for name in names:
            if name not in identity:
                continue
            i = index[name]
            term = flat_log_density(objective._priors[name], shapes[name])
            if terms and terms[-1][1] == i and terms[-1][2].same_density(term):
                terms[-1] = (terms[-1][0], i + 1, terms[-1][2].merge(term))
            else:
                terms.append((i, i + 1, term))
        self.terms = terms
        self.whole = len(terms) == 1 and (terms[0][0], terms[0][1]) == (0, len(self.numels))
        # K runs' forward passes batched by hand where the network is a plain MLP (`stacked`)
        self._plan = stacked_plan(model.network.net)
        # ...and the prior and likelihood then summed per run in closed form, without vmap: no transformed site, no
        # prior without a closed form, and a likelihood whose `log_prob_sum` takes ``runs`` (a user's may not)
        self._rows = (self._plan is not None and not self.others and all(t.kind != "distribution" for _, _, t in terms)
                      and "runs" in inspect.signature(self.likelihood.log_prob_sum).parameters)

    def __call__(self, theta: torch.Tensor, x, y: torch.Tensor, dataset_size: Optional[int]) -> torch.Tensor:
        # One split: its backward is one concatenation of the pieces' gradients (slicing θ per site would
        # make a θ-sized gradient per site).
        chunks = theta.split(self.numels)
        log_prior, values, log_det = self._prior(theta, chunks)
        params = {p: chunks[i].view(shape) for p, i, shape in self.views}
        for p, site in self.other_weights:
            params[p] = values[site]
        out = self.network.functional_forward(params, x)
        return self._total(log_prior, log_det, values, out, y, dataset_size)

    def stacked(self, theta: torch.Tensor, x, y: torch.Tensor, dataset_size: Optional[int],
                shared: bool) -> Optional[torch.Tensor]:
        """log q at each row of θ ``(K, P)``: ``(K,)``, with the network's K forward passes batched by hand
        (`pyro_bdl.model.stacked_mlp`) and the rest vmapped over the runs; ``x``, ``y``: ``(K, B, ...)`` (each run its
        own rows) or one shared batch (``shared``). ``None`` where the network is not a plain MLP or a weight is
        transformed (the caller vmaps the whole density instead)."""
        if self._plan is None or self.other_weights or isinstance(x, tuple) or x.dim() != (2 if shared else 3):
            return None  # (inputs with more dims, e.g. (B, steps, features), keep vmap: the layers act on the last)
        K = theta.shape[0]
        chunks = theta.split(self.numels, dim=-1)
        params = {p: chunks[i].view(K, *shape) for p, i, shape in self.views}
        fixed = self.network.fixed_names
        if fixed:
            params.update({n: self.network._values[n] for n in fixed})
        out = stacked_forward(self._plan, params, x)
        if self._rows:  # every piece has a per-run closed form (the prior terms reduce over the last dim): no vmap
            log_prior, values, log_det = self._prior(theta, chunks)
            return self._total(log_prior, log_det, values, out, y, dataset_size, runs=1)

        def rest(t, o, yy):
            log_prior, values, log_det = self._prior(t, t.split(self.numels))
            return self._total(log_prior, log_det, values, o, yy, dataset_size)

        return torch.func.vmap(rest, in_dims=(0, 0, None if shared else 0))(theta, out, y)

    def _prior(self, theta: torch.Tensor, chunks) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor],
                                                             Optional[torch.Tensor]]:
        """(s_prior-free log prior, the transformed sites' values, their log-Jacobian) of one flat θ."""
        if self.whole:  # one prior over all of θ (the usual iid prior without learned noise)
            log_prior = self.terms[0][2](theta)
        else:
            log_prior = None
            for i, j, term in self.terms:
                lp = term(*chunks[i:j])
                log_prior = lp if log_prior is None else log_prior + lp
        values, log_det = {}, None
        if self.others:
            with pyro.validation_enabled(False):  # a support check would branch on θ's values (no vmap)
                for site, i, shape, transform, prior in self.others:
                    u = chunks[i].view(shape)
                    v = transform(u)
                    lp = prior.log_prob(v).sum()
                    jac = transform.log_abs_det_jacobian(u, v).sum()
                    values[site] = v
                    log_prior = lp if log_prior is None else log_prior + lp
                    log_det = jac if log_det is None else log_det + jac
        return log_prior, values, log_det

    def _total(self, log_prior, log_det, values, out: torch.Tensor, y: torch.Tensor,
               dataset_size: Optional[int], runs: int = 0) -> torch.Tensor:
        """s_prior·log prior + s_lik·(N/B)·log lik (+ the log-Jacobian) given the network's output (per run of
        ``out``'s first ``runs`` dims)."""
        model = self.model
        s_prior = tempering.prior_scale(model.temperature, model.tempering)
        s_lik = tempering.likelihood_scale(model.temperature, model.tempering)
        n_over_b = 1.0 if dataset_size is None else int(dataset_size) / out.shape[-2]
        params = {s: values[s] for s in self.lik_sites}
        log_lik = self.likelihood.log_prob_sum(out, y, params, runs=runs) if runs else \
            self.likelihood.log_prob_sum(out, y, params)
        total = (s_lik * n_over_b) * log_lik
        if log_prior is not None:
            total = total + s_prior * log_prior
        return total if log_det is None else total + log_det
