"""Checkpoints for long runs: written atomically, so an interrupted run resumes from the last one.

A checkpoint is a dict of tensors and plain Python values (``torch.save``). ``save`` writes a
temporary file beside the target and renames it over the target, so a crash never leaves a
half-written checkpoint; ``load`` returns ``None`` when there is none yet.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional

import torch

from .io import atomic_write


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
