"""Whether the tiny reconstructors' first (ridge) layer learns where the demo's signal is.

The interpretation stage reads the paper's voxel importance, the mean absolute
weight of each reconstructor's first layer (paper section 7). On the demo's
~1,000 training samples that layer can stay at its random initialisation, whose
per-voxel mean |W| varies by a few per cent; the map is then noise. This script
trains the Perception and the Semantic Reconstructor of a demo workspace under
named training settings and reports, per setting:

* the held-out retrieval of each reconstructor (test latents / keyframes, top-1
  among the 80 test clips) and the PR's latent MAE;
* the ridge importance z-scored over the selected voxels, averaged per group of
  planted areas (early, motion, object), and its coefficient of variation;
* the stage's ROI table (:func:`pipeline.interpretation.roi_table`) of the two
  maps per group, and the same with the area labels shuffled (the control).

Beside them, ``class_decoding``: a closed-form ridge regression from each group's
voxels (all of them, and 50 drawn at random) to the clips' object classes (the
demo's ``class_area``, the area of each class in view), scored on the test clips
by the mean correlation over the classes, with a control fitted to the training
clips' classes in shuffled order (the mean of 20 shuffles). It says which areas
the demo lets a decoder of object classes use.

The settings: ``before`` (weight decay 0.01 for both, the SR's alignment 10
epochs at 3e-4), ``align`` (the SR's alignment 30 epochs at 1e-3) and
``preset`` (the tiny preset: that alignment and weight decay 1.0 for both).

Usage::

    python bench/bench_tiny_training.py [--workdir bench/output/demo] [--variants before preset]

The workspace is a default demo run (``bench/bench_demo.py`` writes one) that
has its aligned store and caches. Results go to ``bench/output/tiny_training.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import OUTPUT, report  # noqa: E402
from bench.bench_vae_colour import _ridge  # noqa: E402
from pipeline.config import validate_config  # noqa: E402
from pipeline.interpretation import _importances, roi_table, scale_unit  # noqa: E402
from pipeline.models.presets import reconstructor_settings  # noqa: E402
from pipeline.reconstructors.stages import train_perception, train_semantic  # noqa: E402
from pipeline.stores import open_store  # noqa: E402

#: Overrides of the tiny preset's effective settings per variant.
VARIANTS = {
    "before": {
        "perception": {"weight_decay": 0.01},
        "semantic": {"weight_decay": 0.01, "align_epochs": 10, "align_lr": None},
    },
    "align": {
        "perception": {"weight_decay": 0.01},
        "semantic": {"weight_decay": 0.01},
    },
    "preset": {"perception": {}, "semantic": {}},
}
GROUPS = ("early", "motion", "object")


def _settings(name: str, overrides: dict) -> dict:
    config = validate_config(yaml.safe_load((ROOT / "config.yaml").read_text()))
    if config["models"]["preset"] != "tiny":
        raise SystemExit("config.yaml: this benchmark trains the tiny preset")
    return reconstructor_settings(config, name) | overrides


def _last(rows: list[dict], keys: tuple[str, ...], phase: str | None = None) -> dict:
    row = [r for r in rows if phase is None or r.get("phase") == phase][-1]
    return {k: round(float(row[k]), 4) for k in keys}


def _groups(importance: np.ndarray, group: np.ndarray) -> dict:
    z = (importance - importance.mean()) / importance.std()
    return {
        "z_by_group": {g: round(float(z[group == g].mean()), 3) for g in GROUPS},
        "cv": round(float(importance.std() / importance.mean()), 3),
    }


def _ridge_r(x, y, x_test, y_test, alpha: float) -> float:
    pred = _ridge(x, y, x_test, alpha)
    kept = [k for k in range(y.shape[1]) if y_test[:, k].std() > 0]
    return round(float(np.mean([np.corrcoef(pred[:, k], y_test[:, k])[0, 1] for k in kept])), 3)


def class_decoding(workdir: Path, subject: str, alpha: float = 100.0, seed: int = 0) -> dict:
    """Object classes (``class_area``) decoded from each group's voxels; shuffled control."""
    aligned = open_store(workdir / f"results/{subject}/aligned.zarr")
    truth = open_store(workdir / "resources/demo/ground_truth.zarr")
    group = truth["area_group"][:].astype(object)[aligned["grayordinate"][:]]

    def classes(split: str) -> np.ndarray:
        segments, clips = aligned[f"{split}/segment"][:], aligned[f"{split}/clip"][:]
        areas = {s: truth[f"stimulus/{s}/class_area"][:] for s in set(segments.tolist())}
        return np.stack([areas[s][c] for s, c in zip(segments, clips, strict=True)])

    x, x_test = aligned["train/fmri"][:], aligned["test/fmri"][:]
    y, y_test = classes("train"), classes("test")
    rng = np.random.default_rng(seed)
    shuffles = [y[rng.permutation(len(y))] for _ in range(20)]
    result = {}
    for name in GROUPS:
        cols = np.flatnonzero(group == name)
        fifty = rng.choice(cols, min(50, len(cols)), replace=False)
        result[name] = {
            "voxels": len(cols),
            "r": _ridge_r(x[:, cols], y, x_test[:, cols], y_test, alpha),
            "r_50_voxels": _ridge_r(x[:, fifty], y, x_test[:, fifty], y_test, alpha),
            "r_shuffled_mean_of_20": round(
                float(
                    np.mean(
                        [_ridge_r(x[:, cols], s, x_test[:, cols], y_test, alpha) for s in shuffles]
                    )
                ),
                3,
            ),
        }
    return result


def run_variant(workdir: Path, subject: str, overrides: dict, permutations: int) -> dict:
    aligned = workdir / f"results/{subject}/aligned.zarr"
    cache = workdir / "results/cache"
    truth = open_store(workdir / "resources/demo/ground_truth.zarr")
    columns = open_store(aligned)["grayordinate"][:]
    group = truth["area_group"][:].astype(object)[columns]
    areas = truth["area"][:].astype(object)[columns]
    result = {"overrides": overrides}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pr_settings = _settings("perception", overrides["perception"])
        rows = train_perception(
            aligned,
            cache / "vae_latents.zarr",
            tmp / "pr",
            settings=pr_settings,
            checkpoint_dir=tmp / "pr_ck",
            checkpoint_every=10**6,
            device="cpu",
        )
        result["perception"] = _last(rows, ("test_latent_top1", "test_fmri_top1", "test_mae"))
        sr_settings = _settings("semantic", overrides["semantic"])
        rows = train_semantic(
            aligned,
            cache / "clip_images.zarr",
            cache / "clip_text.zarr",
            tmp / "sr",
            settings=sr_settings,
            checkpoint_dir=tmp / "sr_ck",
            checkpoint_every=10**6,
            device="cpu",
        )
        result["semantic"] = _last(rows, ("test_keyframe_top1", "test_fmri_top1"), "align")
        # the interpret stage's own reading of each model's first ridge layer
        weights = _importances(tmp / "pr", tmp / "sr", aligned, ["ridge_weights"], "cpu")
        pr, sr = (weights["ridge_weights"][name] for name in ("perception", "semantic"))
    result["perception"] |= _groups(pr, group)
    result["semantic"] |= _groups(sr, group)
    maps = {"perception": scale_unit(pr), "semantic": scale_unit(sr)}
    for key, shuffled in (("roi_groups", False), ("roi_groups_shuffled_labels", True)):
        rows = roi_table(maps, areas, permutations=permutations, seed=0, shuffle_labels=shuffled)
        result[key] = {
            r["roi"]: {
                "n": r["n_selected"],
                "difference": round(r["difference"], 3),
                "p": round(r["p"], 4),
            }
            for r in rows
            if r["kind"] == "group"
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=OUTPUT / "demo")
    parser.add_argument("--subject", default="subject1")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--permutations", type=int, default=4000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"class_decoding": class_decoding(args.workdir, args.subject)}
    print("class_decoding", result["class_decoding"], flush=True)
    for name in args.variants:
        result[name] = run_variant(args.workdir, args.subject, VARIANTS[name], args.permutations)
        print(name, result[name], flush=True)
    report("tiny_training", result)


if __name__ == "__main__":
    main()
