"""One study cell = one fit + one evaluation, stored as a JSON file the moment it finishes.

A cell is described by a *spec*, a plain JSON-able dict (method, temperature, seed, augmentation,
data, network, prior and fit settings), so it can be sent to another process or a Ray worker and
hashed. With a ``[reference]`` section the grid also holds *reference cells* (``"role":
"reference"``, one per temperature and, when the reference method uses augmentation, per
augmentation setting): a cell like any other, saved and resumed the same way, whose record adds
the reference's convergence figures ([`reference_diagnostics`][pyro_bdl.studies.reference_diagnostics]). Every classification cell
stores its test-set predictive probabilities, from which the table computes agreement and total
variation against the reference (`pyro_bdl.studies.report`). Its file ``cells/<key>.json`` is named by the readable grid coordinates plus a hash of
the spec: a rerun finds the cells it already has and skips them, and a changed setting (more
epochs, another prior) gives new cells instead of silently reusing stale ones.
"""
from __future__ import annotations

import datetime
import glob
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import pyro
import torch

from .._util.random import seeded
from .._version import __version__
from .._util import io
from ..model import likelihoods
from ..evaluate import metrics
from .. import priors
from ..examples import datasets
from ..infer import fit, method_options
from ..model.bayesian_model import BayesianModel
from ..posterior.samples import SamplesPosterior
from ..evaluate.diagnostics.convergence import prediction_draws
from ..evaluate.diagnostics.convergence import summary as diagnostics_summary
from .config import AUGMENTATIONS, StudyConfig, build_network

CELL_FORMAT = "pyro_bdl.study_cell"
CELL_VERSION = 1
#: spec entries that do not change a cell's numbers' meaning and are left out of its hash
_UNHASHED = ("study", "threads", "compare")
#: digits kept of the stored test-set probabilities (agreement and TV need no more)
PROB_DIGITS = 6


def _shared(config: StudyConfig) -> Dict[str, Any]:
    """Spec entries every cell of the study shares: data, model and (if any) evaluation settings.
    Keys of the optional sections are added only when set, so the cells of a study without them
    keep their hashes (and files) from before those sections existed."""
    d, m = config.data, config.model
    data = {"name": d.name, "train_size": d.train_size, "test_fraction": d.test_fraction,
            "split_seed": d.split_seed, "max_shift": d.max_shift}
    if d.pca is not None:
        data["pca"] = d.pca
    model = {"network": m.network, "hidden": list(m.hidden), "activation": m.activation,
             "network_options": dict(m.network_options), "prior": m.prior, "prior_scale": m.prior_scale,
             "tempering": m.tempering, "noise_scale": m.noise_scale}
    shared: Dict[str, Any] = {"study": config.name, "data": data, "model": model, "threads": config.cpus_per_cell}
    if config.evaluation is not None:
        e = config.evaluation
        shared["evaluation"] = {"corruptions": list(e.corruptions), "severities": list(e.severities), "seed": e.seed}
    return shared


def cell_specs(config: StudyConfig) -> List[Dict[str, Any]]:
    """The specs of every cell of the grid, in a fixed order: the reference cells first
    ([`reference_specs`][pyro_bdl.studies.reference_specs]), then (augment, method, temperature, seed)."""
    shared, inf = _shared(config), config.inference
    specs = reference_specs(config)
    for augment in config.data.augment:
        for method in inf.methods:
            for temperature in config.temperatures:
                for seed in config.seeds:
                    specs.append({**shared, "method": method, "temperature": temperature, "seed": seed,
                                  "augment": augment, "fit": inf.settings(method),
                                  "predict_samples": inf.predict_samples})
    return specs


def reference_specs(config: StudyConfig) -> List[Dict[str, Any]]:
    """One reference cell per temperature — and per augmentation setting when the reference
    method uses augmented minibatches; a full-batch sampler (nuts, hmc) never sees augmentation,
    so its one un-augmented run per T serves every setting (``"compare"`` lists them)."""
    ref = config.reference
    if ref is None:
        return []
    shared = _shared(config)
    settings = [[a] for a in config.data.augment] if ref.uses_augmentation else [list(config.data.augment)]
    specs = []
    for compare in settings:
        for temperature in config.temperatures:
            specs.append({**shared, "role": "reference", "method": ref.method, "temperature": temperature,
                          "seed": ref.seed, "augment": compare[0] if ref.uses_augmentation else False,
                          "compare": compare, "fit": dict(ref.options), "predict_samples": ref.predict_samples,
                          "rhat_threshold": ref.rhat_threshold, "diagnostic_inputs": ref.diagnostic_inputs})
    return specs


def is_reference(spec: Dict[str, Any]) -> bool:
    """Whether a spec (or a record's spec) is a reference cell."""
    return spec.get("role") == "reference"


def cell_key(spec: Dict[str, Any]) -> str:
    """``<method>_T<T>_s<seed>_<aug|noaug>_<hash>``: readable coordinates plus a hash of the whole
    spec (``reference-<method>_...`` for a reference cell)."""
    hashed = {k: v for k, v in spec.items() if k not in _UNHASHED}
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return (f"{'reference-' if is_reference(spec) else ''}{spec['method']}_T{spec['temperature']:g}_s{spec['seed']}_"
            f"{'aug' if spec['augment'] else 'noaug'}_{digest}")


def cell_path(out_dir: str, spec: Dict[str, Any]) -> str:
    return os.path.join(out_dir, "cells", cell_key(spec) + ".json")


def cell_fit_options(spec: Dict[str, Any]) -> Dict[str, Any]:
    """The cell's ``fit`` options, with a ``checkpoint`` path made the cell's own
    (``run.ckpt`` -> ``run.<cell key>.ckpt``), so no cell ever resumes another cell's run."""
    options = dict(spec["fit"])
    if options.get("checkpoint") is not None:
        root, ext = os.path.splitext(os.fspath(options["checkpoint"]))
        options["checkpoint"] = f"{root}.{cell_key(spec)}{ext}"
    return options


def _prior(name: str, scale: float):
    return {"gaussian": lambda: priors.Gaussian(0.0, scale), "fan_in": lambda: priors.FanInGaussian(scale),
            "laplace": lambda: priors.Laplace(0.0, scale), "student_t": lambda: priors.StudentT(3.0, 0.0, scale)}[name]()


def augmentation(spec: Dict[str, Any]):
    """The cell's ``augment(x, generator)`` hook, or None: random shifts in pixel space with the
    training split's standardisation (`shift_augmentation`)."""
    if not spec["augment"]:
        return None
    d = spec["data"]
    ds = datasets.load_dataset(d["name"], test_fraction=d["test_fraction"], seed=d["split_seed"],
                               train_size=d["train_size"])
    return ds.shift_augmentation(max_shift=d["max_shift"], flip=AUGMENTATIONS[d["name"]]["flip"])


def diagnostics(post) -> Dict[str, float]:
    """Scalar diagnostics a posterior carries: sampler statistics (divergences summed, the rest
    averaged over draws), the final training loss, and numeric entries of ``post.info``."""
    out: Dict[str, float] = {}
    try:  # info entries that echo the method's own options are settings, not diagnostics
        settings = set(method_options(post.method))
    except ValueError:
        settings = set()
    if isinstance(post, SamplesPosterior):
        out["num_chains"] = post.num_chains
        out["num_draws"] = post.num_draws
        for name, value in post.sample_stats.items():
            value = torch.as_tensor(value, dtype=torch.float64)
            out[("num_" if name == "diverging" else "mean_") + name] = float(
                value.sum() if name == "diverging" else value.mean())
    for name, value in post.info.items():
        if name in ("seed", "temperature") or name in settings:
            continue
        if name == "losses":
            # a list or a tensor, (steps,) or (members, steps) for ensembles: the last 5 % of steps
            losses = np.asarray(value.detach().cpu() if torch.is_tensor(value) else value, dtype=float)
            if losses.size:
                out["final_loss"] = float(losses[..., -max(1, losses.shape[-1] // 20):].mean())
        elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def run_cell(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Fit and evaluate one cell; return its record (the content of its JSON file).

    Runs with ``spec["threads"]`` torch threads and a forked torch RNG, so a cell's numbers
    depend on its spec only, not on the executor or on which cells ran before it in the process.
    """
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(int(spec.get("threads") or threads))
    try:
        with seeded(spec["seed"]):
            record = _run(spec)
    finally:
        torch.set_num_threads(threads)
    record["wall_seconds"] = time.perf_counter() - start
    return record


@dataclass
class CellData:
    """A cell's data: the (projected) train/test split, the standardised test inputs before any
    projection, and the projection (None without ``pca``), so corruptions act on the original
    features (pixels) and are then projected like the clean inputs."""

    dataset: "datasets.Dataset"
    raw_x_test: torch.Tensor
    project: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
    image_shape: Optional[tuple] = None

    def corrupted_test_inputs(self, kind: str, severity: int, seed: int) -> torch.Tensor:
        """The test inputs under corruption ``kind`` at ``severity`` (`pyro_bdl.data.corrupt`)."""
        x = datasets.corrupt(self.raw_x_test, kind, severity, seed=seed, image_shape=self.image_shape)
        return x if self.project is None else self.project(x)


def cell_data(data: Dict[str, Any]) -> CellData:
    """Load the data of a spec's ``data`` entry (the split is fixed by ``split_seed``)."""
    ds = datasets.load_dataset(data["name"], test_fraction=data["test_fraction"], seed=data["split_seed"],
                               train_size=data["train_size"])
    raw = CellData(ds, ds.x_test, None, ds.image_shape)
    if data.get("pca") is None:
        return raw
    projected, project = datasets.pca_features(ds, data["pca"])
    return CellData(projected, ds.x_test, project, ds.image_shape)


def _shift_metrics(post, data: CellData, evaluation: Dict[str, Any], num_samples: Optional[int],
                   seed: int) -> Dict[str, float]:
    """``accuracy_{kind}_{severity}`` and ``nll_{kind}_{severity}`` (regression: ``rmse_…``, ``nll_…``)
    on corrupted copies of the test set."""
    out: Dict[str, float] = {}
    y = data.dataset.y_test
    for kind in evaluation["corruptions"]:
        for severity in evaluation["severities"]:
            x = data.corrupted_test_inputs(kind, severity, evaluation["seed"])
            pred = post.predict(x, num_samples=num_samples, seed=seed)
            targets = post.model.likelihood.check_targets(torch.as_tensor(y), pred.outputs.shape[-1])
            first = ("accuracy", metrics.accuracy) if pred.kind == "classification" else ("rmse", metrics.rmse)
            out[f"{first[0]}_{kind}_{severity}"] = first[1](pred, targets)
            out[f"nll_{kind}_{severity}"] = metrics.nll(pred, targets)
    return out


def reference_diagnostics(post, x: torch.Tensor, num_samples: Optional[int], seed: int,
                          rhat_threshold: float, diagnostic_inputs: int = 100) -> Dict[str, Any]:
    """Convergence figures of a reference posterior at the test inputs ``x``, in function space
    (class probabilities E[p(y | x, w)], which permutations of hidden units leave unchanged):

    * ``r_hat_max`` — the largest rank-normalised split R-hat (Vehtari et al. 2021) over the
      first ``diagnostic_inputs`` inputs and every class (ArviZ takes seconds per thousand
      quantities); ``r_hat_fraction_above`` — the share of those above ``rhat_threshold``;
    * ``ess_bulk_min`` — the smallest bulk ESS; ``num_divergences`` — divergent transitions;
    * ``self_agreement`` / ``self_total_variation`` — agreement and TV between the model averages
      of the two halves of the chains (of the draws, with one chain): near 1 and 0 for a
      reference that has converged, since both halves then estimate the same predictive;
    * ``converged`` — ``r_hat_max <= rhat_threshold``;
    * ``seconds`` / ``cpu_seconds`` — the wall and CPU time these diagnostics took.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    table = diagnostics_summary(post, x[:diagnostic_inputs], num_samples=num_samples, seed=seed,
                                rhat_threshold=rhat_threshold, warn=False)
    pred = table[table["kind"] == "prediction"]
    r_hat = pred["r_hat"].to_numpy(dtype=float)
    ess = pred["ess_bulk"].to_numpy(dtype=float)
    f = prediction_draws(post, x, num_samples=num_samples, seed=seed)  # (chains, draws, B, C)
    chains, draws = f.shape[:2]
    if chains >= 2:
        half_a, half_b = f[: chains // 2], f[chains // 2:]
    else:
        half_a, half_b = f[:, : draws // 2], f[:, draws // 2:]
    pa = torch.as_tensor(half_a.reshape(-1, *f.shape[2:]).mean(0))
    pb = torch.as_tensor(half_b.reshape(-1, *f.shape[2:]).mean(0))
    finite = r_hat[np.isfinite(r_hat)]
    stats = getattr(post, "sample_stats", {})
    out = {"r_hat_max": float(finite.max()) if finite.size else float("nan"),
           "r_hat_fraction_above": float((finite > rhat_threshold).mean()) if finite.size else float("nan"),
           "ess_bulk_min": float(np.nanmin(ess)) if np.isfinite(ess).any() else float("nan"),
           "num_divergences": int(torch.as_tensor(stats["diverging"]).sum()) if "diverging" in stats else 0,
           "self_agreement": metrics.agreement(pa, pb), "self_total_variation": metrics.total_variation(pa, pb),
           "rhat_threshold": rhat_threshold, "diagnostic_inputs": int(min(diagnostic_inputs, len(x))),
           "num_chains": int(chains), "num_draws": int(draws),
           "seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
    out["converged"] = bool(np.isfinite(out["r_hat_max"]) and out["r_hat_max"] <= rhat_threshold)
    return out


def _run(spec: Dict[str, Any]) -> Dict[str, Any]:

    m = spec["model"]
    data = cell_data(spec["data"])
    ds = data.dataset
    net = build_network(m["network"], tuple(m["hidden"]), m["activation"], m["network_options"],
                        ds.num_features, ds.output_dim)
    lik = likelihoods.Categorical() if ds.task == "classification" else likelihoods.Gaussian(scale=m["noise_scale"])
    model = BayesianModel(net, prior=_prior(m["prior"], m["prior_scale"]), likelihood=lik,
                          temperature=spec["temperature"], tempering=m["tempering"])
    t0 = time.perf_counter()
    post = fit(model, ds.x_train, ds.y_train, method=spec["method"], seed=spec["seed"], progress=False,
               augment=augmentation(spec), **cell_fit_options(spec))
    t1 = time.perf_counter()
    num_samples = spec["predict_samples"]
    scores = metrics.evaluate(post, ds.x_test, ds.y_test, num_samples=num_samples, seed=spec["seed"])
    if "evaluation" in spec:
        scores.update(_shift_metrics(post, data, spec["evaluation"], num_samples, spec["seed"]))
    record = {"format": CELL_FORMAT, "version": CELL_VERSION, "key": cell_key(spec), "spec": spec,
              "metrics": scores, "diagnostics": diagnostics(post)}
    if ds.task == "classification":
        probs = post.predict(ds.x_test, num_samples=num_samples, seed=spec["seed"]).probs
        record["test_probs"] = np.round(probs.double().numpy(), PROB_DIGITS).tolist()
    if is_reference(spec):
        record["reference"] = reference_diagnostics(post, ds.x_test, num_samples, spec["seed"],
                                                    spec["rhat_threshold"], spec["diagnostic_inputs"])
    t2 = time.perf_counter()
    record.update({"fit_seconds": t1 - t0, "eval_seconds": t2 - t1, "n_train": len(ds.x_train),
                   "n_test": len(ds.x_test), "finished_at": datetime.datetime.now().isoformat(timespec="seconds"),
                   "host": socket.gethostname(),
                   "versions": {"pyro_bdl": __version__, "torch": torch.__version__, "pyro": pyro.__version__}})
    return record


def write_cell(out_dir: str, record: Dict[str, Any]) -> str:
    """Write a finished cell's record to ``cells/<key>.json`` atomically (temp file + rename)."""
    path = os.path.join(out_dir, "cells", record["key"] + ".json")

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())

    io.atomic_write(path, write, suffix=".json")
    return path


def read_cell(path: str) -> Optional[Dict[str, Any]]:
    """A cell record, or None when the file is missing or is not a cell file."""
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != CELL_FORMAT:
        return None
    return record


def read_cells(out_dir: str, specs: Optional[List[Dict[str, Any]]] = None) -> List[Dict[str, Any]]:
    """The finished cells in ``out_dir``: those of ``specs`` (a study's grid), or every cell file."""
    if specs is not None:
        records = [read_cell(cell_path(out_dir, s)) for s in specs]
    else:
        records = [read_cell(p) for p in sorted(glob.glob(os.path.join(out_dir, "cells", "*.json")))]
    return [r for r in records if r is not None]
