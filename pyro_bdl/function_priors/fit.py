"""Function-informed priors: fit weight-prior hyperparameters so the network's prior over
functions matches a target process (a Gaussian process) at measurement inputs.

"The prior that matters is the prior in function space" (Wilson & Izmailov 2020). Following
Tran et al. 2022 ("All you need is a good functional prior for Bayesian deep learning", JMLR),
a Gaussian weight prior with one loc μ_l and one scale σ_l per parameter tensor l (each layer's
weight and bias),

    w_l ~ N(μ_l, σ_l²)    (optionally hierarchical: σ_l ~ LogNormal(log s_l, τ_l²)),

is fitted by minimising a distance D between the distribution of network functions f(X; w)
and the target's f(X) at measurement inputs X, which are resampled every step:

    min_{μ, σ}  E_X [ D( p(f(X; w)),  p_target(f(X)) ) ].

Both sides are represented by draws. Network draws are reparametrised, w = μ + σ ⊙ ε with
ε ~ N(0, I), so gradients with respect to log σ are pathwise, and many draws are evaluated in one
vectorised forward ([`pyro_bdl.LiftedNetwork.forward`][pyro_bdl.LiftedNetwork]). D is the closed-form 2-Wasserstein
distance between Gaussians fitted to the two sets of draws (``distance="gaussian_w2"``, default)
or the dual 1-Wasserstein distance with a Lipschitz critic (``distance="dual_w1"``, as Tran et al.).
See `pyro_bdl.function_priors.distances`.

The result, [`FunctionalPrior`][pyro_bdl.function_priors.FunctionalPrior], is an ordinary [`Prior`][pyro_bdl.priors.Prior]: after fitting,
its hyperparameters are constants, so it works with every inference method. Fits are reported
honestly: the held-out distance on fresh inputs and fresh draws is printed beside the GP-vs-GP
sampling floor (the distance between two independent sets of target draws of the same size),
which is the best any prior can reach with that many draws.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from .._util import io
from .._util import progress as progress_bars
from .._util.random import seeded
from ..model.lifting import LiftedNetwork
from ..priors.base import Prior, as_hyper, elementwise
from ..priors.standard import FanInGaussian
from .distances import WassersteinCritic, dual_w1, gaussian_w2, mmd
from .inputs import measurement_sampler
from .targets import as_target
from .._util.checks import check_float, check_int, check_seed

DISTANCES = ("gaussian_w2", "dual_w1")
FORMAT = "pyro_bdl.functional_prior"
FORMAT_VERSION = 1
# Hierarchical: the scale of site "0.weight" is the site "prior_scale.0.weight". (Not "0.weight.<x>":
# Pyro's autoguides nest parameters by the dots of site names, and "0.weight" is a leaf.)
HYPER_SITE = "prior_scale"


def target_draws(target: Any, x: torch.Tensor, num_samples: int, num_outputs: int,
                 generator: Optional[torch.Generator]) -> torch.Tensor:
    """``num_samples`` target draws at ``x``, one independent function per network output,
    flattened like the network's ``(S, points, outputs)``: shape ``(S, points · outputs)``."""
    t = target.sample(x, num_samples * num_outputs, generator)
    return t.reshape(num_outputs, num_samples, x.shape[0]).permute(1, 2, 0).reshape(num_samples, -1)


# -- prior draws of functions -------------------------------------------------------------
def _lift(net: nn.Module, prior: Any, deterministic, bayesian, prefix: str):
    return LiftedNetwork(net, prior=prior, deterministic=deterministic, bayesian=bayesian, prefix=prefix)


def sample_prior_weights(lifted, num_samples: int, seed: Optional[int] = 0) -> Dict[str, torch.Tensor]:
    """``num_samples`` prior draws of every Bayesian parameter, ``{site: (S, *shape)}``, in one
    vectorised pass (a Pyro plate over draws), for any prior, hierarchical ones included."""
    check_int(num_samples, "num_samples")
    with seeded(seed), torch.no_grad(), poutine.block():
        with pyro.plate("_bdl_prior_draws", num_samples, dim=-1):
            trace = poutine.trace(lifted.sample_weights).get_trace()
    return {name: trace.nodes[name]["value"] for name in lifted.sites}


def prior_predictive(net: nn.Module, prior: Any, x: torch.Tensor, num_samples: int = 100, seed: Optional[int] = 0,
                     *, deterministic=None, bayesian=None, prefix: str = "") -> torch.Tensor:
    """Draws of the network function under a weight prior: f(x; w_s), w_s ~ p(w), s = 1..S.

    Returns the network outputs for all draws, shape ``(num_samples, len(x), out_dim)`` (the net's
    own output shape behind the draw dim), evaluated in one vectorised call (no Python loop).
    ``prior`` is anything [`BayesianModel`][pyro_bdl.BayesianModel] accepts (a [`FunctionalPrior`][pyro_bdl.function_priors.FunctionalPrior],
    ``Gaussian(0, 1)``, ``FanInGaussian()``, a ``{pattern: prior}`` dict, a hierarchical function).
    """
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a torch.Tensor of inputs, got {type(x).__name__}")
    lifted = _lift(net, prior, deterministic, bayesian, prefix)
    weights = sample_prior_weights(lifted, num_samples, seed)
    with torch.no_grad():
        return lifted.forward(weights, x)


def _distance(name: str, f: torch.Tensor, g: torch.Tensor, seed: int) -> float:
    if name == "gaussian_w2":
        return float(gaussian_w2(f, g))
    if name == "mmd":
        return float(mmd(f, g))
    if name == "dual_w1":
        return dual_w1(f, g, seed=seed)
    raise ValueError(f"unknown distance {name!r}; choose 'gaussian_w2', 'mmd' or 'dual_w1'")


def function_distance(net: nn.Module, prior: Any, target: Any, inputs: Any, num_samples: int = 512,
                      num_points: Optional[int] = None, seed: int = 0, distance: str = "gaussian_w2",
                      num_repeats: int = 1, *, deterministic=None, bayesian=None, prefix: str = "") -> Dict[str, float]:
    """How close the network's prior over functions is to ``target``, with its sampling floor.

    For each of ``num_repeats`` fresh measurement sets X (from ``inputs``, as in
    [`FunctionalPrior.fit`][pyro_bdl.function_priors.FunctionalPrior]), ``num_samples`` prior function draws are compared with
    ``num_samples`` target draws, and two independent sets of ``num_samples`` target draws are
    compared with each other (the GP-vs-GP *floor*: no prior can do better with that many draws).

    Returns ``{"distance": mean distance, "floor": mean floor}`` (``distance``: ``"gaussian_w2"``,
    ``"mmd"`` (unbiased MMD²), or ``"dual_w1"``). With a tensor of inputs and ``num_points=None`` every
    repeat uses all its rows (then only the draws are fresh). W2 estimates from a few hundred draws vary
    by ±30% between input sets: average a few repeats.
    """
    target = as_target(target)
    check_int(num_repeats, "num_repeats")
    sampler = measurement_sampler(inputs, num_points)
    lifted = _lift(net, prior, deterministic, bayesian, prefix)
    g = torch.Generator().manual_seed(seed)
    dists, floors = [], []
    for r in range(num_repeats):
        x = sampler(g)
        weights = sample_prior_weights(lifted, num_samples, seed=int(torch.randint(2 ** 31, (1,), generator=g)))
        with torch.no_grad():
            out = lifted.forward(weights, x)
        outs = max(1, out[0].numel() // x.shape[0])  # network outputs per input row
        f = out.reshape(num_samples, -1)
        t1 = target_draws(target, x, num_samples, outs, g)
        t2 = target_draws(target, x, num_samples, outs, g)
        dists.append(_distance(distance, f, t1, seed + r))
        floors.append(_distance(distance, t2, t1, seed + r))
    return {"distance": sum(dists) / len(dists), "floor": sum(floors) / len(floors)}


# -- the prior -------------------------------------------------------------------------
def _fan_in(shape: Sequence[int]) -> Optional[int]:
    return int(math.prod(shape[1:])) if len(shape) >= 2 else None


class FunctionalPrior(Prior):
    """A Gaussian weight prior with one loc and scale per parameter tensor, fitted in function space.

    w_l ~ N(loc_l, scale_l²) elementwise for each Bayesian parameter l (site name ``"0.weight"``, ...),
    or, when ``hyper_scales`` are given (hierarchical), scale_l ~ LogNormal(log scale_l, τ_l²) as the
    Pyro site ``"prior_scale.<site>"`` (so ``scale_l`` is the hyperprior's median) and
    w_l | scale_l ~ N(loc_l, scale_l²).

    Build one with [`fit`][pyro_bdl.fit] (or from numbers). After fitting the hyperparameters are constants,
    so the prior works with every inference method; ``print(prior)`` shows them per layer with the
    fit report, `save` / `load` store them.

    Args:
        scales: ``{site: scale}``.
        locs: ``{site: loc}`` (default 0).
        hyper_scales: ``{site: τ}`` for the hierarchical version (default: not hierarchical).
        shapes: ``{site: shape}`` of the parameters it was fitted for (checked when used).
        report: the fit report (distances, settings, loss history).
    """

    def __init__(self, scales: Mapping[str, float], locs: Optional[Mapping[str, float]] = None,
                 hyper_scales: Optional[Mapping[str, float]] = None,
                 shapes: Optional[Mapping[str, Sequence[int]]] = None, report: Optional[Dict[str, Any]] = None):
        if not isinstance(scales, Mapping) or not scales:
            raise TypeError("scales must be a non-empty {site name: scale} mapping")
        self.scales = {str(k): _positive_float(v, f"scale of {k!r}") for k, v in scales.items()}
        locs = dict(locs or {})
        unknown = set(locs) - set(self.scales) | (set(hyper_scales or {}) - set(self.scales))
        if unknown:
            raise ValueError(f"locs/hyper_scales name sites {sorted(unknown)} that have no scale")
        self.locs = {k: float(locs.get(k, 0.0)) for k in self.scales}
        self.hyper_scales = None if hyper_scales is None else {
            k: _positive_float(hyper_scales[k], f"hyper scale of {k!r}") for k in self.scales}
        self.shapes = None if shapes is None else {k: tuple(int(d) for d in shapes[k]) for k in self.scales}
        self.report = dict(report or {})

    @property
    def hierarchical(self) -> bool:
        """Whether the scales have a hyperprior, σ_l ~ LogNormal(log s_l, τ_l²)."""
        return self.hyper_scales is not None

    @property
    def sites(self) -> list:
        """The parameter sites the prior was fitted for (one loc and scale each)."""
        return list(self.scales)

    def distribution(self, name: str, param: torch.Tensor, module: nn.Module) -> dist.Distribution:
        if name not in self.scales:
            raise ValueError(f"this FunctionalPrior was fitted for the sites {self.sites}, not {name!r}; fit it on "
                             "the same network with the same deterministic/bayesian patterns and prefix")
        shape = param.shape
        if self.shapes is not None and tuple(shape) != self.shapes[name]:
            raise ValueError(f"this FunctionalPrior was fitted for {name!r} of shape {self.shapes[name]}, but the "
                             f"parameter has shape {tuple(shape)}; refit it for this network")
        dtype = param.dtype if param.is_floating_point() else torch.get_default_dtype()
        loc = torch.tensor(self.locs[name], dtype=dtype)
        scale = torch.tensor(self.scales[name], dtype=dtype)
        if self.hierarchical:
            tau = torch.tensor(self.hyper_scales[name], dtype=dtype)
            scale = pyro.sample(f"{HYPER_SITE}.{name}", dist.LogNormal(scale.log(), tau))
        return elementwise(dist.Normal(as_hyper(loc, shape), as_hyper(scale, shape)), shape)

    # -- fitting ------------------------------------------------------------------------
    @classmethod
    def fit(cls, net: nn.Module, target: Any, inputs: Any, steps: int = 2000, seed: int = 0, *,
            num_samples: int = 128, num_points: Optional[int] = None, distance: str = "gaussian_w2",
            learn_loc: bool = False, hierarchical: bool = False, hyper_scale: float = 0.1, lr: float = 0.05,
            lr_decay: float = 0.1, critic_steps: int = 5, critic_options: Optional[Dict[str, Any]] = None,
            eval_samples: int = 512, eval_repeats: int = 4, deterministic=None, bayesian=None, prefix: str = "",
            progress: Optional[bool] = None, verbose: bool = True) -> "FunctionalPrior":
        """Fit per-layer prior scales (and optionally locs) so that the prior over functions of
        ``net`` matches ``target`` at measurement inputs.

        Args:
            net: the network (its current weights are not used, only its architecture).
            target: a [`GP`][pyro_bdl.function_priors.GP], an object with ``sample(x, n, generator)``, or
                such a function. Networks with several outputs are matched to independent draws.
            inputs: where functions are compared, resampled each step: a tensor of inputs (rows drawn
                from it, e.g. the training data), a [`Box`][pyro_bdl.function_priors.Box], or ``fn(num_points, generator)``;
                see [`measurement_sampler`][pyro_bdl.function_priors.measurement_sampler].
            steps: optimiser steps (Adam on log-scales, locs and log τ; step size decayed
                exponentially from ``lr`` to ``lr * lr_decay``).
            seed: every draw comes from a generator seeded with it (same seed, same prior).
            num_samples: function draws per side and step.
            num_points: measurement inputs per step (default 64; for a tensor, all rows if None).
            distance: ``"gaussian_w2"`` (closed form, default) or ``"dual_w1"`` (Lipschitz critic,
                ``critic_steps`` critic updates per step, [`WassersteinCritic`][pyro_bdl.function_priors.WassersteinCritic] options in
                ``critic_options``).
            learn_loc: also learn one loc per parameter tensor (default: locs stay 0).
            hierarchical: learn a LogNormal hyperprior per scale (median and τ, τ starting at
                ``hyper_scale``) instead of a fixed scale.
            eval_samples, eval_repeats: size of the held-out check after fitting (fresh inputs, fresh
                draws), reported with the GP-vs-GP floor in ``prior.report`` and printed if ``verbose``.
            deterministic, bayesian, prefix: as for [`BayesianModel`][pyro_bdl.BayesianModel] (use the same).
            progress: a progress bar (default: on a terminal).

        Starts from the fan-in prior N(0, 1/fan_in) for weights and N(0, 1) for biases
        ([`FanInGaussian`][pyro_bdl.priors.FanInGaussian]).
        """
        target = as_target(target)
        check_int(steps, "steps")
        check_int(num_samples, "num_samples", 2)
        if distance not in DISTANCES:
            raise ValueError(f"unknown distance {distance!r}; choose one of {DISTANCES}")
        check_seed(seed)
        for what, value in (("lr", lr), ("lr_decay", lr_decay), ("hyper_scale", hyper_scale)):
            check_float(value, what, positive=True)
        check_int(critic_steps, "critic_steps")
        sampler = measurement_sampler(inputs, num_points)
        lifted = _lift(net, None, deterministic, bayesian, prefix)
        params = dict(net.named_parameters())
        names = lifted.sites
        shapes = {lifted.site_name(n): tuple(params[n].shape) for n in lifted.param_names}
        g = torch.Generator().manual_seed(seed)
        probe = sampler(torch.Generator().manual_seed(seed))
        try:
            with torch.no_grad():
                out = lifted.forward(lifted.initial_weights(), probe)
        except RuntimeError as err:
            raise ValueError(f"the network cannot take measurement inputs of shape {tuple(probe.shape)}: {err}") from None
        num_outputs = max(1, out.numel() // probe.shape[0])

        dtype = torch.get_default_dtype()
        log_scale = {n: torch.tensor(math.log(_init_scale(shapes[n])), dtype=dtype, requires_grad=True) for n in names}
        loc = {n: torch.zeros((), dtype=dtype, requires_grad=learn_loc) for n in names}
        log_tau = {n: torch.tensor(math.log(hyper_scale), dtype=dtype, requires_grad=True) for n in names}
        opt_params = list(log_scale.values()) + (list(loc.values()) if learn_loc else []) \
            + (list(log_tau.values()) if hierarchical else [])
        opt = torch.optim.Adam(opt_params, lr=lr)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=lr_decay ** (1.0 / steps))
        critic = None
        if distance == "dual_w1":
            critic = WassersteinCritic(probe.shape[0] * num_outputs, seed=seed, **dict(critic_options or {}))

        def network_draws(x: torch.Tensor) -> torch.Tensor:
            weights = {}
            for n in names:
                eps = torch.randn(num_samples, *shapes[n], generator=g, dtype=dtype)
                log_s = log_scale[n]
                if hierarchical:  # scale ~ LogNormal(log s, τ²), reparametrised as exp(log s + τ ε')
                    log_s = log_s + log_tau[n].exp() * torch.randn(num_samples, generator=g, dtype=dtype)
                    log_s = log_s.reshape(num_samples, *([1] * len(shapes[n])))
                weights[n] = loc[n] + log_s.exp() * eps
            return lifted.forward(weights, x).reshape(num_samples, -1)

        history = []
        with progress_bars.bar(steps, "functional prior", progress) as bar:
            for step in range(steps):
                x = sampler(g)
                f = network_draws(x)
                t = target_draws(target, x, num_samples, num_outputs, g)
                if critic is not None:
                    if f.shape[1] != critic.num_values:
                        raise ValueError("distance='dual_w1' needs the same number of measurement inputs every step")
                    critic.update(f, t, critic_steps)
                    loss = critic.dual(f, t)
                else:
                    loss = gaussian_w2(f, t)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise FloatingPointError(f"the {distance} objective became {value} at step {step}; lower lr "
                                             f"(now {lr}) or rescale the inputs")
                history.append(value)
                if step % 50 == 0:
                    bar.set_postfix(distance=f"{value:.4g}")
                bar.update()

        with torch.no_grad():
            scales = {n: float(log_scale[n].exp()) for n in names}
            locs = {n: float(loc[n]) for n in names}
            taus = {n: float(log_tau[n].exp()) for n in names} if hierarchical else None
        tail = history[-max(1, min(50, steps // 10)):]
        report: Dict[str, Any] = {
            "target": repr(target), "distance_kind": distance, "steps": steps, "seed": seed,
            "num_samples": num_samples, "num_points": int(probe.shape[0]), "learn_loc": bool(learn_loc),
            "final_objective": sum(tail) / len(tail), "history": history,
        }
        prior = cls(scales, locs, taus, shapes, report)
        # Held-out check: fresh inputs and draws (another seed), against the start (fan-in) and the floor.
        check = dict(num_samples=eval_samples, num_points=num_points, seed=seed + 7919, num_repeats=eval_repeats,
                     deterministic=deterministic, bayesian=bayesian, prefix=prefix)
        fitted = function_distance(net, prior, target, inputs, **check)
        start = function_distance(net, FanInGaussian(1.0), target, inputs, **check)
        prior.report.update(heldout_w2=fitted["distance"], heldout_w2_start=start["distance"], floor_w2=fitted["floor"],
                      eval_samples=eval_samples)
        if verbose:
            print(f"FunctionalPrior.fit: held-out Gaussian W2 to {target!r}: {fitted['distance']:.4g} "
                  f"(start {start['distance']:.4g}; GP-vs-GP sampling floor {fitted['floor']:.4g} with "
                  f"{eval_samples} draws at {probe.shape[0]} fresh inputs)")
        return prior

    # -- persistence and display ---------------------------------------------------------
    def state(self) -> Dict[str, Any]:
        """Plain data (lists, floats, strings) describing the prior."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "sites": self.sites,
                "scales": [self.scales[k] for k in self.sites], "locs": [self.locs[k] for k in self.sites],
                "hyper_scales": None if self.hyper_scales is None else [self.hyper_scales[k] for k in self.sites],
                "shapes": None if self.shapes is None else [list(self.shapes[k]) for k in self.sites],
                "report": self.report}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "FunctionalPrior":
        """Rebuild a fitted prior from the state dict that `save` writes."""
        if not isinstance(state, Mapping) or state.get("format") != FORMAT:
            raise ValueError("not a FunctionalPrior state (written by FunctionalPrior.save)")
        if state["version"] > FORMAT_VERSION:
            raise ValueError(f"FunctionalPrior format {state['version']} is newer than this pyro_bdl; upgrade pyro_bdl")
        sites = state["sites"]
        hyper = state["hyper_scales"]
        return cls(dict(zip(sites, state["scales"])), dict(zip(sites, state["locs"])),
                   None if hyper is None else dict(zip(sites, hyper)),
                   None if state["shapes"] is None else dict(zip(sites, state["shapes"])), state["report"])

    def save(self, path: str) -> None:
        """Write the prior to ``path`` atomically: plain data only, so loading it never runs code."""
        io.write(path, self.state())

    @classmethod
    def load(cls, path: str) -> "FunctionalPrior":
        """Read a prior written by `save` without running anything from the file (a crafted,
        empty, truncated or foreign file raises ``ValueError`` naming the file and the problem)."""
        state = io.read(path, FORMAT, FORMAT_VERSION, "FunctionalPrior", "fit the prior again and save it")
        try:
            return cls.from_state(state)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def summary(self) -> str:
        """A table of the hyperparameters per parameter tensor, with the fit report."""
        lines = [f"FunctionalPrior{' (hierarchical)' if self.hierarchical else ''}"]
        r = self.report
        if "target" in r:
            lines[0] += f" fitted to {r['target']} by {r['distance_kind']} ({r['steps']} steps, seed {r['seed']})"
        if "heldout_w2" in r:
            lines.append(f"  held-out Gaussian W2: {r['heldout_w2']:.4g}   (fan-in start {r['heldout_w2_start']:.4g}; "
                         f"GP-vs-GP floor {r['floor_w2']:.4g})")
        head = f"  {'site':<24}{'shape':<14}{'loc':>9}{'scale':>10}{'scale*sqrt(fan_in)':>20}"
        if self.hierarchical:
            head += f"{'tau':>8}"
        lines.append(head)
        for k in self.sites:
            shape = self.shapes[k] if self.shapes else None
            fi = _fan_in(shape) if shape else None
            rel = f"{self.scales[k] * math.sqrt(fi):.4g}" if fi else "-"
            row = f"  {k:<24}{str(shape) if shape else '?':<14}{self.locs[k]:>9.3g}{self.scales[k]:>10.4g}{rel:>20}"
            if self.hierarchical:
                row += f"{self.hyper_scales[k]:>8.3g}"
            lines.append(row)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        scales = ", ".join(f"{k}: {v:.3g}" for k, v in self.scales.items())
        extra = ", hierarchical" if self.hierarchical else ""
        return f"FunctionalPrior({{{scales}}}{extra})"


def _init_scale(shape: Sequence[int]) -> float:
    fi = _fan_in(shape)
    return 1.0 / math.sqrt(fi) if fi else 1.0


def _positive_float(value: Any, what: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be a positive number, got {value!r}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{what} must be a positive finite number, got {value!r}")
    return v
