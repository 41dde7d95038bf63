"""The package's shape, checked so that it stays readable: no import cycle between ailora's modules
(imports inside functions count), no function over 60 lines, no module importing another's
underscore names."""

from __future__ import annotations

import ast
from pathlib import Path

import ailora

PACKAGE = Path(ailora.__file__).parent
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The ailora module that a dotted name refers to (itself, or the module that defines it)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> list[tuple[str, str]]:
    """(imported module, imported name or '') for every ailora import in the file, at any depth."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.split(".")[0] == "ailora"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] == "ailora":
                found += [(base, alias.name) for alias in node.names]
    return found


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for base, name in _imports(module, path):
            target = f"{base}.{name}" if f"{base}.{name}" in MODULES else _owner(base)
            if target and target != module:
                graph[module].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


# The package reads from the core outwards: a module imports only from its own layer or earlier ones.
LAYERS = ("ailora.errors", "ailora.interrupts", "ailora.version", "ailora.registry", "ailora.core", "ailora.hf", "ailora.methods",
          "ailora.tasks", "ailora.train", "ailora.analysis", "ailora.experiments", "ailora.cli")


def _layer(module: str) -> int:
    for i, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return i
    return len(LAYERS)  # the package itself (ailora/__init__.py), which re-exports the public API


def test_modules_import_only_from_earlier_layers():
    upward = [f"{module} -> {target}" for module, targets in import_graph().items()
              for target in targets if _layer(target) > _layer(module)]
    assert not upward, "imports against the layering: " + ", ".join(sorted(upward))


def test_no_function_over_60_lines():
    long = []
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name} ({lines} lines)")
    assert not long, "functions over 60 lines: " + ", ".join(long)


def test_no_module_imports_another_modules_private_names():
    private = [f"{module} imports {base}.{name}"
               for module, path in MODULES.items() for base, name in _imports(module, path)
               if name.startswith("_") and not name.startswith("__")]
    assert not private, "; ".join(private)
