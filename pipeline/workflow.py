"""What the Snakefile needs before its rules run: the environment of the rules' commands,
and folders it can write to."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

from pipeline.errors import OutputError

__all__ = ["check_writable", "prepare_job_environment"]


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


def check_writable(folders: list[str]) -> None:
    """Raise :class:`OutputError` naming the first folder under ``folders`` (the folders
    themselves, or the nearest existing parent) that cannot be written.

    Snakemake removes a job's old output before running it; in a read-only folder that
    fails with a traceback before the stage can say anything, hence this check before
    the first job. Stores (``*.zarr``) are not descended into. A full disk is caught by
    the stage that fills it (:func:`pipeline.stores.atomic_output`).
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
