"""The package's shape: no module-level import cycle among disc_ray's modules (issue 18's closing measure).

``python tests/test_layout.py`` prints the cycles found (none expected) and the largest modules."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "disc_ray"


def module_imports(root: Path = PACKAGE) -> dict[str, set[str]]:
    """{module: the disc_ray modules it imports at module level}: function bodies and ``if TYPE_CHECKING:``
    blocks are left out (they do not run at import); ``from pkg import name`` counts ``pkg.name`` when that
    is a module, else ``pkg``; relative imports are resolved."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges: set[str] = set()
        stack = list(ast.parse(path.read_text()).body)
        while stack:
            node = stack.pop()
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                stack += node.orelse
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                stack += [child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt)]
            elif isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                for alias in node.names:
                    edges.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[name] = {edge for edge in edges if edge in modules and edge != name}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_import_graph_sees_known_edges_and_has_no_cycle():
    graph = module_imports()
    assert "disc_ray.reporting" in graph["disc_ray.evaluation.report"]  # from disc_ray.reporting import ...
    assert "disc_ray.tuning.sweep_config" in graph["disc_ray.tuning.space"]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the finder finds one
    assert import_cycles(graph) == []


if __name__ == "__main__":
    graph = module_imports()
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} module-level import edges; cycles: {import_cycles(graph)}")
    sizes = sorted(((len(p.read_text().splitlines()), str(p.relative_to(PACKAGE.parent))) for p in PACKAGE.rglob("*.py")), reverse=True)
    print("largest modules:", ", ".join(f"{name} {lines}" for lines, name in sizes[:5]))
