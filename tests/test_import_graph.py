"""The project's import graph, read from the source (every import statement,
those inside functions too): no module takes part in an import cycle, the
layers point one way — csrc → subind_fast → subind.engine →
subind.shape_bias → subind.experiments → subind.commands — and inside
subind_fast the rooms do too: the floor (its top-level data modules) → ops →
nn → subnetworks → testing, with the face (subind_fast/__init__.py) above all."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"subind_fast": ROOT / "subind_fast", "subind": ROOT / "python_api" / "subind"}
# Lower layers first: a module may import its own layer and those before it.
LAYERS = ("subind_fast", "subind.engine", "subind.shape_bias", "subind.experiments",
          "subind.commands")


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (``from pkg import sub`` names the
    submodule where one exists, else the package)."""
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                child = f"{source}.{alias.name}"
                targets.add(child if child in modules else source)
    return {t for t in targets if t in modules and t != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _layer(module: str) -> int:
    """Its layer's place in LAYERS; the `subind` package and `python -m subind` sit on top."""
    places = [i for i, prefix in enumerate(LAYERS)
              if module == prefix or module.startswith(prefix + ".")]
    return max(places) if places else len(LAYERS)


def test_the_graph_is_read():
    graph = _graph()
    assert "subind.engine.protocol" in graph["subind.commands.discover"]
    assert "subind_fast.nn.registry" in graph["subind_fast.nn.attention"]


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_layers_point_one_way():
    wrong = sorted(f"{a} imports {b}" for a, targets in _graph().items() for b in targets
                   if _layer(b) > _layer(a))
    assert wrong == []


#: subind_fast's rooms, lowest first; a top-level module is on the floor
ROOMS = ("floor", "ops", "nn", "subnetworks", "testing")


def _room(module: str) -> int:
    parts = module.split(".")
    if parts == ["subind_fast"]:
        return len(ROOMS)  # the face
    return ROOMS.index(parts[1]) if len(parts) > 2 or parts[1] in ROOMS else 0


def test_the_rooms_of_the_kernel_library_point_one_way():
    graph = {a: targets for a, targets in _graph().items() if a.startswith("subind_fast")}
    assert {m.split(".")[1] for m in graph if m.count(".") >= 2} == set(ROOMS[1:])
    wrong = sorted(f"{a} imports {b}" for a, targets in graph.items() for b in targets
                   if _room(b) > _room(a))
    assert wrong == []


def test_a_cycle_would_be_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
