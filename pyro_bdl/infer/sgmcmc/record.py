"""A chain's per-step record (`StepRecord`): its loss, a finiteness check of ĝ and the sums behind the temperature
diagnostics, kept on θ's device and read to the host in blocks (`read_records`: one synchronisation for all the
chains stepped together)."""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence

import torch

from . import kernels as K

class StepRecord:
    """A chain's per-step values, kept on θ's device (a list of 0-dim tensors per step, no host read) and read to
    the host in blocks (`read`), with the sums behind the temperature estimates of
    `pyro_bdl.evaluate.diagnostics.sampler` (divided by d at the read). Per step:

    0. U;
    1. a number that is finite iff ĝ is (the non-finite-gradient check): Σĝ, or at SAMPLE steps θ·ĝ, which
       serves the configurational temperature too (a non-finite ĝ_i makes θ_iĝ_i, hence the dot, non-finite);
    2. θ₀·ĝ at SAMPLE steps: T̂_conf·d = (θ − θ₀)·ĝ = value 1 − value 2 (θ the state the gradient was computed
       at; two dot products, no θ-sized temporary; their float rounding is far below the statistic's own spread);
    3. Σ_i v_i² (1 − α_i/2) / G_i at SGHMC's SAMPLE steps (v after the step, G and α of the step): T̂_kin·d.

    Values a step does not have are NaN.
    """

    def __init__(self, like: torch.Tensor):
        self.nan = torch.tensor(math.nan, dtype=like.dtype, device=like.device)
        self.buffer = torch.empty_like(like)
        self.pending: List[List[torch.Tensor]] = []

    def step(self, u: torch.Tensor, g: torch.Tensor, theta: Optional[torch.Tensor] = None,
             anchor: Optional[torch.Tensor] = None) -> None:
        """The next step's U and gradient check; with ``theta`` and ``anchor`` θ₀ (SAMPLE steps) the
        configurational sums."""
        if theta is None:
            self.pending.append([u, g.sum(), self.nan, self.nan])
        else:
            self.pending.append([u, torch.dot(theta, g), torch.dot(anchor, g), self.nan])

    def kinetic(self, momentum: torch.Tensor, weight) -> None:
        """The last step's kinetic sum; ``weight`` = (1 − α/2)/G, a number or a ``(P,)`` tensor."""
        if isinstance(weight, torch.Tensor):
            self.pending[-1][3] = torch.dot(torch.mul(momentum, weight, out=self.buffer), momentum)
        else:
            self.pending[-1][3] = torch.dot(momentum, momentum) * weight

    def read(self) -> List[List[float]]:
        """``[U, check, T̂_conf·d, T̂_kin·d]`` of every step since the last read (one host synchronisation)."""
        return read_records([self])[0]


def read_records(records: Sequence[StepRecord]) -> List[List[List[float]]]:
    """`StepRecord.read` of every record in ``records`` in one host synchronisation (chains stepped together)."""
    values = [v.to(r.nan.dtype) for r in records for row in r.pending for v in row]
    flat = torch.stack(values).tolist() if values else []
    out, start = [], 0
    for r in records:
        end = start + 4 * len(r.pending)
        out.append([[flat[i], flat[i + 1], flat[i + 1] - flat[i + 2], flat[i + 3]] for i in range(start, end, 4)])
        r.pending, start = [], end
    return out


def kinetic_weight(c: K.Coefficients, friction) -> Any:
    """(1 − α/2)/G of the kinetic temperature, for the step's `Coefficients` and friction α."""
    return (1 - friction / 2) / c.step
