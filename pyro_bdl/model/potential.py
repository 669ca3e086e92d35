"""The tempered log posterior as a function of one flat, unconstrained vector.

Gradient-based methods (MAP by SGD, SWAG, SG-MCMC, ensemble members) work on

    U(θ) = −log p̃(D_batch, w(θ)) − log |det ∂w/∂θ|,

where θ ∈ ℝ^P stacks every latent site in [`WeightLayout`][pyro_bdl.WeightLayout] order,
mapped to its support by ``biject_to`` (weights are unconstrained already; a learned noise
scale is log-transformed), and log p̃ is [`BayesianModel.log_joint`][pyro_bdl.BayesianModel] — the model's own
trace, so dataset-size scaling (N/B) and temperature (1/T) are applied exactly as for SVI
and NUTS. The Jacobian term is not tempered: q(θ) = p_T(w(θ)) |∂w/∂θ| is the density whose
pushforward through w(θ) is the tempered posterior (as in Pyro's own HMC potential).
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from pyro import poutine
from torch.distributions import biject_to

from .bayesian_model import BayesianModel
from .lifting import latent_sites
from .layout import WeightLayout
from .sites import OBS_SITE


class Objective:
    """Flat unconstrained parametrisation of every latent site of ``model``.

    Args:
        model: the Bayesian model.
        example_x: a few inputs, used once to discover the latent sites and their supports.
    """

    def __init__(self, model: BayesianModel, example_x: torch.Tensor):
        self.model = model
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(model).get_trace(example_x[:1])
        sites = {n: s for n, s in latent_sites(trace).items() if n != OBS_SITE}
        self.transforms = {n: biject_to(s["fn"].support) for n, s in sites.items()}
        shapes = {n: self.transforms[n].inv(s["value"]).shape for n, s in sites.items()}
        self.layout = WeightLayout(tuple(shapes), tuple(torch.Size(v) for v in shapes.values()))

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
        return self.model.log_joint(values, x, y, dataset_size) + log_det

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
