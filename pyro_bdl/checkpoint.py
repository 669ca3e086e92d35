"""Checkpoints for long runs: written atomically, so an interrupted run resumes from the last one.

A checkpoint is a dict of tensors and plain Python values (``torch.save``). ``save`` writes a
temporary file beside the target and renames it over the target, so a crash never leaves a
half-written checkpoint; ``load`` returns ``None`` when there is none yet.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Callable, Dict, Optional

import torch


def atomic_write(path: str, write: Callable[[str], None], suffix: str = ".tmp") -> None:
    """Create ``path`` atomically: ``write(tmp)`` fills a temporary file beside it, which is then
    renamed over ``path`` (``os.replace``), so readers see the old file or the whole new one,
    never a half-written one; on any failure the temporary file is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save(path: str, state: Dict[str, Any]) -> None:
    """Atomically write ``state`` to ``path``."""
    atomic_write(path, lambda tmp: torch.save(state, tmp), suffix=".ckpt")


def load(path: Optional[str]) -> Optional[Dict[str, Any]]:
    """The checkpoint at ``path``, or ``None`` if ``path`` is None or does not exist yet."""
    if path is None or not os.path.exists(path):
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def rng_state() -> Dict[str, Any]:
    """torch's global RNG state, to store in a checkpoint."""
    return {"torch": torch.get_rng_state()}


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
