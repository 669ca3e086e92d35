"""Rewrite Sphinx roles (``:func:`x```, ``:class:`~a.B```, ...) into what mkdocstrings renders.

The API reference is built by mkdocstrings, which reads docstrings as Markdown: a Sphinx role shows up
verbatim (":class:" followed by code). This script rewrites every role in the package's sources, the
tutorials, the benchmarks, README.md and docs/ pages:

* a role naming a pyro_bdl function, class or method that the API reference renders and that is exported
  from ``pyro_bdl`` or one of its stable public namespaces (``STABLE_NAMESPACES``) becomes a Markdown
  cross-reference through that public path, ``[`fit`][pyro_bdl.fit]`` (public paths survive module moves;
  mkdocstrings resolves them to wherever the object is documented); a method links to its class;
* anything else (modules, other libraries, private helpers, names it cannot resolve) becomes plain code,
  ```x```.

``~`` keeps only the last dotted component as the shown text, as in Sphinx. The script is idempotent:
run it again after merging branches that added docstrings with roles::

    python docs/tools/fix_roles.py          # rewrite in place, print what changed
    python docs/tools/fix_roles.py --check  # exit 1 and list the roles, change nothing

``tests/test_docs.py::test_no_sphinx_roles`` fails while any role is left.
"""
from __future__ import annotations

import argparse
import glob
import importlib
import inspect
import os
import re
import sys
import warnings
from typing import Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

#: a Sphinx role: ``:func:`target``` or ``:py:class:`~target``` or ``:meth:`text <target>```
ROLE = re.compile(r":(?:py:)?(func|class|meth|attr|mod|data|exc|obj|const|ref|any):`(~?)([^`<>]+?)(?:\s*<([^`>]+)>)?`")


def source_files(root: str = ROOT) -> list:
    """Every file whose text may hold a role: package, tutorials and benchmark sources, README and docs pages."""
    files = []
    for pattern in ("pyro_bdl/**/*.py", "tutorials/**/*.py", "benchmarks/**/*.py", "docs/**/*.md", "README.md"):
        files += glob.glob(os.path.join(root, pattern), recursive=True)
    return sorted(set(files))


def _rendered_modules(root: str = ROOT) -> set:
    """Modules the API reference renders (``::: module`` lines in docs/api/*.md), with their submodules' parents."""
    mods = set()
    for page in glob.glob(os.path.join(root, "docs", "api", "*.md")):
        with open(page) as f:
            mods.update(re.findall(r"^:::\s*([\w.]+)", f.read(), re.M))
    return mods


#: the namespaces whose names stay put when modules move (issue 12's layout plan); a cross-reference goes
#: through one of them (or ``pyro_bdl.X``), never through a module path that may move
STABLE_NAMESPACES = ("priors", "function_priors", "likelihoods", "metrics", "data", "plots", "diagnostics",
                     "tempering", "networks", "batchnorm", "guides", "studies", "backends")


def _public_paths() -> dict:
    """``id(object) -> public dotted path`` for pyro_bdl's exported names: ``pyro_bdl.__all__`` first, then
    each public subpackage's ``__all__`` (the shortest path wins)."""
    import pyro_bdl

    paths: dict = {}

    def add(path, obj):
        if id(obj) not in paths or len(path) < len(paths[id(obj)]):
            paths[id(obj)] = path

    modules = {"pyro_bdl": pyro_bdl}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in STABLE_NAMESPACES:
            try:
                # through the module's own name: ``bdl.diagnostics`` is ``pyro_bdl.evaluate.diagnostics``,
                # and mkdocstrings resolves names through real packages, not through module aliases
                mod = importlib.import_module(f"pyro_bdl.{name}")
                modules[mod.__name__] = mod
            except Exception:  # not there yet, or an optional dependency missing: its names stay plain code
                continue
    for name, mod in modules.items():
        for attr in getattr(mod, "__all__", []):
            obj = getattr(mod, attr, None)
            if obj is None or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            add(f"{name}.{attr}", obj)
    return paths


def _import_path(path: str):
    """The object a dotted path names, or None."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = importlib.import_module(".".join(parts[:i]))
        except Exception:
            continue
        try:
            for part in parts[i:]:
                obj = getattr(obj, part)
        except AttributeError:
            return None
        return obj
    return None


def _module_of(file: str) -> Optional[str]:
    rel = os.path.relpath(file, ROOT)
    if not rel.startswith("pyro_bdl") or not rel.endswith(".py"):
        return None
    mod = rel[:-3].replace(os.sep, ".")
    return mod[: -len(".__init__")] if mod.endswith(".__init__") else mod


class Resolver:
    """Finds the public, documented path of a role's target (or None: write plain code)."""

    def __init__(self):
        self.public = _public_paths()
        self.rendered = _rendered_modules()

    def _documented(self, obj) -> bool:
        mod = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", "") or ""
        return any(mod == m or mod.startswith(m + ".") for m in self.rendered)

    def resolve(self, target: str, module: Optional[str]) -> Optional[str]:
        target = target.strip().rstrip("()")
        candidates = [target]
        if module:
            candidates.append(f"{module}.{target}")
            parent = module.rsplit(".", 1)[0]
            candidates.append(f"{parent}.{target}")
        candidates.append(f"pyro_bdl.{target}")
        for cand in candidates:
            if not cand.startswith("pyro_bdl"):
                continue
            obj = _import_path(cand)
            if obj is None or inspect.ismodule(obj):  # modules move: shown as plain code
                continue
            if id(obj) in self.public and self._documented(obj):
                return self.public[id(obj)]
            # a method or property: a link to its class (autorefs resolves a public alias of a class to
            # where the class is documented, but not the alias of one of its members)
            head, _, attr = cand.rpartition(".")
            owner = _import_path(head)
            if inspect.isclass(owner) and id(owner) in self.public and self._documented(owner) \
                    and attr in vars(owner) and not attr.startswith("_"):
                return self.public[id(owner)]
        return None


def rewrite(text: str, module: Optional[str], resolver: Resolver) -> str:
    """``text`` with every role replaced (see the module docstring)."""

    def repl(m: re.Match) -> str:
        _, tilde, first, explicit = m.groups()
        target = (explicit or first).strip()
        shown = first.strip() if explicit else (target.rsplit(".", 1)[-1] if tilde else target)
        path = resolver.resolve(target, module)
        return f"[`{shown}`][{path}]" if path else f"`{shown}`"

    return ROLE.sub(repl, text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="list remaining roles and exit 1 if any; change nothing")
    args = parser.parse_args(argv)
    resolver = None if args.check else Resolver()
    left = 0
    for file in source_files():
        with open(file, encoding="utf-8") as f:
            text = f.read()
        hits = list(ROLE.finditer(text))
        if not hits:
            continue
        left += len(hits)
        rel = os.path.relpath(file, ROOT)
        if args.check:
            for h in hits:
                print(f"{rel}:{text.count(chr(10), 0, h.start()) + 1}: {h.group(0)}")
            continue
        new = rewrite(text, _module_of(file), resolver)
        with open(file, "w", encoding="utf-8") as f:
            f.write(new)
        print(f"{rel}: {len(hits)} role(s) rewritten")
    if args.check:
        return 1 if left else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
