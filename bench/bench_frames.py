"""Frame extraction of the full-size stimuli vs a bare PyAV decode of the same files.

The baseline decodes every frame of every video in one process with the same
decoder settings and converts nothing; the pipeline runs the `frames` command
once per video, as Snakemake does. Goal (issue 2): within 1.3x of the baseline.

    python bench/bench_frames.py      # writes bench/output/frames.json
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import OUTPUT, full_dataset, python_child, report, run_child  # noqa: E402
from pipeline.cc2017 import discover_dataset  # noqa: E402


def main(size: int = 224) -> None:
    root = full_dataset()
    videos = [str(p) for p in discover_dataset(root).stimulus_files()]
    decode = (
        "import av\n"
        f"for p in {videos!r}:\n"
        "    with av.open(p) as c:\n"
        "        s = c.streams.video[0]\n"
        "        s.thread_type = 'AUTO'\n"
        "        s.codec_context.thread_count = 1\n"
        "        for f in c.decode(s):\n"
        "            pass\n"
    )
    python_child(decode)  # warm the page cache
    baseline = python_child(decode)

    out = OUTPUT / "frames"
    shutil.rmtree(out, ignore_errors=True)
    runs = [
        run_child(
            [
                sys.executable,
                "-m",
                "pipeline",
                "frames",
                "--video",
                video,
                "--output",
                str(out / f"{Path(video).stem}.zarr"),
                "--tr-s",
                "2",
                "--fps",
                "3",
                "--size",
                str(size),
                "--threads",
                "1",
            ]
        )
        for video in videos
    ]
    total = sum(r["wall_s"] for r in runs)
    report(
        "frames",
        {
            "videos": len(videos),
            "output_size": size,
            "bare_decode": baseline,
            "pipeline_wall_s": round(total, 2),
            "ratio_to_decode": round(total / baseline["wall_s"], 2),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
            "goal": {"ratio_to_decode": "<= 1.3"},
        },
    )


if __name__ == "__main__":
    main()
