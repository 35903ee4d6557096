"""Where the demo's colour is lost: the fMRI carries it, the tiny VAE does not.

The showcase's clip identification by colour histogram
(:mod:`pipeline.evaluation.showcase`) scores the blurry and the final video,
both decoded by the tiny preset's VAE. Two measurements place the loss:

* ``fmri`` — a closed-form ridge regression from a workspace's training fMRI
  (``aligned.zarr``) to each training clip's mean RGB, scored on the test
  clips by the correlation per channel, beside a control fitted to the
  training clips' colours in shuffled order (near 0);
* ``flat`` — the tiny VAE's architecture (``pipeline.models.tiny``, diffusers
  ``AutoencoderKL``) fitted by ``pipeline.models.fit.fit_vae`` to frames of
  one flat colour each, for every ``--groups`` setting of its GroupNorm, and
  scored by the mean absolute error per channel (grey levels) on new flat
  colours; beside it the same fit on flat grey levels, which it learns. A
  channel it does not carry sits near 64, the error of predicting mid-grey.

Usage::

    python bench/bench_vae_colour.py [--workdir bench/output/demo] [--steps 400]

Results go to ``bench/output/vae_colour.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import OUTPUT, report  # noqa: E402
from pipeline.models.fit import encode_frames, fit_vae  # noqa: E402
from pipeline.models.loading import load_vae  # noqa: E402
from pipeline.models.tiny import write_tiny_vae  # noqa: E402
from pipeline.stores import open_store  # noqa: E402


def _clip_colours(workdir: Path, aligned, split: str) -> np.ndarray:
    segments, clips = aligned[f"{split}/segment"][:], aligned[f"{split}/clip"][:]
    stores = {s: open_store(workdir / f"results/frames/{s}.zarr")["frames"] for s in set(segments)}
    return np.stack(
        [stores[s][c].reshape(-1, 3).mean(0) for s, c in zip(segments, clips, strict=True)]
    )


def _ridge(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, alpha: float) -> np.ndarray:
    mean, sd = x.mean(0), x.std(0) + 1e-6
    x, x_test = (x - mean) / sd, (x_test - mean) / sd
    weights = np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ (y - y.mean(0)))
    return x_test @ weights + y.mean(0)


def _correlations(pred: np.ndarray, truth: np.ndarray) -> list[float]:
    return [round(float(np.corrcoef(pred[:, c], truth[:, c])[0, 1]), 3) for c in range(3)]


def fmri_colour(workdir: Path, subject: str, alpha: float, seed: int) -> dict:
    """Ridge read-out of the clip-mean colour from the fMRI, and its shuffled control."""
    aligned = open_store(workdir / f"results/{subject}/aligned.zarr")
    x, x_test = aligned["train/fmri"][:], aligned["test/fmri"][:]
    y, y_test = _clip_colours(workdir, aligned, "train"), _clip_colours(workdir, aligned, "test")
    shuffled = y[np.random.default_rng(seed).permutation(len(y))]
    return {
        "train_clips": len(y),
        "test_clips": len(y_test),
        "alpha": alpha,
        "correlation_rgb": _correlations(_ridge(x, y, x_test, alpha), y_test),
        "correlation_rgb_shuffled": _correlations(_ridge(x, shuffled, x_test, alpha), y_test),
    }


def _flat_frames(rng: np.random.Generator, n: int, size: int, grey: bool) -> np.ndarray:
    colours = rng.integers(0, 256, (n, 1 if grey else 3))
    colours = np.broadcast_to(colours, (n, 3)) if grey else colours
    return np.broadcast_to(colours[:, None, None, :], (n, size, size, 3)).astype(np.uint8)


def flat_colour(groups: int, grey: bool, steps: int, size: int, seed: int) -> dict:
    """Fit the tiny VAE's architecture to flat frames; per-channel error on new ones."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        config = load_vae(write_tiny_vae(Path(tmp) / "vae", seed, sample_size=size)).config
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae = AutoencoderKL.from_config({**config, "norm_num_groups": groups})
    fit_vae(vae, _flat_frames(rng, 4096, size, grey), steps, seed=seed, crop=size)
    test = _flat_frames(rng, 256, size, grey)
    with torch.no_grad():
        decoded = vae.decode(encode_frames(vae, test)).sample
    decoded = decoded.clamp(-1, 1).add(1).mul(127.5).permute(0, 2, 3, 1).numpy()
    error = np.abs(decoded - test).mean(axis=(0, 1, 2))
    return {
        "frames": "grey" if grey else "colour",
        "norm_num_groups": groups,
        "steps": steps,
        "mean_abs_error_rgb": [round(float(e), 1) for e in error],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=OUTPUT / "demo")
    parser.add_argument("--subject", default="subject1")
    parser.add_argument("--alpha", type=float, default=1000.0, help="ridge penalty")
    parser.add_argument("--steps", type=int, default=400, help="VAE fit steps")
    parser.add_argument("--size", type=int, default=32, help="flat frame side, pixels")
    parser.add_argument("--groups", type=int, nargs="+", default=[8, 4, 1])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"fmri": fmri_colour(args.workdir, args.subject, args.alpha, args.seed)}
    print(result["fmri"], flush=True)
    runs = [(8, True)] + [(g, False) for g in args.groups]
    result["flat"] = []
    for groups, grey in runs:
        result["flat"].append(flat_colour(groups, grey, args.steps, args.size, args.seed))
        print(result["flat"][-1], flush=True)
    report("vae_colour", result)


if __name__ == "__main__":
    main()
