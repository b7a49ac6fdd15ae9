"""memcell's imports point one way: no cycle between its modules, no reach into another module's privates.

The rules (design.md): a module may import a private module (``_name.py``) only from inside the
package that holds it, or when it sits at memcell's top level (``memcell/_checks.py`` style:
shared by all); nobody imports a ``_private`` name from another module or reads one as
``module._name``. Imports inside functions count: a deferred import is still a dependency.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "memcell"


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _package(module: str) -> str:
    """The package a module lives in (a package's own ``__init__`` lives in itself)."""
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _resolve(module: str, level: int, target: str | None) -> str:
    if not level:
        return target or ""
    base = _package(module).split(".")
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _imports(module: str):
    """``(imported module, names taken from it, line)`` for every import in ``module``, nested ones too."""
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, (), node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node.level, node.module)
            for a in node.names:
                sub = f"{base}.{a.name}"
                if sub in MODULES:  # `from memcell import scan`: the submodule itself
                    yield sub, (), node.lineno
                else:
                    yield base, (a.name,), node.lineno


def _private_owner(target: str) -> str | None:
    """For ``memcell.cells._common``: the package a private module belongs to (``memcell.cells``)."""
    parts = target.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def _module_aliases(module: str) -> dict[str, str]:
    """Local names bound to memcell modules by imports (``from memcell import fused as f`` -> f)."""
    tree = ast.parse(MODULES[module].read_text())
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = _resolve(module, node.level, node.module)
            for a in node.names:
                if f"{base}.{a.name}" in MODULES:
                    aliases[a.asname or a.name] = f"{base}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name in MODULES and a.asname:
                    aliases[a.asname] = a.name
    return aliases


def violations() -> list[str]:
    found = []
    for module in MODULES:
        own_package = _package(module)
        for target, names, line in _imports(module):
            if not (target == "memcell" or target.startswith("memcell.")):
                continue
            owner = _private_owner(target)
            if owner is not None and owner != "memcell" and not (own_package + ".").startswith(owner + "."):
                found.append(f"{module}:{line} imports private module {target} from outside {owner}")
            for name in names:
                if name.startswith("_") and not name.startswith("__") and target != module:
                    found.append(f"{module}:{line} imports private name {name} from {target}")
        aliases = _module_aliases(module)
        for node in ast.walk(ast.parse(MODULES[module].read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and f"{aliases[node.value.id]}.{node.attr}" not in MODULES):
                found.append(f"{module}:{node.lineno} reads {aliases[node.value.id]}.{node.attr}")
    return found


def graph() -> dict[str, set[str]]:
    """memcell module -> the memcell modules it imports (a package import counts as its ``__init__``)."""
    edges = {m: set() for m in MODULES}
    for module in MODULES:
        for target, _, _ in _imports(module):
            if target in MODULES and target != module:
                edges[module].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), and self-loops."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_the_package():
    assert {"memcell", "memcell.scan", "memcell.cells", "memcell.types", "memcell._checks"} <= set(MODULES)
    assert "memcell.paths" in graph()["memcell.scan"]  # scan resolves the path through memcell.paths
    assert "memcell.fused.path" in graph()["memcell.paths"]  # which imports every path at the top


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_no_private_reach_ins():
    assert violations() == []


# The checker itself, on small made-up packages: each rule must be able to fail.


@pytest.fixture
def fake(tmp_path, monkeypatch):
    def make(files: dict[str, str]):
        root = tmp_path / "memcell"
        for rel, text in files.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        monkeypatch.setitem(globals(), "ROOT", root)  # the checker's functions read these globals
        monkeypatch.setitem(globals(), "MODULES", {_module_name(p): p for p in sorted(root.rglob("*.py"))})

    return make


def test_checker_finds_a_cycle_through_a_deferred_import(fake):
    fake({
        "__init__.py": "",
        "scan.py": "def unroll():\n    from memcell import fused\n",
        "fused.py": "from memcell import scan\n",
    })
    assert cycles(graph()) == [["memcell.fused", "memcell.scan"]]


def test_checker_finds_private_names_and_modules(fake):
    fake({
        "__init__.py": "",
        "_checks.py": "",
        "cells/__init__.py": "",
        "cells/_common.py": "",
        "cells/lstm.py": "from memcell.cells import _common\nfrom memcell import _checks\n",
        "scan.py": "def _check_xs(): pass\n",
        "jacobian.py": "from memcell.scan import _check_xs\nfrom memcell.cells._common import x\n",
        "cli.py": "from memcell import scan\nscan._check_xs()\n",
    })
    found = violations()
    assert any(f.startswith("memcell.jacobian:1 imports private name _check_xs from memcell.scan") for f in found)
    assert any(f.startswith("memcell.jacobian:2 imports private module memcell.cells._common") for f in found)
    assert any(f.startswith("memcell.cli:2 reads memcell.scan._check_xs") for f in found)
    assert not any(f.startswith("memcell.cells.lstm") for f in found)  # its own package's private module: fine
    assert len(found) == 3
