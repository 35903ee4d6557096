"""The documentation site's generated sections are what their commands write today, and the
hand-written tables that name rules, keys and tests name ones that exist."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest
import yaml

from pipeline.config import default_config, load_schema
from pipeline.docs import (
    GENERATED,
    config_keys,
    config_markdown,
    markers,
    parse_rulegraph,
    rulegraph,
    rulegraph_markdown,
    write_between,
)
from pipeline.rerun import leaf_keys
from tests.conftest import REPO

DOT = """digraph snakemake_dag {
    graph[bgcolor=white, margin=0];
\t0[label = "all", color = "0.02 0.6 0.85", style="rounded"];
\t1[label = "align", color = "0.00 0.6 0.85", style="rounded"];
\t2[label = "preprocess", color = "0.44 0.6 0.85", style="rounded"];
\t3[label = "extract_frames", color = "0.31 0.6 0.85", style="rounded"];
\t1 -> 0
\t3 -> 0
\t2 -> 1
}
"""


def _generated(name: str) -> str:
    """The text between the markers ``name`` of the page that holds them."""
    start, end = markers(name)
    text = (REPO / GENERATED[name]).read_text()
    return text[text.index(start) + len(start) : text.index(end)].strip("\n")


def _table_column(text: str, header: str) -> list[str]:
    """The first cells of the Markdown table whose header row starts with ``header``."""
    table = text[text.index(f"| {header} |") :].split("\n\n")[0]
    return [row.split("|")[1].strip() for row in table.splitlines()[2:]]


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return parse_rulegraph(rulegraph(REPO / "Snakefile"))


# -- the rule graph ------------------------------------------------------------------------


def test_the_rule_graph_is_the_one_snakemake_builds(graph):
    page = GENERATED["rulegraph"]
    assert _generated("rulegraph") == rulegraph_markdown(graph), (
        f"{page}'s rule graph is stale: run `python -m pipeline rulegraph --write {page}`"
    )


def test_the_rule_graph_holds_every_edge_of_the_dot_text(graph):
    """Every rule and edge of `snakemake --rulegraph` is a line of the flowchart; the
    control, a graph without one edge, renders differently."""
    lines = set(rulegraph_markdown(graph).splitlines())
    assert {"    all", "    align", "    preprocess --> align", "    align --> all"} <= lines
    edges = {(up, rule) for rule, ups in graph.items() for up in ups}
    assert {f"    {up} --> {rule}" for up, rule in edges} <= lines
    assert len(lines) == 3 + len(graph) + len(edges)
    fewer = {rule: set(ups) for rule, ups in graph.items()}
    fewer["all"].pop()
    assert rulegraph_markdown(fewer) != rulegraph_markdown(graph)


def test_the_dot_text_is_read_as_rule_dependencies():
    graph = parse_rulegraph(DOT)
    assert graph == {
        "all": {"align", "extract_frames"},
        "align": {"preprocess"},
        "preprocess": set(),
        "extract_frames": set(),
    }
    # from the raw data to all, whatever order dot numbered the rules in
    assert rulegraph_markdown(graph).splitlines()[2:6] == [
        "    extract_frames",
        "    preprocess",
        "    align",
        "    all",
    ]
    with pytest.raises(ValueError, match="no rule"):
        parse_rulegraph("digraph snakemake_dag {\n}")


def test_every_rule_has_a_row_in_the_stage_table():
    """The hand-written table of what each rule makes names every rule of the workflow,
    the download rules and evaluate_external too, and no other."""
    listed = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--list-rules"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    ).stdout
    rules = {line.split()[0] for line in listed.splitlines() if line[:1].isalpha()} - {"all"}
    assert {"align", "download_models", "evaluate_external"} <= rules
    page = (REPO / GENERATED["rulegraph"]).read_text()
    assert {cell.strip("`") for cell in _table_column(page, "rule")} == rules


# -- the configuration keys ----------------------------------------------------------------


def test_the_configuration_page_is_the_generated_one():
    page = GENERATED["config-keys"]
    assert _generated("config-keys") == config_markdown(load_schema()), (
        f"{page}'s keys are stale: run `python -m pipeline config-docs --write {page}`"
    )


def test_the_configuration_page_lists_every_schema_key():
    """Every key of the schema has its row, every section its heading, and every key of
    the default config.yaml is among them."""
    schema = load_schema()
    section = _generated("config-keys")
    rows = re.findall(r"(?m)^\| `([^`]+)` \| (.*?) \| (.*?) \| (.*) \|$", section)
    listed = [key for key, *_ in rows]
    expected = [
        f"{name}.{path}"
        for name, sub in schema["properties"].items()
        for path, _, _ in config_keys(sub)
    ]
    assert listed == expected
    assert len(set(listed)) == len(listed)
    for name in schema["properties"]:
        assert f"### `{name}`" in section, name
    defaults = {".".join(path) for path in leaf_keys(default_config(), schema)}
    assert defaults <= set(listed)
    # the open mappings' entries, with their own keys
    assert "evaluation.external.<name>.path" in listed
    assert "evaluation.ablations.<name>.use_blurry" in listed


def test_a_key_row_gives_type_default_and_description():
    section = _generated("config-keys")
    row = next(line for line in section.splitlines() if line.startswith("| `alignment.shift_s`"))
    cells = [cell.strip() for cell in row.strip("|").split(" | ")]
    key, kind, default, description = cells
    assert key == "`alignment.shift_s`"
    assert kind.startswith("number")
    schema = load_schema()["properties"]["alignment"]["properties"]["shift_s"]
    written = yaml.safe_dump(schema["default"]).removesuffix("...\n").strip()
    assert default == f"`{written}`"
    assert description == " ".join(schema["description"].split())
    required = next(line for line in section.splitlines() if "external.<name>.path`" in line)
    assert "| required |" in required


def test_schema_prose_cannot_break_a_table_row():
    """A pipe ends a cell, `*` starts emphasis and `<k>` reads as an HTML tag: all shown
    as written."""
    schema = {
        "properties": {
            "s": {
                "description": "a section",
                "type": "object",
                "properties": {
                    "k": {
                        "type": "string",
                        "default": "x",
                        "description": "a|b, theta*T and seg<k>.mp4, `code <k>`",
                    }
                },
            }
        }
    }
    row = config_markdown(schema).splitlines()[-1]
    assert row == "| `s.k` | string | `x` | a\\|b, theta\\*T and seg&lt;k&gt;.mp4, `code <k>` |"


# -- the markers ---------------------------------------------------------------------------


def test_every_generated_section_has_its_markers_once():
    for name, page in GENERATED.items():
        text = (REPO / page).read_text()
        for marker in markers(name):
            assert text.count(marker) == 1, (page, marker)


def test_write_between_replaces_only_its_own_section(tmp_path):
    page = tmp_path / "page.md"
    first, second = markers("first"), markers("second")
    page.write_text(f"# t\n{first[0]}\nold\n{first[1]}\n\n{second[0]}\nkept\n{second[1]}\n")
    assert write_between(page, "new", "first")
    assert not write_between(page, "new", "first")
    assert (
        page.read_text() == f"# t\n{first[0]}\nnew\n{first[1]}\n\n{second[0]}\nkept\n{second[1]}\n"
    )
    with pytest.raises(ValueError, match="page.md"):
        write_between(page, "x", "third")


# -- tables that name what exists ------------------------------------------------------------


def test_every_test_named_in_the_fault_table_exists():
    """The last column names tests; a name ending in … stands for the tests it starts."""
    page = (REPO / "docs/reliability.md").read_text()
    table = page[page.index("| fault |") :].split("\n\n")[0]
    cells = [row.rstrip(" |").rsplit("|", 1)[-1] for row in table.splitlines()[2:]]
    named = {name for cell in cells for name in re.findall(r"`(test_[^`]+)`", cell)}
    assert len(named) > 40
    source = "".join(
        (REPO / f"tests/{name}.py").read_text() for name in ("test_faults", "test_hcp7t_movie")
    )
    tests = set(re.findall(r"(?m)^def (test_\w+)", source))
    missing = [
        name
        for name in sorted(named)
        if not any(t == name or (name.endswith("…") and t.startswith(name[:-1])) for t in tests)
    ]
    assert missing == []


def test_the_readme_links_to_pages_that_exist():
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs/)?[\w./-]+?)(?:#[\w-]+)?\)", readme)
    local = [link for link in links if not link.startswith("http")]
    assert {"docs/stages.md", "docs/configuration.md", "CITATION.cff", "LICENSE"} <= set(local)
    assert [link for link in local if not (REPO / link).exists()] == []
    nav = (REPO / "mkdocs.yml").read_text()
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f": {page.name}" in nav, page.name


def test_the_citation_file_describes_this_version_and_cites_the_paper():
    citation = yaml.safe_load((REPO / "CITATION.cff").read_text())
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert citation["cff-version"] == "1.2.0"
    assert citation["version"] == project["version"]
    assert citation["license"] == project["license"]
    paper = citation["references"][0]
    assert paper["title"] == (
        "NeuroClips: Towards High-fidelity and Smooth fMRI-to-Video Reconstruction"
    )
    assert paper["year"] == 2024
    assert [a["family-names"] for a in paper["authors"]][:2] == ["Gong", "Bao"]
