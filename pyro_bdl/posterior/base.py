"""What :func:`pyro_bdl.fit` returns: one interface for every inference method.

* ``sample(n)`` — n weight draws ``{site: (n, *shape)}``;
* ``predict(x, num_samples)`` — the Bayesian model average (:class:`~pyro_bdl.posterior.predictive.BMAPredictive`);
* ``save(path)`` / ``Posterior.load(path)`` — a file that reloads in a fresh process.

Kinds of posterior:

* :class:`SamplesPosterior` — stored draws with a chain dimension ``(chains, draws, ...)``:
  MCMC, SG-MCMC, MAP (one chain of one draw), deep ensembles (one chain per member);
* :class:`GuidePosterior` — a trained Pyro guide that draws as many samples as asked (SVI);
* :class:`MixturePosterior` — an equal-weight mixture of independent posteriors (Multi-SWAG).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from . import io as posterior_io
from ..model.bayesian_model import BayesianModel
from ..model.inputs import check_inputs
from ..model.layout import Weights
from .arviz import to_arviz
from .predictive import BMAPredictive

FORMAT = posterior_io.FORMAT


def prototype_inputs(guide: Any) -> Tuple[List[Any], Dict[str, Any]]:
    """The model arguments an autoguide was set up with (its prototype trace), tensors cut to their
    first row: enough to set up a fresh guide of the same shapes when a posterior is loaded."""
    inputs = guide.prototype_trace.nodes["_INPUT"]
    cut = (lambda v: v[:1] if torch.is_tensor(v) and v.dim() > 0 else v)
    return [cut(a) for a in inputs["args"]], {k: cut(v) for k, v in inputs["kwargs"].items()}


class Posterior:
    """Base class: subclasses implement :meth:`sample`.

    Attributes:
        model: the :class:`~pyro_bdl.BayesianModel` it is a posterior of.
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
        statistics (SWAG, :mod:`pyro_bdl.batchnorm`).
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
        x = check_inputs(self.model, x)
        return self.predictive_for(self._predict_draws(num_samples, seed), x, batch_size=batch_size)

    @torch.no_grad()
    def predictive_for(self, draws: Weights, x: torch.Tensor, batch_size: Optional[int] = None) -> BMAPredictive:
        """The Bayesian model average over given draws ``{site: (S, *shape)}`` at inputs ``x``.

        :meth:`predict` and the diagnostics (:mod:`pyro_bdl.diagnostics`, which need the
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

        Groups: posterior (every latent site, chains as in :meth:`draws_by_chain`, plus the
        function-space ``prediction`` E[y | x, w] when ``x`` is given), posterior_predictive and
        log_likelihood at ``x`` (``y`` needed for the latter), observed_data, constant_data and,
        for samplers, sample_stats. ``num_samples`` draws are taken from posteriors that sample on
        demand (guides); stored draws (MCMC) are used as they are. See :func:`pyro_bdl.diagnostics.to_arviz`.
        """
        return to_arviz(self, x=x, y=y, num_samples=num_samples, seed=seed, **kwargs)

    # -- persistence --------------------------------------------------------------------
    kind: Optional[str] = None  # the name saved files use for the class (subclasses that can be saved set it)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):
            posterior_io.KINDS[cls.kind] = cls

    def save(self, path: str, factory: Optional[str] = None) -> None:
        """Write the posterior to ``path`` atomically, as tensors plus plain data (no pickled objects,
        so loading it can never run code): the draws or guide/SWAG state, the network's
        ``state_dict``, ``info``, and a description of the model that :meth:`load` checks.

        Args:
            factory: optional ``"package.module:function"`` returning the
                :class:`~pyro_bdl.BayesianModel` (or its network); recorded so that
                ``Posterior.load(path, factory=True)`` can rebuild the model. Not imported now.
        """
        if self.kind is None:
            raise TypeError(f"{type(self).__name__} does not define how it is saved (set `kind` and "
                            "implement _to_state/_from_state)")
        posterior_io.save_posterior(self, path, factory)

    @staticmethod
    def load(path: str, model: Optional[BayesianModel] = None, *, net: Optional[torch.nn.Module] = None,
             prior: Any = None, likelihood: Any = None, factory: Any = None,
             guide: Optional[torch.nn.Module] = None) -> "Posterior":
        """Read a posterior written by :meth:`save`; nothing in the file is executed.

        The file holds tensors, so the model comes from you, one of:

        * ``model=``: the :class:`~pyro_bdl.BayesianModel` built as when saving (same network
          class, prior, likelihood, temperature); it is checked against the saved description and
          its network gets the saved weights and buffers (in place);
        * ``net=`` with ``likelihood=`` (and ``prior=`` unless it was the default): the model is
          built from them with the saved temperature, tempering and Bayesian parameters;
        * ``factory=True``: import and call the ``"package.module:function"`` recorded by
          ``save(path, factory=...)`` (or pass that string) — this runs that code, so only for
          factories you trust.

        ``guide=``: for an SVI posterior of a custom guide class, a fresh instance of it (the
        built-in autoguides are rebuilt by themselves).

        Raises ``ValueError`` naming the file and the problem for an empty, truncated, foreign,
        crafted or old-format file, and for a model that does not match the saved one.
        """
        return posterior_io.load_posterior(path, model, net=net, prior=prior, likelihood=likelihood,
                                           factory=factory, guide=guide)

    def _to_state(self) -> Dict[str, Any]:
        """The posterior's own tensors and plain data (what :meth:`_from_state` rebuilds from)."""
        raise NotImplementedError

    @classmethod
    def _from_state(cls, model: BayesianModel, state: Dict[str, Any], *, method: str, info: Dict[str, Any],
                    guide: Optional[torch.nn.Module] = None) -> "Posterior":
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r}, model={self.model!r})"
