"""Where the blurry video's SSIM goes: baselines, ceilings and linear decoders on one workspace.

The Perception Reconstructor's blurry test frames must beat the
mean training frame on SSIM (skimage, RGB, 7x7). This script puts the PR's
score between references computed on the same test frames:

* ``mean_frame`` — the acceptance baseline: the mean training frame everywhere;
* ``decoded_mean_latent`` — the mean training latent through the VAE decoder
  (what the VAE costs a prediction that carries no information);
* ``clip_mean_oracle`` — every frame replaced by its clip's mean frame (the
  most a decoder of clip-level information could reach);
* ``pixel_ridge`` / ``latent_ridge`` — closed-form ridge regressions from the
  training fMRI to ``grid`` x ``grid`` frames (bilinear upsampling) and to the
  VAE latents (decoded), at each ``alpha``: what a linear read-out of the
  fMRI gets, with and without the VAE;
* ``perception_reconstructor`` — the PR's frames in ``blurry.zarr``.

Run on a workspace where ``results/{subject}/perception/blurry.zarr`` exists
(e.g. after ``make demo``; the default is the workspace of bench_caches.py)::

    python bench/bench_blurry.py [--workdir bench/output/caches] [--every 2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from skimage.metrics import structural_similarity
from skimage.transform import resize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import OUTPUT, report  # noqa: E402
from pipeline.models.loading import load_vae  # noqa: E402
from pipeline.reconstructors.data import cache_rows, load_split  # noqa: E402
from pipeline.stores import open_store  # noqa: E402


def _frames(workdir: Path, segments, clips) -> np.ndarray:
    stores = {s: open_store(workdir / f"results/frames/{s}.zarr")["frames"] for s in set(segments)}
    return np.stack([stores[s][c] for s, c in zip(segments, clips, strict=True)])


def _ssim(pred: np.ndarray, truth: np.ndarray) -> float:
    pred = np.broadcast_to(pred, truth.shape)
    return float(
        np.mean(
            [
                structural_similarity(x, y, channel_axis=-1)
                for clip_p, clip_t in zip(pred, truth, strict=True)
                for x, y in zip(clip_p, clip_t, strict=True)
            ]
        )
    )


def _uint8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255).round().astype(np.uint8)


def _ridge(x_train, y_train, x_test, alpha: float) -> np.ndarray:
    mean = y_train.mean(0)
    w = np.linalg.solve(
        x_train.T @ x_train + alpha * np.eye(x_train.shape[1]), x_train.T @ (y_train - mean)
    )
    return x_test @ w + mean


@torch.no_grad()
def _decode(vae, latents: np.ndarray) -> np.ndarray:
    """Scaled latents (clip, frame, c, h, w) → uint8 frames (clip, frame, y, x, rgb)."""
    out = []
    for clip in latents:
        images = vae.decode(torch.from_numpy(clip).float() / vae.config.scaling_factor).sample
        out.append(_uint8((images.permute(0, 2, 3, 1).numpy() + 1) / 2))
    return np.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=OUTPUT / "caches")
    parser.add_argument("--subject", default="subject1")
    parser.add_argument("--every", type=int, default=1, help="score every n-th test clip")
    parser.add_argument("--grid", type=int, default=8)
    parser.add_argument("--alphas", type=float, nargs="+", default=[3e2, 3e3, 3e4])
    args = parser.parse_args()
    work, subject = args.workdir, args.subject
    aligned = work / f"results/{subject}/aligned.zarr"
    vae_cache = work / "results/cache/vae_latents.zarr"
    train, test = load_split(aligned, "train"), load_split(aligned, "test")
    keep = np.arange(0, len(test), args.every)
    truth = _frames(work, test.segment[keep], test.clip[keep])
    train_frames = _frames(work, train.segment, train.clip)
    size = truth.shape[2]

    results = {"workdir": str(work), "test_clips": len(keep), "frame_size": size}
    mean_frame = train_frames.reshape(-1, size, size, 3).mean(0)
    results["mean_frame"] = _ssim(mean_frame.round().astype(np.uint8), truth)
    clip_means = truth.mean(1, keepdims=True)
    results["clip_mean_oracle"] = _ssim(clip_means.round().astype(np.uint8), truth)

    x_train, x_test = train.fmri.numpy(), test.fmri.numpy()[keep]
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    g = args.grid
    small = resize(train_frames / 255.0, (*train_frames.shape[:2], g, g, 3), anti_aliasing=True)
    for alpha in args.alphas:
        pred = _ridge(x_train, small.reshape(len(small), -1), x_test, alpha)
        pred = resize(pred.reshape(len(keep), -1, g, g, 3), (*truth.shape[:4], 3), order=1)
        results[f"pixel_ridge_{g}x{g}_alpha{alpha:g}"] = _ssim(_uint8(pred), truth)

    vae = load_vae(work / "resources/models/tiny/vae", "cpu", torch.float32)
    latents = open_store(vae_cache)["latents"][:]
    z_train = latents[cache_rows(vae_cache, train, "cache_vae")].astype(np.float32)
    results["decoded_mean_latent"] = _ssim(_decode(vae, z_train.mean(0, keepdims=True)), truth)
    for alpha in args.alphas:
        pred = _ridge(x_train, z_train.reshape(len(z_train), -1), x_test, alpha)
        pred = pred.reshape(len(keep), *z_train.shape[1:]).astype(np.float32)
        results[f"latent_ridge_alpha{alpha:g}"] = _ssim(_decode(vae, pred), truth)

    blurry = open_store(work / f"results/{subject}/perception/blurry.zarr")
    if blurry["segment"][:].tolist() != test.segment.tolist():
        raise SystemExit(f"{work}: blurry.zarr does not follow the aligned test order; rerun")
    results["perception_reconstructor"] = _ssim(blurry["frames"][:][keep], truth)
    report("blurry", {k: round(v, 4) if isinstance(v, float) else v for k, v in results.items()})


if __name__ == "__main__":
    main()
