"""The ``pyro-bdl`` command line.

``pyro-bdl fit`` fits a Bayesian MLP to a bundled data set and prints its test metrics.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import List, Optional

import torch

from . import data as datasets
from . import likelihoods, metrics, priors
from .inference import fit, methods
from .lifting import BayesianModel


def mlp(in_dim: int, hidden: List[int], out_dim: int, activation: str = "tanh") -> torch.nn.Sequential:
    """A fully connected network ``in_dim → hidden... → out_dim`` with tanh or ReLU units."""
    acts = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}
    if activation not in acts:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(acts)}")
    layers, width = [], in_dim
    for h in hidden:
        layers += [torch.nn.Linear(width, h), acts[activation]()]
        width = h
    layers.append(torch.nn.Linear(width, out_dim))
    return torch.nn.Sequential(*layers)


def _fit_command(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    ds = datasets.load_dataset(args.data, seed=args.seed, train_size=args.train_size)
    net = mlp(ds.num_features, args.hidden, ds.output_dim)
    lik = likelihoods.Categorical() if ds.task == "classification" else likelihoods.Gaussian(scale=None)
    model = BayesianModel(net, prior=priors.Gaussian(0.0, args.prior_scale), likelihood=lik,
                          temperature=args.temperature)
    options = json.loads(args.options) if args.options else {}
    start = time.perf_counter()
    post = fit(model, ds.x_train, ds.y_train, method=args.method, seed=args.seed, progress=None, **options)
    seconds = time.perf_counter() - start
    result = metrics.evaluate(post, ds.x_test, ds.y_test)
    print(f"{args.method} on {args.data} (n_train={len(ds.x_train)}, n_test={len(ds.x_test)}, T={args.temperature}): "
          f"fit in {seconds:.1f} s")
    for name, value in result.items():
        print(f"  {name:12s} {value:.4f}")
    if args.save:
        post.save(args.save)
        print(f"posterior saved to {args.save}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-bdl", description="Bayesian deep learning on Pyro.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit", help="fit a Bayesian MLP to a bundled data set and print test metrics")
    p.add_argument("--data", default="diabetes", choices=sorted(datasets.DATASETS))
    p.add_argument("--method", default="svi", help=f"inference method ({', '.join(methods())})")
    p.add_argument("--hidden", type=int, nargs="*", default=[50])
    p.add_argument("--prior-scale", type=float, default=1.0)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--options", default="", help='method options as JSON, e.g. \'{"num_steps": 3000}\'')
    p.add_argument("--save", default=None, help="write the posterior to this file")
    p.set_defaults(func=_fit_command)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:
        print(f"pyro-bdl: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
