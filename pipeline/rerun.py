"""Which rules rerun when a config key changes, derived from the workflow itself.

For every leaf key of the configuration the key is given another valid value, Snakemake
builds the DAG of the changed workflow in an empty directory, and the jobs are compared
with those of the unchanged workflow: a job whose params differ reruns (Snakemake's
params trigger), a job that appears or disappears changes the plan, and every job
downstream of a rerun job reruns with it. Keys that reach the rules only as resources
(device, batch sizes) change no params and rerun nothing.

``python -m pipeline rerun-table`` prints the result as a Markdown table;
``--write docs/configuration.md`` writes it into that page (:data:`pipeline.docs.GENERATED`).
"""

from __future__ import annotations

import copy
import functools
import json
import multiprocessing
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import default_config, load_schema, validate_config
from pipeline.docs import markers
from pipeline.errors import ConfigError

#: values tried for keys whose type gives no natural alternative
EXPLICIT = {
    ("models", "device"): ["cpu"],
    ("perception", "architecture"): [{"hidden": 128}],
    ("semantic", "architecture"): [{"hidden": 128}],
    ("demo", "missing_runs"): [["subject1/test1/1"]],
    ("evaluation", "ablation_protocols"): [["neuroclips", "mindvideo"]],
    ("interpretation", "colour_range"): [[0.0, 1.0]],
    ("interpretation", "border_areas"): [["V1", "FFC"]],
    ("selection", "roi_areas"): [["V1", "MT"]],
}
#: keys left out: their effect depends on what they name (a dataset, a folder of
#: videos, model locations, ablations) rather than on a value of their own, or (the TR,
#: the clip length) no other value is valid without changing other keys with it
SKIPPED = (
    ("dataset", "format"),
    ("dataset", "tr_s"),
    ("alignment", "clip_s"),
    ("dataset", "root"),
    ("dataset", "subjects"),
    ("models", "root"),
    ("evaluation", "external"),
    ("evaluation", "vifi_clip"),
    ("evaluation", "ablations"),
    ("evaluation", "ablation_subjects"),
)


@dataclass
class Plan:
    """The jobs of one configuration: params and upstream jobs, by job name."""

    params: dict[str, str]
    upstream: dict[str, set[str]]
    rules: dict[str, str]


def leaf_keys(config: dict[str, Any], schema: dict[str, Any]) -> Iterator[tuple[str, ...]]:
    """Every (section, key, ...) path of ``config`` whose schema is not an open mapping.

    Parameters
    ----------
    config : dict
        A validated configuration.
    schema : dict
        The configuration schema (:func:`pipeline.config.load_schema`).

    Yields
    ------
    tuple of str
        A key path, section first; a mapping without schema ``properties`` is one leaf.
    """

    def walk(node, sub, path):
        props = sub.get("properties") if isinstance(sub, dict) else None
        if isinstance(node, dict) and props:
            for key in node:
                yield from walk(node[key], props.get(key, {}), (*path, key))
        else:
            yield path

    for section, values in config.items():
        yield from walk(values, schema["properties"][section], (section,))


def _get(config, path):
    for key in path:
        config = config[key]
    return config


def _set(config, path, value):
    for key in path[:-1]:
        config = config[key]
    config[path[-1]] = value


def _candidates(value: Any, sub: dict[str, Any]) -> Iterator[Any]:
    """Values to try for a key, most natural first (some may be invalid or equal)."""
    if "enum" in sub:
        yield from (v for v in sub["enum"] if v != value)
    if isinstance(value, bool):
        yield not value
    elif isinstance(value, int):
        yield from (value + 1, value - 1, value * 2, value + 2)
    elif isinstance(value, float):
        yield from (value * 0.5, value * 1.5, value * 2, value + 1.0)
    elif isinstance(value, str):
        yield value + "x"
    elif isinstance(value, list) and value:
        yield from (value[:-1], value[::-1], [*value, value[-1]])
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            yield [v * 2 for v in value]
    elif value is None:
        yield from (32, 0.5, 2, "paper", True)


def _schema_of(schema, path):
    sub = schema
    for key in path:
        sub = sub.get("properties", {}).get(key, {})
    return sub


def changed_configs(base: dict[str, Any], path: tuple[str, ...], schema) -> list[dict]:
    """``base`` with the key at ``path`` set to other valid values: the first one found,
    or every one for a null key (null takes the preset's value, which one of the
    alternatives may equal).

    Parameters
    ----------
    base : dict
        A validated configuration; not modified.
    path : tuple of str
        The key to change.
    schema : dict
        The configuration schema.

    Returns
    -------
    list of dict
        Deep copies of ``base`` that pass :func:`pipeline.config.validate_config`; at most
        one unless the key is null; empty when no other valid value was found.
    """
    value = _get(base, path)
    if path in EXPLICIT:
        candidates = EXPLICIT[path]
    else:
        candidates = _candidates(value, _schema_of(schema, path))
    configs = []
    for candidate in candidates:
        if candidate == value:
            continue
        config = copy.deepcopy(base)
        _set(config, path, candidate)
        try:
            validate_config(config)
        except ConfigError:
            continue
        configs.append(config)
        if value is not None:
            break
    return configs


def workflow_plan(snakefile: Path, config: dict[str, Any]) -> Plan:
    """Build the DAG of the whole workflow for ``config`` in an empty directory.

    Parameters
    ----------
    snakefile : Path
        The workflow's ``Snakefile``.
    config : dict
        The configuration, written to a temporary config file.

    Returns
    -------
    Plan
        Every job (``rule[wildcards]``) with its params (JSON), upstream jobs and rule.
    """
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
    )

    with tempfile.TemporaryDirectory() as tmp:
        configfile = Path(tmp, "config.json")
        configfile.write_text(json.dumps(config))
        workdir = Path(tmp, "work")
        workdir.mkdir()
        quiet = OutputSettings(quiet={Quietness.ALL})
        with SnakemakeApi(quiet) as api:
            workflow_api = api.workflow(
                resource_settings=ResourceSettings(cores=1),
                config_settings=ConfigSettings(configfiles=[configfile]),
                snakefile=snakefile,
                workdir=workdir,
            )
            dag_api = workflow_api.dag(dag_settings=DAGSettings())
            workflow = dag_api.workflow_api._workflow
            workflow._prepare_dag(forceall=False, ignore_incomplete=True, lock_warn_only=True)
            workflow._build_dag()
            dag = workflow.dag
            names = {job: _job_name(job) for job in dag.jobs}
            plan = Plan(params={}, upstream={}, rules={})
            for job, name in names.items():
                params = {k: v for k, v in job.params.items()}
                plan.params[name] = json.dumps(params, sort_keys=True, default=str)
                plan.upstream[name] = {names[d] for d in dag.dependencies[job] if d in names}
                plan.rules[name] = job.rule.name
    return plan


def _job_name(job) -> str:
    wildcards = ",".join(f"{k}={v}" for k, v in sorted(job.wildcards_dict.items()))
    return f"{job.rule.name}[{wildcards}]"


def rerun_rules(base: Plan, changed: Plan) -> set[str]:
    """Rules of the jobs that rerun (or newly run) in ``changed`` compared with ``base``.

    A job reruns when its params differ or it is new, and so does every job downstream
    of it.

    Parameters
    ----------
    base, changed : Plan
        The plans of the base and the changed configuration.

    Returns
    -------
    set of str
        Rule names.
    """
    stale = {
        name
        for name, params in changed.params.items()
        if name not in base.params or base.params[name] != params
    }
    downstream = {name: set() for name in changed.params}
    for name, upstream in changed.upstream.items():
        for up in upstream:
            downstream[up].add(name)
    todo = list(stale)
    while todo:
        for child in downstream[todo.pop()]:
            if child not in stale:
                stale.add(child)
                todo.append(child)
    return {changed.rules[name] for name in stale}


def rule_depths(plan: Plan) -> dict[str, int]:
    """Rule → the longest chain of jobs before any of its jobs (pipeline order).

    Parameters
    ----------
    plan : Plan

    Returns
    -------
    dict of str to int
        Rule → the largest depth of its jobs (0: none of its jobs has upstream jobs).
    """
    depth: dict[str, int] = {}

    def job_depth(name):
        if name not in depth:
            depth[name] = 1 + max((job_depth(u) for u in plan.upstream[name]), default=-1)
        return depth[name]

    rules: dict[str, int] = {}
    for name, rule in plan.rules.items():
        rules[rule] = max(rules.get(rule, 0), job_depth(name))
    return rules


def rerun_table(snakefile: Path, keys=None, workers: int | None = None) -> dict[str, list[str]]:
    """Key (``section.key``) → rules that rerun when only that key changes, in pipeline
    order (keys in config order). The DAGs are built by ``workers`` processes (default:
    one per CPU).

    Parameters
    ----------
    snakefile : Path
        The workflow's ``Snakefile``.
    keys : iterable of tuple of str, optional
        Key paths to change; default every leaf key (:func:`leaf_keys`).
    workers : int, optional
        Worker processes.

    Returns
    -------
    dict of str to list of str
        Dotted key → rule names, ``all`` left out.

    Raises
    ------
    ValueError
        If no other valid value is found for a key.
    """
    base_config = validate_config(default_config())
    schema = load_schema()
    changes = []  # (key, changed config)
    for path in keys or leaf_keys(base_config, schema):
        if path[:2] in SKIPPED:
            continue
        configs = changed_configs(base_config, path, schema)
        if not configs:
            raise ValueError(f"config key {'.'.join(path)}: no other valid value found")
        changes += [(".".join(path), config) for config in configs]
    context = multiprocessing.get_context("spawn")  # Snakemake runs threads: no fork
    with ProcessPoolExecutor(workers or os.cpu_count(), mp_context=context) as pool:
        configs = [base_config] + [config for _, config in changes]
        base, *plans = pool.map(functools.partial(workflow_plan, snakefile), configs)
    # rules in pipeline order; a rule only some changed plans have (e.g. the downloads
    # of another preset) by its place in those
    depth = rule_depths(base)
    rules: dict[str, set[str]] = {}
    for (key, _), plan in zip(changes, plans, strict=True):
        rules.setdefault(key, set()).update(rerun_rules(base, plan) - {"all"})
        for rule, d in rule_depths(plan).items():
            depth.setdefault(rule, d)
    return {key: sorted(names, key=lambda r: (depth[r], r)) for key, names in rules.items()}


MARKERS = markers("rerun-table")


def markdown(table: dict[str, list[str]]) -> str:
    """The table as Markdown, keys with the same rules in one row, in config order.

    Parameters
    ----------
    table : dict of str to list of str
        As :func:`rerun_table` returns it.

    Returns
    -------
    str
        A two-column Markdown table; ``nothing`` where no rule reruns.
    """
    rows: dict[tuple[str, ...], list[str]] = {}
    for key, rules in table.items():
        rows.setdefault(tuple(rules), []).append(key)
    lines = ["| keys changed | rules that rerun |", "|---|---|"]
    for rules, keys in rows.items():
        names = ", ".join(f"`{k}`" for k in keys)
        rerun = ", ".join(f"`{r}`" for r in rules) or "nothing"
        lines.append(f"| {names} | {rerun} |")
    return "\n".join(lines)
