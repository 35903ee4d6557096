"""What the Snakefile needs before its rules run: the environment of the rules' commands."""

from __future__ import annotations

import os
import sys

__all__ = ["prepare_job_environment"]


def prepare_job_environment(basedir: str) -> None:
    """Let the rules' ``python -m pipeline`` find this package and the right interpreter.

    The workflow's directory goes on ``PYTHONPATH`` (so the package imports in
    any conda environment without being installed), and the directory of the
    interpreter running Snakemake goes first on ``PATH`` (so without
    ``--use-conda`` the rules run with it, e.g. the project's venv; with
    ``--use-conda`` Snakemake puts the environment's ``bin`` before it).
    Both are inherited by the jobs, also when Snakemake re-runs the Snakefile
    inside a cluster job.
    """
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (basedir, os.environ.get("PYTHONPATH")) if p
    )
    os.environ["PATH"] = os.pathsep.join((os.path.dirname(sys.executable), os.environ["PATH"]))
