"""Argument checks shared by every public function: one definition each, errors that name the fix."""
from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np
import torch


def as_tensor(value, name: str) -> torch.Tensor:
    if torch.is_tensor(value):
        return value
    if isinstance(value, np.ndarray):
        t = torch.from_numpy(value)
        return t.to(torch.get_default_dtype()) if t.is_floating_point() else t
    raise TypeError(f"{name} must be a torch.Tensor (or numpy array), got {type(value).__name__}; "
                    f"convert it with torch.as_tensor({name}).")


def check_finite(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point() and not torch.isfinite(t).all():
        bad = (~torch.isfinite(t)).nonzero()[0].tolist()
        raise ValueError(f"{name} contains NaN or inf (first at index {bad}); drop or impute those rows before fitting.")


def check_int(value: Any, name: str, minimum: int = 1, allow_none: bool = False) -> Optional[int]:
    """``value`` as an int ≥ ``minimum`` (bools refused: ``True`` is not a count), or ``None`` if allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = {0: "a non-negative integer", 1: "a positive integer"}.get(minimum, f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_float(value: Any, name: str, *, positive: bool = False, non_negative: bool = False,
                at_most: Optional[float] = None, below: Optional[float] = None, allow_none: bool = False) -> Optional[float]:
    """``value`` as a finite float with the stated bounds (bools refused), or ``None`` if allowed."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if non_negative and value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    if at_most is not None and value > at_most:
        raise ValueError(f"{name} must be <= {at_most}, got {value!r}")
    if below is not None and value >= below:
        raise ValueError(f"{name} must be < {below}, got {value!r}")
    return value


def check_seed(seed: Any) -> int:
    """A seed must be a plain int (``True`` and floats are refused: they are almost always a slip)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {seed!r}")
    return int(seed)
