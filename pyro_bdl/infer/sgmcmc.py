"""Stochastic-gradient MCMC at any temperature: SGLD, SGHMC and cyclical SG-MCMC.

All three samplers work on the flat unconstrained vector θ of
`Objective`, whose potential

    U_T(θ) = −log p̃_T(D_batch, w(θ)) − log|det ∂w/∂θ|

is THE tempered negative log density: the minibatch likelihood is scaled by N/B (the data
plate) and temperature enters as 1/T (``poutine.scale``), exactly as for SVI and NUTS.

**Temperature.** The samplers simulate the rescaled potential V(θ) = T·U_T(θ) with injected
noise of variance ∝ T. For SGLD (Welling & Teh 2011)

    θ ← θ − ε ∇V(θ) + √(2εT) ξ,   ξ ~ N(0, I),

the Langevin diffusion dθ = −∇V dt + √(2T) dW has the stationary density
∝ exp(−V/T) = exp(−U_T) = p_T(θ | D) — for posterior tempering (p(D|w)p(w))^(1/T) *and* for
likelihood tempering p(D|w)^(1/T) p(w), because U_T already holds the right 1/T factors.
As T → 0 the noise vanishes and SGLD becomes SGD on V; under posterior tempering V = U_1 is
the untempered MAP objective, so the step size ε means the same thing at every T.

SGHMC (Chen et al. 2014), in the momentum ("SGD with momentum") parametrisation with
friction α = ``momentum_decay`` ∈ (0, 1]:

    v ← (1 − α) v − ε ∇V(θ) + √(2αεT) ξ,   θ ← θ + v,

which is Chen et al.'s eq. (15) with η = ε, β̂ = 0 and the noise scaled by T; T → 0 gives SGD
with momentum 1 − α and learning rate ε. Its stationary density is again p_T (for ε → 0).

**Step-size units.** By default ``lr`` follows each paper's convention: for ``"sgld"`` and
``"sghmc"`` it is ε itself, the step on the full-data potential (Welling & Teh; Chen et al.),
so ``lr=1e-4`` suits data sets of ~10³–10⁴ points. For ``"csgmcmc"`` it is per data point
(``per_datapoint=True``), ε = lr / N: lr multiplies the gradient of the *mean* loss, like an SGD
learning rate, and the noise variance is 2·lr·T/N (Zhang et al. 2020's experiments; ``lr=0.5``).
``per_datapoint`` switches any of them.

**Cyclical SG-MCMC** (Zhang et al. 2020): K = ``epochs`` × batches steps in M = ``cycles``
cycles of L = ⌈K/M⌉ steps with the cosine step size

    α_k = α₀/2 · [cos(π · mod(k − 1, L) / L) + 1],   k = 1, …, K;

the first fraction β = ``exploration`` of every cycle is optimisation (the same update without
noise); the rest is the sampling stage, where ``samples_per_cycle`` draws are taken at the ends
of equal consecutive blocks of the sampling stage, the last at the cycle's end. The inner
sampler is SGLD or SGHMC.

**Chains.** ``num_chains`` independent runs (seeds ``seed, seed + 1, …``; each starting from
a fresh default initialisation of the network, [`BayesianModel.initial_values`][pyro_bdl.BayesianModel]) are kept
as separate chains of the returned [`SamplesPosterior`][pyro_bdl.SamplesPosterior], with per-draw
``sample_stats`` ``step_size`` (in the units of ``lr``) and ``loss`` (the minibatch potential
U_T of the step that produced the draw). ``info`` holds the per-step ``step_size`` schedule
``(K,)``, the per-step ``loss`` ``(chains, K)``, ``draw_steps`` (1-based) and
``sampling_stage`` ``(K,)``.

**Checkpoints.** With ``checkpoint=path`` the run state (θ, momentum, draws, random number
generators, including torch's global one and the DataLoader's) is written atomically every
``checkpoint_every`` epochs; calling ``fit`` again with the same arguments resumes from it and
gives bit-identical results; a finished run's checkpoint returns its posterior at once. A
checkpoint of another run (other options, seed, temperature, data size or starting point) is
refused with a ``ValueError``.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import pyro
import torch

from .._util import checkpoint as ckpt
from .._util import progress as progress_bars
from ..model.bayesian_model import BayesianModel
from ..posterior.samples import SamplesPosterior
from .data import FitData
from ..model.potential import Objective
from .registry import register

SAMPLERS = ("sgld", "sghmc")
INITS = ("fresh", "net")

# ----------------------------------------------------------------------------------------
# step-size schedules
# ----------------------------------------------------------------------------------------


def constant_schedule(lr: float, num_steps: int) -> torch.Tensor:
    """ε_k = lr for k = 1, …, K: shape ``(K,)``."""
    return torch.full((num_steps,), float(lr), dtype=torch.float64)


def cycle_length(num_steps: int, cycles: int) -> int:
    """L = ⌈K / M⌉ steps per cycle."""
    return math.ceil(num_steps / cycles)


def cycle_position(num_steps: int, cycles: int) -> torch.Tensor:
    """r_k = mod(k − 1, L) / L ∈ [0, 1), the position of step k inside its cycle: ``(K,)``."""
    L = cycle_length(num_steps, cycles)
    k = torch.arange(1, num_steps + 1, dtype=torch.float64)
    return torch.remainder(k - 1, L) / L


def cyclical_schedule(lr: float, num_steps: int, cycles: int) -> torch.Tensor:
    """Zhang et al. (2020), eq. (1): α_k = α₀/2 · [cos(π · mod(k − 1, ⌈K/M⌉) / ⌈K/M⌉) + 1], ``(K,)``."""
    return float(lr) / 2 * (torch.cos(math.pi * cycle_position(num_steps, cycles)) + 1)


def sampling_stage(num_steps: int, cycles: int, exploration: float) -> torch.Tensor:
    """``(K,)`` booleans: True in the sampling stage (r_k ≥ β), False while exploring (r_k < β)."""
    return cycle_position(num_steps, cycles) >= exploration


def cyclical_draw_steps(num_steps: int, cycles: int, exploration: float, samples_per_cycle: int) -> torch.Tensor:
    """The (1-based) steps after which cSG-MCMC keeps a draw: ``samples_per_cycle`` per cycle.

    Each cycle's sampling stage is split into ``samples_per_cycle`` equal consecutive blocks and
    the draw is taken at the end of each block, so the last draw of a cycle is its final step and
    no draw ever comes from the exploration stage. Raises ``ValueError`` if a cycle's sampling
    stage has fewer steps than ``samples_per_cycle``.
    """
    L = cycle_length(num_steps, cycles)
    stage = sampling_stage(num_steps, cycles, exploration)
    steps = []
    for c in range(cycles):
        lo, hi = c * L, min((c + 1) * L, num_steps)  # 0-based [lo, hi)
        sampling = torch.nonzero(stage[lo:hi]).flatten() + lo + 1  # 1-based steps
        n = len(sampling)
        if n < samples_per_cycle:
            raise ValueError(
                f"cycle {c + 1} of {cycles} has {n} sampling step(s) (K={num_steps} steps, L={L} per cycle, "
                f"exploration={exploration}) but samples_per_cycle={samples_per_cycle}; use more epochs, fewer "
                "cycles, a smaller exploration fraction or fewer samples per cycle"
                + (" (choose epochs·batches divisible by cycles)" if hi - lo < L else ""))
        for j in range(samples_per_cycle):
            steps.append(int(sampling[math.ceil((j + 1) * n / samples_per_cycle) - 1]))
    return torch.tensor(steps, dtype=torch.long)


def epoch_draw_steps(epochs: int, steps_per_epoch: int, burnin: int, thin: int) -> torch.Tensor:
    """SGLD/SGHMC draws: the last step of every ``thin``-th epoch after ``burnin`` epochs (1-based)."""
    epochs_kept = torch.arange(burnin + thin, epochs + 1, thin)
    return epochs_kept * steps_per_epoch


# ----------------------------------------------------------------------------------------
# update rules
# ----------------------------------------------------------------------------------------


def sgld_step(theta: torch.Tensor, grad: torch.Tensor, step_size: float, temperature: float,
              noise: Optional[torch.Tensor]) -> torch.Tensor:
    """One SGLD step, θ − ε ∇V + √(2εT) ξ, with ``grad`` = ∇V = T·∇U_T and ``noise`` = ξ ~ N(0, I).

    ``noise=None`` is the noise-free step (SGD; cSG-MCMC's exploration stage).
    """
    out = theta - step_size * grad
    if noise is not None:
        out = out + math.sqrt(2.0 * step_size * temperature) * noise
    return out


def sghmc_step(theta: torch.Tensor, momentum: torch.Tensor, grad: torch.Tensor, step_size: float,
               momentum_decay: float, temperature: float,
               noise: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """One SGHMC step: v ← (1 − α) v − ε ∇V + √(2αεT) ξ, then θ ← θ + v. Returns ``(θ, v)``.

    ``noise=None`` gives SGD with momentum 1 − α (cSG-MCMC's exploration stage).
    """
    v = (1.0 - momentum_decay) * momentum - step_size * grad
    if noise is not None:
        v = v + math.sqrt(2.0 * momentum_decay * step_size * temperature) * noise
    return theta + v, v


# ----------------------------------------------------------------------------------------
# the sampling loop
# ----------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What a run does at every step k = 1..K: step size (units of ``lr``), noise on/off, draws."""

    step_size: torch.Tensor  # (K,) float64
    noisy: torch.Tensor  # (K,) bool
    draw_steps: torch.Tensor  # (D,) long, 1-based, increasing
    epochs: int
    steps_per_epoch: int

    @property
    def num_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


@dataclass
class Dynamics:
    """The update rule and its constants. ``eps_per_lr`` turns the schedule into ε (1 or 1/N)."""

    sampler: str
    temperature: float
    eps_per_lr: float
    momentum_decay: float = 1.0


def _start_chain(theta0: torch.Tensor, seed: int, data: FitData) -> Dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    return {"epoch": 0, "theta": theta0.detach().clone(), "momentum": torch.zeros_like(theta0),
            "draws": [], "draw_step_size": [], "draw_loss": [], "loss": [],
            "generator": generator.get_state()}


def _loader_generator(data: FitData) -> Optional[torch.Generator]:
    return getattr(data.loader, "generator", None) if data.loader is not None else None


def _rng_snapshot(data: FitData) -> Dict[str, Any]:
    """Random state outside the chain's own generator: torch's global RNG (a user DataLoader
    without a generator shuffles with it) and the DataLoader's generator, if it has one."""
    g = _loader_generator(data)
    return {"global": ckpt.rng_state(), "loader": None if g is None else g.get_state()}


def _restore_rng(data: FitData, snap: Dict[str, Any]) -> None:
    ckpt.set_rng_state(snap["global"])
    g = _loader_generator(data)
    if g is not None and snap["loader"] is not None:
        g.set_state(snap["loader"])


def run_chain(objective: Objective, data: FitData, plan: Plan, dynamics: Dynamics, state: Dict[str, Any],
              save=None, checkpoint_every: int = 1, bar=None) -> Dict[str, Any]:
    """Advance one chain from ``state`` (as made by `_start_chain` or loaded) to the end of the plan.

    Every step: (U, ∇U) on a minibatch, ∇V = T·∇U, one SGLD/SGHMC update (noise where
    ``plan.noisy``), and a copy of θ when the step is in ``plan.draw_steps``. After every
    ``checkpoint_every`` epochs (and the last) ``save(state)`` is called.
    """
    N = data.dataset_size
    T = dynamics.temperature
    generator = torch.Generator()
    generator.set_state(state["generator"])
    theta, momentum = state["theta"], state["momentum"]
    draw_set = set(plan.draw_steps.tolist())
    lr = plan.step_size.tolist()
    noisy = plan.noisy.tolist()
    for epoch in range(state["epoch"], plan.epochs):
        k = epoch * plan.steps_per_epoch  # steps done before this epoch
        for xb, yb in data.epoch(generator):
            if k >= (epoch + 1) * plan.steps_per_epoch:
                raise ValueError("the DataLoader yielded more batches in an epoch than len(loader); "
                                 "SG-MCMC needs a fixed number of batches per epoch")
            # Data and options were validated up front and θ is unconstrained, so Pyro's per-step
            # distribution checks would only cost time (~30% of a small model's step).
            with pyro.validation_enabled(False):
                u, g = objective.grad(theta, xb, yb, N)
            value = float(u)
            if not math.isfinite(value) or not torch.isfinite(g).all():
                raise FloatingPointError(
                    f"the potential or its gradient became non-finite at step {k + 1} (epoch {epoch + 1}); "
                    f"lower lr (step size now {lr[k]}) or check the data scale")
            eps = lr[k] * dynamics.eps_per_lr
            xi = torch.randn(theta.shape, generator=generator, dtype=theta.dtype) if noisy[k] else None
            if dynamics.sampler == "sgld":
                theta = sgld_step(theta, T * g, eps, T, xi)
            else:
                theta, momentum = sghmc_step(theta, momentum, T * g, eps, dynamics.momentum_decay, T, xi)
            state["loss"].append(value)
            k += 1
            if k in draw_set:
                state["draws"].append(theta.clone())
                state["draw_step_size"].append(lr[k - 1])
                state["draw_loss"].append(value)
        if k != (epoch + 1) * plan.steps_per_epoch:
            raise ValueError(f"the data yielded {k - epoch * plan.steps_per_epoch} batches in epoch {epoch + 1}, "
                             f"expected {plan.steps_per_epoch} (len of the DataLoader)")
        state.update(epoch=epoch + 1, theta=theta, momentum=momentum, generator=generator.get_state())
        if bar is not None:
            bar.set_postfix(loss=f"{value:.4g}")
            bar.update()
        if save is not None and ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == plan.epochs):
            save(state)
    return state


# ----------------------------------------------------------------------------------------
# option checks and the driver
# ----------------------------------------------------------------------------------------


def _int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "positive" if minimum == 1 else f">= {minimum}"
        raise ValueError(f"{name} must be an integer {kind}, got {value!r}")
    return value


def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_common(lr, epochs, num_chains, per_datapoint, init, checkpoint, checkpoint_every) -> None:
    _positive(lr, "lr")
    _int(epochs, "epochs", 1)
    _int(num_chains, "num_chains", 1)
    _int(checkpoint_every, "checkpoint_every", 1)
    if not isinstance(per_datapoint, bool):
        raise TypeError(f"per_datapoint must be True or False, got {per_datapoint!r}")
    if not (isinstance(init, dict) or init in INITS):
        raise ValueError(f"unknown init {init!r}; choose one of {INITS} or pass a dict of initial values")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path, got {type(checkpoint).__name__}")


def _momentum_decay(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"momentum_decay (friction α) must lie in (0, 1], got {value!r}; "
                         "α = 1 − momentum, e.g. 0.05 or 0.1")
    return float(value)


def _example_inputs(data: FitData) -> torch.Tensor:
    if data.loader is None:
        return data.full()[0][:2]
    return next(iter(data.loader))[0][:2]


def _initial_theta(objective: Objective, model: BayesianModel, init: Union[str, Dict[str, torch.Tensor]],
                   seed: int) -> torch.Tensor:
    if isinstance(init, dict):
        values = {k: torch.as_tensor(v) for k, v in init.items()}
        missing = [n for n in objective.layout.names if n not in values]
        if missing:
            raise ValueError(f"init is missing values for sites {missing}")
        return objective.initial(values)
    return objective.initial(model.initial_values(seed=seed) if init == "fresh" else None)


def _fingerprint(method: str, config: Dict[str, Any], model: BayesianModel, data: FitData,
                 objective: Objective, seed: int, theta0: torch.Tensor) -> Dict[str, Any]:
    """What identifies a run, so a checkpoint is only resumed by the same run (``theta0``, the first
    chain's start, stands for ``init`` whatever its form)."""
    start = hashlib.sha1(theta0.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    return {"method": method, **config, "seed": seed, "start": start, "temperature": model.temperature,
            "tempering": model.tempering, "dataset_size": data.dataset_size, "num_batches": data.num_batches,
            "sites": list(objective.layout.names), "size": objective.size}


def sample(model: BayesianModel, data: FitData, *, method: str, plan: Plan, dynamics: Dynamics, seed: int,
           progress: Optional[bool], num_chains: int, init, checkpoint: Optional[str], checkpoint_every: int,
           config: Dict[str, Any]) -> SamplesPosterior:
    """Run ``num_chains`` independent chains of ``plan`` and collect them in a [`SamplesPosterior`][pyro_bdl.SamplesPosterior]."""
    objective = Objective(model, _example_inputs(data))
    fingerprint = _fingerprint(method, config, model, data, objective, seed,
                               _initial_theta(objective, model, init, seed))
    saved = ckpt.load(checkpoint)
    if saved is not None:
        if saved.get("fingerprint") != fingerprint:
            diff = sorted(k for k in set(fingerprint) | set(saved.get("fingerprint", {}))
                          if fingerprint.get(k) != saved.get("fingerprint", {}).get(k))
            raise ValueError(f"the checkpoint {checkpoint} belongs to another run (differs in {diff}); "
                             "delete it or pass another checkpoint path")
        _restore_rng(data, saved["rng"])
        finished: List[Dict[str, Any]] = saved["finished"]
        current = saved["current"]
    else:
        finished, current = [], None

    def save(state):
        ckpt.save(checkpoint, {"fingerprint": fingerprint, "finished": finished, "current": state,
                               "rng": _rng_snapshot(data)})

    with progress_bars.bar(num_chains * plan.epochs, method, progress) as bar:
        bar.update(len(finished) * plan.epochs + (current["epoch"] if current is not None else 0))
        for c in range(len(finished), num_chains):
            if current is None:
                current = _start_chain(_initial_theta(objective, model, init, seed + c), seed + c, data)
            bar.set_description(f"{method} chain {c + 1}/{num_chains}")
            state = run_chain(objective, data, plan, dynamics, current,
                              save=save if checkpoint is not None else None,
                              checkpoint_every=checkpoint_every, bar=bar)
            finished.append(state)
            current = None
            if checkpoint is not None:
                save(None)

    draws = torch.stack([torch.stack(s["draws"]) for s in finished])  # (C, D, P)
    samples = {k: v.detach() for k, v in objective.to_constrained(draws).items()}
    dtype = draws.dtype
    sample_stats = {
        "step_size": torch.tensor([s["draw_step_size"] for s in finished], dtype=dtype),
        "loss": torch.tensor([s["draw_loss"] for s in finished], dtype=dtype),
    }
    info = {
        **config,
        "step_size": plan.step_size.to(dtype),
        "loss": torch.tensor([s["loss"] for s in finished], dtype=dtype),
        "draw_steps": plan.draw_steps.clone(),
        "sampling_stage": plan.noisy.clone(),
        "steps_per_epoch": plan.steps_per_epoch,
        "temperature": dynamics.temperature,
    }
    return SamplesPosterior(model, samples, method, sample_stats=sample_stats, info=info)


def _eps_per_lr(per_datapoint: bool, data: FitData) -> float:
    return 1.0 / data.dataset_size if per_datapoint else 1.0


def _burnin_thin(epochs: int, burnin: Optional[int], thin: int) -> int:
    burnin = epochs // 4 if burnin is None else burnin
    _int(burnin, "burnin", 0)
    _int(thin, "thin", 1)
    if burnin + thin > epochs:
        raise ValueError(f"burnin={burnin} and thin={thin} leave no draws in {epochs} epochs; "
                         "draws are taken after every thin-th epoch past the burn-in")
    return burnin


def _constant_run(method: str, model, data, *, seed, progress, lr, epochs, burnin, thin, num_chains, per_datapoint,
                  init, checkpoint, checkpoint_every, momentum_decay=None) -> SamplesPosterior:
    _check_common(lr, epochs, num_chains, per_datapoint, init, checkpoint, checkpoint_every)
    burnin = _burnin_thin(epochs, burnin, thin)
    K = epochs * data.num_batches
    plan = Plan(constant_schedule(lr, K), torch.ones(K, dtype=torch.bool),
                epoch_draw_steps(epochs, data.num_batches, burnin, thin), epochs, data.num_batches)
    dynamics = Dynamics(method, model.temperature, _eps_per_lr(per_datapoint, data),
                        1.0 if momentum_decay is None else momentum_decay)
    config = {"lr": float(lr), "epochs": epochs, "burnin": burnin, "thin": thin, "per_datapoint": per_datapoint}
    if momentum_decay is not None:
        config["momentum_decay"] = momentum_decay
    return sample(model, data, method=method, plan=plan, dynamics=dynamics, seed=seed, progress=progress,
                  num_chains=num_chains, init=init, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                  config=config)


@register("sgld")
def fit_sgld(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool], lr: float = 1e-4,
             epochs: int = 200, burnin: Optional[int] = None, thin: int = 1, num_chains: int = 1,
             per_datapoint: bool = False, init: Union[str, Dict[str, torch.Tensor]] = "fresh",
             checkpoint: Optional[str] = None, checkpoint_every: int = 1) -> SamplesPosterior:
    """Stochastic gradient Langevin dynamics (Welling & Teh 2011) on the tempered posterior p_T.

    θ ← θ − ε ∇(T·U_T)(θ) + √(2εT) ξ with minibatch gradients scaled to the full data set;
    stationary density p_T for posterior and likelihood tempering; SGD as T → 0 (module docs).

    Args:
        lr: the constant step size ε on the full-data potential (``per_datapoint=True``: ε = lr/N).
        epochs: passes over the data; each epoch is ``len(loader)`` steps (1 step for full-batch data).
        burnin: epochs discarded before the first draw (default ``epochs // 4``).
        thin: a draw at the end of every ``thin``-th epoch after the burn-in.
        num_chains: independent runs (seeds ``seed + c``), kept as separate chains.
        per_datapoint: read ``lr`` per data point (ε = lr / N).
        init: ``"fresh"`` (a fresh default initialisation of the network per chain), ``"net"`` (the
            network's current weights) or a dict of initial values for every latent site.
        checkpoint, checkpoint_every: resumable runs (module docs).
    """
    return _constant_run("sgld", model, data, seed=seed, progress=progress, lr=lr, epochs=epochs, burnin=burnin,
                         thin=thin, num_chains=num_chains, per_datapoint=per_datapoint, init=init,
                         checkpoint=checkpoint, checkpoint_every=checkpoint_every)


@register("sghmc")
def fit_sghmc(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool], lr: float = 1e-4,
              momentum_decay: float = 0.05, epochs: int = 200, burnin: Optional[int] = None, thin: int = 1,
              num_chains: int = 1, per_datapoint: bool = False,
              init: Union[str, Dict[str, torch.Tensor]] = "fresh", checkpoint: Optional[str] = None,
              checkpoint_every: int = 1) -> SamplesPosterior:
    """Stochastic gradient Hamiltonian Monte Carlo (Chen et al. 2014) on the tempered posterior p_T.

    v ← (1 − α) v − ε ∇(T·U_T)(θ) + √(2αεT) ξ,  θ ← θ + v  (α = ``momentum_decay``, the friction;
    SGD with momentum 1 − α as T → 0). The momentum starts at 0. Other options as `fit_sgld`.
    """
    return _constant_run("sghmc", model, data, seed=seed, progress=progress, lr=lr, epochs=epochs, burnin=burnin,
                         thin=thin, num_chains=num_chains, per_datapoint=per_datapoint, init=init,
                         checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                         momentum_decay=_momentum_decay(momentum_decay))


@register("csgmcmc")
def fit_csgmcmc(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool], lr: float = 0.5,
                cycles: int = 4, exploration: float = 0.8, samples_per_cycle: int = 3, epochs: int = 200,
                sampler: str = "sgld", momentum_decay: float = 0.1, num_chains: int = 1,
                per_datapoint: bool = True, init: Union[str, Dict[str, torch.Tensor]] = "fresh",
                checkpoint: Optional[str] = None, checkpoint_every: int = 1) -> SamplesPosterior:
    """Cyclical SG-MCMC (Zhang et al. 2020): cosine step-size cycles, each exploring then sampling.

    α_k = α₀/2 · [cos(π · mod(k − 1, ⌈K/M⌉) / ⌈K/M⌉) + 1] over K = epochs × batches steps; in the
    first fraction β of each cycle the inner update runs without noise (optimisation), in the rest
    with noise √(2ε_kT) (ε_k = α_k/N per data point; × √α for SGHMC), and ``samples_per_cycle`` draws per cycle are kept from the
    sampling stage (see `cyclical_draw_steps`). The options not listed here are those of
    `fit_sgld`.

    Args:
        lr: α₀, the initial step size of every cycle; per data point by default (ε = α₀ / N).
        cycles: M, the number of cycles.
        exploration: β ∈ [0, 1), the fraction of each cycle spent exploring.
        samples_per_cycle: draws kept per cycle.
        sampler: inner sampler, ``"sgld"`` or ``"sghmc"`` (friction ``momentum_decay``).
    """
    _check_common(lr, epochs, num_chains, per_datapoint, init, checkpoint, checkpoint_every)
    _int(cycles, "cycles", 1)
    _int(samples_per_cycle, "samples_per_cycle", 1)
    if isinstance(exploration, bool) or not isinstance(exploration, (int, float)) or not 0 <= exploration < 1:
        raise ValueError(f"exploration (the fraction β of each cycle spent optimising) must lie in [0, 1), "
                         f"got {exploration!r}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    alpha = _momentum_decay(momentum_decay)
    K = epochs * data.num_batches
    if cycles > K:
        raise ValueError(f"cycles={cycles} exceeds the {K} steps of the run (epochs × batches)")
    plan = Plan(cyclical_schedule(lr, K, cycles), sampling_stage(K, cycles, exploration),
                cyclical_draw_steps(K, cycles, exploration, samples_per_cycle), epochs, data.num_batches)
    dynamics = Dynamics(sampler, model.temperature, _eps_per_lr(per_datapoint, data),
                        alpha if sampler == "sghmc" else 1.0)
    config = {"lr": float(lr), "epochs": epochs, "cycles": cycles, "exploration": float(exploration),
              "samples_per_cycle": samples_per_cycle, "per_datapoint": per_datapoint, "sampler": sampler}
    if sampler == "sghmc":
        config["momentum_decay"] = alpha
    return sample(model, data, method="csgmcmc", plan=plan, dynamics=dynamics, seed=seed, progress=progress,
                  num_chains=num_chains, init=init, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                  config=config)
