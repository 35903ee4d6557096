"""How the code is laid out: no import cycles between the pipeline's modules (lazy imports
inside functions included), and rules whose inputs and params are named functions."""

from __future__ import annotations

import ast
import graphlib
import re

import pytest

from tests.conftest import REPO, rule_blocks


def _module_name(path) -> str:
    name = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return name.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
    """Module → the pipeline modules it imports anywhere in its body."""
    files = {_module_name(p): p for p in (REPO / "pipeline").rglob("*.py")}
    graph = {}
    for name, path in files.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                imported |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                imported |= {a.name for a in node.names}
        graph[name] = {m for m in imported if m in files and m != name}
    return graph


def test_the_import_graph_is_read_from_the_sources():
    graph = import_graph()
    assert "pipeline.generation.registry" in graph["pipeline.generation.keyframes"]
    assert "pipeline.stores" in graph["pipeline.cli"]


def test_no_import_cycle_between_pipeline_modules():
    try:
        graphlib.TopologicalSorter(import_graph()).prepare()
    except graphlib.CycleError as error:
        pytest.fail(f"import cycle: {' -> '.join(error.args[1])}")


def test_a_cycle_would_be_found():
    graph = import_graph()
    graph["pipeline.generation.registry"] = {"pipeline.generation.keyframes"}
    with pytest.raises(graphlib.CycleError):
        graphlib.TopologicalSorter(graph).prepare()


def test_rules_have_no_lambdas():
    """Input functions and params are named, documented functions of rules/common.smk."""
    blocks = rule_blocks()
    assert len(blocks) > 20
    offenders = [name for name, text in blocks.items() if re.search(r"\blambda\b", text)]
    assert offenders == []
