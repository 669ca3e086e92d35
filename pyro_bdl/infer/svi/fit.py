"""``fit(method="svi")``: Adam on the ELBO (`pyro_bdl.infer.svi.rule`), the finish
(`pyro_bdl.infer.svi.finish`) and the stationarity check (`pyro_bdl.infer.svi.check`)."""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Optional, Union

import pyro
import torch

from ...model.bayesian_model import BayesianModel
from ...model.potential import Objective
from ...model.tempering import likelihood_scale
from ...posterior.mixture import MixturePosterior
from ...posterior.samples import GuidePosterior
from ..._util import checkpoint as ckpt
from ..._util.checks import check_int
from ..._util.random import seeded, spawn_seeds
from ..data import FitData
from .. import driver
from ..map import check_newton_steps, start_values
from ..options import run_length
from ..registry import register
from ..trend import loss_trend, trend_info, warn_if_falling
from .check import fit_check, stationarity_info, warn_stationarity
from .finish import SVI_NEWTON_STEPS, finish
from .guides import GUIDES, _check_init_scale, initialise_scales, make_guide
from .rule import SVIRun, run_svi

#: runs of the default length a fit with the default length may add while its loss still falls (8× the default in all)
MAX_EXTENSIONS = 7
#: schedules that a fit of the default length whose check finds the mean off may add, each decayed to lr·lr_decay²
MAX_POLISHES = 3


@register("svi")
def fit_svi(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool],
            guide: Union[str, Any] = "normal", steps: Optional[int] = None, epochs: Optional[int] = None,
            lr: float = 0.01, lr_decay: float = 0.1, num_particles: int = 1, init_scale: Union[float, str] = "auto",
            rank: Optional[int] = None, init: Optional[Dict[str, torch.Tensor]] = None, num_chains: int = 1,
            newton_steps: int = SVI_NEWTON_STEPS, checkpoint: Optional[str] = None) -> Union[GuidePosterior, MixturePosterior]:
    """Variational inference with a Pyro autoguide, run by the driver (`SVIRule`, `pyro_bdl.infer.driver`).

    Args:
        guide: ``"normal"`` (mean-field), ``"lowrank"``, ``"fullrank"``, or a Pyro guide.
        steps / epochs: optimiser steps, or passes over the data (``num_steps`` is the deprecated name of
            ``steps``). Default: 2000 steps, and while the loss was still falling over their last quarter
            (`pyro_bdl.infer.trend`: more than 0.01 nats per data point per 100 steps beyond the noise) up to
            ``MAX_EXTENSIONS`` (7) more runs of 2000, each a warm restart of the schedule (Loshchilov & Hutter 2017)
            from where the last ended, its ELBO draws continued and its data order fresh; a network's ELBO takes
            thousands of steps more than a point estimate's loss (digits MLPs: 4000–8000 by this rule). A length you give,
            or a run with ``checkpoint``, is kept as given. ``info["extensions"]``: the runs added. At the default
            length a guide whose mean the check then finds off (`pyro_bdl.infer.svi.check`) gets up to
            ``MAX_POLISHES`` (3) more schedules decayed to ``lr · lr_decay²``, until the check passes: Adam's
            minibatch noise floor (≈ lr·lr_decay per coordinate) leaves the mean ≈ 1 guide sd off at T = 0.01, where
            the sds are ~√T of T = 1's (``info["polished"]``). A polish ends at the average of the guide's
            parameters over its second half (Polyak & Juditsky 1992), not at its last step: the last iterate is one
            draw from Adam's noise floor, the average of a stretch of them is closer to the optimum by about the
            square root of its number of correlation times. Measured at T = 0.01 on digits nets (500 images): the
            last iterates of 3 polishes left a small CNN's mean 1.16 guide sds off (RMS 0.39) and warned; one
            averaged polish reads 0.25 (RMS 0.18).
        lr, lr_decay: Adam step size, decayed exponentially to ``lr * lr_decay``.
        num_particles: ELBO samples per step (vectorised).
        init_scale: initial guide standard deviation (loc starts at the network's weights):
            ``"auto"`` (default) starts each coordinate at min(1/√Λ_kk, 0.01), with Λ_kk the tempered
            posterior's diagonal precision estimated from the prior and the Fisher information at the
            start (`curvature_scales`; for a Gaussian posterior 1/√Λ_kk is the mean-field optimum), so
            a posterior narrower than 0.01 (cold T, large N) is not approached from far above; a
            number sets every sd to it.
        rank: rank of the ``"lowrank"`` guide (default ≈ √P).
        init: the built-in guide's starting means ``{site: tensor}`` (moved to the network's device and
            dtype); sites left out start at [`BayesianModel.initial_values`][pyro_bdl.BayesianModel].
        num_chains: independent SVI runs (default 1). Run k has seed ``s_k = spawn_seeds(seed, num_chains)[k]``:
            its guide's means start at ``model.initial_values(seed=s_k)`` (a fresh initialisation of the
            network, with ``init``'s sites replaced), and its data order, ``init_scale="auto"`` estimate and
            ELBO draws come from ``s_k`` — run k is ``fit(method="svi", seed=s_k, init=<that start>)``. The
            runs are stepped together on the driver and returned as their equal-weight mixture
            ([`MixturePosterior`][pyro_bdl.MixturePosterior]), as for deep ensembles and Multi-SWAG: the
            runs settle in different modes, which one Gaussian cannot cover. Built-in guides only.
        newton_steps: for a built-in guide of at most 200 parameters, fixed-point steps of the ELBO on the full data
            after Adam (`pyro_bdl.infer.svi.finish`): the mean by a Newton step with E_q[∇²U], the covariance to
            the family's optimum on the local quadratic model (full-rank Σ = E_q[∇²U]⁻¹, mean-field
            σ_k² = 1/E_q[∂²_kk U], low-rank by L-BFGS), each kept only if the ELBO does not fall; exact in one step
            for a Gaussian posterior. Default 3; 0: none. None is taken where E_q[∇²U] is not positive definite
            (networks, as a rule): there the `StationarityWarning` check says whether Adam converged.
        checkpoint: file where the run's state (guide parameters, Adam and its schedule, the data
            order's and the ELBO draws' random generators, the loss history) is saved after every
            epoch and at the end; rerunning the same call resumes it bit-identically, and a checkpoint of
            another run (other model, data, options or seed) is refused naming what differs.

    Under minibatches the built-in guides use `ControlVariateELBO`: the ELBO gradient of a guide sd
    otherwise has signal-to-noise ratio ≈ √(B·T/N) (B of N points), and at cold T the sds stayed
    near their start (variance 0.6× the mean-field target at T = 0.1 and 2.3× at T = 0.01 on
    linear regression with 2000 steps); with it they reach the target within 10% at T = 1 … 0.01.

    The driver shuffles the minibatches with a generator seeded ``seed`` (`pyro_bdl.infer.driver`) and
    reads the loss every 50 steps: a loss that turns non-finite, grows by orders of magnitude or falls
    below any attainable value (`pyro_bdl.infer.divergence`) stops the run within that block with a
    `DivergenceError` naming ``lr``.

    ``info``: the driver schema (`pyro_bdl.infer.driver.info`) — ``loss`` ``(1, steps)`` (the negative
    ELBO estimate per step), ``options``, ``wall_time`` (training, summed over resumes) — plus
    ``guide`` (its class name) and, for one run, ``losses`` (the same losses as a list; deprecated, kept for
    one release), the check after any Newton steps (`pyro_bdl.infer.svi.check.stationarity_check`, up to 32
    pairs of guide draws, no more rows than the fit's): ``stationarity_offset`` (the mean's worst coordinate, in guide sds, a lower
    bound beyond the draws' noise; exact for a Gaussian posterior), ``stationarity_rms`` (its RMS over coordinates)
    and ``variance_ratio`` (the mean of diag(E_q[∇²U]Σ_q), 1 at the optimum; below 1 the guide is over-confident),
    a `StationarityWarning` when the worst coordinate exceeds 0.8, the RMS 0.4 or the ratio leaves [1/2, 2] beyond
    the noise; ``loss_slope`` and ``loss_slope_se``, how fast the loss was still falling at the end of Adam's run
    (nats per data point per 100 steps, `pyro_bdl.infer.trend.loss_trend`), with a `StationarityWarning` when it
    exceeds 0.01 beyond its noise (not after a finish that moved the guide); ``extensions``; and
    ``newton_steps_taken``. With ``num_chains`` > 1, ``loss`` is ``(num_chains, steps)`` and the mixture carries
    the ``info``; each member's ``info`` has its ``seed``, the check and slope entries and ``newton_steps_taken``.
    """
    num = run_length(data, steps, epochs, default=2000)
    check_newton_steps(newton_steps)
    _check_init_scale(init_scale)
    check_int(num_chains, "num_chains", 1)
    checkpoint = ckpt.check_path(checkpoint)
    if not isinstance(guide, str):
        if init is not None:
            raise ValueError("init sets a built-in guide's starting means; a guide object you pass starts where it "
                             "was built (drop init, or build the guide with init_loc_fn=init_to_value(values=...))")
        if num_chains > 1:
            raise ValueError("num_chains > 1 builds one fresh guide per run, so it needs a built-in guide "
                             f"({sorted(GUIDES)}); fit several runs of your own guide one at a time")
    start = start_values(model, init)
    seeds = [seed] if num_chains == 1 else spawn_seeds(seed, num_chains)
    with torch.random.fork_rng(devices=[]):  # its trace draws from the prior: the runs' streams stay as they were
        objective = Objective(model, data.example_x(2)) if isinstance(guide, str) else None
    runs = []
    for s in seeds:
        # One run sets up under fit's seeded global RNG, as before the driver; run k of several under s_k,
        # exactly as fit(seed=s_k) would (and the global RNG is left as it was).
        with contextlib.nullcontext() if num_chains == 1 else seeded(s):
            run_start = start if num_chains == 1 else {**model.initial_values(seed=s), **model.as_values(init or {})}
            with pyro.settings.context(module_local_params=True):
                g = make_guide(model, guide, init_scale, rank, run_start)
                if init_scale == "auto" and isinstance(guide, str):
                    initialise_scales(g, model, data, s, run_start)
            runs.append(SVIRun(model, g, data, lr, num_particles,
                               control_variate=isinstance(guide, str) and data.minibatched, objective=objective))
    options = {"guide": guide if isinstance(guide, str) else type(guide).__qualname__, "steps": steps,
               "epochs": epochs, "lr": lr, "lr_decay": lr_decay, "num_particles": num_particles,
               "init_scale": init_scale, "rank": rank, "init": None if init is None else sorted(init),
               "num_chains": num_chains, "newton_steps": newton_steps}

    def fingerprint(theta0: torch.Tensor) -> Dict[str, Any]:
        # the starting parameters stand for init, init_scale="auto"'s estimate and a user guide's own start
        return ckpt.fingerprint(model, data, "svi", options, seed, start=ckpt.tensor_hash(theta0))

    unit = data.dataset_size * likelihood_scale(model.temperature, model.tempering)
    parts = [run_svi(runs, data, num, lr, lr_decay, seeds, progress, "svi", checkpoint, fingerprint)]

    def run_on(decay: float, order: int, desc: str, average: bool = False) -> None:
        """One more schedule of ``num`` steps from where the runs are (lr decayed to lr·``decay``): the ELBO draws
        continue, the data order is fresh (spawned child ``order`` of each run's seed); ``average``: ending at the
        parameters' average over its second half."""
        for run, rng in zip(runs, parts[-1].state["rng"]):
            run.rng = dict(rng)
        orders = [spawn_seeds(s, MAX_EXTENSIONS + MAX_POLISHES)[order] for s in seeds]
        parts.append(run_svi(runs, data, num, lr, decay, orders, progress, desc,
                             average_from=num // 2 if average else None))

    def read_checks() -> list:
        # the mean's distance from the ELBO's stationary point, a check the loss history cannot give (it is noisy
        # and flat long before an ill-conditioned posterior's weak directions converge): notes/issue-13-sweep.md
        steps_run = sum(p.loss.shape[1] for p in parts)
        return [fit_check(run.guide, model, data, s, steps_run, objective) if isinstance(guide, str) else None
                for run, s in zip(runs, seeds)]

    def finish_all() -> list:
        # Adam stops short of the ELBO's optimum on sharp or ill-conditioned posteriors (notes/issue-13-mapsvi.md);
        # a small model's built-in guide is finished by the ELBO's fixed-point equations (notes/issue-13-svifinish.md)
        return [finish(run.guide, model, data, s, objective, newton_steps) if isinstance(guide, str) else 0
                for run, s in zip(runs, seeds)]

    # the default length is a start, not a budget: a network's ELBO converges in thousands of steps more
    # (notes/issue-13-lead10.md); a length the user chose, or a checkpointed run, is kept as given
    default_length = steps is None and epochs is None and checkpoint is None
    while (default_length and len(parts) <= MAX_EXTENSIONS
           and any(trend is not None and trend.falling for trend in
                   (loss_trend(row, unit, num) for row in torch.cat([p.loss for p in parts], dim=1)))):
        run_on(lr_decay, len(parts) - 1, "svi (loss still falling)")
    finished, checks = finish_all(), read_checks()
    polished = 0
    while default_length and polished < MAX_POLISHES and any(c is not None and c.mean_off for c in checks):
        # Adam's minibatch noise floor is ≈ lr·lr_decay per coordinate: at cold T, where the guide's sds are ~√T,
        # it leaves the mean about one sd off (notes/issue-13-lead10.md). One more schedule, decayed to lr·lr_decay²,
        # averaged over its second half (notes/issue-13-lead12.md).
        polished += 1
        run_on(lr_decay ** 2, MAX_EXTENSIONS + polished - 1, "svi (polishing the mean)", average=True)
        finished = [f + g for f, g in zip(finished, finish_all())]
        checks = read_checks()
    loss, wall_time = torch.cat([p.loss for p in parts], dim=1), sum(p.wall_time for p in parts)
    x0, _ = next(iter(data.epoch()))
    name = type(runs[0].guide).__name__
    for c in checks:
        warn_stationarity(c, loss.shape[1])
    # a history still falling at its end proves Adam had not converged, where the check's tolerances can still pass
    # (the digits MLP: notes/issue-13-lead10.md); a finish that moved the guide leaves Adam's history behind it
    trends = warn_if_falling("svi", loss, unit, quiet=[f > 0 for f in finished], period=num, stacklevel=4)
    entries = [{**stationarity_info(c), **trend_info(t)} for c, t in zip(checks, trends)]
    if num_chains == 1:
        return GuidePosterior(model, runs[0].guide, "svi", x0,
                              info=driver.info(loss, options, wall_time, losses=loss[0].tolist(), guide=name,
                                               extensions=len(parts) - 1 - polished, polished=polished,
                                               newton_steps_taken=finished[0], **entries[0]))
    members = [GuidePosterior(model, run.guide, "svi", x0, info={"seed": s, **z, "newton_steps_taken": f})
               for run, s, z, f in zip(runs, seeds, entries, finished)]
    return MixturePosterior(members, "svi", info=driver.info(loss, options, wall_time, guide=name,
                                                            extensions=len(parts) - 1 - polished, polished=polished))
