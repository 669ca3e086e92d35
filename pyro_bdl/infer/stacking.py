"""K independent runs stepped together: their potential gradients by ``torch.func.vmap``, and how many to stack.

`StackedGradient` evaluates ``(U_k(θ_k), ∇U_k(θ_k))`` for θ ``(K, P)`` — run k on its own minibatch, or all
runs on one shared batch — by vmap of the forward pass and one ordinary backward pass of ΣU_k (run k's U
depends on θ_k only, so ∂ΣU/∂θ_k = ∇U_k; cheaper than a vmapped ``grad_and_value``, as
`pyro_bdl.infer.map.MAPRule` measured). A network vmap cannot batch (``nn.LSTM``: ``aten::lstm`` has no
batching rule) is detected at the first call and evaluated one run at a time from then on, with the
single-run function, so the results are then exactly those of K separate runs.

`chain_stack_size` is the SG-MCMC chains' ``stack`` option (module docs of `pyro_bdl.infer.sgmcmc`): on a
GPU as many chains as memory allows (`pyro_bdl.infer.ensemble.stack_size`); on the CPU only networks of at
most `CPU_STACK_MAX_PARAMS` parameters, because there vmap turns each layer's ``mm`` into a ``bmm`` that
the CPU runs faster than K separate ``mm`` calls only for small layers (measured, one thread, tanh MLPs, K = 4
chains' gradients by this class against 4 ``Objective.grad`` calls: 0.80× at 22k parameters, 0.90× at 29k,
1.11× at 53k, 1.20–1.41× at 79k–110k, 1.37× at 537k, 1.27× at 2.1M; `notes/issue-15-chains.md`).
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch

from ..model.inputs import Inputs
from .driver import Batch
from .ensemble import stack_size  # the memory rule of stacked ensemble members

#: on the CPU, chains are stacked by default only up to this many parameters (module docs)
CPU_STACK_MAX_PARAMS = 40_000


def rows(x: Inputs, index) -> Inputs:
    """Rows ``index`` of a stacked batch ``(K, B, ...)`` along the batch dimension (dim 1), each input of a tuple."""
    if isinstance(x, tuple):
        return tuple(part[:, index] for part in x)
    return x[:, index]


class StackedGradient:
    """``(U (K,), ∇U (K, P))`` of K runs at θ ``(K, P)`` (module docs).

    Args:
        value: U of one run, ``value(θ (P,), x, y) → ()``, a pure function of θ (vmap traces it).
        single: ``(U, ∇U)`` of one run, ``single(θ (P,), x, y)``: the one-at-a-time fallback, which is the
            single-run code path itself.
    """

    def __init__(self, value: Callable[..., torch.Tensor],
                 single: Callable[..., Tuple[torch.Tensor, torch.Tensor]]):
        self.single = single
        self._maps = {False: torch.func.vmap(value, in_dims=(0, 0, 0)),
                      True: torch.func.vmap(value, in_dims=(0, None, None))}
        #: runs stacked by vmap (True), one at a time (False: a network vmap cannot batch), or not yet tried (None)
        self.stacked: Optional[bool] = None

    def __call__(self, theta: torch.Tensor, x: Inputs, y: torch.Tensor, shared: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.stacked is not False:
            try:
                t = theta.detach().requires_grad_(True)
                u = self._maps[bool(shared)](t, x, y)
                (g,) = torch.autograd.grad(u.sum(), t)
                self.stacked = True
                return u.detach(), g
            except RuntimeError:
                if self.stacked:  # vmap batched this network before: a real error
                    raise
                self.stacked = False
        us, gs = [], []
        batch = Batch(x, y, bool(shared))
        for k in range(theta.shape[0]):
            u, g = self.single(theta[k], *batch.member(k))
            us.append(u)
            gs.append(g)
        return torch.stack(us), torch.stack(gs)


def chain_stack_size(stack: Union[str, bool, int], num_chains: int, model, data, objective) -> int:
    """How many SG-MCMC chains are stepped together (module docs): ``True`` all, ``False`` one, an integer that many,
    ``"auto"`` as many as memory allows on a GPU, and on the CPU that many only up to `CPU_STACK_MAX_PARAMS`
    parameters. A model whose density is not compiled (the Pyro trace: no pure function of θ to vmap) is never
    stacked."""
    size = stack_size(stack, num_chains, model, data, objective)
    if not getattr(objective, "compiled", False):
        return 1
    if stack == "auto" and objective.initial().device.type == "cpu" and objective.size > CPU_STACK_MAX_PARAMS:
        return 1
    return size
