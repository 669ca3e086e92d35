"""Old import paths that keep working for one release, with a ``DeprecationWarning`` naming the new one."""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import Callable, Dict, Sequence, Tuple


def warn_moved(old: str, new: str) -> None:
    """Warn that ``old`` (a module path or a name) now lives at ``new``."""
    warnings.warn(f"{old} has moved to {new}; the old path is deprecated and will be removed in the next release",
                  DeprecationWarning, stacklevel=3)


def moved_names(package: str, table: Dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` serving ``name`` from ``table[name]`` (a module path) with a warning.

    Used by a package whose old public names moved to another package that sits above it in the
    layer order, so the old package cannot import them eagerly without an import cycle.
    """
    def __getattr__(name: str) -> object:
        if name not in table:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        warn_moved(f"{package}.{name}", f"{table[name]}.{name}")
        return getattr(importlib.import_module(table[name]), name)

    return __getattr__


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves old module paths: ``import pyro_bdl.lifting`` gives the module(s) now holding that code.

    ``table`` maps an old path to ``(new paths, warn)``. One new path: the old name is the very same
    module object (``sys.modules`` alias, so classes keep their identity). Several (a module that was
    split): a module holding every name of those modules. ``warn=False`` for the public namespaces
    (``pyro_bdl.metrics`` is ``bdl.metrics``), ``True`` for private paths that will go away.
    """

    def __init__(self, table: Dict[str, Tuple[Sequence[str], bool]]):
        self.table = table

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.table:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=False)

    def create_module(self, spec):
        new, warn = self.table[spec.name]
        if warn:
            warn_moved(spec.name, " and ".join(new))
        modules = [importlib.import_module(n) for n in new]
        if len(modules) == 1:
            return modules[0]
        merged = ModuleType(spec.name, modules[0].__doc__)
        for module in reversed(modules):
            merged.__dict__.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
        return merged

    def exec_module(self, module):
        pass  # the module is the already-imported new one


def install_moved_modules(table: Dict[str, Tuple[Sequence[str], bool]]) -> None:
    """Make the old paths in ``table`` importable (idempotent)."""
    if not any(isinstance(f, _MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModules(table))
