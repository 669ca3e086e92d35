"""The documentation: the site builds with warnings as errors, every public name has a docstring,
every tutorial has a test and a page, no Sphinx role is left in a docstring or page (the pages' code
runs in tests/test_doc_snippets.py)."""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import sys

import pytest

import pyro_bdl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "tutorials")) if f.endswith(".py"))


def _read(*parts: str) -> str:
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def test_docs_build_strict(tmp_path):
    """``mkdocs build --strict`` (mkdocs.yml also says strict): a broken link, a missing figure or
    included file, or a docstring mkdocstrings cannot render fails the build."""
    missing = [m for m in ("mkdocs", "material", "mkdocstrings_handlers.python")
               if importlib.util.find_spec(m.split(".")[0]) is None]
    if missing:
        pytest.skip(f"docs tools not installed ({', '.join(missing)}): pip install -e '.[docs]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    # the API reference really rendered docstrings (mkdocstrings found the package)
    api = (site / "api" / "lifting" / "index.html").read_text()
    assert "BayesianModel" in api and "log_joint" in api
    # maths renders offline: the pages load the bundled KaTeX and nothing from another host
    concepts = (site / "concepts" / "index.html").read_text()
    assert 'class="arithmatex"' in concepts and "assets/katex/katex.min.js" in concepts
    for asset in ("katex.min.js", "katex.min.css", "contrib/auto-render.min.js", "LICENSE",
                  "fonts/KaTeX_Main-Regular.woff2"):
        assert (site / "assets" / "katex" / asset).exists(), f"KaTeX file {asset} missing from the site"
    remote = sorted({f"{page.relative_to(site)}: {m}" for page in site.rglob("*.html")
                     for m in re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="https?://[^"]+"', page.read_text())})
    assert not remote, "pages load files from other hosts (the site must work offline):\n  " + "\n  ".join(remote[:10])
    # each tutorial page shows its script, its printed output and its figures
    for name in TUTORIALS:
        page = (site / "tutorials" / name / "index.html").read_text()
        assert 'class="nf">main' in page, f"tutorial page {name} does not include the script"
        assert "<img" in page, f"tutorial page {name} shows no figure"


def _defined_here(module):
    """The public functions and classes a module defines (its ``__all__`` when it has one)."""
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, o in vars(module).items() if not n.startswith("_")
                 and (inspect.isfunction(o) or inspect.isclass(o)) and o.__module__ == module.__name__]
    return [(n, getattr(module, n)) for n in names]


def _public_objects():
    """(qualified name, object) for every public name: ``pyro_bdl.__all__`` and each public subpackage's
    ``__all__`` (a module listed there contributes its functions and classes), and the public methods and
    properties of those classes."""
    roots = {"pyro_bdl": pyro_bdl}
    for info in pkgutil.walk_packages(pyro_bdl.__path__, "pyro_bdl."):
        if info.ispkg and not any(part.startswith("_") for part in info.name.split(".")):
            roots[info.name] = importlib.import_module(info.name)
    seen = {}
    for root_name, root in roots.items():
        for name, obj in _defined_here(root):
            if inspect.ismodule(obj):
                seen.setdefault(f"{root_name}.{name}", obj)
                for sub_name, sub in _defined_here(obj):
                    if inspect.isfunction(sub) or inspect.isclass(sub):
                        seen.setdefault(f"{root_name}.{name}.{sub_name}", sub)
            elif inspect.isfunction(obj) or inspect.isclass(obj):
                seen.setdefault(f"{root_name}.{name}", obj)
    for qual, obj in list(seen.items()):
        if inspect.isclass(obj) and obj.__module__.startswith("pyro_bdl"):
            for attr, member in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member) or isinstance(member, property):
                    seen[f"{qual}.{attr}"] = (obj, attr, member)
    return seen


def test_every_public_name_has_a_docstring():
    missing = []
    for qual, obj in _public_objects().items():
        if isinstance(obj, tuple):  # a method or property: its own docstring, or the one it overrides
            cls, attr, member = obj
            doc = member.__doc__ or next((getattr(base, attr).__doc__ for base in cls.__mro__[1:]
                                          if getattr(getattr(base, attr, None), "__doc__", None)), None)
        else:
            doc = obj.__doc__ if inspect.ismodule(obj) else inspect.getdoc(obj)
        if not (doc or "").strip():
            missing.append(qual)
    assert not missing, "public names without a docstring:\n  " + "\n  ".join(sorted(missing))


def test_every_tutorial_has_a_test_and_a_docs_page():
    nav = _read("mkdocs.yml")
    for name in TUTORIALS:
        assert os.path.exists(os.path.join(ROOT, "tests", f"test_tutorial_{name}.py")), f"tutorial {name} has no test"
        assert f"tutorials/{name}.md" in nav, f"tutorial {name} is not in the docs (docs/tutorials/{name}.md, mkdocs.yml nav)"
        assert os.path.exists(os.path.join(ROOT, "docs", "figures", f"{name}.txt")), (
            f"no rendered output for {name}: run python docs/gen_figures.py {name}")


def test_getting_started_commands_are_the_readme_commands():
    readme = _read("README.md")
    setup = readme.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", setup, re.S)
    assert len(commands) >= 2
    page = _read("docs", "getting-started.md")
    for command in commands:
        assert command in page, f"docs/getting-started.md does not show the README's command:\n{command}"


# The code blocks of README.md and every docs page run in tests/test_doc_snippets.py.


def _fix_roles():
    spec = importlib.util.spec_from_file_location("fix_roles", os.path.join(ROOT, "docs", "tools", "fix_roles.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_sphinx_roles():
    """mkdocstrings reads docstrings as Markdown, where ``:func:`x``` shows up verbatim: every docstring,
    tutorial, benchmark and docs page uses Markdown cross-references or plain code instead."""
    fix_roles = _fix_roles()
    found = []
    for file in fix_roles.source_files(ROOT):
        with open(file, encoding="utf-8") as f:
            text = f.read()
        for m in fix_roles.ROLE.finditer(text):
            found.append(f"{os.path.relpath(file, ROOT)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}")
    assert not found, ("Sphinx roles left (run `python docs/tools/fix_roles.py` to rewrite them):\n  "
                       + "\n  ".join(found))


def test_fix_roles_rewrites():
    """The rewrite: public documented names become cross-references through their public path, methods link
    to their class, everything else becomes plain code."""
    fix_roles = _fix_roles()
    resolver = fix_roles.Resolver()
    text = (":class:`~pyro_bdl.BayesianModel`, :func:`pyro_bdl.fit`, :meth:`BayesianModel.log_joint`, "
            ":mod:`torch.fx`, :func:`not_a_name`, :py:func:`shown <pyro_bdl.fit>`")
    assert fix_roles.rewrite(text, "pyro_bdl.infer.fit", resolver) == (
        "[`BayesianModel`][pyro_bdl.BayesianModel], [`pyro_bdl.fit`][pyro_bdl.fit], "
        "[`BayesianModel.log_joint`][pyro_bdl.BayesianModel], `torch.fx`, `not_a_name`, "
        "[`shown`][pyro_bdl.fit]")
