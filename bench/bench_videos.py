"""Video synthesis and fusion throughput on the demo (tiny preset, CPU).

1. Runs the default demo workflow in bench/output/caches/ (shared with the
   other benchmarks) up to every subject-1 video and fused video, forcing
   ``synthesize_videos`` and ``fuse_videos`` so they are timed on this
   machine, and reads the ``timing`` attribute their stores record: model
   loading (once per stage), the sampler calls, the share of the stage inside
   the denoising loop (UNet + SparseCtrl steps), and videos per minute.
2. Calls the synthesizer in-process on the same clips with several batch
   sizes, models loaded once, to show what batching clips does on this
   machine.
3. Times the tiny VAE encoding and decoding 64 video frames in one call
   and in chunks (what ``diffusion.VAE_CHUNK`` chooses between).

    python bench/bench_videos.py      # writes bench/output/videos.json
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import zarr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import OUTPUT, report, snakemake_base  # noqa: E402

STAGES = ("synthesize_videos", "fuse_videos")


def stage_timing(workdir: Path) -> dict:
    targets = ["results/subject1/videos", "results/subject1/fused"]
    base = snakemake_base(workdir)
    subprocess.run([*base, "--cores", "2", *targets], check=True, capture_output=True)
    subprocess.run(
        [*base, "--cores", "2", "--forcerun", *STAGES, "--", *targets],
        check=True,
        capture_output=True,
    )
    videos = dict(zarr.open_group(workdir / targets[0] / "frames.zarr", mode="r").attrs["timing"])
    videos["videos_per_min"] = round(60 * videos["videos"] / videos["total_s"], 2)
    videos["denoise_share_of_stage"] = round(videos["denoise_s"] / videos["total_s"], 3)
    videos["denoise_share_of_sampler"] = round(videos["denoise_s"] / videos["synthesize_s"], 3)
    fused = dict(zarr.open_group(workdir / targets[1] / "frames.zarr", mode="r").attrs["timing"])
    if fused["regenerated_clips"]:
        fused["regenerated_per_min"] = round(
            60 * fused["regenerated_clips"] / fused["regenerate_s"], 2
        )
    return {"synthesize_videos": videos, "fuse_videos": fused}


def batch_sizes(workdir: Path, sizes: list[int], n_clips: int) -> dict:
    """Videos per minute of the same ``n_clips`` clips at each batch size."""
    import torch

    from pipeline.generation.video import SynthesisTrace, VideoSettings, VideoSynthesizer

    subject = workdir / "results/subject1"
    store = zarr.open_group(subject / "videos/frames.zarr", mode="r")
    settings = dict(store.attrs["settings"])
    run = VideoSettings(**{k: settings[k] for k in VideoSettings.__dataclass_fields__})
    blurry = zarr.open_group(subject / "perception/blurry.zarr", mode="r")["frames"][:n_clips]
    keyframes = store["keyframes"][:n_clips]
    captions = [str(c) for c in store["captions"][:n_clips]]
    keys = store["key"][:n_clips].tolist()
    synthesizer = VideoSynthesizer.from_generation_dir(
        workdir / "resources/models/tiny-generation", torch.device("cpu"), torch.float32
    )
    synthesizer.synthesize(blurry[:1], keyframes[:1], captions[:1], keys[:1], run)  # warm-up
    result = {}
    for size in sizes:
        trace, start = SynthesisTrace(), time.perf_counter()
        for i in range(0, n_clips, size):
            s = slice(i, i + size)
            synthesizer.synthesize(blurry[s], keyframes[s], captions[s], keys[s], run, trace)
        wall = time.perf_counter() - start
        result[f"batch {size}"] = {
            "videos_per_min": round(60 * n_clips / wall, 2),
            "denoise_share": round(trace.denoise_seconds / wall, 3),
        }
    return result


def vae_chunks(workdir: Path, chunks: list[int], frames: int = 64, repeats: int = 3) -> dict:
    """Seconds to encode and decode ``frames`` video frames in chunks of each size."""
    import numpy as np

    from pipeline.generation.diffusion import decode_images, encode_images
    from pipeline.models.loading import load_vae

    store = zarr.open_group(workdir / "results/subject1/videos/frames.zarr", mode="r")
    images = store["videos"][: -(-frames // store["videos"].shape[1])]
    images = images.reshape(-1, *images.shape[2:])[:frames]
    vae = load_vae(workdir / "resources/models/tiny/vae")
    result = {}
    for chunk in chunks:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            decode_images(vae, encode_images(vae, images, "cpu", vae.dtype, chunk), chunk)
            times.append(time.perf_counter() - start)
        result[f"{frames} frames of {images.shape[1]} px, chunks of {chunk}"] = round(
            float(np.median(times)), 3
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--clips", type=int, default=16, help="clips of the batch-size sweep")
    args = parser.parse_args()
    workdir = OUTPUT / "caches"
    workdir.mkdir(parents=True, exist_ok=True)
    result = {
        "stages": stage_timing(workdir),
        "batch_sizes": batch_sizes(workdir, args.sizes, args.clips),
        "vae_encode_decode_s": vae_chunks(workdir, [64, 16]),
        "machine": "2 CPU cores, no GPU; tiny preset on the default demo",
    }
    report("videos", result)


if __name__ == "__main__":
    main()
