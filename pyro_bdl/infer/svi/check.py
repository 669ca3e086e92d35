"""Is an SVI guide's mean at the ELBO's stationary point? (issue 13, notes/issue-13-sweep.md)

The full-data tempered potential of a guide's flat latent vector (`full_data_potential`, shared with the finish,
`pyro_bdl.infer.svi.finish`) and the Newton offset of the guide's mean (`stationarity_offsets`), warned about by
`warn_if_not_stationary`. The full-data gradient is `pyro_bdl.infer.stationarity.full_gradient` (one definition,
shared with MAP)."""
from __future__ import annotations

import warnings
from typing import Optional

import torch

from ...model.bayesian_model import BayesianModel
from ...model.potential import Objective
from ..data import FitData
from ..stationarity import STATIONARITY_TOLERANCE, StationarityWarning, full_gradient
from .gaussian import gaussian_view


#: antithetic pairs of guide draws behind `stationarity_offsets` (one pair is exact for a Gaussian target)
STATIONARITY_PAIRS = 2


def full_data_potential(model: BayesianModel, data: FitData, names, sizes, shapes, objective: Optional[Objective]):
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
    trace per chunk) and on the traced log joint otherwise (`full_data_potential`).
    """
    if data.augment is not None:
        return None
    q = gaussian_view(guide)
    if q is None:
        return None
    generator = torch.Generator().manual_seed(seed + 2)
    loss = full_data_potential(model, data, q.names, q.sizes, q.shapes, objective)
    grads = []
    for _ in range(pairs):
        e = q.root(torch.randn(q.eps_dim, generator=generator, dtype=q.mu.dtype).to(q.device))
        for sign in (1.0, -1.0):
            _, g = full_gradient(loss, (q.mu + sign * e).to(q.dtype), data)
            grads.append(g.to(q.mu.dtype))
    mean_grad = torch.stack(grads).mean(0)
    return (q.cov_mv(mean_grad) / q.sd).to(q.dtype).detach()


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

