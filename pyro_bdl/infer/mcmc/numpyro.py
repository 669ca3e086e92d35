"""NUTS and HMC on the NumPyro/JAX backend: ``fit(..., method="nuts", backend="numpyro")``.

The torch network is translated into a JAX function and the model into a NumPyro model with
the same sites and the same tempered log density ([`NumPyroModel`][pyro_bdl.backends.NumPyroModel]);
NumPyro's NUTS (Hoffman & Gelman 2014) or HMC (Neal 2011) kernel then runs with step-size
(dual averaging) and diagonal mass-matrix adaptation during warmup. The samples come back as
torch tensors keyed by the Pyro site names, shape ``(chains, draws, ...)``, in a
[`SamplesPosterior`][pyro_bdl.SamplesPosterior], with the per-draw statistics of the Pyro
backend: ``diverging``, ``accept_prob`` (of that transition), ``step_size``, ``num_steps``
(leapfrog steps), ``tree_depth`` (⌈log₂(num_steps + 1)⌉, as the Pyro backend) and ``energy``
(NumPyro's Hamiltonian of the transition).

**Compiled once per network.** A fit compiles two XLA programs (`Program`):
``prepare`` (map the starting points to the unconstrained space, initialise every chain's
kernel state, and compute what the translation check needs: the network's outputs on 8
rows and the log joint at chain 0's start) and ``run`` (warmup and draws of one chain, or of
all chains vmapped, and the map back to the constrained space). Both take every value as a
run-time argument — prior parameters, the tempering factors, the network's constants, the
data, the starting points and the PRNG keys — so they are cached (`program_cache`) by
what they bake in: the network's structure (graph, layer configuration, shapes), the sites,
the likelihood family and options, the kernel and its options, ``warmup``, ``num_samples``,
``chain_method`` and whether a progress bar is shown. A study that runs NUTS at six
temperatures and three seeds compiles once; ``info["compile_time"]`` is then ~0 and
``info["program_cached"]`` True.

``chain_method="sequential"`` (default) runs the one compiled sampler chain after chain;
``"vectorized"`` runs all chains in one vmapped program, in lockstep (each step costs the
longest trajectory among the chains): on one CPU device sequential was as fast or faster in
the benchmark (benchmarks/bench_numpyro.py), vectorised can win on a GPU.

Everything that can fail — the translation of the network, priors and likelihood, the
initial values — fails before sampling starts; the translation is checked against the Pyro
model at the first chain's starting point, and a starting point where the log density is not
finite is reported with the site (or term) responsible.

The backend runs on whatever device JAX's default backend is (a CUDA ``jaxlib`` puts it on
the GPU); ``device="cpu"``/``"gpu"`` in `run_numpyro_mcmc` picks one explicitly.
"""
from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..._util import progress as progress_bars
from ..._util.random import spawn_seeds
from ...model.bayesian_model import BayesianModel
from ...model.inputs import is_multi
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


def _hashable(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


class Program:
    """The compiled sampler of one model structure: ``prepare`` and ``run`` (see the module docstring).

    Built from a [`NumPyroModel`][pyro_bdl.backends.NumPyroModel] whose *structure* it bakes in; every
    value is an argument ``model_args = (args, x, y, data_scale)``. ``traces`` counts how often
    JAX traced either function (a retrace means a recompilation: new shapes or structure).
    """

    def __init__(self, nmodel: Any, kernel_name: str, kernel_options: Dict[str, Any], warmup: int, num_samples: int,
                 chain_method: str, progress: bool):
        import jax
        from numpyro.infer import HMC, NUTS

        self.nmodel, self.warmup, self.num_samples = nmodel, warmup, num_samples
        self.progress = progress
        if kernel_name == "nuts":
            self.kernel = NUTS(nmodel.model_fn, **kernel_options)
        else:  # num_steps fixed (trajectory_length None) or trajectory_length fixed, as fit_hmc decides
            self.kernel = HMC(nmodel.model_fn, **{"trajectory_length": None, **kernel_options})
        self.traces = 0
        self.bar: Any = None  # the running fit's progress bar (the compiled callback reports to it)
        self.prepare = jax.jit(self._prepare)
        self.run = jax.jit(jax.vmap(self._run, in_axes=(0, None)) if chain_method == "vectorized" else self._run)

    def _prepare(self, model_args: tuple, starts: Dict[str, Any], keys: Any):
        import jax
        from numpyro.infer.util import log_density, unconstrain_fn

        self.traces += 1
        args, x = model_args[0], model_args[1]
        z = jax.vmap(lambda v: unconstrain_fn(self.nmodel.model_fn, model_args, {}, v))(starts)
        states = jax.vmap(lambda k, zc: self.kernel.init(k, self.warmup, zc, model_args, {}))(keys, z)
        first = {k: v[0] for k, v in starts.items()}
        rows = self.nmodel.forward(first, x[:8], args["constants"])
        lp, _ = log_density(self.nmodel.model_fn, model_args, {}, first)
        return states, rows, lp

    def _tick(self, n: Any) -> None:
        if self.bar is not None:
            self.bar.update(int(n))

    def _run(self, state: Any, model_args: tuple):
        import jax
        import jax.numpy as jnp
        from jax import lax
        from numpyro.infer.util import constrain_fn

        self.traces += 1
        warmup, num_samples = self.warmup, self.num_samples
        total = warmup + num_samples
        rate = max(1, total // 50)

        def fields(s):
            return {"z": s.z, "diverging": s.diverging, "accept_prob": s.accept_prob,
                    "step_size": s.adapt_state.step_size, "num_steps": s.num_steps, "energy": s.energy}

        # One loop over warmup + draws: draw i is written at max(i - warmup, 0), so warmup writes land in
        # slot 0 and are overwritten by the first kept draw.
        buffers = jax.tree.map(lambda v: jnp.zeros((num_samples,) + jnp.shape(v), jnp.result_type(v)), fields(state))

        def body(i, carry):
            s, buf = carry
            s = self.kernel.sample(s, model_args, {})
            idx = jnp.maximum(i - warmup, 0)
            buf = jax.tree.map(lambda b, v: b.at[idx].set(v), buf, fields(s))
            if self.progress:
                lax.cond((i + 1) % rate == 0, lambda: jax.debug.callback(self._tick, rate), lambda: None)
            return s, buf

        out = lax.fori_loop(0, total, body, (state, buffers))[1]
        z = out.pop("z")
        out["samples"] = jax.vmap(lambda zi: constrain_fn(self.nmodel.model_fn, model_args, {}, zi))(z)
        return out


_PROGRAMS: "OrderedDict[Tuple, Program]" = OrderedDict()
_MAX_PROGRAMS = 32


def program_cache() -> "OrderedDict[Tuple, Program]":
    """The compiled programs kept in this process (least recently used first; at most 32).

    ``program_cache().clear()`` forgets them (the next fit compiles afresh).
    """
    return _PROGRAMS


def get_program(nmodel: Any, kernel_name: str, kernel_options: Dict[str, Any], warmup: int, num_samples: int,
                chain_method: str, progress: bool, cache: bool = True) -> Tuple[Program, bool]:
    """The `Program` for ``nmodel``'s structure and these options: ``(program, was_cached)``."""
    import jax

    key = (nmodel.structure_key, jax.tree.structure(nmodel.args), kernel_name,
           tuple(sorted((k, _hashable(v)) for k, v in kernel_options.items())), warmup, num_samples, chain_method,
           progress)
    if cache and key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
        return _PROGRAMS[key], True
    program = Program(nmodel, kernel_name, kernel_options, warmup, num_samples, chain_method, progress)
    if cache:
        _PROGRAMS[key] = program
        while len(_PROGRAMS) > _MAX_PROGRAMS:
            _PROGRAMS.popitem(last=False)
    return program, False


def sample_chains(program: Program, states: Any, model_args: tuple, num_chains: int, chain_method: str,
                  progress: Optional[bool]):
    """Run the chains from their initial kernel states (leading chain dim); ``(samples, stats)`` as numpy arrays
    with leading dims (chains, draws)."""
    import jax
    import jax.numpy as jnp

    total = program.warmup + program.num_samples
    program.bar = progress_bars.bar(total * (num_chains if chain_method == "sequential" else 1), "nuts", progress)
    try:
        if chain_method == "vectorized":
            out = program.run(states, model_args)
        else:
            outs = [program.run(jax.tree.map(lambda a, c=c: a[c], states), model_args) for c in range(num_chains)]
            out = jax.tree.map(lambda *a: jnp.stack(a), *outs)
        jax.block_until_ready(out)
    finally:
        program.bar.close()
        program.bar = None
    samples = {k: np.array(v) for k, v in out.pop("samples").items()}
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
                     chain_method: Optional[str] = None, cache: bool = True) -> SamplesPosterior:
    """Run NumPyro's NUTS (``kernel_name="nuts"``) or HMC on ``model``; see `pyro_bdl.infer.mcmc.fit_nuts`.

    ``chain_method``: ``"sequential"`` (default: one compiled sampler run chain after chain) or
    ``"vectorized"`` (all chains in one vmapped program, in lockstep: every NUTS step costs
    as much as the longest trajectory among the chains). ``cache=False`` compiles a fresh
    `Program` (and does not keep it); the draws are the same either way.

    Starting points: ``"prior"`` draws chain ``c`` from the prior with the c-th of ``spawn_seeds(seed, num_chains)``;
    ``"net"`` and ``"map"`` start every chain at the same point; a dict gives some or all
    sites, the others drawn as for ``"prior"``.
    """
    chain_method = "sequential" if chain_method is None else chain_method
    if chain_method not in CHAIN_METHODS:
        raise ValueError(f"chain_method must be one of {CHAIN_METHODS}, got {chain_method!r}")
    if not (isinstance(init, dict) or init in INITS):
        raise ValueError(f"unknown init {init!r}; choose one of {INITS} or pass a dict of initial values")

    try:  # jax and numpyro are an optional extra
        import jax
        import numpyro

        from ...backends import NumPyroModel, as_jax_array
        from ...backends.numpyro_model import data_scale
    except ImportError as err:  # pragma: no cover
        raise ImportError(f"backend='numpyro' needs jax and numpyro ({err}); pip install pyro_bdl[jax]") from err

    x, y = data.full()
    if is_multi(x):
        raise ValueError(f"backend='numpyro' translates networks with one input tensor; this one takes {len(x)} "
                         "(x is a tuple): use backend='pyro' (the default), which runs any torch network")
    nmodel = NumPyroModel(model)  # every translation error is raised here, before any sampling
    shapes = model.latent_shapes(x)
    given = model.as_values(_check_init(init, shapes)) if isinstance(init, dict) else {}  # on the network's device

    # Starting points (torch, constrained): per chain for "prior" (seeds spawned from the run's seed, so runs
    # with different seeds share no chain); "net" and "map" are the same for all.
    if isinstance(init, dict) or init == "prior":
        starts = [{**initial_point(model, data, "prior", s, progress), **given} for s in spawn_seeds(seed, num_chains)]
    else:
        starts = [initial_point(model, data, init, seed, progress)] * num_chains
    stacked = {k: as_jax_array(torch.stack([s[k] for s in starts])) for k in nmodel.sites}
    model_args = (nmodel.args, as_jax_array(x), as_jax_array(y), data_scale(None, len(x)))
    keys = jax.random.split(jax.random.PRNGKey(seed), num_chains)

    start = time.perf_counter()
    with compile_timer() as compile_seconds:
        program, cached = get_program(nmodel, kernel_name, kernel_options, warmup, num_samples, chain_method,
                                      progress_bars.enabled(progress), cache)
        states, rows, lp = program.prepare(model_args, stacked, keys)
        bad = ~np.isfinite(np.asarray(states.potential_energy))
        if bad.any():
            c = int(np.flatnonzero(bad)[0])
            raise ValueError(f"the log density is not finite at the starting point of chain(s) "
                             f"{np.flatnonzero(bad).tolist()} (init={init if isinstance(init, str) else 'dict'!r}): "
                             f"{nmodel.explain_nonfinite(starts[c], x, y)}")
        nmodel.verify(starts[0], x, y, computed=(rows, lp))
        raw, extra = sample_chains(program, states, model_args, num_chains, chain_method, progress)
    wall = time.perf_counter() - start

    # JAX computes in float32 unless x64 is enabled; the draws are returned with the network (its device and dtype)
    samples = {site: torch.from_numpy(np.array(raw[site])).to(model.device, model.dtype) for site in nmodel.sites}
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
            "compile_time": compile_seconds[0], "program_cached": cached, "device": next(iter(model_args[1].devices())).platform,
            "numpyro_version": numpyro.__version__, "jax_version": jax.__version__}
    return SamplesPosterior(model, samples, kernel_name, sample_stats=sample_stats, info=info)
