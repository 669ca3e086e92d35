"""The gradient estimates of an SG-MCMC step: the minibatch gradient of U, its noise B̂ from the batch's two halves
(`.kernels.split_batch_noise`) and the control-variate estimate at an anchor {θ̂, ∇U(θ̂)} (`.kernels.control_variate`),
for one chain (`gradient_estimates`) or for K stacked chains in one ``torch.func.vmap`` evaluation
(`stacked_gradient_estimates`); and the anchors' full-data gradients (`anchor_at`)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Tuple

import pyro
import torch

from ..._util import checkpoint as ckpt
from ...model.inputs import num_rows, take_rows
from ...model.potential import Objective
from ..data import FitData
from ..driver import Batch
from ..stacking import StackedGradient
from ..stacking import rows as stacked_rows
from . import kernels as K

#: the gradient estimates of a step: {"plain": (ĝ, B̂)} and, with an anchor, "cv": (ĝ_cv, B̂_cv); B̂ is None
#: without a split batch (0 for the full batch)
Estimates = Dict[str, Tuple[torch.Tensor, Optional[torch.Tensor]]]
Anchor = Dict[str, torch.Tensor]

#: batch pairs of `augmentation_noise` (a relative error of √(2/32) = 0.25 per coordinate, as SWAG's noise batches)
AUGMENTATION_PAIRS = 32


def _loader_generator(data: FitData) -> Optional[torch.Generator]:
    return getattr(data.loader, "generator", None) if data.loader is not None else None


@contextmanager
def outside_rng_kept(data: FitData) -> Iterator[None]:
    """Random state outside the chains' own generators — torch's global RNG (a user DataLoader without a generator
    shuffles with it) and the DataLoader's generator, if it has one — as it was before the block."""
    g = _loader_generator(data)
    snap = {"global": ckpt.rng_state(), "loader": None if g is None else g.get_state()}
    try:
        yield
    finally:
        ckpt.set_rng_state(snap["global"])
        if g is not None and snap["loader"] is not None:
            g.set_state(snap["loader"])


def halves(xb, yb, split: bool) -> List[Tuple]:
    """The minibatch as one part, or (``split``) as its two halves (the noise estimate's)."""
    m = num_rows(xb)
    if not split or m < 2:
        return [(xb, yb)]
    h = m // 2
    return [(take_rows(xb, slice(None, h)), yb[:h]), (take_rows(xb, slice(h, None)), yb[h:])]


def gradient_estimates(objective: Objective, theta: torch.Tensor, xb, yb, N: int, split: bool,
                       anchor: Optional[Anchor]) -> Tuple[torch.Tensor, Estimates]:
    """U and the gradient estimates of ∇U on a minibatch: ``(U, {"plain": (ĝ, B̂), "cv": (ĝ_cv, B̂_cv)})``.

    ``split`` estimates each estimate's noise B̂ from the batch's two halves (else B̂ is None, or 0
    for the full batch); ``"cv"`` is there when an ``anchor`` {θ̂, ∇U(θ̂)} is given (one more
    gradient evaluation, at θ̂, on the same rows)."""
    m = num_rows(xb)
    parts = halves(xb, yb, split)
    with pyro.validation_enabled(False):
        here = [objective.grad(theta, x, y, N) for x, y in parts]
        there = [objective.grad(anchor["theta"], x, y, N)[1] for x, y in parts] if anchor is not None else None
    return assemble(here, there, anchor, m, N, [num_rows(x) for x, _ in parts])


def augmentation_noise(objective: Objective, data: FitData, theta: torch.Tensor, temperature: float, generator: torch.Generator,
                       pairs: int = AUGMENTATION_PAIRS) -> torch.Tensor:
    r"""The augmentation's share of the minibatch noise of ĝ = T·∇U_T at ``theta``, per coordinate:
    B̂_aug = E_b[Var_a(ĝ | b)] = E[(ĝ(b, a₁) − ĝ(b, a₂))²]/2 over ``pairs`` batches b, each under two independent
    augmentations a₁, a₂ (`FitData.paired_batches`, drawn from ``generator``; the run's other random state is kept).

    Under random reshuffling an epoch's data-sampling noise sums to zero, but an augmentation drawn afresh at every
    step is i.i.d. noise that heats the chain by G·B_aug/(2α) like any other (Chen et al. 2014): this is the part the
    sampling stage subtracts (package docs, "Minibatch noise")."""
    N = data.dataset_size
    total = torch.zeros_like(theta)
    with outside_rng_kept(data), pyro.validation_enabled(False):
        for x1, x2, y in data.paired_batches(pairs, generator):
            diff = objective.grad(theta, x1, y, N)[1] - objective.grad(theta, x2, y, N)[1]
            total += diff * diff
    return total * (temperature * temperature / (2 * pairs))


def full_data(data: FitData):
    """The whole data set (`FitData.full`), concatenated the first time under a fixed seed with the
    caller's random state restored after: a user loader's shuffling neither shifts the run's RNG nor
    makes the row order (the anchor gradient's summation order) depend on when it is first asked for."""
    with outside_rng_kept(data):
        torch.manual_seed(0)
        g = _loader_generator(data)
        if g is not None:
            g.manual_seed(0)
        return data.full()


def anchor_at(objective: Objective, data: FitData, theta: torch.Tensor) -> Anchor:
    """{θ̂, ∇U(θ̂)}: the full-data gradient at ``theta``, in chunks of the batch size (one pass over the data)."""
    x, y = full_data(data)
    N = data.dataset_size
    size = data.random_batch_size
    total = torch.zeros_like(theta)
    with pyro.validation_enabled(False):
        for i in range(0, N, size):
            xb, yb = take_rows(x, slice(i, i + size)), y[i:i + size]
            total = total + objective.grad(theta, xb, yb, N)[1] * (num_rows(xb) / N)
    return {"theta": theta.detach().clone(), "grad": total}


def assemble(here, there, anchor: Optional[Anchor], m: int, N: int, sizes: List[int]) -> Tuple[torch.Tensor, Estimates]:
    """`gradient_estimates`' output from the parts' ``here`` = [(U, ĝ(θ))] and ``there`` = [ĝ(θ̂)] (with an ``anchor``)."""
    estimates = {"plain": [r[1] for r in here]}
    if anchor is not None:
        estimates["cv"] = [K.control_variate(r[1], a, anchor["grad"]) for r, a in zip(here, there)]
    if len(here) == 1:  # the whole minibatch: its estimate as it is (no weighted sum of one part)
        return here[0][0], {name: (gs[0], torch.zeros_like(gs[0]) if m == N else None)
                            for name, gs in estimates.items()}
    u = sum(n * r[0] for n, r in zip(sizes, here)) / m
    out = {}
    for name, gs in estimates.items():
        g = sum(n * gk for n, gk in zip(sizes, gs)) / m
        out[name] = (g, K.split_batch_noise(gs[0], gs[1], sizes[0], sizes[1], N))
    return u, out


def stacked_gradient_estimates(gradient: StackedGradient, theta: torch.Tensor,
                               needs: List[Tuple[bool, Optional[Anchor]]], batch: Batch,
                               N: int) -> List[Tuple[torch.Tensor, Estimates]]:
    """`gradient_estimates` of every chain at once: θ ``(K, P)`` (the chains' rows), chain k on ``batch.member(k)``
    and with ``needs[k]`` = (split, anchor) from `.chain.Chain.begin`. The minibatch gradients of every part at θ are one vmapped
    evaluation, and, when any chain drives with a control variate, those at the anchors θ̂ another (chains without
    an anchor stand in with their θ, and their result is not used). ``split`` is the plan's, so the chains' own."""
    m = num_rows(batch.y) if batch.shared else batch.y.shape[1]
    split = needs[0][0] and m >= 2
    slices = [slice(None, m // 2), slice(m // 2, None)] if split else [slice(None)]

    def part(rows_: slice):
        if not split:
            return batch.x, batch.y
        if batch.shared:
            return take_rows(batch.x, rows_), batch.y[rows_]
        return stacked_rows(batch.x, rows_), batch.y[:, rows_]

    sizes = [len(range(m)[s]) for s in slices]
    with pyro.validation_enabled(False):
        here = [gradient(theta, *part(s), batch.shared) for s in slices]
        anchors = [a for _, a in needs]
        there = None
        if any(a is not None for a in anchors):
            at = torch.stack([a["theta"] if a is not None else theta[k] for k, a in enumerate(anchors)])
            there = [gradient(at, *part(s), batch.shared)[1] for s in slices]
    return [assemble([(u[k], g[k]) for u, g in here], None if a is None else [g[k] for g in there], a, m, N, sizes)
            for k, a in enumerate(anchors)]
