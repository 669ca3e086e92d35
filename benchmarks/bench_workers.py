"""Wall time of K = 4 sghmc chains on the ≈540k-parameter MLP of `bench_engine` with ``workers=1`` against
``workers=2`` (issue 15: process ``workers`` serve the runs too large to stack).

On the CPU, networks above 40k parameters are not stacked (``stack="auto"``, `pyro_bdl.infer.stacking`), so with
``workers=1`` the four chains run one after another in one process; ``workers=2`` runs them in two spawned processes
of one torch thread each (two chains each, one after another). Rows, in one run, in this order:

* ``workers=1, 1 thread``: ``torch.set_num_threads(1)``, the chains one after another;
* ``workers=2``: 2 processes × 1 thread (this process idle meanwhile), spawn and imports included;
* ``--two-threads``: also ``workers=1`` with 2 torch threads (the matmuls split over both cores), last.

The last column is ``info["wall_time"]``, the groups' sampling times summed (the driver's loops, no start-up):
elapsed minus it is the start-up (for ``workers=2``: spawning, imports and rebuilding the potential).

Wall time (``time.perf_counter``) of the whole ``fit`` call, once each: it is the user's figure, but on a shared
machine it also counts the time other jobs hold the cores, so it is indicative only (``uptime`` is printed before
and after). The plain kernel (``preconditioner=None``, fixed step) of `bench_engine`'s sghmc row, minibatches of 64
of N = 1024 points (16 steps per epoch).

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_workers.py [--epochs 30] [--two-threads]``.
"""
from __future__ import annotations

import argparse
import subprocess
import time
import warnings
from typing import Tuple

import torch

import pyro_bdl as bdl
from bench_engine import B, LR, SIZES, make_data, make_model


def run(workers: int, epochs: int, x, y) -> Tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short run's temperature diagnostics
        start = time.perf_counter()
        post = bdl.fit(make_model(*SIZES["540k"]), x, y, method="sghmc", num_chains=4, workers=workers, epochs=epochs,
                       warmup=1, lr=LR["sghmc"], preconditioner=None, batch_size=B,
                       progress=False, seed=0)
        elapsed = time.perf_counter() - start
    assert post.info["stack"] == 1
    return elapsed, post.info["wall_time"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--two-threads", action="store_true", help="also workers=1 on 2 torch threads (last)")
    args = parser.parse_args()
    x, y = make_data(SIZES["540k"][0])
    params = sum(p.numel() for p in make_model(*SIZES["540k"]).net.parameters())
    print(f"4 sghmc chains, {params} parameters, {args.epochs} epochs × {len(x) // B} steps; "
          f"uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    rows = []
    for label, workers, threads in [("workers=1, 1 thread", 1, 1), ("workers=2 (1 thread each)", 2, 1),
                                    ("workers=1, 2 threads", 1, 2)][:None if args.two_threads else 2]:
        torch.set_num_threads(threads)
        rows.append((label, *run(workers, args.epochs, x, y)))
    print("| run | wall time (s) | vs workers=1, 1 thread | sampling time summed over groups (s) |\n"
          "| --- | --- | --- | --- |")
    for label, t, sampling in rows:
        print(f"| {label} | {t:.1f} | {t / rows[0][1]:.2f}× | {sampling:.1f} |")
    print(f"uptime after: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
