"""The negative ELBO estimates SVI steps on: `FlatELBO` (a built-in guide on the compiled potential, no Pyro trace)
and `ControlVariateELBO` (Pyro's traces, any guide), both with the minibatch noise taken out of the guide-scale
gradient under minibatches."""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoMultivariateNormal, AutoNormal

from ...model.bayesian_model import BayesianModel
from ...model.potential import Objective
from .guides import _is_real


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



class FlatELBO:
    """The negative ELBO of a built-in guide on the compiled flat potential U (`pyro_bdl.model.potential.Objective`).

    With q = N(μ, Σ) over the guide's latent vector (every site real, so it is θ itself) and z = μ + Lε (LLᵀ = Σ,
    ε ~ N(0, I) from torch's RNG),

        −ELBO(q) = E_q[U_b(z)] − H(q),   H(q) = ½ log det Σ + (P/2)(1 + log 2π),

    estimated by U_b(z) − H(q) with the entropy exact. This is Pyro's ``Trace_ELBO`` on the same model and guide:
    its sampled log q(z) = −½εᵀε − ½ log det Σ − (P/2) log 2π has the same gradient in the guide's parameters
    (−∇½ log det Σ: ε does not depend on them) and the same expectation, with less noise in the value. Under
    minibatches the surrogate subtracts ∇U_b(μ)·(z − μ) (`ControlVariateELBO`'s control variate, same definition).
    It saves the two Pyro traces per step (model and guide; the control variate's gradient is a third): the
    per-step cost of a small network falls to that of MAP's step plus the control variate (notes/issue-13-lead10.md).

    With ``num_particles`` = S the estimate is the mean over S draws, as Trace_ELBO's. `build` returns None where it
    does not apply (a traced density, a constrained site such as a learned noise scale, a user's guide): those keep
    Pyro's traces.
    """

    def __init__(self, guide, objective: Objective, control_variate: bool, num_particles: int = 1):
        self.guide, self.objective, self.control_variate = guide, objective, control_variate
        self.num_particles = int(num_particles)
        self.names = [name for name, _ in guide.prototype_trace.iter_stochastic_nodes()]
        self.shapes = [guide.prototype_trace.nodes[n]["value"].shape for n in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.constant = 0.5 * sum(self.sizes) * (1.0 + math.log(2 * math.pi))

    @classmethod
    def build(cls, guide, objective: Optional[Objective], control_variate: bool,
              num_particles: int) -> Optional["FlatELBO"]:
        if objective is None or not objective.compiled:
            return None
        if not isinstance(guide, (AutoNormal, AutoLowRankMultivariateNormal, AutoMultivariateNormal)):
            return None
        names = [name for name, _ in guide.prototype_trace.iter_stochastic_nodes()]
        if set(names) != set(objective.layout.names) or not all(
                _is_real(guide.prototype_trace.nodes[n]["fn"].support) for n in names):
            return None
        return cls(guide, objective, control_variate, num_particles)

    def _draw(self) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor], torch.Tensor]:
        """(z per site, μ per site, ½ log det Σ), differentiable in the guide's parameters."""
        if isinstance(self.guide, AutoNormal):
            z, mu, half_logdet = {}, {}, 0.0
            for name in self.names:
                loc, scale = self.guide._get_loc_and_scale(name)
                z[name] = loc + scale * torch.randn_like(loc)
                mu[name] = loc
                half_logdet = half_logdet + scale.log().sum()
            return z, mu, half_logdet
        posterior = self.guide.get_posterior()
        return self._sites(posterior.rsample()), self._sites(self.guide.loc), posterior.entropy() - self.constant

    def _sites(self, flat: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {n: t.reshape(s) for n, t, s in zip(self.names, flat.split(self.sizes), self.shapes)}

    def __call__(self, x, y, N: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """(surrogate loss to differentiate, the negative ELBO estimate, detached): the mean over ``num_particles``
        draws (one at a time, so a network without a vmap rule, such as an LSTM, runs as it is)."""
        layout = self.objective.layout
        potential, offset = 0.0, 0.0
        for _ in range(self.num_particles):
            z, mu, half_logdet = self._draw()
            theta, centre = layout.flatten(z), layout.flatten(mu)
            potential = potential + self.objective.potential(theta, x, y, N)
            offset = offset + (theta - centre)
        value = potential / self.num_particles - half_logdet - self.constant
        surrogate = value
        if self.control_variate:
            _, c = self.objective.grad(centre.detach(), x, y, N)
            surrogate = surrogate - (c * offset).sum() / self.num_particles
        return surrogate, value.detach()
