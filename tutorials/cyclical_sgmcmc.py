"""Cyclical SG-MCMC (Zhang et al. 2020) on 1-D regression with a gap.

A small tanh network is fitted to ``pyro_bdl.data.gap_regression()`` with ``method="csgmcmc"``.
The step size follows cosine cycles,

    α_k = α₀/2 · [cos(π · mod(k − 1, ⌈K/M⌉) / ⌈K/M⌉) + 1],

large at the start of each cycle (the sampler jumps away and explores, without noise, like
SGD with warm restarts) and small at its end (the sampling stage, with Langevin noise, where
the draws are collected). The figures show

1. ``cyclical_schedule.png`` — the step size and the loss (the minibatch potential U_T) over
   the run, the sampling stages shaded and the draws marked;
2. ``cyclical_functions.png`` — function draws coloured by cycle, with the Bayesian model
   average's mean and ±2 std band: the band widens in the gap and beyond the data;
3. ``cyclical_projection.png`` — the weight draws projected on their first two principal
   components: draws from one cycle sit together, different cycles land in different places.

Run ``python tutorials/cyclical_sgmcmc.py`` (small, ~10 s of CPU time) or ``--full``.
"""
from __future__ import annotations

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import pyro_bdl as bdl  # noqa: E402
from pyro_bdl.examples.networks import mlp  # noqa: E402


def main(full: bool = False, out_dir: str = "tutorials/figures") -> dict:
    os.makedirs(out_dir, exist_ok=True)
    data = bdl.data.gap_regression(n=80, noise=0.1, seed=0)
    torch.manual_seed(0)
    net = mlp(1, [50], 1, "tanh")
    model = bdl.BayesianModel(net, prior=bdl.priors.Gaussian(0.0, 1.0),
                              likelihood=bdl.likelihoods.Gaussian(scale=0.1))

    cycles, samples_per_cycle, epochs = (8, 10, 2000) if full else (4, 5, 300)
    # SGHMC inside: momentum carries the sampler along the flat directions of the posterior.
    # lr is per data point (ε = lr / N), the convention of Zhang et al.
    post = bdl.fit(model, data.x_train, data.y_train, method="csgmcmc", sampler="sghmc", momentum_decay=0.1,
                   preconditioner=None,  # Zhang et al.'s plain rule with their per-data-point lr
                   lr=1e-3, cycles=cycles, exploration=0.7, samples_per_cycle=samples_per_cycle, epochs=epochs,
                   batch_size=20, seed=0, progress=None)

    info = post.info
    steps = torch.arange(1, len(info["step_size"]) + 1)
    loss = info["loss"][0]
    draw_steps = info["draw_steps"]
    cycle_len = -(-len(steps) // cycles)
    cycle_of_draw = (draw_steps - 1) // cycle_len

    # 1. step size and loss over time
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 5), sharex=True)
    ax1.plot(steps, info["step_size"], color="C0")
    ax1.set_ylabel("step size α_k (per data point)")
    ax2.plot(steps, loss, color="C1", lw=0.7)
    ax2.plot(draw_steps, info["loss"][0, draw_steps - 1], "k.", label="draws")
    ax2.set_yscale("symlog")
    ax2.set_ylabel("loss U_T (minibatch)")
    ax2.set_xlabel("step k")
    for ax in (ax1, ax2):
        stage = info["sampling_stage"].float()
        ax.fill_between(steps, 0, 1, where=stage > 0, color="0.85", transform=ax.get_xaxis_transform(),
                        label="sampling stage")
    ax2.legend(loc="upper right")
    fig.tight_layout()
    schedule_png = os.path.join(out_dir, "cyclical_schedule.png")
    fig.savefig(schedule_png, dpi=120)
    plt.close(fig)

    # 2. function draws by cycle, and the BMA band
    x_grid = data.x_test
    pred = post.predict(x_grid)
    f = pred.outputs[..., 0]  # (S, 200)
    mean, std = pred.mean, pred.stddev
    fig, ax = plt.subplots(figsize=(8, 4))
    for s in range(f.shape[0]):
        ax.plot(x_grid[:, 0], f[s], color=f"C{int(cycle_of_draw[s]) % 10}", lw=0.6, alpha=0.6)
    ax.fill_between(x_grid[:, 0], mean - 2 * std, mean + 2 * std, color="0.6", alpha=0.3, label="BMA ±2 std")
    ax.plot(x_grid[:, 0], mean, "k", lw=1.5, label="BMA mean")
    ax.plot(data.x_train[:, 0], data.y_train, "k.", ms=4, label="data")
    ax.set_ylim(-4, 4)
    ax.set_title(f"function draws, coloured by cycle ({cycles} cycles × {samples_per_cycle} draws)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    functions_png = os.path.join(out_dir, "cyclical_functions.png")
    fig.savefig(functions_png, dpi=120)
    plt.close(fig)

    # 3. weight draws on their first two principal components
    w = bdl.WeightLayout.from_weights({k: v[0] for k, v in post.samples.items()}, batch_ndim=1)
    flat = w.flatten({k: v[0] for k, v in post.samples.items()})  # (draws, P)
    centred = flat - flat.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    proj = centred @ v[:2].T
    fig, ax = plt.subplots(figsize=(5, 4))
    for c in range(cycles):
        sel = cycle_of_draw == c
        ax.scatter(proj[sel, 0], proj[sel, 1], color=f"C{c % 10}", label=f"cycle {c + 1}", s=18)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7)
    fig.tight_layout()
    projection_png = os.path.join(out_dir, "cyclical_projection.png")
    fig.savefig(projection_png, dpi=120)
    plt.close(fig)

    # the numbers the figures show
    dist = torch.cdist(flat, flat)
    same = cycle_of_draw[:, None] == cycle_of_draw[None, :]
    off = ~torch.eye(len(flat), dtype=torch.bool)
    x = x_grid[:, 0]
    in_gap = (x > -0.5) & (x < 1.0)
    on_data = ((x > -2) & (x < -0.5)) | ((x > 1.0) & (x < 2))
    result = {
        "step_size": info["step_size"],
        "loss": loss,
        "draw_steps": draw_steps,
        "sampling_stage": info["sampling_stage"],
        "cycle_of_draw": cycle_of_draw,
        "within_cycle_distance": float(dist[same & off].mean()),
        "between_cycle_distance": float(dist[~same].mean()),
        "std_in_gap": float(std[in_gap].mean()),
        "std_on_data": float(std[on_data].mean()),
        "rmse_on_data": float(((mean - data.y_test)[on_data] ** 2).mean().sqrt()),
        "figures": [schedule_png, functions_png, projection_png],
    }
    print(f"cSG-MCMC: {cycles} cycles, {len(draw_steps)} draws; weight distance within a cycle "
          f"{result['within_cycle_distance']:.2f}, between cycles {result['between_cycle_distance']:.2f}")
    print(f"predictive std on the data {result['std_on_data']:.3f}, in the gap {result['std_in_gap']:.3f}; "
          f"RMSE on the data region {result['rmse_on_data']:.3f}")
    return result


if __name__ == "__main__":
    main(full="--full" in sys.argv)
