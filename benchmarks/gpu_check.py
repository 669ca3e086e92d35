"""Every inference method for a few steps on one device, per step, against a plain torch loop there.

For a tanh MLP regression (``D → H → H → 1``, N(0, 1) priors, Gaussian noise, N points in minibatches
of B) it runs every method of ``bdl.fit`` on ``--device`` (default ``cuda``) and checks that the
draws and the predictions come back on that device and in the network's dtype. The cost per step is
the *marginal* cost: each method runs at two lengths and the difference in wall time is divided by
the difference in steps, so start-up (site discovery, compilation checks, the first CUDA kernels)
does not count. The baseline is a hand-written torch loop on the same device: SGD with momentum on
the same minibatch potential U = −(N/B)·Σ log N(y | f(x), σ) − log p(w).

Units: optimiser or sampler steps on one minibatch (svi/map: full-batch SVI/optimiser steps on the
whole data set, which the plain loop also times at B = N), NUTS: one draw (a tree of leapfrog
steps on the full data). Ensembles and Multi-SWAG count the steps of all their members.

Run: ``python benchmarks/gpu_check.py`` on a GPU machine (without CUDA it prints why and exits 0);
``--device cpu`` runs it on the CPU (``--tiny`` for a seconds-long smoke run, as the tests do).
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Dict, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pyro_bdl as bdl  # noqa: E402

SIZES = {"default": dict(D=16, H=256, N=4096, B=256), "tiny": dict(D=3, H=8, N=64, B=16)}


def problem(size: Dict[str, int], device: torch.device, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(size["N"], size["D"], generator=g)
    y = torch.tanh(x[:, 0]) - 0.5 * x[:, 1] + 0.1 * torch.randn(size["N"], generator=g)
    return x, y  # on the host: fit moves each batch to the network's device


def network(size: Dict[str, int], device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    D, H = size["D"], size["H"]
    net = torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.Tanh(), torch.nn.Linear(H, H), torch.nn.Tanh(),
                              torch.nn.Linear(H, 1))
    return net.to(device=device, dtype=dtype)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_step_ms(size, device, dtype, x, y, batch: int, steps: int) -> float:
    """Per-step cost of a hand-written SGD loop on the tempered minibatch potential, same device."""
    net = network(size, device, dtype)
    xd, yd = x.to(device, dtype), y.to(device, dtype)
    opt = torch.optim.SGD(net.parameters(), lr=1e-5, momentum=0.9)
    N = len(xd)
    g = torch.Generator().manual_seed(0)

    def run(k: int) -> float:
        sync(device)
        t = time.perf_counter()
        for _ in range(k):
            idx = torch.randint(N, (batch,), generator=g).to(device)
            out = net(xd[idx]).squeeze(-1)
            log_lik = torch.distributions.Normal(out, 0.1).log_prob(yd[idx]).sum() * (N / batch)
            log_prior = sum(torch.distributions.Normal(0.0, 1.0).log_prob(p).sum() for p in net.parameters())
            loss = -(log_lik + log_prior)
            opt.zero_grad()
            loss.backward()
            opt.step()
        sync(device)
        return time.perf_counter() - t

    run(3)  # warm-up
    t1, t2 = run(steps), run(2 * steps)
    return 1000 * max(t2 - t1, 1e-9) / steps


def methods(nb: int, L: int) -> Dict[str, Tuple[Callable[[int], dict], Callable[[int], int], bool]]:
    """method -> (options at length k, steps at length k, minibatched)."""
    E = max(1, L // nb)  # epochs giving about L minibatch steps
    # SWAG's default lr (0.05 per data point) diverges at this noise level (curvature ~ |h|²/σ² per
    # point); a device check needs a run, not a tuning study: a stable rate is passed.
    return {
        "svi": (lambda k: dict(num_steps=k * L), lambda k: k * L, False),
        "map": (lambda k: dict(num_steps=k * L), lambda k: k * L, False),
        "swag": (lambda k: dict(epochs=2 * k * E, swa_start=k * E, lr=0.005), lambda k: 2 * k * E * nb, True),
        "multiswag": (lambda k: dict(num_models=2, epochs=2 * k * E, swa_start=k * E, lr=0.005), lambda k: 4 * k * E * nb, True),
        "ensemble": (lambda k: dict(num_models=2, num_steps=k * L), lambda k: 2 * k * L, True),
        "sgld": (lambda k: dict(epochs=2 * k * E), lambda k: 2 * k * E * nb, True),
        "sghmc": (lambda k: dict(epochs=2 * k * E), lambda k: 2 * k * E * nb, True),
        "csgmcmc": (lambda k: dict(epochs=4 * k * E, cycles=1, samples_per_cycle=1), lambda k: 4 * k * E * nb, True),
        "nuts": (lambda k: dict(num_samples=k * max(2, L // 8), warmup=k * max(2, L // 8), backend="pyro",
                                max_tree_depth=4), lambda k: 2 * k * max(2, L // 8), False),
    }


def timed_fit(model, x, y, method: str, batch, options: dict, device: torch.device):
    sync(device)
    t = time.perf_counter()
    post = bdl.fit(model, x, y, method=method, batch_size=batch, seed=0, progress=False, **options)
    sync(device)
    return time.perf_counter() - t, post


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, cpu, ...")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (the tests use it)")
    parser.add_argument("--steps", type=int, default=None, help="steps at the short length (default 64; tiny 8)")
    parser.add_argument("--only", nargs="*", default=None, help="methods to run (default: all)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: CUDA is not available here (torch {torch.__version__}, "
              f"built with CUDA {torch.version.cuda}); nothing to check. Run it on a GPU machine, "
              "or pass --device cpu to run the same check on the CPU.")
        return 0
    warnings.simplefilter("ignore")
    dtype = getattr(torch, args.dtype)
    size = SIZES["tiny" if args.tiny else "default"]
    L = args.steps or (8 if args.tiny else 64)
    x, y = problem(size, device, dtype)
    nb = size["N"] // size["B"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    P = sum(p.numel() for p in network(size, device, dtype).parameters())
    print(f"device {device} ({name}), dtype {args.dtype}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"MLP {size['D']}-{size['H']}-{size['H']}-1 ({P} parameters), N={size['N']}, B={size['B']}")
    plain_mb = plain_step_ms(size, device, dtype, x, y, size["B"], L)
    plain_full = plain_step_ms(size, device, dtype, x, y, size["N"], max(2, L // 4))
    print(f"plain torch SGD step: {plain_mb:.3f} ms (B={size['B']}), {plain_full:.3f} ms (full batch)\n")
    rows = []
    failed = []
    for method, (opts, steps, minibatched) in methods(nb, L).items():
        if args.only and method not in args.only:
            continue
        batch = size["B"] if minibatched else None
        try:
            t1, _ = timed_fit(bdl.BayesianModel(network(size, device, dtype), likelihood=bdl.likelihoods.Gaussian(scale=0.1)),
                              x, y, method, batch, opts(1), device)
            model = bdl.BayesianModel(network(size, device, dtype), likelihood=bdl.likelihoods.Gaussian(scale=0.1))
            t2, post = timed_fit(model, x, y, method, batch, opts(2), device)
            draws = post.sample(2)
            pred = post.predict(x[:8], num_samples=2)
            where = {v.device for v in draws.values()} | {pred.mean.device}
            kinds = {v.dtype for v in draws.values()} | {pred.mean.dtype}
            ok = where == {torch.device(device.type, device.index if device.index is not None else
                                        (torch.cuda.current_device() if device.type == "cuda" else None))} \
                if device.type == "cuda" else where == {device}
            ok = ok and kinds == {dtype}
            ms = 1000 * max(t2 - t1, 1e-9) / (steps(2) - steps(1))
            base = plain_full if method in ("svi", "map", "nuts") else plain_mb
            rows.append((method, steps(2) - steps(1), ms, ms / base, "yes" if ok else f"NO {where} {kinds}"))
            if not ok:
                failed.append(method)
        except Exception as err:  # noqa: BLE001 - report every method, then fail
            rows.append((method, 0, float("nan"), float("nan"), f"ERROR {type(err).__name__}: {str(err)[:120]}"))
            failed.append(method)
    print(f"| method | steps timed | ms / step | × plain torch | draws, predictions on {device}, {args.dtype} |")
    print("| --- | --- | --- | --- | --- |")
    for method, n, ms, ratio, ok in rows:
        print(f"| {method} | {n} | {ms:.3f} | {ratio:.2f} | {ok} |")
    print("\n(svi/map/nuts against the full-batch plain step; nuts per draw, a tree of up to 2^4 leapfrog steps)")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
