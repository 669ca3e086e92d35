"""``TemperatureStudy``: run a grid of cells, keep what finished, rebuild the table and plots."""
from __future__ import annotations

import json
import os
import time
import warnings
from typing import Any, Dict, List, Mapping, Optional, Union

import pandas as pd

from .._util import io
from .cells import cell_key, cell_path, cell_specs, read_cell, read_cells, write_cell
from ..evaluate.diagnostics.convergence import ConvergenceWarning
from .config import StudyConfig, check_network, load_config
from .executors import Executor, make_executor
from .report import results_table, write_report


class StudyError(RuntimeError):
    """Some cells failed; the others are saved and in the report. ``failed`` maps cell key → traceback."""

    def __init__(self, failed: Dict[str, str], total: int):
        self.failed = dict(failed)
        lines = "\n".join(f"  - {k}: {v.strip().splitlines()[-1] if v.strip() else '?'}" for k, v in failed.items())
        super().__init__(f"{len(failed)} of {total} cells failed (the others are saved; rerun to retry):\n{lines}")


class StudyInterrupted(KeyboardInterrupt):
    """The run was interrupted (Ctrl-C); the cells finished so far are saved and a rerun resumes.

    A ``KeyboardInterrupt``, so code that stops on Ctrl-C still stops; ``finished`` and ``total``
    count the study's saved cells and all its cells.
    """

    def __init__(self, finished: int, total: int):
        self.finished, self.total = finished, total
        super().__init__(f"interrupted after {finished} of {total} cells; rerun the same command to resume "
                         "(finished cells are saved and skipped)")


class TemperatureStudy:
    """A temperature / cold-posterior study: every cell of temperature × method × seed × augmentation
    is one [`pyro_bdl.fit`][pyro_bdl.fit] plus a test-set evaluation (Wenzel et al. 2020; Izmailov et al. 2021).

    Args:
        config: a [`StudyConfig`][pyro_bdl.studies.StudyConfig], a path to a TOML file, or the same nested dict
            (see `pyro_bdl.studies.config` for every key).
        output_dir: overrides ``[output] dir``.
        executor: ``"local"`` (default) or ``"ray"``, or an `Executor`.
        workers: processes of the local executor (1: sequential, in this process).
        address: the Ray cluster (``"auto"``); None starts or uses a local Ray instance.
        progress: print a line per finished cell.

    ``run()`` skips the cells whose files already exist, runs the rest, writes each one the moment
    it finishes (``<output_dir>/cells/<key>.json``, atomically), then rebuilds ``results.csv``,
    ``plots/<metric>_vs_T.png`` and ``report.md`` from the cell files and returns the table.
    Killing a run loses only the cells in progress; running it again finishes the rest.

    Example::

        study = bdl.studies.TemperatureStudy({
            "data": {"name": "digits", "augment": [False, True], "train_size": 1000},
            "model": {"network": "mlp", "hidden": [128]},
            "inference": {"methods": ["svi", "map"], "epochs": 50, "batch_size": 100},
            "grid": {"temperature": [0.01, 0.1, 1.0], "seeds": [0, 1]},
            "output": {"dir": "runs/cold"}})
        table = study.run()        # pandas DataFrame, one row per cell
    """

    def __init__(self, config: Union[StudyConfig, Mapping[str, Any], str], *, output_dir: Optional[str] = None,
                 executor: Union[str, Executor] = "local", workers: int = 1, address: Optional[str] = None,
                 progress: bool = True):
        if isinstance(config, StudyConfig):
            self.config = config
        elif isinstance(config, (str, os.PathLike)):
            self.config = load_config(os.fspath(config))
        elif isinstance(config, Mapping):
            self.config = StudyConfig.from_dict(config)
        else:
            raise TypeError(f"config must be a StudyConfig, a TOML path or a dict, got {type(config).__name__}")
        self.output_dir = output_dir or self.config.output_dir
        self.executor = make_executor(executor, workers, address, self.config.cpus_per_cell, self.config.gpus_per_cell)
        self.progress = progress
        self.specs: List[Dict[str, Any]] = cell_specs(self.config)

    # -- state on disk ----------------------------------------------------------------------
    def finished(self) -> List[Dict[str, Any]]:
        """Specs of the cells whose files exist."""
        return [s for s in self.specs if read_cell(cell_path(self.output_dir, s)) is not None]

    def pending(self) -> List[Dict[str, Any]]:
        """Specs of the cells still to run."""
        return [s for s in self.specs if read_cell(cell_path(self.output_dir, s)) is None]

    def results(self) -> pd.DataFrame:
        """The tidy table of this study's finished cells, read from their files."""
        return results_table(read_cells(self.output_dir, self.specs))

    def report(self, failed: Optional[Dict[str, str]] = None) -> pd.DataFrame:
        """Rebuild ``results.csv``, the plots and ``report.md`` from the cell files; return the table."""
        df = self.results()
        write_report(df, self.output_dir, title=f"Temperature study: {self.config.name}",
                     total_cells=len(self.specs), failed=failed)
        return df

    # -- running ------------------------------------------------------------------------------
    def _log(self, message: str) -> None:
        if self.progress:
            print(message, flush=True)

    def _write_config(self) -> None:
        path = os.path.join(self.output_dir, "study.json")
        blob = json.dumps({"name": self.config.name, "cells": [cell_key(s) for s in self.specs],
                           "config": _as_json(self.config)}, indent=1)

        def write(tmp: str) -> None:
            with open(tmp, "w") as f:
                f.write(blob)

        io.atomic_write(path, write, suffix=".json")

    def _reference_figures(self, record: Dict[str, Any]) -> None:
        """Log a reference cell's convergence figures; warn loudly (always, progress or not) when it
        has not converged."""
        ref, spec = record["reference"], record["spec"]
        self._log(f"  reference {spec['method']} T={spec['temperature']:g}: max function-space R-hat "
                  f"{ref['r_hat_max']:.4f}, min bulk ESS {ref['ess_bulk_min']:.0f}, {ref['num_divergences']} "
                  f"divergences, agreement of its two halves {ref['self_agreement']:.3f}")
        if not ref["converged"]:
            message = (f"the reference {spec['method']} at T={spec['temperature']:g} has NOT converged: max "
                       f"function-space R-hat {ref['r_hat_max']:.4f} > {ref['rhat_threshold']} "
                       f"({100 * ref['r_hat_fraction_above']:.1f}% of test predictions above it). Agreement and "
                       "TV against it are marked (!) in the report; run more chains, warmup and draws.")
            print(f"WARNING: {message}", flush=True)
            warnings.warn(message, ConvergenceWarning, stacklevel=2)

    def run(self, raise_on_failure: bool = True) -> pd.DataFrame:
        """Run the unfinished cells and return the full table (see the class docstring).

        Cells that raise are reported (and listed in ``report.md``) after the others have run;
        then [`StudyError`][pyro_bdl.studies.StudyError] is raised unless ``raise_on_failure=False``.

        The run holds ``<output_dir>/.lock``: a second study on the same folder stops at once with
        `FolderLocked` (a lock left by a killed run is taken over), and
        temporary ``.tmp-*`` files a killed run left behind are removed first.

        Ctrl-C stops the run: the cells in progress are dropped (nothing half-written: each cell
        file is written atomically) and [`StudyInterrupted`][pyro_bdl.studies.StudyInterrupted] says how many cells are saved;
        a rerun skips those and numbers the rest on from there (``[k+1/n]``).
        """
        if self.pending():
            check_network(self.config)  # imports the network factory: before any file is written
        with io.folder_lock(self.output_dir, "study"):
            # Under the lock no other study writes here: temporaries are leftovers of a killed run.
            io.remove_stale_temporaries(self.output_dir)
            return self._run(raise_on_failure)

    def _run(self, raise_on_failure: bool) -> pd.DataFrame:
        todo = self.pending()
        total = len(self.specs)
        already = total - len(todo)
        os.makedirs(os.path.join(self.output_dir, "cells"), exist_ok=True)
        self._write_config()
        n_ref = sum(s.get("role") == "reference" for s in self.specs)
        self._log(f"study {self.config.name!r}: {total} cells ({len(self.config.temperatures)} temperatures × "
                  f"{len(self.config.inference.methods)} methods × {len(self.config.seeds)} seeds × "
                  f"{len(self.config.data.augment)} augmentation settings"
                  + (f", plus {n_ref} reference cells" if n_ref else "") + f") in {self.output_dir}")
        if len(todo) < total:
            self._log(f"  {total - len(todo)} cells already finished, skipped")
        failed: Dict[str, str] = {}
        if todo:
            self._log(f"  running {len(todo)} cells: {self.executor.describe()}")
        start = time.perf_counter()
        saved = already
        cells = self.executor.run(todo)
        try:
            # Cells are numbered over the whole study, so a resumed run goes on from [already + 1/total].
            for done, (spec, record, error) in enumerate(cells, already + 1):
                key = cell_key(spec)
                head = (f"[{done}/{total}] {'reference ' if spec.get('role') == 'reference' else ''}"
                        f"{spec['method']} T={spec['temperature']:g} seed={spec['seed']} "
                        f"augment={spec['augment']}")
                if record is None:
                    failed[key] = error or ""
                    last = (error or "").strip().splitlines()[-1:] or ["?"]
                    self._log(f"{head}: FAILED ({last[0]})")
                    continue
                write_cell(self.output_dir, record)
                saved += 1
                if "reference" in record:
                    self._reference_figures(record)
                scores = "  ".join(f"{k} {v:.4f}" for k, v in record["metrics"].items())
                self._log(f"{head}: {scores}  ({record['fit_seconds']:.1f} s fit, "
                          f"{time.perf_counter() - start:.0f} s elapsed)")
        except KeyboardInterrupt:
            cells.close()  # stop the executor's workers before reporting
            raise StudyInterrupted(saved, total) from None
        df = self.report(failed)
        self._log(f"  table: {os.path.join(self.output_dir, 'results.csv')}; plots: "
                  f"{os.path.join(self.output_dir, 'plots')}; report: {os.path.join(self.output_dir, 'report.md')}")
        if failed and raise_on_failure:
            raise StudyError(failed, total)
        return df


def _as_json(config: StudyConfig) -> Dict[str, Any]:
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(config), default=str))


def run_study(config: Union[StudyConfig, Mapping[str, Any], str], **kwargs: Any) -> pd.DataFrame:
    """``TemperatureStudy(config, **kwargs).run()``."""
    return TemperatureStudy(config, **kwargs).run()


__all__ = ["TemperatureStudy", "StudyError", "StudyInterrupted", "run_study"]
