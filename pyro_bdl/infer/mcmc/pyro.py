"""The Pyro backend of NUTS/HMC: Pyro's kernels on the torch network, one chain after another.

Each chain starts from its own initial point (`initial_point`); the kernels
record per-transition statistics for diagnostics: ``diverging``, ``accept_prob``, ``step_size``,
``num_steps`` (leapfrog steps), ``tree_depth`` and ``energy`` (the Hamiltonian at the start of the transition).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import pyro
import torch
from pyro.infer import MCMC
from pyro.infer.autoguide import init_to_value
from pyro.infer.mcmc import HMC, NUTS

from ..._util import progress as progress_bars
from ..._util.random import spawn_seeds
from ...model.bayesian_model import BayesianModel
from ...posterior.samples import SamplesPosterior
from ..data import FitData
from .init import check_run, initial_point

class _Recording:
    """Mixin for Pyro's HMC/NUTS kernels that records per-transition statistics."""

    def setup(self, warmup_steps, *args, **kwargs):
        self.records = []
        super().setup(warmup_steps, *args, **kwargs)
        inner = self.potential_fn

        def counting(z):
            self._grad_evals += 1
            return inner(z)

        self.potential_fn = counting

    def _sample_r(self, name):
        r, r_unscaled = super()._sample_r(name)
        self._energy = float(self._potential_energy_last + self._kinetic_energy(r_unscaled))
        return r, r_unscaled

    def sample(self, params):
        self._grad_evals = 0
        n_div = len(self._divergences)
        step_size = self.step_size
        out = super().sample(params)
        steps = self._grad_evals
        self.records.append({
            "diverging": len(self._divergences) > n_div,
            "accept_prob": float(self._mean_accept_prob),
            "step_size": float(step_size),
            "num_steps": steps,
            "tree_depth": math.ceil(math.log2(steps + 1)) if steps else 0,
            "energy": self._energy,
        })
        return out


class RecordingNUTS(_Recording, NUTS):
    pass


class RecordingHMC(_Recording, HMC):
    """Pyro's HMC taking exactly ``num_steps`` leapfrog steps per transition.

    Pyro's own HMC turns ``num_steps`` into a fixed trajectory length step_size × num_steps and
    takes ⌊length / step_size⌋ steps for the *adapted* step size — 80 to 640 steps for
    ``num_steps=5`` when adaptation shrinks the step size. Here the count stays as asked unless a
    ``trajectory_length`` is given instead.
    """

    def __init__(self, *args: Any, num_steps: Optional[int] = None, trajectory_length: Optional[float] = None,
                 **kwargs: Any):
        super().__init__(*args, num_steps=num_steps, trajectory_length=trajectory_length, **kwargs)
        self._fixed_steps = num_steps if trajectory_length is None else None

    @property
    def num_steps(self) -> int:
        if self._fixed_steps is not None:
            return self._fixed_steps
        return max(1, int(self.trajectory_length / self.step_size))


def run_mcmc(model: BayesianModel, data: FitData, kernel_name: str, *, seed: int, progress: Optional[bool],
             num_samples: int, warmup: int, num_chains: int, init: Any, kernel_options: Dict[str, Any]) -> SamplesPosterior:
    check_run(data, kernel_name, num_samples, warmup, num_chains, init)
    x, y = data.full()
    Kernel = RecordingNUTS if kernel_name == "nuts" else RecordingHMC
    chains, stats = [], []
    for chain_seed in spawn_seeds(seed, num_chains):  # independent of every other run's chains
        start = initial_point(model, data, init, chain_seed, progress)
        pyro.set_rng_seed(chain_seed)
        kernel = Kernel(model, init_strategy=init_to_value(values=start), **kernel_options)
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=warmup,
                    disable_progbar=not progress_bars.enabled(progress))
        mcmc.run(x, y, data.dataset_size)
        chains.append(mcmc.get_samples())
        records = kernel.records[warmup:]
        stats.append({k: torch.tensor([r[k] for r in records]) for k in records[0]})
    samples = {k: torch.stack([ch[k] for ch in chains]) for k in chains[0]}
    sample_stats = {k: torch.stack([s[k] for s in stats]) for k in stats[0]}
    return SamplesPosterior(model, samples, kernel_name, sample_stats=sample_stats,
                            info={"backend": "pyro", "warmup": warmup})
