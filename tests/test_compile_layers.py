"""The compiler package's import layers (edgecls/compile/__init__.py), read from the source with
`ast` (nothing is imported): every import counts, at module level or inside a function.

* no import cycle among edgecls.compile's modules (importing a module also runs its packages'
  __init__, so an import of a.b.c depends on a.b and a too);
* no module of edgecls.compile.tvm imports names from a package above it (its own package's
  __init__ or edgecls.compile.tvm's): those are the surface for the layers above;
* the parts of edgecls.compile.tvm import only downwards (LAYERS), never a sibling of their layer;
* core.py, the leaf, imports nothing of edgecls.compile;
* build.py, tune.py and the rest of edgecls use edgecls.compile.tvm's public names only;
* only edgecls.compile.tvm imports TVM.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "edgecls"
TVM_DOOR = "edgecls.compile.tvm"
# The parts of edgecls.compile.tvm, lowest first (edgecls/compile/__init__.py). A part imports
# parts of lower layers only; the parts of one layer are independent of each other.
LAYERS = (("core",), ("fast_math", "frontend", "quant", "schedules"), ("passes",), ("tuning",), ("lower", "profile"))


def _modules() -> dict[str, Path]:
    """{dotted name: file} of every module and package of edgecls."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _imports(name: str) -> list[tuple[str, bool, int]]:
    """(imported module, whether names were taken from it rather than a submodule, line) of every
    import statement in the module's source, relative ones resolved."""
    tree = ast.parse(MODULES[name].read_text(), str(MODULES[name]))
    here = name if _is_package(name) else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, False, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[:len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((sub, False, node.lineno) if sub in MODULES else (base, True, node.lineno))
    return out


def _graph(prefix: str) -> dict[str, set[str]]:
    """Import edges among the modules under `prefix`, with the implicit edges to the packages an
    import runs (those that are not already the importer's own ancestors)."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES if m == prefix or m.startswith(prefix + ".")}
    for name in graph:
        mine = set(_ancestors(name))
        for target, _, _ in _imports(name):
            for dep in [*_ancestors(target), target]:
                if dep in graph and dep != name and dep not in mine:
                    graph[name].add(dep)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_in_the_compiler():
    cycle = _cycle(_graph("edgecls.compile"))
    assert cycle is None, " -> ".join(cycle)


def test_no_module_imports_names_from_a_package_above_it():
    bad = []
    for name in MODULES:
        if not name.startswith(TVM_DOOR + "."):
            continue
        for target, names, line in _imports(name):
            if target in _ancestors(name) or (target == name and names):
                bad.append(f"{MODULES[name].relative_to(ROOT)}:{line} imports from {target}")
    assert not bad, bad


def test_the_parts_of_the_tvm_package_import_only_downwards():
    rank = {part: i for i, layer in enumerate(LAYERS) for part in layer}
    parts = {name.split(".")[3] for name in MODULES if name.startswith(TVM_DOOR + ".")}
    assert parts == set(rank), parts  # a new part needs its place in LAYERS
    bad = []
    for name in MODULES:
        if not name.startswith(TVM_DOOR + "."):
            continue
        part = name.split(".")[3]
        for target, _, line in _imports(name):
            if not target.startswith(TVM_DOOR + "."):
                continue
            other = target.split(".")[3]
            if other != part and rank[other] >= rank[part]:
                bad.append(f"{MODULES[name].relative_to(ROOT)}:{line} ({part}) imports {target} ({other})")
    assert not bad, bad


def test_core_is_the_leaf():
    deps = {t for t, _, _ in _imports(f"{TVM_DOOR}.core") if t.startswith("edgecls.compile")}
    assert not deps, deps


def test_the_rest_of_edgecls_uses_the_public_surface_only():
    bad = []
    for name in MODULES:
        if name == TVM_DOOR or name.startswith(TVM_DOOR + "."):
            continue
        for target, _, line in _imports(name):
            if target.startswith(TVM_DOOR + "."):
                bad.append(f"{MODULES[name].relative_to(ROOT)}:{line} imports {target}")
    assert not bad, bad


def test_only_the_tvm_package_imports_tvm():
    bad = []
    for name in MODULES:
        if name == TVM_DOOR or name.startswith(TVM_DOOR + "."):
            continue
        for target, _, line in _imports(name):
            if target == "tvm" or target.startswith(("tvm.", "tvm_ffi")):
                bad.append(f"{MODULES[name].relative_to(ROOT)}:{line} imports {target}")
    assert not bad, bad
