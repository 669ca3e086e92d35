"""Deep ensembles (Lakshminarayanan et al. 2017) as an approximate Bayesian model average.

M members are MAP fits (`pyro_bdl.infer.svi.fit_map`: maximise the tempered
log p̃(D, w) with Adam) that differ only in their seed: member m starts from a fresh default
initialisation of the network, ``model.initial_values(seed=s_m)``, and shuffles its
minibatches with ``s_m``, where ``s_0, …, s_{M−1} = spawn_seeds(seed, M)`` (independent of every
other seed's members). The posterior is the equal-weight mixture of point masses,

    p(w | D) ≈ (1/M) Σ_m δ(w − ŵ_m),   p(y | x, D) ≈ (1/M) Σ_m p(y | x, ŵ_m),

which Wilson & Izmailov (2020) read as a Bayesian model average over basins of attraction.
It is a [`SamplesPosterior`][pyro_bdl.SamplesPosterior] with M chains of one draw each, so members are
separate chains in ``draws_by_chain`` (diagnostics compare them like independent runs).

Members are independent: ``workers > 1`` trains them in that many spawned processes
(`run_members`). With ``checkpoint=path`` every finished
member is saved; a rerun with the same arguments trains only the missing ones.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import pyro
import torch

from .._util import checkpoint as ckpt
from .._util import progress as progress_bars
from .._util.random import spawn_seeds
from ..model.bayesian_model import BayesianModel
from ..posterior.samples import SamplesPosterior
from .data import FitData
from .members import run_members
from .registry import register
from .svi import fit_map, resolve_steps
from .._util.checks import check_int


def fit_member(model: BayesianModel, data: FitData, seed: int, options: Dict[str, Any],
               progress: Optional[bool] = False) -> Tuple[Dict[str, torch.Tensor], List[float]]:
    """One ensemble member: MAP from ``model.initial_values(seed=seed)`` with seed ``seed``.

    Returns its weights ``{site: tensor}`` and its loss per step. A module-level function, so it
    can run in a spawned process.
    """
    pyro.set_rng_seed(seed)
    post = fit_map(model, data, seed=seed, progress=progress, init=model.initial_values(seed=seed), **options)
    return {k: v[0, 0] for k, v in post.samples.items()}, post.info["losses"]


@register("ensemble")
def fit_ensemble(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool], num_models: int = 5,
                 num_steps: Optional[int] = None, epochs: Optional[int] = None, lr: float = 0.01,
                 lr_decay: float = 0.1, workers: int = 1, checkpoint: Optional[str] = None) -> SamplesPosterior:
    """A deep ensemble of ``num_models`` MAP members from seeds ``spawn_seeds(seed, num_models)``.

    Args:
        num_models: M, the number of members.
        num_steps / epochs, lr, lr_decay: each member's MAP optimisation (see `fit_map`).
        workers: processes training members in parallel (1: one after another in this process).
        checkpoint: file where finished members are saved; rerunning resumes (module docs).

    ``info["losses"]`` holds each member's loss per step, ``(M, steps)``; ``sample_stats["loss"]``
    each member's final loss, ``(M, 1)``.
    """
    check_int(num_models, 'num_models', 1)
    check_int(workers, 'workers', 1)
    checkpoint = ckpt.check_path(checkpoint)
    options = {"num_steps": num_steps, "epochs": epochs, "lr": lr, "lr_decay": lr_decay}
    resolve_steps(data, num_steps, epochs, default=2000)  # bad step counts fail before any work
    fingerprint = ckpt.fingerprint(model, data, "ensemble", dict(options, num_models=num_models), seed)
    saved = ckpt.load(checkpoint, fingerprint)
    # Member indices are stored as strings (plain-data keys); weights and losses as saved.
    members: Dict[int, Tuple[Dict[str, torch.Tensor], List[float]]] = {} if saved is None else {
        int(m): (weights, list(losses)) for m, (weights, losses) in saved["members"].items()}
    pending = [m for m in range(num_models) if m not in members]
    seeds = spawn_seeds(seed, num_models)
    member_progress = progress if workers == 1 else False
    with progress_bars.bar(num_models, "ensemble", progress) as bar:
        bar.update(num_models - len(pending))
        # Members are trained `workers` at a time, so a checkpoint records each finished group.
        for i in range(0, len(pending), workers):
            group = pending[i:i + workers]
            results = run_members(fit_member, [(model, data, seeds[m], options, member_progress) for m in group],
                                  workers=workers)
            members.update(zip(group, results))
            if checkpoint is not None:
                ckpt.save(checkpoint, fingerprint, {"members": {str(m): list(v) for m, v in members.items()}})
            bar.update(len(group))
    order = range(num_models)
    samples = {k: torch.stack([members[m][0][k] for m in order]).unsqueeze(1) for k in members[0][0]}
    losses = torch.tensor([members[m][1] for m in order])
    return SamplesPosterior(model, samples, "ensemble", sample_stats={"loss": losses[:, -1:]},
                            info={"num_models": num_models, "losses": losses, "member_seeds": [seeds[m] for m in order]})
