"""A results folder that cannot take an output: a full disk, a read-only file system.

Both are real file systems mounted for the test (a 64 KiB tmpfs, a read-only bind
mount), which needs root; file permissions would not do, since root writes through them.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.workflow import check_writable
from tests.conftest import snakemake

STIMULUS = "resources/demo/video_fmri_dataset/stimuli/seg1.mp4"


@contextmanager
def mounted(target: Path, *args: str):
    """``mount *args target`` for the duration; skip where mounting is not permitted."""
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a test file system here: {result.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


@contextmanager
def read_only(target: Path):
    """``target`` as a read-only bind mount of an empty folder."""
    source = target.with_name(target.name + "-source")
    source.mkdir(parents=True)
    with mounted(target, "--bind", str(source)):
        subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True)
        yield target


def _frames(workspace: Path, output: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline", "frames", "--video", str(workspace / STIMULUS)]
    cmd += ["--output", str(output), "--tr-s", "2", "--fps", "3", "--size", "64"]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_a_full_disk_names_the_output_and_leaves_nothing(workspace, tmp_path):
    with mounted(tmp_path / "full", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as full:
        result = _frames(workspace, full / "seg1.zarr")
        assert list(full.iterdir()) == []
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot write {full / 'seg1.zarr'}: no space left on the device; nothing was "
        "left there. Free space or make the folder writable, then rerun."
    ]
    assert "Traceback" not in result.stderr


def test_a_read_only_results_folder_stops_the_run_before_any_job(workspace, tmp_path):
    """Through Snakemake, which would otherwise fail removing old outputs with a traceback."""
    workdir = tmp_path / "work"
    # the raw files with their times, so that the demo counts as made
    shutil.copytree(workspace / "resources/demo", workdir / "resources/demo")
    with read_only(workdir / "results/frames") as frames:
        result = snakemake(workdir, "results/frames/seg1.zarr", check=False)
        assert list(frames.iterdir()) == []
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        "cannot write to results/frames: the file system is read-only. The stages write "
        "their outputs there; make it writable, then rerun." in text
    )
    assert "Traceback" not in text
    assert not (workdir / "logs/extract_frames").exists()  # no job started
    # a dry run only reads: it still plans
    assert "extract_frames" in snakemake(workdir, "-n", "results/frames/seg1.zarr").stdout


def test_a_writable_workdir_passes_the_check(tmp_path):
    (tmp_path / "results/a.zarr/c").mkdir(parents=True)
    check_writable([str(tmp_path / "results"), str(tmp_path / "logs")])  # logs: not yet made
