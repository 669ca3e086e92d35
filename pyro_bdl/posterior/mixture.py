"""Equal-weight mixtures of independent posteriors (Multi-SWAG, members as chains)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch

from .._util.random import seeded
from ..model.layout import Weights
from . import io as posterior_io
from .base import Posterior


class MixturePosterior(Posterior):
    """The equal-weight mixture (1/M) Σ_m q_m(w) of M independent posteriors.

    Multi-SWAG (Wilson & Izmailov 2020) is a mixture of SWAG Gaussians fitted from different
    initialisations, one per basin of attraction. Its predictive distribution is the Bayesian
    model average over all members' draws,

        p(y | x, D) ≈ (1/M) Σ_m (1/S_m) Σ_s p(y | x, w_ms),   w_ms ~ q_m,

    i.e. the members' predictive probabilities averaged (classification) or their Gaussian
    mixtures pooled into one mixture (regression), through [`BMAPredictive`][pyro_bdl.BMAPredictive].

    ``sample(n)`` splits the n draws evenly over the members (the first ``n mod M`` members get
    one more), member by member; ``draws_by_chain`` gives each member as its own chain(s), so
    diagnostics see the spread between basins.

    Args:
        members: posteriors of the same model (e.g. [`SWAGPosterior`][pyro_bdl.SWAGPosterior]).
        method: the method name recorded on the mixture.
    """

    kind = "mixture"

    def _to_state(self) -> Dict[str, Any]:
        return {"members": [{"kind": m.kind, "method": m.method, "info": posterior_io.plain(m.info),
                             "state": m._to_state()} for m in self.members]}

    @classmethod
    def _from_state(cls, model, state, *, method, info, guide=None):
        members = [posterior_io.KINDS[m["kind"]]._from_state(model, m["state"], method=m["method"], info=m["info"])
                   for m in state["members"]]
        return cls(members, method, info=info)

    def __init__(self, members: Sequence[Posterior], method: str = "mixture", info: Optional[Dict[str, Any]] = None):
        members = list(members)
        if not members:
            raise ValueError("a MixturePosterior needs at least one member posterior")
        bad = [type(m).__name__ for m in members if not isinstance(m, Posterior)]
        if bad:
            raise TypeError(f"mixture members must be pyro_bdl Posteriors, got {bad}")
        if any(m.model is not members[0].model for m in members):
            raise ValueError("all mixture members must be posteriors of the same model object")
        super().__init__(members[0].model, method, info)
        self.members = members

    @property
    def num_members(self) -> int:
        """Number of mixture members (e.g. Multi-SWAG's SWAG posteriors)."""
        return len(self.members)

    def _counts(self, num_samples: int) -> List[int]:
        M = self.num_members
        return [num_samples // M + (1 if m < num_samples % M else 0) for m in range(M)]

    def sample(self, num_samples: int, seed: Optional[int] = None) -> Weights:
        """``num_samples`` draws, split evenly over the members, in member order."""
        with seeded(seed):
            parts = [m.sample(c) for m, c in zip(self.members, self._counts(num_samples)) if c > 0]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def draws_by_chain(self, num_samples: int = 100, seed: Optional[int] = 0) -> Weights:
        """Each member's chains side by side: ``{site: (chains, draws, *shape)}`` (one chain per
        SWAG member; ``num_samples`` draws each)."""
        with seeded(seed):
            parts = [m.draws_by_chain(num_samples, seed=None) for m in self.members]
        draws = {p[next(iter(p))].shape[1] for p in parts}
        if len(draws) != 1:
            raise ValueError(f"members have different numbers of draws per chain ({sorted(draws)}); "
                             "draws_by_chain needs equal chain lengths")
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _predict_draws(self, num_samples, seed):
        # ``None``: every member's own default (all stored draws, or 100 for a sampler).
        counts = [None] * self.num_members if num_samples is None else self._counts(num_samples)
        with seeded(seed):
            parts = [m._predict_draws(c, None) for m, c in zip(self.members, counts) if c != 0]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def _buffers_for(self, draws):
        # Members share the model and its training data, so any of them recomputes buffers for any draws.
        return self.members[0]._buffers_for(draws)
