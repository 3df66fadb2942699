"""The package's shape: no two modules import each other, directly or around a loop (an import
inside a function counts too: it is a dependency all the same); every asset is declared the one
way (owned by the team, grouped and tagged by its stage); plots are drawn in one module and
the Dagster layer draws none."""

from __future__ import annotations

import ast

from spark_pipeline.settings import PACKAGE_DIR


def _module(path) -> str:
    rel = path.relative_to(PACKAGE_DIR.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    modules = {_module(p): p for p in PACKAGE_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
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


def test_the_package_has_no_import_cycles():
    graph = _graph()
    assert "spark_pipeline.training.runs" in graph and len(graph) > 40
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_asset_is_owned_and_grouped_by_its_stage():
    from spark_pipeline.definitions import defs
    from spark_pipeline.defs.resources import OWNERS

    graph = defs.resolve_asset_graph()
    keys = list(graph.get_all_asset_keys())
    assert len(keys) >= 15
    for key in keys:
        node = graph.get(key)
        assert node.owners == OWNERS, key
        assert node.tags.get("stage") == node.group_name, key
        assert node.group_name in {"specmap", "corpus", "training", "sweep", "evaluation", "release"}, key


def test_only_the_plots_module_draws():
    drawing = ("subplots(", "matplotlib", ".savefig(", "errorbar(", "imshow(")
    offenders = [str(p.relative_to(PACKAGE_DIR)) for p in PACKAGE_DIR.rglob("*.py")
                 if p.name != "plots.py" and any(d in p.read_text(encoding="utf-8") for d in drawing)]
    assert offenders == []
