"""What [`pyro_bdl.fit`][pyro_bdl.fit] returns: one interface for every inference method.

* ``sample(n)`` — n weight draws ``{site: (n, *shape)}``;
* ``predict(x, num_samples)`` — the Bayesian model average ([`BMAPredictive`][pyro_bdl.BMAPredictive]);
* ``save(path)`` / ``Posterior.load(path)`` — a file that reloads in a fresh process.

Kinds of posterior:

* [`SamplesPosterior`][pyro_bdl.SamplesPosterior] — stored draws with a chain dimension ``(chains, draws, ...)``:
  MCMC, SG-MCMC, MAP (one chain of one draw), deep ensembles (one chain per member);
* [`GuidePosterior`][pyro_bdl.GuidePosterior] — a trained Pyro guide that draws as many samples as asked (SVI);
* [`MixturePosterior`][pyro_bdl.MixturePosterior] — an equal-weight mixture of independent posteriors (Multi-SWAG).
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, List, Optional, Sequence

import pyro
import torch
from pyro import poutine

from . import checkpoint
from .lifting import BayesianModel
from .predictive import BMAPredictive
from .weights import Weights

FORMAT = "pyro_bdl.posterior"
FORMAT_VERSION = 1


@contextlib.contextmanager
def seeded(seed: Optional[int]) -> Iterator[None]:
    """Run with torch's global RNG seeded, restoring its state afterwards (no global side effect)."""
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class Posterior:
    """Base class: subclasses implement `sample`.

    Attributes:
        model: the [`BayesianModel`][pyro_bdl.BayesianModel] it is a posterior of.
        method: the inference method that produced it (``"nuts"``, ``"svi"``, ...).
        info: method-specific records (losses, step sizes, timings).
    """

    def __init__(self, model: BayesianModel, method: str, info: Optional[Dict[str, Any]] = None):
        self.model = model
        self.method = method
        self.info = dict(info or {})

    def sample(self, num_samples: int, seed: Optional[int] = None) -> Weights:
        """``num_samples`` draws of every latent site, ``{site: (num_samples, *shape)}``."""
        raise NotImplementedError

    def _predict_draws(self, num_samples: Optional[int], seed: Optional[int]) -> Weights:
        return self.sample(100 if num_samples is None else num_samples, seed=seed)

    def _buffers_for(self, draws: Weights) -> Optional[Dict[str, torch.Tensor]]:
        """Per-draw values of network buffers for ``draws``, or ``None`` for the network's stored ones.

        Posteriors over networks with BatchNorm override this to recompute each draw's
        statistics (SWAG, `pyro_bdl.batchnorm`).
        """
        return None

    def draws_by_chain(self, num_samples: int = 100, seed: Optional[int] = 0) -> Weights:
        """Draws grouped as ``{site: (chains, draws, *shape)}`` for diagnostics (ArviZ).

        Independent runs are separate chains (MCMC chains, SG-MCMC runs, ensemble members,
        Multi-SWAG components), so between-run spread shows in R-hat. A single guide is one chain.
        """
        return {k: v.unsqueeze(0) for k, v in self.sample(num_samples, seed=seed).items()}

    @torch.no_grad()
    def predict(self, x: torch.Tensor, num_samples: Optional[int] = None, seed: Optional[int] = 0,
                batch_size: Optional[int] = None) -> BMAPredictive:
        """The Bayesian model average at inputs ``x``: p(y | x, D) ≈ (1/S) Σ_s p(y | x, w_s).

        All S draws are evaluated in one vectorised call per input chunk (``batch_size`` rows
        at a time; default all). ``num_samples=None`` uses every stored draw (sample-based
        posteriors) or 100 draws (guides).
        """
        from .validation import check_inputs

        x = check_inputs(self.model, x)
        return self.predictive_for(self._predict_draws(num_samples, seed), x, batch_size=batch_size)

    @torch.no_grad()
    def predictive_for(self, draws: Weights, x: torch.Tensor, batch_size: Optional[int] = None) -> BMAPredictive:
        """The Bayesian model average over given draws ``{site: (S, *shape)}`` at inputs ``x``.

        `predict` and the diagnostics (`pyro_bdl.diagnostics`, which need the
        per-draw components chain by chain) both go through here.
        """
        buffers = self._buffers_for(draws)
        weights = {k: draws[k] for k in self.model.weight_sites}
        chunks = [x] if batch_size is None else torch.split(x, batch_size)
        outputs = torch.cat([self.model.forward(weights, xb, buffers) for xb in chunks], dim=-2)
        # Likelihood parameters are per draw: give them a singleton data dim to align with (S, B).
        lik = {k: draws[k].reshape(draws[k].shape[0], 1) for k in self.model.likelihood_sites}
        component = self.model.likelihood.distribution(outputs, lik)
        return BMAPredictive(component, outputs, self.model.likelihood.kind)

    def to_arviz(self, x: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None,
                 num_samples: int = 100, seed: Optional[int] = 0, **kwargs: Any):
        """This posterior as an ``arviz.InferenceData`` (needs ``arviz``: ``pip install pyro_bdl[arviz]``).

        Groups: posterior (every latent site, chains as in `draws_by_chain`, plus the
        function-space ``prediction`` E[y | x, w] when ``x`` is given), posterior_predictive and
        log_likelihood at ``x`` (``y`` needed for the latter), observed_data, constant_data and,
        for samplers, sample_stats. ``num_samples`` draws are taken from posteriors that sample on
        demand (guides); stored draws (MCMC) are used as they are. See [`pyro_bdl.diagnostics.to_arviz`][pyro_bdl.diagnostics.to_arviz].
        """
        from .diagnostics import to_arviz

        return to_arviz(self, x=x, y=y, num_samples=num_samples, seed=seed, **kwargs)

    # -- persistence --------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Write the posterior (model, network, draws or guide) to ``path`` atomically."""
        checkpoint.save(path, {"format": FORMAT, "version": FORMAT_VERSION, "posterior": self})

    @staticmethod
    def load(path: str) -> "Posterior":
        """Read a posterior written by `save`. The file is a pickle: load only files you trust."""
        blob = torch.load(path, map_location="cpu", weights_only=False)
        if not isinstance(blob, dict) or blob.get("format") != FORMAT:
            raise ValueError(f"{path} is not a pyro_bdl posterior file (written by Posterior.save)")
        if blob["version"] > FORMAT_VERSION:
            raise ValueError(f"{path} was written by a newer pyro_bdl (format {blob['version']}); upgrade pyro_bdl")
        return blob["posterior"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r}, model={self.model!r})"


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
