"""SG-MCMC runs: ``num_chains`` chains of a `Plan` on the one driver, in groups stepped together (`sample`,
`run_chain`), collected in a [`SamplesPosterior`][pyro_bdl.SamplesPosterior].

The parts, one job each: the adaptive constants (`.adaptation`), the gradient estimates (`.gradients`), one chain's
state and step (`.chain`), the spike guard (`.guard`), the per-step record (`.record`), the driver's step rule
(`.rule`); the update rules themselves are `.kernels` and the plans `.schedules`.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..._util import checkpoint as ckpt
from ..._util.random import spawn_seeds
from ...evaluate.diagnostics import sampler as temps
from ...model.bayesian_model import BayesianModel
from ...model.potential import Objective
from ...posterior.samples import SamplesPosterior
from ..data import FitData
from ..driver import drive
from ..driver import info as driver_info
from ..map import example_batch
from ..members import run_members
from ..stacking import group_path, stack_size
from .adaptation import Dynamics
from .chain import Context
from .gradients import full_data
from .mixing import principal_split_rhat, warn_if_not_mixed
from .rule import OwnChecks, SGMCMCRule
from .schedules import Plan
from .whitening import DENSE_MAX_SIZE

# names importable from here since before the split into modules (tests and notes import them from `run`)
from .adaptation import FROZEN_STEP_CAP, WARMUP_EMA_DECAY, WARMUP_HEAT, WARMUP_STEP_GROWTH, warmup_friction  # noqa: F401
from .chain import Chain as _Chain  # noqa: F401
from .guard import GUARD_DECAY, GUARD_SLACK  # noqa: F401
from .guard import SpikeGuard as _Guard  # noqa: F401
from .guard import implied_square as _implied_square  # noqa: F401
from .record import StepRecord as _Record  # noqa: F401
from .record import kinetic_weight as _kinetic_weight  # noqa: F401

#: steps between reads of the chains' per-step losses and diagnostics to the host (`.rule.SGMCMCRule`): one
#: synchronisation per block, not per step, as the one driver's ``check_every`` (`pyro_bdl.infer.driver`)
CHECK_EVERY = 50


def run_chain(ctx: Context, theta0: torch.Tensor, seeds: Sequence[int], *, stacked: bool, desc: str,
              progress: Optional[bool], checkpoint: Optional[str], fingerprint: Optional[Dict[str, Any]],
              checkpoint_every: int,
              names: Optional[Sequence[str]] = None) -> Tuple[List[Dict[str, Any]], torch.Tensor, float]:
    """Run the chains from ``theta0`` ``(K, P)`` (chain k with seed ``seeds[k]``: its data order and noise; named
    ``names[k]`` in messages) to the end of the plan on the driver, stacked or one after another within each step
    (`.rule.SGMCMCRule`); the driver's state is the checkpoint (saved every ``checkpoint_every`` epochs and at the
    end). Returns the chains' states, the driver's loss history ``(K, steps)`` and the wall time."""
    # a dense run's chains each have their own map θ = θ̂ + Lφ (`.whitening`): stepped one after another (same groups)
    rule = SGMCMCRule(ctx, stacked and theta0.shape[0] > 1 and not ctx.dynamics.dense, names)
    result = drive(rule, theta0, ctx.data, steps=ctx.steps, seeds=seeds, desc=desc, progress=progress,
                   checks=[OwnChecks() for _ in seeds], checkpoint=checkpoint, fingerprint=fingerprint,
                   checkpoint_every=checkpoint_every, check_every=ctx.check_every)
    return rule.finish(result.state), result.loss, result.wall_time


def _initial_theta(objective: Objective, model: BayesianModel, init: Union[str, Dict[str, torch.Tensor]],
                   seed: int) -> torch.Tensor:
    """A chain's flat start θ: ``init`` a dict of values for every site, ``"net"`` the network's weights, ``"fresh"``
    the default initialisation drawn with ``seed``."""
    if isinstance(init, dict):
        values = model.as_values(init)
        missing = [n for n in objective.layout.names if n not in values]
        if missing:
            raise ValueError(f"init is missing values for sites {missing}")
        return objective.initial(values)
    return objective.initial(model.initial_values(seed=seed) if init == "fresh" else None)


def _fingerprint(method: str, config: Dict[str, Any], model: BayesianModel, data: FitData,
                 objective: Objective, seed: int, theta0: torch.Tensor, **extra: Any) -> Dict[str, Any]:
    """What identifies a run, so a checkpoint is only resumed by the same run (``theta0``, the first
    chain's start, stands for ``init`` whatever its form)."""
    return ckpt.fingerprint(model, data, method, config, seed, start=ckpt.tensor_hash(theta0),
                            sites=list(objective.layout.names), size=objective.size, **extra)


#: the `SamplerWarning`'s addition for an augmented run below T = 1 (package docs, "Control-variate gradients")
AUGMENTED_COLD_HINT = ("With data augmentation the control-variate gradient cannot be used, so below T = 1 the minibatch "
                       "noise B shrinks the step (G ≈ lr·T/B) and the chain needs about 1/T times the epochs of a T = 1 "
                       "run to mix: raise epochs, or batch_size.")


def chain_seeds(seed: int, num_chains: int) -> List[int]:
    """Seeds of the chains of a run, spawned from ``seed`` (`pyro_bdl._util.random.spawn_seeds`):
    runs with different seeds share no chain."""
    return spawn_seeds(seed, num_chains)


def sample(model: BayesianModel, data: FitData, *, method: str, plan: Plan, dynamics: Dynamics, seed: int,
           progress: Optional[bool], num_chains: int, init, checkpoint: Optional[str], checkpoint_every: int,
           config: Dict[str, Any], lr: float = 1.0, stack: Union[str, bool, int] = "auto",
           workers: int = 1) -> SamplesPosterior:
    """Run ``num_chains`` independent chains of ``plan`` and collect them in a [`SamplesPosterior`][pyro_bdl.SamplesPosterior].

    Chain c has seed ``chain_seeds(seed, num_chains)[c]`` (its data order and noise) and starts at ``init`` for that
    seed. The chains run on the one driver in groups of ``stack_size(stack, ...)`` stepped together (`run_chain`),
    at most ``⌈num_chains / workers⌉`` per group when ``workers > 1``; the groups run one after another in this
    process (``workers=1``) or in ``workers`` spawned processes (`pyro_bdl.infer.members.run_members`, progress off
    there), each with its own checkpoint file when there are several (`pyro_bdl.infer.stacking.group_path`; finished
    groups are read back, not rerun). A chain's numbers depend only on its seed and its group, so a run equals the
    run with ``workers=1`` and the same grouping."""
    objective = Objective(model, data.example_x(2))
    size = stack_size(stack, num_chains, model, data, objective)  # a bad `stack` fails before any work
    if workers > 1:  # spread the chains over the processes
        size = min(size, math.ceil(num_chains / workers))
    if dynamics.preconditioner is not None:
        dynamics = replace(dynamics, curvature_floor=objective.prior_curvature())
    dense = resolve_dense(dynamics.dense, objective)
    if dense != dynamics.dense or dynamics.dense:
        dynamics = replace(dynamics, dense=dense)
        config = dict(config, preconditioner="dense" if dense else config.get("preconditioner"))
    if dynamics.preconditioner is not None and dynamics.gradient != "plain":
        full_data(data)  # once, before any chain (and before a checkpoint's RNG is restored)
    seeds = chain_seeds(seed, num_chains)
    first = _initial_theta(objective, model, init, seeds[0])
    groups = [list(range(i, min(i + size, num_chains))) for i in range(0, num_chains, size)]
    tasks = []
    for i, group in enumerate(groups):
        fingerprint = None if checkpoint is None else _fingerprint(method, config, model, data, objective, seed, first,
                                                                   chains=group, stack=size)
        tasks.append(_GroupTask(
            chains=group, seeds=[seeds[c] for c in group],
            desc=method if len(groups) == 1 else f"{method} chains {group[0] + 1}-{group[-1] + 1}",
            names=[method if num_chains == 1 else f"{method} chain {c + 1}/{num_chains}" for c in group],
            checkpoint=group_path(checkpoint, i, len(groups)), fingerprint=fingerprint, verify=i == 0))
    if workers == 1 or len(groups) == 1:
        ctx = Context(objective, data, plan, dynamics, lr, method, CHECK_EVERY)
        results = [_run_group(ctx, model, init, first, task, progress, checkpoint_every) for task in tasks]
    else:
        args = [(model, data, plan, dynamics, lr, method, init, first, replace(task, verify=True), checkpoint_every)
                for task in tasks]
        results = [torch.load(io.BytesIO(blob), weights_only=True) for blob in run_members(run_group, args, workers)]
    finished = [s for states, _, _ in results for s in states]
    loss = torch.cat([r[1] for r in results])
    wall_time = sum(r[2] for r in results)
    return _posterior(model, objective, plan, dynamics, finished, loss, dict(config, stack=size, workers=workers),
                      method, wall_time)


@dataclass(frozen=True)
class _GroupTask:
    """One group of chains of a run: their indices, seeds, names in messages and progress, checkpoint file and
    fingerprint; ``verify``: check the compiled density outside vmap first (once per `Objective`)."""
    chains: List[int]
    seeds: List[int]
    desc: str
    names: List[str]
    checkpoint: Optional[str]
    fingerprint: Optional[Dict[str, Any]]
    verify: bool


def _run_group(ctx: Context, model: BayesianModel, init, first: torch.Tensor, task: _GroupTask,
               progress: Optional[bool], checkpoint_every: int) -> Tuple[List[Dict[str, Any]], torch.Tensor, float]:
    """The chains of ``task`` stepped together (`run_chain`): their states, loss history ``(k, steps)``, wall time."""
    objective = ctx.objective
    theta0 = torch.stack([first if c == 0 else _initial_theta(objective, model, init, s)
                          for c, s in zip(task.chains, task.seeds)])
    if task.verify and len(task.chains) > 1:  # stacked chains: the compiled density (stack_size stacks no other)
        # is verified once, outside vmap, which cannot read its check's numbers to the host (`Objective`), as `map` does
        with torch.no_grad():
            x0, y0 = example_batch(ctx.data)
            objective.log_density(theta0[0], x0, y0, ctx.data.dataset_size)
    return run_chain(ctx, theta0, task.seeds, stacked=len(task.chains) > 1, desc=task.desc, progress=progress,
                     checkpoint=task.checkpoint, fingerprint=task.fingerprint, checkpoint_every=checkpoint_every,
                     names=task.names)


def run_group(model: BayesianModel, data: FitData, plan: Plan, dynamics: Dynamics, lr: float, method: str, init,
              first: torch.Tensor, task: _GroupTask, checkpoint_every: int) -> bytes:
    """One group of chains in a worker process (`sample` with ``workers > 1``; module level, so it pickles under
    spawn): a fresh `Objective` of ``model``, the group run without progress, and its result — the chains' plain
    states (tensors, lists, dicts), the loss history and the wall time — as ``torch.save`` bytes, so that it crosses
    the process boundary as one buffer (not one shared-memory file per tensor; a run keeps a tensor per draw) and is
    read back with ``weights_only=True`` (nothing that holds the model)."""
    if dynamics.preconditioner is not None and dynamics.gradient != "plain":
        full_data(data)  # as `sample` does before any chain: this process's copy of the data
    ctx = Context(Objective(model, data.example_x(2)), data, plan, dynamics, lr, method, CHECK_EVERY)
    states, loss, wall_time = _run_group(ctx, model, init, first, task, False, checkpoint_every)
    buffer = io.BytesIO()
    torch.save(([{**s, "theta": s["theta"].clone()} for s in states], loss, wall_time), buffer)
    return buffer.getvalue()


def resolve_dense(dense, objective) -> bool:
    """Whether a run uses the dense preconditioner (`.whitening`): ``"auto"`` (``preconditioner="auto"``, the
    default) up to `.whitening.DENSE_MAX_SIZE` coordinates where the density compiles, ``True`` (``"dense"``)
    always, ``False`` never. A model with hyperprior sites (the traced density) stays diagonal under ``"auto"``:
    its posterior's scale changes with the hyperparameters (a funnel), which one frozen linear map cannot whiten
    (a hierarchical BLR's csgmcmc mean read 1.15 sd off whitened against 0.58 diagonal, notes/issue-13-dense.md)."""
    if dense == "auto":
        return objective.size <= DENSE_MAX_SIZE and objective.compiled
    return bool(dense)


def _posterior(model, objective, plan: Plan, dynamics: Dynamics, finished, loss: torch.Tensor, config, method,
               wall_time: float) -> SamplesPosterior:
    draws = torch.stack([torch.stack(s["draws"]) for s in finished])  # (C, D, P)
    samples = {k: v.detach() for k, v in objective.to_constrained(draws).items()}
    dtype = draws.dtype
    sample_stats = {
        "step_size": torch.tensor([s["draw_step_size"] for s in finished], dtype=dtype),
        "loss": torch.tensor([s["draw_loss"] for s in finished], dtype=dtype),
        "configurational_temperature": torch.tensor([s["draw_configurational"] for s in finished], dtype=dtype),
    }
    estimates = {"configurational_temperature":
                 torch.stack([temps.mean_with_interval(s["configurational"]) for s in finished])}
    if dynamics.kernel == "sghmc":
        sample_stats["kinetic_temperature"] = torch.tensor([s["draw_kinetic"] for s in finished], dtype=dtype)
        estimates["kinetic_temperature"] = torch.stack([temps.mean_with_interval(s["kinetic"]) for s in finished])
    info = {
        **config,
        # the one driver's schema (`pyro_bdl.infer.driver.info`): loss (chains, steps), options, wall_time
        **driver_info(loss, config, wall_time),
        "step_size": plan.step_size.to(dtype),
        "draw_steps": plan.draw_steps.clone(),
        "sampling_stage": plan.noisy.clone(),
        "stage": plan.stage.clone(),
        "steps_per_epoch": plan.steps_per_epoch,
        "temperature": dynamics.temperature,
        **estimates,
    }
    if dynamics.preconditioner is not None:
        info["preconditioner_step"] = torch.stack([s["frozen"]["step"] for s in finished]).to(dtype)
        info["friction"] = torch.stack([s["frozen"]["friction"] for s in finished]).to(dtype)
        info["gradient_noise"] = torch.stack([s["frozen"]["noise"] for s in finished]).to(dtype)
        info["control_variate"] = torch.tensor([bool(s["frozen"]["cv"]) for s in finished])
    # mixing along the slow directions, which the temperatures do not see (`.mixing`): in the preconditioner's metric
    scale = info["preconditioner_step"].mean(0).sqrt() if dynamics.preconditioner is not None else None
    metric = draws
    if dynamics.dense:  # the metric φ of the first chain's map (the chains' maps differ by their θ̂'s Hessians)
        info["whitening"] = torch.stack([s["whiten"]["L"] for s in finished]).to(dtype)
        info["whitening_shift"] = torch.stack([s["whiten"]["shift"] for s in finished]).to(dtype)
        L0 = info["whitening"][0].double()
        metric = torch.linalg.solve(L0, draws.double().reshape(-1, draws.shape[-1]).T).T.reshape(draws.shape)
    rhat = principal_split_rhat(metric, scale)
    info["split_rhat"] = None if rhat is None else torch.from_numpy(rhat)
    temps.warn_if_off(estimates, dynamics.temperature, method, hint=AUGMENTED_COLD_HINT if (
        dynamics.augmentation_noise and dynamics.temperature < 1) else "")
    warn_if_not_mixed(rhat, method, len(finished), config.get("epochs"))
    return SamplesPosterior(model, samples, method, sample_stats=sample_stats, info=info)
