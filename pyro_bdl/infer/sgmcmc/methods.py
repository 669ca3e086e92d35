"""The SG-MCMC methods of [`pyro_bdl.fit`][pyro_bdl.fit]: ``"sgld"``, ``"sghmc"`` and ``"csgmcmc"``.

See the package docs (`pyro_bdl.infer.sgmcmc`) for the update rules, the adaptive
preconditioner and the step-size units.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch.utils.data import RandomSampler

from ..._util.checks import check_float, check_int
from ...evaluate.diagnostics.sampler import SamplerWarning
from ...model.bayesian_model import BayesianModel
from ...posterior.samples import SamplesPosterior
from ..data import FitData
from ..options import DEFAULT_MIN_STEPS, default_epochs
from ..registry import register
from .adaptation import Dynamics
from .run import sample
from .whitening import DENSE_MAX_SIZE
from .schedules import (EXPLORE, WARMUP, Plan, constant_schedule, constant_stages, cyclical_draw_steps,
                        cyclical_schedule, cyclical_stages, epoch_draw_steps, exploration_descent, fewest_draw_steps)

SAMPLERS = ("sgld", "sghmc")
INITS = ("fresh", "net")
PRECONDITIONERS = ("auto", "dense", "fisher", "rmsprop", None)
# default lr per (preconditioner, method): fisher lr is dimensionless (G·H ≤ lr), rmsprop lr is in
# parameter units (as Adam's), plain lr is per data point (ε = lr/N; csgmcmc: Zhang et al.'s α₀ = 0.5)
DEFAULT_LR = {("fisher", "sgld"): 0.1, ("fisher", "sghmc"): 0.05, ("rmsprop", "sgld"): 1e-4,
              ("rmsprop", "sghmc"): 1e-4, (None, "csgmcmc"): 0.5}
#: the plain sgld/sghmc kernel's default step ε on the full-data potential U (the textbook value): its default lr
#: is N·ε in the stated unit (U/N), so the default plain run is the one of earlier releases
PLAIN_EPSILON = 1e-4
DEFAULT_FRICTION = {"fisher": 0.01, "rmsprop": 0.05, None: 0.05}
EXPLORE_LR = 0.01
GRADIENTS = ("auto", "cv", "plain")
#: cSG-MCMC: the last fraction of each exploration stage that descends to the mode on the control-variate
#: gradient (`.schedules.exploration_descent`); at momentum 0.9 the noise-free descent contracts by at best
#: √0.9 per step, so 0.25 of a default exploration stage (hundreds of steps) is many e-folds
DESCENT_FRACTION = 0.25
#: cSG-MCMC's default draws per chain, over all cycles (`fit_csgmcmc`'s ``samples_per_cycle``): as many as an ArviZ
#: ESS / R-hat needs, and under sgld/sghmc's ≈ 150 (the same memory). At 3 per cycle (Zhang et al.) the 4 chains of
#: the rotated BLR (κ = 10³, T = 0.01, default length) read variance ratios 0.69–1.12 and a mean 0.35 sd off along
#: the eigendirections; at 25 per cycle 0.95–1.16 and ≤ 0.03 sd (notes/issue-13-lead13.md)
CYCLE_DRAWS = 100
#: cSG-MCMC: fewest warm-up steps per cycle for the adaptive step to settle: the growth-limited step (≤ 10% per
#: step) and the chain's spreading (a few oscillation periods 1/ω ≈ 1/√lr ≈ 5 steps) need tens of steps. Measured on
#: a digits ReLU MLP (60 epochs, 7-step warm-ups, T = 1 and 0.1, 3 seeds): the kernel without the descent diverged in
#: 4 of 6 runs and read kinetic temperatures of 21·T and 5500·T in the other two; at 200 epochs (25-step warm-ups)
#: 8 of 9 runs (T = 1, 0.1, 0.01) ran with kinetic T within 17% of T. Shorter warm-ups skip the descent and warn.
MIN_WARMUP_STEPS = 20
#: the default run length of sgld/sghmc/csgmcmc is stated in steps: ``epochs=None`` runs
#: max(DEFAULT_EPOCHS, ⌈DEFAULT_MIN_STEPS / steps per epoch⌉) epochs (`default_run_length`; DEFAULT_MIN_STEPS = 4000, the
#: one minimum of every minibatch method's default, `pyro_bdl.infer.options.default_epochs`). The adaptive kernels' time
#: scale is in steps, not epochs: G_i·H_ii ≤ lr whatever N, so a mode relaxes in ≈ 1/lr steps (SGLD, lr = 0.1: 10) and
#: θ² has an integrated autocorrelation of ≈ 1/lr steps; the ¾ of 4000 steps after the burn-in give a variance
#: estimate of ESS ≈ 3000/(2/lr) ≈ 150 per chain, relative sd √(2/150) ≈ 0.12, and the burn-in's ¼ gives 500
#: exploration and 500 moment-estimation steps. Measured (notes/issue-13-sweep.md): BLR cells with N/B ≤ 2 read
#: variance ratios of 10³–10⁶ at 200 epochs (400 steps) and 0.97 at 4000 steps. Data with ≥ 20 batches per epoch keep
#: DEFAULT_EPOCHS (the default of earlier releases); below that a default run is longer than 200 epochs.
DEFAULT_EPOCHS = 200


def default_run_length(epochs: Optional[int], thin: Optional[int], steps_per_epoch: int,
                       min_steps: int = DEFAULT_MIN_STEPS) -> Tuple[int, int]:
    """``(epochs, thin)`` resolved. ``epochs=None``: max(``DEFAULT_EPOCHS``, ⌈``min_steps`` / steps per epoch⌉), so
    that every default run has at least ``min_steps`` steps (``DEFAULT_MIN_STEPS``; cSG-MCMC asks for that many in
    its sampling stages, `csgmcmc_min_steps`); ``thin=None`` then keeps a draw every ⌊epochs / ``DEFAULT_EPOCHS``⌋
    epochs, so a longer default run keeps as many draws (≈ 150 per chain, the memory of a 200-epoch run) spread over
    it. Explicit ``epochs`` are run as given, with ``thin`` 1 unless given."""
    if epochs is None:
        epochs = default_epochs(DEFAULT_EPOCHS, steps_per_epoch, min_steps)
        if thin is None:
            thin = max(1, epochs // DEFAULT_EPOCHS)
    return epochs, 1 if thin is None else thin


def csgmcmc_min_steps(exploration: float) -> int:
    """The fewest steps of a default cSG-MCMC run: ⌈``DEFAULT_MIN_STEPS`` / (1 − β)⌉, so that its sampling stages
    (the fraction 1 − β of every cycle, half of it warm-up) together run as many steps as the kernel's own default
    run. Its draws come from those stages only, and in each cycle they start where the exploration's descent ends:
    at the 4000 steps of SGHMC's default, 4 cycles of 50 sampling steps gave ≈ 2 effective draws per cycle on
    ill-conditioned BLR (κ = 10³; mean error 0.30–0.36 posterior sds at every T, against 0.03–0.04 for SGHMC), and
    5× the length 0.05–0.08 (notes/issue-13-lead13.md)."""
    return math.ceil(round(DEFAULT_MIN_STEPS / (1.0 - exploration), 6))  # 4000 / (1 − 0.8) is 20000, not 20001


def _check_common(epochs, num_chains, per_datapoint, init, checkpoint, checkpoint_every, workers=1) -> None:
    check_int(epochs, "epochs", 1)
    check_int(num_chains, "num_chains", 1)
    check_int(workers, "workers", 1)
    check_int(checkpoint_every, "checkpoint_every", 1)
    if not isinstance(per_datapoint, bool):
        raise TypeError(f"per_datapoint must be True or False, got {per_datapoint!r}")
    if not (isinstance(init, dict) or init in INITS):
        raise ValueError(f"unknown init {init!r}; choose one of {INITS} or pass a dict of initial values")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path, got {type(checkpoint).__name__}")


def _plain(preconditioner) -> bool:
    """Whether ``preconditioner`` names the plain kernel (fixed step): ``None``, ``"none"`` or ``"plain"`` — the one
    place this is decided (`_lr_unit` reads the unit of lr from it, `_preconditioner` normalises the name)."""
    return preconditioner is None or preconditioner in ("none", "plain")


def _preconditioner(value, per_datapoint: bool) -> Tuple[Optional[str], Any]:
    """``(kernel, dense)``: the kernel's preconditioner (``"fisher"``, ``"rmsprop"`` or None, the plain kernel) and
    whether it runs in the dense preconditioner's whitened coordinates (`.whitening`): ``"auto"`` (the default: the
    Fisher kernel, whitened for models of at most `.whitening.DENSE_MAX_SIZE` coordinates, resolved by
    `.run.sample` once the model's size is known), ``"dense"`` (always whitened) or ``"fisher"`` (the diagonal
    kernel, never whitened)."""
    if _plain(value):
        value = None
    if value not in PRECONDITIONERS:
        raise ValueError(f"unknown preconditioner {value!r}; choose 'auto' (default: 'dense' for models of at most "
                         f"{DENSE_MAX_SIZE} parameters, else 'fisher'), 'dense', 'fisher' (diagonal), 'rmsprop' or "
                         "None (the plain kernel with a fixed step)")
    if value is not None and per_datapoint:
        raise ValueError("per_datapoint applies to the plain kernel only (preconditioner=None): the adaptive "
                         "step lr is already independent of the data set size")
    if value in ("auto", "dense"):
        return "fisher", "auto" if value == "auto" else True
    return value, False


def _momentum_decay(value, preconditioner: Optional[str], default: Optional[float] = None) -> float:
    if value is None:
        return DEFAULT_FRICTION[preconditioner] if default is None else default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"momentum_decay (friction α) must lie in (0, 1], got {value!r}; "
                         "α = 1 − momentum, e.g. 0.05 or 0.1")
    return float(value)


def _noise_correction(value, data: FitData) -> bool:
    """``"auto"``: subtract the gradient-noise estimate when minibatches are drawn independently
    (a DataLoader sampling with replacement); not under random reshuffling, where an epoch's
    noise sums to zero and subtracting its i.i.d. variance makes the draws too narrow (there, with
    augmentation, `_sample` subtracts the augmentation's share alone)."""
    if value == "auto":
        sampler = getattr(data.loader, "sampler", None)
        return isinstance(sampler, RandomSampler) and bool(sampler.replacement)
    if not isinstance(value, bool):
        raise ValueError(f"noise_correction must be 'auto', True or False, got {value!r}")
    return value


def _gradient_mode(value, data: FitData, adaptive: bool) -> str:
    """The gradient estimate a run uses: ``"cv"`` (control variates), ``"plain"`` or ``"auto"`` (decided per
    chain from the warm-up's measured noise). The control variate needs the adaptive kernel's burn-in (its
    anchor is set there) and un-augmented data (the anchor's full-data gradient must be the minibatch
    estimate's mean); without minibatches it equals the plain gradient, so ``"plain"`` is used."""
    if value not in GRADIENTS:
        raise ValueError(f"unknown gradient {value!r}; choose 'auto' (default), 'cv' (control variates) or 'plain'")
    if value == "cv" and not adaptive:
        raise ValueError("gradient='cv' needs the adaptive kernel (preconditioner='fisher' or 'rmsprop'), whose "
                         "burn-in sets the anchor; the plain kernel (preconditioner=None) uses gradient='plain'")
    if value == "cv" and data.augment is not None:
        raise ValueError("gradient='cv' cannot be used with data augmentation: the anchor's full-data gradient "
                         "would not be the mean of the augmented minibatch gradients (a biased sampler); "
                         "use gradient='plain' or 'auto'")
    if not adaptive or not data.minibatched or data.augment is not None:
        return "plain"
    return value


def _example_burnin(epochs: int, burnin: Optional[int], thin: int, adaptive: bool) -> int:
    if burnin is None:  # the adaptive kernel measures the gradients in its burn-in: at least one epoch
        burnin = max(epochs // 4, 1 if adaptive and epochs > 1 else 0)
    check_int(burnin, "warmup", 0)
    if adaptive and burnin < 1:
        raise ValueError("the adaptive kernel needs warmup >= 1 epoch of burn-in (it measures the gradient scale "
                         f"there); pass warmup=1 or more (epochs={epochs}), or preconditioner=None for the plain kernel")
    check_int(thin, "thin", 1)
    if burnin + thin > epochs:
        raise ValueError(f"warmup={burnin} and thin={thin} leave no draws in {epochs} epochs; "
                         "draws are taken after every thin-th epoch past the burn-in")
    return burnin


def _lr_unit(method: str, per_datapoint: Optional[bool], preconditioner, stacklevel: int = 5) -> bool:
    """``per_datapoint`` resolved: the plain kernel reads ``lr`` in the one unit of ``lr`` across methods
    (`pyro_bdl.infer.options.LR_UNITS`), the step on the per-data-point potential U/N (ε = lr/N, as swag and
    csgmcmc read it). ``per_datapoint=False`` (ε = lr on the full-data potential U, the plain sgld/sghmc reading
    until this release) still works and warns (``DeprecationWarning``) for one release. The adaptive kernels'
    ``lr`` is dimensionless (G_i·H_ii ≤ lr); ``per_datapoint`` does not apply to them."""
    plain = _plain(preconditioner)
    if per_datapoint is None:
        return plain
    if per_datapoint is False and plain:
        warnings.warn(
            f"{method}: per_datapoint=False (lr as the step ε on the full-data potential U) is deprecated and is "
            "removed in the next release; lr is read per data point (ε = lr/N), the unit of lr across methods: "
            "pass lr = N·ε and drop per_datapoint",
            DeprecationWarning, stacklevel=stacklevel)
    return per_datapoint


def _constant_run(method: str, model, data, *, seed, progress, lr, epochs, burnin, thin, num_chains, per_datapoint,
                  init, checkpoint, checkpoint_every, preconditioner, noise_correction, explore_lr=None,
                  momentum_decay=None, gradient="auto", stack="auto", workers=1) -> SamplesPosterior:
    per_datapoint = _lr_unit(method, per_datapoint, preconditioner)
    epochs, thin = default_run_length(epochs, thin, data.num_batches)
    _check_common(epochs, num_chains, per_datapoint, init, checkpoint, checkpoint_every, workers)
    preconditioner, dense = _preconditioner(preconditioner, per_datapoint)
    adaptive = preconditioner is not None
    if lr is None:  # plain: the textbook ε on U, in the unit asked for
        lr = DEFAULT_LR[(preconditioner, method)] if adaptive else PLAIN_EPSILON * (data.dataset_size if per_datapoint else 1)
    lr = check_float(lr, "lr", positive=True)
    explore_lr = check_float(EXPLORE_LR if explore_lr is None else explore_lr, "explore_lr", positive=True)
    burnin = _example_burnin(epochs, burnin, thin, adaptive)
    friction = 1.0 if method == "sgld" else _momentum_decay(momentum_decay, preconditioner)
    S = data.num_batches
    K = epochs * S
    explore = burnin // 2 if adaptive else 0
    schedule = constant_schedule(lr, K)
    if explore:  # cosine-annealed to 0 (Zhang et al.'s half cycle), so the burn-in ends near the bulk
        schedule[:explore * S] = cyclical_schedule(explore_lr, explore * S, 1)
    plan = Plan(schedule, constant_stages(epochs, S, burnin, explore), epoch_draw_steps(epochs, S, burnin, thin),
                epochs, S)
    config = {"lr": lr, "epochs": epochs, "warmup": burnin, "burnin": burnin, "thin": thin,
              "per_datapoint": per_datapoint}
    return _sample(method, method, model, data, plan, config, lr=lr, friction=friction, per_datapoint=per_datapoint,
                   preconditioner=preconditioner, dense=dense, noise_correction=noise_correction, gradient=gradient,
                   explore_lr=explore_lr, seed=seed, progress=progress, num_chains=num_chains, init=init,
                   checkpoint=checkpoint, checkpoint_every=checkpoint_every, stack=stack, workers=workers)


def _sample(method: str, kernel: str, model: BayesianModel, data: FitData, plan: Plan, config: Dict[str, Any], *,
            lr: float, friction: float, per_datapoint: bool, preconditioner: Optional[str], noise_correction,
            gradient: str, explore_lr: float, pool_windows: bool = False, dense: Any = False,
            **run: Any) -> SamplesPosterior:
    """The `Dynamics` of ``kernel``, the options every SG-MCMC method records (after ``config``'s own), and the run
    (`.run.sample`; ``run``: seed, progress, chains, init, checkpoint, stack, workers)."""
    adaptive = preconditioner is not None
    corrected = adaptive and _noise_correction(noise_correction, data)
    # reshuffled epochs cancel the data's sampling noise, not an augmentation drawn afresh at every step (package docs)
    augmentation = adaptive and noise_correction == "auto" and not corrected and data.augment is not None
    dynamics = Dynamics(kernel, model.temperature, 1.0 / data.dataset_size if per_datapoint else 1.0, friction,
                        preconditioner, corrected, _gradient_mode(gradient, data, adaptive), pool_windows=pool_windows,
                        dense=dense, augmentation_noise=augmentation)
    config = {**config, "preconditioner": preconditioner,
              "noise_correction": "augmentation" if augmentation else dynamics.noise_correction,
              "gradient": dynamics.gradient}
    if adaptive:
        config["explore_lr"] = explore_lr
    if kernel == "sghmc":
        config["momentum_decay"] = friction
    return sample(model, data, method=method, plan=plan, dynamics=dynamics, config=config, lr=lr, **run)


Init = Union[str, Dict[str, torch.Tensor]]
Stack = Union[str, bool, int]


@register("sgld")
def fit_sgld(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool], lr: Optional[float] = None,
             epochs: Optional[int] = None, warmup: Optional[int] = None, thin: Optional[int] = None,
             num_chains: int = 1, preconditioner: Optional[str] = "auto", noise_correction: Union[str, bool] = "auto",
             explore_lr: Optional[float] = None, gradient: str = "auto", per_datapoint: Optional[bool] = None,
             init: Init = "fresh", checkpoint: Optional[str] = None, checkpoint_every: int = 1,
             stack: Stack = "auto", workers: int = 1) -> SamplesPosterior:
    """Stochastic gradient Langevin dynamics (Welling & Teh 2011) on the tempered posterior p_T.

    θ ← θ − G ĝ + √(2GT − G²B̂) ξ with ĝ the minibatch gradient of V = T·U_T (stationary density
    p_T). By default G is adapted during the burn-in and then fixed: G_i = lr·T/E[ĝ_i²]
    (``preconditioner="fisher"``; see `pyro_bdl.infer.sgmcmc`).

    Args:
        lr: with ``preconditioner="fisher"`` (default 0.1) the dimensionless step: G_i·H_ii ≤ lr for
            every coordinate, whatever the data set size, curvature or T; ``"rmsprop"``: the pSGLD step
            in parameter units (G_i = lr/√E[ĝ_i²], default 1e-4); ``None``: the plain constant step, per data
            point as every SGD-type ``lr`` (ε = lr/N on the full-data potential; default N·10⁻⁴, the textbook
            ε = 10⁻⁴).
        epochs: passes over the data; each epoch is ``len(loader)`` steps (1 step for full-batch data).
            Default (``None``): max(200, ⌈4000 / steps per epoch⌉), at least 4000 steps, because the adaptive
            kernel mixes per step (G_i·H_ii ≤ lr whatever N), not per epoch (`default_run_length`); data with
            ≥ 20 batches per epoch run 200 epochs as in earlier releases. The resolved value is
            ``info["epochs"]`` (and ``info["options"]["epochs"]``).
        warmup: burn-in epochs discarded before the first draw (default ``epochs // 4``, of the resolved epochs:
            ≥ 1000 steps at the default length; formerly ``burnin``). The adaptive kernels spend its first half
            moving to the posterior's bulk (noise-free RMSprop steps of size
            ``explore_lr`` with momentum 0.9) and its second half estimating E[ĝ²] and the gradient noise.
        thin: a draw at the end of every ``thin``-th epoch after the burn-in. Default: 1 when ``epochs`` is given,
            else ⌊epochs / 200⌋, so a default run keeps ≈ 150 draws per chain however long it is (``info["thin"]``).
        num_chains: independent runs (seeds spawned from ``seed``), kept as separate chains.
        preconditioner: ``"auto"`` (default: ``"dense"`` for models of at most 256 parameters without hyperprior
            sites, else ``"fisher"``; `pyro_bdl.infer.sgmcmc.run.resolve_dense`),
            ``"dense"`` (the Fisher kernel in the coordinates φ = L⁻¹(θ − θ̂) that whiten the full-data Hessian at
            the exploration's end, `pyro_bdl.infer.sgmcmc.whitening`), ``"fisher"`` (diagonal), ``"rmsprop"``
            (Li et al. 2016) or ``None`` (plain kernel).
        noise_correction: subtract the estimated minibatch-gradient variance B̂ from the injected noise
            (the step shrinks where needed so 2GT ≥ G²B̂); ``"auto"`` does so when minibatches are drawn
            with replacement, and under random reshuffling subtracts only an augmentation's share of it, measured
            on paired augmentations when the sampling stage starts (``info["noise_correction"]`` is then
            ``"augmentation"``; package docs).
        explore_lr: the RMSprop step of the first half of the burn-in (default 0.01).
        gradient: the gradient estimate after the exploration: ``"cv"``, the control-variate estimate
            ĝ(θ) = ∇U(θ̂) + ĝ_B(θ) − ĝ_B(θ̂) anchored at θ̂ in the burn-in (Baker et al. 2019, SGLD-CV; a
            second minibatch gradient per step and one full-data pass per anchor), whose noise shrinks
            with the posterior's width, so cold T needs no longer runs; ``"plain"``, the minibatch
            gradient; ``"auto"`` (default) measures both in the warm-up and keeps the control variate
            when its lower noise more than pays for its cost (package docs). Minibatched, un-augmented
            data and the adaptive kernel only; otherwise ``"plain"``.
        per_datapoint: plain kernel only. ``None`` (default): ``lr`` per data point (ε = lr/N), the unit of ``lr``
            across methods; ``False``: ε = lr on the full-data potential, the reading of earlier releases
            (deprecated, ``DeprecationWarning``; `_lr_unit`).
        init: ``"fresh"`` (a fresh default initialisation of the network per chain), ``"net"`` (the
            network's current weights) or a dict of initial values for every latent site.
        checkpoint, checkpoint_every: resumable runs (package docs).
        stack: how many of the ``num_chains`` chains step together, their gradients one ``torch.func.vmap``
            evaluation (package docs, "Chains"): ``"auto"`` (default: all that fit in memory on a GPU; on the
            CPU only networks of at most 40k parameters), ``True`` (all), ``False`` (one chain after
            another) or a number. A stacked chain equals the chain run alone with its seed (to float
            rounding); a network vmap cannot batch (an LSTM) runs its chains one after another.
        workers: processes running groups of chains in parallel (1, default: in this process), for networks too
            large to stack (on the CPU above 40k parameters): the groups hold at most ⌈num_chains / workers⌉
            chains each, one process per group, each limited to one torch thread (package docs, "Chains"). The
            draws equal those of ``workers=1`` with the same grouping (e.g. ``stack=False``: chain c exactly).
            The processes are spawned: from a script, call ``fit`` under ``if __name__ == "__main__":``.
    """
    return _constant_run("sgld", model, data, seed=seed, progress=progress, lr=lr, epochs=epochs, burnin=warmup,
                         thin=thin, num_chains=num_chains, per_datapoint=per_datapoint, init=init,
                         checkpoint=checkpoint, checkpoint_every=checkpoint_every, preconditioner=preconditioner,
                         noise_correction=noise_correction, explore_lr=explore_lr, gradient=gradient, stack=stack,
                         workers=workers)


@register("sghmc")
def fit_sghmc(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool], lr: Optional[float] = None,
              momentum_decay: Optional[float] = None, epochs: Optional[int] = None, warmup: Optional[int] = None,
              thin: Optional[int] = None, num_chains: int = 1, preconditioner: Optional[str] = "auto",
              noise_correction: Union[str, bool] = "auto", explore_lr: Optional[float] = None,
              gradient: str = "auto", per_datapoint: Optional[bool] = None, init: Init = "fresh",
              checkpoint: Optional[str] = None, checkpoint_every: int = 1, stack: Stack = "auto",
              workers: int = 1) -> SamplesPosterior:
    """Stochastic gradient Hamiltonian Monte Carlo (Chen et al. 2014) on the tempered posterior p_T.

    v ← (1 − α) v − G ĝ + √(2αGT − G²B̂) ξ,  θ ← θ + v (SGD with momentum 1 − α as T → 0). By
    default (the adaptive SGHMC of Springenberg et al. 2016 with the step of Ahn et al. 2012)
    G_i = lr·T/E[ĝ_i²] and α_i = max(``momentum_decay``, 2ω_i), the critical damping of the
    coordinate's oscillation ω_i² = G_i(E[ĝ_i²] − B̂_i)/T, both estimated in the burn-in and then
    fixed; with ``noise_correction`` α_i is raised where needed so the noise term stays valid.

    Args:
        lr: ``"fisher"`` (default 0.05): the dimensionless step, G_i H_ii ≤ lr; otherwise as `fit_sgld`.
        momentum_decay: the friction α: its floor for ``"fisher"`` (default 0.01), the fixed friction
            otherwise (default 0.05).

    The other options are as in `fit_sgld`.
    """
    return _constant_run("sghmc", model, data, seed=seed, progress=progress, lr=lr, epochs=epochs, burnin=warmup,
                         thin=thin, num_chains=num_chains, per_datapoint=per_datapoint, init=init,
                         checkpoint=checkpoint, checkpoint_every=checkpoint_every, preconditioner=preconditioner,
                         noise_correction=noise_correction, explore_lr=explore_lr, momentum_decay=momentum_decay,
                         gradient=gradient, stack=stack, workers=workers)


def _warmups_long_enough(stage: torch.Tensor, cycles: int, epochs: int, steps_per_epoch: int) -> bool:
    """Whether every cycle's warm-up has ``MIN_WARMUP_STEPS``; if not, warn (the draws will not follow p_T)."""
    L = math.ceil(len(stage) / cycles)
    shortest = min(int((stage[c * L:(c + 1) * L] == WARMUP).sum()) for c in range(cycles))
    if shortest >= MIN_WARMUP_STEPS:
        return True
    warnings.warn(
        f"csgmcmc: each cycle's warm-up has only {shortest} step(s) (epochs={epochs} × {steps_per_epoch} batches, "
        f"{cycles} cycles), fewer than the {MIN_WARMUP_STEPS} the adaptive step needs to settle; the draws will "
        f"likely not follow p_T (the temperature diagnostics will say so). Use more epochs (≥ "
        f"{math.ceil(epochs * MIN_WARMUP_STEPS / max(shortest, 1))}), fewer cycles or a smaller exploration fraction.",
        SamplerWarning, stacklevel=4)
    return False


@register("csgmcmc")
def fit_csgmcmc(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool], lr: Optional[float] = None,
                cycles: int = 4, exploration: float = 0.8, samples_per_cycle: Optional[int] = None,
                epochs: Optional[int] = None,
                sampler: str = "sghmc", momentum_decay: Optional[float] = None, num_chains: int = 1,
                preconditioner: Optional[str] = "auto", noise_correction: Union[str, bool] = "auto",
                explore_lr: Optional[float] = None, gradient: str = "auto", per_datapoint: Optional[bool] = None,
                init: Init = "fresh", checkpoint: Optional[str] = None, checkpoint_every: int = 1,
                stack: Stack = "auto", workers: int = 1) -> SamplesPosterior:
    """Cyclical SG-MCMC (Zhang et al. 2020): cosine step-size cycles, each exploring then sampling.

    α_k = α₀/2 · [cos(π · mod(k − 1, ⌈K/M⌉) / ⌈K/M⌉) + 1] over K = epochs × batches steps. In the
    first fraction β of each cycle the inner update runs without noise (optimisation); the rest is
    the sampling stage. With the adaptive kernel (default) exploration takes RMSprop steps
    α_k/√EMA[ĝ²] with α₀ = ``explore_lr`` (default 0.01) and momentum 0.9; when the control-variate
    gradient is available (un-augmented minibatches) its last quarter is a descent on that gradient
    with the noise of T (`.schedules.exploration_descent`), because minibatch SGD ends in a noise ball
    of T-independent radius, many posterior sds wide at cold T. The first half of each
    sampling stage is a warm-up (a new control-variate anchor where the descent ends when
    ``gradient`` picks it; its measured moments are pooled with the earlier cycles', since one
    cycle's warm-up is tens of steps, and its step starts from the previous cycle's; fewer than 20
    steps per cycle and a SamplerWarning says the run is too short, and the descent is skipped) and
    the second half samples with the fixed adaptive step of `fit_sghmc`/`fit_sgld` (lr
    dimensionless), the SGHMC momentum first drawn from its stationary law N(0, G·T/(1 − α/2)),
    where the ``samples_per_cycle`` draws are taken. With ``preconditioner=None``
    it is Zhang et al.'s plain rule: the same step α_k in both stages, noise √(2ε_kT) (× √α for
    SGHMC) in the sampling stage, ε_k = α_k/N per data point, draws over the whole sampling stage.

    Args:
        lr: adaptive: the dimensionless sampling step (defaults as `fit_sghmc`/`fit_sgld`);
            plain: α₀, per data point by default (0.5).
        cycles: M, the number of cycles.
        exploration: β ∈ [0, 1), the fraction of each cycle spent exploring.
        samples_per_cycle: draws kept per cycle; default ⌈``CYCLE_DRAWS`` / cycles⌉ (25 at the default 4 cycles, one
            every 20 steps of a default sampling half), at most one per sampling step. Zhang et al. kept 3 per
            cycle for the memory of a ResNet; 12 draws per chain cannot estimate a variance to the issue's ±25%.
        epochs: the run length in passes over the data; default max(200, ⌈4000 / ((1 − β) · batches per epoch)⌉):
            at least 4000 steps in the sampling stages together, as `fit_sghmc`'s whole default run
            (`csgmcmc_min_steps`; 20 000 steps at β = 0.8, so each of the default 4 cycles has ≥ 500 warm-up and
            ≥ 500 sampling steps).
        sampler: inner sampler, ``"sghmc"`` (default) or ``"sgld"``.
        momentum_decay: friction, as `fit_sghmc` (plain default 0.1).
        per_datapoint: plain kernel only; ``False`` (deprecated) reads α₀ on the full-data potential, as `fit_sgld`.

    The other options are as in `fit_sgld`.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    per_datapoint = _lr_unit("csgmcmc", per_datapoint, preconditioner, stacklevel=4)
    if isinstance(exploration, bool) or not isinstance(exploration, (int, float)) or not 0 <= exploration < 1:
        raise ValueError(f"exploration (the fraction β of each cycle spent optimising) must lie in [0, 1), "
                         f"got {exploration!r}")
    epochs, _ = default_run_length(epochs, None, data.num_batches, csgmcmc_min_steps(exploration))
    _check_common(epochs, num_chains, per_datapoint, init, checkpoint, checkpoint_every, workers)
    preconditioner, dense = _preconditioner(preconditioner, per_datapoint)
    adaptive = preconditioner is not None
    default_lr = DEFAULT_LR[(preconditioner, sampler)] if adaptive else DEFAULT_LR[(None, "csgmcmc")]
    lr = check_float(default_lr if lr is None else lr, "lr", positive=True)
    explore_lr = check_float(EXPLORE_LR if explore_lr is None else explore_lr, "explore_lr", positive=True)
    check_int(cycles, "cycles", 1)
    alpha = 1.0 if sampler == "sgld" else _momentum_decay(momentum_decay, preconditioner, None if adaptive else 0.1)
    S = data.num_batches
    K = epochs * S
    if cycles > K:
        raise ValueError(f"cycles={cycles} exceeds the {K} steps of the run (epochs × batches)")
    warmup = 0.5 if adaptive else 0.0
    stage = cyclical_stages(K, cycles, exploration, warmup)
    if samples_per_cycle is None:
        samples_per_cycle = max(1, min(math.ceil(CYCLE_DRAWS / cycles), fewest_draw_steps(stage, cycles)))
    check_int(samples_per_cycle, "samples_per_cycle", 1)
    if adaptive:
        schedule = torch.where(stage == EXPLORE, cyclical_schedule(explore_lr, K, cycles),
                               torch.full((K,), lr, dtype=torch.float64))
    else:
        schedule = cyclical_schedule(lr, K, cycles)
    descend = adaptive and _warmups_long_enough(stage, cycles, epochs, S)
    plan = Plan(schedule, stage, cyclical_draw_steps(K, cycles, exploration, samples_per_cycle, warmup), epochs, S,
                descent=exploration_descent(stage, DESCENT_FRACTION) if descend else None)
    config = {"lr": lr, "epochs": epochs, "cycles": cycles, "exploration": float(exploration),
              "samples_per_cycle": samples_per_cycle, "per_datapoint": per_datapoint, "sampler": sampler}
    return _sample("csgmcmc", sampler, model, data, plan, config, lr=lr, friction=alpha, per_datapoint=per_datapoint,
                   preconditioner=preconditioner, dense=dense, noise_correction=noise_correction, gradient=gradient,
                   explore_lr=explore_lr, pool_windows=True, seed=seed, progress=progress, num_chains=num_chains,
                   init=init, checkpoint=checkpoint, checkpoint_every=checkpoint_every, stack=stack,
                   workers=workers)
