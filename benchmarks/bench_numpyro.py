"""NUTS speed: pyro_bdl's NumPyro backend vs its Pyro backend vs the same model hand-written in NumPyro.

The hand-written model runs with ``numpyro.infer.MCMC`` twice, with ``chain_method="sequential"``
(NumPyro's choice on one CPU device) and ``"vectorized"``; ratios are against the faster of the two.

Reference problem (issue 3): a network with one hidden layer of 20 tanh units, 100 training
points, N(0, 1) priors on every weight and bias, Gaussian noise σ = 0.1. The figure of merit
is effective samples per second of the *predictions* f(x*) at 20 test inputs (function
space is not scrambled by the permutation symmetry of the weights): the minimum bulk ESS
over those 20 inputs divided by the wall time of the whole fit, compilation included;
compilation time is reported separately (and ESS/s without it).

The Pyro backend is very slow on this problem (every NUTS step takes up to 1023 leapfrog
steps, each a Python-level torch evaluation), so it runs with a bounded budget: one chain
with fewer warmup steps and draws (``--pyro-warmup``/``--pyro-samples``). ESS per second is
still comparable; its ESS estimate is noisier.

    python benchmarks/bench_numpyro.py            # 4 chains x (500 + 500), Pyro 1 x (50 + 50)
    python benchmarks/bench_numpyro.py --full     # 4 chains x (1000 + 1000), Pyro 1 x (100 + 100)
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Dict

import numpy as np
import torch

import pyro_bdl as bdl
from pyro_bdl.infer.mcmc.numpyro import compile_timer

HIDDEN, N_TRAIN, N_TEST, NOISE = 20, 100, 20, 0.1


def problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N_TRAIN, 1, generator=g) * 4 - 2
    y = torch.sin(2 * x[:, 0]) + 0.5 * x[:, 0] + NOISE * torch.randn(N_TRAIN, generator=g)
    x_test = torch.linspace(-2.5, 2.5, N_TEST).unsqueeze(-1)
    return x, y, x_test


def bayesian_model(seed: int = 0) -> bdl.BayesianModel:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(1, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 1))
    return bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Gaussian(NOISE))


def min_bulk_ess(f: np.ndarray) -> float:
    """``f``: predictions of shape (chains, draws, inputs) -> the minimum bulk ESS over the inputs."""
    import arviz as az

    return float(min(az.ess(np.ascontiguousarray(f[..., i]), method="bulk") for i in range(f.shape[-1])))


def run_pyro_bdl(backend: str, chains: int, warmup: int, samples: int, seed: int) -> Dict[str, float]:
    x, y, x_test = problem()
    model = bayesian_model()
    start, cpu = time.perf_counter(), time.process_time()
    post = bdl.fit(model, x, y, method="nuts", backend=backend, num_chains=chains, warmup=warmup,
                   num_samples=samples, seed=seed, progress=False)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    with torch.no_grad():
        f = model.forward({k: post.samples[k] for k in model.weight_sites}, x_test)[..., 0].numpy()
    steps = post.sample_stats["num_steps"].double().mean().item()
    return {"wall": wall, "cpu": cpu, "compile": float(post.info.get("compile_time", 0.0)), "ess": min_bulk_ess(f),
            "chains": chains, "warmup": warmup, "samples": samples, "steps": steps,
            "divergences": int(post.sample_stats["diverging"].sum())}


def handwritten_model(x, y):
    """The reference BNN written directly in NumPyro."""
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist

    w1 = numpyro.sample("w1", dist.Normal(0.0, 1.0).expand([HIDDEN, 1]).to_event(2))
    b1 = numpyro.sample("b1", dist.Normal(0.0, 1.0).expand([HIDDEN]).to_event(1))
    w2 = numpyro.sample("w2", dist.Normal(0.0, 1.0).expand([1, HIDDEN]).to_event(2))
    b2 = numpyro.sample("b2", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
    out = jnp.tanh(x @ w1.T + b1) @ w2.T + b2
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("obs", dist.Normal(out[:, 0], NOISE), obs=y)


def gradient_cost(repeats: int = 10, evals: int = 1000) -> Dict[str, float]:
    """Microseconds per jitted potential-and-gradient evaluation, best of ``repeats`` interleaved timings.

    Isolates the cost of one leapfrog step's model work (what NUTS repeats ~10⁶ times here) from
    compilation, adaptation and the load of a shared machine.
    """
    import jax
    import jax.numpy as jnp
    from numpyro.infer.util import initialize_model

    from pyro_bdl.backends import NumPyroModel

    x, y, _ = problem()
    xj, yj = jnp.asarray(x.numpy()), jnp.asarray(y.numpy())
    fns = {}
    for name, model in (("pyro_bdl NumPyroModel", NumPyroModel(bayesian_model())),
                        ("hand-written NumPyro", handwritten_model)):
        info, potential, _, _ = initialize_model(jax.random.PRNGKey(0), model, model_args=(xj, yj))
        grad = jax.jit(jax.value_and_grad(potential))
        z = info.z
        jax.block_until_ready(grad(z))

        def loop(grad=grad, z=z):
            out = None
            for _ in range(evals):
                out = grad(z)
            jax.block_until_ready(out)

        fns[name] = loop
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, loop in fns.items():
            start = time.perf_counter()
            loop()
            best[name] = min(best[name], (time.perf_counter() - start) / evals * 1e6)
    return best


def run_handwritten(chains: int, warmup: int, samples: int, seed: int, chain_method: str) -> Dict[str, float]:
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as dist
    from numpyro.infer import MCMC, NUTS

    x, y, x_test = problem()
    xj, yj = jnp.asarray(x.numpy()), jnp.asarray(y.numpy())
    mcmc = MCMC(NUTS(handwritten_model), num_warmup=warmup, num_samples=samples, num_chains=chains, chain_method=chain_method,
                progress_bar=False)
    start, cpu = time.perf_counter(), time.process_time()
    with compile_timer() as compile_seconds:
        mcmc.run(jax.random.PRNGKey(seed), xj, yj, extra_fields=("num_steps", "diverging"))
        s = mcmc.get_samples(group_by_chain=True)
        jax.block_until_ready(s)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    xt = np.asarray(x_test.numpy())
    h = np.tanh(np.einsum("ti,cshi->csth", xt, np.asarray(s["w1"])) + np.asarray(s["b1"])[:, :, None, :])
    f = np.einsum("csth,csoh->csto", h, np.asarray(s["w2"]))[..., 0] + np.asarray(s["b2"])[:, :, None, 0]
    extra = mcmc.get_extra_fields(group_by_chain=True)
    return {"wall": wall, "cpu": cpu, "compile": compile_seconds[0], "ess": min_bulk_ess(f), "chains": chains,
            "warmup": warmup,
            "samples": samples, "steps": float(np.mean(extra["num_steps"])),
            "divergences": int(np.sum(extra["diverging"]))}


def table(results: Dict[str, Dict[str, float]]) -> str:
    """Markdown table; ratios are of ESS/s (compilation included), against the Pyro backend and the faster
    hand-written NumPyro run."""
    base = results["pyro_bdl, backend='pyro'"]["ess"] / results["pyro_bdl, backend='pyro'"]["wall"]
    hand = max(r["ess"] / r["wall"] for name, r in results.items() if name.startswith("hand-written"))
    lines = ["| run | chains × (warmup + draws) | mean leapfrog steps | divergences | wall s | CPU s | compile s | "
             "min bulk ESS (20 f(x*)) | ESS/s | ESS/s excl. compile | ESS per CPU s | × Pyro backend | "
             "× best hand-written |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rate = r["ess"] / r["wall"]
        rate_run = r["ess"] / max(r["wall"] - r["compile"], 1e-9)
        lines.append(f"| {name} | {r['chains']} × ({r['warmup']} + {r['samples']}) | {r['steps']:.0f} | "
                     f"{r['divergences']} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['compile']:.1f} | {r['ess']:.0f} | "
                     f"{rate:.3g} | {rate_run:.3g} | {r['ess'] / r['cpu']:.3g} | {rate / base:.1f} | "
                     f"{rate / hand:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--full", action="store_true", help="4 × (1000 + 1000) NumPyro draws, Pyro 1 × (100 + 100)")
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--pyro-warmup", type=int, default=None)
    parser.add_argument("--pyro-samples", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the NumPyro runs (best kept)")
    args = parser.parse_args(argv)
    n = args.warmup or (1000 if args.full else 500)
    s = args.samples or (1000 if args.full else 500)
    pw = args.pyro_warmup or (100 if args.full else 50)
    ps = args.pyro_samples or (100 if args.full else 50)

    # NumPyro runs are repeated, interleaved, and the fastest wall time of each is kept: on a shared machine the
    # load changes during the benchmark, and the best of interleaved runs compares like with like.
    runs = {f"hand-written NumPyro, chain_method={m!r}": (lambda m=m: run_handwritten(args.chains, n, s, args.seed, m))
            for m in ("sequential", "vectorized")}
    runs["pyro_bdl, backend='numpyro'"] = lambda: run_pyro_bdl("numpyro", args.chains, n, s, args.seed)
    results: Dict[str, Dict[str, float]] = {}
    for r in range(args.repeats):
        for name, run in runs.items():
            print(f"{name} (run {r + 1}/{args.repeats}) ...", file=sys.stderr, flush=True)
            out = run()
            if name not in results or out["wall"] < results[name]["wall"]:
                results[name] = out
    print(f"pyro_bdl, backend='pyro' (bounded: 1 chain × ({pw} + {ps})) ...", file=sys.stderr, flush=True)
    results["pyro_bdl, backend='pyro'"] = run_pyro_bdl("pyro", 1, pw, ps, args.seed)
    print("gradient cost ...", file=sys.stderr, flush=True)
    cost = gradient_cost()
    print(f"\nReference BNN: 1-{HIDDEN}-1 tanh, {N_TRAIN} points, N(0,1) priors, noise {NOISE}; "
          f"ESS of f(x*) at {N_TEST} test inputs; NUTS (target accept 0.8, max tree depth 10); "
          f"NumPyro rows: best wall time of {args.repeats} interleaved runs.\n")
    print(table(results))
    print("\n| potential + gradient, jitted | µs per evaluation (best of 10 × 1000) |\n|---|---|")
    for name, us in cost.items():
        print(f"| {name} | {us:.1f} |")
    results["gradient_cost_us"] = cost
    return results


if __name__ == "__main__":
    main()
