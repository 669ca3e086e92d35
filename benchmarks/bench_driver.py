"""The driver's cost per step against a hand-written torch loop, and stacked ensembles against single runs.

Two MLP classifiers on synthetic data (N = 1024 points, 64 inputs, 10 classes, minibatches of 128,
N(0, 1) priors): ≈30k parameters (64-256-64-10) and ≈540k (64-700-700-10). For each it prints,
in one run and on the same minibatches:

* **map, per step** — the hand-written loop (Adam on U = N/B·CE + ½‖w‖², the same update), MAP on
  the driver (``bdl.fit(method="map")``, its ``info["wall_time"]`` over the steps), and MAP as it
  was before the driver (Pyro SVI with an AutoDelta guide: one Pyro trace of model and guide per
  step, ``pyro_bdl.infer.svi.optimise``);
* **an 8-member ensemble** — ``bdl.fit(method="ensemble", num_chains=8)`` stacked by vmap against
  8 single members one after another (``stack=False``), whole runs (set-up included) with torch on 1
  and on 2 threads.

Target (issue 15): the ensemble in ≤ 0.4× the time of 8 single members at the small size.

Run: ``python benchmarks/bench_driver.py`` (``--steps 100``; ``--small-only``). Takes ≈2 minutes.
"""
from __future__ import annotations

import argparse
import time

import pyro
import torch
from pyro.infer.autoguide import AutoDelta, init_to_value

import pyro_bdl as bdl
from pyro_bdl.infer.data import FitData
from pyro_bdl.infer.svi import optimise

N, D, C, B = 1024, 64, 10, 128
SIZES = {"≈30k": (256, 64), "≈540k": (700, 700)}


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    y = (x[:, :C] + 0.5 * torch.randn(N, C, generator=g)).argmax(-1)
    return x, y


def make_net(hidden):
    torch.manual_seed(0)
    h1, h2 = hidden
    return torch.nn.Sequential(torch.nn.Linear(D, h1), torch.nn.ReLU(), torch.nn.Linear(h1, h2), torch.nn.ReLU(),
                               torch.nn.Linear(h2, C))


def model(hidden):
    return bdl.BayesianModel(make_net(hidden), prior=bdl.priors.Gaussian(0.0, 1.0),
                             likelihood=bdl.likelihoods.Categorical())


def plain_loop(hidden, x, y, steps):
    """Hand-written MAP: the same loss, Adam and exponential decay, the same shuffled minibatches."""
    net = make_net(hidden)
    params = list(net.parameters())
    opt = torch.optim.Adam(params, lr=0.01)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.1 ** (1 / steps))
    g = torch.Generator().manual_seed(0)
    done, start = 0, time.perf_counter()
    while done < steps:
        perm = torch.randperm(N, generator=g)
        for i in range(0, N, B):
            idx = perm[i:i + B]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx], reduction="sum") * (N / len(idx))
            loss = loss + 0.5 * sum((p ** 2).sum() for p in params)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            done += 1
            if done == steps:
                break
    return (time.perf_counter() - start) / steps


def driver_map(hidden, x, y, steps):
    post = bdl.fit(model(hidden), x, y, method="map", steps=steps, batch_size=B, progress=False)
    return post.info["wall_time"] / steps


def pyro_map(hidden, x, y, steps):
    m = model(hidden)
    data = FitData(m, x, y, batch_size=B)
    with pyro.settings.context(module_local_params=True):
        guide = AutoDelta(m, init_loc_fn=init_to_value(values=m.initial_values()))
    start = time.perf_counter()
    optimise(m, guide, data, steps, 0.01, 0.1, 1, 0, False, "map", floor_kind="point")
    return (time.perf_counter() - start) / steps


def ensemble(hidden, x, y, steps, stack):
    start = time.perf_counter()
    post = bdl.fit(model(hidden), x, y, method="ensemble", num_chains=8, steps=steps, batch_size=B, stack=stack,
                   progress=False)
    return time.perf_counter() - start, post.info["wall_time"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--small-only", action="store_true")
    args = parser.parse_args()
    x, y = data()
    sizes = list(SIZES.items())[:1] if args.small_only else list(SIZES.items())
    print("| network | P | plain torch ms/step | map (driver) | × plain | map before (Pyro AutoDelta) | × plain |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    torch.set_num_threads(1)
    for name, hidden in sizes:
        steps = args.steps if name == "≈30k" else max(20, args.steps // 4)
        P = sum(p.numel() for p in make_net(hidden).parameters())
        plain_loop(hidden, x, y, 5), driver_map(hidden, x, y, 5)  # warm-up
        plain = min(plain_loop(hidden, x, y, steps) for _ in range(2))
        drv = min(driver_map(hidden, x, y, steps) for _ in range(2))
        old = pyro_map(hidden, x, y, steps)
        print(f"| {name} | {P} | {1e3 * plain:.2f} | {1e3 * drv:.2f} | {drv / plain:.2f} | {1e3 * old:.2f} | "
              f"{old / plain:.2f} |")
    print()
    print("| network | torch threads | 8 single members (s) | 8 stacked (s) | stacked / single | steps |")
    print("| --- | --- | --- | --- | --- | --- |")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, hidden in sizes:
            steps = args.steps if name == "≈30k" else max(20, args.steps // 4)
            single, _ = ensemble(hidden, x, y, steps, False)
            stacked, _ = ensemble(hidden, x, y, steps, True)
            print(f"| {name} | {threads} | {single:.2f} | {stacked:.2f} | {stacked / single:.2f} | {steps} |")


if __name__ == "__main__":
    main()
