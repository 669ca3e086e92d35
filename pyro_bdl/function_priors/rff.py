"""A network whose prior over functions is an RBF Gaussian process, with no fitting.

Random Fourier features (Rahimi & Recht 2007; Neal 1996 for the infinite-width limit): the
one-hidden-layer cosine network

    f(x) = Σ_{h=1}^{H} a_h cos(w_hᵀ x + b_h),
    w_h ~ N(0, diag(1/ℓ²)),  b_h ~ U(0, 2π),  a_h ~ N(0, 2σ²/H),

has prior covariance

    E[f(x) f(x')] = H · (2σ²/H) · E[cos(wᵀx + b) cos(wᵀx' + b)] = σ² E_w[cos(wᵀ(x − x'))]
                  = σ² exp(−Σ_d (x_d − x'_d)² / (2ℓ_d²)),

the RBF kernel (Bochner's theorem: the Gaussian is the RBF kernel's spectral density). The
covariance is exact at every width H; as H grows, f also becomes Gaussian (central limit theorem),
so the prior over functions converges to GP(0, k_RBF).
"""
from __future__ import annotations

import math
from typing import Tuple, Union

import pyro.distributions as dist
import torch
from torch import nn

from ..priors.combinators import DistributionPrior, PerParameter
from .targets import _positive
from ..priors.standard import Gaussian
from .._util.checks import check_int


class Cosine(nn.Module):
    """The elementwise activation cos(x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cos(x)


def rff_network(in_dim: int, width: int, lengthscale: Union[float, torch.Tensor] = 1.0, variance: float = 1.0,
                seed: int = 0) -> Tuple[nn.Sequential, PerParameter]:
    """A GP-matched architecture and prior: ``(net, prior)`` whose prior over functions is
    GP(0, σ² exp(−‖x − x'‖²/2ℓ²)) (exact covariance at any ``width``; Gaussian as width grows).

    ``net = Sequential(Linear(in_dim, width), Cosine(), Linear(width, 1, bias=False))`` with sites
    ``"0.weight"`` ~ N(0, 1/ℓ²), ``"0.bias"`` ~ U(0, 2π), ``"2.weight"`` ~ N(0, 2σ²/width).
    ``lengthscale`` is one number or one per input dimension (ARD). The net's initial weights are
    a draw from this prior (``seed``), so every inference method starts inside the bias's support.

    >>> net, prior = rff_network(1, 500, lengthscale=0.5, variance=2.0)
    >>> model = pyro_bdl.BayesianModel(net, prior=prior, likelihood=pyro_bdl.likelihoods.Gaussian(0.1))
    """
    for what, value in (("in_dim", in_dim), ("width", width)):
        check_int(value, what, 1)
    ell = _positive(lengthscale, "lengthscale").to(torch.get_default_dtype())
    if ell.dim() == 1 and ell.numel() not in (1, in_dim):
        raise ValueError(f"lengthscale has {ell.numel()} entries but in_dim is {in_dim}")
    var = float(_positive(variance, "variance"))
    net = nn.Sequential(nn.Linear(in_dim, width), Cosine(), nn.Linear(width, 1, bias=False))
    w_std = (1.0 / ell).expand(width, in_dim).clone() if ell.dim() == 1 else float(1.0 / ell)
    prior = PerParameter({
        "0.weight": Gaussian(0.0, w_std),
        "0.bias": DistributionPrior(dist.Uniform(torch.tensor(0.0), torch.tensor(2 * math.pi))),
        "2.weight": Gaussian(0.0, math.sqrt(2.0 * var / width)),
    })
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(width, in_dim, generator=g) * w_std)
        net[0].bias.copy_(torch.rand(width, generator=g) * 2 * math.pi)
        net[2].weight.copy_(torch.randn(1, width, generator=g) * math.sqrt(2.0 * var / width))
    return net, prior
