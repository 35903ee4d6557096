"""Evaluation stages: the field's metrics for every test clip of a set of reconstructions.

One code path scores our videos (``results/{subject}/videos``), their fusion,
the ablation variants and folders of reconstructions made by other systems,
so the numbers are comparable. Each run writes a directory with

* ``metrics.zarr``: one array per metric over the clips (and its value under
  a shuffled pairing of predictions with ground truths, the control), the
  clip identities, the summary, settings, timing and provenance;
* ``clips.csv``: the same per-clip table; ``summary.csv``: per metric the
  mean, sd, sem and bootstrap 95 % CI, the binomial ± of the N-way metrics,
  chance and the shuffled control.

Every model (the two classifiers, CLIP) is loaded once per stage.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from pipeline.errors import DataError
from pipeline.evaluation.metrics import (
    PSNR_MAX,
    binomial_se,
    clip_pcc,
    epe,
    hue_similarity,
    n_way_top1,
    psnr,
    retrieval_top1,
    sample_frames,
    ssim,
)
from pipeline.evaluation.summary import summarize
from pipeline.io.video import VIDEO_SUFFIXES, read_video
from pipeline.reconstructors.training import write_metrics
from pipeline.stores import atomic_output, create_array, open_store, provenance

__all__ = [
    "Reconstructions",
    "evaluate",
    "evaluate_retrieval",
    "external_reconstructions",
    "pipeline_reconstructions",
    "read_summary",
    "resize_frames",
]

log = logging.getLogger(__name__)

#: Metrics and whether higher is better, in the order of the tables (paper Table 1 first).
PIXEL_METRICS = {
    "ssim_rgb_uniform": True,
    "ssim_gray_gaussian": True,
    "psnr": True,
    "epe": False,
    "hue_pcc": True,
}
CLIP_METRICS = {"clip_pcc_adjacent": True, "clip_pcc_all_pairs": True}
_NAME = re.compile(r"^(?P<segment>.+)_clip(?P<clip>\d+)$")


@dataclass
class Reconstructions:
    """Predicted videos and the ground-truth clips they are scored against.

    ``predictions`` uint8 (clips, frames, h, w, 3); ``ground_truth`` uint8
    (clips, gt_frames, H, W, 3); ``names`` one identity per clip;
    ``source`` what was read (recorded in the output).
    """

    names: list[str]
    predictions: np.ndarray
    ground_truth: np.ndarray
    source: dict = field(default_factory=dict)

    def __post_init__(self):
        if not len(self.names) == len(self.predictions) == len(self.ground_truth):
            raise DataError(
                f"{self.source.get('path', 'reconstructions')}: {len(self.names)} names, "
                f"{len(self.predictions)} predictions, {len(self.ground_truth)} ground truths"
            )
        if len(self.names) == 0:
            raise DataError(f"{self.source.get('path', 'reconstructions')}: no clips to evaluate")


def _ground_truth(frames_dir: str | os.PathLike, segments, clips, what: str) -> np.ndarray:
    """The extracted frames of each (segment, clip) from ``results/frames/{segment}.zarr``."""
    stores: dict[str, zarr.Group] = {}
    out = []
    for segment, clip in zip(segments, clips, strict=True):
        if segment not in stores:
            path = Path(frames_dir) / f"{segment}.zarr"
            if not path.exists():
                raise DataError(f"{what}: segment {segment!r} has no frame store {path}")
            stores[segment] = open_store(path, stage="extract_frames")
        frames = stores[segment]["frames"]
        if not 0 <= int(clip) < frames.shape[0]:
            raise DataError(
                f"{what}: clip {int(clip)} of {segment!r} does not exist "
                f"({frames.shape[0]} clips in {frames_dir}/{segment}.zarr)"
            )
        out.append(frames[int(clip)])
    return np.stack(out)


def pipeline_reconstructions(
    videos: str | os.PathLike, frames_dir: str | os.PathLike
) -> Reconstructions:
    """Our videos (synthesize_videos or fuse_videos output) and their test clips' frames."""
    from pipeline.generation.stages import video_name

    path = Path(videos) / "frames.zarr"
    store = open_store(path)
    stage = store.attrs["provenance"]["stage"]
    if stage not in ("synthesize_videos", "fuse_videos"):
        raise DataError(f"{path}: written by {stage!r}, not by synthesize_videos or fuse_videos")
    segments = [str(s) for s in store["segment"][:]]
    clips = store["clip"][:].astype(int)
    return Reconstructions(
        names=[video_name(s, c) for s, c in zip(segments, clips, strict=True)],
        predictions=store["videos"][:],
        ground_truth=_ground_truth(frames_dir, segments, clips, str(path)),
        source={"path": str(videos), "stage": stage},
    )


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.stem)]


def external_reconstructions(
    folder: str | os.PathLike,
    *,
    layout: str = "side_by_side",
    panels: int = 2,
    gt_panel: int = 0,
    pred_panel: int = 1,
    frames_dir: str | os.PathLike | None = None,
) -> Reconstructions:
    """Reconstructions made elsewhere: one file per clip in ``folder``.

    ``side_by_side``: each file holds ``panels`` equal panels side by side
    (the convention of MinD-Video's GIFs); the ground truth is panel
    ``gt_panel``, the prediction panel ``pred_panel``. ``separate``: files
    named ``{segment}_clip{NNN}`` (our videos' naming), scored against the
    ground-truth frames in ``frames_dir``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: external reconstructions folder does not exist")
    files = sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES), key=_natural_key
    )
    if not files:
        raise DataError(f"{folder}: no {'/'.join(VIDEO_SUFFIXES)} files")
    videos = [read_video(p) for p in tqdm(files, desc="reading", unit="file")]
    shapes = {v.shape for v in videos}
    if len(shapes) > 1:
        odd = next(p for p, v in zip(files, videos, strict=True) if v.shape != videos[0].shape)
        raise DataError(
            f"{odd}: shape {shapes - {videos[0].shape}} differs from {files[0].name}'s "
            f"{videos[0].shape}; every file must have the same frames and size"
        )
    source = {"path": str(folder), "layout": layout, "files": len(files)}
    if layout == "side_by_side":
        width = videos[0].shape[2]
        if width % panels:
            raise DataError(f"{files[0]}: width {width} does not split into {panels} equal panels")
        w = width // panels
        stack = np.stack(videos)
        return Reconstructions(
            names=[p.stem for p in files],
            predictions=stack[:, :, :, pred_panel * w : (pred_panel + 1) * w],
            ground_truth=stack[:, :, :, gt_panel * w : (gt_panel + 1) * w],
            source=source | {"panels": panels, "gt_panel": gt_panel, "pred_panel": pred_panel},
        )
    if layout != "separate":
        raise ValueError(f"unknown layout {layout!r}; known: side_by_side, separate")
    if frames_dir is None:
        raise ValueError("the 'separate' layout needs frames_dir (our ground-truth frames)")
    parsed = [_NAME.match(p.stem) for p in files]
    bad = [p.name for p, m in zip(files, parsed, strict=True) if m is None]
    if bad:
        raise DataError(
            f"{folder}: {bad[:3]} are not named {{segment}}_clip{{NNN}} (e.g. test1_clip007.gif)"
        )
    segments = [m["segment"] for m in parsed]
    clips = [int(m["clip"]) for m in parsed]
    return Reconstructions(
        names=[p.stem for p in files],
        predictions=np.stack(videos),
        ground_truth=_ground_truth(frames_dir, segments, clips, str(folder)),
        source=source,
    )


def resize_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (..., h, w, 3) → (..., *size, 3), bicubic (PIL); unchanged when already that size."""
    from PIL import Image

    if frames.shape[-3:-1] == size:
        return frames
    flat = frames.reshape(-1, *frames.shape[-3:])
    out = [np.asarray(Image.fromarray(f).resize(size[::-1], Image.BICUBIC)) for f in flat]
    return np.stack(out).reshape(*frames.shape[:-3], *size, 3)


def _derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A random permutation without fixed points: the shuffled control's pairing."""
    if n < 2:
        raise DataError("the shuffled-pairing control needs at least two clips")
    while True:
        perm = rng.permutation(n)
        if not (perm == np.arange(n)).any():
            return perm


class EvaluationModels:
    """The frame and video classifiers and CLIP, loaded once per stage."""

    def __init__(
        self, classifiers: str | os.PathLike, clip: str | os.PathLike, device, dtype, gt_frames: int
    ):
        from pipeline.models.classifiers import FrameClassifier, VideoClassifier
        from pipeline.models.loading import load_clip

        classifiers = Path(classifiers)
        self.frame = FrameClassifier(classifiers / "frame_classifier", device, dtype)
        self.video = VideoClassifier(
            classifiers / "video_classifier", device, dtype, num_frames=gt_frames
        )
        self.clip, _ = load_clip(clip, device, dtype)
        self.device, self.dtype = device, dtype
        self.paths = {"classifiers": str(classifiers), "clip": str(clip)}


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.from_numpy(logits).double().softmax(-1).numpy()


def _pixel_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Pixel-level metrics of one clip: means over its frame pairs, EPE over its flows."""
    pairs = list(zip(pred, gt, strict=True))
    return {
        "ssim_rgb_uniform": np.mean([ssim(a, b, "rgb_uniform") for a, b in pairs]),
        "ssim_gray_gaussian": np.mean([ssim(a, b, "gray_gaussian") for a, b in pairs]),
        "psnr": np.mean([psnr(a, b) for a, b in pairs]),
        "epe": epe(pred, gt),
        "hue_pcc": np.mean([hue_similarity(a, b) for a, b in pairs]),
    }


def _n_way_metrics(
    prefix: str, pred_probs: np.ndarray, gt_probs: np.ndarray, settings: dict, per_clip: int
) -> dict[str, np.ndarray]:
    """N-way top-1 per clip (frame metrics: the mean over the clip's frames)."""
    out = {}
    for n in settings["n_way"]:
        accuracy = n_way_top1(
            pred_probs, gt_probs, n, trials=settings["trials"], seed=settings["seed"]
        )
        out[f"{prefix}_{n}way"] = accuracy.reshape(-1, per_clip).mean(axis=1)
    return out


def compute_metrics(
    data: Reconstructions, models: EvaluationModels, settings: dict
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, dict[str, float]]:
    """Per-clip metrics, the same under a shuffled pairing (control), and the frames used.

    Returns ``(metrics, control, frame_indices, seconds)``: ``seconds`` per
    metric family. CLIP-pcc scores the prediction alone and has no control.
    """
    n, n_pred = data.predictions.shape[:2]
    gt = data.ground_truth
    n_gt = gt.shape[1]
    indices = (
        np.arange(n_gt)
        if n_pred == n_gt
        else sample_frames(n_pred, n_gt, settings["frame_sampling"])
    )
    pred = data.predictions[:, indices]
    batch = settings["batch_size"]
    pairings = {
        "matched": np.arange(n),
        "control": _derangement(n, np.random.default_rng(settings["seed"])),
    }
    seconds = {}

    # semantic: the classifiers' probabilities, N-way on each pairing
    begin = time.perf_counter()
    frame_pred = _softmax(models.frame.logits(pred.reshape(-1, *pred.shape[2:]), batch))
    frame_gt = _softmax(models.frame.logits(gt.reshape(-1, *gt.shape[2:]), batch))
    frame_gt = frame_gt.reshape(n, n_gt, -1)
    video_pred = _softmax(models.video.logits(pred, batch))
    video_gt = _softmax(models.video.logits(gt, batch))
    results = {}
    for name, pairing in pairings.items():
        results[name] = _n_way_metrics(
            "video", video_pred, video_gt[pairing], settings, 1
        ) | _n_way_metrics(
            "frame", frame_pred, frame_gt[pairing].reshape(n * n_gt, -1), settings, n_gt
        )
    seconds["classifiers"] = time.perf_counter() - begin

    # pixel level, at the prediction's size (or evaluation.size)
    begin = time.perf_counter()
    size = settings["size"]
    side = (size, size) if size else tuple(pred.shape[2:4])
    pred_px, gt_px = resize_frames(pred, side), resize_frames(gt, side)
    with tqdm(total=2 * n, desc="pixel metrics", unit="clip") as progress:
        for name, pairing in pairings.items():
            rows = []
            for i in range(n):
                rows.append(_pixel_metrics(pred_px[i], gt_px[pairing[i]]))
                progress.update()
            results[name] |= {m: np.array([row[m] for row in rows]) for m in PIXEL_METRICS}
    seconds["pixel"] = time.perf_counter() - begin

    # spatiotemporal: CLIP-pcc of every generated frame
    from pipeline.caches import clip_image_embeds

    begin = time.perf_counter()
    frames = data.predictions.reshape(-1, *data.predictions.shape[2:])
    embeds = clip_image_embeds(models.clip, frames, models.device, models.dtype, batch)
    embeds = embeds.numpy().reshape(n, n_pred, -1)
    for variant in ("adjacent", "all_pairs"):
        results["matched"][f"clip_pcc_{variant}"] = np.array([clip_pcc(e, variant) for e in embeds])
    seconds["clip"] = time.perf_counter() - begin
    return results["matched"], results["control"], indices, seconds


def summary_rows(
    metrics: dict[str, np.ndarray], control: dict[str, np.ndarray], settings: dict
) -> list[dict]:
    """One row per metric: mean, sd, sem, bootstrap CI, binomial ±, chance and control."""
    rows = []
    for name, values in metrics.items():
        row = {"metric": name} | summarize(
            values, n_resamples=settings["bootstrap_resamples"], seed=settings["seed"]
        )
        n_way = re.fullmatch(r"(video|frame)_(\d+)way", name)
        row["higher_is_better"] = PIXEL_METRICS.get(name, CLIP_METRICS.get(name, True))
        row["binomial_se"] = binomial_se(row["mean"], settings["trials"]) if n_way else None
        # the protocol's chance: any of the 3 ground-truth classes may beat the N - 1 distractors
        row["chance"] = 3 / (int(n_way[2]) + 2) if n_way else None
        if name in control:
            shuffled = summarize(
                control[name], n_resamples=settings["bootstrap_resamples"], seed=settings["seed"]
            )
            row |= {f"control_{k}": shuffled[k] for k in ("mean", "ci_low", "ci_high")}
        else:
            row |= {"control_mean": None, "control_ci_low": None, "control_ci_high": None}
        rows.append(row)
    return rows


def read_summary(directory: str | os.PathLike) -> dict[str, dict]:
    """``summary.csv`` of an evaluation directory as ``{metric: row}`` (numbers as floats)."""
    path = Path(directory) / "summary.csv"
    if not path.is_file():
        raise DataError(f"{path}: missing; run the evaluation rule first")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        r["metric"]: {k: (v if k == "metric" else _cell(v)) for k, v in r.items()} for r in rows
    }


def _cell(value: str):
    """A summary.csv cell: empty → None, True/False → bool, else float."""
    special = {"": None, "True": True, "False": False}
    return special[value] if value in special else float(value)


def _write_evaluation(
    output: Path,
    stage: str,
    names: list[str],
    metrics: dict[str, np.ndarray],
    control: dict[str, np.ndarray],
    rows: list[dict],
    attrs: dict,
    params: dict,
    inputs: list[str],
) -> None:
    with atomic_output(output) as tmp:
        tmp.mkdir(parents=True)
        store = zarr.open_group(tmp / "metrics.zarr", mode="w")
        create_array(store, "name", data=np.array(names, dtype=str), dims=["clip"])
        for name, values in metrics.items():
            create_array(store, name, data=np.asarray(values, dtype=np.float64), dims=["clip"])
        for name, values in control.items():
            create_array(
                store, f"control_{name}", data=np.asarray(values, dtype=np.float64), dims=["clip"]
            )
        store.attrs["summary"] = rows
        store.attrs.update(attrs)
        store.attrs["provenance"] = provenance(stage, params, inputs)
        table = [
            {"clip": c} | {k: float(v[i]) for k, v in metrics.items()} for i, c in enumerate(names)
        ]
        write_metrics(table, tmp / "clips.csv")
        write_metrics(rows, tmp / "summary.csv")


def evaluate(
    data: Reconstructions,
    output: str | os.PathLike,
    *,
    classifiers: str | os.PathLike,
    clip: str | os.PathLike,
    settings: dict,
    device: torch.device,
    dtype: torch.dtype,
    stage: str = "evaluate_videos",
) -> list[dict]:
    """Score ``data``, write ``output`` (metrics.zarr, clips.csv, summary.csv), return summary."""
    started = time.perf_counter()
    models = EvaluationModels(classifiers, clip, device, dtype, data.ground_truth.shape[1])
    loaded = time.perf_counter()
    metrics, control, indices, seconds = compute_metrics(data, models, settings)
    rows = summary_rows(metrics, control, settings)
    finished = time.perf_counter()
    n = len(data.names)
    attrs = {
        "source": data.source,
        "frame_indices": indices.tolist(),
        "prediction_shape": list(data.predictions.shape[1:]),
        "ground_truth_shape": list(data.ground_truth.shape[1:]),
        "psnr_max": PSNR_MAX,
        "classes": {"frame": models.frame.n_classes, "video": models.video.n_classes},
        "timing": {
            "load_s": round(loaded - started, 3),
            "metrics_s": round(finished - loaded, 3),
            "per_clip_s": round((finished - loaded) / n, 4),
            **{f"{k}_s": round(v, 3) for k, v in seconds.items()},
            "clips": n,
            "device": str(device),
        },
    }
    for row in rows:
        log.info(
            "%-20s %.4f [%.4f, %.4f]  control %s",
            row["metric"],
            row["mean"],
            row["ci_low"],
            row["ci_high"],
            row["control_mean"],
        )
    _write_evaluation(
        Path(output),
        stage,
        data.names,
        metrics,
        control,
        rows,
        attrs,
        settings,
        [data.source["path"], *models.paths.values()],
    )
    return rows


def evaluate_retrieval(
    semantic: str | os.PathLike,
    clip_cache: str | os.PathLike,
    output: str | os.PathLike,
    *,
    settings: dict,
) -> list[dict]:
    """Keyframe and fMRI retrieval top-1 (appendix C.6) of a subject's Semantic Reconstructor.

    The SR's fMRI embeddings against the cached CLIP tokens of each test
    clip's first keyframe candidate, within consecutive parts of at most
    ``settings["retrieval_pool"]`` clips; the control pairs each fMRI
    embedding with another clip's keyframe.
    """
    from types import SimpleNamespace

    from pipeline.generation.stages import video_name
    from pipeline.reconstructors.data import cache_rows

    store = open_store(semantic, stage="predict_semantic")
    segments = [str(s) for s in store["segment"][:]]
    clips = store["clip"][:].astype(int)
    clips_of = SimpleNamespace(segment=np.array(segments), clip=clips)
    rows = cache_rows(clip_cache, clips_of, "cache_clip_images")
    target = open_store(clip_cache, stage="cache_clip_images")["tokens"].oindex[rows, 0]
    pred = np.asarray(store["fmri_embeds"][:], dtype=np.float32)
    forward, backward, part = retrieval_top1(pred, target, settings["retrieval_pool"])
    pairing = _derangement(len(pred), np.random.default_rng(settings["seed"]))
    c_forward, c_backward, _ = retrieval_top1(pred, target[pairing], settings["retrieval_pool"])
    metrics = {"keyframe_top1": forward.astype(float), "fmri_top1": backward.astype(float)}
    control = {"keyframe_top1": c_forward.astype(float), "fmri_top1": c_backward.astype(float)}
    summary = summary_rows(metrics, control, settings | {"trials": 1})
    for row in summary:
        row["binomial_se"] = None
        row["chance"] = float(np.mean(1 / part))
    names = [video_name(s, c) for s, c in zip(segments, clips, strict=True)]
    params = {k: settings[k] for k in ("retrieval_pool", "bootstrap_resamples", "seed")}
    _write_evaluation(
        Path(output),
        "evaluate_retrieval",
        names,
        metrics,
        control,
        summary,
        {"part_size": part.tolist()},
        params,
        [str(semantic), str(clip_cache)],
    )
    return summary
