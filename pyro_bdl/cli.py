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
from .infer.options import canonical
from ._util.io import FolderLocked
from .model.bayesian_model import BayesianModel
from .examples.networks import mlp


#: Options the ``fit`` command uses unless ``--options`` sets them: a command-line fit of the bundled
#: data sets should take about a minute, where the library's defaults aim at final results
#: (5 ensemble members × 2000 steps, 500 + 500 NUTS draws with trees of depth 10; a BNN's NUTS
#: transitions hit the depth limit, so they cost 2^depth gradients each). Measured figures:
#: notes/issue-18-networks.md. ``--options`` overrides any of them.
CLI_DEFAULTS = {
    "ensemble": {"num_chains": 5, "steps": 500},
    "multiswag": {"num_chains": 3},
    "nuts": {"num_samples": 150, "warmup": 150, "max_tree_depth": 5},
    "hmc": {"num_samples": 200, "warmup": 200, "num_steps": 16},
}

OPTIONS_HELP = ('method options as a JSON object, e.g. \'{"steps": 3000, "lr": 0.01}\' (quote it for the shell); '
                "they override the command's own defaults: " +
                "; ".join(f"{m}: {json.dumps(o)}" for m, o in CLI_DEFAULTS.items()))


def parse_options(text: str) -> dict:
    """``--options`` as a dict, or a ValueError that says it wants JSON and shows an example."""
    if not text:
        return {}
    example = '--options \'{"steps": 3000, "lr": 0.01}\''
    try:
        options = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--options must be a JSON object, e.g. {example}; could not read {text!r} as JSON "
                         f"({err.msg} at character {err.pos}). Keys are option names in double quotes.") from None
    if not isinstance(options, dict):
        raise ValueError(f"--options must be a JSON object (name: value pairs in braces), e.g. {example}; "
                         f"got {type(options).__name__} {text!r}")
    return options


def _fit_command(args: argparse.Namespace) -> int:
    options = parse_options(args.options)  # before any work
    torch.manual_seed(args.seed)
    ds = datasets.load_dataset(args.data, seed=args.seed, train_size=args.train_size)
    net = mlp(ds.num_features, args.hidden, ds.output_dim)
    lik = likelihoods.Categorical() if ds.task == "classification" else likelihoods.Gaussian(scale=None)
    model = BayesianModel(net, prior=priors.Gaussian(0.0, args.prior_scale), likelihood=lik,
                          temperature=args.temperature)
    options = {**CLI_DEFAULTS.get(args.method, {}), **canonical(args.method, options)}  # old names: warned once
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
    except (studies.StudyError, FolderLocked) as err:
        print(f"pyro-bdl: {err}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyro-bdl", description="Bayesian deep learning on Pyro.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("fit", help="fit a Bayesian MLP to a bundled data set and print test metrics")
    p.add_argument("--data", default="diabetes", choices=sorted(datasets.DATASETS),
                   help="bundled data set (default: diabetes; classification: digits, wine, breast_cancer)")
    p.add_argument("--method", default="svi", help=f"inference method ({', '.join(methods())}; default: svi)")
    p.add_argument("--hidden", type=int, nargs="*", default=[50], metavar="UNITS",
                   help="hidden layer widths of the MLP, e.g. --hidden 50 50 (default: 50; none: a linear model)")
    p.add_argument("--prior-scale", type=float, default=1.0,
                   help="standard deviation σ of the iid Gaussian prior N(0, σ²) on every weight (default: 1)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="posterior temperature T: 1 is Bayes, < 1 a cold posterior (default: 1)")
    p.add_argument("--train-size", type=int, default=None, help="use only this many training points (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data split, initialisation and inference (default: 0)")
    p.add_argument("--options", default="", help=OPTIONS_HELP)
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
    """Run the command line; returns the exit status (0 ok, 1 failed cells, 2 bad input, 130 Ctrl-C)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:
        print(f"pyro-bdl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        # 130 = 128 + SIGINT, the shell's convention; no traceback for a user's Ctrl-C.
        print(f"pyro-bdl: {err or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
