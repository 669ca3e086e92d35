"""Where MCMC chains start, and the run options both backends share (one init vocabulary)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Union

import torch

from ..._util.random import seeded
from ...model.bayesian_model import BayesianModel
from ..data import FitData
from ..map import fit_map
from ..._util.checks import check_int

INITS = ("prior", "net", "map")


def initial_point(model: BayesianModel, data: FitData, init: Union[str, Dict[str, torch.Tensor]], seed: int,
                  progress: Optional[bool]) -> Dict[str, torch.Tensor]:
    """Where a chain starts: a prior draw (default, overdispersed), the network's weights, the MAP, or given values."""
    if isinstance(init, dict):
        return model.as_values(init)
    if init == "prior":
        x, _ = data.full()
        with seeded(seed):
            return model.prior_sample(x)
    if init == "net":
        return model.initial_values()
    if init == "map":
        post = fit_map(model, data, seed=seed, progress=progress)
        return {k: v[0, 0] for k, v in post.samples.items()}
    raise ValueError(f"unknown init {init!r}; choose one of {INITS} or pass a dict of initial values")


def check_run(data: FitData, kernel_name: str, num_samples: int, warmup: int, num_chains: int, init: Any) -> None:
    """Validate the options shared by both backends (before any work)."""
    if data.minibatched:
        raise ValueError(f"{kernel_name} needs the full data set (exact gradients); drop batch_size or use "
                         "method='sgld'/'sghmc' for minibatch sampling")
    for name, value in (("num_samples", num_samples), ("warmup", warmup), ("num_chains", num_chains)):
        check_int(value, name, 0 if name == "warmup" else 1)
    if not isinstance(init, dict) and init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {INITS} or pass a dict of initial values")
