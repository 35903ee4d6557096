"""Planning time: ``snakemake -n results/subject1/videos`` on a completed demo workspace.

Brings the default demo workflow in bench/output/caches/ (shared with the other
benchmarks) up to date for subject 1's videos, then times five dry runs of that
target in fresh processes (interpreter start, Snakefile parsing, dataset layout,
DAG and the metadata checks of every output). Goal: at most 5 s.

    python bench/bench_dryrun.py      # writes bench/output/dryrun.json
    # any completed workspace instead (not brought up to date), e.g. the test suite's:
    python bench/bench_dryrun.py --workdir W --configfile W/overlay.yaml
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import OUTPUT, report, snakemake_base  # noqa: E402

TARGET = "results/subject1/videos"
RUNS = 5
GOAL_S = 5.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="a completed workspace")
    parser.add_argument("--configfile", help="its config overlay")
    args = parser.parse_args()
    workdir = args.workdir or OUTPUT / "caches"
    extra = ["--configfile", args.configfile] if args.configfile else []
    if args.workdir is None:
        workdir.mkdir(parents=True, exist_ok=True)
        subprocess.run([*snakemake_base(workdir), "--cores", "all", TARGET], check=True)
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        result = subprocess.run(
            [*snakemake_base(workdir), "--cores", "1", "-n", TARGET, *extra],
            capture_output=True,
            text=True,
            check=True,
        )
        times.append(time.perf_counter() - start)
        if "Nothing to be done" not in result.stdout + result.stderr:
            raise RuntimeError(f"{TARGET} is not up to date:\n{result.stdout[-2000:]}")
    report(
        "dryrun",
        {
            "command": f"snakemake -n {TARGET}",
            "workdir": str(workdir),
            "runs": RUNS,
            "wall_s": [round(t, 2) for t in times],
            "median_s": round(statistics.median(times), 2),
            "goal_s": GOAL_S,
        },
    )


if __name__ == "__main__":
    main()
