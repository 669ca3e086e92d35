"""Independent members (deep-ensemble members, Multi-SWAG's SWAG runs): sequential or in processes.

``run_members(fn, args_list, workers)`` calls ``fn(*args)`` for every entry and returns the
results in order. With ``workers > 1`` the calls run in a pool of spawned processes (each
limited to one torch thread, so M members on M cores do not oversubscribe); ``fn`` and its
arguments must be picklable (module-level functions, models, tensors).
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, List, Optional, Sequence

import torch


def _init_worker() -> None:
    torch.set_num_threads(1)


def run_members(fn: Callable[..., Any], args_list: Sequence[tuple], workers: Optional[int] = 1) -> List[Any]:
    """Run ``fn(*args)`` for each ``args`` in ``args_list``; ``workers`` processes (1 = in this process)."""
    workers = 1 if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(args_list) <= 1:
        return [fn(*args) for args in args_list]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(args_list)), mp_context=ctx,
                             initializer=_init_worker) as pool:
        futures = [pool.submit(fn, *args) for args in args_list]
        return [f.result() for f in futures]
