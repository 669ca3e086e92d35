"""The SWAG posterior (Maddox et al. 2019): a Gaussian over weights from the SGD trajectory's moments."""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import pyro
import torch

from .._util.random import seeded
from ..guides.swag import SWAG, check_scale, check_variant
from ..model import batchnorm
from ..model.bayesian_model import BayesianModel
from ..model.layout import Weights
from .base import Posterior, prototype_inputs


class SWAGPosterior(Posterior):
    """The SWAG posterior: a trained [`SWAG`][pyro_bdl.guides.SWAG] guide (moments included).

    ``sample(n)`` draws θ = θ̄ + √scale·(σ ⊙ z₁ + Dᵀz₂/√(k−1)) and maps it to the sites;
    ``predict`` averages over draws (one draw for the ``"swa"`` variant) and, for networks with
    BatchNorm, recomputes each draw's statistics on ``bn_inputs`` first. ``guide`` is a Pyro
    guide, so ``pyro.infer.Predictive(model, guide=post.guide, num_samples=30)`` also works.

    Attributes:
        guide: the SWAG guide holding θ̄, σ², D and the final SGD iterate.
        variant, scale: how draws are made (``with_variant`` gives the same moments sampled another way).
    """

    def __init__(self, model: BayesianModel, guide: SWAG, method: str = "swag", variant: Optional[str] = None,
                 scale: Optional[float] = None, bn_inputs: Optional[torch.Tensor] = None,
                 bn_batch_size: Optional[int] = None, info: Optional[Dict[str, Any]] = None):
        super().__init__(model, method, info)
        if guide.num_snapshots == 0:
            raise ValueError("the SWAG guide has no snapshots; collect at least one before building a posterior")
        self.guide = guide
        self.variant = check_variant(guide.variant if variant is None else variant)
        self.scale = check_scale(guide.scale if scale is None else scale)
        self.bn_inputs = bn_inputs
        self.bn_batch_size = bn_batch_size

    kind = "swag"

    def _to_state(self) -> Dict[str, Any]:
        g = self.guide
        args, kwargs = prototype_inputs(g)
        return {"guide_args": {"rank": g.rank, "scale": g.scale, "variant": g.variant, "var_clamp": g.var_clamp},
                "setup_args": args, "setup_kwargs": kwargs, "guide_state": dict(g.state_dict()),
                "variant": self.variant, "scale": self.scale, "bn_inputs": self.bn_inputs,
                "bn_batch_size": self.bn_batch_size}

    @classmethod
    def _from_state(cls, model, state, *, method, info, guide=None):
        guide = SWAG(model, **state["guide_args"])
        with pyro.settings.context(module_local_params=True):
            guide.setup(*state["setup_args"], **state["setup_kwargs"])
        guide.load_state_dict(state["guide_state"])
        return cls(model, guide, method, variant=state["variant"], scale=state["scale"], bn_inputs=state["bn_inputs"],
                   bn_batch_size=state["bn_batch_size"], info=info)

    def with_variant(self, variant: Optional[str] = None, scale: Optional[float] = None) -> "SWAGPosterior":
        """The same moments sampled as ``variant`` (``"swag"``, ``"diagonal"``, ``"swa"``) and/or another ``scale``."""
        new = copy.copy(self)
        new.variant = check_variant(self.variant if variant is None else variant)
        new.scale = check_scale(self.scale if scale is None else scale)
        new.info = dict(self.info)
        return new

    def sample(self, num_samples: int, seed: Optional[int] = None) -> Weights:
        with seeded(seed):
            return self.guide.sample_values(num_samples, self.variant, self.scale)

    def _predict_draws(self, num_samples: Optional[int], seed: Optional[int]) -> Weights:
        n = 100 if num_samples is None else num_samples
        return self.sample(1 if self.variant == "swa" else n, seed=seed)  # SWA: every draw is θ̄

    def _buffers_for(self, draws: Weights) -> Optional[Dict[str, torch.Tensor]]:
        if self.bn_inputs is None:  # no BatchNorm: the network's (unused) buffers, no extra pass
            return None
        weights = {k: draws[k] for k in self.model.weight_sites}
        return batchnorm.recompute(self.model.network, weights, self.bn_inputs, self.bn_batch_size)

    def moments(self) -> Dict[str, torch.Tensor]:
        """The collected moments over the flat θ (layout ``guide.objective.layout``):
        ``mean`` (P,), ``second_moment`` (P,), ``variance`` (P,, clamped), ``deviations`` (k, P)."""
        g = self.guide
        return {"mean": g.mean.clone(), "second_moment": g.second_moment.clone(), "variance": g.variance.clone(),
                "deviations": g.deviations.clone()}
