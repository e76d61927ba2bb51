"""The package's import graph, read from the source (AST): no cycles, even through imports inside
functions; the command line is imported by nothing below it; plugins use the library, not the product."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"emcopilot": ROOT / "emcopilot", "emcopilot_plugins": ROOT / "plugins"}
#: the package's layers, lowest first: a module imports nothing from a layer above its own
LAYERS = ("emcopilot.core", "emcopilot.io", "emcopilot.specimen", "emcopilot.analysis", "emcopilot.pipeline",
          "emcopilot.cli")
#: what a run is made of (loop, stages, run folder, batch, report, commands): plugins never need it
PRODUCT = ("emcopilot.pipeline", "emcopilot.cli")


def _layer(module: str) -> int | None:
    for rank, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return rank
    return None


def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _runtime_imports(tree: ast.Module):
    """Import nodes anywhere in the module, except under ``if TYPE_CHECKING:``."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _targets(module: str, is_package: bool, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        name = ".".join(base + ([node.module] if node.module else []))
    else:
        name = node.module
    return [name] + [f"{name}.{alias.name}" for alias in node.names]


def _graph(packages_too: bool = False) -> dict[str, set[str]]:
    """Module -> the modules it imports; with ``packages_too`` also the packages it imports names from."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            for target in _targets(module, is_package, node):
                # a package's __init__ only re-exports (lazily): importing a name from it is not a dependency
                if target in modules and target != module and (packages_too or modules[target].name != "__init__.py"):
                    edges.add(target)
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read():
    graph = _graph()
    assert "emcopilot.pipeline.stages" in graph["emcopilot.pipeline.loop"]
    assert "emcopilot.core.interfaces" in graph["emcopilot_plugins.segmenters.unet"]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_nothing_below_the_command_line_imports_it():
    offenders = {module: sorted(edges) for module, edges in _graph(packages_too=True).items()
                 if not module.startswith("emcopilot.cli") and module != "emcopilot.__main__"  # the entry point
                 and any(edge.startswith("emcopilot.cli") for edge in edges)}
    assert offenders == {}


def test_every_module_of_the_package_is_in_a_layer():
    loose = {module for module in _modules() if module.startswith("emcopilot.") and _layer(module) is None}
    # the public API's re-exports, the entry point, the conformance kit and the napari plugin sit on top
    assert loose == {"emcopilot.__main__", "emcopilot.testing", "emcopilot.napari", "emcopilot.napari._reader",
                     "emcopilot.napari._widget", "emcopilot.napari.layers"}


def test_no_layer_imports_one_above_it():
    offenders = {module: sorted(edge for edge in edges if (_layer(edge) or 0) > _layer(module))
                 for module, edges in _graph(packages_too=True).items() if _layer(module) is not None}
    assert {module: edges for module, edges in offenders.items() if edges} == {}


def test_the_layer_check_finds_an_upward_import():
    assert _layer("emcopilot.core.recipe") < _layer("emcopilot.pipeline.loop")
    assert _layer("emcopilot.testing") is None


def test_plugins_use_the_library_not_the_product():
    offenders = {module: sorted(edge for edge in edges if edge.startswith(PRODUCT))
                 for module, edges in _graph(packages_too=True).items() if module.startswith("emcopilot_plugins")}
    assert {module: edges for module, edges in offenders.items() if edges} == {}
