"""Lifting: any ``torch.nn.Module`` becomes a Pyro model with priors on its weights.

Every Bayesian parameter is a ``pyro.sample`` site named by its module path (``"0.weight"``,
``"encoder.conv1.bias"``), optionally behind a prefix. Buffers (BatchNorm statistics) and
parameters matched by ``deterministic`` patterns stay fixed at their current values (e.g. a
pretrained feature extractor under a Bayesian last layer).

The network is evaluated with ``torch.func.functional_call``; a batch of S weight draws
(any leading dims on the weight tensors) is evaluated at once with ``torch.func.vmap``.
Networks with operations vmap cannot batch (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``: ``aten::lstm``
has no batching rule) fall back to a loop over the draws, decided once per network
(`LiftedNetwork.vectorised`), with the same results.

Two ways to use it:

* [`BayesianModel`][pyro_bdl.BayesianModel] — a ready model ``model(x, y=None, dataset_size=None)`` with prior,
  likelihood and temperature, which [`pyro_bdl.fit`][pyro_bdl.fit] takes;
* [`lift`][pyro_bdl.lift] — a [`LiftedNetwork`][pyro_bdl.LiftedNetwork] to call inside your own Pyro model, so priors
  (and hyperpriors) are declared in ordinary Pyro code.
"""
from __future__ import annotations

import contextlib
import copy
import fnmatch
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import pyro
import torch
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.func import functional_call, vmap

from .._util.random import seeded
from ..priors import Gaussian, PerParameter, resolve_prior
from .inputs import Inputs, as_args
from .layout import Weights, WeightLayout

Patterns = Union[None, str, Sequence[str]]


def _as_patterns(patterns: Patterns) -> Tuple[str, ...]:
    if patterns is None:
        return ()
    if isinstance(patterns, str):
        return (patterns,)
    return tuple(patterns)


class LiftedNetwork:
    """A network whose parameters are Pyro sample sites.

    Args:
        net: the network; it is switched to eval mode (dropout off, BatchNorm running
            statistics used) so that it is a deterministic function of its weights.
        prior: a prior for every Bayesian parameter (see `pyro_bdl.priors`), or a function
            returning one that is called inside the model (hierarchical priors).
        deterministic: glob patterns of parameter names kept fixed (``"features.*"``).
        bayesian: glob patterns of the parameters that are Bayesian (default: all);
            ``bayesian="head.*"`` is the same as making everything else deterministic.
        prefix: prepended to site names (``prefix + "." + name``) when several networks share a model.
    """

    #: How draws are evaluated: True (``torch.func.vmap``), False (a loop over draws, for networks
    #: whose operations vmap cannot batch, e.g. ``nn.LSTM``), None until the first call with draws.
    vectorised: Optional[bool] = None
    #: Whether the network shares (ties) parameters or buffers between modules; None until `functional_forward` looks.
    _tied: Optional[bool] = None
    _has_buffers: bool = True

    def __init__(self, net: nn.Module, prior: Any = None, deterministic: Patterns = None,
                 bayesian: Patterns = None, prefix: str = ""):
        if not isinstance(net, nn.Module):
            raise TypeError(f"expected a torch.nn.Module, got {type(net).__name__}")
        self.net = net.eval()
        self.prior = Gaussian(0.0, 1.0) if prior is None else prior
        if not callable(self.prior) or isinstance(self.prior, type):
            resolve_prior(self.prior)  # a bad prior fails here, not mid-inference
        # Detached views share storage with the parameters (no copy; in-place updates stay visible)
        # and are constants to tracers such as the PyTorch JIT used by Pyro's NUTS.
        self._values = {n: p.detach() for n, p in net.named_parameters()}
        det, bay = _as_patterns(deterministic), _as_patterns(bayesian)
        self.prefix = prefix
        self.param_names: List[str] = []  # Bayesian, in registration order
        self.fixed_names: List[str] = []
        for name, _ in net.named_parameters():
            keep = any(fnmatch.fnmatchcase(name, p) for p in det) or (bay and not any(fnmatch.fnmatchcase(name, p) for p in bay))
            (self.fixed_names if keep else self.param_names).append(name)
        names = [n for n, _ in net.named_parameters()]
        for kind, patterns in (("deterministic", det), ("bayesian", bay)):
            for pattern in patterns:
                if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                    raise ValueError(f"{kind} pattern {pattern!r} matches no parameter; the network's parameters are "
                                     f"{names} (globs match whole names, e.g. '0.*' or '*.bias')")
        if not self.param_names:
            matched = [f"{kind}={list(patterns)} matched {[n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]}"
                       for kind, patterns in (("deterministic", det), ("bayesian", bay)) if patterns]
            raise ValueError(f"no Bayesian parameters left: {'; '.join(matched)}, which leaves none of the network's "
                             f"parameters {names} Bayesian. Loosen deterministic= or widen bayesian=.")
        resolved = self.prior if not callable(self.prior) or isinstance(self.prior, type) else None
        if resolved is not None:
            rules = resolve_prior(resolved)
            if isinstance(rules, PerParameter):  # a {glob: prior} dict: every glob must match a Bayesian site
                rules.check_rules([(self.site_name(n), self.owner(n)) for n in self.param_names])

    # -- device and dtype -----------------------------------------------------------------
    def _parameters_moved(self) -> bool:
        """True when ``net.to(...)`` / ``.cuda()`` / ``.double()`` replaced the parameters' storage since
        the views in ``_values`` were taken (``Module._apply`` swaps ``param.data``)."""
        name = self.param_names[0]
        return self.net.get_parameter(name).data_ptr() != self._values[name].data_ptr()

    @property
    def device(self) -> torch.device:
        """The device of the network's parameters: data, random numbers and draws follow it."""
        self._sync()
        return self._values[self.param_names[0]].device

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype of the network's parameters: inputs, draws and densities follow it."""
        self._sync()
        return self._values[self.param_names[0]].dtype

    def _sync(self) -> None:
        # A network moved after lifting (``model.net.cuda()``) must not keep evaluating old storage.
        if self._parameters_moved():
            self._values = {n: p.detach() for n, p in self.net.named_parameters()}

    # -- names and shapes ---------------------------------------------------------------
    def site_name(self, param_name: str) -> str:
        """The Pyro site name of a parameter: its module path, behind the prefix if any."""
        return f"{self.prefix}.{param_name}" if self.prefix else param_name

    @property
    def sites(self) -> List[str]:
        """Site names of the Bayesian parameters, in the network's registration order."""
        return [self.site_name(n) for n in self.param_names]

    @property
    def layout(self) -> WeightLayout:
        """The [`WeightLayout`][pyro_bdl.WeightLayout] of the Bayesian sites (flatten/unflatten)."""
        return WeightLayout(tuple(self.sites), tuple(self._values[n].shape for n in self.param_names))

    def owner(self, param_name: str) -> nn.Module:
        """The leaf module that owns a parameter (priors may depend on its type or fan-in)."""
        path = param_name.rsplit(".", 1)[0] if "." in param_name else ""
        return self.net.get_submodule(path)

    def initial_weights(self, seed: Optional[int] = None) -> Weights:
        """Starting weights keyed by site name (copies).

        ``seed=None``: the network's current values. With a seed: a fresh draw of the layers'
        own default initialisation (``reset_parameters``) on a copy of the network, so
        independent members (ensembles, Multi-SWAG) start from different points without
        touching ``net``. Deterministic parameters always keep their current values.
        """
        net = self.net
        if seed is not None:
            net = copy.deepcopy(self.net)
            with seeded(seed):
                for module in net.modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
        params = dict(net.named_parameters())
        return {self.site_name(n): params[n].detach().clone() for n in self.param_names}

    # -- Pyro ---------------------------------------------------------------------------
    def sample_weights(self) -> Weights:
        """Draw every Bayesian parameter from its prior as a ``pyro.sample`` site."""
        prior = resolve_prior(self.prior)
        weights = {}
        for name in self.param_names:
            d = prior.distribution(self.site_name(name), self._values[name], self.owner(name))
            weights[self.site_name(name)] = pyro.sample(self.site_name(name), d)
        return weights

    def __call__(self, x: Inputs) -> torch.Tensor:
        """Sample the weights and evaluate the network: ``f(x; w)`` with ``w ~ prior``.

        Under vectorised inference (``Predictive(parallel=True)``, vectorised particles) the
        weights carry draw dims from plates left of the model's own plates, e.g. ``(S, 1)``;
        the output is ``(S, B, out)``, aligned with those plates (see `plate_aligned`).
        """
        if _RECORDER is not None:  # `recording`: fit discovers the network of a user's Pyro model
            _RECORDER.append(self)
        weights = self.sample_weights()
        return self.plate_aligned(self.forward(weights, x), weights)

    def plate_aligned(self, out: torch.Tensor, weights: Weights) -> torch.Tensor:
        """Drop the trailing singleton draw dims of ``out`` (shape ``(*draw, B, out)``).

        Weights sampled outside the data plate get a singleton in each plate dim to their
        right; those dims belong to the data, so ``(S, 1, B, out)`` becomes ``(S, B, out)``
        and the draw dims line up with the vectorisation plate.
        """
        batch = list(self.batch_shape(weights))
        while batch and batch[-1] == 1:
            batch.pop()
            out = out.squeeze(-3)
        return out

    # -- evaluation ---------------------------------------------------------------------
    def _fixed_tensors(self) -> Dict[str, torch.Tensor]:
        fixed = {n: self._values[n] for n in self.fixed_names}
        fixed.update(dict(self.net.named_buffers()))
        return fixed

    def batch_shape(self, weights: Weights) -> torch.Size:
        """Leading (draw) dims shared by the weight tensors, beyond each parameter's own shape."""
        shapes = []
        for name in self.param_names:
            value, pshape = weights[self.site_name(name)], self._values[name].shape
            if tuple(value.shape[value.dim() - len(pshape):]) != tuple(pshape) or value.dim() < len(pshape):
                raise ValueError(f"weight {self.site_name(name)!r} has shape {tuple(value.shape)}, expected "
                                 f"(..., {', '.join(map(str, pshape))})")
            shapes.append(value.shape[: value.dim() - len(pshape)])
        return torch.broadcast_shapes(*shapes)

    def forward(self, weights: Weights, x: Inputs,
                buffers: Optional[Dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """Evaluate ``f(x; w)``; weights with leading dims ``S`` give outputs ``(*S, B, out)``.

        Many draws are evaluated in one vectorised call (``torch.func.vmap``), or one draw at a
        time for networks vmap cannot batch (see `vectorised`).
        ``buffers`` (optional) gives per-draw values of some of the network's buffers, keyed by
        buffer name with the weights' leading dims (e.g. BatchNorm statistics recomputed for each
        draw, see `pyro_bdl.batchnorm`); the other buffers keep their stored values.
        """
        fixed = self._fixed_tensors()
        batch = self.batch_shape(weights)
        named = {n: weights[self.site_name(n)] for n in self.param_names}
        buffers = dict(buffers or {})
        # Per-draw buffers are rare (SWAG with BatchNorm); the usual call skips listing and checking them.
        own = dict(self.net.named_buffers()) if buffers else {}
        for name, value in buffers.items():
            if name not in own:
                raise ValueError(f"{name!r} is not a buffer of the network; buffers are {sorted(own)}")
            if tuple(value.shape) != (*batch, *own[name].shape):
                raise ValueError(f"buffer {name!r} has shape {tuple(value.shape)}, expected "
                                 f"{(*batch, *own[name].shape)} (the weights' draw dims, then the buffer's shape)")
        if len(batch) == 0:
            return functional_call(self.net, {**fixed, **named, **buffers}, as_args(x))
        flat = {n: w.expand(*batch, *self._values[n].shape).reshape(-1, *self._values[n].shape) for n, w in named.items()}
        flat_buffers = {n: b.reshape(-1, *own[n].shape) for n, b in buffers.items()}

        def one(w: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(self.net, {**fixed, **w, **b}, as_args(x))

        out = self._over_draws(one, flat, flat_buffers)
        return out.reshape(*batch, *out.shape[1:])

    def functional_forward(self, params: Dict[str, torch.Tensor], x: Inputs) -> torch.Tensor:
        """``f(x; w)`` for one draw, without the checks of `forward`: the compiled potential's hot path.

        ``params`` holds every Bayesian parameter keyed by its *parameter* name (``"0.weight"``, no
        prefix) with exactly the parameter's shape (no draw dims) — the caller vouches for this, as
        `Objective` does by building them from its layout. The fixed parameters and the
        buffers are the network's own. Tied weights are re-tied only if the network has any (decided
        once), which spares ``functional_call`` its search for them on every call.
        """
        if self._tied is None:
            every = list(self.net.named_parameters(remove_duplicate=False)) + \
                list(self.net.named_buffers(remove_duplicate=False))
            self._tied = len({id(t) for _, t in every}) != len(every)
            self._has_buffers = any(True for _ in self.net.buffers())
        fixed = self._fixed_tensors() if self._has_buffers else {n: self._values[n] for n in self.fixed_names}
        return functional_call(self.net, {**fixed, **params} if fixed else params, as_args(x),
                               tie_weights=self._tied, strict=False)

    def _over_draws(self, one, flat: Dict[str, torch.Tensor], flat_buffers: Dict[str, torch.Tensor]) -> torch.Tensor:
        """``one`` at each of the S draws on the leading dim of ``flat``, stacked: ``(S, ...)``.

        ``torch.func.vmap`` when the network's operations have batching rules; otherwise (e.g.
        ``nn.LSTM``/``GRU``/``RNN``: ``aten::lstm`` has none) a loop over the draws, with the same
        results. Which one is decided once per network, at the first call with draws, and cached
        (`vectorised`): a network whose vmap fails but whose loop works falls back for good,
        while an error that the loop hits too (a wrong input shape) is raised as it is, undecided.
        """
        if self.vectorised is not False:
            try:
                out = vmap(one)(flat, flat_buffers)
                self.vectorised = True
                return out
            except RuntimeError as vmap_error:
                if self.vectorised:  # vmap worked for this network before: a real error
                    raise
                try:
                    out = self._loop(one, flat, flat_buffers)
                except Exception:
                    raise vmap_error from None
                self.vectorised = False
                return out
        return self._loop(one, flat, flat_buffers)

    @staticmethod
    def _loop(one, flat: Dict[str, torch.Tensor], flat_buffers: Dict[str, torch.Tensor]) -> torch.Tensor:
        num_draws = next(iter(flat.values())).shape[0]
        return torch.stack([one({n: w[s] for n, w in flat.items()}, {n: b[s] for n, b in flat_buffers.items()})
                            for s in range(num_draws)])

    @contextlib.contextmanager
    def batch_statistics(self) -> Iterator[None]:
        """Within this context BatchNorm layers normalise with each batch's own statistics.

        This is how a network with BatchNorm is trained by SGD (train-mode BatchNorm); the
        stored running statistics are neither used nor updated, so the network is unchanged
        afterwards. Outside it, the network runs in eval mode (stored statistics). A no-op for
        networks without BatchNorm.
        """
        norms = [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [(m.training, m.track_running_stats) for m in norms]
        try:
            for m in norms:
                m.training, m.track_running_stats = True, False
            yield
        finally:
            for m, (training, track) in zip(norms, saved):
                m.training, m.track_running_stats = training, track


_RECORDER: Optional[List["LiftedNetwork"]] = None


@contextlib.contextmanager
def recording() -> Iterator[List[LiftedNetwork]]:
    """Within this context every called `LiftedNetwork` appends itself to the yielded list (how
    `pyro_bdl.fit` finds the lifted network of a user's own Pyro model by running it once)."""
    global _RECORDER
    saved, _RECORDER = _RECORDER, []
    try:
        yield _RECORDER
    finally:
        _RECORDER = saved


def lift(net: nn.Module, prior: Any = None, deterministic: Patterns = None, bayesian: Patterns = None,
         prefix: str = "") -> LiftedNetwork:
    """Lift ``net`` for use inside your own Pyro model.

    Example — a hierarchical prior declared in Pyro code::

        def model(x, y=None):
            s = pyro.sample("prior_scale", dist.LogNormal(0.0, 1.0))
            f = bdl.lift(net, prior=bdl.priors.Gaussian(0.0, s))
            out = f(x)                      # samples "0.weight", "0.bias", ... then evaluates
            with pyro.plate("data", len(x)):
                pyro.sample("obs", dist.Normal(out.squeeze(-1), 0.1), obs=y)
    """
    return LiftedNetwork(net, prior=prior, deterministic=deterministic, bayesian=bayesian, prefix=prefix)


def latent_sites(trace) -> Dict[str, dict]:
    """The latent sample sites of a Pyro trace (no observations, no plate subsample sites)."""
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)}
