"""BatchNorm statistics for weight draws.

A network with BatchNorm is trained with batch statistics but predicts with stored running
statistics, and those belong to one set of weights. For any other weights w_s (a SWAG draw,
an SG-MCMC sample) they must be recomputed (Maddox et al. 2019, "bn_update"): one pass over
the training inputs with the BatchNorm layers in train mode, the running statistics being the
cumulative average over the batches,

    μ_s = (1/J) Σ_j mean_j(h_s),    σ²_s = (1/J) Σ_j var_j(h_s)   (unbiased batch variance),

which is what PyTorch's ``momentum=None`` gives, here done with momentum 1/j at batch j.
Only the BatchNorm layers switch to train mode (dropout stays off, so the statistics are
those of the activations the network sees when it predicts). All S draws run in one
vectorised call per batch (``torch.func.vmap``), with per-draw buffers; the network's own
buffers are not touched.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import nn
from torch.func import functional_call, vmap

from .inputs import Inputs, as_args, num_rows, split_rows
from .layout import Weights

_BatchNorm = nn.modules.batchnorm._BatchNorm


def batchnorm_layers(net: nn.Module) -> Dict[str, nn.Module]:
    """The BatchNorm layers of ``net`` that keep running statistics, by module path."""
    return {name: m for name, m in net.named_modules()
            if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None}


def has_batchnorm(net: nn.Module) -> bool:
    """Whether ``net`` has BatchNorm layers with running statistics (then draws need `recompute`)."""
    return bool(batchnorm_layers(net))


def _buffer_names(layers: Dict[str, nn.Module]) -> List[str]:
    return [f"{path}.{b}" if path else b for path in layers for b in ("running_mean", "running_var")]


@torch.no_grad()
def recompute(network, weights: Weights, x: Inputs, batch_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Running statistics of every BatchNorm layer for each of S weight draws.

    Args:
        network: a [`LiftedNetwork`][pyro_bdl.LiftedNetwork].
        weights: ``{site: (S, *shape)}`` (one leading draw dim).
        x: training inputs for the pass.
        batch_size: rows per batch (default: all at once).

    Returns:
        ``{buffer name: (S, *shape)}`` for every ``running_mean`` / ``running_var``, to pass as
        ``buffers=`` to [`forward`][pyro_bdl.LiftedNetwork]. Empty without BatchNorm.
    """
    net = network.net
    layers = batchnorm_layers(net)
    if not layers:
        return {}
    S = network.batch_shape(weights)
    if len(S) != 1:
        raise ValueError(f"recompute needs weights with one leading draw dim, got draw dims {tuple(S)}")
    S = S[0]
    own = dict(net.named_buffers())
    names = _buffer_names(layers)
    stats = {n: (torch.zeros if n.endswith("mean") else torch.ones)(S, *own[n].shape, dtype=own[n].dtype)
             for n in names}
    # Everything else stays fixed; the batch counters get private copies so the net is not touched.
    fixed = {k: v for k, v in network._fixed_tensors().items() if k not in stats}
    fixed.update({k: v.clone() for k, v in fixed.items() if k.endswith("num_batches_tracked")})
    params = dict(net.named_parameters())
    draws = {n: weights[network.site_name(n)].expand(S, *params[n].shape) for n in network.param_names}

    def one(w: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor], xb: Inputs) -> torch.Tensor:
        return functional_call(net, {**fixed, **w, **b}, as_args(xb))

    saved = [(m.training, m.momentum) for m in layers.values()]
    try:
        for j, xb in enumerate(split_rows(x, batch_size or num_rows(x))):
            for m in layers.values():
                m.training, m.momentum = True, 1.0 / (j + 1)  # cumulative average over batches
            if network.vectorised is False:  # a network vmap cannot batch (see LiftedNetwork.vectorised)
                for s in range(S):
                    one({n: w[s] for n, w in draws.items()}, {n: b[s] for n, b in stats.items()}, xb)
            else:
                vmap(one, in_dims=(0, 0, None))(draws, stats, xb)  # updates ``stats`` in place
    finally:
        for m, (training, momentum) in zip(layers.values(), saved):
            m.training, m.momentum = training, momentum
    return stats
