"""One checkpoint protocol for every resumable method (SG-MCMC, SWAG / Multi-SWAG, ensembles).

A long run calls::

    fp = checkpoint.fingerprint(model, data, method, options, seed)
    state = checkpoint.load(path, fp)          # None: start afresh; else the state saved below
    ...
    checkpoint.save(path, fp, state)           # atomically, after every epoch / member

The fingerprint is plain data describing everything that determines the run: the model (network
structure and fixed weights and buffers, Bayesian parameters, prior, likelihood, temperature,
tempering), the data (shapes, batching and a content hash), the method, its options and the seed
(plus what the method adds, such as a hash of the starting point). `load` resumes only a
checkpoint with an identical fingerprint; any other is refused with a message naming the fields
that differ. The file is tensors plus plain data (`pyro_bdl._util.io.write`), so reading it
never runs code.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import random
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch

from .io import read, write

FORMAT = "pyro_bdl.checkpoint"
FORMAT_VERSION = 2


# -- fingerprints -------------------------------------------------------------------------------
def tensor_hash(*tensors: torch.Tensor) -> str:
    """SHA-256 of the tensors' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def describe(obj: Any, _depth: int = 0) -> Any:
    """A plain-data (JSON) description of ``obj`` that changes when its settings change: numbers
    and strings as they are, tensors by shape, dtype and content hash, objects by class and public
    attributes (recursively), functions by qualified name. Used for priors and likelihoods."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else repr(obj)
    if isinstance(obj, torch.Tensor):
        if obj.numel() <= 8:
            return {"tensor": obj.detach().cpu().reshape(-1).tolist(), "shape": list(obj.shape), "dtype": str(obj.dtype)}
        return {"tensor": tensor_hash(obj), "shape": list(obj.shape), "dtype": str(obj.dtype)}
    if _depth > 6:
        return f"<{type(obj).__qualname__}>"
    if isinstance(obj, (list, tuple)):
        return [describe(v, _depth + 1) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): describe(v, _depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, torch.nn.Module):
        return network_description(obj)
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        func = getattr(obj, "__func__", obj)
        return {"function": f"{func.__module__}.{func.__qualname__}", "code": _code_hash(func.__code__)}
    if isinstance(obj, type) or not hasattr(obj, "__dict__"):
        return f"{getattr(obj, '__module__', type(obj).__module__)}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
    attrs = vars(obj)
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    public = {k: v for k, v in attrs.items() if not k.startswith("_")}
    # torch distributions keep their parameters public but the shapes private; keep those too.
    for k in ("_batch_shape", "_event_shape"):
        if k in attrs:
            public[k] = list(attrs[k])
    return {"class": name, **{k: describe(v, _depth + 1) for k, v in sorted(public.items())}}


def _code_hash(code: Any) -> str:
    # Nested code objects print with their address; hash their bytecode instead.
    h = hashlib.sha256(code.co_code)
    for c in code.co_consts:
        h.update((_code_hash(c) if inspect.iscode(c) else repr(c)).encode())
    return h.hexdigest()[:16]


def network_description(net: torch.nn.Module, varied: Any = ()) -> Dict[str, Any]:
    """The network's class, module structure (``repr``), parameter and buffer names, shapes and
    dtypes, and a hash of the values that stay fixed during inference (everything but the
    ``varied`` parameters, whose starting values each method records itself)."""
    state = net.state_dict()
    return {"class": f"{type(net).__module__}.{type(net).__qualname__}", "structure": repr(net),
            "tensors": [[k, list(v.shape), str(v.dtype)] for k, v in state.items()],
            "fixed_values": tensor_hash(*(v for k, v in state.items() if k not in set(varied)))}


def model_description(model: Any) -> Dict[str, Any]:
    """What defines a [`BayesianModel`][pyro_bdl.BayesianModel]: network (structure, fixed weights and
    buffers), which parameters are Bayesian, prior, likelihood, temperature and tempering."""
    network = model.network
    return {"network": network_description(model.net, network.param_names), "bayesian": list(network.param_names),
            "prefix": network.prefix, "prior": describe(network.prior), "likelihood": describe(model.likelihood),
            "temperature": float(model.temperature), "tempering": model.tempering}


def data_description(data: Any) -> Dict[str, Any]:
    """Size, batching and a content hash of a fit's data (`FitData`).

    Tensors are hashed directly. A user's ``DataLoader`` is hashed through its dataset (its
    ``tensors`` when it is a ``TensorDataset``, else every item in index order, with all random
    number generators restored afterwards so that hashing changes nothing in the run)."""
    loader = data.loader
    out: Dict[str, Any] = {"dataset_size": data.dataset_size, "num_batches": data.num_batches,
                           "batch_size": None if loader is None else loader.batch_size,
                           "augment": None if data.augment is None else describe(data.augment)}
    if not getattr(data, "user_loader", loader is not None and data._x is None):
        x, y = data.full()
        xs = tuple(x) if isinstance(x, (tuple, list)) else (x,)  # a multi-input batch is a tuple of tensors
        out.update(x=[list(t.shape) for t in xs] if len(xs) > 1 else list(xs[0].shape), y=list(y.shape),
                   hash=tensor_hash(*xs, y))
        return out
    dataset = data.loader.dataset
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        out.update(shapes=[list(t.shape) for t in tensors], hash=tensor_hash(*tensors))
        return out
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        h = hashlib.sha256()
        for i in range(len(dataset)):
            item = dataset[i]
            for t in _leaves(item):
                h.update(tensor_hash(torch.as_tensor(t)).encode())
    random.setstate(py_state)
    np.random.set_state(np_state)
    out.update(hash=h.hexdigest())
    return out


def _leaves(item: Any):
    """The tensors of a dataset item, nested tuples included (``((x1, x2), y)``)."""
    if isinstance(item, (tuple, list)):
        for part in item:
            yield from _leaves(part)
    else:
        yield item


def fingerprint(model: Any, data: Any, method: str, options: Mapping[str, Any], seed: int,
                **extra: Any) -> Dict[str, Any]:
    """The identity of a run (plain data): model, data, method, options, seed (and ``extra``)."""
    fp = {"method": method, "options": describe(dict(options)), "seed": seed,
          "model": model_description(model), "data": data_description(data)}
    fp.update({k: describe(v) for k, v in extra.items()})
    return json.loads(json.dumps(fp, sort_keys=True))  # exactly what a file round-trips to


def differences(saved: Any, current: Any, prefix: str = "") -> List[str]:
    """Dotted names of the fields where two fingerprints differ (``model.temperature``, ``data.hash``)."""
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for k in sorted(set(saved) | set(current)):
            out += differences(saved.get(k), current.get(k), f"{prefix}{k}.")
        return out
    return [] if saved == current else [prefix.rstrip(".") or "(all)"]


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _get(fp: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        fp = fp.get(part) if isinstance(fp, dict) else None
    return fp


# -- the checkpoint protocol --------------------------------------------------------------------
_RESAVE = "delete it (or pass another checkpoint path) and the run starts afresh"


def save(path: str, fingerprint: Dict[str, Any], state: Dict[str, Any]) -> None:
    """Atomically write a checkpoint: ``state`` (tensors and plain data) under ``fingerprint``."""
    write(path, {"format": FORMAT, "version": FORMAT_VERSION, "fingerprint": json.dumps(fingerprint, sort_keys=True),
                 "state": state})


def load(path: Optional[str], fingerprint: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The state saved at ``path`` by this same run, or ``None`` if ``path`` is None or does not
    exist yet. A file that is not a checkpoint, or a checkpoint of another run (any fingerprint
    field different), raises ``ValueError`` naming the file and what differs."""
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path, got {type(path).__name__}")
    if not os.path.exists(path):
        return None
    blob = read(path, FORMAT, FORMAT_VERSION, "checkpoint", _RESAVE)
    try:
        saved = json.loads(blob["fingerprint"])
        state = blob["state"]
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{path} is a damaged checkpoint (no readable fingerprint/state); {_RESAVE}") from None
    diff = differences(saved, fingerprint)
    if diff:
        shown = "; ".join(f"{d}: {_show(_get(saved, d))} in the checkpoint, {_show(_get(fingerprint, d))} now"
                          for d in diff[:6])
        more = f" (and {len(diff) - 6} more)" if len(diff) > 6 else ""
        raise ValueError(f"the checkpoint {path} belongs to another run; it differs in {', '.join(diff[:6])}{more} "
                         f"({shown}). A checkpoint only resumes the run that wrote it: {_RESAVE}.")
    return state


def check_path(checkpoint: Any) -> Optional[str]:
    """``checkpoint`` as a path string (``None`` stays ``None``); ``TypeError`` for anything else."""
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path, got {type(checkpoint).__name__}")
    return None if checkpoint is None else os.fspath(checkpoint)


def rng_state(device: Optional[torch.device] = None) -> Dict[str, Any]:
    """torch's global RNG state, to store in a checkpoint; with a CUDA ``device``, that device's generator too
    (where draws on the device come from)."""
    cuda = device is not None and device.type == "cuda"
    return {"torch": torch.get_rng_state(), "device": torch.cuda.get_rng_state(device) if cuda else None}


def set_rng_state(state: Dict[str, Any], device: Optional[torch.device] = None) -> None:
    """Restore the RNG state saved by `rng_state` (the device generator's where one was saved)."""
    torch.set_rng_state(state["torch"])
    if state.get("device") is not None:
        torch.cuda.set_rng_state(state["device"], device)
