"""Benchmark: how close function-informed priors get to an RBF GP, and what a fit costs.

Fits per-layer prior scales of 1→50→50→1 MLPs (tanh, ReLU) to GP(RBF, ℓ=1, σ²=1) on [−3, 3]
with the closed-form Gaussian W2 and the dual W1 (Lipschitz critic), side by side, and prints
the held-out Gaussian W2 (fresh inputs and draws) of each prior beside the GP-vs-GP sampling
floor. Baselines: iid N(0, 1), fan-in N(0, 1/fan_in), and the random-Fourier-feature cosine net
(exact RBF covariance, no fitting).

    python benchmarks/bench_functional_prior.py [--steps 500]
"""
from __future__ import annotations

import argparse
import time

import torch

import pyro_bdl as bdl
from pyro_bdl.examples.networks import mlp
from pyro_bdl.priors import FanInGaussian, Gaussian
from pyro_bdl.function_priors import GP, Box, FunctionalPrior, function_distance, rff_network


def main(steps: int = 500, threads: int = 1) -> list:
    torch.set_num_threads(threads)
    gp, box = GP("rbf", lengthscale=1.0, variance=1.0), Box(-3.0, 3.0)
    check = dict(num_samples=512, num_points=40, seed=99, num_repeats=4)
    rows = []
    for act in ("tanh", "relu"):
        torch.manual_seed(0)
        net = mlp(1, [50, 50], 1, act)
        for name, prior in (("iid N(0,1)", Gaussian(0.0, 1.0)), ("fan-in", FanInGaussian(1.0))):
            d = function_distance(net, prior, gp, box, **check)
            rows.append((act, name, "-", d["distance"], d["floor"]))
        for distance in ("gaussian_w2", "dual_w1"):
            start = time.perf_counter()
            prior = FunctionalPrior.fit(net, gp, box, steps=steps, seed=0, num_samples=128, num_points=40,
                                        distance=distance, eval_samples=64, eval_repeats=1, verbose=False)
            per_step = (time.perf_counter() - start) / steps
            d = function_distance(net, prior, gp, box, **check)
            rows.append((act, f"fitted ({distance})", f"{1000 * per_step:.1f}", d["distance"], d["floor"]))
    net, prior = rff_network(1, 500, lengthscale=1.0, variance=1.0)
    d = function_distance(net, prior, gp, box, **check)
    rows.append(("cos (RFF, H=500)", "RFF prior", "-", d["distance"], d["floor"]))
    print(f"held-out Gaussian W2 to {gp} on [-3, 3] (512 draws x 40 fresh inputs, mean of 4), "
          f"{steps} fit steps, {threads} thread(s)")
    print(f"{'network':<18}{'prior':<24}{'ms/step':>9}{'W2':>9}{'floor':>9}{'W2/floor':>10}")
    for act, name, ms, dist, floor in rows:
        print(f"{act:<18}{name:<24}{ms:>9}{dist:>9.3f}{floor:>9.3f}{dist / floor:>10.2f}")
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    main(args.steps, args.threads)
