"""The sampling stage's spike guard (`SpikeGuard`): the frozen step, shrunk on the coordinates where a minibatch
gradient is far outside what the step was fitted to (an EMA of ĝ² as pSGLD's, Li et al. 2016)."""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from . import kernels as K
from .adaptation import Dynamics

#: EMA decay of the sampling stage's spike guard (`SpikeGuard`): pSGLD's (Li et al. 2016) 0.99
GUARD_DECAY = 0.99
#: ...which binds only where its EMA exceeds this multiple of the frozen E[ĝ²]: for Gaussian gradients the EMA's
#: relative fluctuation is ≈ √((1 − d)/(1 + d)·2) ≈ 0.1, so 2× is ten of them and the guard never binds there
#: (binding at 1× made SGLD's BLR variance 1.09 → 1.17: a state-dependent step without Γ biases the tails)
GUARD_SLACK = 2.0


def implied_square(step: torch.Tensor, dynamics: Dynamics, lr: float) -> torch.Tensor:
    """The E[ĝ²] the frozen ``step`` stands for (after its caps and floors): lr·T/G (Fisher), (lr/G)² (RMSprop)."""
    if dynamics.preconditioner == "fisher":
        return lr * dynamics.temperature / step
    return (lr / step) ** 2


class SpikeGuard:
    r"""The sampling stage's spike guard: the frozen step, shrunk where this step's gradient is far outside what it
    was fitted to.

    ``ema`` is an EMA of ĝ² (decay ``GUARD_DECAY``) started at the frozen step's own E[ĝ²] (``reference``,
    `implied_square`) and updated in place with this step's ĝ *before* the step is taken (pSGLD's running estimate,
    Li et al. 2016). With r_i = min(1, ``GUARD_SLACK``·E[ĝ_i²]/ema_i) the step is G_i·r_i (Fisher; G_i·√r_i for
    RMSprop), the noise variance that of the shrunk step (2αG r T − G²r²B̂) and the kinetic weight (1 − α/2)/(G r):
    r = 1, the frozen constants, wherever the EMA stays below twice the frozen E[ĝ²]. A minibatch whose gradient on
    a coordinate is far above it (a ReLU unit firing on a rare batch) moves it by at most ≈ 200·lr·T/|ĝ_i| (Fisher)
    instead of G_i·|ĝ_i|: measured on a digits ReLU MLP at T = 1 (500 images, 64-32-10, batch 50), such spikes
    of 10³–10⁵ × E[ĝ²] within 100 sampling steps threw default SGHMC out of the posterior on 2 of 4 seeds. On
    a Gaussian posterior the guard does not bind (its EMA fluctuates by ≈ 10% around the frozen E[ĝ²]); where it
    binds the step is state dependent without pSGLD's Γ correction, which Li et al. show is a small bias.
    Every per-step quantity is computed into a buffer (no allocation), ≈ 8 elementwise passes per step."""

    def __init__(self, c: K.Coefficients, kinetic_weight: Optional[torch.Tensor], reference: torch.Tensor,
                 ema: torch.Tensor, fisher: bool, variance_parts: Optional[Tuple[torch.Tensor, torch.Tensor]] = None):
        self.c, self.kinetic, self.ema, self.fisher, self.parts = c, kinetic_weight, ema, fisher, variance_parts
        self.limit = reference * GUARD_SLACK
        self.ratio, self.step = torch.empty_like(ema), torch.empty_like(ema)
        self.scale = None if c.scale is None else torch.empty_like(ema)
        self.weight = None if kinetic_weight is None else torch.empty_like(ema)

    def __call__(self, grad: torch.Tensor, scale: float = 1.0) -> Tuple[K.Coefficients, Optional[torch.Tensor]]:
        """This step's `Coefficients` and kinetic weight (views of the guard's buffers, valid until the next call),
        for the frozen step times the schedule's ``scale`` (1 in today's plans: an adaptive sampling stage keeps its
        lr constant, cSG-MCMC's included)."""
        self.ema.mul_(GUARD_DECAY).addcmul_(grad, grad, value=1 - GUARD_DECAY)
        r = torch.div(self.limit, self.ema, out=self.ratio).clamp_(max=1.0)
        if not self.fisher:
            r.sqrt_()
        if scale != 1.0:  # r is now the factor on the frozen step: the formulas below hold for any factor
            r.mul_(scale)
        torch.mul(self.c.step, r, out=self.step)
        if self.scale is not None:
            if self.parts is None:  # variance 2αGT·r (no noise subtracted): the frozen scale × √r
                torch.sqrt(r, out=self.scale).mul_(self.c.scale)
            else:  # r·(2αGT) − r²·(G²B̂)
                a, b = self.parts
                torch.mul(b, r, out=self.scale).neg_().add_(a).mul_(r).clamp_(min=0.0).sqrt_()
        if self.weight is not None:
            torch.div(self.kinetic, r, out=self.weight)
        return K.Coefficients(self.step, self.c.decay, self.scale), self.weight
