"""Shared helpers of the benchmarks: the full-size demo subject and child-process timing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from pipeline.config import validate_config
from pipeline.demo import DemoSettings

OUTPUT = Path(__file__).resolve().parent / "output"
REPO = Path(__file__).resolve().parents[1]


def full_dataset(seed: int = 0) -> Path:
    """A cc2017-sized demo subject (``demo.scale: full``), generated once and reused.

    Generated in a child process: on Linux a child keeps its parent's peak resident
    memory across fork and exec (``ru_maxrss``), so a parent grown by the generation
    would lend its peak to every stage :func:`run_child` measures after it.
    """
    root = OUTPUT / "full_demo"
    marker = root / "ground_truth.zarr"
    if not marker.exists():
        config = validate_config({"demo": {"scale": "full", "seed": seed}})
        settings = DemoSettings.from_config(config).to_json()
        subprocess.run(
            [sys.executable, "-m", "pipeline", "demo", "--root", str(root), "--settings", settings],
            check=True,
            cwd=REPO,
        )
    return root


def run_child(args: list[str]) -> dict:
    """Run a command; return its wall time (s) and peak resident memory (MB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    stderr = proc.stderr.read()
    proc.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(args[:4])} ... failed:\n{stderr[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def python_child(code: str) -> dict:
    """:func:`run_child` of a Python snippet in a fresh interpreter."""
    return run_child([sys.executable, "-c", code])


def snakemake_base(workdir: Path) -> list[str]:
    """The repository's workflow run in ``workdir`` (append options and targets)."""
    return [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)]


def report(name: str, result: dict) -> None:
    """Print a result and store it as JSON under bench/output/."""
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
