"""What [`pyro_bdl.fit`][pyro_bdl.fit] returns: one interface for every inference method.

* ``sample(n)`` — n weight draws ``{site: (n, *shape)}``;
* ``predict(x, num_samples)`` — the Bayesian model average ([`BMAPredictive`][pyro_bdl.BMAPredictive]);
* ``save(path)`` / ``Posterior.load(path, model=...)`` — tensors plus plain data that reload in a fresh process (`pyro_bdl.posterior.io`);

Kinds of posterior:

* [`SamplesPosterior`][pyro_bdl.SamplesPosterior] — stored draws with a chain dimension ``(chains, draws, ...)``:
  MCMC, SG-MCMC, MAP (one chain of one draw), deep ensembles (one chain per member);
* [`GuidePosterior`][pyro_bdl.GuidePosterior] — a trained Pyro guide that draws as many samples as asked (SVI);
* [`MixturePosterior`][pyro_bdl.MixturePosterior] — an equal-weight mixture of independent posteriors (Multi-SWAG).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch

from . import io as posterior_io
from .._util.checks import check_float, check_int, check_seed
from ..model.bayesian_model import BayesianModel
from ..model.inputs import Inputs, as_args, check_inputs, map_inputs, num_rows, take_rows
from ..model.layout import Weights
from ..model.user_model import PyroModel
from .arviz import to_arviz
from .predictive import BMAPredictive, ChunkedBMAPredictive

FORMAT = posterior_io.FORMAT
DEFAULT_MEMORY_BUDGET = 2 ** 30  # bytes one chunk of predict's forward pass may take (1 GiB)


def activation_sizes(net: torch.nn.Module, x: Inputs) -> Tuple[int, int]:
    """``(activations, outputs)``: numbers of elements one input row takes in one draw's forward
    pass — the input plus every module's output (a probe pass with forward hooks) — and in the
    network's output. A network that cannot run alone is estimated from its parameter shapes."""
    first = as_args(take_rows(x, slice(0, 1)))
    total = [sum(t.numel() for t in first)]

    def hook(module, inputs, output):
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if torch.is_tensor(t):
                total[0] += t.numel()

    handles = [m.register_forward_hook(hook) for m in net.modules()]
    try:
        out = net(*first)
        out_size = out.numel() if torch.is_tensor(out) else 1
    except Exception:  # noqa: BLE001 - estimate from the parameters instead
        shapes = [p.shape[0] for p in net.parameters() if p.dim() > 0]
        total[0], out_size = sum(t.numel() for t in first) + sum(shapes), (shapes[-1] if shapes else 1)
    finally:
        for h in handles:
            h.remove()
    return total[0], out_size


def chunk_sizes(net: torch.nn.Module, x: Inputs, num_draws: int, budget: float,
                rows: Optional[int] = None) -> Tuple[int, int]:
    """``(rows, draws)`` per chunk of predict's forward pass within ``budget`` bytes.

    Half the budget holds a chunk's per-draw results (outputs, normalised logits, probabilities:
    3 × S × rows × output size), which the summaries need for all S draws at once; the other half
    the activations of a block of draws on those rows (draws × rows × activation size), so the
    draws are evaluated a block at a time when all of them do not fit. ``rows`` fixes the first.
    """
    acts, outs = activation_sizes(net, x)
    size = max(t.element_size() for t in as_args(x))
    if rows is None:
        rows = int((budget / 2) // (3 * num_draws * outs * size))
    rows = max(1, min(rows, num_rows(x)))
    draws = max(1, min(num_draws, int((budget / 2) // (rows * acts * size))))
    return rows, draws


def prototype_inputs(guide: Any) -> Tuple[List[Any], Dict[str, Any]]:
    """The model arguments an autoguide was set up with (its prototype trace), tensors cut to their
    first row: enough to set up a fresh guide of the same shapes when a posterior is loaded."""
    inputs = guide.prototype_trace.nodes["_INPUT"]
    cut = (lambda v: v[:1] if torch.is_tensor(v) and v.dim() > 0 else v)
    return [cut(a) for a in inputs["args"]], {k: cut(v) for k, v in inputs["kwargs"].items()}


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
    def predict(self, x: Inputs, num_samples: Optional[int] = None, seed: Optional[int] = 0,
                batch_size: Optional[int] = None, memory_budget: Optional[float] = None) -> BMAPredictive:
        """The Bayesian model average at inputs ``x``: p(y | x, D) ≈ (1/S) Σ_s p(y | x, w_s).

        ``x`` is an input batch as given to [`fit`][pyro_bdl.fit] (a tensor, or a tuple of tensors for
        a multi-input network, see `pyro_bdl.model.inputs`). The draws are evaluated in
        vectorised calls over chunks of inputs and, when all S draws on a chunk do not fit, blocks of
        draws, sized by `chunk_sizes` so that the pass stays within ``memory_budget`` bytes
        (default `DEFAULT_MEMORY_BUDGET`, 1 GiB); ``batch_size`` fixes the rows per chunk instead.
        When more than one chunk is needed the result is a
        `ChunkedBMAPredictive`, whose mean, variance,
        probabilities, ``log_prob``, quantiles and samples stream over the chunks, so memory
        stays O(budget + B) however many inputs and draws. ``num_samples=None`` uses every
        stored draw (sample-based posteriors) or 100 draws (guides).
        """
        check_int(num_samples, "num_samples (posterior draws to average; None: the default)", 1, allow_none=True)
        check_int(batch_size, "batch_size (rows of x per vectorised call; None: sized by memory_budget)", 1,
                  allow_none=True)
        if seed is not None:
            check_seed(seed)
        x = map_inputs(lambda t: t.to(self.model.device), check_inputs(self.model, x, run=True))
        return self.predictive_for(self._predict_draws(num_samples, seed), x, batch_size=batch_size,
                                   memory_budget=memory_budget)

    @torch.no_grad()
    def predictive_for(self, draws: Weights, x: Inputs, batch_size: Optional[int] = None,
                       memory_budget: Optional[float] = None) -> BMAPredictive:
        """The Bayesian model average over given draws ``{site: (S, *shape)}`` at inputs ``x``
        (chunked as in `predict`), on the model's device (draws and inputs are moved there).

        `predict` and the diagnostics (`pyro_bdl.diagnostics`, which need the
        per-draw components chain by chain) both go through here.
        """
        device = self.model.device
        draws = {k: v.to(device) for k, v in draws.items()}
        x = map_inputs(lambda t: t.to(device), x)
        if isinstance(self.model, PyroModel):  # a user's Pyro model: its observed site is the likelihood
            outputs, component = self.model.traced_components(draws, x)
            return BMAPredictive(component, outputs, self.model.likelihood.kind)
        buffers = self._buffers_for(draws)
        weights = {k: draws[k] for k in self.model.weight_sites}
        num_draws = next(iter(draws.values())).shape[0] if draws else 1
        # Likelihood parameters are per draw: give them a singleton data dim to align with (S, B).
        lik = {k: draws[k].reshape(draws[k].shape[0], 1) for k in self.model.likelihood_sites}
        kind = self.model.likelihood.kind

        n = num_rows(x)
        budget = DEFAULT_MEMORY_BUDGET if memory_budget is None else check_float(
            memory_budget, "memory_budget", positive=True)
        rows, block = chunk_sizes(self.model.net, x, num_draws, budget,
                                  None if batch_size is None else check_int(batch_size, "batch_size", 1))

        def forward(a: int, b: int) -> torch.Tensor:
            # All draws on rows a:b, a block of draws at a time (concatenated: the same outputs).
            parts = []
            for s in range(0, num_draws, block):
                w = {k: v[s:s + block] for k, v in weights.items()} if block < num_draws else weights
                bufs = buffers if buffers is None or block >= num_draws else {k: v[s:s + block] for k, v in buffers.items()}
                parts.append(self.model.forward(w, take_rows(x, slice(a, b)), bufs))
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)

        def build(outputs: torch.Tensor):
            return self.model.likelihood.distribution(outputs, lik)

        if rows >= n:
            outputs = forward(0, n)
            return BMAPredictive(build(outputs), outputs, kind)
        return ChunkedBMAPredictive(forward, build, n, rows, num_draws, forward(0, 1).shape[-1], kind, block)

    def to_arviz(self, x: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None,
                 num_samples: int = 100, seed: Optional[int] = 0, **kwargs: Any):
        """This posterior as an ``arviz.InferenceData`` (needs ``arviz``: ``pip install pyro_bdl[arviz]``).

        Groups: posterior (every latent site, chains as in `draws_by_chain`, plus the
        function-space ``prediction`` E[y | x, w] when ``x`` is given), posterior_predictive and
        log_likelihood at ``x`` (``y`` needed for the latter), observed_data, constant_data and,
        for samplers, sample_stats. ``num_samples`` draws are taken from posteriors that sample on
        demand (guides); stored draws (MCMC) are used as they are. See [`pyro_bdl.diagnostics.to_arviz`][pyro_bdl.evaluate.diagnostics.to_arviz].
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
        ``state_dict``, ``info``, and a description of the model that `load` checks.

        Args:
            factory: optional ``"package.module:function"`` returning the
                [`BayesianModel`][pyro_bdl.BayesianModel] (or its network); recorded so that
                ``Posterior.load(path, factory=True)`` can rebuild the model. Not imported now.
        """
        if self.kind is None:
            raise TypeError(f"{type(self).__name__} does not define how it is saved (set `kind` and "
                            "implement _to_state/_from_state)")
        posterior_io.save_posterior(self, path, factory)

    @staticmethod
    def load(path: str, model: Optional[BayesianModel] = None, *, net: Optional[torch.nn.Module] = None,
             prior: Any = None, likelihood: Any = None, factory: Any = None,
             guide: Optional[torch.nn.Module] = None, map_location: Any = None) -> "Posterior":
        """Read a posterior written by `save`; nothing in the file is executed.

        The file holds tensors, so the model comes from you, one of:

        * ``model=``: the [`BayesianModel`][pyro_bdl.BayesianModel] built as when saving (same network
          class, prior, likelihood, temperature); it is checked against the saved description and
          its network gets the saved weights and buffers (in place);
        * ``net=`` with ``likelihood=`` (and ``prior=`` unless it was the default): the model is
          built from them with the saved temperature, tempering and Bayesian parameters;
        * ``factory=True``: import and call the ``"package.module:function"`` recorded by
          ``save(path, factory=...)`` (or pass that string) — this runs that code, so only for
          factories you trust.

        ``guide=``: for an SVI posterior of a custom guide class, a fresh instance of it (the
        built-in autoguides are rebuilt by themselves).

        ``map_location=``: the device to load onto (``"cpu"``, ``"cuda:0"``); the model's network is
        moved there. By default the posterior goes to the device the model's network is on, so a
        posterior saved on a GPU loads on a CPU-only machine. Floating tensors take the network's dtype.

        Raises ``ValueError`` naming the file and the problem for an empty, truncated, foreign,
        crafted or old-format file, and for a model that does not match the saved one.
        """
        return posterior_io.load_posterior(path, model, net=net, prior=prior, likelihood=likelihood,
                                           factory=factory, guide=guide, map_location=map_location)

    def _to_state(self) -> Dict[str, Any]:
        """The posterior's own tensors and plain data (what `_from_state` rebuilds from)."""
        raise NotImplementedError

    @classmethod
    def _from_state(cls, model: BayesianModel, state: Dict[str, Any], *, method: str, info: Dict[str, Any],
                    guide: Optional[torch.nn.Module] = None) -> "Posterior":
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r}, model={self.model!r})"
