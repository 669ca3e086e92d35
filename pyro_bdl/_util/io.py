"""Files pyro_bdl writes and reads back: written atomically, read without running code.

* `atomic_write` — a temporary file beside the target, renamed over it: a crash never leaves
  a half-written file; the file gets the umask's permissions; `remove_stale_temporaries`
  clears what a killed run left.
* `write` / `read` — files of tensors and plain containers (dict, list, tuple, str,
  int, float, bool, None), written with ``torch.save`` and read with
  ``torch.load(weights_only=True)``, whose restricted unpickler refuses any other Python object,
  so a crafted file cannot run code when loaded. `read` turns an empty, truncated, garbage,
  crafted or old-format file into one ``ValueError`` naming the file and the problem;
  `check_plain` refuses, at save time, anything that could not be read back.
  Checkpoints, posteriors and functional priors all go through them.
* `folder_lock` — one process at a time in an output folder (a dead holder's lock is taken over).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch

_PLAIN = (str, int, float, bool, type(None))

# -- writing ------------------------------------------------------------------------------------
def atomic_write(path: str, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Create ``path`` atomically: ``write(tmp)`` fills a temporary file beside it, which is then
    renamed over ``path`` (``os.replace``), so readers see the old file or the whole new one,
    never a half-written one; on any failure the temporary file is removed.

    The file gets the permissions an ordinary ``open(path, "w")`` would (``0o666`` minus the
    umask), not ``mkstemp``'s private ``0o600``. Temporary names start with ``.tmp-``; a run killed
    mid-write leaves one behind, which `remove_stale_temporaries` clears.
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
    """Delete the ``.tmp-*`` files `atomic_write` left in ``directory`` (and below) when a run
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
    """Another live process holds the lock on a folder (see `folder_lock`)."""


@contextlib.contextmanager
def folder_lock(directory: str, what: str = "run") -> Iterator[None]:
    """Hold ``<directory>/.lock`` (holder's PID and host) while the block runs.

    A second process asking for the same folder gets `FolderLocked` naming the holder. A
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
    """Raise ``TypeError`` unless ``value`` is tensors and plain containers only (what `read`
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
    """Atomically write ``blob`` (checked with `check_plain`) to ``path``."""
    check_plain(blob, os.path.basename(path))
    atomic_write(path, lambda tmp: torch.save(blob, tmp), suffix=".pt")


# -- reading ------------------------------------------------------------------------------------
def read(path: Any, fmt: str, version: int, what: str, resave: str) -> Dict[str, Any]:
    """Read a file written by `write` with ``blob["format"] == fmt`` and ``blob["version"] ==
    version``, without running code.

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
    found = blob.get("version")
    if not isinstance(found, int) or found < version:
        raise ValueError(f"{path} is a {what} file of an older format ({found!r}); {resave}")
    if found > version:
        raise ValueError(f"{path} was written by a newer pyro_bdl ({what} format {found}); upgrade pyro_bdl")
    return blob
