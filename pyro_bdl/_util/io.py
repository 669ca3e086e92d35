"""Writing files so that a crash never leaves a half-written one."""
from __future__ import annotations

import os
import tempfile
from typing import Callable


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
