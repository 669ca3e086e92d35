"""How long ``pyro-bdl fit`` takes at its defaults, per method and data set (target: about a minute).

    python benchmarks/bench_cli_defaults.py [--data wine diabetes] [--methods ...] [--library-defaults]

Runs the command in this process (``pyro_bdl.cli.main``) and prints wall-clock and CPU seconds
per (data set, method). ``--library-defaults`` runs with the library's own defaults instead of
the command's cheaper ones (``CLI_DEFAULTS`` emptied), the baseline the command improves on.
"""
import argparse
import contextlib
import io
import time

import torch

from pyro_bdl import cli


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="*", default=["wine"])
    parser.add_argument("--methods", nargs="*", default=["map", "svi", "ensemble", "swag", "multiswag", "sgld",
                                                         "sghmc", "csgmcmc", "nuts", "hmc"])
    parser.add_argument("--library-defaults", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.library_defaults:
        cli.CLI_DEFAULTS.clear()
    print(f"{'data':10s} {'method':10s} {'wall s':>8s} {'cpu s':>8s}  first metric")
    for data in args.data:
        for method in args.methods:
            out = io.StringIO()
            wall, cpu = time.perf_counter(), time.process_time()
            with contextlib.redirect_stdout(out):
                rc = cli.main(["fit", "--data", data, "--method", method])
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            lines = out.getvalue().splitlines()
            metric = lines[1].strip() if rc == 0 and len(lines) > 1 else f"rc={rc}"
            print(f"{data:10s} {method:10s} {wall:8.1f} {cpu:8.1f}  {metric}", flush=True)


if __name__ == "__main__":
    main()
