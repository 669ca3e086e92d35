"""NUTS and HMC on the NumPyro/JAX backend: ``fit(..., method="nuts", backend="numpyro")``.

The torch network is translated once into a JAX function and the model into a NumPyro
model with the same sites and the same tempered log density
([`NumPyroModel`][pyro_bdl.backends.NumPyroModel]); NumPyro's NUTS (Hoffman & Gelman 2014) or HMC
(Neal 2011) kernel then runs with step-size (dual averaging) and diagonal mass-matrix
adaptation during warmup, the whole chain compiled by XLA once (`sample_chains`). The samples come back as torch tensors keyed by
the Pyro site names, shape ``(chains, draws, ...)``, in a
[`SamplesPosterior`][pyro_bdl.SamplesPosterior], with the per-draw statistics of the Pyro
backend: ``diverging``, ``accept_prob`` (of that transition), ``step_size``, ``num_steps``
(leapfrog steps), ``tree_depth`` (⌈log₂(num_steps + 1)⌉, as the Pyro backend) and ``energy``
(NumPyro's Hamiltonian of the transition).

Everything that can fail — the translation of the network, priors and likelihood, the
initial values — fails before sampling starts; the translation is also checked against the
Pyro model (network outputs and log joint at the first chain's starting point).
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch

from ..._util import progress as progress_bars
from ...model.bayesian_model import BayesianModel
from ...posterior.samples import SamplesPosterior
from ..data import FitData
from .init import INITS, initial_point

CHAIN_METHODS = ("sequential", "vectorized")

_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


@contextlib.contextmanager
def compile_timer() -> Iterator[List[float]]:
    """Sum the seconds JAX spends tracing, lowering and compiling inside the block (``timer[0]``)."""
    import jax.monitoring

    total = [0.0]

    def listen(event: str, duration: float, **kwargs: Any) -> None:
        if event in _COMPILE_EVENTS:
            total[0] += duration

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield total
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def sample_chains(kernel: Any, model_args: tuple, rng_key: Any, num_chains: int, warmup: int, num_samples: int,
                  init_params: Optional[Dict[str, Any]], chain_method: str, progress: Optional[bool]):
    """Run ``num_chains`` chains of a NumPyro MCMC kernel; return ``(samples, stats)`` with leading dims (chains, draws).

    ``init_params``: unconstrained starting values with a leading chain dim, or ``None`` (the
    kernel's ``init_strategy``).

    This is ``numpyro.infer.MCMC``'s loop (``kernel.init``, then ``kernel.sample`` repeated:
    adaptation happens inside the kernel during the first ``warmup`` steps), written so that
    it compiles once: the initialisation of all chains is one jitted call, and one compiled
    sampler serves every chain (MCMC recompiles it for each chain when chains run
    sequentially). Samples are mapped back to the constrained space with
    ``numpyro.infer.util.constrain_fn``.
    """
    import jax
    import jax.numpy as jnp
    from jax import lax
    from numpyro.infer.util import constrain_fn

    keys = jax.random.split(rng_key, num_chains)

    def init_one(key, params):
        return kernel.init(key, warmup, params, model_args, {})

    states = jax.jit(jax.vmap(init_one))(keys, init_params)
    bad = ~np.isfinite(np.asarray(states.potential_energy))
    if bad.any():
        raise ValueError(f"the log density is not finite at the starting point of chain(s) {np.flatnonzero(bad).tolist()}; "
                         "pass another init ('prior', 'net', 'map' or a dict of values)")

    total = warmup + num_samples
    bar = progress_bars.bar(total * (num_chains if chain_method == "sequential" else 1), "nuts", progress)
    rate = max(1, total // 50)

    def tick(n):
        bar.update(int(n))

    def fields(s):
        return {"z": s.z, "diverging": s.diverging, "accept_prob": s.accept_prob,
                "step_size": s.adapt_state.step_size, "num_steps": s.num_steps, "energy": s.energy}

    def run(state):
        # One loop over warmup + draws: draw i is written at max(i - warmup, 0), so warmup writes land in
        # slot 0 and are overwritten by the first kept draw.
        buffers = jax.tree.map(lambda v: jnp.zeros((num_samples,) + jnp.shape(v), jnp.result_type(v)), fields(state))

        def body(i, carry):
            s, buf = carry
            s = kernel.sample(s, model_args, {})
            idx = jnp.maximum(i - warmup, 0)
            buf = jax.tree.map(lambda b, v: b.at[idx].set(v), buf, fields(s))
            if bar.disable is False:
                lax.cond((i + 1) % rate == 0, lambda: jax.debug.callback(tick, rate), lambda: None)
            return s, buf

        return lax.fori_loop(0, total, body, (state, buffers))[1]

    if chain_method == "vectorized":
        out = jax.jit(jax.vmap(run))(states)
    else:
        compiled = jax.jit(run).lower(jax.tree.map(lambda a: a[0], states)).compile()
        outs = [compiled(jax.tree.map(lambda a, c=c: a[c], states)) for c in range(num_chains)]
        out = jax.tree.map(lambda *a: jnp.stack(a), *outs)
    jax.block_until_ready(out)
    bar.close()
    constrain = jax.jit(jax.vmap(jax.vmap(lambda z: constrain_fn(kernel.model, model_args, {}, z))))
    samples = {k: np.array(v) for k, v in constrain(out.pop("z")).items()}
    return samples, {k: np.array(v) for k, v in out.items()}


def _check_init(init: Dict[str, Any], shapes: Dict[str, torch.Size]) -> Dict[str, torch.Tensor]:
    unknown = sorted(set(init) - set(shapes))
    if unknown:
        raise ValueError(f"init has values for {unknown}, which are not latent sites of the model; its sites are "
                         f"{list(shapes)}")
    out = {}
    for name, value in init.items():
        value = torch.as_tensor(value, dtype=torch.get_default_dtype())
        if tuple(value.shape) != tuple(shapes[name]):
            raise ValueError(f"init[{name!r}] has shape {tuple(value.shape)}, the site has shape {tuple(shapes[name])}")
        out[name] = value
    return out


def run_numpyro_mcmc(model: BayesianModel, data: FitData, kernel_name: str, *, seed: int, progress: Optional[bool],
                     num_samples: int, warmup: int, num_chains: int, init: Any, kernel_options: Dict[str, Any],
                     chain_method: Optional[str] = None) -> SamplesPosterior:
    """Run NumPyro's NUTS (``kernel_name="nuts"``) or HMC on ``model``; see `pyro_bdl.infer.mcmc.fit_nuts`.

    ``chain_method``: ``"sequential"`` (default: one compiled sampler run chain after chain) or
    ``"vectorized"`` (all chains in one vmapped program, in lockstep: every NUTS step costs
    as much as the longest trajectory among the chains).
    """
    chain_method = "sequential" if chain_method is None else chain_method
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {chain_method!r}")
    if not (isinstance(init, dict) or init in INITS):
        raise ValueError(f"unknown init {init!r}; choose one of {INITS} or pass a dict of initial values")

    try:  # jax and numpyro are an optional extra
        import jax
        import numpyro
        from numpyro.infer import HMC, NUTS
        from numpyro.infer.initialization import init_to_uniform, init_to_value
        from numpyro.infer.util import unconstrain_fn

        from ...backends import NumPyroModel, as_jax_array
    except ImportError as err:  # pragma: no cover
        raise ImportError(f"backend='numpyro' needs jax and numpyro ({err}); pip install pyro_bdl[jax]") from err

    x, y = data.full()
    nmodel = NumPyroModel(model)  # every translation error is raised here, before any sampling
    shapes = model.latent_shapes(x)
    xj, yj = as_jax_array(x), as_jax_array(y)

    # Starting points (torch): per chain for "prior" (seed + c); "net" and "map" are the same for all chains.
    init_params = None
    strategy = init_to_uniform
    if isinstance(init, dict):
        given = _check_init(init, shapes)
        strategy = init_to_value(values={k: as_jax_array(v) for k, v in given.items()})
        check_values = {**initial_point(model, data, "prior", seed, progress), **given}
    else:
        if init == "prior":
            starts = [initial_point(model, data, init, seed + c, progress) for c in range(num_chains)]
        else:
            starts = [initial_point(model, data, init, seed, progress)] * num_chains
        check_values = starts[0]
        stacked = {k: as_jax_array(torch.stack([s[k] for s in starts])) for k in nmodel.sites}
        init_params = jax.jit(jax.vmap(lambda v: unconstrain_fn(nmodel, (xj, yj), {}, v)))(stacked)
    nmodel.verify(check_values, x, y)

    if kernel_name == "nuts":
        kernel = NUTS(nmodel, init_strategy=strategy, **kernel_options)
    else:  # a fixed number of leapfrog steps, as in Pyro (NumPyro's default trajectory_length would override it)
        kernel = HMC(nmodel, init_strategy=strategy, trajectory_length=None, **kernel_options)
    start = time.perf_counter()
    with compile_timer() as compile_seconds:
        raw, extra = sample_chains(kernel, (xj, yj), jax.random.PRNGKey(seed), num_chains, warmup, num_samples,
                                   init_params, chain_method, progress)
    wall = time.perf_counter() - start

    dtype = torch.get_default_dtype()  # JAX computes in float32 unless x64 is enabled; match torch's default
    samples = {site: torch.from_numpy(np.array(raw[site])).to(dtype) for site in nmodel.sites}
    num_steps = torch.from_numpy(extra["num_steps"].astype(np.int64))
    sample_stats = {
        "diverging": torch.from_numpy(extra["diverging"].astype(bool)),
        "accept_prob": torch.from_numpy(extra["accept_prob"]),
        "step_size": torch.from_numpy(extra["step_size"]),
        "num_steps": num_steps,
        "tree_depth": torch.ceil(torch.log2(num_steps.double() + 1)).long(),
        "energy": torch.from_numpy(extra["energy"]),
    }
    info = {"backend": "numpyro", "warmup": warmup, "chain_method": chain_method, "wall_time": wall,
            "compile_time": compile_seconds[0], "numpyro_version": numpyro.__version__, "jax_version": jax.__version__}
    return SamplesPosterior(model, samples, kernel_name, sample_stats=sample_stats, info=info)
