"""Peak memory and time of ``predict`` at 100k inputs × 1000 draws (width-256 MLP, 10 classes).

    python benchmarks/bench_predict_memory.py                  # 100k × 1000, 1 thread (a few minutes)
    python benchmarks/bench_predict_memory.py --inputs 20000   # smaller, quicker

Each row runs in its own process (peak RSS, ``ru_maxrss``, is per process):

* ``pyro_bdl predict``: ``post.predict(x)`` with the default memory budget, then the streamed
  summaries ``probs`` and ``log_prob(y)`` (each one streams over the input chunks);
* ``hand-written loop``: the baseline a user would write for bounded memory — plain torch, one
  draw at a time, accumulating the average probabilities and the per-input log-sum-exp in one pass.

Without chunking, the same call needs the full (S, B, ·) activations at once: 1000 × 100k × 256
floats ≈ 102 GB for the hidden layer alone (the failure reported in issue 17).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import torch

IN, HIDDEN, CLASSES = 32, 256, 10


def _setup(n_inputs: int, n_draws: int):
    import pyro_bdl as bdl
    from pyro_bdl.posterior.samples import SamplesPosterior

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(IN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES))
    model = bdl.BayesianModel(net, likelihood=bdl.likelihoods.Categorical())
    draws = {n: 0.1 * torch.randn(1, n_draws, *p.shape) for n, p in net.named_parameters()}
    post = SamplesPosterior(model, draws, "bench")
    x = torch.randn(n_inputs, IN)
    y = torch.randint(CLASSES, (n_inputs,))
    return post, x, y, draws


def _run(which: str, n_inputs: int, n_draws: int) -> dict:
    from pyro_bdl.posterior.base import DEFAULT_MEMORY_BUDGET, chunk_sizes

    torch.set_num_threads(1)
    post, x, y, draws = _setup(n_inputs, n_draws)
    start = time.perf_counter()
    if which == "pyro_bdl":
        pred = post.predict(x, num_samples=n_draws)
        probs = pred.probs
        nll = -pred.log_prob(y).mean()
        rows, block = chunk_sizes(post.model.net, x, n_draws, DEFAULT_MEMORY_BUDGET)  # what predict used
    else:
        w = {k: v[0] for k, v in draws.items()}
        probs = torch.zeros(n_inputs, CLASSES)
        lse = torch.full((n_inputs,), -math.inf)
        with torch.no_grad():
            for s in range(n_draws):
                h = torch.relu(x @ w["0.weight"][s].T + w["0.bias"][s])
                logp = torch.log_softmax(h @ w["2.weight"][s].T + w["2.bias"][s], -1)
                probs += logp.exp() / n_draws
                lse = torch.logaddexp(lse, logp.gather(1, y[:, None])[:, 0])
        nll = -(lse - math.log(n_draws)).mean()
        rows, block = n_inputs, 1
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB
    return {"which": which, "seconds": seconds, "peak_gib": peak, "nll": float(nll),
            "probs_sum": float(probs.sum()), "rows_per_chunk": rows,
            "draws_per_block": block}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_run(args.child, args.inputs, args.draws)))
        return
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, os.environ.get("PYTHONPATH", "")]))
    print(f"predict: {args.inputs} inputs × {args.draws} draws, MLP {IN}-{HIDDEN}-{CLASSES}, 1 thread")
    print(f"{'':20s}{'time (s)':>10s}{'peak RSS (GiB)':>16s}{'rows/chunk':>12s}{'draws/block':>13s}{'NLL':>10s}")
    results = []
    for which in ("pyro_bdl", "hand-written"):
        out = subprocess.run([sys.executable, __file__, "--child", which, "--inputs", str(args.inputs),
                              "--draws", str(args.draws)], capture_output=True, text=True, env=env, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        name = "pyro_bdl predict" if which == "pyro_bdl" else "hand-written loop"
        block = str(r["draws_per_block"])
        print(f"{name:20s}{r['seconds']:>10.1f}{r['peak_gib']:>16.2f}{r['rows_per_chunk']:>12d}{block:>13s}"
              f"{r['nll']:>10.4f}")
    assert abs(results[0]["nll"] - results[1]["nll"]) < 1e-3, "the two disagree"


if __name__ == "__main__":
    main()
