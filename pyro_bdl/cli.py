"""The ``pyro-bdl`` command line.

* ``pyro-bdl fit`` fits a Bayesian MLP to a bundled data set and prints its test metrics.
* ``pyro-bdl study study.toml`` runs a temperature / cold-posterior study (see
  `pyro_bdl.studies`): every cell of temperature × method × seed × augmentation, saved as it
  finishes, then ``results.csv``, plots of each metric against T and ``report.md`` in the output
  folder. ``pyro-bdl study --example quickstart`` runs the study shipped with pyro_bdl.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import List, Optional

import torch

from .examples import datasets
from .examples.bundled import example_configs
from .model import likelihoods
from .evaluate import metrics
from . import priors, studies
from .infer import fit, methods
from .model.bayesian_model import BayesianModel
from .examples.networks import mlp


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


def _study_command(args: argparse.Namespace) -> int:
    if (args.config is None) == (args.example is None):
        raise ValueError("give a study config file or --example NAME (not both); "
                         f"examples: {', '.join(example_configs())}")
    path = args.config if args.config is not None else studies.example_config(args.example)
    study = studies.TemperatureStudy(path, output_dir=args.out, executor=args.executor, workers=args.workers,
                                     address=args.address, progress=not args.quiet)
    if args.report_only:
        df = study.report()
        print(f"rebuilt the report of {len(df)} of {len(study.specs)} cells in {study.output_dir}")
        return 0
    try:
        study.run()
    except studies.StudyError as err:
        print(f"pyro-bdl: {err}", file=sys.stderr)
        return 1
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

    p = sub.add_parser("study", help="run a temperature / cold-posterior study from a TOML config",
                       description="Run every cell (temperature × method × seed × augmentation) of a study, "
                                   "skipping cells already finished in the output folder, then write results.csv, "
                                   "plots of each metric vs T and report.md there.")
    p.add_argument("config", nargs="?", default=None, help="the study's TOML file")
    p.add_argument("--example", default=None, help=f"run a study shipped with pyro_bdl ({', '.join(example_configs())})")
    p.add_argument("--out", default=None, help="output folder (overrides [output] dir)")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local (default) or ray (pip install 'pyro_bdl[ray]')")
    p.add_argument("--workers", type=int, default=1, help="local executor: processes running cells at once")
    p.add_argument("--address", default=None, help="ray executor: cluster address, e.g. auto (default: local Ray)")
    p.add_argument("--report-only", action="store_true", help="only rebuild the table, plots and report")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=_study_command)
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
