"""One option vocabulary for every inference method, and the deprecated per-method names.

[`fit`][pyro_bdl.fit] applies `canonical` once, before it dispatches: an old name (``num_models``,
``num_steps`` of an optimiser, ``burnin``, ``swa_start``) keeps working for one release, with a
``DeprecationWarning`` naming the new one; [`method_options`][pyro_bdl.infer.fit.method_options] lists the
canonical names. A method whose function still spells an option the old way receives it under that
keyword (`keyword_for`), so the functions can be renamed one at a time without breaking users.

`VOCABULARY` is the table (docs: *Options*); `ALIASES` the old names per method.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Collection, Dict, List, Mapping, Optional

#: canonical option name -> what it means, for every method that has it
VOCABULARY: Dict[str, str] = {
    "epochs": "run length of a minibatch method: passes over the data",
    "steps": "run length of an optimiser (map, ensemble, svi): parameter updates, one minibatch each; not HMC's "
             "leapfrog count, which keeps Pyro's name num_steps",
    "warmup": "what is discarded before draws or averages are kept: HMC/NUTS warm-up draws, SG-MCMC burn-in "
              "epochs, SWAG's epochs before snapshot collection",
    "num_chains": "independent runs of any method: MCMC chains, ensemble members, Multi-SWAG members, SVI runs",
    "lr": "step size of the method's update rule, in the unit LR_UNITS states for the method",
    "init": "the starting point: a dict {site: tensor} or a named start of the method",
    "checkpoint": "a file path: the run saves its state there (atomically) and a rerun with the same arguments "
                  "resumes it",
    "preconditioner": "the coordinates a stochastic-gradient method steps in (sgld, sghmc, csgmcmc, swag, multiswag):"
                      " 'auto' (default: 'dense', a whitening of θ, for small models; else 'fisher'), 'dense', "
                      "'fisher' (diagonal)",
    "workers": "processes running groups of independent runs in parallel (ensemble and Multi-SWAG members, SG-MCMC "
               "chains), for networks too large to stack; the result equals workers=1 with the same grouping",
}

#: the unit of ``lr`` per method. The stated unit is the step on the *per-data-point* loss U/N for
#: SGD-type updates and parameter units for adaptive (Adam / RMSprop) updates, for every method (the plain
#: SG-MCMC kernels' ``per_datapoint=False``, the full-data reading of earlier releases, is deprecated).
LR_UNITS: Dict[str, str] = {
    "map": "Adam step size (parameter units: independent of the loss's scale)",
    "ensemble": "Adam step size of each member (parameter units)",
    "svi": "Adam step size on the guide's parameters (parameter units)",
    "swag": "SGD step size on the per-data-point loss U/N (\"auto\", default: min(0.05, below the start's curvature))",
    "multiswag": "SGD step size on the per-data-point loss U/N (\"auto\", default: min(0.05, below the start's "
                 "curvature))",
    "csgmcmc": "step size on the per-data-point potential U/N",
    "sgld": "default (Fisher-preconditioned) kernel: dimensionless, G_i·H_ii ≤ lr; plain kernel: the step on the "
            "per-data-point potential U/N (ε = lr/N)",
    "sghmc": "default (Fisher-preconditioned) kernel: dimensionless, G_i·H_ii ≤ lr; plain kernel: the step on the "
             "per-data-point potential U/N (ε = lr/N)",
}

#: method -> {deprecated name: canonical name}; the old names work for one release
ALIASES: Dict[str, Dict[str, str]] = {
    "map": {"num_steps": "steps"},
    "svi": {"num_steps": "steps"},
    "ensemble": {"num_steps": "steps", "num_models": "num_chains"},
    "swag": {"swa_start": "warmup"},
    "multiswag": {"swa_start": "warmup", "num_models": "num_chains"},
    "sgld": {"burnin": "warmup"},
    "sghmc": {"burnin": "warmup"},
}


def canonical(method: str, options: Mapping[str, Any], warn: bool = True) -> Dict[str, Any]:
    """``options`` with every deprecated name of ``method`` replaced by its canonical one.

    Warns (``DeprecationWarning``, ``old -> new``) for each old name; passing both an old name and
    its new one is a ``TypeError``.
    """
    table = ALIASES.get(method, {})
    out = dict(options)
    for old, new in table.items():
        if old not in out:
            continue
        if new in out:
            raise TypeError(f"method {method!r} got both {old!r} and {new!r}; {old!r} is the deprecated name of "
                            f"{new!r}: pass only {new}={out[new]!r}")
        if warn:
            warnings.warn(f"fit(method={method!r}): option {old!r} is deprecated, use {new!r} ({old} -> {new}); the "
                          "old name is removed in the next release", DeprecationWarning, stacklevel=3)
        out[new] = out.pop(old)
    return out


def keyword_for(method: str, name: str, parameters: Collection[str]) -> str:
    """The keyword under which ``method``'s function (with ``parameters``) takes canonical option ``name``:
    ``name`` itself, or its old spelling while the function has not been renamed yet."""
    if name in parameters:
        return name
    for old, new in ALIASES.get(method, {}).items():
        if new == name and old in parameters:
            return old
    return name


def canonical_name(method: str, keyword: str) -> str:
    """The canonical name of the function keyword ``keyword`` of ``method``."""
    return ALIASES.get(method, {}).get(keyword, keyword)


def deprecated_names(method: str) -> List[str]:
    """The old option names ``method`` still accepts (with a warning)."""
    return sorted(ALIASES.get(method, {}))


#: the fewest parameter updates a default minibatch run stated in epochs takes (sgld, sghmc, csgmcmc, swag,
#: multiswag; `default_epochs`)
DEFAULT_MIN_STEPS = 4000


def default_epochs(epochs: int, steps_per_epoch: int, min_steps: int = DEFAULT_MIN_STEPS) -> int:
    """A method's default length ``epochs``, lengthened to at least ``min_steps`` steps: max(``epochs``,
    ⌈``min_steps`` / steps per epoch⌉).

    Why steps: SGD converges and an SG-MCMC kernel mixes per update, whatever the data set's size (a step moves
    the iterate by the same amount for N = 500 as for N = 60 000 at the same rates), so a default stated in epochs
    alone is ≈ 50× shorter on 500 images in batches of 50 than on MNIST in batches of 128. Data with at least
    ``min_steps / epochs`` batches per epoch keep ``epochs``."""
    return max(epochs, math.ceil(min_steps / max(1, steps_per_epoch)))


def run_length(data: Any, steps: Optional[int], epochs: Optional[int], default: int) -> int:
    """Optimiser steps from ``steps`` or ``epochs`` (× the data's batches per epoch); ``default`` steps if
    neither is given. Checks both before any work."""
    if steps is not None and epochs is not None:
        raise TypeError("pass steps or epochs, not both")
    if epochs is not None:
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        return epochs * data.num_batches
    steps = default if steps is None else steps
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return steps
