"""The SG-MCMC step rule on the one driver (`SGMCMCRule` on `pyro_bdl.infer.driver.drive`): K chains (`.chain.Chain`),
their gradients one stacked ``torch.func.vmap`` evaluation per step or one chain after another, their records read
to the host together once per block."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..driver import Batch
from ..stacking import StackedGradient
from .chain import Chain, Context, start_chain
from .gradients import gradient_estimates, stacked_gradient_estimates
from .record import read_records


class OwnChecks:
    """The driver's per-run check for a chain: none, because each chain checks its own record (`.chain.Chain.store`)
    with the SG-MCMC messages (the divergence floor of its first batch, a non-finite gradient named at its step)."""

    def __init__(self):
        self.start = math.nan

    def check(self, value: float, step: int, lr: Optional[float] = None) -> None:
        pass


class SGMCMCRule:
    """The SG-MCMC step rule on the one driver (`pyro_bdl.infer.driver.drive`): K chains, θ ``(K, P)``.

    The state is ``{"theta": (K, P), "chains": [Chain]}``, chain k's θ a row of the stack (updated in place).
    ``stacked``: the K chains' gradients are one `StackedGradient` (vmap) evaluation per step; otherwise the chains
    are stepped one after another within the step, each by the single-chain path
    (`.gradients.gradient_estimates`). Either way every other part of the step is the chain's own (`Chain`), so
    chain k is the chain run alone with the same seed — exactly when not stacked, to float rounding when stacked
    (vmap's batched matrix products round differently). The chains' records are read to the host in one
    synchronisation every ``ctx.check_every`` steps (and at the first step, so a non-finite start is named as such),
    before a checkpoint and at the end (`flush`). ``names``: each chain's name in messages (default the method's).
    """

    def __init__(self, ctx: Context, stacked: bool, names: Optional[Sequence[str]] = None):
        self.ctx, self.names = ctx, names
        objective, N = ctx.objective, ctx.N
        self.gradient = StackedGradient(lambda t, x, y: objective.potential(t, x, y, N),
                                        lambda t, x, y: objective.grad(t, x, y, N),
                                        lambda t, x, y, shared: objective.stacked_potential(t, x, y, N, shared)
                                        ) if stacked else None

    def _state(self, theta: torch.Tensor, chains: List[Dict[str, Any]]) -> Dict[str, Any]:
        names = self.names if self.names is not None else [None] * len(chains)
        return {"theta": theta,
                "chains": [Chain(self.ctx, {**s, "theta": theta[k]}, names[k]) for k, s in enumerate(chains)]}

    def init(self, theta: torch.Tensor) -> Dict[str, Any]:
        theta = theta.detach().clone()
        return self._state(theta, [start_chain(theta[k]) for k in range(theta.shape[0])])

    def update(self, state: Dict[str, Any], batch: Batch,
               generators: Sequence[torch.Generator]) -> Tuple[Dict[str, Any], torch.Tensor]:
        chains: List[Chain] = state["chains"]
        for c, g in zip(chains, generators):
            c.bind(g)
        us = []
        if self.gradient is None or len(chains) == 1:
            for k, c in enumerate(chains):
                xb, yb = batch.member(k)
                split, anchor = c.begin()
                u, estimates = gradient_estimates(c.objective, c.chain.theta, xb, yb, self.ctx.N, split, anchor)
                c.finish(u, estimates, xb, yb)
                us.append(u)
        else:
            needs = [c.begin() for c in chains]
            results = stacked_gradient_estimates(self.gradient, state["theta"], needs, batch, self.ctx.N)
            for k, (c, (u, estimates)) in enumerate(zip(chains, results)):
                c.finish(u, estimates, *batch.member(k))
                us.append(u)
        k = chains[0].k  # the chains step together
        if k == 1 or k - chains[0].read >= self.ctx.check_every:
            self.flush(chains)
        return state, torch.stack(us)

    @staticmethod
    def flush(chains: List[Chain]) -> None:
        """Read every chain's record since the last read (one host synchronisation) and check and store it."""
        if chains[0].k > chains[0].read:
            for c, values in zip(chains, read_records([c.record for c in chains])):
                c.store(values)

    def finish(self, state: Dict[str, Any]) -> List[Dict[str, Any]]:
        """Every chain's record read and checked, and its state written back: the chains' states."""
        self.flush(state["chains"])
        for c in state["chains"]:
            c.sync()
        return [c.state for c in state["chains"]]

    def save(self, state: Dict[str, Any]) -> Dict[str, Any]:
        chains = self.finish(state)
        return {"theta": state["theta"].clone(), "chains": [{**s, "theta": None} for s in chains]}

    def restore(self, saved: Dict[str, Any]) -> Dict[str, Any]:
        return self._state(saved["theta"].clone(), saved["chains"])
