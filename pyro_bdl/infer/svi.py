"""Stochastic variational inference with Pyro autoguides.

SVI maximises the ELBO of the (tempered) model,

    ELBO(q) = E_q[log p̃(D, w)] − E_q[log q(w)],

with log p̃ from [`BayesianModel.log_joint`][pyro_bdl.BayesianModel] semantics (the Pyro trace), so minibatches
are scaled by N/B through the data plate and temperature through ``poutine.scale``.
Guides: ``"normal"`` (mean-field, AutoNormal), ``"lowrank"`` (AutoLowRankMultivariateNormal),
``"fullrank"`` (AutoMultivariateNormal), or any Pyro guide object.

(MAP has its own step rule on the compiled potential, `pyro_bdl.infer.map`; ``optimise`` still takes
``floor_kind="point"`` for a user's AutoDelta guide.)

Guide parameters are module-local (``pyro.settings module_local_params``): no global
parameter store, and the optimiser is a plain ``torch.optim.Adam`` with an exponential
decay from ``lr`` to ``lr * lr_decay`` over the run.

The loop is the one driver's (`pyro_bdl.infer.driver`): `SVIRule` is SVI's step rule (one Adam step
on the negative ELBO per minibatch), and the driver owns the data order (seeded per run), the
blocked divergence checks, progress, the checkpoint (`checkpoint=path`, bit-identical resume) and
the ``info`` schema. The ELBO itself is still evaluated by Pyro's traces of model and guide (any
Pyro guide works); the compiled potential that map/swag/SG-MCMC step on is not used here.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import pyro
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import (AutoLowRankMultivariateNormal, AutoMultivariateNormal, AutoNormal,
                                  init_to_value)
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn import PyroParam
from torch.distributions import constraints

from ..model.bayesian_model import BayesianModel
from ..model.lifting import latent_sites
from ..model.tempering import likelihood_scale
from ..posterior.mixture import MixturePosterior
from ..posterior.samples import GuidePosterior
from .._util import checkpoint as ckpt
from .._util.checks import check_int, is_invalid_parameter_error
from .._util.random import seeded, spawn_seeds
from .data import FitData
from .divergence import DivergenceCheck, loss_floor, nonfinite_start_message
from . import driver
from .map import check_newton_steps, example_batch, start_values
from .options import run_length
from .registry import register
from .stationarity import (STATIONARITY_TOLERANCE, StationarityWarning,  # noqa: F401 (re-exported)
                           full_chunks, full_gradient, full_value)
from ..model.potential import Objective

GUIDES = {"normal": AutoNormal, "lowrank": AutoLowRankMultivariateNormal, "fullrank": AutoMultivariateNormal}


#: the guide sd of sites the curvature estimate does not cover (constrained sites: a learned noise scale, ...),
#: and the largest initial sd of init_scale="auto" (see `initialise_scales`)
FALLBACK_SCALE = 0.01
#: minibatches for the Fisher estimate behind init_scale="auto" (relative error of each entry ≈ √(2/32) = 25%)
FISHER_BATCHES = 32


def make_guide(model: BayesianModel, guide: Union[str, Any], init_scale: Union[float, str], rank: Optional[int],
               start: Optional[Dict[str, torch.Tensor]] = None):
    """The built-in guide ``guide`` with its means at ``start`` (default: the model's initial values)."""
    init = init_to_value(values=model.initial_values() if start is None else start)
    if not isinstance(guide, str):
        return guide
    if guide not in GUIDES:
        raise ValueError(f"unknown guide {guide!r}; choose one of {sorted(GUIDES)} or pass a Pyro guide object")
    scale = FALLBACK_SCALE if init_scale == "auto" else float(init_scale)
    if guide == "lowrank":
        return AutoLowRankMultivariateNormal(model, init_loc_fn=init, init_scale=scale, rank=rank)
    return GUIDES[guide](model, init_loc_fn=init, init_scale=scale)


def _check_init_scale(init_scale) -> None:
    if init_scale == "auto":
        return
    if isinstance(init_scale, str) or not isinstance(init_scale, (int, float)) or not init_scale > 0:
        raise ValueError(f"init_scale must be \"auto\" or a positive number (the guide's initial sd), got {init_scale!r}")


def curvature_scales(model: BayesianModel, data: FitData, values: Dict[str, torch.Tensor],
                     generator: torch.Generator, num_batches: int = FISHER_BATCHES) -> Dict[str, torch.Tensor]:
    """Per-coordinate sd 1/√Λ_kk of the tempered posterior's diagonal precision at ``values``, estimated.

    Λ_kk = a / Var_prior(w_k) + (1/T)·Σᵢ F_kk(xᵢ), with ``a`` the prior's tempering factor and F the
    Fisher information of one data point, E_{y∼p(y|x,w)}[(∂_k log p(y | x, w))²]: the expected
    Hessian of −log p(y | x, w) (Gauss–Newton), so it is right away from the mode too, where the
    empirical Fisher of the observed y would count the residuals. It is measured without per-example
    gradients: with labels ŷ drawn from the model, the scores of different data points are
    independent with mean zero, so the squared gradient of a minibatch's (scaled) log-likelihood is
    an unbiased estimate of the minibatch's summed Fisher; ``num_batches`` i.i.d. minibatches are
    averaged. For a Gaussian posterior these are the mean-field optimum's sds, 1/√Λ_kk (Bishop 2006,
    §10.1.2). Sites with constrained support (a learned noise scale) are left out.
    """
    with torch.no_grad(), poutine.block():
        prototype = poutine.trace(model).get_trace(*next(data.random_batches(1, generator)), data.dataset_size)
    observed = [name for name, site in prototype.nodes.items() if site["type"] == "sample" and site["is_observed"]]
    if len(observed) != 1:  # a user's Pyro model with several observed sites: no Fisher estimate (fallback sds)
        return {}
    obs = observed[0]  # OBS_SITE for a BayesianModel; a user's lift-based model names its own
    real = [name for name, site in latent_sites(prototype).items()
            if name != obs and name in values and _is_real(site["fn"].support)]
    if not real:
        return {}
    precision = {}
    for name in real:
        site = prototype.nodes[name]
        var = site["fn"].variance.expand(site["value"].shape)
        scale = site["scale"] if site["scale"] is not None else 1.0
        precision[name] = torch.where(torch.isfinite(var) & (var > 0), scale / var, torch.zeros_like(var)).detach()
    leaves = {name: values[name].detach().clone().requires_grad_(True) for name in real}
    fisher = {name: torch.zeros_like(leaf) for name, leaf in leaves.items()}
    N = data.dataset_size
    for xb, _ in data.random_batches(num_batches, generator):
        with torch.no_grad(), poutine.block():
            drawn = poutine.trace(poutine.condition(model, data=values)).get_trace(xb, None, N).nodes
        if obs not in drawn:  # a model that does not sample its likelihood without targets: no Fisher estimate
            return {}
        y_model = drawn[obs]["value"]
        trace = poutine.trace(poutine.condition(model, data={**values, **leaves})).get_trace(xb, y_model, N)
        site = trace.nodes[obs]
        log_lik = (site["fn"].log_prob(site["value"]) * site["scale"]).sum()
        grads = torch.autograd.grad(log_lik, list(leaves.values()), allow_unused=True)
        for name, g in zip(leaves, grads):
            if g is not None:  # E[g²] = s²·Σ_batch F with s = (1/T)·N/B, so g²/s estimates (1/T)·N·F̄
                fisher[name] += g.detach() ** 2 / (site["scale"] * num_batches)
    return {name: (precision[name] + fisher[name]).rsqrt() for name in real}


#: antithetic pairs of guide draws behind `stationarity_offsets` (one pair is exact for a Gaussian target)
STATIONARITY_PAIRS = 2


def _full_data_potential(model: BayesianModel, data: FitData, names, sizes, shapes, objective: Optional[Objective]):
    """U_b(θ) of one chunk, θ flat in the guide's latent order (``names``), for `stationarity.full_gradient`.

    The compiled potential (`Objective.potential`: no Pyro trace) where the model compiles and its latent sites are
    the guide's; the traced ``−model.log_joint`` otherwise. Both are −log p̃(D_b, w; N) (the guide's sites are all
    real, so θ = w and there is no Jacobian); they agree to rounding (`Objective` checks it on its first call)."""
    N = data.dataset_size
    if objective is not None and objective.compiled and set(objective.layout.names) == set(names):
        def compiled(theta, x, y):
            values = {n: t.reshape(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}
            return objective.potential(objective.layout.flatten(values), x, y, N)
        return compiled

    def traced(theta, x, y):
        values = {n: t.reshape(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes)}
        return -model.log_joint(values, x, y, dataset_size=N)
    return traced


def stationarity_offsets(guide, model: BayesianModel, data: FitData, seed: int,
                         pairs: int = STATIONARITY_PAIRS, objective: Optional[Objective] = None) -> Optional[torch.Tensor]:
    """The guide mean's offset from the ELBO's stationary point, per coordinate, in the guide's sds (flat, the
    guide's latent order); None where it is not defined (a user guide, constrained sites, augmented data).

    At the optimum of the ELBO over the mean μ of a Gaussian guide q = N(μ, Σ_q), ∇_μ ELBO = −E_q[∇U] = 0, with U
    = −log p̃(D, w) the full-data tempered potential (Opper & Archambeau 2009). A Newton step from μ estimates the
    offset δ̂ = Σ_q·E_q[∇U], reported as z_k = δ̂_k/√(Σ_q)_kk. For a Gaussian posterior N(m, Λ⁻¹), E_q[∇U] = Λ(μ − m)
    exactly, so with the full-rank optimum Σ_q = Λ⁻¹ this is (μ − m)/sd, the mean error the issue-13 checks measure;
    with a mean-field Σ_q = diag(1/Λ_kk) it is the error along each coordinate with the others held (smaller where
    the posterior is correlated). E_q[∇U] is estimated from ``pairs`` antithetic draws μ ± e (e ~ N(0, Σ_q)): the
    pair average is unbiased for any U and exact for a quadratic one. Cost: 2·``pairs`` full passes over the data.
    The gradient is the full data's (`pyro_bdl.infer.stationarity.full_gradient`: Σ_b (B_b/N)·∇U_b counts the prior
    once and the likelihood exactly), on the compiled potential of ``objective`` where the model compiles (no Pyro
    trace per chunk) and on the traced log joint otherwise (`_full_data_potential`).
    """
    if data.augment is not None or not isinstance(guide, tuple(GUIDES.values())):
        return None
    names = [name for name, _ in guide.prototype_trace.iter_stochastic_nodes()]
    if not all(_is_real(guide.prototype_trace.nodes[n]["fn"].support) for n in names):
        return None
    generator = torch.Generator().manual_seed(seed + 2)
    with torch.no_grad():
        if isinstance(guide, AutoNormal):
            parts = [guide._get_loc_and_scale(n) for n in names]
            shapes = [loc.shape for loc, _ in parts]
            loc = torch.cat([l.reshape(-1) for l, _ in parts])
            sd = torch.cat([s.reshape(-1) for _, s in parts])
            cov = None
        else:
            posterior = guide.get_posterior()
            loc, cov = posterior.loc.detach(), posterior.covariance_matrix.detach()
            sd = cov.diagonal().sqrt()
            shapes = [guide.prototype_trace.nodes[n]["value"].shape for n in names]
            chol = torch.linalg.cholesky(cov + 1e-12 * sd.pow(2).mean() * torch.eye(len(loc), dtype=loc.dtype))
    sizes = [math.prod(s) for s in shapes]
    N = data.dataset_size
    loss = _full_data_potential(model, data, names, sizes, shapes, objective)
    grads = []
    for _ in range(pairs):
        eps = torch.randn(loc.shape, generator=generator, dtype=loc.dtype).to(loc.device)
        e = sd * eps if cov is None else chol @ eps
        for sign in (1.0, -1.0):
            _, g = full_gradient(loss, (loc + sign * e).detach(), data)
            grads.append(g)
    mean_grad = torch.stack(grads).mean(0)
    offset = sd.pow(2) * mean_grad if cov is None else cov @ mean_grad
    return (offset / sd).detach()


#: the largest P whose full-rank guide is finished by `finish_fullrank` (it forms the P×P Hessian: P HVPs per draw)
FINISH_MAX_PARAMS = 200
#: antithetic pairs behind each `finish_fullrank` step's E_q[∇U], E_q[∇²U], and behind its ELBO comparison
FINISH_PAIRS, FINISH_ELBO_PAIRS = 2, 8
#: `finish_fullrank` steps by default (``newton_steps``)
SVI_NEWTON_STEPS = 3


def finish_fullrank(guide, model: BayesianModel, data: FitData, seed: int, objective: Optional[Objective],
                    steps: int) -> int:
    """Finish a full-rank Gaussian guide q = N(μ, Σ) with up to ``steps`` fixed-point (Newton) steps of the ELBO;
    returns how many were taken (0 where it does not apply: another guide, P > ``FINISH_MAX_PARAMS``, constrained
    sites, augmented data, or no step improved the ELBO).

    At the ELBO's optimum over Gaussian q (Opper & Archambeau 2009; Bonnet's and Price's theorems)

        E_q[∇U] = 0,    Σ⁻¹ = E_q[∇²U],

    with U the full-data tempered potential. One step sets H̄ = E_q[∇²U], ḡ = E_q[∇U] at the current q and

        μ ← μ − H̄⁻¹ ḡ,    Σ ← H̄⁻¹,

    the natural-gradient step of size 1 for a Gaussian (Khan & Lin 2017; Khan & Rue 2023's Bayesian learning rule):
    Newton's method on μ with the expected Hessian. For a Gaussian posterior N(m, Λ⁻¹), H̄ = Λ and ḡ = Λ(μ − m)
    exactly (antithetic draws μ ± e make ḡ exact, and H̄ is constant), so one step lands on the exact optimum
    μ = m, Σ = Λ⁻¹ from anywhere: Adam's noise floor and its slow progress along an ill-conditioned posterior's weak
    directions (issue 13, notes/issue-13-mapsvi.md) are both gone. Elsewhere the step is taken only if the ELBO,
    −E_q[U] + ½ log det Σ, estimated with the same ``FINISH_ELBO_PAIRS`` antithetic standard-normal draws for the
    old and new q (common random numbers), does not decrease, and only while H̄ is positive definite.
    """
    if steps == 0 or data.augment is not None or not isinstance(guide, AutoMultivariateNormal):
        return 0
    names = [name for name, _ in guide.prototype_trace.iter_stochastic_nodes()]
    if not all(_is_real(guide.prototype_trace.nodes[n]["fn"].support) for n in names):
        return 0
    P = guide.loc.numel()
    if P > FINISH_MAX_PARAMS:
        return 0
    shapes = [guide.prototype_trace.nodes[n]["value"].shape for n in names]
    sizes = [math.prod(s) for s in shapes]
    loss = _full_data_potential(model, data, names, sizes, shapes, objective)
    generator = torch.Generator().manual_seed(seed + 4)
    dtype, device = guide.loc.dtype, guide.loc.device
    eps_elbo = torch.randn(FINISH_ELBO_PAIRS, P, generator=generator, dtype=dtype).to(device)

    def elbo(mu, chol):
        e = eps_elbo @ chol.T
        u = [float(full_value(loss, mu + sign * d, data)) for d in e for sign in (1.0, -1.0)]
        return -sum(u) / len(u) + float(chol.diagonal().log().sum())

    def moments(mu, chol):
        g, h = torch.zeros(P, dtype=dtype, device=device), torch.zeros(P, P, dtype=dtype, device=device)
        draws = torch.randn(FINISH_PAIRS, P, generator=generator, dtype=dtype).to(device) @ chol.T
        for d in draws:
            for sign in (1.0, -1.0):
                point = (mu + sign * d).detach()
                g = g + full_gradient(loss, point, data)[1]
                h = h + full_hessian(loss, point, data)
        n = 2 * FINISH_PAIRS
        return g / n, (h + h.T) / (2 * n)

    with torch.no_grad():
        posterior = guide.get_posterior()
        mu, chol = posterior.loc.detach().clone(), posterior.scale_tril.detach().clone()
    taken = 0
    current = elbo(mu, chol)
    for _ in range(steps):
        g, h = moments(mu, chol)
        h_chol, info = torch.linalg.cholesky_ex(h)
        if int(info) != 0:  # H̄ not positive definite: no Gaussian fixed point nearby
            break
        new_mu = mu - torch.cholesky_solve(g.unsqueeze(-1), h_chol).squeeze(-1)
        cov = torch.cholesky_inverse(h_chol)
        new_chol, info = torch.linalg.cholesky_ex((cov + cov.T) / 2)
        if int(info) != 0 or not bool(torch.isfinite(new_mu).all()):
            break
        value = elbo(new_mu, new_chol)
        if not math.isfinite(value) or value < current:
            break
        mu, chol, current, taken = new_mu, new_chol, value, taken + 1
    if taken:
        scale = chol.diagonal()
        with torch.no_grad(), pyro.settings.context(module_local_params=True):
            guide.loc.data.copy_(mu)
            guide.scale = PyroParam(scale.clone(), guide.scale_constraint)
            guide.scale_tril = PyroParam(chol / scale.unsqueeze(-1), guide.scale_tril_constraint)
    return taken


def full_hessian(loss, theta: torch.Tensor, data) -> torch.Tensor:
    """∇²U(θ) ``(P, P)`` over the full data (Σ_b (B_b/N)·∇²U_b, `stationarity.full_chunks`), for small P."""
    N = data.dataset_size
    out = torch.zeros(theta.numel(), theta.numel(), dtype=theta.dtype, device=theta.device)
    for xb, yb in full_chunks(data):
        w = yb.shape[0] / N
        out = out + w * torch.autograd.functional.hessian(lambda t: loss(t, xb, yb), theta.detach(), vectorize=True)
    return out


def warn_if_not_stationary(guide, model: BayesianModel, data: FitData, seed: int, steps: int,
                           objective: Optional[Objective] = None) -> Optional[float]:
    """Warn (`StationarityWarning`) when `stationarity_offsets` exceed ``STATIONARITY_TOLERANCE`` guide sds; returns
    the largest offset (None where it is not defined)."""
    z = stationarity_offsets(guide, model, data, seed, objective=objective)
    if z is None or not bool(torch.isfinite(z).all()):
        return None
    worst = float(z.abs().max())
    if worst > STATIONARITY_TOLERANCE:
        warnings.warn(f"svi: the guide's mean is not at the ELBO's optimum after {steps} steps: a Newton step from it "
                      f"moves coordinate {int(z.abs().argmax())} by {worst:.3g} guide sds (the mean error is "
                      "about that much for a near-Gaussian posterior). Run more steps (steps=...), or raise lr; "
                      "see info['stationarity_offset'].", StationarityWarning, stacklevel=4)
    return worst


def _is_real(support) -> bool:
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def initialise_scales(guide, model: BayesianModel, data: FitData, seed: int,
                      start: Optional[Dict[str, torch.Tensor]] = None) -> None:
    """Set a built-in guide's initial sds to `curvature_scales` at its starting point (init_scale="auto").

    No sd starts above ``FALLBACK_SCALE`` (0.01): weights the data hardly touch at the start
    (Fisher ≈ 0) would otherwise start at the prior's sd·√T, and a network whose weights all carry
    that much noise learns slowly (digits MLP, 600 steps: accuracy 0.23, or loss 771–792 instead of
    704–710 with the sds capped at 0.25 and 0.1 of the weights' RMS). Wider sds grow quickly under
    `ControlVariateELBO`; the curvature matters where the posterior is narrower than 0.01 (cold T,
    large N), which a fixed start would have to shrink towards through noisy gradients.
    The low-rank guide's marginal sd is its diagonal part times √(1 + Σ_j cov_factor_kj²), so its
    diagonal part is divided by that factor.
    """
    generator = torch.Generator().manual_seed(seed + 1)
    x0, y0 = next(iter(data.epoch()))
    guide(x0, y0, data.dataset_size)  # builds the guide's parameters
    start = model.initial_values() if start is None else start
    sds = curvature_scales(model, data, start, generator)
    sds = {name: sd.clamp(max=FALLBACK_SCALE) for name, sd in sds.items()}
    if isinstance(guide, AutoNormal):
        for name, sd in sds.items():
            sd = torch.where(torch.isfinite(sd), sd, torch.full_like(sd, FALLBACK_SCALE))
            deep_setattr(guide.scales, name, PyroParam(sd, guide.scale_constraint, guide._event_dims[name]))
        return
    flat = []
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        size = math.prod(guide._unconstrained_shapes[name])
        flat.append(sds[name].reshape(-1) if name in sds else
                    torch.full((size,), FALLBACK_SCALE, dtype=guide.loc.dtype, device=guide.loc.device))
    sd = torch.cat(flat).to(guide.loc)
    sd = torch.where(torch.isfinite(sd), sd, torch.full_like(sd, FALLBACK_SCALE))
    if isinstance(guide, AutoLowRankMultivariateNormal):
        sd = sd / (1 + guide.cov_factor.detach().pow(2).sum(-1)).sqrt()
    guide.scale = PyroParam(sd, guide.scale_constraint)


def param_groups(loss_fn: torch.nn.Module, lr: float) -> list:
    """Adam parameter groups: every guide parameter at ``lr``, except the covariance factors.

    Adam moves every entry by about ``lr`` per step whatever its gradient's scale. A row of the
    full-rank guide's Cholesky factor L (``scale_tril``, P entries) or of the low-rank guide's
    ``cov_factor`` (r entries) would then grow by ≈ lr·√P (lr·√r) per step, so the marginal
    variances Σ_j L_ij² run away on networks (P ≈ 10³): the loss diverged to −10²⁶ on a digits
    MLP. Those factors get ``lr/√P`` (``lr/√r``), so a row's norm moves like a single scale entry.
    """
    groups = []
    for name, param in loss_fn.named_parameters():
        factor = 1.0
        if name.endswith("scale_tril_unconstrained") or name.endswith("cov_factor"):
            factor = 1.0 / math.sqrt(param.shape[-1])
        groups.append({"params": [param], "lr": lr * factor})
    return groups


class ControlVariateELBO:
    """The negative ELBO with the minibatch noise taken out of its guide-scale gradient.

    With z = μ + s·ε, the reparameterised gradient of E_q[−log p̃_b(z)] in s is
    −E[∇log p̃_b(z)·ε]. Under minibatches ∇log p̃_b carries the minibatch noise ξ_b, which enters
    as ξ_b·ε: its signal-to-noise ratio is ≈ √(B·T/N) (B of N points, temperature T), so at cold T
    or large N/B the guide's sds hardly move (0.1× to 2× the target after 2000 steps on linear
    regression). The surrogate

        loss + c·(z − μ),   c = ∇log p̃_b(μ) (same minibatch, no gradient through c),

    has the same expectation and the same expected gradient (E[ε] = 0, and its μ-gradient is
    c − c = 0), and subtracts the first-order Taylor term of ∇log p̃_b(z) around μ — the part that
    carries ξ_b — from the s-gradient (a control variate, Miller et al. 2017, "Reducing
    reparameterization gradient variance"; Paisley et al. 2012). What remains is s·ε·∇²log p̃_b·s·ε,
    the signal. It costs one more gradient of the log joint per step, at μ. It covers the sites
    with real support (the network's weights); constrained sites keep the plain estimator.
    """

    def __init__(self, model: BayesianModel, guide, elbo: Trace_ELBO):
        self.model, self.guide, self.elbo = model, guide, elbo

    def __call__(self, x, y, N: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(surrogate loss to differentiate, the negative ELBO estimate, detached).

        The particles are drawn the way ``elbo`` draws them (vectorised in one trace when it
        vectorises), so the control variate costs one extra gradient per step, not one trace per particle.
        """
        n = self.elbo.num_particles
        loc = _guide_locs(self.guide)
        surrogate, value, c = 0.0, 0.0, None  # c = ∇log p̃_b(μ): one gradient per step, shared by the particles
        for model_trace, guide_trace in self.elbo._get_traces(self.model, self.guide, (x, y, N), {}):
            z = {name: site["value"] for name, site in guide_trace.nodes.items()
                 if site["type"] == "sample" and not site["is_observed"] and name in loc}
            if c is None:
                real = [name for name in z if _is_real(guide_trace.nodes[name]["fn"].support)]
                anchor = {name: loc[name].detach().requires_grad_(True) for name in real}
                # the constrained sites enter ∇log p̃_b(μ) at the first particle's value
                rest = {name: v.detach().reshape(-1, *loc[name].shape)[0] for name, v in z.items()}
                c = dict(zip(real, torch.autograd.grad(self.model.log_joint({**rest, **anchor}, x, y, N),
                                                       list(anchor.values()))))
            loss = guide_trace.log_prob_sum() - model_trace.log_prob_sum()
            term = sum((ci * (z[name] - loc[name])).sum() for name, ci in c.items())
            surrogate = surrogate + (loss + term) / n
            value = value + loss.detach() / n  # a tensor: the driver reads losses in blocks, not per step
        return surrogate, value


def _guide_locs(guide) -> Dict[str, torch.Tensor]:
    """The guide's means μ per site, unconstrained and differentiable (``median`` detaches them)."""
    if isinstance(guide, AutoNormal):
        return {name: guide._get_loc_and_scale(name)[0] for name, _ in guide.prototype_trace.iter_stochastic_nodes()}
    loc, _ = guide._loc_scale()
    return {site["name"]: value for site, value in guide._unpack_latent(loc)}


def flatten_parameters(runs: Sequence[List[torch.nn.Parameter]]) -> torch.Tensor:
    """One ``(K, P)`` tensor whose row k's storage run k's parameters become views of (values unchanged).

    An optimiser stepping the parameters in place then writes θ, so the driver's state ``"theta"``
    is the variational parameters themselves, never a stale copy (`SVIRule`). `unflatten_parameters`
    gives each parameter its own storage back. Every run's parameters have the same shapes (K
    copies of one guide)."""
    params = [p for run in runs for p in run]
    if not runs[0]:
        raise ValueError("the guide has no parameters to optimise")
    first = params[0]
    if any(p.dtype != first.dtype or p.device != first.device for p in params):
        raise ValueError("the guide's parameters must share one dtype and device, got "
                         f"{sorted({(str(p.dtype), str(p.device)) for p in params})}")
    flat = torch.stack([torch.cat([p.detach().reshape(-1) for p in run]) for run in runs])
    for k, run in enumerate(runs):
        offset = 0
        for p in run:
            p.data = flat[k, offset:offset + p.numel()].view_as(p)
            offset += p.numel()
    return flat


def unflatten_parameters(runs: Sequence[List[torch.nn.Parameter]]) -> None:
    """Each parameter in its own storage again (undoes `flatten_parameters`; values unchanged)."""
    for run in runs:
        for p in run:
            p.data = p.data.clone()


class SVIRun:
    """One SVI run's Pyro side, set up under the current global RNG: the ELBO of ``(model, guide)``
    (Pyro's ``Trace_ELBO``, or `ControlVariateELBO` on top of it) with the guide's parameters built, its
    `DivergenceCheck`, and the state of the global RNG after that set-up, where its ELBO draws continue."""

    def __init__(self, model: BayesianModel, guide, data: FitData, lr: float, num_particles: int = 1,
                 control_variate: bool = False, floor_kind: str = "elbo", desc: str = "svi"):
        self.model, self.guide, self.N = model, guide, int(data.dataset_size)
        self.elbo = Trace_ELBO(num_particles=num_particles, vectorize_particles=num_particles > 1,
                               max_plate_nesting=1)
        self.loss_fn = self.elbo(model, guide)
        x0, y0 = example_batch(data)
        with pyro.settings.context(module_local_params=True):
            self.loss_fn(x0, y0, self.N)  # builds the guide's parameters
        self.cv = ControlVariateELBO(model, guide, self.elbo) if control_variate else None
        self.params = [p for _, p in self.loss_fn.named_parameters()]
        # the floor's trace draws from the global RNG too (kept in this order: the same draws as before the driver)
        self.check = DivergenceCheck(desc, lr, floor=loss_floor(model, x0, y0, self.N, floor_kind),
                                     unit=self.N * likelihood_scale(model.temperature, model.tempering))
        device = self.params[0].device if self.params else torch.device("cpu")
        self.rng = ckpt.rng_state(device)


class SVIRule:
    """The SVI step rule: per run, one Adam step on the negative ELBO of ``(model, guide_k)`` per minibatch.

    **State.** The rule owns the Pyro side — K `SVIRun` (ELBO, guide and its parameters) — and the
    driver's state holds the numbers: ``"theta"`` ``(K, P)`` is the guides' unconstrained variational
    parameters (AutoNormal's locs and unconstrained scales; the low-rank/full-rank guide's loc, scale
    and factor), flattened *as one storage*: guide k's ``nn.Parameter`` objects are views of row k
    (`flatten_parameters`), so the Adam steps on the guides write θ, and restoring θ restores the
    guides. ``"optimiser"`` and ``"scheduler"`` are one ``torch.optim.Adam`` over every run's
    parameter groups (`param_groups`: the covariance factors at ``lr/√width``; Adam is elementwise, so
    this is K separate optimisers) and its exponential decay from ``lr`` to ``lr · lr_decay`` over
    ``steps`` — for K = 1 exactly the optimiser of the loop before the driver. ``"rng"``: run k's
    state of torch's global RNG, where its ELBO draws ε continue (a step swaps it in and out, so the
    runs' draws are independent of each other and of the data order, and a resumed run draws the same
    ε). Nothing is copied per step but the RNG states (a few kB).

    **Divergence.** The loss stays a device tensor (no host read per step; the driver reads it in
    blocks). A step whose distributions get invalid parameters (Pyro's validation raises
    ``ValueError`` once a guide parameter is NaN or inf) yields loss NaN and that run is frozen: its
    remaining steps up to the driver's next read return NaN without computing, and the driver's
    `DivergenceCheck` then names the first diverged step and the learning rate.
    """

    def __init__(self, runs: Sequence[SVIRun], lr: float, lr_decay: float, steps: int):
        self.runs, self.lr = list(runs), float(lr)
        self.gamma = float(lr_decay) ** (1.0 / max(1, steps))
        self.theta = flatten_parameters([run.params for run in self.runs])
        self._diverged = [False] * len(self.runs)
        self._invalid: List[Optional[str]] = [None] * len(self.runs)  # why a run's failed step failed

    @property
    def checks(self) -> List[DivergenceCheck]:
        return [run.check for run in self.runs]

    def lr_at(self, step: int) -> float:
        """The learning rate after ``step`` (0-based) steps of the exponential decay."""
        return self.lr * self.gamma ** (step + 1)

    def init(self, theta: torch.Tensor) -> Dict[str, Any]:
        if theta.shape != self.theta.shape:
            raise ValueError(f"θ of shape {tuple(theta.shape)} for {len(self.runs)} runs of "
                             f"{self.theta.shape[1]} parameters")
        with torch.no_grad():
            if theta.data_ptr() != self.theta.data_ptr():
                self.theta.copy_(theta)
        groups = [g for run in self.runs for g in param_groups(run.loss_fn, self.lr)]
        opt = torch.optim.Adam(groups, lr=self.lr)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=self.gamma)
        return {"theta": self.theta, "optimiser": opt, "scheduler": sched,
                "rng": [dict(run.rng) for run in self.runs]}

    def _loss(self, k: int, x, y) -> Optional[torch.Tensor]:
        """Run k's negative ELBO estimate (detached), its gradient accumulated; ``None`` if the run diverged."""
        run = self.runs[k]
        try:
            if run.cv is None:
                loss = run.loss_fn(x, y, run.N)
                value = loss.detach()
            else:
                loss, value = run.cv(x, y, run.N)
        except ValueError as err:
            if not is_invalid_parameter_error(err):
                raise
            self._diverged[k], self._invalid[k] = True, str(err).splitlines()[0]
            return None
        loss.backward()
        return value

    def update(self, state: Dict[str, Any], batch: driver.Batch,
               generators: Sequence[torch.Generator]) -> Tuple[Dict[str, Any], torch.Tensor]:
        device = self.theta.device
        nan = torch.full((), math.nan, dtype=self.theta.dtype, device=device)
        opt = state["optimiser"]
        opt.zero_grad()  # a frozen (diverged) run's parameters keep grad None: Adam leaves them alone
        outer = ckpt.rng_state(device)  # what else draws from the global RNG (a user's DataLoader) keeps its stream
        values = []
        for k in range(len(self.runs)):
            if self._diverged[k]:
                values.append(nan)
                continue
            ckpt.set_rng_state(state["rng"][k], device)
            value = self._loss(k, *batch.member(k))
            state["rng"][k] = ckpt.rng_state(device)
            values.append(nan if value is None else value.reshape(()))
        ckpt.set_rng_state(outer, device)
        opt.step()
        state["scheduler"].step()
        return state, torch.stack(values)

    def save(self, state: Dict[str, Any]) -> Dict[str, Any]:
        return {"theta": state["theta"].detach().clone(), "optimiser": state["optimiser"].state_dict(),
                "scheduler": state["scheduler"].state_dict(), "rng": [dict(r) for r in state["rng"]]}

    def restore(self, saved: Dict[str, Any]) -> Dict[str, Any]:
        state = self.init(saved["theta"].to(self.theta))
        state["optimiser"].load_state_dict(saved["optimiser"])
        state["scheduler"].load_state_dict(saved["scheduler"])
        state["rng"] = [dict(r) for r in saved["rng"]]
        return state

    def nonfinite_start(self, theta: torch.Tensor, batch: driver.Batch, values: List[float]) -> str:
        """Why the loss is not finite at step 0: the sites whose log density is not finite at the guide's
        first draw (from the starting parameters ``theta``)."""
        k = next(i for i, v in enumerate(values) if not math.isfinite(v))
        if self._invalid[k] is not None:
            return (f"the loss cannot be evaluated at the starting point (step 0, before any update), so the "
                    f"learning rate is not the cause: a distribution got invalid parameters ({self._invalid[k]}); "
                    "check the prior, the likelihood, the guide's start and the data")
        with torch.no_grad():
            self.theta.copy_(theta)  # the run stops here: back to where step 0 evaluated the loss
        run, (x, y) = self.runs[k], batch.member(k)
        with pyro.settings.context(module_local_params=True):
            return _nonfinite_start(run.model, run.guide, x, y, run.N, values[k])


def run_svi(runs: Sequence[SVIRun], data: FitData, steps: int, lr: float, lr_decay: float, seeds: Sequence[int],
            progress: Optional[bool], desc: str, checkpoint: Optional[str] = None,
            fingerprint: Optional[Callable[[torch.Tensor], Dict[str, Any]]] = None) -> driver.Result:
    """K SVI runs (`SVIRun`, run k's data order from ``seeds[k]``) on the driver; the guides are trained in place.

    ``checkpoint``: a file for the driver's state, under the fingerprint ``fingerprint(θ₀)`` (θ₀ the
    guides' starting parameters, flattened ``(K, P)``)."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    rule = SVIRule(runs, lr, lr_decay, steps)
    try:
        fp = None if checkpoint is None else fingerprint(rule.theta)
        with pyro.settings.context(module_local_params=True):
            return driver.drive(rule, rule.theta, data, steps=steps, seeds=seeds, desc=desc, progress=progress,
                                checks=rule.checks, lr_at=rule.lr_at, checkpoint=checkpoint, fingerprint=fp)
    finally:
        unflatten_parameters([run.params for run in rule.runs])


def optimise(model: BayesianModel, guide, data: FitData, num_steps: int, lr: float, lr_decay: float,
             num_particles: int, seed: int, progress: Optional[bool], desc: str, floor_kind: str = "elbo",
             control_variate: bool = False, checkpoint: Optional[str] = None,
             fingerprint: Optional[Callable[[torch.Tensor], Dict[str, Any]]] = None) -> driver.Result:
    """Minimise the negative ELBO of ``(model, guide)`` on the driver (`SVIRule`); the guide is trained in place.

    Returns the driver's `Result` (``loss`` ``(1, num_steps)``, ``wall_time``). Data order from
    ``seed`` (`pyro_bdl.infer.driver`); the ELBO's draws continue torch's global RNG from here. Stops
    with a `DivergenceError` naming ``lr`` when the loss diverges (`pyro_bdl.infer.divergence`;
    ``floor_kind``: ``"elbo"``, or ``"point"`` for a user's AutoDelta guide, whose loss is
    −log p̃(D, w)), read every 50 steps. ``control_variate``: use `ControlVariateELBO` (built-in
    guides under minibatches). ``checkpoint``, ``fingerprint``: as in `run_svi`.
    """
    run = SVIRun(model, guide, data, lr, num_particles, control_variate, floor_kind, desc)
    return run_svi([run], data, num_steps, lr, lr_decay, [seed], progress, desc, checkpoint, fingerprint)


def _nonfinite_start(model: BayesianModel, guide, x: torch.Tensor, y: torch.Tensor, N: int, value: float) -> str:
    """Why the loss is not finite at step 0: the sites whose log density is not finite at the guide's first draw."""
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(x, y, N)
        trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, y, N)
        trace.compute_log_prob()
    return nonfinite_start_message(trace, value)


@register("svi")
def fit_svi(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool],
            guide: Union[str, Any] = "normal", steps: Optional[int] = None, epochs: Optional[int] = None,
            lr: float = 0.01, lr_decay: float = 0.1, num_particles: int = 1, init_scale: Union[float, str] = "auto",
            rank: Optional[int] = None, init: Optional[Dict[str, torch.Tensor]] = None, num_chains: int = 1,
            newton_steps: int = SVI_NEWTON_STEPS, checkpoint: Optional[str] = None) -> Union[GuidePosterior, MixturePosterior]:
    """Variational inference with a Pyro autoguide, run by the driver (`SVIRule`, `pyro_bdl.infer.driver`).

    Args:
        guide: ``"normal"`` (mean-field), ``"lowrank"``, ``"fullrank"``, or a Pyro guide.
        steps / epochs: optimiser steps (default 2000), or passes over the data (``num_steps`` is the
            deprecated name of ``steps``).
        lr, lr_decay: Adam step size, decayed exponentially to ``lr * lr_decay``.
        num_particles: ELBO samples per step (vectorised).
        init_scale: initial guide standard deviation (loc starts at the network's weights):
            ``"auto"`` (default) starts each coordinate at min(1/√Λ_kk, 0.01), with Λ_kk the tempered
            posterior's diagonal precision estimated from the prior and the Fisher information at the
            start (`curvature_scales`; for a Gaussian posterior 1/√Λ_kk is the mean-field optimum), so
            a posterior narrower than 0.01 (cold T, large N) is not approached from far above; a
            number sets every sd to it.
        rank: rank of the ``"lowrank"`` guide (default ≈ √P).
        init: the built-in guide's starting means ``{site: tensor}`` (moved to the network's device and
            dtype); sites left out start at [`BayesianModel.initial_values`][pyro_bdl.BayesianModel].
        num_chains: independent SVI runs (default 1). Run k has seed ``s_k = spawn_seeds(seed, num_chains)[k]``:
            its guide's means start at ``model.initial_values(seed=s_k)`` (a fresh initialisation of the
            network, with ``init``'s sites replaced), and its data order, ``init_scale="auto"`` estimate and
            ELBO draws come from ``s_k`` — run k is ``fit(method="svi", seed=s_k, init=<that start>)``. The
            runs are stepped together on the driver and returned as their equal-weight mixture
            ([`MixturePosterior`][pyro_bdl.MixturePosterior]), as for deep ensembles and Multi-SWAG: the
            runs settle in different modes, which one Gaussian cannot cover. Built-in guides only.
        newton_steps: for the ``"fullrank"`` guide of at most 200 parameters, fixed-point (Newton) steps of the
            ELBO on the full data after Adam (`finish_fullrank`: μ ← μ − E_q[∇²U]⁻¹E_q[∇U], Σ ← E_q[∇²U]⁻¹, each
            kept only if the ELBO does not fall; exact in one step for a Gaussian posterior). Default 3; 0: none.
            Other guides ignore it.
        checkpoint: file where the run's state (guide parameters, Adam and its schedule, the data
            order's and the ELBO draws' random generators, the loss history) is saved after every
            epoch and at the end; rerunning the same call resumes it bit-identically, and a checkpoint of
            another run (other model, data, options or seed) is refused naming what differs.

    Under minibatches the built-in guides use `ControlVariateELBO`: the ELBO gradient of a guide sd
    otherwise has signal-to-noise ratio ≈ √(B·T/N) (B of N points), and at cold T the sds stayed
    near their start (variance 0.6× the mean-field target at T = 0.1 and 2.3× at T = 0.01 on
    linear regression with 2000 steps); with it they reach the target within 10% at T = 1 … 0.01.

    The driver shuffles the minibatches with a generator seeded ``seed`` (`pyro_bdl.infer.driver`) and
    reads the loss every 50 steps: a loss that turns non-finite, grows by orders of magnitude or falls
    below any attainable value (`pyro_bdl.infer.divergence`) stops the run within that block with a
    `DivergenceError` naming ``lr``.

    ``info``: the driver schema (`pyro_bdl.infer.driver.info`) — ``loss`` ``(1, steps)`` (the negative
    ELBO estimate per step), ``options``, ``wall_time`` (training, summed over resumes) — plus
    ``guide`` (its class name) and, for one run, ``losses`` (the same losses as a list; deprecated, kept for
    one release), ``stationarity_offset`` (`stationarity_offsets`' worst coordinate, after any Newton steps; a
    `StationarityWarning` above 0.8) and ``newton_steps_taken``. With ``num_chains`` > 1, ``loss`` is
    ``(num_chains, steps)`` and the mixture carries the ``info``; each member's ``info`` has its ``seed``,
    ``stationarity_offset`` and ``newton_steps_taken``.
    """
    num = run_length(data, steps, epochs, default=2000)
    check_newton_steps(newton_steps)
    _check_init_scale(init_scale)
    check_int(num_chains, "num_chains", 1)
    checkpoint = ckpt.check_path(checkpoint)
    if not isinstance(guide, str):
        if init is not None:
            raise ValueError("init sets a built-in guide's starting means; a guide object you pass starts where it "
                             "was built (drop init, or build the guide with init_loc_fn=init_to_value(values=...))")
        if num_chains > 1:
            raise ValueError("num_chains > 1 builds one fresh guide per run, so it needs a built-in guide "
                             f"({sorted(GUIDES)}); fit several runs of your own guide one at a time")
    start = start_values(model, init)
    seeds = [seed] if num_chains == 1 else spawn_seeds(seed, num_chains)
    runs = []
    for s in seeds:
        # One run sets up under fit's seeded global RNG, as before the driver; run k of several under s_k,
        # exactly as fit(seed=s_k) would (and the global RNG is left as it was).
        with contextlib.nullcontext() if num_chains == 1 else seeded(s):
            run_start = start if num_chains == 1 else {**model.initial_values(seed=s), **model.as_values(init or {})}
            with pyro.settings.context(module_local_params=True):
                g = make_guide(model, guide, init_scale, rank, run_start)
                if init_scale == "auto" and isinstance(guide, str):
                    initialise_scales(g, model, data, s, run_start)
            runs.append(SVIRun(model, g, data, lr, num_particles,
                               control_variate=isinstance(guide, str) and data.minibatched))
    options = {"guide": guide if isinstance(guide, str) else type(guide).__qualname__, "steps": steps,
               "epochs": epochs, "lr": lr, "lr_decay": lr_decay, "num_particles": num_particles,
               "init_scale": init_scale, "rank": rank, "init": None if init is None else sorted(init),
               "num_chains": num_chains, "newton_steps": newton_steps}

    def fingerprint(theta0: torch.Tensor) -> Dict[str, Any]:
        # the starting parameters stand for init, init_scale="auto"'s estimate and a user guide's own start
        return ckpt.fingerprint(model, data, "svi", options, seed, start=ckpt.tensor_hash(theta0))

    result = run_svi(runs, data, num, lr, lr_decay, seeds, progress, "svi", checkpoint, fingerprint)
    objective = Objective(model, data.example_x(2)) if isinstance(guide, str) else None
    # Adam stops short of the ELBO's optimum on sharp or ill-conditioned posteriors (notes/issue-13-mapsvi.md); a
    # full-rank guide of a small model is finished by the ELBO's own fixed-point equations
    finished = [finish_fullrank(run.guide, model, data, s, objective, newton_steps) if guide == "fullrank" else 0
                for run, s in zip(runs, seeds)]
    x0, _ = next(iter(data.epoch()))
    name = type(runs[0].guide).__name__
    # the mean's distance from the ELBO's stationary point, a check the loss history cannot give (it is noisy and
    # flat long before an ill-conditioned posterior's weak directions converge): notes/issue-13-sweep.md
    offsets = [warn_if_not_stationary(run.guide, model, data, s, num, objective) if isinstance(guide, str) else None
               for run, s in zip(runs, seeds)]
    if num_chains == 1:
        return GuidePosterior(model, runs[0].guide, "svi", x0,
                              info=driver.info(result.loss, options, result.wall_time,
                                               losses=result.loss[0].tolist(), guide=name,
                                               stationarity_offset=offsets[0], newton_steps_taken=finished[0]))
    members = [GuidePosterior(model, run.guide, "svi", x0, info={"seed": s, "stationarity_offset": z,
                                                                 "newton_steps_taken": f})
               for run, s, z, f in zip(runs, seeds, offsets, finished)]
    return MixturePosterior(members, "svi", info=driver.info(result.loss, options, result.wall_time, guide=name))
