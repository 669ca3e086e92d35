"""Where a study's cells run: in this process, in a local process pool, or as Ray tasks.

Every executor takes cell specs and yields ``(spec, record, error)`` as each cell finishes
(``error`` is a traceback string when the cell raised, else None). The study writes each record
the moment it arrives, in the driver process, so a cluster needs no shared file system.

* [`LocalExecutor`][pyro_bdl.studies.LocalExecutor] — ``workers=1``: one cell after another in this process (the default);
  ``workers=N``: a pool of N spawned processes (from a script, keep the study under
  ``if __name__ == "__main__":``, as for any spawned process pool).
* [`RayExecutor`][pyro_bdl.studies.RayExecutor] — each cell a Ray task with its CPU/GPU request
  (``pip install pyro_bdl[ray]``); ``address="auto"`` joins a running cluster, ``None`` starts
  a local Ray instance (or uses the one already initialised in this process).
"""
from __future__ import annotations

import multiprocessing
import os
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from .cells import run_cell
from .._util.checks import check_int

Result = Tuple[Dict[str, Any], Optional[Dict[str, Any]], Optional[str]]

EXECUTORS = ("local", "ray")


def run_cell_safely(spec: Dict[str, Any]) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """``(record, None)``, or ``(None, traceback)`` when the cell raised (a plain string crosses
    process boundaries even when the exception itself does not pickle)."""
    try:
        return run_cell(spec), None
    except Exception:  # noqa: BLE001 — one failed cell must not lose the others
        return None, traceback.format_exc()


def _exit_with_driver(driver_pid: int, interval: float = 0.5) -> None:
    """Pool-worker initializer: a daemon thread ends this worker as soon as its driver is gone.

    A pool worker otherwise waits forever for work from a driver that was killed (SIGKILL leaves no
    chance to shut the pool down); once every worker has exited, multiprocessing's resource tracker
    sees its pipe close and exits too."""
    def watch() -> None:
        while True:
            if os.getppid() != driver_pid:  # re-parented: the driver died
                os._exit(1)
            time.sleep(interval)

    threading.Thread(target=watch, name="pyro_bdl-driver-watch", daemon=True).start()


class Executor:
    """Runs cell specs; `run` yields ``(spec, record, error)`` in order of completion."""

    def run(self, specs: Sequence[Dict[str, Any]]) -> Iterator[Result]:
        """Run the cells ``specs``, yielding ``(spec, record, error)`` as each finishes (in any order)."""
        raise NotImplementedError

    def describe(self) -> str:
        """A one-line description of where the cells run, for the study's log."""
        return type(self).__name__


class LocalExecutor(Executor):
    """Cells in this process (``workers=1``) or in ``workers`` spawned processes."""

    def __init__(self, workers: int = 1):
        check_int(workers, 'workers', 1)
        self.workers = workers

    def describe(self) -> str:
        """``"sequential, in this process"`` or ``"local pool of N processes"``."""
        return "sequential, in this process" if self.workers == 1 else f"local pool of {self.workers} processes"

    def run(self, specs: Sequence[Dict[str, Any]]) -> Iterator[Result]:
        """Run the cells here one by one, or in the pool; yield ``(spec, record, error)`` as each finishes."""
        if self.workers == 1 or len(specs) <= 1:
            for spec in specs:
                record, error = run_cell_safely(spec)
                yield spec, record, error
            return
        ctx = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(specs)), mp_context=ctx,
                                   initializer=_exit_with_driver, initargs=(os.getpid(),))
        finished = False
        try:
            pending = {pool.submit(run_cell_safely, spec): spec for spec in specs}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    spec = pending.pop(future)
                    try:
                        record, error = future.result()
                    except BrokenProcessPool:
                        record, error = None, traceback.format_exc() + (
                            "BrokenProcessPool: a worker process died: killed, out of memory, or started from a "
                            "script whose study code is not under `if __name__ == \"__main__\":` (needed with "
                            "workers > 1)")
                    except Exception:  # noqa: BLE001
                        record, error = None, traceback.format_exc()
                    yield spec, record, error
            finished = True
        finally:
            if not finished:
                # Ctrl-C (or the caller stopped early): end the running cells now instead of waiting for them.
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.terminate()
            pool.shutdown(wait=finished, cancel_futures=True)


def _pyro_bdl_root() -> str:
    # pyro_bdl/studies/executors.py -> the folder holding the pyro_bdl package
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class RayExecutor(Executor):
    """Each cell a Ray task requesting ``cpus_per_cell`` CPUs and ``gpus_per_cell`` GPUs.

    Args:
        address: ``"auto"`` or ``"ray://host:10001"`` to join a cluster (whose nodes must have
            pyro_bdl, and any network factory the config names, installed); ``None`` uses the Ray
            instance already initialised in this process or starts a local one.
        cpus_per_cell, gpus_per_cell: each task's resource request.
        init_kwargs: extra arguments for ``ray.init`` (e.g. ``runtime_env``).
    """

    def __init__(self, address: Optional[str] = None, cpus_per_cell: float = 1, gpus_per_cell: float = 0,
                 init_kwargs: Optional[Dict[str, Any]] = None):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError("the ray executor needs Ray: pip install 'pyro_bdl[ray]' (or pip install ray)") from None
        self.address = address
        self.cpus_per_cell = cpus_per_cell
        self.gpus_per_cell = gpus_per_cell
        self.init_kwargs = dict(init_kwargs or {})

    def describe(self) -> str:
        """The cluster address and the per-cell resource request."""
        where = self.address or "local Ray instance"
        return f"Ray ({where}), {self.cpus_per_cell} CPU / {self.gpus_per_cell} GPU per cell"

    def run(self, specs: Sequence[Dict[str, Any]]) -> Iterator[Result]:
        """Submit one task per cell, yield ``(spec, record, error)`` as tasks finish (``ray.wait``);
        on interruption the unfinished tasks are cancelled, and a Ray started here is shut down."""
        import ray

        started = False
        if not ray.is_initialized():
            kwargs = dict(self.init_kwargs)
            if self.address is None:
                # A local instance: its workers import this very pyro_bdl (a source checkout too).
                env = kwargs.setdefault("runtime_env", {}).setdefault("env_vars", {})
                paths = [_pyro_bdl_root()] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
                env.setdefault("PYTHONPATH", os.pathsep.join(paths))
                kwargs.setdefault("include_dashboard", False)
            ray.init(address=self.address, **kwargs)
            started = True
        task = ray.remote(run_cell_safely).options(num_cpus=self.cpus_per_cell, num_gpus=self.gpus_per_cell,
                                                   max_retries=0)
        refs: Dict[Any, Dict[str, Any]] = {}
        try:
            refs = {task.remote(spec): spec for spec in specs}
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    spec = refs.pop(ref)
                    try:
                        record, error = ray.get(ref)
                    except Exception:  # noqa: BLE001 — a worker that died
                        record, error = None, traceback.format_exc()
                    yield spec, record, error
        finally:
            for ref in refs:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()


def make_executor(executor: str = "local", workers: int = 1, address: Optional[str] = None,
                  cpus_per_cell: float = 1, gpus_per_cell: float = 0) -> Executor:
    """An executor by name: ``"local"`` (``workers`` processes) or ``"ray"`` (at ``address``)."""
    if isinstance(executor, Executor):
        return executor
    if executor == "local":
        if address is not None:
            raise ValueError("address is for the ray executor; use executor='ray' (--executor ray)")
        return LocalExecutor(workers)
    if executor == "ray":
        if workers != 1:
            raise ValueError("workers is for the local executor; Ray runs as many cells at once as the cluster "
                             "has resources for (set cpus_per_cell / gpus_per_cell instead)")
        return RayExecutor(address, cpus_per_cell, gpus_per_cell)
    raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")


__all__: List[str] = ["Executor", "LocalExecutor", "RayExecutor", "make_executor", "run_cell_safely", "EXECUTORS"]
