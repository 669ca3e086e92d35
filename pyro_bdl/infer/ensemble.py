"""Deep ensembles (Lakshminarayanan et al. 2017) as an approximate Bayesian model average.

M members are MAP fits (`pyro_bdl.infer.map`: maximise the tempered log p̃(D, w) with Adam) that
differ only in their seed: member m starts from a fresh default initialisation of the network,
``model.initial_values(seed=s_m)``, and shuffles (and augments) its minibatches with its own
generator seeded ``s_m``, where ``s_0, …, s_{M−1} = spawn_seeds(seed, M)`` (independent of every
other seed's members). The posterior is the equal-weight mixture of point masses,

    p(w | D) ≈ (1/M) Σ_m δ(w − ŵ_m),   p(y | x, D) ≈ (1/M) Σ_m p(y | x, ŵ_m),

which Wilson & Izmailov (2020) read as a Bayesian model average over basins of attraction. Each member's Adam run
is finished by up to ``newton_steps`` damped Newton steps on the full-data potential and checked by its Newton
decrement, exactly as a MAP fit (`pyro_bdl.infer.map`, module docs: why Adam alone stops short on sharp or
ill-conditioned posteriors); a line search keeps every step downhill, so a member stays in its basin.
It is a [`SamplesPosterior`][pyro_bdl.SamplesPosterior] with M chains of one draw each, so members are
separate chains in ``draws_by_chain`` (diagnostics compare them like independent runs).

**Stacked members.** Members are stepped together: θ ``(M, P)``, each step's M minibatches
gathered to ``(M, B, ...)`` (one index of the M members' rows), the M losses by ``torch.func.vmap`` over the potential, their gradients
by one backward pass, and one Adam step on the stack (`pyro_bdl.infer.map.MAPRule`), so an ensemble pays one step's Python and
dispatch overhead per step instead of M. A stacked member equals the member trained alone with
the same seed (to float rounding). ``stack="auto"`` (default) stacks as many members as fit in a
quarter of the free memory, on the CPU only small networks (`pyro_bdl.infer.stacking.stack_size`); ``stack=False`` trains them one at a time; an integer
stacks that many. ``workers > 1`` trains groups of members in that many spawned processes
(`run_members`), for members too large to stack. With a user's ``DataLoader`` every member
iterates the loader itself (orders differ as the loader's shuffling RNG advances).

With ``checkpoint=path`` the driver's state is saved after every epoch (one file per group of
stacked members when there are several: ``path.group<i>``); a rerun with the same arguments
resumes it bit for bit, and finished groups are not trained again.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Union

import torch

from .._util import checkpoint as ckpt
from .._util.checks import check_int
from .._util.random import spawn_seeds
from ..model.bayesian_model import BayesianModel
from ..model.potential import Objective
from ..posterior.samples import SamplesPosterior
from . import driver
from .data import FitData
from .map import check_newton_steps, fresh_theta, optimiser_class, run_map
from .members import run_members
from .options import run_length
from .registry import register
from .stacking import group_path, stack_size
from .stationarity import NEWTON_STEPS, warn_point

def fit_group(model: BayesianModel, data: FitData, members: Sequence[int], seeds: Sequence[int],
              options: Dict[str, Any], seed: int, progress: Optional[bool], checkpoint: Optional[str],
              objective: Optional[Objective] = None):
    """Train the ``members`` (seeds ``seeds``) stacked, each finished by Newton steps (`pyro_bdl.infer.map.finish`);
    returns ``(θ (m, P), loss (m, steps), wall time, stationarity check)``.
    A module-level function, so it can run in a spawned process; in this process the ensemble's own
    ``objective`` is passed, so its set-up (the model trace, the prior, the compiled density's check) is done
    once for every group, not once per group."""
    x = data.example_x(2)
    if objective is None:
        objective = Objective(model, x)
    theta0 = torch.stack([fresh_theta(objective, s, x) for s in seeds])
    steps = run_length(data, options["steps"], options["epochs"], default=2000)
    fp = None if checkpoint is None else ckpt.fingerprint(model, data, "ensemble", options, seed,
                                                          members=list(members), start=ckpt.tensor_hash(theta0))
    result = run_map(model, data, theta0, seeds, objective=objective, steps=steps, lr=options["lr"],
                     lr_decay=options["lr_decay"], optimiser=options["optimiser"], desc="ensemble",
                     progress=progress, checkpoint=checkpoint, fingerprint=fp,
                     newton_steps=options["newton_steps"])
    result, check = result
    return result.state["theta"].detach(), result.loss, result.wall_time, check


@register("ensemble")
def fit_ensemble(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool], num_chains: int = 5,
                 steps: Optional[int] = None, epochs: Optional[int] = None, lr: float = 0.01,
                 lr_decay: float = 0.1, optimiser: Union[str, type] = "adam", stack: Union[str, bool, int] = "auto",
                 workers: int = 1, newton_steps: int = NEWTON_STEPS, checkpoint: Optional[str] = None) -> SamplesPosterior:
    """A deep ensemble of ``num_chains`` MAP members from seeds ``spawn_seeds(seed, num_chains)``.

    Args:
        num_chains: M, the number of members (formerly ``num_models``).
        steps / epochs, lr, lr_decay, optimiser: each member's MAP optimisation (see `fit_map`).
        stack: members stepped together by ``torch.func.vmap``: ``"auto"`` (as many as memory allows),
            ``True`` (all), ``False`` (one at a time) or a number.
        workers: processes training groups of members in parallel (1: in this process).
        newton_steps: full-data Newton steps that finish each member (default 5; 0: none), see `fit_map`.
        checkpoint: file where the run's state is saved after every epoch; rerunning resumes (module docs).

    ``info``: ``loss`` ``(M, steps)``, each member's loss per step; ``options``; ``wall_time``;
    ``member_seeds``; ``stack``, the members per group; ``stationarity_offset`` and ``newton_decrement``, lists of
    each member's (`fit_map`; a `StationarityWarning` names the worst member above 0.4).
    ``sample_stats["loss"]``: each member's final (optimiser) loss, ``(M, 1)``.
    """
    check_int(num_chains, "num_chains", 1)
    check_int(workers, "workers", 1)
    checkpoint = ckpt.check_path(checkpoint)
    run_length(data, steps, epochs, default=2000)  # bad step counts fail before any work
    optimiser_class(optimiser)
    check_newton_steps(newton_steps)
    options = {"steps": steps, "epochs": epochs, "lr": lr, "lr_decay": lr_decay,
               "optimiser": optimiser if isinstance(optimiser, str) else optimiser.__qualname__,
               "num_chains": num_chains, "newton_steps": newton_steps}
    objective = Objective(model, data.example_x(2))
    size = stack_size(stack, num_chains, model, data, objective)
    if workers > 1:  # spread the members over the processes
        size = min(size, math.ceil(num_chains / workers))
    seeds = spawn_seeds(seed, num_chains)
    groups = [list(range(i, min(i + size, num_chains))) for i in range(0, num_chains, size)]
    run_options = dict(options, optimiser=optimiser)
    args = [(model, data, g, [seeds[m] for m in g], run_options, seed, progress if workers == 1 else False,
             group_path(checkpoint, i, len(groups)), objective if workers == 1 else None) for i, g in enumerate(groups)]
    results = run_members(fit_group, args, workers=workers)
    theta = torch.cat([r[0] for r in results])
    loss = torch.cat([r[1] for r in results])
    offsets = [z for r in results for z in r[3]["stationarity_offset"]]
    decrements = [lam for r in results for lam in r[3]["newton_decrement"]]
    warn_point("ensemble", run_length(data, steps, epochs, default=2000), offsets, stacklevel=4)
    values = objective.to_constrained(theta)
    samples = {k: v.unsqueeze(1) for k, v in values.items()}
    return SamplesPosterior(model, samples, "ensemble", sample_stats={"loss": loss[:, -1:].detach().cpu()},
                            info=driver.info(loss, options, sum(r[2] for r in results), losses=loss.detach().cpu(),
                                             member_seeds=seeds, num_chains=num_chains, stack=size,
                                             stationarity_offset=offsets, newton_decrement=decrements))
