"""The package's layout is what ARCHITECTURE.md says: stages in layers, arrows that point down the
data flow, no import cycles, imports at the top of modules.

Read from the source with ``ast`` (nothing is imported), so a new module is checked as soon as it
exists.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bayesflex"

#: the layers, lowest first: a module may import from its own layer and the ones below it
LAYERS = ("errors", "core", "grid", "io", "priors", "study", "analysis", "aggregator", "fleet", "cli")
#: entry points that import the rest when a command or name is first asked for, so that
#: ``bayesflex --help`` and ``import bayesflex`` stay fast
LAZY_ALLOWED = {"bayesflex", "bayesflex.priors", "bayesflex.cli.main"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return -1  # the package root: its public names
    return LAYERS.index(parts[1])


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported bayesflex module, imported at the top of the module?, line) of ``path``; imports
    under ``if TYPE_CHECKING:`` are left out (annotations only)."""
    tree = ast.parse(path.read_text())
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                 and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
                 for n in ast.walk(node)}
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "bayesflex":
                continue
            for alias in node.names:  # ``from bayesflex.analysis import query`` imports a module
                sub = f"{mod}.{alias.name}"
                target = sub if _exists(sub) else mod
                out.append((target, id(node) in top, node.lineno))
        elif isinstance(node, ast.Import):
            out += [(a.name, id(node) in top, node.lineno) for a in node.names if a.name.split(".")[0] == "bayesflex"]
    return out


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").is_file() or (PACKAGE / rel / "__init__.py").is_file()


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_is_in_a_layer():
    for name in MODULES:
        if name != "bayesflex":
            assert name.split(".")[1] in LAYERS, f"{name}: not in a layer of ARCHITECTURE.md ({', '.join(LAYERS)})"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down_the_flow(name):
    if name == "bayesflex":
        return  # the root re-exports the public names, lazily
    mine = _layer(name)
    for target, _, line in _imports(MODULES[name]):
        assert _layer(target) <= mine, (
            f"{MODULES[name].name}:{line} imports {target}: {LAYERS[_layer(target)]} is above "
            f"{LAYERS[mine]} (allowed: {', '.join(LAYERS[: mine + 1])})")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_at_the_top(name):
    if name in LAZY_ALLOWED:
        return
    inner = [(t, line) for t, at_top, line in _imports(MODULES[name]) if not at_top]
    assert not inner, f"{name}: imports inside functions hide who depends on whom: {inner}"


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_no_import_cycles():
    modules = {n: {t for t, *_ in _imports(p) if t != n} for n, p in MODULES.items()}
    assert _cycle(modules) is None, f"modules import each other: {' -> '.join(_cycle(modules))}"
    packages: dict[str, set[str]] = {}
    for n, targets in modules.items():
        if n.count(".") >= 1:
            me = n.split(".")[1]
            packages.setdefault(me, set()).update(t.split(".")[1] for t in targets if t.count(".") >= 1
                                                  and t.split(".")[1] != me)
    assert _cycle(packages) is None, f"subpackages import each other: {' -> '.join(_cycle(packages))}"


def test_the_checks_can_fail():
    """The checks above, on made-up modules: an upward import and a cycle are found."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    assert _layer("bayesflex.grid.loadflow") < _layer("bayesflex.study.engine")
