"""What the Snakefile needs before its rules run: the environment of the rules' commands,
and folders it can write to."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from typing import Any

from pipeline.errors import OutputError

__all__ = [
    "ConfigValues",
    "check_writable",
    "current_rule_params",
    "export_rule_params",
    "mark_failed_outputs",
    "prepare_job_environment",
]

#: Environment variable through which the Snakefile tells its jobs every rule's params
#: under the run's config (:func:`export_rule_params`).
RULE_PARAMS_ENV = "NEUROCLIPS_RULE_PARAMS"


def prepare_job_environment(basedir: str) -> None:
    """Let the rules' ``python -m pipeline`` find this package and the right interpreter.

    The workflow's directory goes on ``PYTHONPATH`` (so the package imports in
    any conda environment without being installed), and the directory of the
    interpreter running Snakemake goes first on ``PATH`` (so without
    ``--use-conda`` the rules run with it, e.g. the project's venv; with
    ``--use-conda`` Snakemake puts the environment's ``bin`` before it).
    Both are inherited by the jobs, also when Snakemake re-runs the Snakefile
    inside a cluster job.

    Parameters
    ----------
    basedir : str
        The workflow's directory (Snakemake's ``workflow.basedir``).
    """
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (basedir, os.environ.get("PYTHONPATH")) if p
    )
    os.environ["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), os.environ["PATH"]))


def check_writable(folders: list[str]) -> None:
    """Raise :class:`OutputError` naming the first folder under ``folders`` (the folders
    themselves, or the nearest existing parent) that cannot be written.

    Snakemake removes a job's old output before running it; in a read-only folder that
    fails with a traceback before the stage can say anything, hence this check before
    the first job. Stores (``*.zarr``) are not descended into. A full disk is caught by
    the stage that fills it (:func:`pipeline.stores.atomic_output`).

    Parameters
    ----------
    folders : list of str
        Output folders (``results``, ``logs``, ...), relative to the working directory.

    Raises
    ------
    OutputError
        If a folder is read-only or not writable by this user.
    """
    for folder in folders:
        for path in _folders(folder):
            if not os.access(path, os.W_OK):
                reason = "the file system is read-only" if _read_only(path) else "permission denied"
                raise OutputError(
                    f"cannot write to {os.path.relpath(path)}: {reason}. The stages write "
                    "their outputs there; make it writable, then rerun."
                )


def _folders(folder: str) -> Iterator[str]:
    """``folder`` and its subfolders outside stores, or, before it exists, the nearest
    existing parent (where it will be created)."""
    if not os.path.isdir(folder):
        parent = os.path.abspath(folder)
        while not os.path.exists(parent):
            parent = os.path.dirname(parent)
        yield parent
        return
    for path, dirs, _ in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.endswith(".zarr")]
        yield path


def _read_only(path: str) -> bool:
    return bool(os.statvfs(path).f_flag & os.ST_RDONLY)


#: the params Snakemake finds on record for an output whose job failed
FAILED_PARAMS = "the last run of this job failed; it reruns (pipeline.workflow.mark_failed_outputs)"


def mark_failed_outputs(workflow, since: float) -> list[str]:
    """Make Snakemake rerun the jobs of this run that failed, and everything after them.

    Snakemake records a job's params and input checksums when the job ends, also when it
    failed: ``Job.postprocess`` (``snakemake/jobs.py``) calls ``persistence.finished``
    before removing the failed job's outputs. A failed rerun after a change thus leaves
    the *new* params and checksums on record for an output that no longer exists. Since
    Snakemake does not remake a missing intermediate output whose consumers look up to
    date, the next run says "Nothing to be done" over the consumers' stale results: a
    changed config value or input file is forgotten once its job has failed.

    Here each such record gets params that no job has, so that Snakemake's params
    trigger remakes the output and, downstream of it, every result made from the old one.

    Parameters
    ----------
    workflow : snakemake.workflow.Workflow
        The running workflow (the Snakefile's ``workflow``), after its jobs ran.
    since : float
        When this run started (``time.time()``): older records are not this run's.

    Returns
    -------
    list of str
        The outputs marked.
    """
    persistence = workflow.persistence
    marked = []
    for job in workflow.dag.jobs:
        for output in job.output:
            if os.path.lexists(output):
                continue
            record = persistence.metadata(output)
            if record is None or (record.starttime or 0) < since:
                continue
            record.params = [FAILED_PARAMS]
            record.input_checksums = {}
            persistence._write_record(persistence._get_key(output), record)
            marked.append(str(output))
    return marked


class ConfigValues(dict):
    """The values of some keys of one config section, as a rule's param
    (``config_values`` in ``rules/common.smk``): a dict that knows its section, so that
    a store can record and be checked against ``section.key`` names.

    Parameters
    ----------
    section : str
        The config section, e.g. ``preprocess``.
    values : dict
        Key → value within the section.
    """

    def __init__(self, section: str, values: dict[str, Any]):
        super().__init__(values)
        self.section = section


def rule_params(rule) -> dict[str, Any]:
    """A rule's params that do not depend on wildcards, flat: ``section.key`` for config
    values, the param's name for the others; as JSON would store them."""
    flat: dict[str, Any] = {}
    for name, value in rule.params.items():
        if callable(value):
            continue
        if isinstance(value, ConfigValues):
            flat.update({f"{value.section}.{key}": v for key, v in value.items()})
        else:
            flat[name] = value
    return json.loads(json.dumps(flat, default=str))


def export_rule_params(workflow) -> None:
    """Put every rule's params (:func:`rule_params`) into the jobs' environment.

    A stage records its rule's params in the store it writes, and a stage that opens an
    input store compares the params recorded there with the current ones
    (:func:`pipeline.stores.open_store`): a store made under other settings, which
    Snakemake did not remake (copied in without its record, or reruns restricted with
    ``--rerun-triggers``), stops the consumer instead of passing for current.

    Parameters
    ----------
    workflow : snakemake.workflow.Workflow
        The Snakefile's ``workflow``, after its rules are defined.
    """
    params = {rule.name: rule_params(rule) for rule in workflow.rules}
    os.environ[RULE_PARAMS_ENV] = json.dumps(params, sort_keys=True)


def current_rule_params(stage: str | None) -> dict[str, Any] | None:
    """The params of rule ``stage`` under the running workflow's config (None outside
    the workflow, or for a stage that is no rule).

    Parameters
    ----------
    stage : str or None
        A rule name.

    Returns
    -------
    dict or None
        Flat params as :func:`rule_params` writes them, read from the environment
        variable :data:`RULE_PARAMS_ENV`.
    """
    text = os.environ.get(RULE_PARAMS_ENV)
    if not text or stage is None:
        return None
    return json.loads(text).get(stage)
