"""The table of inference methods behind [`pyro_bdl.fit`][pyro_bdl.fit]."""
from __future__ import annotations

from typing import Callable, Dict

METHODS: Dict[str, Callable] = {}


def register(*names: str):
    """Register an inference function ``fn(model, data, *, seed, progress, **options) -> Posterior``."""

    def deco(fn: Callable) -> Callable:
        for name in names:
            METHODS[name] = fn
        return fn

    return deco
