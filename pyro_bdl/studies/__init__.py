"""Temperature / cold-posterior studies: one config, a grid of fits, a tidy table and plots.

A study runs every cell of temperature × method × seed × data augmentation — each cell one
[`pyro_bdl.fit`][pyro_bdl.fit] plus a test-set evaluation — locally (sequentially or in a process pool) or
as Ray tasks, saves each cell as it finishes, and rebuilds ``results.csv``, plots of each metric
against T and a markdown report from the saved cells. From the shell: ``pyro-bdl study study.toml``;
from Python::

    import pyro_bdl as bdl
    table = bdl.studies.TemperatureStudy("study.toml").run()

Background: Wenzel et al. (2020), "How good is the Bayes posterior in deep neural networks really?"
(the cold posterior effect); Izmailov et al. (2021), "What are Bayesian neural network posteriors
really like?" (data augmentation as a cause).
"""
from .cells import cell_key, cell_specs, read_cells, reference_diagnostics, reference_specs, run_cell, write_cell
from .config import (AUGMENTATIONS, SCHEMA, DataConfig, EvaluationConfig, InferenceConfig, ModelConfig,
                     ReferenceConfig, StudyConfig, StudyConfigError, check_network, load_config)
from .executors import LocalExecutor, RayExecutor, make_executor
from .report import (comparison_table, plot_agreement, plot_metric, plot_shift, results_table, summarise,
                     write_report)
from .study import StudyError, StudyInterrupted, TemperatureStudy, run_study
from ..examples.bundled import example_config, example_configs


__all__ = [
    "TemperatureStudy",
    "StudyConfig",
    "StudyConfigError",
    "StudyError",
    "StudyInterrupted",
    "DataConfig",
    "ModelConfig",
    "InferenceConfig",
    "ReferenceConfig",
    "EvaluationConfig",
    "SCHEMA",
    "check_network",
    "load_config",
    "run_study",
    "cell_specs",
    "cell_key",
    "reference_specs",
    "reference_diagnostics",
    "run_cell",
    "write_cell",
    "read_cells",
    "LocalExecutor",
    "RayExecutor",
    "make_executor",
    "results_table",
    "summarise",
    "plot_metric",
    "plot_agreement",
    "plot_shift",
    "comparison_table",
    "write_report",
    "example_config",
    "example_configs",
    "AUGMENTATIONS",
]
