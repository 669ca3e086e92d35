"""Every ```python block of README.md and docs/ runs, in order, one namespace per file, at a small size.

How a page controls this, with HTML comments (invisible on the rendered page) right before a block:

* ``<!-- snippet: skip REASON -->``: the block is not run (it needs a cluster, or only illustrates);
  the reason is required.
* ``<!-- snippet: setup`` + Python lines + ``-->``: hidden code run before the block, for names the page
  takes as given (``post``, ``x_test``) or files it assumes (a study TOML).
* ``<!-- snippet: slow REASON -->``: the block runs only with the slow tests (``pytest -m slow`` runs the
  page with it); later blocks must not depend on its names.
* ``<!-- snippet: full REASON -->``: the block runs as written, without the small-size rewrite (it is
  cheap, and its sizes are what is being checked).
* ``<!-- snippet: xfail REASON -->``: the block is expected to fail today (the reason names the issue);
  the page's other blocks still run, and the page is reported as xfailed only if they all pass. Later
  blocks must not depend on names the xfailed block defines.

Blocks that only include a tutorial script (``--8<-- "tutorials/x.py"``) are skipped: each tutorial
has its own test. The code is run at test size by ``SMALL``, a rewrite of keyword arguments
(``num_samples=200`` -> ``num_samples=4``, ...); every other line runs as written. ``SMALL`` is the whole
list of what changes.
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import time

import matplotlib
import pytest

import pyro_bdl

matplotlib.use("Agg")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: keyword -> value at test size (applied as ``\bkey=<number>`` -> ``key=value``)
SMALL = {"num_samples": 4, "warmup": 1, "warmup_steps": 4, "num_chains": 1, "num_steps": 5, "epochs": 3,
         "swa_start": 1, "num_models": 2, "steps": 5, "train_size": 200, "rank": 2}

_BLOCK = re.compile(r"((?:<!--.*?-->\s*)*)```python\n(.*?)```", re.S)
_MARK = re.compile(r"<!--\s*snippet:\s*(skip|setup|slow|full|xfail)\b(.*?)-->", re.S)


def small(code: str) -> str:
    """The code at test size (see ``SMALL``)."""
    for key, value in SMALL.items():
        code = re.sub(rf"\b{key}=\d+(\.\d+)?(e-?\d+)?\b", f"{key}={value}", code)
    return code


def blocks(path: str) -> list:
    """``(line, code, marks)`` for each python block of a Markdown file; marks maps kind -> text."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    out = []
    for m in _BLOCK.finditer(text):
        marks = {kind: body.strip() for kind, body in _MARK.findall(m.group(1))}
        out.append((text.count("\n", 0, m.start(2)) + 1, m.group(2), marks))
    return out


def pages() -> list:
    files = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"),
                                                                 recursive=True))
    # a tutorial page's only block includes its script, which tests/test_tutorial_<name>.py runs
    return [os.path.relpath(f, ROOT) for f in files
            if any(not code.lstrip().startswith("--8<--") for _, code, _ in blocks(f))]


#: pages whose blocks need an optional dependency
_NEEDS = {"README.md": ["arviz"], "docs/howto/arviz.md": ["arviz"]}
#: ... and with their slow blocks
_NEEDS_SLOW = {"README.md": ["jax", "numpyro"]}


def _params():
    """One fast run per page (``slow`` blocks left out) and, for pages with ``slow`` blocks, one slow run of all."""
    params = []
    for page in pages():
        params.append(pytest.param(page, False, id=page))
        if any("slow" in marks for _, _, marks in blocks(os.path.join(ROOT, page))):
            params.append(pytest.param(page, True, id=f"{page}-all", marks=pytest.mark.slow))
    return params


@pytest.mark.parametrize("page, with_slow", _params())
def test_page_snippets_run(page, with_slow, tmp_path, monkeypatch):
    needs = _NEEDS.get(page, []) + (_NEEDS_SLOW.get(page, []) if with_slow else [])
    missing = [m for m in needs if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}")
    monkeypatch.chdir(tmp_path)  # snippets write post.pt, runs/...
    namespace: dict = {"__name__": "__snippet__", "__file__": os.path.join(ROOT, page)}
    ran = skipped = 0
    xfailed = []
    for line, code, marks in blocks(os.path.join(ROOT, page)):
        if code.lstrip().startswith("--8<--"):
            continue
        if "slow" in marks and not with_slow:
            skipped += 1
            continue
        if "skip" in marks:
            assert marks["skip"], f"{page}:{line}: a skipped block must say why (<!-- snippet: skip REASON -->)"
            skipped += 1
            continue
        if "setup" in marks:
            exec(compile(marks["setup"], f"{page}:{line} (setup)", "exec"), namespace)
        start = time.perf_counter()
        try:
            exec(compile(code if "full" in marks else small(code), f"{page}:{line}", "exec"), namespace)
        except Exception as e:
            if "xfail" in marks:
                xfailed.append(f"{page}:{line}: {marks['xfail']} ({type(e).__name__}: {e})")
                continue
            raise AssertionError(f"the block at {page}:{line} failed: {type(e).__name__}: {e}") from e
        ran += 1
        print(f"{page}:{line}: {time.perf_counter() - start:.1f} s")
    assert ran or skipped, f"{page}: no block ran"
    for check in _CHECKS.get(page, []):
        check(namespace, tmp_path)
    if xfailed:
        pytest.xfail("; ".join(xfailed))


def _first_bnn(ns, tmp_path):
    assert isinstance(ns["post"], pyro_bdl.Posterior)
    assert ns["pred"].mean.shape[0] == len(ns["data"].x_test)
    assert (tmp_path / "post.pt").exists()


def _priors_howto(ns, tmp_path):
    assert "prior_scale" in ns["post"].sample(3)
    assert ns["mcmc"].get_samples()["prior_scale"].shape == (SMALL["num_samples"],)


#: what each page's code must have produced, beyond running
_CHECKS = {"README.md": [_first_bnn], "docs/getting-started.md": [_first_bnn],
           "docs/howto/priors-in-pyro.md": [_priors_howto]}


def test_markers_are_recognised():
    """A marker the test does not know (a typo) would silently run or skip nothing: fail instead."""
    bad = []
    for page in pages() + ["README.md"]:
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            text = f.read()
        for m in re.finditer(r"<!--\s*snippet\b[^>]*", text):
            if not _MARK.match(text, m.start()):
                bad.append(f"{page}: {m.group(0)[:60]}")
    assert not bad, "unknown snippet markers:\n  " + "\n  ".join(bad)
