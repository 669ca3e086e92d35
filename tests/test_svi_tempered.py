"""SVI reaches the tempered target at its defaults on minibatched Bayesian linear regression.

Targets (tests/blr.py's closed form; posterior tempering scales the precision Λ by 1/T):

* mean-field guide: the mean-field optimum for a Gaussian target, mean μ and variances T/Λ_kk
  (Bishop 2006, §10.1.2) — not the exact marginal variances, which are larger;
* low-rank and full-rank guides: the exact tempered posterior, covariance T·Λ⁻¹.

This checks Adam on the minibatch ELBO (tempering, the N/B scale, the control variate, init_scale="auto"), so the
fixed-point finish that follows it at defaults (`pyro_bdl.infer.svi.finish`, exact here; checked in
tests/test_inference_blr.py and tests/test_svi_finish.py) is off (``newton_steps=0``).

Bar: every variance within [0.75, 1.33] of its target and the mean within 0.2 posterior sds (0.3 at
T = 0.01, see `MEAN_BAR`), at T ∈ {1, 0.1, 0.01}, default options (only the batch size is set).
Before init_scale="auto" and the control variate, mean-field SVI here had variances 0.6× the target
at T = 0.1 and 2.3× at T = 0.01.
"""
import pytest
import torch

import pyro_bdl as bdl
from blr import make_blr, moments

#: how far (in posterior sds) the guide's mean may be from the target's. At T = 0.01 the posterior sds are
#: 0.0049–0.0057, so Adam's final step at the defaults (lr · lr_decay = 0.001, in parameter units) is already
#: 0.17–0.20 sds: the mean jitters by about one step, whatever the batch order. Measured |z| over seeds 0–17
#: (mean-field, T = 0.01): mean 0.157, max 0.385 with the pre-driver batch order; mean 0.148, max 0.251 with the
#: driver's (issue 15: the driver no longer skips one permutation before training). Seed 0 reads 0.244
#: (was 0.143); full-rank 0.219. 0.2 sds stays the bar where a step is ≤ 0.06 sds (T ≥ 0.1).
MEAN_BAR = {1.0: 0.2, 0.1: 0.2, 0.01: 0.3}

COLD = [pytest.param(1.0, marks=pytest.mark.slow), pytest.param(0.1, marks=pytest.mark.slow), 0.01]


def _check(guide: str, temperature: float, n: int = 100, batch_size: int = 10, seed: int = 0) -> None:
    problem = make_blr(n=n, d=2, seed=seed)
    post = bdl.fit(problem.model(temperature), problem.x, problem.y, method="svi", guide=guide,
                   batch_size=batch_size, seed=seed, progress=False, newton_steps=0)
    mean, cov = moments(post.sample(4000, seed=1))
    true_mean, true_cov = problem.posterior(temperature)
    target = 1 / torch.linalg.inv(true_cov).diag() if guide == "normal" else true_cov.diag()
    ratio = cov.diag() / target
    assert ((ratio > 0.75) & (ratio < 1.33)).all(), f"{guide} at T={temperature}: variance / target = {ratio}"
    z = ((mean - true_mean) / true_cov.diag().sqrt()).abs().max()
    assert z < MEAN_BAR[temperature], f"{guide} at T={temperature}: mean off by {z:.3f} posterior sds"


@pytest.mark.parametrize("temperature", COLD)
def test_meanfield_svi_reaches_the_tempered_meanfield_optimum(temperature):
    _check("normal", temperature)


@pytest.mark.slow
@pytest.mark.parametrize("guide", ["lowrank", "fullrank"])
@pytest.mark.parametrize("temperature", [1.0, 0.1, 0.01])
def test_correlated_svi_reaches_the_tempered_posterior(guide, temperature):
    _check(guide, temperature)


def test_auto_init_scale_is_the_diagonal_precision():
    """init_scale="auto" starts each sd at 1/√Λ_kk of the tempered posterior (Fisher estimate, 25% noise)."""
    from pyro_bdl.infer.data import FitData
    from pyro_bdl.infer.svi import curvature_scales

    problem = make_blr(n=100, d=2)
    for temperature in (1.0, 0.01):
        model = problem.model(temperature)
        sds = curvature_scales(model, FitData(model, problem.x, problem.y, batch_size=10), model.initial_values(),
                               torch.Generator().manual_seed(0))
        got = torch.cat([sds["weight"].reshape(-1), sds["bias"].reshape(-1)]).double()
        target = torch.linalg.inv(problem.posterior(temperature)[1]).diag().rsqrt()
        assert torch.allclose(got, target, rtol=0.25), (temperature, got, target)


def test_init_scale_must_be_auto_or_positive():
    problem = make_blr(n=20, d=1)
    for bad in (0.0, -1.0, "big"):
        with pytest.raises(ValueError, match="init_scale"):
            bdl.fit(problem.model(), problem.x, problem.y, method="svi", init_scale=bad, num_steps=2, progress=False)
