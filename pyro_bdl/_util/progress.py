"""Progress bars: tqdm on a terminal, silent otherwise or with ``progress=False``."""
from __future__ import annotations

import sys
from typing import Optional

from tqdm.auto import tqdm


def enabled(progress: Optional[bool]) -> bool:
    """``None`` means: on when stderr is a terminal."""
    if progress is None:
        return sys.stderr.isatty()
    return bool(progress)


def bar(total: int, desc: str, progress: Optional[bool]):
    """A progress bar over ``total`` steps (a no-op object when disabled)."""
    return tqdm(total=total, desc=desc, disable=not enabled(progress), leave=False, dynamic_ncols=True)
