"""NUTS and HMC on the (tempered) posterior, full batch.

HMC simulates Hamiltonian dynamics for H(w, r) = −log p̃(D, w) + ½ rᵀM⁻¹r with a leapfrog
integrator and a Metropolis correction (Neal 2011); NUTS (Hoffman & Gelman 2014) picks the
trajectory length adaptively. Step size (dual averaging) and a diagonal mass matrix are
adapted during warmup. The potential is the negative log density of the Pyro trace of
[`BayesianModel`][pyro_bdl.BayesianModel], so temperature enters as ``poutine.scale`` (1/T).

``backend="numpyro"`` translates the network to JAX and runs NumPyro's compiled kernels
(`pyro_bdl.infer.mcmc.numpyro`). ``backend="pyro"`` runs Pyro's kernels on the torch
network. Chains run one after another
with seeds ``spawn_seeds(seed, num_chains)`` (`pyro_bdl._util.random.spawn_seeds`), each from
its own initial point, so they are independent — also of the chains of any other seed — and
reproducible. Per-draw statistics are recorded for diagnostics: ``diverging``,
``accept_prob``, ``step_size``, ``num_steps`` (leapfrog steps), ``tree_depth`` and
``energy`` (the Hamiltonian at the start of the transition).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

from ..._util.checks import check_float, check_int
from ...model.bayesian_model import BayesianModel
from ...posterior.samples import SamplesPosterior
from ..data import FitData
from ..registry import register
from .init import check_run
from .numpyro import run_numpyro_mcmc
from .pyro import run_mcmc

DEFAULT_TRAJECTORY_LENGTH = math.pi / 2  # HMC's λ = ε·L when neither num_steps nor trajectory_length is given


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
    return run_numpyro_mcmc(model, data, kernel_name, kernel_options=kernel_options, chain_method=chain_method, **run)


@register("nuts")
def fit_nuts(model: BayesianModel, data: FitData, *, seed: int, progress: Optional[bool], num_samples: int = 500,
             warmup: int = 500, num_chains: int = 1, backend: str = "pyro", init: Any = "prior",
             target_accept: float = 0.8, max_tree_depth: int = 10, step_size: float = 1.0,
             chain_method: Optional[str] = None) -> SamplesPosterior:
    """No-U-Turn sampler (Hoffman & Gelman 2014) on the full-batch tempered posterior.

    Args:
        num_samples, warmup: draws kept and adaptation steps, per chain.
        num_chains: independent chains (Pyro: seeds ``spawn_seeds(seed, num_chains)``; NumPyro: keys split from ``seed``).
        backend: ``"pyro"`` (Pyro's NUTS on the torch network) or ``"numpyro"`` (the network
            translated to JAX and NumPyro's compiled NUTS: much faster; same model, site
            names and posterior type; see `pyro_bdl.infer.mcmc.numpyro`).
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
            num_steps: Optional[int] = None, trajectory_length: Optional[float] = None, step_size: float = 0.1,
            target_accept: float = 0.8, chain_method: Optional[str] = None) -> SamplesPosterior:
    """Hamiltonian Monte Carlo (Neal 2011): each transition simulates the dynamics for L leapfrog
    steps of size ε and accepts with probability min(1, exp(H(w, r) − H(w', r'))).

    The trajectory is set by one of two options (giving both is an error):

    Args:
        num_steps: L, exactly this many leapfrog steps per transition on both backends, whatever
            the step size adaptation does (so the trajectory length ε·L changes with ε).
        trajectory_length: λ = ε·L kept fixed, with L = max(1, ⌊λ / ε⌋) steps for the adapted ε.
            Default (when ``num_steps`` is not given either) `DEFAULT_TRAJECTORY_LENGTH`
            = π/2: with the adapted (diagonal) mass matrix the posterior is roughly whitened, and
            a quarter period of a unit Gaussian's dynamics maps position to momentum, so
            successive draws decorrelate fastest (Neal 2011, on choosing the trajectory length);
            a fixed L instead can land near a multiple of the period and mix badly.
        step_size: the initial ε (adapted during warmup by dual averaging towards ``target_accept``).

    Other arguments (``backend="numpyro"`` included) as for `fit_nuts`.
    """
    if num_steps is not None and trajectory_length is not None:
        raise ValueError("give num_steps (a fixed number of leapfrog steps) or trajectory_length (a fixed "
                         "step_size × num_steps, the number of steps following the adapted step size), not both")
    if num_steps is not None:
        num_steps = check_int(num_steps, "num_steps", 1)
    else:
        trajectory_length = check_float(DEFAULT_TRAJECTORY_LENGTH if trajectory_length is None else trajectory_length,
                                        "trajectory_length", positive=True)
    return _dispatch(model, data, "hmc", backend, chain_method,
                     kernel_options=dict(num_steps=num_steps, trajectory_length=trajectory_length, step_size=step_size,
                                         target_accept_prob=target_accept),
                     seed=seed, progress=progress, num_samples=num_samples, warmup=warmup, num_chains=num_chains,
                     init=init)
