"""Frame extraction of full-length stimuli vs a bare PyAV decode of the same files.

The stimuli are 8-minute, 30 FPS videos (cc2017 length) rendered by the demo
generator at 160 px and upscaled 3x to 480 x 480 px before encoding, so that
decoding costs what a real movie of that size costs (the demo's own 160 px
stimuli decode so fast that writing the 224 px output frames would dominate).
The baseline decodes every frame of every video in one process, converting
nothing; the pipeline runs the `frames` command once per video, as Snakemake
does, with the same decoder settings (one thread). Goal: within
1.3x of the baseline.

    python bench/bench_frames.py      # writes bench/output/frames.json
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import OUTPUT, python_child, report, run_child  # noqa: E402
from pipeline.demo import _write_video, render_segment  # noqa: E402

N_VIDEOS = 4
SECONDS, FPS, RENDER, UPSCALE = 480, 30, 160, 3


def stimuli() -> list[Path]:
    """Full-length upscaled stimuli, generated once."""
    folder = OUTPUT / "frames_stimuli"
    paths = [folder / f"seg{k + 1}.mp4" for k in range(N_VIDEOS)]
    folder.mkdir(parents=True, exist_ok=True)
    for k, path in enumerate(paths):
        if path.exists():
            continue
        frames, _, _ = render_segment(np.random.default_rng([0, k]), SECONDS * FPS, FPS, RENDER)
        big = (np.repeat(np.repeat(f, UPSCALE, 0), UPSCALE, 1) for f in frames)
        tmp = path.with_suffix(".tmp.mp4")
        _write_video(tmp, big, FPS, RENDER * UPSCALE)
        tmp.rename(path)
    return paths


def main(size: int = 224) -> None:
    videos = [str(p) for p in stimuli()]
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
                "--clip-s",
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
            "video": f"{SECONDS} s at {FPS} FPS, {RENDER * UPSCALE} x {RENDER * UPSCALE} px",
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
