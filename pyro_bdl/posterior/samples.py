"""Posteriors held as weight draws: stored draws with a chain dimension, or a guide that draws on demand."""
from __future__ import annotations

from typing import Any, Dict, Optional

import pyro
import torch
from pyro import poutine

from .._util.random import seeded
from ..model.bayesian_model import BayesianModel
from ..model.layout import Weights
from .base import Posterior


class SamplesPosterior(Posterior):
    """Stored draws ``samples[site]`` of shape ``(num_chains, num_draws, *shape)``.

    ``sample_stats`` holds per-draw sampler statistics of shape ``(num_chains, num_draws)``
    (e.g. ``diverging``, ``step_size``, ``tree_depth``, ``energy``, ``accept_prob``).
    """

    def __init__(self, model: BayesianModel, samples: Weights, method: str,
                 sample_stats: Optional[Dict[str, torch.Tensor]] = None, info: Optional[Dict[str, Any]] = None):
        super().__init__(model, method, info)
        shapes = {tuple(v.shape[:2]) for v in samples.values()}
        if len(shapes) != 1:
            raise ValueError(f"all sites need the same (chains, draws) dims, got {shapes}")
        self.samples = {k: v.detach() for k, v in samples.items()}
        self.sample_stats = {k: torch.as_tensor(v) for k, v in (sample_stats or {}).items()}

    @property
    def num_chains(self) -> int:
        """Number of chains (independent runs: MCMC chains, ensemble members, ...)."""
        return next(iter(self.samples.values())).shape[0]

    @property
    def num_draws(self) -> int:
        """Number of draws per chain."""
        return next(iter(self.samples.values())).shape[1]

    def draws_by_chain(self, num_samples: Optional[int] = None, seed: Optional[int] = 0) -> Weights:
        """The stored draws, ``{site: (chains, draws, *shape)}``."""
        return dict(self.samples)

    def flat_samples(self) -> Weights:
        """All draws with chains concatenated: ``{site: (chains·draws, *shape)}``."""
        return {k: v.reshape(-1, *v.shape[2:]) for k, v in self.samples.items()}

    def sample(self, num_samples: Optional[int] = None, seed: Optional[int] = None) -> Weights:
        """``num_samples`` of the stored draws: evenly spaced over all chains when there are enough,
        else resampled with replacement. ``None`` returns all of them."""
        flat = self.flat_samples()
        total = self.num_chains * self.num_draws
        if num_samples is None:
            return flat
        if num_samples <= total:
            idx = torch.linspace(0, total - 1, num_samples).round().long()
        else:
            with seeded(seed):
                idx = torch.randint(total, (num_samples,))
        return {k: v[idx] for k, v in flat.items()}

    def _predict_draws(self, num_samples, seed):
        total = self.num_chains * self.num_draws
        # Repeating stored draws adds nothing to an empirical average: use at most all of them.
        return self.sample(None if num_samples is None else min(num_samples, total), seed=seed)


class GuidePosterior(Posterior):
    """A trained Pyro guide; ``sample(n)`` draws n weights in one vectorised guide call.

    The guide's parameters live on the guide module (Pyro's ``module_local_params``), so a
    posterior never depends on the global parameter store and several can coexist.
    """

    def __init__(self, model: BayesianModel, guide: torch.nn.Module, method: str, example_x: torch.Tensor,
                 info: Optional[Dict[str, Any]] = None):
        super().__init__(model, method, info)
        self.guide = guide
        self.example_x = example_x[:1].detach().clone()

    @torch.no_grad()
    def sample(self, num_samples: int, seed: Optional[int] = None) -> Weights:
        shapes = self.model.latent_shapes(self.example_x)
        with seeded(seed), pyro.settings.context(module_local_params=True), poutine.block():
            with pyro.plate("_bdl_draws", num_samples, dim=-2):
                trace = poutine.trace(self.guide).get_trace(self.example_x)
        out = {}
        for name, shape in shapes.items():
            value = trace.nodes[name]["value"]
            out[name] = value.reshape(num_samples, *shape)
        return out
