"""Every inference method for a few steps on one device, per step, against a plain torch loop there.

For a tanh MLP regression (``D → H → H → 1``, N(0, 1) priors, Gaussian noise, N points in minibatches
of B) it runs every method of ``bdl.fit`` on ``--device`` (default ``cuda``) and checks that the
draws and the predictions come back on that device and in the network's dtype. The cost per step is
the *marginal* cost: each method runs at two lengths and the difference in wall time is divided by
the difference in steps, so start-up (site discovery, compilation checks, the first CUDA kernels)
does not count. The baseline is a hand-written torch loop on the same device: SGD with momentum on
the same minibatch potential U = −(N/B)·Σ log N(y | f(x), σ) − log p(w).

Each row also computes test metrics against targets left on the host (``bdl.metrics.evaluate``) and
saves and reloads the posterior onto the device (``map_location``). Extra rows take the device paths a
plain run does not: a user's ``init`` dict of host float64 tensors, a learned noise scale (its default
HalfNormal prior), the NumPyro backend (JAX on its own default device; the draws come back to the
network's device). The SG-MCMC rows also check that every chain's noise generator is on the device
(`pyro_bdl._util.random.noise_generator`: on a GPU each chain draws its noise there, no host copy per step);
"sghmc (2 chains stacked)" gives two chains a generator each, and "sghmc (resume)" interrupts a checkpointed
2-chain run after its 2nd save and checks that the resumed run's draws and losses equal the uninterrupted
run's bit for bit on the device (its time is the interrupted, resumed and uninterrupted runs' together).

Units: optimiser or sampler steps on one minibatch (svi/map: full-batch SVI/optimiser steps on the
whole data set, which the plain loop also times at B = N), NUTS: one draw (a tree of leapfrog
steps on the full data). Ensembles and Multi-SWAG count the steps of all their members.

Run: ``python benchmarks/gpu_check.py`` on a GPU machine (without CUDA it prints why and exits 0);
``--device cpu`` runs it on the CPU (``--tiny`` for a seconds-long smoke run, as the tests do).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
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


def methods(nb: int, L: int) -> Dict[str, Tuple[str, Callable[[int], dict], Callable[[int], int], bool, bool]]:
    """row -> (fit method, options at length k, steps at length k, minibatched, learned noise)."""
    E = max(1, L // nb)  # epochs giving about L minibatch steps
    # SWAG's default lr (0.05 per data point) diverges at this noise level (curvature ~ |h|²/σ² per
    # point); a device check needs a run, not a tuning study: a stable rate is passed.
    draws = max(2, L // 8)
    rows = {
        "svi": ("svi", lambda k: dict(steps=k * L), lambda k: k * L, False, False),
        "map": ("map", lambda k: dict(steps=k * L), lambda k: k * L, False, False),
        "swag": ("swag", lambda k: dict(epochs=2 * k * E, warmup=k * E, lr=0.005), lambda k: 2 * k * E * nb, True, False),
        "multiswag": ("multiswag", lambda k: dict(num_chains=2, epochs=2 * k * E, warmup=k * E, lr=0.005),
                      lambda k: 4 * k * E * nb, True, False),
        "ensemble": ("ensemble", lambda k: dict(num_chains=2, steps=k * L), lambda k: 2 * k * L, True, False),
        "sgld": ("sgld", lambda k: dict(epochs=2 * k * E), lambda k: 2 * k * E * nb, True, False),
        "sghmc": ("sghmc", lambda k: dict(epochs=2 * k * E), lambda k: 2 * k * E * nb, True, False),
        "sghmc (2 chains stacked)": ("sghmc", lambda k: dict(epochs=2 * k * E, num_chains=2),
                                     lambda k: 4 * k * E * nb, True, False),
        "sghmc (resume)": ("sghmc", lambda k: dict(epochs=2 * k * E, num_chains=2, resume=True),
                           lambda k: 4 * k * E * nb, True, False),
        "csgmcmc": ("csgmcmc", lambda k: dict(epochs=4 * k * E, cycles=1, samples_per_cycle=1),
                    lambda k: 4 * k * E * nb, True, False),
        "nuts": ("nuts", lambda k: dict(num_samples=k * draws, warmup=k * draws, backend="pyro", max_tree_depth=4),
                 lambda k: 2 * k * draws, False, False),
        "hmc": ("hmc", lambda k: dict(num_samples=k * draws, warmup=k * draws, num_steps=4),
                lambda k: 2 * k * draws, False, False),
        # the device paths a plain run does not take: a user's init dict on the host, the default prior of a
        # learned noise scale, the NumPyro backend reading the network's tensors
        "map (init dict)": ("map", lambda k: dict(steps=k * L, init="host"), lambda k: k * L, False, False),
        "svi (learned noise)": ("svi", lambda k: dict(steps=k * L), lambda k: k * L, False, True),
        "svi lowrank (learned noise)": ("svi", lambda k: dict(steps=k * L, guide="lowrank"), lambda k: k * L, False, True),
        # (sgld's default lr = 0.1 diverges on the tiny problem with a learned noise scale: a stable rate is passed)
        "sgld (learned noise)": ("sgld", lambda k: dict(epochs=2 * k * E, lr=0.01), lambda k: 2 * k * E * nb, True, True),
    }
    try:
        import numpyro  # noqa: F401 - optional
        rows["nuts (numpyro)"] = ("nuts", lambda k: dict(num_samples=k * draws, warmup=k * draws, backend="numpyro",
                                                        max_tree_depth=4), lambda k: 2 * k * draws, False, False)
    except ImportError:
        pass
    return rows


def make_model(size, device, dtype, learned_noise: bool) -> bdl.BayesianModel:
    return bdl.BayesianModel(network(size, device, dtype),
                             likelihood=bdl.likelihoods.Gaussian(scale=None if learned_noise else 0.1))


def host_init(model: bdl.BayesianModel) -> dict:
    """The model's starting values as a user would write them: CPU float64 tensors."""
    return {k: v.detach().cpu().double() for k, v in model.initial_values().items()}


SGMCMC = {"sgld", "sghmc", "csgmcmc"}


class Interrupted(Exception):
    pass


@contextlib.contextmanager
def noise_generators(seen: list):
    """Record the device of every SG-MCMC chain's noise generator (`pyro_bdl._util.random.noise_generator`, as the
    chains call it) in ``seen``."""
    from pyro_bdl.infer.sgmcmc import chain
    real = chain.noise_generator

    def spy(like, generator):
        g = real(like, generator)
        seen.append(g.device)
        return g

    chain.noise_generator = spy
    try:
        yield
    finally:
        chain.noise_generator = real


@contextlib.contextmanager
def interrupted_after(saves: int):
    """`pyro_bdl._util.checkpoint.save` writes its file, then raises `Interrupted` at its ``saves``-th call."""
    from pyro_bdl._util import checkpoint
    real, count = checkpoint.save, [0]

    def save(path, fp, state):
        real(path, fp, state)
        count[0] += 1
        if count[0] == saves:
            raise Interrupted

    checkpoint.save = save
    try:
        yield
    finally:
        checkpoint.save = real


def resumed_fit(model, x, y, method: str, batch, options: dict, folder: str):
    """The run interrupted after its 2nd checkpoint and resumed, and whether it equals the run without a checkpoint
    bit for bit (draws and per-step losses); returns (posterior, 'yes' or what differs)."""
    def fit(**extra):
        return bdl.fit(model, x, y, method=method, batch_size=batch, seed=0, progress=False, **options, **extra)

    path = str(Path(folder) / "run.ckpt")
    with contextlib.suppress(Interrupted), interrupted_after(2):
        fit(checkpoint=path, checkpoint_every=1)
        return None, "NO: the run ended before its 2nd checkpoint"
    resumed = fit(checkpoint=path, checkpoint_every=1)
    full = fit()
    same = all(torch.equal(full.samples[k], resumed.samples[k]) for k in full.samples) and \
        torch.equal(full.info["loss"], resumed.info["loss"])
    return resumed, "yes" if same else "NO: the resumed run differs from the uninterrupted one"


def timed_fit(model, x, y, method: str, batch, options: dict, device: torch.device):
    """(seconds, posterior, problems found on the way: '' when none)."""
    if options.get("init") == "host":
        options = {**options, "init": host_init(model)}
    options = dict(options)
    resume = options.pop("resume", False)
    seen: list = []
    sync(device)
    t = time.perf_counter()
    with noise_generators(seen), tempfile.TemporaryDirectory() as folder:
        if resume:
            post, same = resumed_fit(model, x, y, method, batch, options, folder)
        else:
            post, same = bdl.fit(model, x, y, method=method, batch_size=batch, seed=0, progress=False,
                                 **options), "yes"
    sync(device)
    elapsed = time.perf_counter() - t
    problems = [] if same == "yes" else [same]
    if method in SGMCMC and (not seen or on(device, [torch.empty(0, device=d) for d in set(seen)])):
        problems.append(f"NO: chains' noise generators on {sorted(map(str, set(seen)))}")
    return elapsed, post, "; ".join(problems)


def on(device: torch.device, tensors) -> set:
    """The devices of ``tensors`` that are not ``device`` (empty: all there)."""
    want = torch.device(device.type, device.index if device.index is not None else
                        (torch.cuda.current_device() if device.type == "cuda" else None)) \
        if device.type == "cuda" else device
    return {t.device for t in tensors} - {want}


def checked(post, model, x, y, size, device, dtype, learned_noise: bool, folder: str) -> str:
    """Draws, predictions, test metrics with host targets, and a save/load round trip on the device;
    'yes' or what went wrong."""
    draws = post.sample(2)
    pred = post.predict(x[:8], num_samples=2)
    tensors = list(draws.values()) + [pred.mean]
    metrics = bdl.metrics.evaluate(post, x[:32], y[:32], num_samples=2)  # targets on the host
    if not all(v == v for v in metrics.values()):
        return f"NO metrics {metrics}"
    path = str(Path(folder) / "posterior.pt")
    post.save(path)
    back = bdl.Posterior.load(path, model=make_model(size, device, dtype, learned_noise), map_location=device)
    tensors += list(back.sample(2).values()) + [back.predict(x[:8], num_samples=2).mean]
    elsewhere, kinds = on(device, tensors), {t.dtype for t in tensors}
    if elsewhere or kinds != {dtype}:
        return f"NO {elsewhere} {kinds}"
    return "yes"


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
    for row, (method, opts, steps, minibatched, noise) in methods(nb, L).items():
        if args.only and row not in args.only and method not in args.only:
            continue
        batch = size["B"] if minibatched else None
        try:
            t1, _, bad1 = timed_fit(make_model(size, device, dtype, noise), x, y, method, batch, opts(1), device)
            model = make_model(size, device, dtype, noise)
            t2, post, bad2 = timed_fit(model, x, y, method, batch, opts(2), device)
            with tempfile.TemporaryDirectory() as folder:
                ok = bad1 or bad2 or checked(post, model, x, y, size, device, dtype, noise, folder)
            ms = 1000 * max(t2 - t1, 1e-9) / (steps(2) - steps(1))
            base = plain_full if not minibatched else plain_mb
            rows.append((row, steps(2) - steps(1), ms, ms / base, ok))
            if ok != "yes":
                failed.append(row)
        except Exception as err:  # noqa: BLE001 - report every method, then fail
            rows.append((row, 0, float("nan"), float("nan"), f"ERROR {type(err).__name__}: {str(err)[:160]}"))
            failed.append(row)
    print(f"| method | steps timed | ms / step | × plain torch | draws, predictions, metrics, save/load on {device}, "
          f"{args.dtype} |")
    print("| --- | --- | --- | --- | --- |")
    for method, n, ms, ratio, ok in rows:
        print(f"| {method} | {n} | {ms:.3f} | {ratio:.2f} | {ok} |")
    print("\n(svi/map/nuts/hmc against the full-batch plain step; nuts per draw, a tree of up to 2^4 leapfrog "
          "steps; hmc per draw, 4 leapfrog steps; the sgld/sghmc/csgmcmc rows' 'yes' includes every chain's noise "
          "generator on the device; sghmc (resume): the interrupted, resumed and uninterrupted runs together, "
          "'yes' = resumed equals uninterrupted bit for bit)")
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
