"""One study cell = one fit + one evaluation, stored as a JSON file the moment it finishes.

A cell is described by a *spec*, a plain JSON-able dict (method, temperature, seed, augmentation,
data, network, prior and fit settings), so it can be sent to another process or a Ray worker and
hashed. Its file ``cells/<key>.json`` is named by the readable grid coordinates plus a hash of
the spec: a rerun finds the cells it already has and skips them, and a changed setting (more
epochs, another prior) gives new cells instead of silently reusing stale ones.
"""
from __future__ import annotations

import datetime
import functools
import glob
import hashlib
import json
import os
import socket
import time
from typing import Any, Dict, List, Optional

import numpy as np
import pyro
import torch

from .._util.random import seeded
from .._version import __version__
from .._util import checkpoint
from ..model import likelihoods
from ..evaluate import metrics
from .. import priors
from ..examples import datasets
from ..infer import fit, method_options
from ..model.bayesian_model import BayesianModel
from ..posterior.samples import SamplesPosterior
from .config import AUGMENTATIONS, StudyConfig, build_network

CELL_FORMAT = "pyro_bdl.study_cell"
CELL_VERSION = 1
#: spec entries that do not change a cell's numbers' meaning and are left out of its hash
_UNHASHED = ("study", "threads")


def cell_specs(config: StudyConfig) -> List[Dict[str, Any]]:
    """The specs of every cell of the grid, in a fixed order (augment, method, temperature, seed)."""
    d, m, inf = config.data, config.model, config.inference
    data = {"name": d.name, "train_size": d.train_size, "test_fraction": d.test_fraction,
            "split_seed": d.split_seed, "max_shift": d.max_shift}
    model = {"network": m.network, "hidden": list(m.hidden), "activation": m.activation,
             "network_options": dict(m.network_options), "prior": m.prior, "prior_scale": m.prior_scale,
             "tempering": m.tempering, "noise_scale": m.noise_scale}
    specs = []
    for augment in d.augment:
        for method in inf.methods:
            for temperature in config.temperatures:
                for seed in config.seeds:
                    specs.append({"study": config.name, "method": method, "temperature": temperature, "seed": seed,
                                  "augment": augment, "data": data, "model": model,
                                  "fit": inf.settings(method), "predict_samples": inf.predict_samples,
                                  "threads": config.cpus_per_cell})
    return specs


def cell_key(spec: Dict[str, Any]) -> str:
    """``<method>_T<T>_s<seed>_<aug|noaug>_<hash>``: readable coordinates plus a hash of the whole spec."""
    hashed = {k: v for k, v in spec.items() if k not in _UNHASHED}
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return (f"{spec['method']}_T{spec['temperature']:g}_s{spec['seed']}_"
            f"{'aug' if spec['augment'] else 'noaug'}_{digest}")


def cell_path(out_dir: str, spec: Dict[str, Any]) -> str:
    return os.path.join(out_dir, "cells", cell_key(spec) + ".json")


def _prior(name: str, scale: float):
    return {"gaussian": lambda: priors.Gaussian(0.0, scale), "fan_in": lambda: priors.FanInGaussian(scale),
            "laplace": lambda: priors.Laplace(0.0, scale), "student_t": lambda: priors.StudentT(3.0, 0.0, scale)}[name]()


def augmentation(spec: Dict[str, Any]):
    """The cell's ``augment(x, generator)`` hook, or None: random shifts in pixel space, using the
    training split's per-pixel mean and std (the same standardisation `load_dataset` applies)."""
    if not spec["augment"]:
        return None
    d = spec["data"]
    kwargs = dict(test_fraction=d["test_fraction"], seed=d["split_seed"], train_size=d["train_size"])
    mean, std = standardisation(datasets.load_dataset(d["name"], standardize=False, **kwargs).x_train,
                                datasets.load_dataset(d["name"], **kwargs).x_train)
    return functools.partial(datasets.shift_images, mean=mean, std=std, max_shift=d["max_shift"],
                             **AUGMENTATIONS[d["name"]])


def standardisation(raw: torch.Tensor, standardised: torch.Tensor):
    """Per-feature ``(mean, std)`` with ``standardised = (raw − mean) / std``, recovered from the two
    versions of the same rows, so it holds for whatever standardisation `load_dataset` uses
    (per pixel for digits, one global scale for MNIST). Constant features get std 1."""
    raw, z = raw.double(), standardised.double()
    z_sd = z.std(0, unbiased=False)
    std = torch.where(z_sd > 0, raw.std(0, unbiased=False) / z_sd.clamp_min(1e-300), torch.ones_like(z_sd))
    mean = raw.mean(0) - std * z.mean(0)
    dtype = torch.get_default_dtype()
    return mean.to(dtype), std.to(dtype)


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
        if name == "losses" and len(value):
            out["final_loss"] = float(np.mean(value[-max(1, len(value) // 20):]))  # last 5% of steps
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


def _run(spec: Dict[str, Any]) -> Dict[str, Any]:

    d, m = spec["data"], spec["model"]
    ds = datasets.load_dataset(d["name"], test_fraction=d["test_fraction"], seed=d["split_seed"],
                               train_size=d["train_size"])
    net = build_network(m["network"], tuple(m["hidden"]), m["activation"], m["network_options"],
                        ds.num_features, ds.output_dim)
    lik = likelihoods.Categorical() if ds.task == "classification" else likelihoods.Gaussian(scale=m["noise_scale"])
    model = BayesianModel(net, prior=_prior(m["prior"], m["prior_scale"]), likelihood=lik,
                          temperature=spec["temperature"], tempering=m["tempering"])
    t0 = time.perf_counter()
    post = fit(model, ds.x_train, ds.y_train, method=spec["method"], seed=spec["seed"], progress=False,
               augment=augmentation(spec), **spec["fit"])
    t1 = time.perf_counter()
    scores = metrics.evaluate(post, ds.x_test, ds.y_test, num_samples=spec["predict_samples"], seed=spec["seed"])
    t2 = time.perf_counter()
    return {"format": CELL_FORMAT, "version": CELL_VERSION, "key": cell_key(spec), "spec": spec,
            "metrics": scores, "diagnostics": diagnostics(post), "fit_seconds": t1 - t0, "eval_seconds": t2 - t1,
            "n_train": len(ds.x_train), "n_test": len(ds.x_test),
            "finished_at": datetime.datetime.now().isoformat(timespec="seconds"), "host": socket.gethostname(),
            "versions": {"pyro_bdl": __version__, "torch": torch.__version__, "pyro": pyro.__version__}}


def write_cell(out_dir: str, record: Dict[str, Any]) -> str:
    """Write a finished cell's record to ``cells/<key>.json`` atomically (temp file + rename)."""
    path = os.path.join(out_dir, "cells", record["key"] + ".json")

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())

    checkpoint.atomic_write(path, write, suffix=".json")
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
