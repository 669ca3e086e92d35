"""K independent runs stepped together: their potential gradients by ``torch.func.vmap``, and how many to stack.

`StackedGradient` evaluates ``(U_k(θ_k), ∇U_k(θ_k))`` for θ ``(K, P)`` — run k on its own minibatch, or all
runs on one shared batch — by vmap of the forward pass and one ordinary backward pass of ΣU_k (run k's U
depends on θ_k only, so ∂ΣU/∂θ_k = ∇U_k; cheaper than a vmapped ``grad_and_value``, as
`pyro_bdl.infer.map.MAPRule` measured). A plain MLP (``nn.Sequential`` of ``nn.Linear`` and elementwise
activations) skips vmap altogether: one ``baddbmm`` per layer and the prior and likelihood summed per run in closed
form (`pyro_bdl.model.potential.Objective.stacked_potential`, the same numbers to float rounding; 0.74× the vmapped
step on bench_engine's 30k MLP, K = 8). A network vmap cannot batch (``nn.LSTM``: ``aten::lstm`` has no
batching rule) is detected at the first call and evaluated one run at a time from then on, with the
single-run function, so the results are then exactly those of K separate runs.

`stack_size` is the one ``stack`` option of every method with independent runs (ensemble members,
Multi-SWAG members, SG-MCMC chains): ``True`` all, ``False`` one at a time, an integer that many, and
``"auto"`` as many as fit in `MEMORY_SHARE` of the free memory (`run_bytes` per run, plus what the method
keeps besides), on the CPU only for networks of at most `CPU_STACK_MAX_PARAMS` parameters, because there
vmap turns each layer's ``mm`` into a ``bmm`` that the CPU runs faster than K separate ``mm`` calls only
for small layers (measured, one thread, tanh MLPs, K = 4 chains' gradients by this class against 4
``Objective.grad`` calls: 0.80× at 22k parameters, 0.90× at 29k, 1.11× at 53k, 1.20–1.41× at 79k–110k, 1.37×
at 537k, 1.27× at 2.1M; `notes/issue-15-chains.md`).
"""
from __future__ import annotations

import os
from typing import Callable, Optional, Tuple, Union

import torch

from ..model.inputs import Inputs, as_args
from .driver import Batch

#: on the CPU, runs are stacked by default only up to this many parameters (module docs)
CPU_STACK_MAX_PARAMS = 40_000
#: share of the free memory a stack of runs may use (``stack="auto"``)
MEMORY_SHARE = 0.25


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
        batched: U of all K runs at once, ``batched(θ (K, P), x, y, shared) → (K,)`` or ``None`` where it does
            not apply (`pyro_bdl.model.potential.Objective.stacked_potential`: a plain MLP's forward passes
            batched by hand, cheaper than vmap's); tried before the vmap of ``value``, with the same numbers.
    """

    def __init__(self, value: Callable[..., torch.Tensor],
                 single: Callable[..., Tuple[torch.Tensor, torch.Tensor]],
                 batched: Optional[Callable[..., Optional[torch.Tensor]]] = None):
        self.single, self.batched = single, batched
        self._maps = {False: torch.func.vmap(value, in_dims=(0, 0, 0)),
                      True: torch.func.vmap(value, in_dims=(0, None, None))}
        #: runs stacked by vmap (True), one at a time (False: a network vmap cannot batch), or not yet tried (None)
        self.stacked: Optional[bool] = None

    def __call__(self, theta: torch.Tensor, x: Inputs, y: torch.Tensor, shared: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.stacked is not False:
            try:
                t = theta.detach().requires_grad_(True)
                u = None if self.batched is None else self.batched(t, x, y, bool(shared))
                if u is None:
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


def free_memory(device: torch.device) -> int:
    """Free bytes on ``device`` (the GPU's free memory; the host's available pages on the CPU)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2 ** 31


def run_bytes(model, data, size: int) -> int:
    """Estimated memory of one stacked run: 8 copies of its P parameters (θ, gradient, optimiser
    moments, vmap temporaries) and 3 of the activations of one minibatch (forward, backward, gather)."""
    x = data.example_x(1)
    numel = [0]

    def count(_module, _inputs, output):
        numel[0] += sum(t.numel() for t in (output if isinstance(output, (tuple, list)) else (output,))
                        if isinstance(t, torch.Tensor))

    leaves = [m for m in model.net.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model.net(*as_args(x))
    finally:
        for h in hooks:
            h.remove()
    itemsize = torch.finfo(next(model.net.parameters(), torch.zeros(())).dtype).bits // 8
    return itemsize * (8 * size + 3 * numel[0] * data.random_batch_size)


def stack_size(stack: Union[str, bool, int], num_runs: int, model, data, objective, extra_bytes: int = 0) -> int:
    """How many of ``num_runs`` independent runs are stepped together (module docs); ``extra_bytes``: what one
    run keeps besides `run_bytes` (e.g. SWAG's moments). A model whose density is not compiled (the Pyro trace:
    no pure function of θ to vmap) is never stacked. A bad ``stack`` fails here, before any work."""
    if stack is True:
        size = num_runs
    elif stack is False:
        size = 1
    elif stack == "auto":
        device = data.device  # the network's (θ's) device, without building θ
        if device.type == "cpu" and objective.size > CPU_STACK_MAX_PARAMS:
            return 1
        fits = free_memory(device) * MEMORY_SHARE // max(1, run_bytes(model, data, objective.size) + extra_bytes)
        size = int(max(1, min(num_runs, fits)))
    elif isinstance(stack, int) and not isinstance(stack, bool) and stack >= 1:
        size = min(stack, num_runs)
    else:
        raise ValueError(f"stack must be 'auto', True, False or a positive integer, got {stack!r}")
    return size if getattr(objective, "compiled", False) else 1


def group_path(checkpoint: Optional[str], group: int, num_groups: int) -> Optional[str]:
    """The checkpoint file of a group of stacked runs (``checkpoint`` itself when there is one group)."""
    if checkpoint is None or num_groups == 1:
        return checkpoint
    root, ext = os.path.splitext(checkpoint)
    return f"{root}.group{group}{ext}"
