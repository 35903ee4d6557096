"""Start-up cost of the workflow: a no-op dry run against Snakemake's bare start.

Times, in fresh processes, five runs each (after one untimed warm-up, interleaved so
that a busy machine weighs on all alike) of

(a) ``snakemake --version``: interpreter and Snakemake start, no workflow;
(b) ``snakemake -n`` on a completed workspace: Snakefile, rules, dataset layout, DAG
    and the metadata of every output, and nothing to be done;
(c) ``snakemake -n`` on an empty folder: the same, with every job planned;

and reports the median wall time and the median peak resident memory of each (the
child's ``ru_maxrss``, from ``os.wait4``). Goal: (b) at most 1.5 x (a): building the DAG
imports no model library (``tests/test_dag_imports.py``).

The completed workspace is ``--workspace DIR`` (a finished run, measured as it is; with
``--configfile`` its config overlay), or by default a stand-in built in
bench/output/dryrun_workspace/: every output of the DAG (``snakemake --summary``)
created empty, a folder for each ``.zarr`` or suffix-less path (the workflow's
``directory()`` outputs), then ``snakemake --touch`` records them as made by their
rules, in DAG order. Snakemake reads the same metadata and timestamps as after a real
run; only the stores' contents are missing, which a dry run does not read.

    python bench/bench_dryrun.py    # writes bench/output/bench_dryrun.md and dryrun.json
    # a finished run instead, e.g. the test suite's workspace:
    python bench/bench_dryrun.py --workspace W --configfile W/overlay.yaml
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import OUTPUT, report, snakemake_base  # noqa: E402

RUNS = 5
#: Goal: the no-op dry run's median wall time at most this multiple of the bare start's.
GOAL_RATIO = 1.5
NOTHING_TO_DO = "Nothing to be done"


def timed(args: list[str]) -> tuple[float, float, str]:
    """Run ``args``; return its wall time (s), peak resident memory (MB) and output."""
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{output[-3000:]}")
    return wall, usage.ru_maxrss / 1024, output


def build_stand_in(workdir: Path, config: list[str]) -> None:
    """A workspace where every output of the DAG exists and Snakemake records it as made."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    base = [*snakemake_base(workdir), "--cores", "1"]
    _, _, summary = timed([*base, "--summary", *config])
    lines = summary.splitlines()
    rows = lines[lines.index(next(x for x in lines if x.startswith("output_file\t"))) + 1 :]
    for row in rows:
        path = workdir / row.split("\t")[0]
        if path.suffix in ("", ".zarr"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    timed([*base, "--touch", *config])


def markdown(rows: list[dict], header: list[str]) -> str:
    """The results as a markdown table, under ``header`` lines."""
    table = [
        "| | command | median wall (s) | range (s) | peak RSS (MB) | x (a) wall | x (a) RSS |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    base = rows[0]
    for row in rows:
        table.append(
            f"| {row['label']} | `{row['command']}` | {row['median_s']:.2f} | "
            f"{min(row['wall_s']):.2f}–{max(row['wall_s']):.2f} | {row['peak_rss_mb']:.0f} | "
            f"{row['median_s'] / base['median_s']:.2f} | "
            f"{row['peak_rss_mb'] / base['peak_rss_mb']:.2f} |"
        )
    return "\n".join([*header, "", *table]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workspace", "--workdir", type=Path, help="a finished run (default: a stand-in)"
    )
    parser.add_argument("--configfile", type=Path, help="the workspace's config overlay")
    parser.add_argument("--target", nargs="*", default=[], help="targets (default: all)")
    parser.add_argument("--runs", type=int, default=RUNS, help="timed runs per command")
    args = parser.parse_args()
    config = ["--configfile", str(args.configfile.resolve())] if args.configfile else []

    if args.workspace is None:
        workspace = OUTPUT / "dryrun_workspace"
        build_stand_in(workspace, config)
        kind = "a stand-in (every output created empty, then `snakemake --touch`)"
    else:
        workspace = args.workspace.resolve()
        kind = "a finished run"
    empty = Path(tempfile.mkdtemp(prefix="dryrun-empty-"))
    dry_run = ["--cores", "1", "-n", *args.target, *config]
    target = " ".join(args.target) or "the default target"
    commands = [
        ("(a) bare start", "snakemake --version", [sys.executable, "-m", "snakemake", "--version"]),
        (
            "(b) no-op dry run",
            f"snakemake -n {' '.join(args.target)}".strip(),
            [*snakemake_base(workspace), *dry_run],
        ),
        (
            "(c) full dry run, empty folder",
            f"snakemake -n {' '.join(args.target)}".strip(),
            [*snakemake_base(empty), *dry_run],
        ),
    ]
    try:
        _, _, output = timed(commands[1][2])  # warm-up; the workspace must be up to date
        if NOTHING_TO_DO not in output:
            raise RuntimeError(f"{workspace} is not up to date for {target}:\n{output[-3000:]}")
        for _, _, cmd in (commands[0], commands[2]):
            timed(cmd)
        samples: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in commands}
        for _ in range(args.runs):
            for label, _, cmd in commands:
                wall, rss, _ = timed(cmd)
                samples[label].append((wall, rss))
    finally:
        shutil.rmtree(empty, ignore_errors=True)

    rows = [
        {
            "label": label,
            "command": text,
            "wall_s": [round(w, 2) for w, _ in samples[label]],
            "median_s": round(statistics.median(w for w, _ in samples[label]), 2),
            "peak_rss_mb": round(statistics.median(r for _, r in samples[label]), 1),
        }
        for label, text, _ in commands
    ]
    ratio = rows[1]["median_s"] / rows[0]["median_s"]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    header = [
        "# Snakemake start-up: no-op dry run against bare start",
        "",
        f"Workspace: {kind}, `{workspace}`; target: {target}. Median of {args.runs} runs in "
        f"fresh processes after one warm-up each; peak RSS is the child's `ru_maxrss`.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; load average at the end {load}.",
        f"Goal: (b) at most {GOAL_RATIO} x (a) wall time: **{ratio:.2f} x**, "
        f"{'met' if ratio <= GOAL_RATIO else 'not met'}.",
    ]
    text = markdown(rows, header)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "bench_dryrun.md").write_text(text)
    print(text)
    report(
        "dryrun",
        {
            "workspace": str(workspace),
            "workspace_kind": kind,
            "target": target,
            "runs": args.runs,
            "results": rows,
            "ratio": round(ratio, 2),
            "goal_ratio": GOAL_RATIO,
        },
    )


if __name__ == "__main__":
    main()
