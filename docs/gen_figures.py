"""Regenerate the tutorial pages, figures and printed output that the docs site shows.

Each tutorial ``tutorials/<name>.py`` is run (small size by default, full size with ``--full``) in a
temporary folder; its PNG figures are copied to ``docs/figures/``, what it prints to
``docs/figures/<name>.txt``, and its page ``docs/tutorials/<name>.md`` is written (title and text from
the script's docstring, then the figures, the output and the script itself). The results are
committed, so ``mkdocs build`` runs no tutorial and stays fast; the tutorials themselves run in the
test suite (``tests/test_tutorial_<name>.py``). A new tutorial also needs a line in ``mkdocs.yml``'s nav.

Usage::

    python docs/gen_figures.py                    # every tutorial, small size
    python docs/gen_figures.py gap_regression     # one tutorial
    python docs/gen_figures.py --full             # full size (slow)
"""
from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # this checkout's pyro_bdl
TUTORIALS = os.path.join(ROOT, "tutorials")
FIGURES = os.path.join(ROOT, "docs", "figures")
PAGES = os.path.join(ROOT, "docs", "tutorials")


def tutorial_names() -> list:
    """Names of the tutorial scripts (``tutorials/<name>.py``)."""
    return sorted(f[:-3] for f in os.listdir(TUTORIALS) if f.endswith(".py") and not f.startswith("_"))


def write_page(name: str, figures: list, full: bool) -> None:
    """``docs/tutorials/<name>.md``: the docstring as text, the figures, the output and the script."""
    with open(os.path.join(TUTORIALS, f"{name}.py")) as f:
        doc = ast.get_docstring(ast.parse(f.read())) or name
    title, _, text = doc.partition("\n")
    title = title.strip().rstrip(".")
    if title.lower().startswith("tutorial:"):
        title = title[len("tutorial:"):].strip()
    title = title[:1].upper() + title[1:]
    size = "full-size (`--full`)" if full else "small (default)"
    lines = [f"# {title}", "", text.strip(), "",
             f"The figures and output below are from a {size} run of `tutorials/{name}.py`, made by "
             f"`python docs/gen_figures.py {name}`.", ""]
    lines += [f"![{fig}](../figures/{fig})\n" for fig in figures]
    lines += ["## Output", "", "```text", f'--8<-- "docs/figures/{name}.txt"', "```", "",
              "## Script", "", "```python", f'--8<-- "tutorials/{name}.py"', "```", ""]
    with open(os.path.join(PAGES, f"{name}.md"), "w") as f:
        f.write("\n".join(lines))


def run(name: str, full: bool = False) -> None:
    """Run one tutorial's ``main`` in a temporary folder; keep its figures, output and page."""
    spec = importlib.util.spec_from_file_location(f"tutorial_{name}", os.path.join(TUTORIALS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with tempfile.TemporaryDirectory() as tmp:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            module.main(full=full, out_dir=tmp)
        figures = sorted(f for f in os.listdir(tmp) if f.endswith(".png"))
        for fig in figures:
            shutil.copy(os.path.join(tmp, fig), os.path.join(FIGURES, fig))
        text = buffer.getvalue().replace(tmp, "tutorials/figures").replace(ROOT + os.sep, "")
    with open(os.path.join(FIGURES, f"{name}.txt"), "w") as f:
        f.write(text)
    write_page(name, figures, full)
    print(f"{name}: {len(figures)} figures")


def main(argv: list) -> None:
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return
    full = "--full" in argv
    names = [a for a in argv if not a.startswith("--")] or tutorial_names()
    unknown = sorted(set(names) - set(tutorial_names()))
    if unknown:
        raise SystemExit(f"unknown tutorials {unknown}; choose from {tutorial_names()}")
    os.makedirs(FIGURES, exist_ok=True)
    os.makedirs(PAGES, exist_ok=True)
    for name in names:
        run(name, full=full)


if __name__ == "__main__":
    main(sys.argv[1:])
