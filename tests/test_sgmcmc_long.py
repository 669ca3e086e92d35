"""SGHMC on long runs (issue 13, `notes/issue-13-long-sghmc.md`): the warm-up's friction bounds the heat of the minibatch
noise it does not subtract (`adaptation.warmup_friction`), so a long warm-up does not run away from the posterior."""
import warnings

import torch

import pyro_bdl as bdl
from pyro_bdl.infer.sgmcmc import kernels as K
from pyro_bdl.infer.sgmcmc.run import WARMUP_HEAT, warmup_friction  # noqa: E402


def _stationary_variance(friction: float, step: float, noise: float, T: float = 1.0, H: float = 1.0,
                         chains: int = 4000, steps: int = 6000) -> float:
    """Var(θ) of SGHMC on V = Hθ²/2 with gradient noise of variance ``noise`` that is *not* subtracted
    (v ← (1 − α)v − G(Hθ + √B·ζ) + √(2αGT)·ξ): many independent chains, the second half of the run."""
    g = torch.Generator().manual_seed(0)
    theta, v = torch.zeros(chains, dtype=torch.float64), torch.zeros(chains, dtype=torch.float64)
    c = K.coefficients("sghmc", step, T, friction)
    total, n = 0.0, 0
    for k in range(steps):
        grad = H * theta + noise ** 0.5 * torch.randn(chains, generator=g, dtype=torch.float64)
        K.step_(theta, v, grad, c, torch.randn(chains, generator=g, dtype=torch.float64))
        if k >= steps // 2 and k % 10 == 0:
            total, n = total + float((theta ** 2).mean()), n + 1
    return total / n


def test_warmup_friction_bounds_the_unsubtracted_noise_heat():
    """T_eff = T + G·B/(2α) for SGHMC whose gradient noise B is not subtracted (Chen et al. 2014): on a noise-dominated
    coordinate (B = 99·T·H, the Fisher step G = lr·T/(TH + B), lr = 0.05) the friction floor 0.01 samples at ≈ 3.5·T;
    `warmup_friction` raises α to G·B/(2·heat·T), which keeps the variance within (1 + heat)·T/H, and leaves a
    friction that already satisfies the bound as it is."""
    T, H, B, lr = 1.0, 1.0, 99.0, 0.05
    G = lr * T / (T * H + B)
    step, noise = torch.tensor([G, G], dtype=torch.float64), torch.tensor([B, 0.0], dtype=torch.float64)
    alpha = warmup_friction(torch.tensor([0.01, 0.01], dtype=torch.float64), step, noise, T)
    assert abs(float(alpha[0]) - G * B / (2 * WARMUP_HEAT * T)) < 1e-12 and float(alpha[1]) == 0.01
    assert float(warmup_friction(torch.tensor([0.5], dtype=torch.float64), step[:1], noise[:1], T)) == 0.5  # already enough: unchanged
    assert float(warmup_friction(torch.tensor([0.01]), torch.tensor([1.0]), torch.tensor([1e6]), T)) == 1.0
    floor = _stationary_variance(0.01, G, B, T, H)
    raised = _stationary_variance(float(alpha[0]), G, B, T, H)
    assert abs(floor / (1 + G * B / (2 * 0.01 * T)) - 1) < 0.15, floor  # the heat formula, ≈ 3.5
    assert floor > 2.5 and 0.9 < raised < 1 + WARMUP_HEAT + 0.1, (floor, raised)


def test_long_warmup_does_not_run_away_on_a_relu_mlp():
    """The issue's setting (digits 500, MLP 64-32-10 ReLU, N(0, 1), batch 50, T = 1, seed 0, SGHMC defaults) with the
    burn-in of a 3000-epoch run made cheap: 750 burn-in epochs (375 exploring, a 375-epoch warm-up), 50 sampling.
    Before the warm-up friction bound the warm-up's noise-dominated weights sat at friction 0.01 and heated to a
    kinetic temperature of 3.5–75·T; the loss ran from 2.3·10³ to 2.8·10⁴ (θ² 16× the prior's), the frozen step
    fitted out there could not bring the chain back and the configurational temperature read −0.48. Now the
    warm-up ends near the stationary loss (its excess over the minimum ≈ d/2·T, that of a Gaussian posterior) and the
    sampling stage reads a positive temperature (still below T: 50 epochs of a small frozen step)."""
    ds = bdl.data.load_dataset("digits", seed=0, train_size=500)
    torch.manual_seed(0)
    model = bdl.BayesianModel(bdl.networks.mlp(64, [32], 10, "relu"), prior=bdl.priors.Gaussian(0.0, 1.0),
                              likelihood=bdl.likelihoods.Categorical())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        post = bdl.fit(model, ds.x_train, ds.y_train, method="sghmc", batch_size=50, epochs=800, warmup=750, seed=0,
                       progress=False)
    S = post.info["steps_per_epoch"]
    loss = post.info["loss"][0].reshape(-1, S).mean(1)
    d = sum(v[0, 0].numel() for v in post.samples.values())
    excess = float(loss[650:750].mean() - loss[:375].min()) / (d / 2)  # the warm-up's last 100 epochs, in units of d/2
    assert excess < 2.0, excess  # before: 12.8
    tconf = float(post.info["configurational_temperature"][0, 0])
    assert tconf > 0.1, tconf  # before: −0.48
