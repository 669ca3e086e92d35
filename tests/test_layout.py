"""The package layout: no import cycles, lower layers never import higher ones, old paths still import."""
import ast
import importlib
import pathlib
import subprocess
import sys
import warnings

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "pyro_bdl"

# The flow nn.Module -> model -> fit -> posterior -> evaluate -> studies, as layers: a module may import
# only modules of its own layer or a lower one.
LAYERS = {
    "_util": 0, "_version": 0, "priors": 1, "examples": 1, "model": 2, "function_priors": 3, "backends": 3,
    "guides": 4, "posterior": 5, "evaluate": 6, "infer": 7, "studies": 8, "cli": 9,
}


def _modules():
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, is_pkg)
    return mods


def _imports(name, path, is_pkg, mods):
    """Every pyro_bdl module ``name`` imports (function-local imports included), with line numbers."""
    parts = name.split(".")
    package = parts if is_pkg else parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else (node.module or "")
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        for target in targets:
            if target.split(".")[0] != "pyro_bdl":
                continue
            # importing a.b.c runs a/__init__ and a/b/__init__ too, unless they are the importer's own packages
            pieces = target.split(".")
            if target == "pyro_bdl":  # ``import pyro_bdl`` or ``from .. import name`` at the root
                found.append((target, node.lineno, node.col_offset > 0))
            for k in range(2, len(pieces) + 1):
                mod = ".".join(pieces[:k])
                if mod in mods and mod != name and not name.startswith(mod + "."):
                    found.append((mod, node.lineno, node.col_offset > 0))
    return found


def _graph():
    mods = _modules()
    return mods, {name: _imports(name, path, is_pkg, mods) for name, (path, is_pkg) in mods.items()}


def test_no_import_cycle():
    mods, graph = _graph()
    edges = {m: {t for t, _, _ in graph[m] if t != "pyro_bdl"} for m in graph if m != "pyro_bdl"}
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_the_root_package():
    _, graph = _graph()
    bad = [f"{m}:{line}" for m, imps in graph.items() if m != "pyro_bdl" for t, line, _ in imps if t == "pyro_bdl"]
    assert not bad, f"modules importing the top-level package (import the module that defines the name): {bad}"


def test_lower_layers_never_import_higher_ones():
    _, graph = _graph()
    bad = []
    for m, imps in graph.items():
        if m == "pyro_bdl":
            continue
        layer = LAYERS[m.split(".")[1]]
        for t, line, _ in imps:
            if t != "pyro_bdl" and LAYERS[t.split(".")[1]] > layer:
                bad.append(f"{m}:{line} imports {t}")
    assert not bad, "cross-layer imports upward:\n" + "\n".join(bad)


def test_no_function_local_imports_of_the_package():
    # A function-local import of a pyro_bdl module is only ever a way to dodge a cycle.
    _, graph = _graph()
    bad = [f"{m}:{line} imports {t}" for m, imps in graph.items() for t, line, local in imps
           if local and not t.startswith("pyro_bdl.backends")]  # backends: JAX is an optional extra
    assert not bad, "\n".join(bad)


def test_every_module_imports_alone():
    """Each module imports in an interpreter where no other pyro_bdl module is loaded yet (no order dependence)."""
    names = sorted(n for n in _modules() if not n.startswith("pyro_bdl.backends"))
    code = (
        "import sys, importlib, torch, pyro\n"
        f"names = {names!r}\n"
        "bad = []\n"
        "for n in names:\n"
        "    for k in [k for k in sys.modules if k == 'pyro_bdl' or k.startswith('pyro_bdl.')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n"
        "        importlib.import_module(n)\n"
        "    except Exception as e:\n"
        "        bad.append(f'{n}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(bad)); sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT.parent)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("old, name", [
    ("pyro_bdl.lifting", "BayesianModel"), ("pyro_bdl.lifting", "LiftedNetwork"), ("pyro_bdl.weights", "WeightLayout"),
    ("pyro_bdl.validation", "check_inputs"), ("pyro_bdl.validation", "as_tensor"), ("pyro_bdl.checkpoint", "atomic_write"),
    ("pyro_bdl.predictive", "BMAPredictive"), ("pyro_bdl.inference", "fit"), ("pyro_bdl.inference.swag", "SWAGPosterior"),
    ("pyro_bdl.inference.mcmc", "initial_point"), ("pyro_bdl.inference.objective", "Objective"),
    ("pyro_bdl.priors.functional", "FunctionalPrior"), ("pyro_bdl.priors.functional", "Box"),
    ("pyro_bdl.priors.gp", "GP"), ("pyro_bdl.diagnostics.inference_data", "to_arviz"),
])
def test_old_private_paths_import_with_a_deprecation_warning(old, name):
    sys.modules.pop(old, None)
    with pytest.warns(DeprecationWarning, match="has moved to"):
        module = importlib.import_module(old)
    import pyro_bdl as bdl
    obj = getattr(module, name)
    assert obj is getattr(bdl, name, obj)  # the very same object, not a copy


@pytest.mark.parametrize("old, attr", [("pyro_bdl.metrics", "metrics"), ("pyro_bdl.likelihoods", "likelihoods"),
                                       ("pyro_bdl.data", "data"), ("pyro_bdl.diagnostics", "diagnostics"),
                                       ("pyro_bdl.tempering", "tempering"), ("pyro_bdl.networks", "networks")])
def test_public_namespaces_import_by_module_path_silently(old, attr):
    import pyro_bdl as bdl
    sys.modules.pop(old, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = importlib.import_module(old)
    assert module is getattr(bdl, attr)


def test_function_priors_under_their_old_names_warn():
    import pyro_bdl as bdl
    with pytest.warns(DeprecationWarning, match="pyro_bdl.function_priors"):
        gp = bdl.priors.GP
    assert gp is bdl.function_priors.GP


if __name__ == "__main__":
    # python tests/test_layout.py: the counts quoted in notes/issue-12.md (unique module -> module edges).
    _, graph = _graph()
    edges = {(m, t) for m, imps in graph.items() if m != "pyro_bdl" for t, _, _ in imps if t != "pyro_bdl"}
    layer = {m: LAYERS[m.split(".")[1]] for m in graph if m != "pyro_bdl"}
    print(f"modules {len(graph)}  edges {len(edges)}  cross-layer {sum(layer[m] != layer[t] for m, t in edges)}  "
          f"upward {sum(layer[t] > layer[m] for m, t in edges)}")
