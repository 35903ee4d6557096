"""Evaluation time per clip on the demo (tiny preset, CPU), models loaded once per stage.

Runs the default demo workflow in bench/output/caches/ (shared with the other
benchmarks) up to subject 1's video evaluation, forces ``evaluate_videos`` so
it is timed on this machine, and reads the ``timing`` attribute of its
metrics.zarr: model loading (the two classifiers and CLIP, once), the
seconds of each metric family (classifiers + N-way, pixel-level metrics with
their shuffled control, CLIP-pcc) and the time per clip. Then calls
:func:`pipeline.evaluation.evaluate.evaluate` in-process, counting how often
each model loader runs.

    python bench/bench_evaluation.py      # writes bench/output/evaluation.json
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import OUTPUT, report, snakemake_base  # noqa: E402

TARGET = "results/subject1/evaluation/videos"


def stage_timing(workdir: Path) -> dict:
    base = snakemake_base(workdir)
    subprocess.run([*base, "--cores", "2", TARGET], check=True, capture_output=True)
    subprocess.run(
        [*base, "--cores", "2", "--forcerun", "evaluate_videos", "--", TARGET],
        check=True,
        capture_output=True,
    )
    store = zarr.open_group(workdir / TARGET / "metrics.zarr", mode="r")
    timing = dict(store.attrs["timing"])
    timing["prediction_shape"] = store.attrs["prediction_shape"]
    timing["ground_truth_shape"] = store.attrs["ground_truth_shape"]
    return timing


def loads_per_stage(workdir: Path) -> dict:
    """How often each model loader runs while one stage evaluates every clip."""
    import torch

    from pipeline.config import default_config
    from pipeline.evaluation import evaluate as evaluation
    from pipeline.models import classifiers, loading

    counts = {}

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return fn(*args, **kwargs)

        return wrapper

    data = evaluation.pipeline_reconstructions(
        workdir / "results/subject1/videos", workdir / "results/frames"
    )
    settings = default_config()["evaluation"]
    patches = [
        mock.patch.object(classifiers, name, counted(name, getattr(classifiers, name)))
        for name in ("load_image_classifier", "load_video_classifier", "load_clip_vision")
    ]
    patches.append(mock.patch.object(loading, "load_clip", counted("load_clip", loading.load_clip)))
    with tempfile.TemporaryDirectory() as tmp:
        for p in patches:
            p.start()
        try:
            evaluation.evaluate(
                data,
                Path(tmp) / "evaluation",
                classifiers=workdir / "resources/models/tiny-classifiers",
                clip=workdir / "resources/models/tiny/clip",
                settings=settings,
                device=torch.device("cpu"),
                dtype=torch.float32,
            )
        finally:
            for p in patches:
                p.stop()
    return {"clips": len(data.names), "loader_calls": counts}


def main() -> None:
    workdir = OUTPUT / "caches"
    result = {"stage": stage_timing(workdir), "in_process": loads_per_stage(workdir)}
    report("evaluation", result)


if __name__ == "__main__":
    main()
