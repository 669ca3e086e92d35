"""SWAG on small models: the dense whitening of the auto rates, the "full" variant (the snapshots' sample
covariance) and the default collection length (issue 13; notes/issue-13-swag-dense.md)."""
import warnings

import pyro
import pytest
import torch

import pyro_bdl as bdl
from blr import as_matrix, make_blr, make_rotated_blr
from pyro_bdl.infer.swag.whitening import covariance_whitening, example_covariance, shrunk_covariance, whitening_factor


def _whitened_eigenvalues(cov, true_cov):
    L = torch.linalg.cholesky(true_cov)
    W = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, cov, upper=False).T, upper=False)
    return torch.linalg.eigvalsh((W + W.T) / 2)


# -- the whitening ----------------------------------------------------------------------------
def test_whitening_factor_whitens_the_covariance_it_is_read_from():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 4, generator=g, dtype=torch.float64)
    cov = A @ A.T + 0.1 * torch.eye(4, dtype=torch.float64)
    L = covariance_whitening(cov, torch.float64)
    torch.testing.assert_close(L.T @ cov @ L, torch.eye(4, dtype=torch.float64), atol=1e-10, rtol=0)
    # a coordinate without noise: no whitening, the caller stays diagonal
    assert covariance_whitening(torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64)), torch.float64) is None
    # many draws: shrinkage ≈ 0 and the factor whitens the draws' covariance
    draws = torch.randn(20000, 4, generator=g, dtype=torch.float64) @ A.T
    L = whitening_factor(draws)
    eig = torch.linalg.eigvalsh(L.T @ (A @ A.T) @ L)
    assert float(eig.min()) > 0.95 and float(eig.max()) < 1.05


def test_shrinkage_removes_correlations_that_are_noise():
    # independent coordinates, few draws: the sample correlations are noise and are shrunk towards 0
    g = torch.Generator().manual_seed(1)
    draws = torch.randn(12, 6, generator=g, dtype=torch.float64) * torch.arange(1, 7, dtype=torch.float64)
    raw, shrunk = torch.cov(draws.T), shrunk_covariance(draws)
    torch.testing.assert_close(shrunk.diagonal(), raw.diagonal())
    off = ~torch.eye(6, dtype=torch.bool)
    assert float(shrunk[off].abs().sum()) < 0.5 * float(raw[off].abs().sum())


def test_example_covariance_is_the_per_point_gradient_covariance():
    g = torch.Generator().manual_seed(2)
    grads = torch.randn(100, 3, generator=g, dtype=torch.float64) + 5.0
    chunks = [(grads[i:i + 32], None) for i in range(0, 100, 32)]
    cov = example_covariance(lambda x, y: x, chunks)
    torch.testing.assert_close(cov, torch.cov(grads.T), atol=1e-10, rtol=0)


# -- the "full" variant -----------------------------------------------------------------------
def _guide(rank):
    blr = make_blr(n=10, d=4)
    guide = bdl.guides.SWAG(blr.model(), rank=rank)
    with pyro.settings.context(module_local_params=True):
        guide.setup(blr.x, blr.y, 10)
    return guide


def test_snapshots_are_recovered_exactly_and_full_variant_is_their_covariance():
    guide = _guide(rank=50)
    g = torch.Generator().manual_seed(3)
    mix = torch.randn(5, 5, generator=g)
    snaps = torch.randn(40, 5, generator=g) @ mix.T + 2.0  # strongly correlated
    for s in snaps:
        guide.collect(s)
    torch.testing.assert_close(guide.snapshots(), snaps.double(), atol=1e-4, rtol=0)
    q = guide.get_posterior(variant="full", scale=0.5)
    torch.testing.assert_close(q.covariance_matrix.double(), torch.cov(snaps.double().T), atol=1e-3, rtol=1e-3)
    # the Maddox covariance ½(diag + DᵀD/(k−1)) halves the correlations: it is not the snapshots' covariance
    swag = guide.get_posterior(variant="swag", scale=0.5)
    swag_cov = swag.variance.double()  # marginal variances agree ...
    torch.testing.assert_close(swag_cov, torch.cov(snaps.double().T).diagonal(), rtol=0.1, atol=0)
    eig = _whitened_eigenvalues(torch.diag(guide.variance.double()) / 2 + torch.cov(snaps.double().T) / 2,
                                torch.cov(snaps.double().T))
    assert float(eig.max()) > 2  # ... the correlated structure does not


def test_full_variant_needs_every_snapshot_kept():
    guide = _guide(rank=3)
    for s in torch.randn(5, 5):
        guide.collect(s)
    with pytest.raises(ValueError, match="every one is kept"):
        guide.get_posterior(variant="full")


# -- defaults on a rotated, ill-conditioned posterior ----------------------------------------
@pytest.mark.parametrize("temperature", [1.0, 0.1])
def test_default_swag_spreads_like_a_rotated_ill_conditioned_posterior(temperature):
    # κ(XᵀX) = 10³ along directions that are no coordinate axis. Before (diagonal rates, ½(diag + low rank),
    # 30 snapshots) the whitened eigenvalues were [0.00, 2.6] at T = 1: the weak directions collapsed.
    blr = make_rotated_blr(n=200, d=3, noise=0.1, cond=1e3, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        post = bdl.fit(blr.model(temperature), blr.x, blr.y, method="swag", batch_size=20, seed=0, progress=False)
    assert post.info["variant"] == "full"
    mean, cov = blr.posterior(temperature)
    draws = as_matrix(post.sample(20000, seed=1))
    eig = _whitened_eigenvalues(torch.cov(draws.T), cov)
    assert 0.5 <= float(eig.min()) and float(eig.max()) <= 2.0, eig
    z = ((draws.mean(0) - mean) / cov.diag().sqrt()).abs()
    assert float(z.max()) < 0.6 / temperature ** 0.5


def test_diagonal_preconditioner_and_explicit_epochs_keep_the_old_run():
    # explicit options reproduce the run before the dense whitening (no dense work, the same variant)
    blr = make_blr(n=60, d=2)
    kw = dict(method="swag", batch_size=10, seed=0, progress=False, epochs=20, variant="swag")
    a = bdl.fit(blr.model(), blr.x, blr.y, preconditioner="fisher", **kw)
    b = bdl.fit(blr.model(), blr.x, blr.y, preconditioner="fisher", **kw)
    torch.testing.assert_close(a.guide.swa_mean, b.guide.swa_mean, rtol=0, atol=0)
    dense = bdl.fit(blr.model(), blr.x, blr.y, **kw)
    assert not torch.equal(dense.guide.swa_mean, a.guide.swa_mean)
    with pytest.raises(ValueError, match="preconditioner must be"):
        bdl.fit(blr.model(), blr.x, blr.y, preconditioner="full", **kw)
