"""What a newcomer waits for: the README's commands timed on fresh clones.

For each step, a fresh ``git clone`` of the repository at a commit (default HEAD)
in a temporary folder, then:

* ``venv``: ``make .venv/.installed`` (the virtualenv from requirements.lock);
* ``demo``: ``make demo`` after the virtualenv (the whole pipeline on the demo);
* ``test``: ``make test`` after the virtualenv (the test suite);
* ``ci``: ``bash .ci/run``, from nothing (what CI runs: the suite, the Slurm run, lint).

Every step's wall time, exit status and the last lines of its output go to
``bench/output/fresh_clone.json`` and a Markdown table to ``fresh_clone.md``; a step
that fails is reported as failed, never as a time. The clones are removed
afterwards unless ``--keep``.

    python bench/bench_fresh_clone.py --steps demo test    # about an hour on 2 cores
    python bench/bench_fresh_clone.py --steps ci
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

OUTPUT = Path(__file__).resolve().parent / "output"
REPO = Path(__file__).resolve().parents[1]

#: step → (commands after the clone, whether the virtualenv is made first and timed apart)
STEPS = {
    "demo": (["make", "demo"], True),
    "test": (["make", "test"], True),
    "ci": (["bash", ".ci/run"], False),
}


def _run(cmd: list[str], cwd: Path, log: Path) -> dict:
    start = time.perf_counter()
    with log.open("w") as out:
        status = subprocess.run(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - start
    tail = log.read_text(errors="replace").splitlines()[-60:]
    return {"command": " ".join(cmd), "wall_s": round(wall, 1), "exit": status, "tail": tail}


def time_step(step: str, commit: str, root: Path) -> dict:
    """One step on its own fresh clone of ``commit`` under ``root``."""
    clone = root / step
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    subprocess.run(["git", "-C", str(clone), "checkout", "-q", commit], check=True)
    env_first = STEPS[step][1]
    result = {"step": step}
    if env_first:
        result["venv"] = _run(["make", ".venv/.installed"], clone, root / f"{step}-venv.log")
        if result["venv"]["exit"] != 0:
            return result
    result["run"] = _run(STEPS[step][0], clone, root / f"{step}.log")
    return result


def _minutes(record: dict | None) -> str:
    if record is None:
        return "–"
    if record["exit"] != 0:
        return f"failed (exit {record['exit']})"
    minutes, seconds = divmod(round(record["wall_s"]), 60)
    return f"{minutes} min {seconds:02d} s"


def markdown(results: dict) -> str:
    lines = [
        f"Fresh clones of {results['commit'][:7]} on {results['machine']}, {results['date']}.",
        "",
        "| step | command | virtualenv first | the command |",
        "|---|---|---|---|",
    ]
    for r in results["steps"]:
        command = STEPS[r["step"]][0]
        lines.append(
            f"| {r['step']} | `{' '.join(command)}` | {_minutes(r.get('venv'))} "
            f"| {_minutes(r.get('run'))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), default=["demo", "test"])
    parser.add_argument("--commit", default="HEAD", help="the commit to clone (default HEAD)")
    parser.add_argument("--keep", action="store_true", help="keep the clones and their logs")
    args = parser.parse_args(argv)
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", args.commit],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    root = Path(tempfile.mkdtemp(prefix="fresh-clone-"))
    results = {
        "commit": commit,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "steps": [],
    }
    try:
        for step in args.steps:
            print(f"{step}: cloning {commit[:7]} into {root / step}", flush=True)
            results["steps"].append(time_step(step, commit, root))
            OUTPUT.mkdir(parents=True, exist_ok=True)
            (OUTPUT / "fresh_clone.json").write_text(json.dumps(results, indent=2))
            (OUTPUT / "fresh_clone.md").write_text(markdown(results))
            print(markdown(results), flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    failed = [r for r in results["steps"] if any(r.get(k, {}).get("exit") for k in ("venv", "run"))]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
