"""SGLD, SGHMC and cyclical SG-MCMC: against the closed-form Bayesian linear regression posterior,
the cyclical schedule and stages against Zhang et al.'s formula, chains, seeds and resume."""
import math
import warnings

import pytest
import torch

import pyro_bdl as bdl
from interrupt import interrupt_after
from pyro_bdl.infer import cyclical_draw_steps, cyclical_schedule, sampling_stage, sghmc_step, sgld_step

SIGMA, S, N, B = 0.5, 1.0, 64, 32  # noise std, prior std, data points, minibatch (N/B = 2)


# -- Bayesian linear regression, closed form --------------------------------------------------
def blr_data(seed=0):
    """Inputs with centred, orthogonal columns of squared norm N, so the posterior precision
    Φᵀ Φ / σ² + I / s² (Φ = [x, 1]) is a multiple of I and every direction mixes at one rate."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 2, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(x - x.mean(0))
    x = (q * math.sqrt(N)).float()
    y = x @ torch.tensor([1.0, -0.5]) + 0.3 + SIGMA * torch.randn(N, generator=g)
    return x, y


def blr_posterior(x, y, temperature=1.0, tempering="posterior"):
    """Mean and covariance of w = (weight₁, weight₂, bias) under N(0, s²I) prior and known noise σ.

    Posterior tempering: covariance × T, same mean. Likelihood tempering: noise variance σ²T."""
    phi = torch.cat([x, torch.ones(len(x), 1)], 1).double()
    noise_var = SIGMA ** 2 * (temperature if tempering == "likelihood" else 1.0)
    precision = phi.T @ phi / noise_var + torch.eye(3, dtype=torch.float64) / S ** 2
    cov = torch.linalg.inv(precision)
    mean = cov @ phi.T @ y.double() / noise_var
    return mean, cov * (temperature if tempering == "posterior" else 1.0)


def blr_model(temperature=1.0, tempering="posterior"):
    torch.manual_seed(0)
    return bdl.BayesianModel(torch.nn.Linear(2, 1), prior=bdl.priors.Gaussian(0.0, S),
                             likelihood=bdl.likelihoods.Gaussian(scale=SIGMA), temperature=temperature,
                             tempering=tempering)


def flat_draws(post):
    w = post.samples["weight"]
    return torch.cat([w.reshape(*w.shape[:2], 2), post.samples["bias"]], -1).reshape(-1, 3).double()


def whitened_moments(post, mean, cov):
    """Mean and covariance of L⁻¹(w − μ) for Σ = LLᵀ: 0 and I for exact draws."""
    L = torch.linalg.cholesky(cov)
    z = torch.linalg.solve_triangular(L, (flat_draws(post) - mean).T, upper=False).T
    m = z.mean(0)
    return m, (z - m).T @ (z - m) / len(z)


def assert_matches(post, mean, cov):
    """Draws match N(mean, cov): whitened mean ≈ 0 and whitened covariance ≈ I.

    A missing factor 2 in the noise halves the covariance (ratio 0.5), a missing N/B doubles it
    here (N/B = 2), a wrong temperature scales it by 10: the bands [0.85, 1.25] on the average
    variance and [0.65, 1.55] per direction catch all three, while leaving room for Monte Carlo
    error (~5%) and the O(ε) bias of the discretised dynamics (≲ 10% at the step sizes used)."""
    m, c = whitened_moments(post, mean, cov)
    ratio = float(torch.diagonal(c).mean())
    eig = torch.linalg.eigvalsh(c)
    assert m.abs().max() < 0.35, f"whitened mean {m}"
    assert 0.85 < ratio < 1.25, f"average variance ratio {ratio:.3f}, eigenvalues {eig}"
    assert eig.min() > 0.65 and eig.max() < 1.55, f"whitened covariance eigenvalues {eig}"


def curvature(temperature=1.0, tempering="posterior"):
    """λ, the (single) eigenvalue of the Hessian of V = T·U_T, which sets the step size."""
    x, y = blr_data()
    _, cov = blr_posterior(x, y, temperature, tempering)
    return float(torch.linalg.eigvalsh(torch.linalg.inv(cov) * temperature).max())


# -- statistical checks ------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sgld", "sghmc"])
def test_matches_blr_posterior(method):
    x, y = blr_data()
    lam = curvature()
    # ελ = 0.1 (SGLD) / 0.02 with friction 0.2 (SGHMC): both mix within ~10 steps (lr per data point: ε = lr/N).
    opts = dict(lr=0.1 / lam * N) if method == "sgld" else dict(lr=0.02 / lam * N, momentum_decay=0.2)
    post = bdl.fit(blr_model(), x, y, method=method, batch_size=B, epochs=1500, warmup=100, seed=1,
                   progress=False, preconditioner=None, **opts)
    assert post.samples["weight"].shape == (1, 1400, 1, 2)
    assert_matches(post, *blr_posterior(x, y))


@pytest.mark.parametrize("method,tempering", [("sgld", "posterior"), ("sghmc", "likelihood")])
def test_cold_posterior_covariance(method, tempering):
    """T = 0.1: posterior tempering scales the covariance by T; likelihood tempering uses σ²T.
    The SGHMC run passes per_datapoint=True explicitly, the default reading (ε = lr/N)."""
    T = 0.1
    x, y = blr_data()
    lam = curvature(T, tempering)
    opts = (dict(lr=0.1 / lam * N) if method == "sgld"
            else dict(lr=0.02 / lam * N, per_datapoint=True, momentum_decay=0.2))
    post = bdl.fit(blr_model(tempering=tempering), x, y, method=method, batch_size=B, epochs=1500, warmup=100,
                   seed=2, temperature=T, progress=False, preconditioner=None, **opts)
    assert post.info["temperature"] == T
    assert_matches(post, *blr_posterior(x, y, T, tempering))


# -- update rules and schedules ------------------------------------------------------------------
def test_update_rules():
    theta, grad, xi = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 1.0]), torch.tensor([0.3, -0.7])
    eps, T, a = 0.01, 0.5, 0.1
    assert torch.allclose(sgld_step(theta, grad, eps, T, xi), theta - eps * grad + math.sqrt(2 * eps * T) * xi)
    v0 = torch.tensor([0.2, 0.1])
    th, v = sghmc_step(theta, v0, grad, eps, a, T, xi)
    v_expected = (1 - a) * v0 - eps * grad + math.sqrt(2 * a * eps * T) * xi
    assert torch.allclose(v, v_expected) and torch.allclose(th, theta + v_expected)
    # no noise (T → 0 or exploration): plain SGD / SGD with momentum 1 − α
    assert torch.allclose(sgld_step(theta, grad, eps, T, None), theta - eps * grad)
    th, v = sghmc_step(theta, v0, grad, eps, a, T, None)
    assert torch.allclose(th, theta + (1 - a) * v0 - eps * grad)


def test_cyclical_schedule_equals_formula():
    K, M, a0 = 10, 3, 0.5  # L = ⌈10/3⌉ = 4
    L = 4
    expected = [a0 / 2 * (math.cos(math.pi * ((k - 1) % L) / L) + 1) for k in range(1, K + 1)]
    assert torch.allclose(cyclical_schedule(a0, K, M), torch.tensor(expected, dtype=torch.float64))
    assert cyclical_schedule(a0, K, M)[[0, 4, 8]].tolist() == [a0, a0, a0]  # every cycle restarts at α₀
    stage = sampling_stage(K, M, 0.5)  # r_k = 0, .25, .5, .75, 0, ...
    assert stage.tolist() == [False, False, True, True] * 2 + [False, False]


def test_draw_steps_only_in_sampling_stage():
    K, M, beta, spc = 200, 4, 0.8, 3
    steps = cyclical_draw_steps(K, M, beta, spc)
    L = math.ceil(K / M)
    r = [((k - 1) % L) / L for k in steps.tolist()]
    assert len(steps) == M * spc
    assert all(ri >= beta for ri in r), "a draw was collected during exploration"
    assert steps.tolist()[spc - 1::spc] == [L * (c + 1) for c in range(M)]  # the last draw ends each cycle
    assert [(s - 1) // L for s in steps.tolist()] == sorted([c for c in range(M)] * spc)  # spc per cycle
    with pytest.raises(ValueError, match="sampling step"):
        cyclical_draw_steps(20, 4, 0.9, 3)  # 5-step cycles have 1 sampling step


def test_csgmcmc_run_collects_in_sampling_stage_and_explores_without_noise():
    """Full-batch data and the same start: two seeds follow the same (noise-free) path during the
    exploration stage of the first cycle and split as soon as noise enters in the sampling stage."""
    x, y = blr_data()
    model = blr_model()
    runs = [bdl.fit(model, x, y, method="csgmcmc", lr=0.5, cycles=2, exploration=0.5, samples_per_cycle=2,
                    epochs=20, init="net", seed=s, progress=False, preconditioner=None, sampler="sgld")
            for s in (0, 1)]
    info = runs[0].info
    K = 20
    stage = sampling_stage(K, 2, 0.5)
    assert torch.equal(info["sampling_stage"], stage)
    assert torch.allclose(info["step_size"], cyclical_schedule(0.5, K, 2).float())
    assert info["draw_steps"].tolist() == [8, 10, 18, 20]
    assert stage[info["draw_steps"] - 1].all()
    assert runs[0].samples["bias"].shape == (1, 4, 1)
    assert torch.allclose(runs[0].sample_stats["step_size"], info["step_size"][info["draw_steps"] - 1])
    loss0, loss1 = info["loss"][0], runs[1].info["loss"][0]
    # steps 1..5 explore (k = 6 is the first noisy update, whose loss shows at step 7)
    assert torch.equal(loss0[:6], loss1[:6])
    assert not torch.equal(loss0[6:], loss1[6:])


def test_csgmcmc_sgld_starts_each_exploration_at_rest(monkeypatch):
    """SGLD has no momentum of its own; the adaptive exploration is SGD with momentum 0.9. The first exploration step
    of cycle 2 used to add 0.9·v of cycle 1's last exploration step (v untouched through its warm-up and sampling,
    notes/issue-15-sgmcmc-review.md); now every exploration starts at v = 0."""
    from pyro_bdl.infer.sgmcmc import kernels
    seen, step = [], kernels.step_
    monkeypatch.setattr(kernels, "step_", lambda theta, v, *a: (seen.append(v.abs().max().item()), step(theta, v, *a)))
    x, y = blr_data()
    # the diagonal kernel: the dense one enters its whitened coordinates at rest (`Chain._start_whitening`), so its
    # cycle 1 ends with v = 0 anyway
    post = bdl.fit(blr_model(), x, y, method="csgmcmc", cycles=2, epochs=200, samples_per_cycle=2, sampler="sgld",
                   batch_size=B, seed=0, progress=False, preconditioner="fisher")
    stage = post.info["stage"]
    starts = [k for k in range(1, len(stage)) if stage[k] == 0 and stage[k - 1] != 0]
    assert starts == [200] and seen[0] == 0.0
    assert seen[199] > 0 and seen[200] == 0.0, (seen[199], seen[200])  # cycle 1 ends with v ≠ 0; cycle 2 starts at rest


def test_csgmcmc_sghmc_inner_and_chains():
    x, y = blr_data()
    post = bdl.fit(blr_model(), x, y, method="csgmcmc", sampler="sghmc", lr=0.05, momentum_decay=0.2, cycles=2,
                   samples_per_cycle=2, epochs=100, batch_size=B, num_chains=2, seed=3, progress=False,
                   preconditioner=None)
    assert post.samples["weight"].shape == (2, 4, 1, 2)
    assert post.draws_by_chain()["weight"].shape == (2, 4, 1, 2)
    assert not torch.equal(post.samples["weight"][0], post.samples["weight"][1])
    assert post.sample_stats["loss"].shape == (2, 4) and post.info["loss"].shape == (2, 200)
    # the draws are near the posterior after a short annealed run
    x_, y_ = blr_data()
    mean, _ = blr_posterior(x_, y_)
    assert (flat_draws(post).mean(0) - mean).abs().max() < 0.1


def test_chains_independent_and_reproducible():
    x, y = blr_data()
    kw = dict(method="sgld", lr=1e-4 * N, epochs=30, warmup=10, thin=5, batch_size=B, num_chains=2, progress=False,
              preconditioner=None)
    a = bdl.fit(blr_model(), x, y, seed=4, **kw)
    b = bdl.fit(blr_model(), x, y, seed=4, **kw)
    c = bdl.fit(blr_model(), x, y, seed=5, **kw)
    assert a.samples["weight"].shape == (2, 4, 1, 2)  # draws after epochs 15, 20, 25, 30
    assert a.sample_stats["step_size"].shape == (2, 4)
    assert torch.equal(a.samples["weight"], b.samples["weight"])
    assert not torch.equal(a.samples["weight"][0], a.samples["weight"][1])
    # chain seeds are spawned from the run's seed: seeds 4 and 5 share no chain
    for i in range(2):
        for j in range(2):
            assert not torch.equal(a.samples["weight"][i], c.samples["weight"][j])
    assert a.info["draw_steps"].tolist() == [30, 40, 50, 60]


def test_learned_noise_site_is_sampled_in_its_support():
    x, y = blr_data()
    torch.manual_seed(0)
    model = bdl.BayesianModel(torch.nn.Linear(2, 1), likelihood=bdl.likelihoods.Gaussian(scale=None))
    post = bdl.fit(model, x, y, method="sgld", lr=5e-4 * N, epochs=200, warmup=160, batch_size=B, progress=False,
                   preconditioner=None)
    noise = post.samples["noise_scale"]
    assert noise.shape == (1, 40) and (noise > 0).all()
    assert 0.3 < float(noise[0, -20:].mean()) < 0.8  # the data's noise is σ = 0.5


@pytest.mark.slow
def test_csgmcmc_draws_match_blr_posterior():
    """With many short cycles, the draws at the ends of the sampling stages (small steps, noise on)
    are close to exact posterior draws."""
    x, y = blr_data()
    lam = curvature()
    post = bdl.fit(blr_model(), x, y, method="csgmcmc", lr=0.3 / lam * N, cycles=60,
                   exploration=0.5, samples_per_cycle=5, epochs=6000, batch_size=B, seed=3, progress=False,
                   preconditioner=None, sampler="sgld")
    assert post.samples["bias"].shape == (1, 300, 1)
    assert_matches(post, *blr_posterior(x, y))


# -- checkpoints -----------------------------------------------------------------------------------
class Interrupted(Exception):
    pass


@pytest.mark.parametrize("method,opts,saves", [
    # two chains stacked: one driver run, a save per epoch (12 in all); interrupted mid-run
    ("sghmc", dict(lr=1e-4, epochs=12, warmup=4, thin=2, num_chains=2), 5),
    # one chain after another: one driver run (and file) per chain, 12 saves each; interrupted in chain 2
    ("sghmc", dict(lr=1e-4, epochs=12, warmup=4, thin=2, num_chains=2, stack=False), 15),
    ("csgmcmc", dict(lr=0.5, cycles=2, epochs=12, exploration=0.5, samples_per_cycle=2), 5),
])
def test_resume_after_interrupt_is_identical(tmp_path, monkeypatch, method, opts, saves):
    x, y = blr_data()
    # a user DataLoader shuffling with the global RNG, so the resume must restore it too
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=B, shuffle=True)
    torch.manual_seed(0)
    full = bdl.fit(blr_model(), loader, method=method, seed=7, progress=False, **opts)
    path = str(tmp_path / "run.ckpt")
    restore = interrupt_after(monkeypatch, saves, Interrupted)
    torch.manual_seed(0)
    with pytest.raises(Interrupted):
        bdl.fit(blr_model(), loader, method=method, seed=7, progress=False, checkpoint=path, **opts)
    restore()
    torch.manual_seed(123)  # whatever happened in between
    resumed = bdl.fit(blr_model(), loader, method=method, seed=7, progress=False, checkpoint=path, **opts)
    for site in full.samples:
        assert torch.equal(full.samples[site], resumed.samples[site])
    assert torch.equal(full.info["loss"], resumed.info["loss"])
    assert torch.equal(full.sample_stats["loss"], resumed.sample_stats["loss"])
    # a finished checkpoint returns the same posterior at once; other options are refused
    again = bdl.fit(blr_model(), loader, method=method, seed=7, progress=False, checkpoint=path, **opts)
    assert torch.equal(again.samples["weight"], full.samples["weight"])
    with pytest.raises(ValueError, match="another run"):
        bdl.fit(blr_model(), loader, method=method, seed=8, progress=False, checkpoint=path, **opts)


@pytest.mark.parametrize("saves", [2, 7])  # before and after the sampling stage measures the augmentation noise
def test_resume_of_an_augmented_run_is_identical(tmp_path, monkeypatch, saves):
    """With augmentation under reshuffling the sampling stage measures the augmentation's noise when it starts, from
    a generator seeded by the chain's own (`Chain._augmentation_noise`): a run interrupted before that (save 2) or
    after it (save 7, the frozen correction read back from the file) resumes to the same draws."""
    x, y = blr_data()
    jitter = lambda xb, g: xb + 0.3 * torch.randn(xb.shape, generator=g)  # noqa: E731
    opts = dict(batch_size=B, augment=jitter, epochs=12, warmup=4, thin=2, num_chains=2, stack=False)
    full = bdl.fit(blr_model(), x, y, method="sghmc", seed=7, progress=False, **opts)
    assert full.info["noise_correction"] == "augmentation"
    path = str(tmp_path / "run.ckpt")
    restore = interrupt_after(monkeypatch, saves, Interrupted)
    with pytest.raises(Interrupted):
        bdl.fit(blr_model(), x, y, method="sghmc", seed=7, progress=False, checkpoint=path, **opts)
    restore()
    torch.manual_seed(123)
    resumed = bdl.fit(blr_model(), x, y, method="sghmc", seed=7, progress=False, checkpoint=path, **opts)
    for site in full.samples:
        assert torch.equal(full.samples[site], resumed.samples[site])


# -- bad input ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,opts,match", [
    ("sgld", dict(lr=-1.0), "lr"),
    ("sgld", dict(epochs=10, warmup=10), "no draws"),
    ("sgld", dict(thin=0), "thin"),
    ("sgld", dict(init="prior"), "init"),
    ("sghmc", dict(momentum_decay=1.5), "momentum_decay"),
    ("csgmcmc", dict(exploration=1.0), "exploration"),
    ("csgmcmc", dict(sampler="nuts"), "sampler"),
    ("csgmcmc", dict(epochs=10, cycles=4, samples_per_cycle=3), "sampling step"),
    ("csgmcmc", dict(num_chains=0), "num_chains"),
])
def test_bad_options_fail_before_work(method, opts, match, monkeypatch):
    import pyro_bdl.infer.sgmcmc.run as sg

    monkeypatch.setattr(sg, "run_chain", lambda *a, **k: pytest.fail("work started"))
    x, y = blr_data()
    with pytest.raises(ValueError, match=match):
        bdl.fit(blr_model(), x, y, method=method, progress=False, **opts)


def test_prior_curvature_is_the_tempered_prior_precision():
    """`Objective.prior_curvature` = s_prior / Var_prior per weight: the prior's share of the Hessian's diagonal."""
    from pyro_bdl.model.potential import Objective
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    for T, mode, expected in [(1.0, "posterior", 0.25), (0.1, "posterior", 2.5), (0.1, "likelihood", 0.25)]:
        model = bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 2.0), likelihood=bdl.likelihoods.Gaussian(scale=0.5),
                                  temperature=T, tempering=mode)
        curvature = Objective(model, torch.randn(2, 3)).prior_curvature()
        assert curvature.shape == (21,) and torch.allclose(curvature, torch.full_like(curvature, expected))


def test_frozen_step_of_a_dead_coordinate_is_the_prior_alone_step_at_every_temperature():
    """`adaptation.freeze`: a coordinate whose gradient was 0 in the window (a dead ReLU unit) gets E[ĝ²] floored at
    T²·(prior curvature of U_T) = T·H_prior(V), the prior-alone bound in V's units, so its Fisher step G = lr·T/E[ĝ²]
    makes G·H_prior(V) = lr at every T (not lr·T², the step of a floor in U_T's units; issue 13, stop 32)."""
    from pyro_bdl.infer.sgmcmc import kernels as K
    from pyro_bdl.infer.sgmcmc.adaptation import Dynamics, freeze
    lr, sigma2 = 0.05, 2.0
    for T in (1.0, 0.1, 0.01):
        curvature = torch.full((3,), 1.0 / (T * sigma2), dtype=torch.float64)  # posterior tempering: s_prior = 1/T
        m = K.init_moments(torch.zeros(3, dtype=torch.float64))
        m = K.update_moments(m, torch.tensor([0.0, 1.0, 30.0], dtype=torch.float64), None)
        for kernel in ("sgld", "sghmc"):
            dynamics = Dynamics(kernel, temperature=T, preconditioner="fisher", friction=0.01, curvature_floor=curvature)
            step = freeze(m, m, dynamics, lr)["step"]
            h_prior_v = T / (T * sigma2)  # the prior's curvature in V = T·U_T: 1/σ²
            assert torch.isclose(step[0] * h_prior_v, torch.tensor(lr, dtype=torch.float64)), (T, kernel, step)
            # a live coordinate above the floor keeps G = lr·T/E[ĝ²]
            assert torch.isclose(step[2], torch.tensor(lr * T / 900.0, dtype=torch.float64)), (T, kernel, step)


@pytest.mark.parametrize("method", ["sgld", "sghmc"])
def test_adaptive_defaults_sample_p_T_of_a_relu_classifier_at_cold_T(method):
    """Digits, 300 images, MLP 64-32-10 ReLU, N(0, 1), batch 100, defaults, T = 0.01: the configurational temperature
    (the positions' accuracy diagnostic, Wenzel et al. 2020) reads T within 30% and no `SamplerWarning` is issued.
    With the frozen step floored in U_T's units instead of V's it read 0.02·T (SGHMC) — the chain stood still."""
    from pyro_bdl.evaluate.diagnostics import SamplerWarning
    from pyro_bdl.examples.datasets import load_dataset
    T = 0.01
    ds = load_dataset("digits", train_size=300)
    torch.manual_seed(0)
    model = bdl.BayesianModel(bdl.networks.mlp(64, [32], 10, "relu"), prior=bdl.priors.Gaussian(0.0, 1.0),
                              likelihood=bdl.likelihoods.Categorical(), temperature=T)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = bdl.fit(model, ds.loader(100, seed=0), method=method, seed=0, progress=False)
    conf = post.info["configurational_temperature"][:, 0] / T
    assert ((conf > 0.7) & (conf < 1.3)).all(), conf
    assert not [w for w in caught if issubclass(w.category, SamplerWarning)], [str(w.message) for w in caught]


def test_augmentation_noise_is_the_conditional_variance_of_the_batch_gradient():
    """`gradients.augmentation_noise` = E_b[Var_a(ĝ | b)] of ĝ = T·∇U_T: its pair estimate E[(ĝ₁ − ĝ₂)²]/2 agrees with
    a direct one (the variance over 16 augmentations of each of 400 fixed batches) within 15%, and is 0 for an
    augmentation that changes nothing."""
    from pyro_bdl.infer.data import FitData
    from pyro_bdl.infer.sgmcmc.gradients import augmentation_noise
    from pyro_bdl.model.potential import Objective
    x, y = blr_data()
    T = 0.1
    model = blr_model(temperature=T)
    jitter = lambda xb, g: xb + 0.3 * torch.randn(xb.shape, generator=g)  # noqa: E731
    data = FitData(model, x, y, batch_size=10, augment=jitter)
    objective = Objective(model, x)
    theta = objective.initial().clone() + 0.5
    got = augmentation_noise(objective, data, theta, T, torch.Generator().manual_seed(1), pairs=3000)
    g = torch.Generator().manual_seed(2)
    direct = torch.zeros_like(theta)
    for _ in range(400):
        idx = torch.randint(N, (10,), generator=g)
        grads = torch.stack([T * objective.grad(theta, jitter(x[idx], g), y[idx], N)[1] for _ in range(16)])
        direct += grads.var(0) / 400
    assert ((got / direct - 1).abs() < 0.15).all(), (got, direct)
    same = FitData(model, x, y, batch_size=10, augment=lambda xb, g: xb)
    assert torch.equal(augmentation_noise(objective, same, theta, T, torch.Generator().manual_seed(1)),
                       torch.zeros_like(theta))


def test_sghmc_subtracts_the_augmentation_noise_under_reshuffling():
    """Digits, 500 images with ±1-pixel shifts, MLP 64-32-10 ReLU, batch 50, T = 1, defaults: a shift drawn afresh
    at every step is i.i.d. gradient noise that reshuffling does not cancel. Not subtracted
    (``noise_correction=False``, the behaviour before), it heated SGHMC's momentum to a kinetic temperature of 1.15·T;
    ``"auto"`` subtracts its measured share (``info["noise_correction"] == "augmentation"``) and reads T."""
    from pyro_bdl.examples.datasets import load_dataset
    ds = load_dataset("digits", train_size=500)
    shift = ds.shift_augmentation(max_shift=1, flip=False)
    kinetic = {}
    for correction in ("auto", False):
        torch.manual_seed(0)
        model = bdl.BayesianModel(bdl.networks.mlp(64, [32], 10, "relu"), prior=bdl.priors.Gaussian(0.0, 1.0),
                                  likelihood=bdl.likelihoods.Categorical())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            post = bdl.fit(model, ds.x_train, ds.y_train, batch_size=50, augment=shift, method="sghmc", seed=0,
                           noise_correction=correction, progress=False)
        assert post.info["noise_correction"] == ("augmentation" if correction == "auto" else False)
        kinetic[correction] = float(post.info["kinetic_temperature"][0, 0])
    assert 0.85 < kinetic["auto"] < 1.1 < kinetic[False], kinetic


@pytest.mark.parametrize("size,hidden,batch", [(500, 64, 50), (500, 128, 100)])
def test_augmented_warmup_does_not_blow_the_weights_up(size, hidden, batch):
    """Digits with ±1-pixel shifts, MLP 64-H-10 ReLU, N(0, 1), T = 1, default SGHMC (plain gradient: no control variate
    with augmentation). A weight into a unit that wakes up under a new shift has noise far above the warm-up's running
    mean; bounding the warm-up's heat by the mean alone let the first warm-up steps blow the weights up (mean w² of
    the first draw 2.0 and 5.3 against the prior's 1, configurational temperature 0.52 and −0.27·T, a warning). With
    this step's own split-batch estimate in the bound the first draw is at the prior's scale and the run reads T."""
    from pyro_bdl.evaluate.diagnostics import SamplerWarning
    from pyro_bdl.examples.datasets import load_dataset
    ds = load_dataset("digits", train_size=size)
    torch.manual_seed(0)
    model = bdl.BayesianModel(bdl.networks.mlp(64, [hidden], 10, "relu"), prior=bdl.priors.Gaussian(0.0, 1.0),
                              likelihood=bdl.likelihoods.Categorical())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = bdl.fit(model, ds.x_train, ds.y_train, batch_size=batch, method="sghmc", seed=0, progress=False,
                       augment=ds.shift_augmentation(max_shift=1, flip=False))
    first = sum(float((v[0, 0] ** 2).sum()) for v in post.samples.values()) / sum(
        v[0, 0].numel() for v in post.samples.values())
    assert first < 1.5, first
    conf = float(post.info["configurational_temperature"][0, 0])
    assert 0.7 < conf < 1.3, conf
    assert not [w for w in caught if issubclass(w.category, SamplerWarning)], [str(w.message) for w in caught]


def test_an_augmented_cold_run_that_has_not_mixed_is_told_why():
    """500 augmented digits, 64-32-10, batch 50, T = 0.01, default SGHMC: without the control variate the chain needs
    ∝ 1/T epochs and at the default length reads 0.12·T; its `SamplerWarning` says why and what to raise."""
    from pyro_bdl.evaluate.diagnostics import SamplerWarning
    from pyro_bdl.examples.datasets import load_dataset
    from pyro_bdl.infer.sgmcmc.run import AUGMENTED_COLD_HINT
    ds = load_dataset("digits", train_size=500)
    torch.manual_seed(0)
    model = bdl.BayesianModel(bdl.networks.mlp(64, [32], 10, "relu"), prior=bdl.priors.Gaussian(0.0, 1.0),
                              likelihood=bdl.likelihoods.Categorical(), temperature=0.01)
    with pytest.warns(SamplerWarning, match="configurational temperature") as caught:
        bdl.fit(model, ds.x_train, ds.y_train, batch_size=50, method="sghmc", seed=0, progress=False,
                augment=ds.shift_augmentation(max_shift=1, flip=False))
    assert any(AUGMENTED_COLD_HINT in str(w.message) for w in caught)


def test_augmented_csgmcmc_warmups_do_not_diverge():
    """cSG-MCMC's SGHMC warm-ups have the same heat bound: on 500 augmented digits (64-128-10, batch 100, T = 1, defaults)
    its first warm-up diverged (DivergenceError at step 811) before the bound saw each step's own noise. Its draws now
    stay at the prior's scale. (Its 100-step sampling stages read a configurational temperature of ≈ 0.2·T here and
    warn: short stages from a noise-free descent, notes/issue-13-lead11.md.) It runs the earlier default length, 4000
    steps (the default is now 20 000, `csgmcmc_min_steps`), where that warm-up diverged, at a fifth of the cost."""
    from pyro_bdl.examples.datasets import load_dataset
    ds = load_dataset("digits", train_size=500)
    torch.manual_seed(0)
    model = bdl.BayesianModel(bdl.networks.mlp(64, [128], 10, "relu"), prior=bdl.priors.Gaussian(0.0, 1.0),
                              likelihood=bdl.likelihoods.Categorical())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = bdl.fit(model, ds.x_train, ds.y_train, batch_size=100, method="csgmcmc", seed=0, progress=False,
                       augment=ds.shift_augmentation(max_shift=1, flip=False), epochs=800)
    size = sum(v[0, 0].numel() for v in post.samples.values())
    per_weight = sum((v[0] ** 2).reshape(v.shape[1], -1).sum(-1) for v in post.samples.values()) / size
    assert (per_weight < 1.5).all(), per_weight


@pytest.mark.parametrize("method", ["sgld", "sghmc"])
def test_adaptive_defaults_do_not_blow_up_on_a_relu_classifier(method):
    """Digits MLP (dead ReLU units): without the prior-curvature floor on E[ĝ²] and the warm-up step cap the frozen
    step of weights whose gradient was ≈ 0 in the estimation window was unbounded and the default run diverged at the
    first sampling step. At defaults it now runs, and SGHMC's kinetic temperature is near T."""
    from pyro_bdl.examples.datasets import load_dataset
    ds = load_dataset("digits", train_size=500)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    model = bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Categorical())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = bdl.fit(model, ds.x_train, ds.y_train, method=method, batch_size=100, epochs=60, num_chains=1,
                       progress=False)
    accuracy = float((post.predict(ds.x_test).probs.argmax(-1) == ds.y_test).float().mean())
    assert accuracy > 0.85, accuracy
    if method == "sghmc":
        kinetic = float(post.info["kinetic_temperature"][0, 0])
        assert 0.7 < kinetic < 1.4, kinetic
    assert all(torch.isfinite(d).all() for d in post.flat_samples().values())


def test_spike_guard_shrinks_the_step_only_for_outlying_gradients():
    """`guard.SpikeGuard` (`run._Guard`): typical gradients (EMA within 2× the frozen E[ĝ²]) keep the frozen constants exactly; a
    coordinate hit by a gradient 10⁴× its E[ĝ²] gets a step whose move G·|ĝ| is bounded by ≈ 200·lr·T/|ĝ|, with
    the noise and kinetic weight of that smaller step (with and without the subtracted gradient noise)."""
    from pyro_bdl.infer.sgmcmc import kernels as K
    from pyro_bdl.infer.sgmcmc.run import Dynamics, _Guard, _implied_square
    lr, T = 0.05, 0.5
    square, alpha, noise = torch.tensor([4.0, 1.0, 0.25]), torch.tensor([0.3, 0.5, 0.2]), torch.tensor([0.1, 0.2, 0.0])
    step = lr * T / square
    reference = _implied_square(step, Dynamics("sghmc", temperature=T, preconditioner="fisher"), lr)
    assert torch.allclose(reference, square)
    for correction in (None, noise):
        c = K.coefficients("sghmc", step, T, alpha, correction)
        parts = None if correction is None else (2 * alpha * step * T, step * step * correction)
        weight = (1 - alpha / 2) / step
        guard = _Guard(c, weight, reference, reference.clone(), True, parts)
        g = torch.Generator().manual_seed(0)
        for _ in range(200):  # Gaussian gradients with the frozen second moment: the guard never binds
            got, w = guard(torch.randn(3, generator=g) * square.sqrt())
            assert torch.equal(got.step, step) and torch.allclose(got.scale, c.scale) and torch.allclose(w, weight)
        got, w = guard(torch.tensor([0.0, 100.0, 0.0]))  # ĝ² = 10⁴ × E[ĝ²] on coordinate 1
        assert torch.equal(got.step[[0, 2]], step[[0, 2]])
        assert float(got.step[1] * 100.0) <= 200 * lr * T / 100.0 * 1.01 < float(step[1] * 100.0)
        shrunk = K.coefficients("sghmc", got.step.clone(), T, alpha, correction)
        assert torch.allclose(got.scale, shrunk.scale) and torch.allclose(w, (1 - alpha / 2) / got.step)
        # a schedule scale (cSG-MCMC's cosine) multiplies the frozen step, noise and weight follow
        fresh = _Guard(c, weight, reference, reference.clone(), True, parts)
        got, w = fresh(square.sqrt(), 0.5)
        half = K.coefficients("sghmc", 0.5 * step, T, alpha, correction)
        assert torch.allclose(got.step, half.step) and torch.allclose(got.scale, half.scale)
        assert torch.allclose(w, (1 - alpha / 2) / half.step)


@pytest.mark.parametrize("method", ["sgld", "sghmc"])
def test_adaptive_defaults_survive_gradient_spikes_on_a_relu_mlp(method):
    """Digits, 500 images, MLP 64-32-10 ReLU, N(0, 1), batch 50, 100 epochs, T = 1, defaults: before the spike guard
    default SGHMC was thrown out of the posterior by rare minibatch gradients 10³–10⁵ × the frozen E[ĝ²] and
    diverged (seed 0; 2 of 4 seeds), and without the T²·prior-curvature bound in every adaptive step SGLD's first
    warm-up steps diverged (4 of 4 seeds). Both run now, with a test NLL near the other seeds' (0.2–0.6)."""
    from pyro_bdl.examples.datasets import load_dataset
    ds = load_dataset("digits", seed=0, train_size=500)
    torch.manual_seed(0)
    model = bdl.BayesianModel(bdl.networks.mlp(64, [64, 32], 10, "relu"), prior=bdl.priors.Gaussian(0.0, 1.0),
                              likelihood=bdl.likelihoods.Categorical())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = bdl.fit(model, ds.x_train, ds.y_train, method=method, batch_size=50, epochs=100, seed=0, progress=False)
    nll = bdl.metrics.nll(post.predict(ds.x_test, num_samples=20), ds.y_test)
    assert nll < 0.8, nll


# -- the loop: in-place steps, blocked host reads, the driver's info schema ----------------------------------------
def test_pure_kernel_pair_is_the_in_place_step():
    """`kernels.init` / `kernels.update` (the pure (init, update) pair of the module docs) leave their inputs alone and
    give the in-place step `kernels.step_` (what the chains run), for both kernels; `update_moments` = its in-place
    form on a copy."""
    from pyro_bdl.infer.sgmcmc import kernels as K
    g = torch.Generator().manual_seed(3)
    theta, grad, xi, noise = (torch.randn(4, generator=g, dtype=torch.float64) for _ in range(4))
    state = K.init(theta)
    assert torch.equal(state.theta, theta) and state.theta is not theta and torch.equal(state.momentum, 0 * theta)
    for kernel in ("sgld", "sghmc"):
        before = K.KernelState(state.theta.clone(), state.momentum.clone() + 0.1)
        new = K.update(before, grad, kernel=kernel, step_size=0.01, temperature=0.5, noise=xi, friction=0.2,
                       grad_noise=noise.abs() * 1e-3)
        th, mo = before.theta.clone(), before.momentum.clone()
        K.step_(th, mo, grad, K.coefficients(kernel, 0.01, 0.5, 0.2, noise.abs() * 1e-3), xi)
        assert torch.equal(new.theta, th) and torch.equal(new.momentum, mo)
        assert torch.equal(before.theta, state.theta) and torch.equal(before.momentum, state.momentum + 0.1)
    m = K.init_moments(theta)
    copy = K.update_moments(m, grad, noise.abs())
    assert m.count == 0 and torch.equal(m.square, 0 * theta) and copy.count == 1
    assert torch.equal(copy.square, grad * grad) and torch.equal(copy.noise, noise.abs())


def test_in_place_step_and_moments_equal_the_formulas():
    """`kernels.step_` (what the loop runs, in place) and `update_moments_` are the update rules of the module docs,
    with per-coordinate G, α and B̂ (the adaptive sampling stage) and with numbers (the plain kernel)."""
    from pyro_bdl.infer.sgmcmc import kernels as K
    g = torch.Generator().manual_seed(0)
    theta, v, grad, xi = (torch.randn(5, generator=g, dtype=torch.float64) for _ in range(4))
    G, a, Bn, T = torch.rand(5, dtype=torch.float64) * 0.1, torch.rand(5, dtype=torch.float64), \
        torch.rand(5, dtype=torch.float64) * 0.1, 0.7
    for step, friction, noise in [(G, a, Bn), (0.05, 0.2, None)]:
        th, mo = theta.clone(), v.clone()
        K.step_(th, mo, grad, K.coefficients("sghmc", step, T, friction, noise), xi)
        var = 2 * friction * step * T - (0 if noise is None else step ** 2 * noise)
        v_expected = (1 - friction) * v - step * grad + torch.as_tensor(var).clamp(min=0).sqrt() * xi
        assert torch.allclose(mo, v_expected) and torch.allclose(th, theta + v_expected)
        th = theta.clone()
        K.step_(th, th, grad, K.coefficients("sgld", step, T, grad_noise=noise), xi)
        var = 2 * step * T - (0 if noise is None else step ** 2 * noise)
        assert torch.allclose(th, theta - step * grad + torch.as_tensor(var).clamp(min=0).sqrt() * xi)
    grads = [torch.randn(5, generator=g, dtype=torch.float64) for _ in range(4)]
    m = K.init_moments(theta)
    for i, gi in enumerate(grads):
        m = K.update_moments_(m, gi, gi.abs(), decay=0.9, means=i > 0)
    stacked = torch.stack(grads[1:])
    assert m.count == 3 and m.noise_count == 3
    assert torch.allclose(m.square, (stacked ** 2).mean(0)) and torch.allclose(m.mean, stacked.mean(0))
    assert torch.allclose(m.noise, stacked.abs().mean(0))
    w = [0.1 * 0.9 ** (3 - i) for i in range(4)]
    assert torch.allclose(m.ema, sum(wi * gi ** 2 for wi, gi in zip(w, grads)))
    assert math.isclose(m.ema_weight, sum(w))


def test_recorded_temperature_sums_are_the_diagnostics_statistics():
    """The loop's on-device sums, divided by d, are `diagnostics.sampler`'s T̂_conf and T̂_kin."""
    from pyro_bdl.evaluate.diagnostics import sampler as temps
    from pyro_bdl.infer.sgmcmc import kernels as K
    from pyro_bdl.infer.sgmcmc.run import _kinetic_weight, _Record
    g = torch.Generator().manual_seed(1)
    theta, anchor, grad, v = (torch.randn(7, generator=g) for _ in range(4))
    G, a = torch.rand(7, generator=g) * 0.1, torch.rand(7, generator=g)
    record = _Record(theta)
    record.step(torch.tensor(1.0), grad, theta, anchor)
    record.kinetic(v, _kinetic_weight(K.coefficients("sghmc", G, 1.0, a), a))
    record.step(torch.tensor(2.0), grad)
    record.kinetic(v, _kinetic_weight(K.coefficients("sghmc", 0.01, 1.0, 0.1), 0.1))
    (u0, check0, conf, kin0), (u1, check1, none, kin1) = record.read()
    assert (u0, u1) == (1.0, 2.0) and math.isclose(check1, float(grad.sum()), rel_tol=1e-6) and math.isnan(none)
    assert math.isclose(conf / 7, temps.configurational_temperature(theta - anchor, grad), rel_tol=1e-5)
    assert math.isclose(kin0 / 7, temps.kinetic_temperature(v, G, a), rel_tol=1e-5)
    assert math.isclose(kin1 / 7, temps.kinetic_temperature(v, 0.01, 0.1), rel_tol=1e-5)
    assert record.read() == []


@pytest.mark.parametrize("check_every", [1, 50])
@pytest.mark.parametrize("bad", [7, 30])  # a burn-in step (Σĝ checked) and a sampling step (θ·ĝ checked)
def test_nonfinite_gradient_is_named_at_its_step(monkeypatch, check_every, bad):
    """The loop reads its per-step checks to the host in blocks (`run.CHECK_EVERY`): a gradient that turns
    non-finite at step ``bad`` while the loss is still finite is reported at that step either way."""
    import pyro_bdl.infer.sgmcmc.run as sg
    from pyro_bdl.model.potential import Objective
    monkeypatch.setattr(sg, "CHECK_EVERY", check_every)
    real, calls = Objective.grad, {"n": 0}

    def grad(self, *args, **kwargs):
        u, g = real(self, *args, **kwargs)
        calls["n"] += 1
        return u, (g * math.inf if calls["n"] == bad else g)

    monkeypatch.setattr(Objective, "grad", grad)
    x, y = blr_data()
    with pytest.raises(FloatingPointError, match=f"gradient of the potential became non-finite at step {bad} "):
        bdl.fit(blr_model(), x, y, method="sgld", preconditioner=None, lr=1e-4 * N, epochs=40, batch_size=B,
                progress=False)


@pytest.mark.parametrize("method,opts,name", [
    ("csgmcmc", dict(preconditioner=None, lr=50.0 * N, cycles=2), "csgmcmc"),  # not its inner kernel's name (sghmc)
    ("sgld", dict(preconditioner=None, lr=1.0 * N, num_chains=2, stack=False), "sgld chain [12]/2"),
    ("sgld", dict(preconditioner=None, lr=1.0 * N, num_chains=2, stack=True), "sgld chain [12]/2"),
])
def test_divergence_names_the_method_and_the_chain(method, opts, name):
    """A diverging run is named as the user called it (``method``), and with several chains by the chain."""
    from pyro_bdl.infer.divergence import DivergenceError
    x, y = blr_data()
    with pytest.raises(DivergenceError, match=f"^{name} diverged at step "):
        bdl.fit(blr_model(), x, y, method=method, epochs=20, batch_size=B, progress=False, **opts)


def test_noise_for_a_device_theta_is_copied_without_waiting(monkeypatch):
    """`chain.NoiseSource`: ξ is drawn from the chain's CPU generator and copied to θ's device with
    ``non_blocking=True`` — a blocking ``copy_`` from host memory waits for the device (a host synchronisation per
    step on CUDA). θ on the meta device stands for a GPU here."""
    from pyro_bdl.infer.sgmcmc.chain import NoiseSource
    calls = []
    monkeypatch.setattr(torch.Tensor, "copy_", lambda self, src, non_blocking=False: calls.append(non_blocking) or self)
    noise = NoiseSource(torch.empty(5, device="meta", dtype=torch.float64), torch.Generator().manual_seed(0))
    out = noise.draw()
    assert calls == [True] and out.device.type == "meta" and out.dtype == torch.float64
    assert noise.buffer.device.type == "cpu" and noise.buffer.dtype == torch.float64


def test_info_has_the_driver_schema():
    """``info``: the one driver's ``loss`` (chains, steps), ``options`` and ``wall_time``, and the old keys."""
    x, y = blr_data()
    post = bdl.fit(blr_model(), x, y, method="sghmc", preconditioner=None, lr=1e-4 * N, epochs=6, warmup=2, batch_size=B,
                   num_chains=2, progress=False)
    info = post.info
    assert info["loss"].shape == (2, 6 * N // B) and torch.isfinite(info["loss"]).all()
    assert info["options"]["lr"] == 1e-4 * N and info["options"]["epochs"] == 6 and info["options"]["momentum_decay"] == 0.05
    assert isinstance(info["wall_time"], float) and info["wall_time"] > 0
    assert info["lr"] == 1e-4 * N and info["burnin"] == 2  # the old top-level keys stay
