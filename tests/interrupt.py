"""The resume tests' kill: a run stopped right after a checkpoint is written, as a killed process would be."""
from typing import Callable, List, Optional, Type

from pyro_bdl._util import checkpoint


def interrupt_after(monkeypatch, saves: int, error: Type[BaseException] = KeyboardInterrupt,
                    steps: Optional[List[int]] = None) -> Callable[[], None]:
    """Make `checkpoint.save` write its file, then raise ``error`` at its ``saves``-th call; ``steps`` (a list)
    collects each saved state's ``step``. Returns the undo: the real ``save`` back in place."""
    real, count = checkpoint.save, [0]

    def save(path, fp, state):
        real(path, fp, state)
        count[0] += 1
        if steps is not None:
            steps.append(state["step"])
        if count[0] == saves:
            raise error

    monkeypatch.setattr(checkpoint, "save", save)
    return lambda: monkeypatch.setattr(checkpoint, "save", real)
