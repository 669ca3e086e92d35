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
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):  # CUDA RNGs restored too
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
    # 32 bits: numpy's legacy seeding (pyro.set_rng_seed) accepts 0 ≤ seed < 2**32
    return [int(c.generate_state(1, dtype=np.uint32)[0]) for c in children]


def randn_like(like: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Standard normal noise of ``like``'s shape, dtype and device, drawn from ``generator``.

    A CPU generator (the seeded ones every method keeps) cannot draw CUDA numbers, so the noise is
    drawn on the generator's device and moved to ``like``'s: the same seed gives the same numbers
    on every device (reproducible across CPU and GPU), at the cost of one host-to-device copy.
    """
    device = like.device if generator is None else generator.device
    noise = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=device)
    return noise.to(like.device, non_blocking=True)
