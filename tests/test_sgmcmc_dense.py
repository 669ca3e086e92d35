"""The dense preconditioner of SG-MCMC for small models (`pyro_bdl.infer.sgmcmc.whitening`): a rotated,
ill-conditioned BLR (κ(XᵀX) = 10³, `blr.make_rotated_blr`), which the diagonal Fisher kernel cannot whiten
(issue 13: sweep configs 1 and 15 failed, loudly, at defaults), sampled at defaults with minibatches and checked
against the closed-form tempered posterior along its own eigendirections."""
import warnings

import pytest
import torch

import pyro_bdl as bdl
from blr import as_matrix, make_rotated_blr
from interrupt import interrupt_after
from pyro_bdl.infer.sgmcmc.whitening import DENSE_MAX_SIZE, Whitened, whitening_map

BLR = make_rotated_blr()  # d = 5 (+ bias), N = 50, noise 0.02, κ(XᵀX) = 10³


def eigen_ratios(post, blr, T):
    """Per eigendirection of the exact p_T covariance: the draws' variance / the exact one, and |mean − exact| / sd."""
    mean, cov = blr.posterior(T)
    lam, Q = torch.linalg.eigh(cov)
    m = as_matrix({k: v.reshape(-1, *v.shape[2:]) for k, v in post.samples.items()})
    proj = (m - mean) @ Q
    return proj.var(0) / lam, (proj.mean(0) / lam.sqrt()).abs()


def fit_at_defaults(method, T, **kw):
    """``method`` at its default options, run length included (4 chains: ≈ 600 draws for sgld/sghmc, 400 for
    cSG-MCMC, enough for the bands below), SamplerWarnings as errors. cSG-MCMC's default is stated for its sampling
    stages (`csgmcmc_min_steps`: 20 000 steps, 4 cycles of 500 warm-up and 500 sampling steps, 25 draws per cycle).
    At the earlier default (4000 steps, 3 draws per cycle: 100 sampling steps per cycle, a lag-5 autocorrelation of
    0.8 there, ≈ 35 effective draws over 4 chains) it failed these bands at every T, one direction at 0.69–0.79
    (notes/issue-13-lead11.md, lead13.md); at the default now it reads 0.88–1.07, z ≤ 0.10, over T = 1, 0.1, 0.01."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", bdl.diagnostics.SamplerWarning)
        return bdl.fit(BLR.model(temperature=T), BLR.x, BLR.y, method=method, batch_size=10, num_chains=4, seed=0,
                       progress=False, **kw)


CASES = [pytest.param("sgld", 0.01, id="sgld-T0.01"), pytest.param("csgmcmc", 0.01, id="csgmcmc-T0.01"),
         *[pytest.param(m, T, id=f"{m}-T{T}", marks=pytest.mark.slow)
           for m in ("sgld", "sghmc", "csgmcmc") for T in (1.0, 0.1, 0.01) if (m, T) not in (("sgld", 0.01),
                                                                                          ("csgmcmc", 0.01))]]


@pytest.mark.parametrize("method,T", CASES)
def test_defaults_sample_a_rotated_ill_conditioned_blr(method, T):
    """Fails before the dense preconditioner: the diagonal kernel's draws along the softest rotated direction had not
    relaxed at the default length (variance ratios 0.67–1.53, mean 1.15 sd off, split R-hat 2.4 and a SamplerWarning,
    sgld T = 1, 2 chains). Bands: ±25% on each variance and 0.2 sd on each mean, ≈ 3.5 sd of a 600-draw estimate."""
    post = fit_at_defaults(method, T)
    assert post.info["preconditioner"] == "dense"
    if method == "csgmcmc":  # the default length and draws: 20 000 steps of 5 batches, 4 cycles × 25 draws
        assert post.info["epochs"] == 4000 and post.samples["bias"].shape[:2] == (4, 100)
    ratio, z = eigen_ratios(post, BLR, T)
    assert ((ratio > 0.75) & (ratio < 1.33)).all(), ratio
    assert (z < 0.2).all(), z


def test_diagonal_option_gives_the_numbers_of_the_diagonal_kernel():
    """``preconditioner="fisher"`` is the diagonal kernel as it was before the dense one (numbers of main at
    b6601e1, same machine class; the chains are contractive on this BLR, so float rounding does not grow)."""
    expected = {"sgld": (-71.06872469186783, 52.207955251818305, 11.648522824048996),
                "sghmc": (-166.86845606565475, 162.61838370679567, 32.982599318027496)}
    for method, kw in (("sgld", {}), ("sghmc", dict(num_chains=2))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bdl.diagnostics.SamplerWarning)
            post = bdl.fit(BLR.model(temperature=0.1), BLR.x, BLR.y, method=method, batch_size=10, epochs=40, seed=0,
                           progress=False, preconditioner="fisher", **kw)
        w, b = post.samples["weight"].double(), post.samples["bias"].double()
        got = (float(w.sum()), float((w * w).sum()), float(b.sum()))
        assert got == pytest.approx(expected[method], rel=1e-5), (method, got)
        assert post.info["preconditioner"] == "fisher" and "whitening" not in post.info


def test_auto_is_the_diagonal_kernel_above_the_size_threshold():
    """A network with DENSE_MAX_SIZE + 1 parameters: the default is the diagonal kernel, bit for bit."""
    torch.manual_seed(0)
    hidden = (DENSE_MAX_SIZE + 1 - 1) // 4  # 2·h + h + h + 1 = 4h + 1 parameters
    assert 4 * hidden + 1 == DENSE_MAX_SIZE + 1
    x = torch.randn(40, 2)
    y = x[:, 0] - x[:, 1] + 0.1 * torch.randn(40)
    posts = []
    for pre in ("auto", "fisher"):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(2, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
        model = bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 1.0),
                                  likelihood=bdl.likelihoods.Gaussian(scale=0.1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bdl.diagnostics.SamplerWarning)
            posts.append(bdl.fit(model, x, y, method="sghmc", batch_size=10, epochs=8, seed=0, progress=False,
                                 preconditioner=pre))
    assert posts[0].info["preconditioner"] == "fisher"
    for name in posts[1].samples:
        assert torch.equal(posts[0].samples[name], posts[1].samples[name]), name


def test_whitening_map_whitens_and_keeps_the_configurational_statistic():
    """LᵀHL = I for a positive-definite H (and for an indefinite one, |H|); (φ − φ₀)·∇_φV = (θ − θ₀)·∇_θV."""
    g = torch.Generator().manual_seed(0)
    A = torch.randn(6, 6, generator=g, dtype=torch.float64)
    H = A @ A.T + 1e-3 * torch.eye(6, dtype=torch.float64)
    L = whitening_map(H)
    assert torch.allclose(L.T @ H @ L, torch.eye(6, dtype=torch.float64), atol=1e-8)
    lam, Q = torch.linalg.eigh(H)
    indefinite = Q @ torch.diag(lam * torch.tensor([-1.0, 1, 1, -1, 1, 1], dtype=torch.float64)) @ Q.T
    L2 = whitening_map(indefinite)
    assert torch.allclose(L2.T @ H @ L2, torch.eye(6, dtype=torch.float64), atol=1e-8)

    class Quadratic:  # U(θ) = ½ θᵀHθ
        model = None

        def grad(self, theta, x, y, n):
            return 0.5 * theta @ H @ theta, H @ theta

    shift = torch.randn(6, generator=g, dtype=torch.float64)
    w = Whitened(Quadratic(), shift, L)
    phi, phi0 = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    _, g_phi = w.grad(phi, None, None, None)
    _, g_theta = Quadratic().grad(w.to_theta(phi), None, None, None)
    assert torch.allclose((phi - phi0) @ g_phi, (w.to_theta(phi) - w.to_theta(phi0)) @ g_theta)
    assert torch.allclose(w.to_phi(w.to_theta(phi)), phi)
    assert torch.allclose(g_phi - L.T @ H @ shift, phi, atol=1e-8)  # ∇_φV = Lᵀ H θ̂ + φ: H_φ = I


def _short(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bdl.diagnostics.SamplerWarning)
        return bdl.fit(BLR.model(temperature=0.1), BLR.x, BLR.y, method="sghmc", batch_size=10, epochs=40, seed=0,
                       progress=False, **kw)


def test_dense_resume_is_bit_identical(tmp_path, monkeypatch):
    """The map {θ̂, L} is part of each chain's checkpointed state: a run killed in its sampling stage (epoch 20 of
    40; the map is made at epoch 5) resumes to the uninterrupted run's draws."""
    path = str(tmp_path / "run.ckpt")
    whole = _short(num_chains=2)
    undo = interrupt_after(monkeypatch, 20)
    with pytest.raises(KeyboardInterrupt):
        _short(num_chains=2, checkpoint=path)
    undo()
    resumed = _short(num_chains=2, checkpoint=path)
    assert resumed.info["preconditioner"] == "dense"
    for name in whole.samples:
        assert torch.equal(whole.samples[name], resumed.samples[name]), name
    assert torch.equal(whole.info["whitening"], resumed.info["whitening"])


def _short64(**kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bdl.diagnostics.SamplerWarning)
        model = BLR.model(temperature=0.1)
        model.net.to(torch.float64)
        return bdl.fit(model, BLR.x.double(), BLR.y.double(), method="sghmc", batch_size=10, epochs=40, seed=0,
                       progress=False, **kw)


def test_dense_chains_stacked_fall_back_to_one_after_another():
    """Each chain has its own map, so a dense run steps its chains one after another within a step (not the vmap
    path; same groups): ``stack=True`` runs, and its chains are those of ``stack=False`` (one group per chain): in
    float64 to 10⁻¹⁰ (measured: bit for bit), so the logic is the same. In float32 chain 0 was bit-identical and
    chain 1 7.7·10⁻⁶ off at most: its θ is a row of the (K, P) stack, whose offset changes the vectorised kernels'
    rounding (the rule's docs: stacked runs agree to float rounding)."""
    a, b = _short64(num_chains=2, stack=True), _short64(num_chains=2, stack=False)
    for name in a.samples:
        torch.testing.assert_close(a.samples[name], b.samples[name], rtol=0, atol=1e-10)
    assert a.info["whitening"].shape == (2, 6, 6)
    a, b = _short(num_chains=2, stack=True), _short(num_chains=2, stack=False)
    for name in a.samples:
        torch.testing.assert_close(a.samples[name], b.samples[name], rtol=0, atol=1e-4)


def test_csgmcmc_first_warmup_starts_at_rest_in_the_whitened_coordinates():
    """The move to the dense map's Newton point is a jump, so the chain enters φ at rest (`Chain._start_whitening`).
    Carried into φ as L⁻¹v, the exploration's velocity is many stationary velocities along the stiff directions: with
    ``exploration=0.5`` (a descent step 5× the default's) chain 1 of seed 0 started its first warm-up with it and was
    thrown out to 25 posterior sds along the softest direction, where the Fisher step froze
    it for the cycle (mean |z|²/dim of that cycle's draws 156; the other cycles and chains 0.7–1.6). Every cycle's
    draws of both chains must now be in the bulk."""
    T = 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bdl.diagnostics.SamplerWarning)  # 4 short stages: not judged here
        post = bdl.fit(BLR.model(temperature=T), BLR.x, BLR.y, method="csgmcmc", batch_size=10, num_chains=2, seed=0,
                       progress=False, samples_per_cycle=20, exploration=0.5)
    mean, cov = BLR.posterior(T)
    lam, Q = torch.linalg.eigh(cov)
    for c in range(2):
        m = as_matrix({k: v[c] for k, v in post.samples.items()})
        z = (((m - mean) @ Q) / lam.sqrt()).reshape(4, 20, -1)  # (cycle, draw, direction), whitened
        per_cycle = (z ** 2).mean((1, 2))
        assert (per_cycle < 2.0).all(), (c, per_cycle)
