"""``fit(method="swag")`` and ``fit(method="multiswag")``: options, starting points, groups of stacked members
(`pyro_bdl.infer.stacking.stack_size`, process ``workers``) and the posteriors."""
from __future__ import annotations

import math
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import pyro
import torch
from pyro.infer.autoguide import init_to_value

from ..._util import checkpoint as checkpoints
from ..._util.checks import check_int
from ..._util.random import spawn_seeds
from ...guides.swag import SWAG, check_variant
from ...model import batchnorm
from ...model.bayesian_model import BayesianModel
from ...model.potential import Objective
from ...posterior.base import Posterior
from ...posterior.mixture import MixturePosterior
from ...posterior.swag import SWAGPosterior
from .. import driver
from ..data import FitData
from ..stacking import stack_size
from .whitening import check_preconditioner, use_dense
from ..members import run_members
from ..options import default_epochs
from ..registry import register
from .rule import CHECKPOINT_KIND, expected_snapshots, snapshot_every, train_runs


def _check_options(epochs, swa_start, lr, swa_lr, momentum) -> Tuple[int, Any]:
    """``(swa_start, swa_lr)`` checked (``swa_start``: the ``warmup`` option, default 3/4 of the epochs)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if swa_start is None:
        swa_start = (3 * epochs) // 4
    if isinstance(swa_start, bool) or not isinstance(swa_start, int) or not 0 <= swa_start < epochs:
        raise ValueError(f"warmup (formerly swa_start) must be an integer in [0, epochs) = [0, {epochs}) so that at "
                         f"least one snapshot is collected, got {swa_start!r}")
    for name, value in (("lr", None if lr == "auto" else lr), ("swa_lr", None if swa_lr == "auto" else swa_lr)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value <= 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    return swa_start, ("auto" if swa_lr in (None, "auto") else float(swa_lr))


#: the paper's K: deviation rows kept where the parameters outnumber the snapshots (``rank="auto"``)
DEFAULT_RANK = 20
#: snapshots per parameter below which a full-rank SWAG covariance's spread is warned about (`resolve_rank`)
SNAPSHOTS_PER_PARAMETER = 4


def resolve_rank(rank: Any, model: BayesianModel, data: FitData, epochs: int, swa_start: int, swa_lr: Any,
                 momentum: float) -> int:
    """The ``rank`` option: an integer as given; ``"auto"`` (default) keeps every snapshot, K = the snapshots a run
    collects (`expected_snapshots`), where that many can make the low-rank part full rank (P ≤ K; its memory K·P
    is then at most K²), else Maddox et al.'s K = 20.

    Why: the low-rank part DᵀD/(K − 1) is the sample covariance of K deviations, so after whitening by the
    posterior its eigenvalues spread over the Marchenko–Pastur range (1 ± √(P/K))² even for independent
    snapshots, and SWAG's Σ = ½(diag + DᵀD/(K − 1)) inherits half of that. With K = 20 of 30 collected
    snapshots, on linear regression with P = 6 (`notes/issue-13-swag-defaults.md`) the top eigenvalue was
    1.49–1.51; keeping all 30 gives 1.29–1.30. Where the part can be full rank but K < 4P (the top edge of
    ½(1 + (1 + √(P/K))²) passes 2 at K ≈ 1.9P for independent snapshots, and the default spacing leaves
    neighbours ≈ e⁻¹-correlated, about halving the effective K) a RuntimeWarning says to raise ``epochs``; on
    networks (P ≫ K) the low-rank part is a rank-K approximation by design and nothing is said."""
    if rank != "auto":
        return rank
    size = Objective(model, data.example_x(2)).size
    snapshots = expected_snapshots(data, epochs, swa_start, swa_lr, momentum)
    if size > snapshots:
        return DEFAULT_RANK
    # (fewer than 10 auto snapshots: `train_runs` already warns that the covariance will be noisy and too small)
    if snapshots < SNAPSHOTS_PER_PARAMETER * size and not (swa_lr == "auto" and snapshots < 10):
        warnings.warn(f"SWAG will collect {snapshots} snapshots for {size} parameters: its full-rank covariance's "
                      f"eigenvalues spread by about (1 ± √(P/K))² = [{(1 - (size / snapshots) ** 0.5) ** 2:.2f}, "
                      f"{(1 + (size / snapshots) ** 0.5) ** 2:.2f}] around the posterior's (Marchenko–Pastur), "
                      f"halved by the diagonal part. Raise epochs for at least {SNAPSHOTS_PER_PARAMETER * size} "
                      "snapshots.", RuntimeWarning, stacklevel=4)
    return max(DEFAULT_RANK, snapshots)


#: epochs of a run when ``epochs=None`` and the model is not small (Maddox et al. 2019 train for 300 epochs of which
#: the last quarter collects; this library's default keeps the quarter), and at least
#: `pyro_bdl.infer.options.DEFAULT_MIN_STEPS` steps (`default_epochs`): on 500 digits in batches of 50, 60 epochs are
#: 450 SGD steps of exploration, after which the SWA mean was 0.02–0.03 nats of test NLL short of a MAP fit's (a small
#: CNN: 0.103 against 0.085; at 4000 steps 0.080; notes/issue-13-lead12.md)
DEFAULT_EPOCHS = 60
#: snapshots per parameter the default run of a small model collects (dense rates, ``variant="full"``)
FULL_RANK_SNAPSHOTS = 30
#: and at least this many (the relative sd of one variance from K ≈ e⁻¹-correlated snapshots is √(2/(K/2)): 0.14)
MIN_FULL_RANK_SNAPSHOTS = 200
#: the most collection steps that default adds (a model / data set needing more warns through `resolve_rank`)
MAX_COLLECTION_STEPS = 100_000


def resolve_length(epochs: Optional[int], warmup: Optional[int], objective: Objective, data: FitData, swa_lr: Any,
                   momentum: float, preconditioner: str) -> Tuple[Any, Optional[int]]:
    """``(epochs, warmup)``: as given when ``epochs`` is given; else `DEFAULT_EPOCHS`, or more where that is under
    4000 steps (`pyro_bdl.infer.options.default_epochs`; ``warmup`` default 3/4 of them), and for a small model
    with auto rates (a dense whitening, `pyro_bdl.infer.swag.whitening.use_dense`) the collection lengthened to
    `FULL_RANK_SNAPSHOTS`·P snapshots (at most `MAX_COLLECTION_STEPS` steps).

    Why 30 per parameter: such a collection's covariance is a full-rank sample covariance, whose eigenvalues after
    whitening by the posterior spread over (1 ± √(P/K_eff))² (Marchenko–Pastur), and snapshots one relaxation time
    apart (`snapshot_every`) are ≈ e⁻¹-correlated, K_eff ≈ K/2; K = 30P gives [0.55, 1.58], inside the issue-13
    bar of a factor 2 with room for the OU picture's own error. That edge is asymptotic (large P); for a few
    parameters each variance's own error √(2/K_eff) dominates, so K ≥ `MIN_FULL_RANK_SNAPSHOTS` (0.14 at 200).
    The cost is K relaxation times, N/(2B) steps each (`snapshot_every`)."""
    if epochs is not None:
        return epochs, warmup
    total = default_epochs(DEFAULT_EPOCHS, data.num_batches)
    start = (3 * total) // 4 if warmup is None else warmup
    if swa_lr not in (None, "auto") or isinstance(start, bool) or not isinstance(start, int) or start < 0:
        return total, warmup  # _check_options names a bad warmup
    size = objective.size
    if not use_dense(preconditioner, objective):
        return max(total, start + 1), warmup
    every = snapshot_every(data.dataset_size, data.random_batch_size, momentum)
    steps = min(MAX_COLLECTION_STEPS, max(FULL_RANK_SNAPSHOTS * size, MIN_FULL_RANK_SNAPSHOTS) * every)
    return start + max(total - (3 * total) // 4, math.ceil(steps / data.num_batches)), start


def resolve_variant(variant: str, rank: int, data: FitData, size: int, epochs: int, swa_start: int,
                    swa_lr: Any, momentum: float) -> str:
    """``variant="auto"`` (default): ``"full"`` (the snapshots' sample covariance, `pyro_bdl.guides.SWAG`) where
    every snapshot is kept and they outnumber the parameters (``rank="auto"`` on a small model), else ``"swag"``
    (diagonal + low rank: the only estimate a rank-K collection of a network has)."""
    if variant != "auto":
        return check_variant(variant)
    snapshots = expected_snapshots(data, epochs, swa_start, swa_lr, momentum)
    return "full" if rank >= snapshots > size else "swag"


def _resolve(model: BayesianModel, data: FitData, epochs, warmup, lr, swa_lr, momentum, rank, variant,
             preconditioner) -> Tuple[int, int, Any, int, str, str]:
    """Every option that has an automatic value, checked: ``(epochs, swa_start, swa_lr, rank, variant,
    preconditioner)``."""
    preconditioner = check_preconditioner(preconditioner)
    objective = Objective(model, data.example_x(2))  # the model's size and whether its density compiles, once
    epochs, warmup = resolve_length(epochs, warmup, objective, data, swa_lr, momentum, preconditioner)
    swa_start, swa_lr = _check_options(epochs, warmup, lr, swa_lr, momentum)
    rank = resolve_rank(rank, model, data, epochs, swa_start, swa_lr, momentum)
    variant = resolve_variant(variant, rank, data, objective.size, epochs, swa_start, swa_lr, momentum)
    return epochs, swa_start, swa_lr, rank, variant, preconditioner


def _initial_values(model: BayesianModel, init: Any, seed: int) -> Dict[str, torch.Tensor]:
    if init is None or init == "net":
        return model.initial_values()
    if init == "fresh":
        return model.initial_values(seed=seed)
    if isinstance(init, dict):
        return model.as_values(init)
    if isinstance(init, Posterior):
        return _chain_starts(model, init, 1)[0]
    raise ValueError(f"unknown init {init!r}; use 'net' (the network's weights), 'fresh' (a seeded default "
                     "initialisation), a dict of initial values or a fitted posterior (its last draw)")


def _chain_starts(model: BayesianModel, init: Posterior, num: int) -> List[Dict[str, torch.Tensor]]:
    """The last draw of each of the first ``num`` chains of a fitted posterior (a MAP fit, a deep ensemble: one
    chain per member), as starting values: Maddox et al. (2019) and Wilson & Izmailov (2020) start each SWAG run
    from a pretrained solution (`pyro_bdl.infer.swag`'s docs, "Starting point")."""
    chains = init.draws_by_chain(1, seed=0)
    default = model.initial_values()
    shapes = {k: tuple(v.shape[2:]) for k, v in chains.items()}
    if shapes != {k: tuple(v.shape) for k, v in default.items() if k in shapes} or not set(shapes) <= set(default):
        raise ValueError("init is a posterior whose sites or shapes differ from this model's; fit SWAG on the model "
                         "(network) the posterior was fitted on")
    have = next(iter(chains.values())).shape[0]
    if have < num:
        raise ValueError(f"init has {have} chain(s), but {num} SWAG run(s) need one starting point each")
    return [dict(default, **model.as_values({k: v[m, -1] for k, v in chains.items()})) for m in range(num)]


_check_checkpoint = checkpoints.check_path


def _guide(model: BayesianModel, data: FitData, options: Dict[str, Any], values: Dict[str, torch.Tensor],
           scale: float) -> SWAG:
    """A set-up SWAG guide starting at ``values`` (its ``loc`` is a run's θ₀)."""
    guide = SWAG(model, rank=options["rank"], scale=scale, variant=options["variant"], var_clamp=options["var_clamp"],
                 init_loc_fn=init_to_value(values=values))
    x0, y0 = next(iter(data.epoch()))
    with pyro.settings.context(module_local_params=True):
        guide.setup(x0, y0, data.dataset_size)
    return guide


def _run_group(model: BayesianModel, data: FitData, members: Sequence[int], seeds: Sequence[int],
               inits: Sequence[Dict[str, torch.Tensor]], progress: Optional[bool], options: Dict[str, Any],
               checkpoint: Optional[str], fingerprint_seed: int, desc: str) -> List[Tuple[SWAG, Dict[str, Any]]]:
    """SWAG runs ``members`` (seeds ``seeds``, starting values ``inits``) stacked on the driver: each run's guide
    (moments, final iterate, ``scale`` with its Lyapunov factor) and its records."""
    guides = [_guide(model, data, options, v, options["scale"] * model.temperature) for v in inits]
    theta0 = torch.stack([g.loc_unconstrained.detach() for g in guides])
    run_options = {k: options[k] for k in ("epochs", "warmup", "lr", "swa_lr", "momentum", "rank", "preconditioner")}
    fp = None if checkpoint is None else checkpoints.fingerprint(
        model, data, CHECKPOINT_KIND, dict(run_options, collect=True), fingerprint_seed, members=list(members),
        seeds=list(seeds), start=checkpoints.tensor_hash(theta0), num_parameters=guides[0].num_parameters)
    histories, loss, wall_time = train_runs(
        guides, data, seeds, epochs=options["epochs"], swa_start=options["warmup"], lr=options["lr"],
        swa_lr=options["swa_lr"], momentum=options["momentum"], progress=progress, checkpoint=checkpoint,
        fingerprint=fp, desc=desc, preconditioner=options["preconditioner"])
    out = []
    for k, (guide, history) in enumerate(zip(guides, histories)):
        guide.scale = guide.scale * history["covariance_scale"]  # Lyapunov rescaling (GradientNoise.covariance_scale)
        # The driver's info schema (pyro_bdl.infer.driver.info): loss (1, steps), options, wall_time (stacked runs:
        # an equal share of their group's); "losses" (per-epoch means, a list) is kept for one release.
        info = driver.info(loss[k:k + 1], options, wall_time / len(guides), losses=history["loss"], lr=history["lr"],
                           num_snapshots=guide.num_snapshots, snapshot_every=history["snapshot_every"],
                           covariance_scale=history["covariance_scale"], direction_scales=history["direction_scales"],
                           collection_restarts=history["collection_restarts"], num_parameters=guide.num_parameters, seed=seeds[k])
        out.append((guide, info))
    return out


def _member_group(model: BayesianModel, data: FitData, members: Sequence[int], seeds: Sequence[int],
                  progress: Optional[bool], options: Dict[str, Any], checkpoint: Optional[str], seed: int,
                  desc: str, starts: Optional[Sequence[Dict[str, torch.Tensor]]] = None
                  ) -> List[Tuple[Dict[str, torch.Tensor], Dict[str, Any]]]:
    # May run in a worker process: returns plain state, rebuilt on the caller's model. ``starts``: the members'
    # starting values (``init`` a fitted posterior), else each member's seeded fresh initialisation.
    inits = [_initial_values(model, "fresh", s) for s in seeds] if starts is None else list(starts)
    return [(guide.state_dict(), info) for guide, info in
            _run_group(model, data, members, seeds, inits, progress, options, checkpoint, seed, desc)]


def _posterior(model: BayesianModel, data: FitData, guide: SWAG, method: str, info: Dict[str, Any]) -> SWAGPosterior:
    bn_inputs = bn_batch = None
    if batchnorm.has_batchnorm(model.net):
        bn_inputs = data.full()[0]
        bn_batch = data.loader.batch_size if data.minibatched else None
    return SWAGPosterior(model, guide, method, bn_inputs=bn_inputs, bn_batch_size=bn_batch, info=info)


@register("swag")
def fit_swag(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool],
             epochs: Optional[int] = None, warmup: Optional[int] = None, lr: Union[float, str] = "auto",
             swa_lr: Any = "auto", momentum: float = 0.9, rank: Union[int, str] = "auto", scale: float = 0.5,
             variant: str = "auto", var_clamp: float = 1e-30, init: Any = "net",
             preconditioner: str = "auto", checkpoint: Optional[str] = None) -> SWAGPosterior:
    """SWA-Gaussian (Maddox et al. 2019): SGD on the MAP objective, then a Gaussian fitted to its iterates.

    Args:
        epochs: passes over the data; ``None`` (default): 60, or more where 60 are under 4000 steps (few batches
            per epoch: SGD converges per step, `pyro_bdl.infer.options.default_epochs`), or for a model the auto
            rates whiten densely (a generalised linear model of ≤ 256 parameters, ``preconditioner``) as many as a
            collection of max(30P, 200) snapshots needs (`resolve_length`).
        warmup: epochs before collection starts, the paper's ``swa_start`` (the deprecated name
            `pyro_bdl.infer.options` maps; default 3/4 of ``epochs``); with a numeric ``swa_lr`` one snapshot is
            collected after every later epoch, so ``epochs − warmup`` snapshots in all.
        lr: exploration learning rate on the per-data-point objective T·L (module docs); ``"auto"`` (default):
            min(0.05, (1 + β)/λ_max) with λ_max the largest Hessian eigenvalue at the start (half the heavy
            ball's stability limit, `pyro_bdl.infer.swag.noise.exploration_lr`), so a sharply curved problem
            (a Gaussian likelihood of small scale) gets a step that does not diverge;
            should it still diverge (tiny batches: the product of random batch Hessians grows), the run restarts
            from its start at half the step, with a RuntimeWarning (`exploration_lr`'s "Back-off"). A numeric lr
            that diverges raises, naming it.
        swa_lr: ``"auto"`` (default; posterior-matching rates, module docs) or a constant
            collection rate (the paper's schedule, `swag_learning_rate`). The auto rates come from the
            curvature where collection starts; should they diverge there (a start far from any mode, e.g.
            ``warmup=0`` from an untrained net), `DivergenceError` names warmup, ``init`` and a numeric swa_lr
            rather than halving the exploration lr, which cannot mend it.
        momentum: SGD momentum.
        rank: K, deviation columns kept; ``"auto"`` (default): every snapshot where the parameters are no more
            than the snapshots (full rank), else 20 (`resolve_rank`, which warns when a full-rank covariance has
            fewer than 4 snapshots per parameter); scale: covariance scale of the draws (0.5).
        variant: ``"auto"`` (default: ``"full"`` where every snapshot is kept and they outnumber the
            parameters, else ``"swag"``; `resolve_variant`), ``"swag"``, ``"diagonal"`` (SWAG-Diag), ``"swa"``
            (the mean only) or ``"full"`` (the snapshots' sample covariance, `pyro_bdl.guides.SWAG`).
        var_clamp: floor on the diagonal variance.
        preconditioner: the coordinates the auto rates are diagonal in (``swa_lr="auto"`` only): ``"auto"``
            (default) whitens θ densely for a generalised linear model of ≤ 256 parameters without hyperprior sites
            (`pyro_bdl.infer.swag.whitening.use_dense`) and keeps θ's own coordinates otherwise; ``"dense"``,
            ``"fisher"`` (diagonal rates) force either (`pyro_bdl.infer.swag.whitening`: L·diag(ε)·Lᵀ with LᵀVL = I, the
            full preconditioner 2(1 − β)/N·V⁻¹ of Mandt et al. 2017, exact for a correlated posterior, where
            diagonal rates spread a rotated ill-conditioned one far too narrowly along its weak directions).
        init: ``"net"`` (the network's weights), ``"fresh"`` (seeded default init), a dict of values, or a fitted
            posterior (its first chain's last draw: a `fit(method="map")` solution, the pretrained start of
            Maddox et al. 2019; a posterior that draws on demand gives one draw, seed 0; `pyro_bdl.infer.swag`'s
            "Starting point").
        checkpoint: the driver's state, saved after every epoch; an interrupted run resumes from it.

    ``info``: the driver's ``loss`` ``(1, steps)`` (per step), ``options``, ``wall_time``; ``losses`` (per-epoch
    means), ``lr`` (per epoch), ``num_snapshots``, ``snapshot_every``, ``covariance_scale``, ``direction_scales``,
    ``collection_restarts`` (auto rates: how often the collection left the burn-in's bound and restarted).
    """
    epochs, swa_start, swa_lr, rank, variant, preconditioner = _resolve(
        model, data, epochs, warmup, lr, swa_lr, momentum, rank, variant, preconditioner)
    SWAG(model, rank=rank, scale=scale, variant=variant, var_clamp=var_clamp)  # validates before any work
    options = dict(epochs=epochs, warmup=swa_start, lr=lr if lr == "auto" else float(lr), swa_lr=swa_lr, momentum=float(momentum),
                   rank=rank, scale=scale, variant=variant, var_clamp=var_clamp,
                   preconditioner=preconditioner)
    init_values = _initial_values(model, init, seed)
    ((guide, info),) = _run_group(model, data, [0], [seed], [init_values], progress, options,
                                  _check_checkpoint(checkpoint), seed, "swag")
    info.update(epochs=epochs, swa_start=swa_start, swa_lr=swa_lr, rank=rank, variant=variant)
    return _posterior(model, data, guide, "swag", info)


def _stack_size(stack: Union[str, bool, int], num_models: int, model: BayesianModel, data: FitData,
                rank: int) -> int:
    """Members stepped together (`pyro_bdl.infer.stacking.stack_size`); ``"auto"`` also counts each member's SWAG
    moments (mean, squared deviations, ``rank`` deviation rows, momentum: (rank + 3)·P more values)."""
    objective = Objective(model, data.example_x(2))
    extra = (rank + 3) * objective.size * objective.initial().element_size()
    return stack_size(stack, num_models, model, data, objective, extra_bytes=extra)


@register("multiswag")
def fit_multiswag(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool], num_chains: int = 5,
                  workers: int = 1, epochs: Optional[int] = None, warmup: Optional[int] = None,
                  lr: Union[float, str] = "auto",
                  swa_lr: Any = "auto", momentum: float = 0.9, rank: Union[int, str] = "auto", scale: float = 0.5,
                  variant: str = "auto", var_clamp: float = 1e-30, stack: Union[str, bool, int] = "auto",
                  init: Any = "fresh", preconditioner: str = "auto", checkpoint: Optional[str] = None) -> MixturePosterior:
    """Multi-SWAG (Wilson & Izmailov 2020): an equal-weight mixture of ``num_chains`` SWAG posteriors (formerly
    ``num_models``; ``warmup`` formerly ``swa_start``: the deprecated names `pyro_bdl.infer.options` maps).

    Member m starts from a fresh default initialisation and data order, both seeded with
    ``spawn_seeds(seed, num_chains)[m]``, so the members settle in different basins. Members are stepped
    together (``torch.func.vmap``, `SWAGRule`), each with its own data order, augmentation, auto rates, stability
    cap, burn-in and instability guard, so a stacked member equals the member fitted alone with its seed (to float
    rounding). ``stack``: ``"auto"`` (as many as a quarter of the free memory holds), ``True``, ``False`` (one at a
    time) or a number; ``workers`` > 1 runs groups of members in parallel processes. With ``checkpoint="run.pt"``
    the group whose first member is m checkpoints to ``run.member<m>.pt`` (one file per member with
    ``stack=False``); finished groups are read back, not retrained. ``init``: ``"fresh"`` (default, above) or a
    fitted posterior with at least ``num_chains`` chains (a deep ensemble, `fit(method="ensemble")`): member m
    starts from chain m's last draw (Wilson & Izmailov 2020's Multi-SWAG: SWAG from each of M pretrained
    solutions; with ``warmup=0`` the runs collect from the start, `pyro_bdl.infer.swag`'s "Starting point").
    Other options as for `fit_swag`. ``predict(x, num_samples=S)`` splits the S draws evenly over the members; ``draws_by_chain`` gives one chain
    per member.
    """
    num_models = num_chains
    check_int(num_chains, "num_chains", 1)
    check_int(workers, "workers", 1)
    epochs, swa_start, swa_lr, rank, variant, preconditioner = _resolve(
        model, data, epochs, warmup, lr, swa_lr, momentum, rank, variant, preconditioner)
    SWAG(model, rank=rank, scale=scale, variant=variant, var_clamp=var_clamp)
    checkpoint = _check_checkpoint(checkpoint)
    options = dict(epochs=epochs, warmup=swa_start, lr=lr if lr == "auto" else float(lr), swa_lr=swa_lr, momentum=float(momentum),
                   rank=rank, scale=scale, variant=variant, var_clamp=var_clamp,
                   preconditioner=preconditioner)
    starts = None
    if isinstance(init, Posterior):
        starts = _chain_starts(model, init, num_models)
    elif init != "fresh":
        raise ValueError(f"unknown init {init!r} for multiswag; use 'fresh' (each member's seeded default "
                         "initialisation) or a fitted posterior with one chain per member")
    size = _stack_size(stack, num_models, model, data, rank)
    if workers > 1:  # spread the members over the processes
        size = min(size, math.ceil(num_models / workers))
    groups = [list(range(i, min(i + size, num_models))) for i in range(0, num_models, size)]
    root, ext = os.path.splitext(checkpoint) if checkpoint is not None else (None, None)
    seeds = spawn_seeds(seed, num_models)
    args = [(model, data, g, [seeds[m] for m in g], progress if workers == 1 else False, options,
             None if checkpoint is None else f"{root}.member{g[0]}{ext}", seed,
             f"swag {g[0] + 1}/{num_models}" if len(g) == 1 else f"swag {g[0] + 1}-{g[-1] + 1}/{num_models}",
             None if starts is None else [starts[m] for m in g])
            for g in groups]
    results = [r for group in run_members(_member_group, args, workers) for r in group]
    x0, y0 = next(iter(data.epoch()))
    members = []
    for state, info in results:
        guide = SWAG(model, rank=rank, scale=scale * model.temperature * info["covariance_scale"], variant=variant,
                     var_clamp=var_clamp, init_loc_fn=init_to_value(values=model.initial_values()))
        with pyro.settings.context(module_local_params=True):
            guide.setup(x0, y0, data.dataset_size)
        guide.load_state_dict(state)
        members.append(_posterior(model, data, guide, "swag", info))
    infos = [m.info for m in members]
    return MixturePosterior(members, "multiswag", info={
        "loss": torch.cat([i["loss"] for i in infos]),
        "options": dict(options, num_chains=num_chains, workers=workers, stack=stack),
        "wall_time": sum(i["wall_time"] for i in infos),  # summed over groups (CPU time when run in parallel)
        "num_models": num_models, "members": infos, "epochs": epochs, "swa_start": swa_start, "swa_lr": swa_lr,
        "rank": rank, "stack": size, "member_seeds": seeds, "init": "fresh" if starts is None else "posterior"})
