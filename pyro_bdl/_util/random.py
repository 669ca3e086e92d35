"""Seeding: the one place that touches torch's global RNG and derives seeds for independent runs."""
from __future__ import annotations

import contextlib
from typing import Iterator, List, Optional

import numpy as np
import torch


@contextlib.contextmanager
def seeded(seed: Optional[int]) -> Iterator[None]:
    """Run with torch's global RNG seeded, restoring its state afterwards (no global side effect)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def spawn_seeds(seed: int, n: int) -> List[int]:
    """``n`` independent seeds for the chains / members of a run seeded with ``seed``.

    Uses ``numpy.random.SeedSequence(seed).spawn(n)``: children of different parent seeds
    share no stream, so ``fit(seed=0, num_chains=2)`` and ``fit(seed=1, num_chains=2)`` have no
    chain in common (``seed + c`` would make chain 1 of seed 0 equal chain 0 of seed 1). The
    same ``(seed, n)`` always gives the same seeds, and the first ``k`` of ``n`` do not depend on ``n``.
    """
    children = np.random.SeedSequence(int(seed)).spawn(int(n))
    return [int(c.generate_state(1, dtype=np.uint64)[0] % (2 ** 63)) for c in children]
