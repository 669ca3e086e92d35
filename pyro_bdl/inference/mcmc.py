"""NUTS and HMC on the (tempered) posterior, full batch.

HMC simulates Hamiltonian dynamics for H(w, r) = −log p̃(D, w) + ½ rᵀM⁻¹r with a leapfrog
integrator and a Metropolis correction (Neal 2011); NUTS (Hoffman & Gelman 2014) picks the
trajectory length adaptively. Step size (dual averaging) and a diagonal mass matrix are
adapted during warmup. The potential is the negative log density of the Pyro trace of
[`BayesianModel`][pyro_bdl.BayesianModel], so temperature enters as ``poutine.scale`` (1/T).

``backend="numpyro"`` translates the network to JAX and runs NumPyro's compiled kernels
(`pyro_bdl.inference.numpyro_mcmc`). ``backend="pyro"`` runs Pyro's kernels on the torch
network. Chains run one after another
with seeds ``seed, seed + 1, ...``, each from its own initial point, so they are independent
and reproducible. Per-draw statistics are recorded for diagnostics: ``diverging``,
``accept_prob``, ``step_size``, ``num_steps`` (leapfrog steps), ``tree_depth`` and
``energy`` (the Hamiltonian at the start of the transition).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Union

import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC
from pyro.infer.autoguide import init_to_value
from pyro.infer.mcmc import HMC, NUTS

from ..lifting import BayesianModel
from ..posterior import SamplesPosterior
from .. import progress as progress_bars
from .data import FitData
from .registry import register

INITS = ("prior", "net", "map")


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
    pass


def initial_point(model: BayesianModel, data: FitData, init: Union[str, Dict[str, torch.Tensor]], seed: int,
                  progress: Optional[bool]) -> Dict[str, torch.Tensor]:
    """Where a chain starts: a prior draw (default, overdispersed), the network's weights, the MAP, or given values."""
    if isinstance(init, dict):
        return {k: torch.as_tensor(v) for k, v in init.items()}
    if init == "prior":
        x, _ = data.full()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return model.prior_sample(x)
    if init == "net":
        return model.initial_values()
    if init == "map":
        from .svi import fit_map

        post = fit_map(model, data, seed=seed, progress=progress)
        return {k: v[0, 0] for k, v in post.samples.items()}
    raise ValueError(f"unknown init {init!r}; choose one of {INITS} or pass a dict of initial values")


def check_run(data: FitData, kernel_name: str, num_samples: int, warmup: int, num_chains: int, init: Any) -> None:
    """Validate the options shared by both backends (before any work)."""
    if data.minibatched:
        raise ValueError(f"{kernel_name} needs the full data set (exact gradients); drop batch_size or use "
                         "method='sgld'/'sghmc' for minibatch sampling")
    for name, value in (("num_samples", num_samples), ("warmup", warmup), ("num_chains", num_chains)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "warmup" else 1):
            raise ValueError(f"{name} must be a {'non-negative' if name == 'warmup' else 'positive'} integer, got {value!r}")
    if not isinstance(init, dict) and init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {INITS} or pass a dict of initial values")


def run_mcmc(model: BayesianModel, data: FitData, kernel_name: str, *, seed: int, progress: Optional[bool],
             num_samples: int, warmup: int, num_chains: int, init: Any, kernel_options: Dict[str, Any]) -> SamplesPosterior:
    check_run(data, kernel_name, num_samples, warmup, num_chains, init)
    x, y = data.full()
    Kernel = RecordingNUTS if kernel_name == "nuts" else RecordingHMC
    chains, stats = [], []
    for c in range(num_chains):
        start = initial_point(model, data, init, seed + c, progress)
        pyro.set_rng_seed(seed + c)
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


BACKENDS = ("pyro", "numpyro")


def _dispatch(model: BayesianModel, data: FitData, kernel_name: str, backend: str, chain_method: Optional[str],
              kernel_options: Dict[str, Any], **run: Any) -> SamplesPosterior:
    """Validate, then run the chosen backend's sampler (every check happens before sampling)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: {BACKENDS} ('numpyro' needs jax and numpyro: "
                         "pip install pyro_bdl[jax])")
    check_run(data, kernel_name, run["num_samples"], run["warmup"], run["num_chains"], run["init"])
    if backend == "pyro":
        if chain_method is not None:
            raise ValueError("chain_method applies to backend='numpyro'; the Pyro backend runs chains one after another")
        return run_mcmc(model, data, kernel_name, kernel_options=kernel_options, **run)
    try:
        from .numpyro_mcmc import run_numpyro_mcmc
    except ImportError as err:  # pragma: no cover - jax is an optional extra
        raise ImportError(f"backend='numpyro' needs jax and numpyro ({err}); pip install pyro_bdl[jax]") from err
    return run_numpyro_mcmc(model, data, kernel_name, kernel_options=kernel_options, chain_method=chain_method, **run)


@register("nuts")
def fit_nuts(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool], num_samples: int = 500,
             warmup: int = 500, num_chains: int = 1, backend: str = "pyro", init: Any = "prior",
             target_accept: float = 0.8, max_tree_depth: int = 10, step_size: float = 1.0,
             chain_method: Optional[str] = None) -> SamplesPosterior:
    """No-U-Turn sampler (Hoffman & Gelman 2014) on the full-batch tempered posterior.

    Args:
        num_samples, warmup: draws kept and adaptation steps, per chain.
        num_chains: independent chains (Pyro: seeds ``seed + c``; NumPyro: keys split from ``seed``).
        backend: ``"pyro"`` (Pyro's NUTS on the torch network) or ``"numpyro"`` (the network
            translated to JAX and NumPyro's compiled NUTS: much faster; same model, site
            names and posterior type; see `pyro_bdl.inference.numpyro_mcmc`).
        init: ``"prior"`` (a prior draw per chain), ``"net"`` (the network's weights), ``"map"``,
            or a dict of initial values.
        target_accept, max_tree_depth, step_size: NUTS settings (step size is adapted).
        chain_method: NumPyro backend only: ``"sequential"`` (default; one compiled sampler, chain
            after chain) or ``"vectorized"`` (all chains in one vmapped program, in lockstep).

    Pyro's ``jit_compile`` is not offered: the TorchScript tracer cannot trace
    ``torch.func.functional_call``. For speed use ``backend="numpyro"``.
    """
    return _dispatch(model, data, "nuts", backend, chain_method,
                     kernel_options=dict(target_accept_prob=target_accept, max_tree_depth=max_tree_depth,
                                         step_size=step_size),
                     seed=seed, progress=progress, num_samples=num_samples, warmup=warmup, num_chains=num_chains,
                     init=init)


@register("hmc")
def fit_hmc(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool], num_samples: int = 500,
            warmup: int = 500, num_chains: int = 1, backend: str = "pyro", init: Any = "prior",
            num_steps: int = 16, step_size: float = 0.1, target_accept: float = 0.8,
            chain_method: Optional[str] = None) -> SamplesPosterior:
    """Hamiltonian Monte Carlo with ``num_steps`` leapfrog steps per transition (Neal 2011).

    The step size is adapted during warmup (trajectory length scales with it); other
    arguments (``backend="numpyro"`` included) as for `fit_nuts`.
    """
    return _dispatch(model, data, "hmc", backend, chain_method,
                     kernel_options=dict(num_steps=num_steps, step_size=step_size, target_accept_prob=target_accept),
                     seed=seed, progress=progress, num_samples=num_samples, warmup=warmup, num_chains=num_chains,
                     init=init)
