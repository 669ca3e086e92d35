"""Files the library writes and reads back: written atomically, read without running code.

**Safe files.** Every file pyro_bdl reads (checkpoints, posteriors, functional priors) holds only
tensors and plain containers (dict, list, tuple, str, int, float, bool, None), written with
``torch.save`` and read with ``torch.load(weights_only=True)``, whose restricted unpickler refuses
any other Python object — so a crafted file cannot run code when loaded. :func:`read` is the one
reader; it turns an empty, truncated, garbage or crafted file into one ``ValueError`` naming the
file and the problem. :func:`check_plain` refuses, at save time, a state that could not be read back.

**One checkpoint protocol.** A long run calls::

    fp = checkpoint.fingerprint(model, data, method, options, seed)
    state = checkpoint.load(path, fp)          # None: start afresh; else the state saved below
    ...
    checkpoint.save(path, fp, state)           # atomically, after every epoch / member

The fingerprint is plain data describing everything that determines the run: the model (network
structure and starting weights, prior, likelihood, temperature, tempering), the data (shapes and a
content hash), the method, its options and the seed. :func:`load` resumes only a checkpoint with an
identical fingerprint; any other is refused with a message naming the fields that differ.
"""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import random
import socket
import tempfile
import warnings
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

import numpy as np
import torch

FORMAT = "pyro_bdl.checkpoint"
FORMAT_VERSION = 2
_PLAIN = (str, int, float, bool, type(None))


# -- writing ------------------------------------------------------------------------------------
def atomic_write(path: str, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Create ``path`` atomically: ``write(tmp)`` fills a temporary file beside it, which is then
    renamed over ``path`` (``os.replace``), so readers see the old file or the whole new one,
    never a half-written one; on any failure the temporary file is removed.

    The file gets the permissions an ordinary ``open(path, "w")`` would (``0o666`` minus the
    umask), not ``mkstemp``'s private ``0o600``. Temporary names start with ``.tmp-``; a run killed
    mid-write leaves one behind, which :func:`remove_stale_temporaries` clears.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; set straight back
    os.umask(mask)
    return mask


def remove_stale_temporaries(directory: str) -> List[str]:
    """Delete the ``.tmp-*`` files :func:`atomic_write` left in ``directory`` (and below) when a run
    was killed mid-write. Call only while no other writer uses the folder (a study holds its lock).
    Returns the removed paths."""
    removed = []
    for root, _, files in os.walk(directory):
        for name in files:
            if name.startswith(".tmp-"):
                path = os.path.join(root, name)
                try:
                    os.remove(path)
                    removed.append(path)
                except FileNotFoundError:
                    pass
    return removed


class FolderLocked(RuntimeError):
    """Another live process holds the lock on a folder (see :func:`folder_lock`)."""


@contextlib.contextmanager
def folder_lock(directory: str, what: str = "run") -> Iterator[None]:
    """Hold ``<directory>/.lock`` (holder's PID and host) while the block runs.

    A second process asking for the same folder gets :class:`FolderLocked` naming the holder. A
    lock left by a process that no longer exists on this host (killed) is taken over. The lock
    is an ``O_EXCL``-created file, so two processes never both get it.
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, ".lock")
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            holder = _lock_holder(path)
            if holder is not None and _alive(holder):
                raise FolderLocked(
                    f"another {what} (PID {holder['pid']} on {holder['host']}) is using {directory}; wait for it to "
                    f"finish or choose another output folder (if that process is gone, delete {path})") from None
            try:  # the holder is dead (or the file unreadable): take the lock over
                os.remove(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    else:
        raise FolderLocked(f"could not take the lock {path}; another process keeps taking it")
    try:
        yield
    finally:
        if _lock_holder(path) == me:
            os.remove(path)


def _lock_holder(path: str) -> Optional[Dict[str, Any]]:
    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None
    except (OSError, ValueError):
        return None


def _alive(holder: Dict[str, Any]) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process: we cannot tell, so respect it
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_plain(value: Any, where: str = "state") -> None:
    """Raise ``TypeError`` unless ``value`` is tensors and plain containers only (what :func:`read`
    accepts), naming the first offending entry."""
    if isinstance(value, (torch.Tensor, *_PLAIN)):
        return
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            check_plain(v, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where} has a key of type {type(k).__name__}; only str/int keys can be saved safely")
            check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}; files hold only tensors, "
                    "numbers, strings and lists/dicts of them (so loading them can never run code)")


def write(path: str, blob: Dict[str, Any]) -> None:
    """Atomically write ``blob`` (checked with :func:`check_plain`) to ``path``."""
    check_plain(blob, os.path.basename(path))
    atomic_write(path, lambda tmp: torch.save(blob, tmp), suffix=".pt")


# -- reading ------------------------------------------------------------------------------------
def read(path: Any, fmt: str, what: str, resave: str) -> Dict[str, Any]:
    """Read a file written by :func:`write` with ``blob["format"] == fmt``, without running code.

    ``what`` names the kind of file in messages ("posterior"); ``resave`` says how to write a
    current one. Every failure is a ``ValueError`` naming the file and the problem.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"the {what} path must be a file path (str or os.PathLike), got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file (expected a {what} file)")
    if os.path.isdir(path):
        raise ValueError(f"{path} is a directory, not a {what} file")
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes): not a {what} file; it may be from a crashed copy — {resave}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files; we refuse them anyway
            warnings.simplefilter("ignore", UserWarning)
            blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every unreadable file gets one clear message
        text = str(err)
        if "GLOBAL" in text or "Unsupported global" in text or "Unsupported class" in text or "reduce" in text:
            if "pyro_bdl" in text:
                raise ValueError(
                    f"{path} is a {what} file in pyro_bdl's old pickle format, which can run code when read and "
                    f"is no longer loaded. If you trust the file, convert it once: read it with "
                    f"torch.load(path, weights_only=False) and save it again; {resave}") from None
            raise ValueError(f"{path} holds Python objects other than tensors and plain data; it was refused "
                             f"unread, since loading it could run code. It is not a pyro_bdl {what} file "
                             f"(or was tampered with).") from None
        raise ValueError(f"{path} is not a readable {what} file (truncated or corrupt: "
                         f"{type(err).__name__}: {text.splitlines()[0] if text else ''}); {resave}") from None
    if not isinstance(blob, dict) or blob.get("format") != fmt:
        raise ValueError(f"{path} is not a pyro_bdl {what} file (no {fmt!r} header)")
    version = blob.get("version")
    if not isinstance(version, int) or version < FORMAT_VERSION:
        raise ValueError(f"{path} is a {what} file of an older format ({version!r}); {resave}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer pyro_bdl ({what} format {version}); upgrade pyro_bdl")
    return blob


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
    """What defines a :class:`~pyro_bdl.BayesianModel`: network (structure, fixed weights and
    buffers), which parameters are Bayesian, prior, likelihood, temperature and tempering."""
    network = model.network
    return {"network": network_description(model.net, network.param_names), "bayesian": list(network.param_names),
            "prefix": network.prefix, "prior": describe(network.prior), "likelihood": describe(model.likelihood),
            "temperature": float(model.temperature), "tempering": model.tempering}


def data_description(data: Any) -> Dict[str, Any]:
    """Size, batching and a content hash of a fit's data (:class:`~pyro_bdl.inference.data.FitData`).

    Tensors are hashed directly. A user's ``DataLoader`` is hashed through its dataset (its
    ``tensors`` when it is a ``TensorDataset``, else every item in index order, with all random
    number generators restored afterwards so that hashing changes nothing in the run)."""
    loader = data.loader
    out: Dict[str, Any] = {"dataset_size": data.dataset_size, "num_batches": data.num_batches,
                           "batch_size": None if loader is None else loader.batch_size,
                           "augment": None if data.augment is None else describe(data.augment)}
    if not getattr(data, "user_loader", loader is not None and data._x is None):
        x, y = data.full()
        out.update(x=list(x.shape), y=list(y.shape), hash=tensor_hash(x, y))
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
            for t in item if isinstance(item, (tuple, list)) else (item,):
                h.update(tensor_hash(torch.as_tensor(t)).encode())
    random.setstate(py_state)
    np.random.set_state(np_state)
    out.update(hash=h.hexdigest())
    return out


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
    blob = read(path, FORMAT, "checkpoint", _RESAVE)
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


def rng_state() -> Dict[str, Any]:
    """torch's global RNG state, to store in a checkpoint."""
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore the RNG state saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
