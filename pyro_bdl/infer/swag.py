"""SWAG and Multi-SWAG: Gaussian posteriors from the SGD trajectory, and mixtures over basins.

``method="swag"`` (Maddox et al. 2019) runs SGD with momentum on the per-data-point MAP
objective of the tempered model,

    L(θ) = −(1/N) [log p̃(D_batch, w(θ)) + log|det ∂w/∂θ|]
         = (1/T)·(mean minibatch NLL) + s_prior·(−log p(w))/N,

with log p̃ = [`log_joint`][pyro_bdl.BayesianModel] through
`Objective` (N/B scaling and temperature are the core's).
For a Gaussian prior N(0, σ²) the prior term is weight decay with coefficient 1/(σ²N) — the
prior precision over N — so the SGD fixed point is the mode of the tempered posterior and the
usual deep-learning learning rates (0.05) apply. The learning rate follows the paper: ``lr`` for
the first half of ``swa_start`` epochs, a linear decay to ``swa_lr`` until 90% of ``swa_start``,
then ``swa_lr``, constant from ``swa_start`` on. After every epoch past ``swa_start`` the
iterate is collected into the [`SWAG`][pyro_bdl.guides.SWAG] guide's moments.

``method="multiswag"`` (Wilson & Izmailov 2020) runs M independent SWAG fits from fresh
initialisations and data orders (member m: seed ``seed + m``), optionally in parallel
processes, and returns their equal-weight mixture ([`MixturePosterior`][pyro_bdl.MixturePosterior]).

With BatchNorm, SGD uses batch statistics and every posterior draw gets its own statistics,
recomputed by one pass over the training inputs (`pyro_bdl.batchnorm`); networks
without BatchNorm skip this.

Runs can be checkpointed after every epoch (``checkpoint=path``) and resumed with identical
results: the iterate, momentum, SWAG moments, data-order generator and RNG states are saved.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Dict, List, Optional, Tuple

import pyro
import torch
from pyro.infer.autoguide import init_to_value

from .._util import checkpoint as checkpoints
from .._util import progress as progress_bars
from ..guides.swag import SWAG
from ..model import batchnorm
from ..model.bayesian_model import BayesianModel
from ..posterior.mixture import MixturePosterior
from ..posterior.swag import SWAGPosterior
from .data import FitData
from .members import run_members
from .registry import register

CHECKPOINT_KIND = "pyro_bdl.swag"


def swag_learning_rate(epoch: int, lr: float, swa_lr: float, swa_start: int) -> float:
    """The learning rate of epoch ``epoch`` (0-based) in Maddox et al. (2019), with t = epoch/swa_start:

    lr for t ≤ 0.5; lr·(1 − (1 − swa_lr/lr)·(t − 0.5)/0.4) for 0.5 < t ≤ 0.9; swa_lr for t > 0.9
    (so constant ``swa_lr`` while snapshots are collected).
    """
    if swa_start <= 0:
        return swa_lr
    t = epoch / swa_start
    ratio = swa_lr / lr
    if t <= 0.5:
        factor = 1.0
    elif t <= 0.9:
        factor = 1.0 - (1.0 - ratio) * (t - 0.5) / 0.4
    else:
        factor = ratio
    return lr * factor


# -- training -------------------------------------------------------------------------------
def _loader_generator(data: FitData) -> Optional[torch.Generator]:
    # A user's DataLoader shuffles with its own generator (if any) or torch's global RNG.
    return getattr(data.loader, "generator", None) if data.loader is not None and data._x is None else None


def _config(guide: SWAG, data: FitData, **settings) -> Dict[str, Any]:
    return {"num_parameters": guide.num_parameters, "dataset_size": data.dataset_size,
            "num_batches": data.num_batches, "rank": guide.rank, **settings}


def train_swag(guide: SWAG, data: FitData, *, epochs: int, swa_start: int, lr: float, swa_lr: float,
               momentum: float, seed: int, progress: Optional[bool] = None, checkpoint: Optional[str] = None,
               collect: bool = True, desc: str = "swag") -> Dict[str, List[float]]:
    """SGD with momentum on the per-data-point MAP objective, collecting SWAG snapshots.

    Args:
        guide: a set-up [`SWAG`][pyro_bdl.guides.SWAG] guide; its ``loc`` is the iterate.
        epochs, swa_start, lr, swa_lr, momentum: the schedule (see `swag_learning_rate`).
        seed: seeds the data order (and augmentation).
        checkpoint: a file written after every epoch; if it exists, the run resumes from it.
        collect: ``False`` runs plain SGD with the same schedule (the benchmark's baseline).

    Returns:
        ``{"loss": per-epoch mean loss, "lr": per-epoch learning rate}``.
    """
    objective = guide.objective
    theta = guide.loc_unconstrained
    model = objective.model
    N = data.dataset_size
    opt = torch.optim.SGD([theta], lr=lr, momentum=momentum)
    generator = torch.Generator().manual_seed(seed)
    loader_gen = _loader_generator(data)
    config = _config(guide, data, epochs=epochs, swa_start=swa_start, lr=lr, swa_lr=swa_lr, momentum=momentum,
                     seed=seed, collect=collect)
    history: Dict[str, List[float]] = {"loss": [], "lr": []}
    start = 0
    state = checkpoints.load(checkpoint)
    if state is not None:
        if state.get("kind") != CHECKPOINT_KIND or state.get("config") != config:
            diff = sorted(k for k in config if (state.get("config") or {}).get(k) != config[k])
            raise ValueError(f"checkpoint {checkpoint!r} belongs to a different run (differs in {diff or 'kind'}); "
                             "delete it or pass another checkpoint path")
        guide.load_state_dict(state["guide"])
        opt.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        checkpoints.set_rng_state(state["rng"])
        if loader_gen is not None and state["loader_generator"] is not None:
            loader_gen.set_state(state["loader_generator"])
        history = state["history"]
        start = state["epoch"]
    norm_mode = model.network.batch_statistics if batchnorm.has_batchnorm(model.net) else contextlib.nullcontext
    with progress_bars.bar(epochs, desc, progress) as bar:
        bar.update(start)
        for epoch in range(start, epochs):
            rate = swag_learning_rate(epoch, lr, swa_lr, swa_start)
            for group in opt.param_groups:
                group["lr"] = rate
            total, count = 0.0, 0
            for xb, yb in data.epoch(generator):
                opt.zero_grad(set_to_none=True)
                with norm_mode():
                    loss = objective.potential(theta, xb, yb, N) / N
                loss.backward()
                opt.step()
                value = loss.item()
                if not math.isfinite(value):
                    raise FloatingPointError(f"the SWAG loss became {value} in epoch {epoch}; lower lr (now {rate:g}) "
                                             "or check the data scale")
                total, count = total + value, count + 1
            if collect and epoch + 1 > swa_start:
                guide.collect()
            history["loss"].append(total / count)
            history["lr"].append(rate)
            if checkpoint is not None:
                checkpoints.save(checkpoint, {
                    "kind": CHECKPOINT_KIND, "config": config, "epoch": epoch + 1, "guide": guide.state_dict(),
                    "optimizer": opt.state_dict(), "generator": generator.get_state(), "rng": checkpoints.rng_state(),
                    "loader_generator": None if loader_gen is None else loader_gen.get_state(), "history": history})
            bar.set_postfix(loss=f"{total / count:.4g}", lr=f"{rate:.3g}")
            bar.update()
    return history


def _check_options(epochs, swa_start, lr, swa_lr, momentum) -> Tuple[int, float]:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if swa_start is None:
        swa_start = (3 * epochs) // 4
    if isinstance(swa_start, bool) or not isinstance(swa_start, int) or not 0 <= swa_start < epochs:
        raise ValueError(f"swa_start must be an integer in [0, epochs) = [0, {epochs}) so that at least one "
                         f"snapshot is collected, got {swa_start!r}")
    for name, value in (("lr", lr), ("swa_lr", swa_lr)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    return swa_start, float(lr / 5 if swa_lr is None else swa_lr)


def _initial_values(model: BayesianModel, init: Any, seed: int) -> Dict[str, torch.Tensor]:
    if init is None or init == "net":
        return model.initial_values()
    if init == "fresh":
        return model.initial_values(seed=seed)
    if isinstance(init, dict):
        return {k: torch.as_tensor(v) for k, v in init.items()}
    raise ValueError(f"unknown init {init!r}; use 'net' (the network's weights), 'fresh' (a seeded default "
                     "initialisation) or a dict of initial values")


def _check_checkpoint(checkpoint: Any) -> Optional[str]:
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path, got {type(checkpoint).__name__}")
    return None if checkpoint is None else os.fspath(checkpoint)


def _run_swag(model: BayesianModel, data: FitData, seed: int, progress: Optional[bool], init: Any,
              options: Dict[str, Any], checkpoint: Optional[str], desc: str) -> Tuple[SWAG, Dict[str, Any]]:
    """One SWAG fit: the guide (moments, final iterate) and its records."""
    guide = SWAG(model, rank=options["rank"], scale=options["scale"], variant=options["variant"],
                 var_clamp=options["var_clamp"], init_loc_fn=init_to_value(values=_initial_values(model, init, seed)))
    x0, y0 = next(iter(data.epoch()))
    with pyro.settings.context(module_local_params=True):
        guide.setup(x0, y0, data.dataset_size)
    history = train_swag(guide, data, epochs=options["epochs"], swa_start=options["swa_start"], lr=options["lr"],
                         swa_lr=options["swa_lr"], momentum=options["momentum"], seed=seed, progress=progress,
                         checkpoint=checkpoint, desc=desc)
    info = {"losses": history["loss"], "lr": history["lr"], "num_snapshots": guide.num_snapshots,
            "num_parameters": guide.num_parameters, "seed": seed}
    return guide, info


def _member(model: BayesianModel, data: FitData, seed: int, progress: Optional[bool], options: Dict[str, Any],
            checkpoint: Optional[str], desc: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    # Runs in a worker process: return plain state, rebuilt on the caller's model.
    guide, info = _run_swag(model, data, seed, progress, "fresh", options, checkpoint, desc)
    return guide.state_dict(), info


def _posterior(model: BayesianModel, data: FitData, guide: SWAG, method: str, info: Dict[str, Any]) -> SWAGPosterior:
    bn_inputs = bn_batch = None
    if batchnorm.has_batchnorm(model.net):
        bn_inputs = data.full()[0]
        bn_batch = data.loader.batch_size if data.minibatched else None
    return SWAGPosterior(model, guide, method, bn_inputs=bn_inputs, bn_batch_size=bn_batch, info=info)


@register("swag")
def fit_swag(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool], epochs: int = 60,
             swa_start: Optional[int] = None, lr: float = 0.05, swa_lr: Optional[float] = None, momentum: float = 0.9,
             rank: int = 20, scale: float = 0.5, variant: str = "swag", var_clamp: float = 1e-30, init: Any = "net",
             checkpoint: Optional[str] = None) -> SWAGPosterior:
    """SWA-Gaussian (Maddox et al. 2019): SGD on the MAP objective, then a Gaussian fitted to its iterates.

    Args:
        epochs: passes over the data.
        swa_start: epochs before collection starts (default 3/4 of ``epochs``); one snapshot is
            collected after every later epoch, so ``epochs − swa_start`` snapshots in all.
        lr, swa_lr: initial and collection learning rates (default ``swa_lr = lr/5``), on the
            per-data-point objective; schedule of the paper (`swag_learning_rate`).
        momentum: SGD momentum.
        rank: K, deviation columns kept; scale: covariance scale of the draws (0.5).
        variant: ``"swag"``, ``"diagonal"`` (SWAG-Diag) or ``"swa"`` (the mean only).
        var_clamp: floor on the diagonal variance.
        init: ``"net"`` (the network's weights), ``"fresh"`` (seeded default init) or a dict of values.
        checkpoint: file written after every epoch; an interrupted run resumes from it.
    """
    swa_start, swa_lr = _check_options(epochs, swa_start, lr, swa_lr, momentum)
    SWAG(model, rank=rank, scale=scale, variant=variant, var_clamp=var_clamp)  # validates before any work
    options = dict(epochs=epochs, swa_start=swa_start, lr=float(lr), swa_lr=swa_lr, momentum=float(momentum),
                   rank=rank, scale=scale, variant=variant, var_clamp=var_clamp)
    init_values = _initial_values(model, init, seed)
    guide, info = _run_swag(model, data, seed, progress, init_values, options, _check_checkpoint(checkpoint), "swag")
    info.update({k: options[k] for k in ("epochs", "swa_start", "swa_lr", "rank")})
    return _posterior(model, data, guide, "swag", info)


@register("multiswag")
def fit_multiswag(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool], num_models: int = 5,
                  workers: int = 1, epochs: int = 60, swa_start: Optional[int] = None, lr: float = 0.05,
                  swa_lr: Optional[float] = None, momentum: float = 0.9, rank: int = 20, scale: float = 0.5,
                  variant: str = "swag", var_clamp: float = 1e-30,
                  checkpoint: Optional[str] = None) -> MixturePosterior:
    """Multi-SWAG (Wilson & Izmailov 2020): an equal-weight mixture of ``num_models`` SWAG posteriors.

    Member m starts from a fresh default initialisation and data order, both seeded with
    ``seed + m``, so the members settle in different basins. ``workers`` > 1 runs members in
    parallel processes. With ``checkpoint="run.pt"`` member m checkpoints to ``run.member<m>.pt``.
    Other options as for `fit_swag`. ``predict(x, num_samples=S)`` splits the S draws
    evenly over the members; ``draws_by_chain`` gives one chain per member.
    """
    if isinstance(num_models, bool) or not isinstance(num_models, int) or num_models < 1:
        raise ValueError(f"num_models must be a positive integer, got {num_models!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    swa_start, swa_lr = _check_options(epochs, swa_start, lr, swa_lr, momentum)
    SWAG(model, rank=rank, scale=scale, variant=variant, var_clamp=var_clamp)
    checkpoint = _check_checkpoint(checkpoint)
    options = dict(epochs=epochs, swa_start=swa_start, lr=float(lr), swa_lr=swa_lr, momentum=float(momentum),
                   rank=rank, scale=scale, variant=variant, var_clamp=var_clamp)
    root, ext = os.path.splitext(checkpoint) if checkpoint is not None else (None, None)
    member_progress = progress if workers == 1 else False
    args = [(model, data, seed + m, member_progress, options,
             None if checkpoint is None else f"{root}.member{m}{ext}", f"swag {m + 1}/{num_models}")
            for m in range(num_models)]
    results = run_members(_member, args, workers)
    x0, y0 = next(iter(data.epoch()))
    members = []
    for m, (state, info) in enumerate(results):
        guide = SWAG(model, rank=rank, scale=scale, variant=variant, var_clamp=var_clamp,
                     init_loc_fn=init_to_value(values=model.initial_values()))
        with pyro.settings.context(module_local_params=True):
            guide.setup(x0, y0, data.dataset_size)
        guide.load_state_dict(state)
        members.append(_posterior(model, data, guide, "swag", info))
    return MixturePosterior(members, "multiswag", info={"num_models": num_models, "members": [m.info for m in members],
                                                         "epochs": epochs, "swa_start": swa_start, "swa_lr": swa_lr,
                                                         "rank": rank})
