"""pyro_bdl's overhead over the same model hand-written in plain Pyro.

For a 2-layer tanh MLP (8 → 50 → 1, N(0, 1) priors, Gaussian noise 0.1, 200 points) it times,
side by side in one run and interleaved to share the machine's noise:

* one SVI step (mean-field AutoNormal, Trace_ELBO, Adam): ``bdl.fit(method="svi")`` vs a plain
  ``pyro.infer.SVI`` loop, and vs the same ELBO hand-written in plain torch (z = μ + σε, U(z) − Σ log σ, Adam):
  pyro_bdl steps a built-in guide on its compiled potential (`FlatELBO`), without Pyro's two traces per step;
* one NUTS draw (tree depth capped at 6 on both sides): ``bdl.fit(method="nuts")`` vs
  ``pyro.infer.MCMC(NUTS(plain_model))``, and the
  cost of one potential-energy gradient (a leapfrog step), which does not depend on tree sizes.

Target (issue 2): pyro_bdl ≤ 1.2× plain Pyro.

A second table times the gradient of the flat tempered potential U(θ) that the gradient-based
methods step on (`Objective`, SG-MCMC and friends), compiled and
traced, against the same U written by hand in plain torch (one flat θ, autograd).

Run: ``python benchmarks/bench_overhead.py`` (``--only-potential`` for the second table alone).
"""
from __future__ import annotations

import argparse
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import MCMC, NUTS, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal, init_to_value
from pyro.infer.mcmc.util import initialize_model

import pyro_bdl as bdl

D, H, N = 8, 50, 200
TREE_DEPTH = 6  # the same cap on both sides keeps the NUTS rows short and comparable


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    y = torch.tanh(x[:, 0]) - x[:, 1] + 0.1 * torch.randn(N, generator=g)
    return x, y


def net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D, H), torch.nn.Tanh(), torch.nn.Linear(H, 1))


def plain_model(x, y=None):
    w1 = pyro.sample("0.weight", dist.Normal(0.0, 1.0).expand([H, D]).to_event(2))
    b1 = pyro.sample("0.bias", dist.Normal(0.0, 1.0).expand([H]).to_event(1))
    w2 = pyro.sample("2.weight", dist.Normal(0.0, 1.0).expand([1, H]).to_event(2))
    b2 = pyro.sample("2.bias", dist.Normal(0.0, 1.0).expand([1]).to_event(1))
    out = (torch.tanh(x @ w1.T + b1) @ w2.T + b2).squeeze(-1)
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Normal(out, 0.1), obs=y)


def bdl_model():
    return bdl.BayesianModel(net(), prior=bdl.priors.Gaussian(0.0, 1.0), likelihood=bdl.likelihoods.Gaussian(0.1))


def init_values():
    return {k: v.detach().clone() for k, v in net().named_parameters()}


def svi_plain(x, y, steps):
    pyro.clear_param_store()
    guide = AutoNormal(plain_model, init_loc_fn=init_to_value(values=init_values()), init_scale=0.01)
    svi = SVI(plain_model, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    svi.step(x, y)
    t = time.perf_counter()
    for _ in range(steps):
        svi.step(x, y)
    return (time.perf_counter() - t) / steps


def svi_torch(x, y, steps):
    """The mean-field ELBO step written by hand: one reparameterised draw, the exact entropy, Adam on (μ, ρ),
    σ = softplus(ρ) (AutoNormal's parametrisation)."""
    locs = [v.clone().requires_grad_(True) for v in init_values().values()]
    rhos = [torch.full_like(v, float(torch.log(torch.expm1(torch.tensor(0.01))))).requires_grad_(True) for v in locs]
    opt = torch.optim.Adam(locs + rhos, lr=0.01)

    def step():
        opt.zero_grad()
        sds = [torch.nn.functional.softplus(r) for r in rhos]
        w1, b1, w2, b2 = (m + s * torch.randn_like(m) for m, s in zip(locs, sds))
        out = (torch.tanh(x @ w1.T + b1) @ w2.T + b2).squeeze(-1)
        nll = 0.5 * (((y - out) / 0.1) ** 2).sum()
        prior = 0.5 * sum((w ** 2).sum() for w in (w1, b1, w2, b2))
        loss = nll + prior - sum(s.log().sum() for s in sds)
        loss.backward()
        opt.step()
    step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def svi_bdl(x, y, steps):
    # fit() includes its own set-up; time two runs and take the difference per extra step.
    model = bdl_model()
    t0 = time.perf_counter()
    bdl.fit(model, x, y, method="svi", steps=1, progress=False)
    t1 = time.perf_counter()
    bdl.fit(model, x, y, method="svi", steps=steps + 1, progress=False)
    t2 = time.perf_counter()
    return ((t2 - t1) - (t1 - t0)) / steps


def nuts_plain(x, y, samples, warmup):
    pyro.set_rng_seed(0)
    kernel = NUTS(plain_model, init_strategy=init_to_value(values=init_values()), max_tree_depth=TREE_DEPTH)
    mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, disable_progbar=True)
    t = time.perf_counter()
    mcmc.run(x, y)
    return (time.perf_counter() - t) / (samples + warmup)


def nuts_bdl(x, y, samples, warmup):
    t = time.perf_counter()
    bdl.fit(bdl_model(), x, y, method="nuts", num_samples=samples, warmup=warmup, init="net",
            max_tree_depth=TREE_DEPTH, progress=False)
    return (time.perf_counter() - t) / (samples + warmup)


def grad_time(model, args, reps):
    pyro.set_rng_seed(0)
    params, potential_fn, _, _ = initialize_model(model, model_args=args)
    z = {k: v.clone().requires_grad_() for k, v in params.items()}
    for _ in range(5):
        torch.autograd.grad(potential_fn(z), list(z.values()))
    t = time.perf_counter()
    for _ in range(reps):
        torch.autograd.grad(potential_fn(z), list(z.values()))
    return (time.perf_counter() - t) / reps


def flat_grad_time(kind: str, x, y, reps: int) -> float:
    """One ∇U(θ) on the full batch: ``"torch"`` hand-written, ``"compiled"`` / ``"traced"`` `Objective`."""
    from pyro_bdl.model.potential import Objective

    objective = Objective(bdl_model(), x, compiled=None if kind != "traced" else False)
    theta = objective.initial()
    if kind == "torch":
        names, shapes = objective.layout.names, objective.layout.shapes
        sizes = [int(torch.Size(s).numel()) for s in shapes]

        def grad(theta):
            theta = theta.detach().requires_grad_(True)
            w1, b1, w2, b2 = (t.reshape(s) for t, s in zip(torch.split(theta, sizes), shapes))
            out = (torch.tanh(x @ w1.T + b1) @ w2.T + b2).squeeze(-1)
            u = 0.5 * ((y - out) / 0.1).pow(2).sum() + 0.5 * theta.pow(2).sum()
            return torch.autograd.grad(u, theta)[0]
    else:
        def grad(theta):
            return objective.grad(theta, x, y)[1]
    for _ in range(5):
        grad(theta)
    t = time.perf_counter()
    for _ in range(reps):
        grad(theta)
    return (time.perf_counter() - t) / reps


def potential_table(x, y, repeats: int) -> None:
    rows = {k: [] for k in ("torch", "compiled", "traced")}
    for _ in range(repeats):
        for kind in rows:
            rows[kind].append(flat_grad_time(kind, x, y, 300))
    base = statistics.median(rows["torch"])
    print(f"{'flat potential gradient':28s} {'ms':>8s} {'vs plain torch':>15s}")
    for kind, times in rows.items():
        m = statistics.median(times)
        print(f"{kind:28s} {m * 1e3:8.3f} {m / base:15.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--svi-steps", type=int, default=300)
    parser.add_argument("--nuts-samples", type=int, default=30)
    parser.add_argument("--only-potential", action="store_true", help="only the flat-potential table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = data()
    if args.only_potential:
        potential_table(x, y, args.repeats)
        return
    rows = {k: ([], []) for k in ("SVI step", "NUTS draw", "potential gradient")}
    by_hand = []
    for _ in range(args.repeats):  # interleave the two so machine noise hits both alike
        rows["SVI step"][0].append(svi_plain(x, y, args.svi_steps))
        by_hand.append(svi_torch(x, y, args.svi_steps))
        rows["SVI step"][1].append(svi_bdl(x, y, args.svi_steps))
        rows["NUTS draw"][0].append(nuts_plain(x, y, args.nuts_samples, args.nuts_samples))
        rows["NUTS draw"][1].append(nuts_bdl(x, y, args.nuts_samples, args.nuts_samples))
        rows["potential gradient"][0].append(grad_time(plain_model, (x, y), 300))
        rows["potential gradient"][1].append(grad_time(bdl_model(), (x, y, None), 300))
    print(f"2-layer MLP {D}-{H}-1, N={N}; median of {args.repeats} interleaved repeats, 1 torch thread")
    print(f"{'operation':20s} {'plain Pyro (ms)':>16s} {'pyro_bdl (ms)':>14s} {'ratio':>7s}")
    for name, (plain, ours) in rows.items():
        p, o = statistics.median(plain) * 1e3, statistics.median(ours) * 1e3
        print(f"{name:20s} {p:16.3f} {o:14.3f} {o / p:7.2f}")
    print("target: ratio <= 1.20")
    hand, ours = statistics.median(by_hand) * 1e3, statistics.median(rows["SVI step"][1]) * 1e3
    print(f"{'SVI step, torch by hand':20s} {hand:16.3f} {ours:14.3f} {ours / hand:7.2f}  (pyro_bdl vs plain torch)")
    print()
    potential_table(x, y, args.repeats)


if __name__ == "__main__":
    main()
