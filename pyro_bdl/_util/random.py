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

    The noise is drawn on the generator's device and moved to ``like``'s (a CPU generator cannot draw
    CUDA numbers): with a generator already on ``like``'s device (`noise_generator`'s for a device θ)
    there is no copy; with a CPU generator and a device ``like`` it costs one host-to-device copy.
    """
    device = like.device if generator is None else generator.device
    noise = torch.randn(like.shape, generator=generator, dtype=like.dtype, device=device)
    return noise.to(like.device, non_blocking=True)


def device_generator(device: torch.device, seed: int) -> torch.Generator:
    """A generator on ``device`` for the run seeded with ``seed``: seeded with the first seed that
    `spawn_seeds` derives from ``seed`` (the one definition of seeding), so its stream is fixed by
    ``seed`` and shares no seed with the host generator seeded with ``seed`` itself."""
    return torch.Generator(device=device).manual_seed(spawn_seeds(seed, 1)[0])


def noise_generator(like: torch.Tensor, generator: torch.Generator) -> torch.Generator:
    """The generator that draws a per-step noise of ``like``'s shape (SG-MCMC's injected ξ, its
    momentum refresh), given the run's host ``generator`` (the driver's, seeded with the run's seed).

    The trade-off: drawing on the host and copying costs one host-to-device copy of ``like.numel()``
    numbers per step on an accelerator (from pageable memory, so in effect synchronous), which is
    what a device-side draw avoids; the price is that a device draws other numbers than the host
    for the same seed. Bit equality across devices is not a guarantee anyway (an accelerator's
    arithmetic rounds differently), while the same seed on the same device still gives the same
    numbers, and a checkpoint stores the device generator's state so a resume stays bit-identical.

    So: for a CPU ``like`` this is ``generator`` itself (every fixed-seed CPU number as it was);
    for any other device, a new `device_generator` on ``like``'s device seeded from
    ``generator.initial_seed()`` (the run's seed: the driver seeds its generators with
    ``manual_seed``, which `torch.Generator.set_state` keeps). The caller keeps it, and its state.
    """
    if like.device.type == "cpu":
        return generator
    return device_generator(like.device, generator.initial_seed())
