"""Preprocessing + voxel selection + alignment of a cc2017-sized subject.

Compared with reading the subject's CIFTI files once (nibabel, all grayordinates,
page cache warm for both). Goals: wall time within 2x of the read,
peak memory of every stage <= 4 GB.

    python bench/bench_fmri.py        # writes bench/output/fmri.json
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import OUTPUT, full_dataset, python_child, report, run_child  # noqa: E402
from pipeline.config import default_config  # noqa: E402
from pipeline.datasets import discover  # noqa: E402


def main() -> None:
    root = full_dataset()
    dataset = discover(default_config()["dataset"], root)
    runs = [str(p) for p in dataset.run_files("subject1")]
    read = (
        "import nibabel as nib, numpy as np\n"
        f"for p in {runs!r}:\n"
        "    np.asarray(nib.load(p, mmap=False).dataobj)\n"
    )
    python_child(read)  # warm the page cache
    baseline = python_child(read)

    out = OUTPUT / "fmri"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cli = [sys.executable, "-m", "pipeline"]
    stages = {
        "preprocess": run_child(
            [
                *cli,
                "preprocess",
                "--subject",
                "subject1",
                "--plan",
                json.dumps(dataset.plan("subject1")),
                "--output",
                str(out / "pre.zarr"),
                "--tr-s",
                "2",
                "--trailing-volumes",
                "4",
                "--max-leading-volumes",
                "3",
                "--detrend-order",
                "4",
                "--threads",
                "2",
            ]
        ),
        "select": run_child(
            [
                *cli,
                "select",
                "--preprocessed",
                str(out / "pre.zarr"),
                "--output",
                str(out / "sel.zarr"),
                "--train-segments",
                *dataset.train_segments,
                "--alpha",
                "0.05",
            ]
        ),
        "align": run_child(
            [
                *cli,
                "align",
                "--preprocessed",
                str(out / "pre.zarr"),
                "--selection",
                str(out / "sel.zarr"),
                "--output",
                str(out / "al.zarr"),
                "--train-segments",
                *dataset.train_segments,
                "--test-segments",
                *dataset.test_segments,
                "--shift-s",
                "4",
                "--tr-s",
                "2",
            ]
        ),
    }
    total = sum(s["wall_s"] for s in stages.values())
    size_gb = sum(Path(p).stat().st_size for p in runs) / 1e9
    report(
        "fmri",
        {
            "runs": len(runs),
            "cifti_gb": round(size_gb, 2),
            "read_once": baseline,
            "stages": stages,
            "pipeline_wall_s": round(total, 2),
            "ratio_to_read": round(total / baseline["wall_s"], 2),
            "peak_rss_mb": max(s["peak_rss_mb"] for s in stages.values()),
            "goals": {"ratio_to_read": "<= 2", "peak_rss_mb": "<= 4096"},
        },
    )


if __name__ == "__main__":
    main()
