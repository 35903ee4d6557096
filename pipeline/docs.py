"""The generated parts of the documentation site (``docs/``, built with MkDocs).

Three sections of the site are written by code and checked by the tests, so that they
cannot drift from what they describe:

* the rule graph of ``docs/stages.md``, from ``snakemake --rulegraph``
  (:func:`rulegraph_markdown`);
* the key reference of ``docs/configuration.md``, from the configuration schema
  ``pipeline/schemas/config.schema.yaml`` (:func:`config_markdown`);
* the table of ``docs/configuration.md`` that says which rules rerun when a key changes,
  from the workflow itself (:mod:`pipeline.rerun`).

Each is written between a pair of HTML comments, ``<!-- NAME: start -->`` and
``<!-- NAME: end -->`` (:func:`markers`), by ``python -m pipeline rulegraph``,
``config-docs`` and ``rerun-table`` with ``--write PAGE``.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "GENERATED",
    "config_keys",
    "config_markdown",
    "markers",
    "parse_rulegraph",
    "replace_in",
    "rulegraph",
    "rulegraph_markdown",
    "write_between",
]

#: Every generated section of the site: marker name → the page (relative to the
#: repository) that holds it.
GENERATED = {
    "rulegraph": "docs/stages.md",
    "config-keys": "docs/configuration.md",
    "rerun-table": "docs/configuration.md",
}


def markers(name: str) -> tuple[str, str]:
    """The start and end comments around the generated section ``name``.

    Parameters
    ----------
    name : str
        A key of :data:`GENERATED`, e.g. ``rulegraph``.

    Returns
    -------
    start, end : str
        ``<!-- NAME: start -->`` and ``<!-- NAME: end -->``.
    """
    return f"<!-- {name}: start -->", f"<!-- {name}: end -->"


def replace_in(text: str, content: str, source: str, pair: tuple[str, str]) -> str:
    """``text`` with the part between the two markers of ``pair`` replaced by ``content``.

    Parameters
    ----------
    text : str
        A page's text.
    content : str
        The new section, without the markers.
    source : str
        Where ``text`` was read, named in error messages.
    pair : tuple of str
        The start and end markers, as :func:`markers` returns them.

    Returns
    -------
    str
        ``text`` with the markers kept and one newline on each side of ``content``.

    Raises
    ------
    ValueError
        When ``text`` (read from ``source``) does not hold each marker exactly once.
    """
    start, end = pair
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"{source}: expected one {start} and one {end} line")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{content}\n{end}{tail}"


def write_between(path: str | Path, content: str, name: str) -> bool:
    """Write ``content`` between the markers ``name`` of the page ``path``.

    Parameters
    ----------
    path : path
        A Markdown page holding the markers once each.
    content : str
        The new section.
    name : str
        The marker name (a key of :data:`GENERATED`).

    Returns
    -------
    bool
        Whether the page changed.

    Raises
    ------
    ValueError
        When the page does not hold each marker exactly once.
    """
    path = Path(path)
    text = path.read_text()
    new = replace_in(text, content, str(path), markers(name))
    if new != text:
        path.write_text(new)
    return new != text


# -- the rule graph ------------------------------------------------------------------------

_NODE = re.compile(r'^\s*(\d+)\[label = "([^"]+)"', re.M)
_EDGE = re.compile(r"^\s*(\d+) -> (\d+)\s*$", re.M)


def rulegraph(snakefile: str | Path, configfiles: tuple[str, ...] = ()) -> str:
    """The output of ``snakemake --rulegraph`` (Graphviz dot) for ``snakefile``.

    Snakemake runs in an empty working directory, so the graph is that of a fresh
    clone: with the default configuration the demo dataset and the tiny models
    are still to be made, and their rules are in it.

    Parameters
    ----------
    snakefile : path
        The workflow's ``Snakefile``.
    configfiles : tuple of str
        Configuration files given to Snakemake, in order; none for the defaults.

    Returns
    -------
    str
        The Graphviz dot text.

    Raises
    ------
    RuntimeError
        If Snakemake fails (its standard error in the message).
    """
    with tempfile.TemporaryDirectory() as workdir:
        command = [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(Path(snakefile).resolve()),
            "--directory",
            workdir,
            "--rulegraph",
        ]
        if configfiles:
            command += ["--configfile", *(str(Path(f).resolve()) for f in configfiles)]
        result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"snakemake --rulegraph failed:\n{result.stderr}")
    return result.stdout


def parse_rulegraph(dot: str) -> dict[str, set[str]]:
    """Rule → the rules whose outputs it reads, from ``snakemake --rulegraph``'s dot text.

    Parameters
    ----------
    dot : str
        As :func:`rulegraph` returns it.

    Returns
    -------
    dict of str to set of str
        Every rule, mapped to its upstream rules (empty for rules without inputs).

    Raises
    ------
    ValueError
        If ``dot`` holds no rule node.
    """
    names = dict(_NODE.findall(dot))
    if not names:
        raise ValueError("no rule in the rule graph")
    graph: dict[str, set[str]] = {name: set() for name in names.values()}
    for upstream, downstream in _EDGE.findall(dot):
        graph[names[downstream]].add(names[upstream])
    return graph


def _rule_order(graph: dict[str, set[str]]) -> list[str]:
    """The rules from the raw data to ``all``: by longest path from a rule without inputs,
    then by name (dot numbers its nodes in whatever order the DAG was walked)."""
    depth: dict[str, int] = {}

    def depth_of(rule: str) -> int:
        if rule not in depth:
            depth[rule] = 1 + max((depth_of(r) for r in graph[rule]), default=-1)
        return depth[rule]

    return sorted(graph, key=lambda rule: (depth_of(rule), rule))


def rulegraph_markdown(graph: dict[str, set[str]]) -> str:
    """The graph as a Mermaid flowchart in a fenced block, in a fixed order: the rules, then
    one ``upstream --> downstream`` edge a line.

    Parameters
    ----------
    graph : dict of str to set of str
        As :func:`parse_rulegraph` returns it.

    Returns
    -------
    str
        A fenced ``mermaid`` block; rules ordered by longest path from the raw data,
        then by name.
    """
    order = _rule_order(graph)
    position = {rule: i for i, rule in enumerate(order)}
    lines = ["```mermaid", "flowchart TB"]
    lines += [f"    {rule}" for rule in order]
    for rule in order:
        for upstream in sorted(graph[rule], key=position.__getitem__):
            lines.append(f"    {upstream} --> {rule}")
    lines.append("```")
    return "\n".join(lines)


# -- the configuration keys ----------------------------------------------------------------


def config_keys(schema: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], bool]]:
    """Every key of the configuration schema: (dotted path, its schema, whether required),
    each key before the keys inside it.

    The entries of an open mapping (``evaluation.external``, ``evaluation.ablations``) are
    written ``<name>``: ``evaluation.external.<name>.path``.

    Parameters
    ----------
    schema : dict
        A JSON schema node with ``properties`` (the whole schema or one section).

    Yields
    ------
    path : str
        Dotted key path relative to ``schema``.
    key : dict
        The key's schema node.
    required : bool
        Whether its parent lists it as required.
    """

    def walk(sub: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any], bool]]:
        required = set(sub.get("required", []))
        for key, child in sub.get("properties", {}).items():
            yield f"{path}{key}", child, key in required
            yield from walk(child, f"{path}{key}.")
        entry = sub.get("additionalProperties")
        if isinstance(entry, dict) and "properties" in entry:
            yield from walk(entry, f"{path}<name>.")

    yield from walk(schema, "")


def _code(value: Any) -> str:
    """A value as it is written in ``config.yaml``, in one code span."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip()
    return f"`{text.removesuffix('...').strip()}`"


def _types(sub: dict[str, Any]) -> list[str]:
    types = sub.get("type")
    if types is None:
        alternatives = sub.get("oneOf", []) + sub.get("anyOf", [])
        return [t for alt in alternatives for t in _types(alt)]
    return types if isinstance(types, list) else [types]


def _bounds(sub: dict[str, Any]) -> list[str]:
    bounds = []
    for key, sign in (
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
        ("multipleOf", "multiple of"),
    ):
        if key in sub:
            bounds.append(f"{sign} {sub[key]}")
    return bounds


def _type_text(sub: dict[str, Any]) -> str:
    """A key's type with the values it accepts: ``integer ≥ 1``, ``string: error, drop``."""
    if "oneOf" in sub or "anyOf" in sub:
        alternatives = sub.get("oneOf", []) + sub.get("anyOf", [])
        return " or ".join(_type_text(alt) for alt in alternatives)
    parts = []
    for kind in _types(sub):
        if kind == "array" and isinstance(sub.get("items"), dict):
            items = sub["items"]
            text = f"list of {_type_text(items)}"
            size = (sub.get("minItems"), sub.get("maxItems"))
            if size[0] is not None and size[0] == size[1]:
                text += f" ({size[0]} items)"
            elif size[0]:
                text += f" (at least {size[0]})"
        elif kind == "object" and isinstance(sub.get("additionalProperties"), dict):
            entry = sub["additionalProperties"]
            text = f"mapping of name → {' or '.join(_types(entry))}"
        elif kind == "null":
            text = "null"
        else:
            values = [v for v in sub.get("enum", []) if v is not None]
            text = kind
            if values:
                text += ": " + ", ".join(_code(v) for v in values)
            bounds = _bounds(sub)
            if bounds:
                text += " " + ", ".join(bounds)
        parts.append(text)
    return " or ".join(parts)


def _prose(text: str) -> str:
    """Schema prose for one table cell: one line, ``|`` escaped; outside code spans ``<``,
    ``>`` and ``*`` shown as written rather than read as HTML or emphasis."""
    spans = " ".join(text.split()).split("`")
    for i in range(0, len(spans), 2):
        spans[i] = html.escape(spans[i], quote=False).replace("*", "\\*")
    return "`".join(spans).replace("|", "\\|")


def config_markdown(schema: dict[str, Any]) -> str:
    """Every key of ``schema``: per section a heading, its description and a table of its
    keys with type, default and description.

    Parameters
    ----------
    schema : dict
        The configuration schema (:func:`pipeline.config.load_schema`).

    Returns
    -------
    str
        Markdown: one ``###`` heading and one table per top-level section.
    """
    out: list[str] = []
    for section, sub in schema["properties"].items():
        out += [f"### `{section}`", "", _prose(sub.get("description", "")), ""]
        out += ["| key | type | default | description |", "|---|---|---|---|"]
        for path, key, required in config_keys(sub):
            default = _code(key["default"]) if "default" in key else "—"
            if required:
                default = "required"
            mapping = path.split(".<name>.")[0]
            description = (
                _prose(key.get("description", "")) or f"in an entry of `{section}.{mapping}`"
            )
            cells = [f"`{section}.{path}`", _cell(_type_text(key)), _cell(default), description]
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def _cell(text: str) -> str:
    """``text`` for one table cell: a ``|`` in it does not end the cell."""
    return text.replace("|", "\\|")
