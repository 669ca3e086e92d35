"""Regenerate the tutorial figures and printed output that the docs site shows.

Each tutorial in ``tutorials/`` is run (small size by default, full size with ``--full``); its
figures are written to ``docs/figures/`` and whatever it prints to ``docs/figures/<name>.txt``.
The docs pages include both, and the results are committed, so ``mkdocs build`` itself runs no
tutorial and stays fast (the tutorials run in the test suite, ``tests/test_tutorial_*.py``).

Usage::

    python docs/gen_figures.py                    # every tutorial, small size
    python docs/gen_figures.py gap_regression     # one tutorial
    python docs/gen_figures.py --full             # full size (slow)
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's pyro_bdl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = os.path.join(ROOT, "tutorials")
FIGURES = os.path.join(ROOT, "docs", "figures")


def tutorial_names() -> list:
    """Names of the tutorial scripts (``tutorials/<name>.py``)."""
    return sorted(f[:-3] for f in os.listdir(TUTORIALS) if f.endswith(".py") and not f.startswith("_"))


def run(name: str, full: bool = False) -> None:
    """Run one tutorial's ``main`` with ``out_dir=docs/figures`` and save its printed output."""
    spec = importlib.util.spec_from_file_location(f"tutorial_{name}", os.path.join(TUTORIALS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        module.main(full=full, out_dir=FIGURES)
    text = buffer.getvalue().replace(ROOT + os.sep, "")
    with open(os.path.join(FIGURES, f"{name}.txt"), "w") as f:
        f.write(text)
    print(f"{name}: done")


def main(argv: list) -> None:
    full = "--full" in argv
    names = [a for a in argv if not a.startswith("--")] or tutorial_names()
    unknown = sorted(set(names) - set(tutorial_names()))
    if unknown:
        raise SystemExit(f"unknown tutorials {unknown}; choose from {tutorial_names()}")
    os.makedirs(FIGURES, exist_ok=True)
    for name in names:
        run(name, full=full)


if __name__ == "__main__":
    main(sys.argv[1:])
