"""Every method against a full-batch NUTS reference on small digits, and the Multi-SWAG vs ensemble gap.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_reference.py --quick
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_reference.py --size 300 --hidden 16 --T 1 --seeds 0 1
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_reference.py --gap --seeds 0 1 2
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_reference.py --swag-only --size 1000 --hidden 32 --T 1
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_reference.py --split --size 500 --hidden 32
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_reference.py --length --size 500 --hidden 32 --T 1
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_reference.py --start --size 500 --hidden 32 --T 1 --seeds 0 1 2

Issue 13, item 5 asks SWAG's predictive mutual information (MI) to be at least a quarter of SGHMC's. Whether
SGHMC is the right yardstick is the question here: Izmailov et al. (2021, "What are Bayesian neural network
posteriors really like?") take full-batch HMC as the reference posterior and compare methods by top-1
agreement and total variation (TV) with its predictive (`pyro_bdl.evaluate.metrics.agreement`,
`total_variation`). Digits (bundled, global scaling) with a small training subset and a small ReLU MLP are
small enough for NumPyro NUTS (4 chains) to converge in about a minute, so every method can be put against
the posterior itself at T = 1 and T = 0.1 (posterior tempering, the library default).

1. **Reference table** (default mode). NUTS (NumPyro, 4 chains × ``warmup`` + ``draws``), converged by
   function-space R-hat / bulk ESS (`pyro_bdl.diagnostics.summary` on the first 100 test inputs), then SWAG,
   SWAG without the per-direction equipartition cap (the cap monkeypatched off in this script only),
   Multi-SWAG (with and without the cap), SGHMC and SGLD (2 chains), a deep ensemble and MAP, all at defaults with batch 50, on the same
   network and N(0, 1) prior: test NLL, accuracy, mean MI, agreement and TV with the reference. Rows
   ``multi-SWA`` (the Multi-SWAG members' SWA means as an equal mixture) and the mean single-member NLLs
   split the Multi-SWAG / ensemble gap into the means' part and the spread's part.
2. **Configurational temperature** on every method's draws, globally and along SWAG's low-rank directions:
   for the target p_T ∝ exp(−U_T) and any constant θ₀ and v, integration by parts gives
   E[(θ − θ₀)·∇U_T] = d and E[(v·(θ − θ₀))(v·∇U_T)] = |v|² (Wenzel et al. 2020, App. E; the library's
   `configurational_temperature` divided by T). Columns ``Tconf`` = (1/d) mean (θ − θ₀)·∇U_T and
   ``Cdir`` = median over SWAG's unit eigendirections v_k (of the same seed's SWAG fit) of mean
   (v_k·δ)(v_k·∇U_T), with ∇U_T full batch; both are 1 on exact draws. θ₀: SWAG the SWA mean (independent of
   its draws); Multi-SWAG each member's SWA mean (and each member's own directions); chains (NUTS, SG-MCMC) the mean of the *other* half of the
   same chain (so θ₀ is fixed with respect to the half it is used on, up to the chain's autocorrelation).
   Ensembles and MAP have one point per chain: not applicable (their gradient is ~0: they read ~0).
3. **Gap table** (``--gap``): the setting of `bench_swag.augmented_table` (500 images, 64-32-10, batch 50,
   40 epochs, M = 3, no augmentation), per seed: the ensemble, its members alone, Multi-SWAG, its members
   alone, their SWA means alone, multi-SWA, and Multi-SWAG with its covariance scaled by 0.25 / 0.5 / 2
   (the spread's own dose-response).
4. **Run length** (``--length``): SGHMC and SGLD at 200 (default), 1000 and 3000 epochs against the reference:
   whether their understated spread is a mixing problem that closes with length.
5. **SWAG variants** (``--swag-only``): the reference and SWAG / Multi-SWAG alone, with step 4 of the auto
   rule as it is (the slice cut), off (``-nocap``) and read on the full draws (``-full``,
   `equipartition_directions(reading="full")`); ``--split`` splits the two readings on uncut fits
   (`split_table`). `notes/issue-13-fulldraw.md`.
6. **Starting points** (``--start``, `start_table`): the means' part of the gap. The points SWAG's SGD
   exploration reaches when collection begins, the same points taken to their basins' modes (full-batch L-BFGS),
   and Multi-SWAG collecting from a shorter deep ensemble (``init=ensemble, warmup=0``) in the same epochs.
   `notes/issue-13-multiswag-nll.md`.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings
from typing import Dict, List, Optional

import torch

import pyro_bdl as bdl
import pyro_bdl.infer.swag.rule as swag_rule
from pyro_bdl.examples.networks import mlp
from pyro_bdl.model.potential import Objective
from pyro_bdl.posterior.mixture import MixturePosterior

BATCH = 50
PRED_DRAWS = 200  # predictive draws per sampling method (SWAG draws on demand; chains are subsampled)


# -- problem -------------------------------------------------------------------------------------------
def make_model(hidden: int, T: float, seed: int) -> bdl.BayesianModel:
    torch.manual_seed(seed)
    return bdl.BayesianModel(mlp(64, [hidden], 10, "relu"), prior=bdl.priors.Gaussian(0.0, 1.0),
                             likelihood=bdl.likelihoods.Categorical(), temperature=T)


def mutual_information(draw_means: torch.Tensor) -> float:
    """Mean predictive MI (nats): (1/n) Σᵢ [H(mean_s p_s(xᵢ)) − mean_s H(p_s(xᵢ))] from ``(S, n, C)`` draws."""
    p = draw_means.clamp_min(1e-12)
    bma = p.mean(0)
    return float((-(bma * bma.log()).sum(-1) + (p * p.log()).sum(-1).mean(0)).mean())


def scores(post, ds, ref_pred=None, num_samples: Optional[int] = PRED_DRAWS) -> Dict[str, float]:
    pred = post.predict(ds.x_test, num_samples=num_samples, seed=0)
    out = {"nll": bdl.metrics.nll(pred, ds.y_test), "accuracy": bdl.metrics.accuracy(pred, ds.y_test),
           "mi": mutual_information(pred.draw_means)}
    if ref_pred is not None:
        out["agree"] = bdl.metrics.agreement(pred, ref_pred)
        out["tv"] = bdl.metrics.total_variation(pred, ref_pred)
    return out, pred


# -- configurational temperature ------------------------------------------------------------------------
class Identity:
    """Full-batch ∇U_T and the two equipartition readings on flat draws (see the module docstring, part 2)."""

    def __init__(self, model: bdl.BayesianModel, ds):
        self.objective = Objective(model, ds.x_train)
        self.x, self.y, self.n = ds.x_train, ds.y_train, len(ds.y_train)

    def flat(self, draws: Dict[str, torch.Tensor]) -> torch.Tensor:
        """``{site: (..., *shape)}`` → ``(..., P)`` flat unconstrained θ in the objective's layout."""
        return self.objective.to_unconstrained(draws)

    def grads(self, theta: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.objective.grad(t, self.x, self.y, self.n)[1] for t in theta])

    def read(self, theta: torch.Tensor, theta0: torch.Tensor, directions: Optional[torch.Tensor]) -> Dict[str, float]:
        """``theta`` (S, P) draws, ``theta0`` (S, P) or (P,) fixed offsets, ``directions`` (K, P) unit rows."""
        delta = theta - theta0
        g = self.grads(theta)
        out = {"tconf": float((delta * g).sum(-1).mean() / theta.shape[-1])}
        if directions is not None:
            c = ((delta @ directions.t()) * (g @ directions.t())).mean(0)  # (K,)
            out["cdir"] = float(c.median())
            out["cdir_max"] = float(c.max())
        return out

    def chains(self, samples: Dict[str, torch.Tensor], directions, max_per_chain: int = 150) -> Dict[str, float]:
        """Chains ``{site: (C, D, ...)}``: each half of each chain read against the other half's mean."""
        theta = self.flat(samples)  # (C, D, P)
        C, D = theta.shape[:2]
        step = max(1, D // max_per_chain)
        parts, offsets = [], []
        for c in range(C):
            a, b = theta[c, : D // 2], theta[c, D // 2:]
            for half, other in ((a, b), (b, a)):
                half = half[::step]
                parts.append(half)
                offsets.append(other.mean(0).expand_as(half))
        return self.read(torch.cat(parts), torch.cat(offsets), directions)


def swag_directions(post) -> torch.Tensor:
    """Unit eigendirections (K, P) of the fitted SWAG's low-rank covariance WWᵀ (W = the guide's cov factor)."""
    q = post.guide.get_posterior()
    u, s, _ = torch.linalg.svd(q.cov_factor, full_matrices=False)
    return u[:, s > 1e-6 * s.max()].t().contiguous()


def swag_reading(identity: Identity, post, directions, num: int = 200, seed: int = 0) -> Dict[str, float]:
    draws = identity.flat(post.sample(num, seed=seed))
    mean = post.guide.swa_mean.reshape(-1)
    assert torch.allclose(identity.flat(post.with_variant("swa").sample(1, seed=0))[0], mean, atol=1e-5), \
        "the guide's flat layout differs from the objective's"
    return identity.read(draws, mean, directions)


def multiswag_reading(identity: Identity, post, num: int = 100) -> Dict[str, float]:
    """Each member read against its own SWA mean and along its *own* SWAG directions (the members sit in
    different basins, so another fit's directions mean nothing to them); the mean of the members' readings."""
    reads = [swag_reading(identity, m, swag_directions(m), num) for m in post.members]
    return {k: sum(r[k] for r in reads) / len(reads) for k in reads[0]}


# -- the reference table --------------------------------------------------------------------------------
def no_cap(reading: Optional[str] = None):
    """Context: SWAG's per-direction equipartition cap switched off (``reading=None``) or read on the full draws
    (``"full"``, `equipartition_full_draws`). `swag/rule.py` imports `equipartition_directions` by name, so the
    name is replaced there (replacing the package's attribute would change nothing)."""
    class _Ctx:
        def __enter__(self):
            self.saved = swag_rule.equipartition_directions
            if reading is None:
                swag_rule.equipartition_directions = lambda guide, scale, grad: torch.ones(0)
            else:
                swag_rule.equipartition_directions = lambda guide, scale, grad: self.saved(guide, scale, grad,
                                                                                           reading=reading)

        def __exit__(self, *exc):
            swag_rule.equipartition_directions = self.saved
    return _Ctx()


def reference(ds, hidden: int, T: float, warmup: int, draws: int, seed: int = 0):
    model = make_model(hidden, T, seed)
    start = time.perf_counter()
    post = bdl.fit(model, ds.x_train, ds.y_train, method="nuts", backend="numpyro", num_chains=4, warmup=warmup,
                   num_samples=draws, seed=seed, progress=False)
    seconds = time.perf_counter() - start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tab = bdl.diagnostics.summary(post, ds.x_test[:100])
    conv = {"rhat_max": float(tab["r_hat"].max()), "rhat_gt_101": float((tab["r_hat"] > 1.01).mean()),
            "ess_min": float(tab["ess_bulk"].min()), "fit_s": seconds}
    # agreement / TV between the halves of the chains: the reference's own Monte Carlo floor
    half = {k: v[:2] for k, v in post.samples.items()}, {k: v[2:] for k, v in post.samples.items()}
    preds = [bdl.SamplesPosterior(model, h, "nuts").predict(ds.x_test, seed=0) for h in half]
    conv["self_agree"] = bdl.metrics.agreement(*preds)
    conv["self_tv"] = bdl.metrics.total_variation(*preds)
    return model, post, conv


def method_fits(ds, hidden: int, T: float, seed: int, quick: bool, swag_only: bool = False):
    """(label, posterior, seconds) at defaults (batch 50; SG-MCMC 2 chains) — ``quick`` shortens epochs;
    ``swag_only`` fits the SWAG variants alone (the slice cut, no cut, the full-draw cut)."""
    short = {"epochs": 30} if quick else {}
    sg_short = {"epochs": 60} if quick else {}
    specs = [("swag", "swag", {}), ("swag-nocap", "swag", {}), ("swag-full", "swag", {}), ("multiswag", "multiswag", {}),
             ("multiswag-nocap", "multiswag", {}), ("multiswag-full", "multiswag", {})]
    if not swag_only:
        specs += [("sghmc", "sghmc", {"num_chains": 2}), ("sgld", "sgld", {"num_chains": 2}),
                  ("ensemble", "ensemble", {}), ("map", "map", {})]
    for label, method, extra in specs:
        model = make_model(hidden, T, seed)
        opts = dict(extra)
        if method in ("swag", "multiswag"):
            opts.update(short)
        if method in ("sghmc", "sgld"):
            opts.update(sg_short)
        if quick and method in ("multiswag", "ensemble"):
            opts["num_chains"] = 3
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if label.endswith(("-nocap", "-full")):
                with no_cap("full" if label.endswith("-full") else None):
                    post = bdl.fit(model, ds.x_train, ds.y_train, method=method, batch_size=BATCH, seed=seed,
                                   progress=False, **opts)
            else:
                post = bdl.fit(model, ds.x_train, ds.y_train, method=method, batch_size=BATCH, seed=seed,
                               progress=False, **opts)
        yield label, post, time.perf_counter() - start


def reference_table(train_size: int, hidden: int, T: float, seeds, quick: bool = False,
                    swag_only: bool = False) -> Dict[str, list]:
    ds = bdl.data.load_dataset("digits", seed=0, train_size=train_size)
    warmup, draws = (200, 200) if quick else (400, 400)
    ref_model, ref, conv = reference(ds, hidden, T, warmup, draws)
    ref_scores, ref_pred = scores(ref, ds, num_samples=None)
    identity = Identity(ref_model, ds)
    rows = []
    for seed in seeds:
        fitted = {}
        for label, post, seconds in method_fits(ds, hidden, T, seed, quick, swag_only):
            fitted[label] = post
            r, _ = scores(post, ds, ref_pred)
            rows.append({"seed": str(seed), "method": label, **r, "fit_s": seconds})
        directions = swag_directions(fitted["swag"])
        rows.append({"seed": str(seed), "method": "nuts (reference)", **ref_scores, "agree": conv["self_agree"],
                     "tv": conv["self_tv"], "fit_s": conv["fit_s"], **identity.chains(ref.samples, directions)})
        for row in rows:
            if row["seed"] != str(seed) or "tconf" in row:
                continue
            post = fitted.get(row["method"])
            if row["method"] in ("swag", "swag-nocap", "swag-full"):
                row.update(swag_reading(identity, post, directions))
            elif row["method"] in ("multiswag", "multiswag-nocap", "multiswag-full"):
                row.update(multiswag_reading(identity, post))
            elif row["method"] in ("sghmc", "sgld"):
                row.update(identity.chains(post.samples, directions))
                stats = post.info.get("configurational_temperature")
                if stats is not None:
                    row["lib_tconf/T"] = float(torch.as_tensor(stats)[..., 0].mean()) / T
        if swag_only:
            continue
        # SWAG's covariance scaled: does any global width of SWAG's Gaussian match the reference?
        for label in ("swag", "swag-nocap"):
            for f in (4.0, 16.0):
                post = fitted[label]
                r, _ = scores(post.with_variant(scale=post.scale * f), ds, ref_pred)
                rows.append({"seed": str(seed), "method": f"{label} x{f:g}", **r, "fit_s": float("nan")})
        # the gap split, on this seed's fits: members' means vs spread
        multi, ens = fitted["multiswag"], fitted["ensemble"]
        multi_swa = MixturePosterior([m.with_variant("swa") for m in multi.members], "multiswa")
        r, _ = scores(multi_swa, ds, ref_pred, num_samples=len(multi.members))
        rows.append({"seed": str(seed), "method": "multi-SWA (means)", **r, "fit_s": float("nan")})
        rows.append({"seed": str(seed), "method": "SWAG member (mean)",
                     **_mean([scores(m, ds, ref_pred)[0] for m in multi.members]), "fit_s": float("nan")})
        rows.append({"seed": str(seed), "method": "SWA mean member (mean)",
                     **_mean([scores(m.with_variant("swa"), ds, ref_pred, 1)[0] for m in multi.members]),
                     "fit_s": float("nan")})
        rows.append({"seed": str(seed), "method": "ensemble member (mean)",
                     **_mean([scores(p, ds, ref_pred)[0] for p in _members(ens)]), "fit_s": float("nan")})
    return {"convergence": conv, "rows": rows}


def _members(post) -> List[bdl.SamplesPosterior]:
    """The ensemble's members, one chain each, as posteriors of their own."""
    C = post.num_chains
    return [bdl.SamplesPosterior(post.model, {k: v[c:c + 1] for k, v in post.samples.items()}, "map")
            for c in range(C)]


def _mean(results: List[Dict[str, float]]) -> Dict[str, float]:
    return {k: sum(r[k] for r in results) / len(results) for k in results[0]}


# -- the full-draw reading split -----------------------------------------------------------------------
def split_table(train_size: int, hidden: int, seeds, num_pairs: int = 256) -> list:
    """On uncut SWAG fits (T = 1, defaults, batch 50), per low-rank direction v_j: the slice reading of
    `equipartition_directions` and the full-draw reading of `equipartition_full_draws`, split as
    C_j = C^L_j + C^D_j (the shares of δ's low-rank and diagonal parts; by Stein's lemma
    C^L_j = λ_j·v_jᵀE_q[∇²U]v_j, the slice's λ_j·v_jᵀ∇²U(θ̄)v_j with the curvature averaged over q instead of
    read at θ̄), with ``num_pairs`` antithetic pairs; medians over the directions."""
    ds = bdl.data.load_dataset("digits", seed=0, train_size=train_size)
    rows = []
    for seed in seeds:
        captured = {}

        def spy(guide, scale, grad):  # the rule's own inputs: guide, scale (guide's × Lyapunov c), fixed-batch ∇U
            captured.update(guide=guide, scale=scale, grad=grad)
            return torch.ones(0)

        saved, swag_rule.equipartition_directions = swag_rule.equipartition_directions, spy
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                bdl.fit(make_model(hidden, 1.0, seed), ds.x_train, ds.y_train, method="swag", batch_size=BATCH,
                        seed=seed, progress=False)
        finally:
            swag_rule.equipartition_directions = saved
        g, scale, rule_grad = captured["guide"], captured["scale"], captured["grad"]

        def grad(point, rule_grad=rule_grad):  # the rule runs under no_grad and turns gradients back on itself
            with torch.enable_grad():
                return rule_grad(point)

        with torch.no_grad():
            k = min(g.num_snapshots, g.rank)
            _, sv, vt = torch.linalg.svd(g.swa_deviations[:k], full_matrices=False)
            lam = scale * sv ** 2 / (k - 1)
            sd = (scale * g.variance).sqrt()
            gen = torch.Generator().manual_seed(1)
            diag = torch.randn((num_pairs, sd.numel()), generator=gen).to(sd) * sd
            low = (torch.randn((num_pairs, lam.numel()), generator=gen).to(sd) * lam.sqrt()) @ vt
            x_low, x_diag = torch.zeros(num_pairs, lam.numel()), torch.zeros(num_pairs, lam.numel())
            for i in range(num_pairs):
                d = diag[i] + low[i]
                dg = 0.5 * (grad(g.swa_mean + d) - grad(g.swa_mean - d))
                x_low[i], x_diag[i] = (vt @ low[i]) * (vt @ dg), (vt @ diag[i]) * (vt @ dg)
            full = (x_low + x_diag).mean(0)
            node, sl = math.sqrt(3.0), []
            for j in range(lam.numel()):  # the slice reading, as equipartition_directions computes it
                step = lam[j].sqrt() * node * vt[j]
                h = 0.5 * float(vt[j] @ (grad(g.swa_mean + step) - grad(g.swa_mean - step)))
                sl.append(float(lam[j].sqrt()) * h / node)
            sl = torch.tensor(sl)
            rel_se = (x_low + x_diag).std(0) / math.sqrt(num_pairs) / full.abs()
        rows.append({"seed": str(seed), "k": str(k), "slice": float(sl.median()), "full": float(full.median()),
                     "low-rank share": float(x_low.mean(0).median()), "diagonal share": float(x_diag.mean(0).median()),
                     "full/slice": float((full / sl).median()), "share full>slice": float((full > sl).float().mean()),
                     "rel s.e. (S=64)": float(rel_se.median()) * math.sqrt(num_pairs / 64)})
    return rows


# -- SG-MCMC run length ---------------------------------------------------------------------------------
def length_table(train_size: int, hidden: int, T: float, epochs=(200, 1000, 3000), seed: int = 0,
                 quick: bool = False) -> Dict[str, list]:
    """SGHMC and SGLD (defaults but ``epochs``, 2 chains) against the reference as the runs get longer: does
    the understated spread (configurational temperature < 1) close with run length, i.e. is it mixing?"""
    ds = bdl.data.load_dataset("digits", seed=0, train_size=train_size)
    ref_model, ref, conv = reference(ds, hidden, T, *((200, 200) if quick else (400, 400)))
    ref_scores, ref_pred = scores(ref, ds, num_samples=None)
    identity = Identity(ref_model, ds)
    rows = [{"method": "nuts (reference)", "epochs": "", **ref_scores, "tconf": identity.chains(ref.samples, None)["tconf"],
             "fit_s": conv["fit_s"]}]
    for method in ("sghmc", "sgld"):
        for n in epochs:
            model = make_model(hidden, T, seed)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                post = bdl.fit(model, ds.x_train, ds.y_train, method=method, batch_size=BATCH, seed=seed,
                               progress=False, num_chains=2, epochs=n)
            seconds = time.perf_counter() - start
            r, _ = scores(post, ds, ref_pred)
            stats = torch.as_tensor(post.info["configurational_temperature"])[..., 0]
            rows.append({"method": method, "epochs": str(n), **r, **identity.chains(post.samples, None),
                         "lib_tconf/T": float(stats.mean()) / T, "fit_s": seconds})
    return {"convergence": conv, "rows": rows}


# -- the gap table --------------------------------------------------------------------------------------
def gap_table(seeds, train_size: int = 500, hidden: int = 32, epochs: int = 40, num_models: int = 3) -> list:
    """Multi-SWAG vs deep ensemble without augmentation (`bench_swag.augmented_table`'s setting, T = 1),
    decomposed: members' means (SWA mean of SGD vs Adam MAP) and spread (covariance scale ×0…×2)."""
    ds = bdl.data.load_dataset("digits", seed=0, train_size=train_size)
    rows = []
    for seed in seeds:
        fits = {}
        for method in ("ensemble", "multiswag"):
            model = make_model(hidden, 1.0, seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fits[method] = bdl.fit(model, ds.x_train, ds.y_train, method=method, batch_size=BATCH,
                                       num_chains=num_models, epochs=epochs, seed=seed, progress=False)
        ens, multi = fits["ensemble"], fits["multiswag"]
        nll = lambda post, n=90: scores(post, ds, num_samples=n)[0]
        row = {"seed": str(seed), "ensemble": nll(ens)["nll"],
               "ens_member": _mean([nll(p, 1) for p in _members(ens)])["nll"],
               "multiswag": nll(multi)["nll"],
               "swag_member": _mean([nll(m) for m in multi.members])["nll"],
               "swa_member": _mean([nll(m.with_variant("swa"), 1) for m in multi.members])["nll"],
               "multi_swa": nll(MixturePosterior([m.with_variant("swa") for m in multi.members], "multiswa"),
                                num_models)["nll"]}
        for f in (0.25, 0.5, 2.0):
            scaled = MixturePosterior([m.with_variant(scale=m.scale * f) for m in multi.members], "multiswag")
            row[f"multiswag_x{f:g}"] = nll(scaled)["nll"]
        row["scale_c"] = _mean([{"c": float(m.info.get("covariance_scale", float("nan")))} for m in multi.members])["c"]
        rows.append(row)
    return rows


# -- the starting-point split -----------------------------------------------------------------------------
def polish(objective: Objective, ds, theta: torch.Tensor, iterations: int = 300) -> torch.Tensor:
    """θ taken to its basin's mode: full-batch L-BFGS (strong Wolfe) on U/N from ``theta`` ``(P,)``."""
    th = theta.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([th], lr=1, max_iter=iterations, history_size=50, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)
    n = len(ds.y_train)

    def closure():
        opt.zero_grad()
        loss = objective.potential(th, ds.x_train, ds.y_train, n) / n
        loss.backward()
        return loss
    opt.step(closure)
    return th.detach()


def start_table(train_size: int, hidden: int, T: float, seeds, epochs: int = 40, warmup: int = 30,
                num_models: int = 3, with_reference: bool = True) -> Dict[str, list]:
    """Where the Multi-SWAG / ensemble gap's means' part comes from (`notes/issue-13-multiswag-nll.md`): per seed,
    the ensemble and Multi-SWAG at ``epochs`` (batch 50), the points SWAG's SGD exploration reaches at ``warmup``
    (the iterates its collection starts from), those points taken to their basins' modes (full-batch L-BFGS, the
    headroom), an ensemble of ``warmup`` epochs (Adam, `fit(method="ensemble")`) and Multi-SWAG collecting for
    ``epochs − warmup`` epochs from it (``init=ensemble, warmup=0``: the same epochs in all). Mixtures of the M
    points are equal-weight; agreement / TV against NUTS when ``with_reference``."""
    ds = bdl.data.load_dataset("digits", seed=0, train_size=train_size)
    conv, ref_pred, rows = None, None, []
    if with_reference:
        ref_model, ref, conv = reference(ds, hidden, T, 400, 400)
        ref_scores, ref_pred = scores(ref, ds, num_samples=None)
        rows.append({"seed": "", "method": "nuts (reference)", **ref_scores})
    starts: Dict[int, torch.Tensor] = {}
    saved = swag_rule.SWAGRule.begin_auto

    def record(rule, k, generator):  # the exploration's end point, just before the auto collection begins
        starts[k] = rule.state["theta"][k].detach().clone()
        return saved(rule, k, generator)

    def points(model, thetas, objective):
        values = [objective.to_constrained(t) for t in thetas]
        return bdl.SamplesPosterior(model, {k: torch.stack([v[k] for v in values])[:, None] for k in values[0]},
                                    "map")

    for seed in seeds:
        model = make_model(hidden, T, seed)
        objective = Objective(model, ds.x_train)
        common = dict(batch_size=BATCH, num_chains=num_models, seed=seed, progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ens = bdl.fit(model, ds.x_train, ds.y_train, method="ensemble", epochs=epochs, **common)
            swag_rule.SWAGRule.begin_auto = record
            try:
                multi = bdl.fit(model, ds.x_train, ds.y_train, method="multiswag", epochs=epochs, warmup=warmup,
                                **common)
            finally:
                swag_rule.SWAGRule.begin_auto = saved
            pre = [starts[k] for k in range(num_models)]
            short = bdl.fit(model, ds.x_train, ds.y_train, method="ensemble", epochs=warmup, **common)
            from_map = bdl.fit(model, ds.x_train, ds.y_train, method="multiswag", epochs=epochs - warmup, warmup=0,
                               init=short, **common)
        fits = [(f"ensemble ({epochs} ep)", ens, None), (f"multiswag ({epochs} ep, default)", multi, None),
                ("  its SWA means", MixturePosterior([m.with_variant("swa") for m in multi.members], "swa"),
                 num_models),
                (f"  its SGD points at {warmup} ep", points(model, pre, objective), num_models),
                ("  those points' basin modes", points(model, [polish(objective, ds, t) for t in pre], objective),
                 num_models),
                (f"ensemble ({warmup} ep)", short, None),
                (f"multiswag from it (+{epochs - warmup} ep)", from_map, None),
                ("  its SWA means", MixturePosterior([m.with_variant("swa") for m in from_map.members], "swa"),
                 num_models)]
        for label, post, num in fits:
            r, _ = scores(post, ds, ref_pred, num_samples=PRED_DRAWS if num is None else num)
            rows.append({"seed": str(seed), "method": label, **r})
    return {"convergence": conv, "rows": rows}


# -- printing -------------------------------------------------------------------------------------------
def _print(rows, columns):
    cols = [c for c in columns if any(c in r for r in rows)]
    width = {c: max([10, len(c)] + [len(r[c]) for r in rows if isinstance(r.get(c), str)]) for c in cols}
    print(" | ".join(f"{c:>{width[c]}s}" for c in cols))
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:>{width[c]}.4g}" if isinstance(v, float) else f"{str(v):>{width[c]}s}")
        print(" | ".join(cells))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 images, 64-16-10, T = 1, seed 0, short runs")
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--T", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--length", action="store_true", help="SG-MCMC at growing run length vs the reference")
    parser.add_argument("--gap", action="store_true", help="the Multi-SWAG vs ensemble gap table only")
    parser.add_argument("--split", action="store_true",
                        help="the slice vs full-draw equipartition readings on uncut SWAG fits (T = 1)")
    parser.add_argument("--start", action="store_true",
                        help="the means' part of the Multi-SWAG / ensemble gap: SGD's exploration point, its basin's "
                             "mode, Multi-SWAG from a deep ensemble (--size/--hidden/--T/--seeds; NUTS unless "
                             "--no-reference)")
    parser.add_argument("--no-reference", action="store_true", help="--start without the NUTS reference")
    parser.add_argument("--swag-only", action="store_true",
                        help="the SWAG / Multi-SWAG variants only (slice cut, no cut, full-draw cut) against NUTS")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(1)
    if args.length:
        print(f"SG-MCMC run length against full-batch NUTS (digits {args.size}, MLP 64-{args.hidden}-10, T = {args.T:g}, "
              f"batch {BATCH}, 2 chains, seed {args.seeds[0]})")
        out = length_table(args.size, args.hidden, args.T, seed=args.seeds[0],
                           epochs=(60, 200) if args.quick else (200, 1000, 3000), quick=args.quick)
        _print(out["rows"], ["method", "epochs", "nll", "accuracy", "mi", "agree", "tv", "tconf", "lib_tconf/T",
                             "fit_s"])
        return out
    if args.split:
        print(f"Equipartition readings along SWAG's directions, uncut fits (digits {args.size}, 64-{args.hidden}-10, "
              f"T = 1; medians over directions)")
        rows = split_table(args.size, args.hidden, args.seeds)
        _print(rows, list(rows[0]))
        return {"split": rows}
    if args.start:
        print(f"Starting points of Multi-SWAG's collection (digits {args.size}, 64-{args.hidden}-10, T = {args.T:g}, "
              f"batch {BATCH}, 40 epochs, collection from 30, M = 3)")
        out = start_table(args.size, args.hidden, args.T, args.seeds, with_reference=not args.no_reference)
        _print(out["rows"], ["seed", "method", "nll", "accuracy", "mi", "agree", "tv"])
        return out
    if args.gap:
        print("Multi-SWAG vs deep ensemble, no augmentation (digits 500, 64-32-10, batch 50, 40 epochs, M = 3, "
              "T = 1): test NLL")
        rows = gap_table(args.seeds)
        _print(rows, list(rows[0]))
        return {"gap": rows}
    size, hidden, T, seeds = (200, 16, 1.0, [0]) if args.quick else (args.size, args.hidden, args.T, args.seeds)
    print(f"Against full-batch NUTS (digits {size}, MLP 64-{hidden}-10 ReLU, N(0, 1), T = {T:g}, batch {BATCH}, "
          f"defaults{'; --quick: short runs' if args.quick else ''})")
    out = reference_table(size, hidden, T, seeds, quick=args.quick, swag_only=args.swag_only)
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump(out, f)
    c = out["convergence"]
    print("reference: max R-hat {rhat_max:.4f}, share > 1.01 {rhat_gt_101:.3f}, min bulk ESS {ess_min:.0f}, "
          "halves agree {self_agree:.3f} / TV {self_tv:.4f}, {fit_s:.0f} s".format(**c))
    _print(out["rows"], ["seed", "method", "nll", "accuracy", "mi", "agree", "tv", "tconf", "cdir", "cdir_max",
                         "lib_tconf/T", "fit_s"])
    return out


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
