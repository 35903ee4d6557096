"""The demo as a newcomer meets it: time per stage, and whether its showcase shows something.

Runs the workflow with the repository's ``config.yaml`` (the embedded demo, tiny
preset) in a fresh working directory, as ``make demo`` does, then scores what
the report's sample grid shows on the first subject's test clips:

* wall time of the whole run, and each rule's summed job time from Snakemake's
  ``benchmark:`` files (jobs run side by side, so the sum exceeds the wall time);
* clip identification (:mod:`pipeline.evaluation.showcase`) of the blurry
  video and of the final video by colour histogram and by 32 px SSIM, each
  beside its shuffled control (chance 0.5), and of the ground truth passed
  through the preset's VAE (the most a latent-space prediction can keep);
* the keyframes' CLIP similarity (the preset's CLIP) to their own clip's
  ground-truth frame ``keyframes.frame``, against random re-pairings;
* the Perception Reconstructor against the mean-frame and mean-latent
  baselines (``bench/bench_blurry.py``, run on the same workspace).

Usage::

    python bench/bench_demo.py [--workdir bench/output/demo] [--cores 2] [--score-only]

``--score-only`` scores an existing workspace without running Snakemake;
``--grid docs/images/demo-grid.png`` writes a still of the sample grid.
Results go to ``bench/output/demo.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import OUTPUT, REPO, report, snakemake_base  # noqa: E402


def _rule_seconds(workdir: Path) -> dict[str, float]:
    """Summed ``s`` column of every rule's benchmark files, slowest first."""
    totals: dict[str, float] = defaultdict(float)
    for path in (workdir / "benchmarks").glob("*/*.tsv"):
        with path.open() as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows:
            totals[path.parent.name] += float(rows[-1]["s"])
    return {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}


def _showcase(workdir: Path, subject: str) -> dict:
    import torch

    from pipeline.caches import clip_image_embeds
    from pipeline.config import validate_config
    from pipeline.evaluation.showcase import (
        SIMILARITIES,
        identification_rate,
        matched_vs_shuffled,
        similarity_matrix,
    )
    from pipeline.models.fit import encode_frames
    from pipeline.models.loading import load_clip, load_vae
    from pipeline.models.presets import model_dir
    from pipeline.stores import open_store

    config = validate_config(yaml.safe_load((REPO / "config.yaml").read_text()))
    results = workdir / "results" / subject
    preset = config["models"]["preset"]
    blurry = open_store(results / "perception/blurry.zarr")
    segments, clips = blurry["segment"][:], blurry["clip"][:]
    stores = {s: open_store(workdir / f"results/frames/{s}.zarr")["frames"] for s in set(segments)}
    truth = np.stack([stores[s][c] for s, c in zip(segments, clips, strict=True)])
    videos = open_store(results / "videos/frames.zarr")
    if videos["segment"][:].tolist() != segments.tolist():
        raise SystemExit(f"{results}: videos and blurry frames are in different clip orders")
    # the ceiling the VAE leaves the blurry video: the ground truth through encode/decode
    vae = load_vae(model_dir(workdir / config["models"]["root"], preset, "vae"))
    latents = encode_frames(vae, truth.reshape(-1, *truth.shape[2:]))
    with torch.no_grad():
        decoded = vae.decode(latents).sample
    roundtrip = decoded.clamp(-1, 1).add(1).mul(127.5).round().byte().permute(0, 2, 3, 1)
    roundtrip = roundtrip.numpy().reshape(truth.shape)
    out: dict = {"test_clips": len(truth)}
    candidates = {
        "vae_roundtrip": roundtrip,
        "blurry": blurry["frames"][:],
        "video": videos["videos"][:],
    }
    for name, pred in candidates.items():
        for kind in SIMILARITIES:
            s = similarity_matrix(pred, truth, kind)
            out[f"{name}_identified_{kind}"] = round(identification_rate(s), 3)
            out[f"{name}_identified_{kind}_shuffled"] = round(
                identification_rate(s, shuffled=True), 3
            )
    keyframes = open_store(results / "keyframes/keyframes.zarr")["keyframes"][:]
    clip, _ = load_clip(model_dir(workdir / config["models"]["root"], preset, "clip"))
    frame = config["keyframes"]["frame"]
    a = clip_image_embeds(clip, keyframes, "cpu", torch.float32)
    b = clip_image_embeds(clip, truth[:, frame], "cpu", torch.float32)
    a, b = (torch.nn.functional.normalize(x, dim=-1).numpy() for x in (a, b))
    test = matched_vs_shuffled(a @ b.T)
    out |= {f"keyframe_clip_{k}": round(v, 4) for k, v in test.items()}
    return out


def _grid_png(workdir: Path, subject: str, n_clips: int, path: Path) -> None:
    """A still of the report's sample grid: one frame of each clip's animated grid
    (ground truth | blurry | keyframe | video), evenly spaced test clips stacked."""
    import io

    from PIL import Image

    from pipeline.evaluation.report import clip_grid
    from pipeline.stores import open_store

    results = workdir / "results" / subject
    videos = open_store(results / "videos/frames.zarr")
    blurry = open_store(results / "perception/blurry.zarr")
    keyframes = open_store(results / "keyframes/keyframes.zarr")
    segments, clips = videos["segment"][:].tolist(), videos["clip"][:]
    rows = []
    for i in np.linspace(0, len(segments) - 1, n_clips).round().astype(int):
        frames = open_store(workdir / f"results/frames/{segments[i]}.zarr")
        gif = Image.open(
            io.BytesIO(
                clip_grid(
                    frames["frames"][int(clips[i])],
                    blurry["frames"][i],
                    keyframes["keyframes"][i],
                    videos["videos"][i],
                    gt_fps=float(frames.attrs["fps"]),
                    video_fps=float(videos.attrs["settings"]["fps"]),
                )
            )
        )
        gif.seek(gif.n_frames // 2)
        rows.append(np.asarray(gif.convert("RGB")))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows)).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=OUTPUT / "demo")
    parser.add_argument("--cores", default="2")
    parser.add_argument("--subject", default="subject1")
    parser.add_argument("--score-only", action="store_true")
    parser.add_argument("--grid", type=Path, help="write a still of the sample grid here (PNG)")
    parser.add_argument("--grid-clips", type=int, default=4)
    args = parser.parse_args()
    result: dict = {"workdir": str(args.workdir), "cores": args.cores}
    if not args.score_only:
        if args.workdir.exists():
            shutil.rmtree(args.workdir)
        args.workdir.mkdir(parents=True)
        start = time.perf_counter()
        subprocess.run(
            [*snakemake_base(args.workdir), "--cores", args.cores, "--quiet"],
            check=True,
            cwd=REPO,
        )
        result["wall_s"] = round(time.perf_counter() - start, 1)
    result["rule_job_s"] = _rule_seconds(args.workdir)
    result["showcase"] = _showcase(args.workdir, args.subject)
    blurry = subprocess.run(
        [sys.executable, str(REPO / "bench/bench_blurry.py"), "--workdir", str(args.workdir)],
        check=True,
        capture_output=True,
        text=True,
    )
    scores = json.loads(blurry.stdout)
    result["blurry_ssim"] = {
        k: scores[k] for k in ("perception_reconstructor", "mean_frame", "decoded_mean_latent")
    }
    best_baseline = max(scores["mean_frame"], scores["decoded_mean_latent"])
    result["blurry_ssim"]["margin_over_best_baseline"] = round(
        scores["perception_reconstructor"] - best_baseline, 4
    )
    if args.grid:
        _grid_png(args.workdir, args.subject, args.grid_clips, args.grid)
        result["grid"] = str(args.grid)
    report("demo", result)


if __name__ == "__main__":
    main()
