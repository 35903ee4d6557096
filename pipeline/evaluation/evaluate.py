"""Evaluation stages: every chosen protocol's metrics for every test clip of a set of
reconstructions (:mod:`pipeline.evaluation.protocols`).

One code path scores our videos (``results/{subject}/videos``), their fusion,
the ablation variants and folders of reconstructions made by other systems,
so the numbers are comparable. Each run writes a directory with

* ``metrics.zarr``: one array per column ``{protocol}.{metric}`` over the
  clips, its value under a shuffled pairing of predictions with ground truths
  (the control), the N-way columns' per-clip binomial sds, the clip
  identities, the summary, what each protocol read, settings, timing and
  provenance;
* ``clips.csv``: the same per-clip table; ``summary.csv``: per column the
  mean, sd, sem and bootstrap 95 % CI over clips, the field's ± (N-way: the
  mean of the per-sample binomial sds; else the sd over clips), chance and
  the shuffled control.

Every model (the two classifiers and the protocols' CLIP models) is loaded
once per stage, and only if a chosen protocol needs it.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from pipeline.errors import DataError
from pipeline.evaluation.metrics import (
    PSNR_MAX,
    binomial_sd,
    clip_pcc,
    flow_epe,
    hue_pcc,
    n_way_top1,
    optical_flows,
    psnr,
    retrieval_subsets,
    retrieval_top1,
    sample_frames,
    ssim,
)
from pipeline.evaluation.protocols import LOWER_IS_BETTER, Protocol, protocols
from pipeline.evaluation.summary import summarize
from pipeline.io.video import VIDEO_SUFFIXES, read_video
from pipeline.reconstructors.training import write_metrics
from pipeline.stores import atomic_output, create_array, open_store, provenance

__all__ = [
    "Reconstructions",
    "grid_border",
    "evaluate",
    "evaluate_retrieval",
    "external_reconstructions",
    "pipeline_reconstructions",
    "read_summary",
    "resize_frames",
]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(?P<segment>.+)_clip(?P<clip>\d+)$")


@dataclass
class Reconstructions:
    """Predicted videos and the ground-truth clips they are scored against.

    ``predictions`` uint8 (clips, frames, h, w, 3); ``ground_truth`` uint8
    (clips, gt_frames, H, W, 3); ``names`` one identity per clip;
    ``source`` what was read (recorded in the output). ``halves``: for
    side-by-side files, ``(predictions, ground_truth)`` as the peers' scripts
    cut them, into equal parts with the grid border (:meth:`view`).
    """

    names: list[str]
    predictions: np.ndarray
    ground_truth: np.ndarray
    source: dict = field(default_factory=dict)
    halves: tuple[np.ndarray, np.ndarray] | None = None

    def __post_init__(self):
        if not len(self.names) == len(self.predictions) == len(self.ground_truth):
            raise DataError(
                f"{self.source.get('path', 'reconstructions')}: {len(self.names)} names, "
                f"{len(self.predictions)} predictions, {len(self.ground_truth)} ground truths"
            )
        if len(self.names) == 0:
            raise DataError(f"{self.source.get('path', 'reconstructions')}: no clips to evaluate")

    def view(self, panels: str) -> tuple[str, np.ndarray, np.ndarray]:
        """``(view, predictions, ground_truth)`` for a protocol's panel handling: ``halves``
        where the files were cut in halves (side by side), else the aligned panels.

        Parameters
        ----------
        panels : str
            The protocol's panel handling: ``halves`` or ``aligned``.

        Returns
        -------
        view : str
            ``halves`` or ``aligned``, the view given.
        predictions : ndarray of shape (n_clips, n_frames, h, w, 3), uint8
            The predicted videos of that view.
        ground_truth : ndarray of shape (n_clips, gt_frames, H, W, 3), uint8
            The ground-truth clips of that view.
        """
        if panels == "halves" and self.halves is not None:
            return "halves", *self.halves
        return "aligned", self.predictions, self.ground_truth


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
    """Our videos (synthesize_videos or fuse_videos output) and their test clips' frames.

    Parameters
    ----------
    videos : str or PathLike
        A ``synthesize_videos`` or ``fuse_videos`` output directory holding ``frames.zarr``.
    frames_dir : str or PathLike
        The extracted frames, one ``{segment}.zarr`` per segment.

    Returns
    -------
    Reconstructions
        Predictions uint8 (n_clips, n_frames, h, w, 3) and ground truths uint8
        (n_clips, gt_frames, H, W, 3), named ``{segment}_clip{NNN}``.

    Raises
    ------
    DataError
        When the store was written by another stage, or a clip has no ground-truth frames.
    """
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


#: Largest grid border :func:`grid_border` looks for (make_grid's default padding is 2).
MAX_BORDER = 8


def _grid_geometry(shape: tuple, panels: int, border: int) -> tuple[int, int] | None:
    """Panel (height, width) of ``panels`` side by side with a ``border``, or None."""
    height, width = shape[-3], shape[-2]
    inner, rest = divmod(width - border, panels)
    if rest or inner - border < 1 or height - 2 * border < 1:
        return None
    return height - 2 * border, inner - border


def _is_grid(stack: np.ndarray, panels: int, border: int, pad: int | None = None) -> bool:
    """Whether every frame has one uniform colour (``pad`` where given) in all border
    strips of such a grid."""
    geometry = _grid_geometry(stack.shape, panels, border)
    if geometry is None:
        return False
    if border == 0:
        return True
    _, w = geometry
    strips = [stack[..., :border, :, :], stack[..., -border:, :, :]]
    strips += [
        stack[..., :, i * (w + border) : i * (w + border) + border, :] for i in range(panels + 1)
    ]
    values = np.concatenate([x.reshape(-1, 3) for x in strips])
    return bool((values == (values[0] if pad is None else pad)).all())


def grid_border(stack: np.ndarray, panels: int) -> int:
    """The border of side-by-side frames written by ``torchvision.utils.make_grid``.

    ``make_grid(padding=p)`` lays ``panels`` images of (h, w) on a canvas of
    (h + 2p, panels (w + p) + p), every strip between and around them of the
    pad colour, black by default (MinD-Video's and NEURONS' ``save_videos_grid``
    keep it). The smallest p ≤ :data:`MAX_BORDER` whose strips are black in
    every frame of every file; 0 where none is. Content with black bars where
    the strips would be can pass for a border: set the border explicitly then.

    Parameters
    ----------
    stack : ndarray of shape (n_files, n_frames, height, width, 3), uint8
        The files' frames, all of one shape.
    panels : int
        Panels side by side in each frame.

    Returns
    -------
    int
        The border p, in pixels (0 when no black border is found).
    """
    for border in range(1, MAX_BORDER + 1):
        if _is_grid(stack, panels, border, pad=0):
            return border
    return 0


def _grid_panels(stack: np.ndarray, panels: int, border: int) -> list[np.ndarray]:
    """Each panel of a grid, cropped inside its border."""
    h, w = _grid_geometry(stack.shape, panels, border)
    top = border
    return [
        stack[..., top : top + h, border + i * (w + border) : border + i * (w + border) + w, :]
        for i in range(panels)
    ]


def external_reconstructions(
    folder: str | os.PathLike,
    *,
    layout: str = "side_by_side",
    panels: int = 2,
    gt_panel: int = 0,
    pred_panel: int = 1,
    border: int | str = "auto",
    frames_dir: str | os.PathLike | None = None,
) -> Reconstructions:
    """Reconstructions made elsewhere: one file per clip in ``folder``.

    ``side_by_side``: each file holds ``panels`` panels side by side (the
    convention of MinD-Video's and NEURONS' GIFs); the ground truth is panel
    ``gt_panel``, the prediction panel ``pred_panel``. The panels are cropped
    inside the grid ``border`` (``torchvision.utils.make_grid``'s padding;
    ``"auto"``: :func:`grid_border`); ``halves`` keeps the frame cut into
    equal parts with the border, as the peers' scripts cut it
    (``np.split(gif, 2, axis=2)``). ``separate``: files
    named ``{segment}_clip{NNN}`` (our videos' naming), scored against the
    ground-truth frames in ``frames_dir``.

    Parameters
    ----------
    folder : str or PathLike
        A folder of video files (GIF, MP4, ...) of one shape, one per clip.
    layout : str
        ``side_by_side`` or ``separate``.
    panels : int
        Panels per frame of the ``side_by_side`` layout.
    gt_panel, pred_panel : int
        Index of the ground-truth and of the predicted panel, from the left.
    border : int or "auto"
        Grid border in pixels, or ``"auto"`` to detect it (:func:`grid_border`).
    frames_dir : str or PathLike, optional
        Our extracted frames; needed by the ``separate`` layout.

    Returns
    -------
    Reconstructions
        Predictions and ground truths uint8 (n_clips, n_frames, h, w, 3), named after
        the files' stems, in natural order of the names.

    Raises
    ------
    DataError
        For a missing or empty folder, files of different shapes, a width that does not
        split into ``panels``, a given ``border`` the frames do not have, or ``separate``
        files not named ``{segment}_clip{NNN}``.
    ValueError
        For an unknown ``layout``, or ``separate`` without ``frames_dir``.
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
        if border == "auto":
            border = grid_border(stack, panels)
        else:
            border = int(border)
            if not _is_grid(stack, panels, border):
                raise DataError(
                    f"{folder}: frames of {stack.shape[2]} x {width} px hold no {panels} "
                    f"panels with a uniform border of {border} px (evaluation.external border)"
                )
        panel = _grid_panels(stack, panels, border)
        return Reconstructions(
            names=[p.stem for p in files],
            predictions=panel[pred_panel],
            ground_truth=panel[gt_panel],
            source=source
            | {"panels": panels, "gt_panel": gt_panel, "pred_panel": pred_panel, "border": border},
            halves=(
                stack[:, :, :, pred_panel * w : (pred_panel + 1) * w],
                stack[:, :, :, gt_panel * w : (gt_panel + 1) * w],
            ),
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


def resize_frames(
    frames: np.ndarray, size: tuple[int, int], interpolation: str = "bicubic"
) -> np.ndarray:
    """uint8 (..., h, w, 3) → (..., *size, 3); unchanged when already that size.

    ``bicubic``: Pillow's (antialiased when shrinking); ``bilinear``: OpenCV's
    ``cv2.resize`` default, ``INTER_LINEAR``, as Mind-Animator calls it;
    ``torch_bilinear``: torchvision's ``Resize`` on float tensors without
    antialiasing (``F.interpolate``, bilinear, ``align_corners=False``), as
    MindEye2 resizes before its SSIM, returning float32 in [0, 1] (not
    rounded to uint8 again).

    Parameters
    ----------
    frames : ndarray of shape (..., h, w, 3), uint8
        Frames with any leading dimensions.
    size : tuple of int
        The target (height, width), in pixels.
    interpolation : str
        ``bicubic``, ``bilinear`` or ``torch_bilinear``.

    Returns
    -------
    ndarray of shape (..., height, width, 3)
        uint8; float32 in [0, 1] for ``torch_bilinear``. ``frames`` itself when already
        of that size.

    Raises
    ------
    ValueError
        For an unknown ``interpolation``.
    """
    if frames.shape[-3:-1] == tuple(size):
        return frames
    flat = frames.reshape(-1, *frames.shape[-3:])
    if interpolation == "torch_bilinear":
        x = torch.from_numpy(np.ascontiguousarray(flat)).permute(0, 3, 1, 2).float() / 255
        x = torch.nn.functional.interpolate(
            x, size=tuple(size), mode="bilinear", align_corners=False, antialias=False
        )
        return x.permute(0, 2, 3, 1).numpy().reshape(*frames.shape[:-3], *size, 3)
    if interpolation == "bicubic":
        from PIL import Image

        out = [np.asarray(Image.fromarray(f).resize(size[::-1], Image.BICUBIC)) for f in flat]
    elif interpolation == "bilinear":
        import cv2

        out = [cv2.resize(np.ascontiguousarray(f), size[::-1]) for f in flat]
    else:
        raise ValueError(
            f"unknown interpolation {interpolation!r}; known: bicubic, bilinear, torch_bilinear"
        )
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
    """The frame and video classifiers and the CLIP models of the chosen protocols, each
    loaded once per stage (and only if a protocol needs it)."""

    def __init__(
        self,
        classifiers: str | os.PathLike,
        clip: str | os.PathLike,
        device,
        dtype,
        gt_frames: int,
        chosen: list[Protocol],
        vifi_clip: str | os.PathLike | None = None,
    ):
        from pipeline.models.classifiers import ClipImageEncoder, FrameClassifier, VideoClassifier
        from pipeline.models.loading import load_clip

        classifiers = Path(classifiers)
        self.device, self.dtype = device, dtype
        self.paths = {}
        if any(p.n_way for p in chosen):
            self.frame = FrameClassifier(classifiers / "frame_classifier", device, dtype)
            self.video = VideoClassifier(
                classifiers / "video_classifier", device, dtype, num_frames=gt_frames
            )
            self.paths["classifiers"] = str(classifiers)
        self.clips = {}
        for role in dict.fromkeys(p.clip_model for p in chosen if p.clip_model):
            if role == "preset":
                model, _ = load_clip(clip, device, dtype)
                self.clips[role] = _OpenClipImages(model, device, dtype)
                self.paths["clip"] = str(clip)
            else:
                self.clips[role] = ClipImageEncoder(classifiers / role, device, dtype)
                self.paths[role] = str(classifiers / role)
        self.vifi = None
        if any(p.clip_gate is not None for p in chosen):
            if vifi_clip is None:
                log.warning(
                    "evaluation.vifi_clip is not set: the ViFi-CLIP gate of CLIP-pcc "
                    "(Mind-Animator) is skipped, so its CLIP-pcc is not gated"
                )
            else:
                from pipeline.models.vifi_clip import ViFiClip

                self.vifi = ViFiClip(vifi_clip, device, dtype)
                self.paths["vifi_clip"] = str(vifi_clip)


class _OpenClipImages:
    """The preset's OpenCLIP model as an image encoder (pooled embeddings)."""

    def __init__(self, model, device, dtype):
        self.model, self.device, self.dtype = model, device, dtype

    def embeds(self, frames: np.ndarray, batch_size: int) -> np.ndarray:
        from pipeline.caches import clip_image_embeds

        return clip_image_embeds(self.model, frames, self.device, self.dtype, batch_size).numpy()


def _softmax(logits: np.ndarray) -> np.ndarray:
    return torch.from_numpy(logits).double().softmax(-1).numpy()


def _frame_metrics(pred: np.ndarray, gt: np.ndarray, protocol: Protocol) -> dict[str, float]:
    """The metrics of a protocol that compare frame pairs (all but EPE)."""
    pairs = list(zip(pred, gt, strict=True))
    first = pairs[: protocol.first_frames] if protocol.first_frames else pairs
    out = {f"ssim_{v}": np.mean([ssim(a, b, v) for a, b in first]) for v in protocol.ssim}
    if protocol.psnr:
        out["psnr"] = np.mean([psnr(a, b) for a, b in pairs])
    if protocol.hue:
        out["hue_pcc"] = np.mean([hue_pcc(a, b, rgb_as_bgr=protocol.rgb_as_bgr) for a, b in first])
    return out


def _pixel_row(i: int, pred, gt, pairing, protocol: Protocol, flows) -> dict[str, float]:
    """The pixel metrics of prediction ``i`` against ground truth ``pairing[i]``."""
    out = _frame_metrics(pred[i], gt[pairing[i]], protocol)
    if protocol.epe:
        out["epe"] = flow_epe(flows["pred"][i], flows["gt"][pairing[i]])
    return out


def _workers() -> int:
    """Threads for the per-clip pixel metrics: the CPUs this process may use (OpenCV's
    optical flow and most of the filtering release the GIL)."""
    return max(1, len(os.sched_getaffinity(0)))


def _flows(frames: np.ndarray, protocol: Protocol) -> np.ndarray:
    """A clip's optical flows at the protocol's EPE size."""
    side = (protocol.epe_size,) * 2 if protocol.epe_size else frames.shape[1:3]
    resized = resize_frames(frames, side, protocol.interpolation)
    return optical_flows(resized, rgb_as_bgr=protocol.rgb_as_bgr)


def _n_way_metrics(
    pred_probs: np.ndarray, gt_probs: np.ndarray, settings: dict, per_clip: int
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """N-way top-1 per clip (frame metrics: the mean over the clip's frames) and each
    clip's mean of its samples' binomial sds (the ± the peers print is their mean)."""
    accuracy, spread = {}, {}
    for n in settings["n_way"]:
        per_sample = n_way_top1(
            pred_probs, gt_probs, n, trials=settings["trials"], seed=settings["seed"]
        )
        accuracy[f"{n}way"] = per_sample.reshape(-1, per_clip).mean(axis=1)
        sd = binomial_sd(per_sample, settings["trials"])
        spread[f"{n}way"] = sd.reshape(-1, per_clip).mean(axis=1)
    return accuracy, spread


@dataclass
class Scores:
    """What :func:`compute_metrics` gives: per-clip metrics ``{protocol}.{metric}``, the same
    under the shuffled pairing, the N-way metrics' per-clip binomial sds, the frames each
    protocol compared, what each protocol read, and the seconds per metric family."""

    metrics: dict[str, np.ndarray] = field(default_factory=dict)
    control: dict[str, np.ndarray] = field(default_factory=dict)
    binomial_sd: dict[str, np.ndarray] = field(default_factory=dict)
    frame_indices: dict[str, list[int]] = field(default_factory=dict)
    protocols: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def time(self, family: str, begin: float) -> None:
        self.seconds[family] = self.seconds.get(family, 0.0) + time.perf_counter() - begin


def compute_metrics(
    data: Reconstructions, models: EvaluationModels, settings: dict, chosen: list[Protocol]
) -> Scores:
    """Per-clip metrics of every chosen protocol, and the same under a shuffled pairing.

    Model outputs are shared between protocols that read the same frames.
    CLIP-pcc scores the prediction alone and has no control.
    """
    n = len(data.names)
    batch = settings["batch_size"]
    pairings = {
        "matched": np.arange(n),
        "control": _derangement(n, np.random.default_rng(settings["seed"])),
    }
    scores = Scores()
    probabilities, embeddings = {}, {}
    for protocol in chosen:
        view, predictions, gt = data.view(protocol.panels)
        n_pred, n_gt = predictions.shape[1], gt.shape[1]
        sampling = protocol.frame_sampling or settings["frame_sampling"]
        indices = np.arange(n_gt) if n_pred == n_gt else sample_frames(n_pred, n_gt, sampling)
        pred = predictions[:, indices]
        key = (view, tuple(indices.tolist()))
        scores.frame_indices[protocol.name] = indices.tolist()
        scores.protocols[protocol.name] = {"view": view, "frame_sampling": sampling}
        results = {"matched": {}, "control": {}}

        if protocol.n_way:  # semantic: the classifiers' probabilities, N-way on each pairing
            begin = time.perf_counter()
            if key not in probabilities:
                frame_gt = _softmax(models.frame.logits(gt.reshape(-1, *gt.shape[2:]), batch))
                probabilities[key] = (
                    _softmax(models.frame.logits(pred.reshape(-1, *pred.shape[2:]), batch)),
                    frame_gt.reshape(n, n_gt, -1),
                    _softmax(models.video.logits(pred, batch)),
                    _softmax(models.video.logits(gt, batch)),
                )
            frame_pred, frame_gt, video_pred, video_gt = probabilities[key]
            for name, pairing in pairings.items():
                for kind, (p, g, per_clip) in {
                    "video": (video_pred, video_gt[pairing], 1),
                    "frame": (frame_pred, frame_gt[pairing].reshape(n * n_gt, -1), n_gt),
                }.items():
                    accuracy, spread = _n_way_metrics(p, g, settings, per_clip)
                    results[name] |= {f"{kind}_{k}": v for k, v in accuracy.items()}
                    if name == "matched":
                        scores.binomial_sd |= {
                            f"{protocol.name}.{kind}_{k}": v for k, v in spread.items()
                        }
            scores.time("classifiers", begin)

        if protocol.ssim or protocol.psnr or protocol.epe or protocol.hue:
            begin = time.perf_counter()
            size = protocol.size or settings["size"]
            side = (size, size) if size else tuple(pred.shape[2:4])
            pred_px = resize_frames(pred, side, protocol.interpolation)
            gt_px = resize_frames(gt, side, protocol.interpolation)
            scores.protocols[protocol.name] |= {"size": list(side)}
            desc = f"{protocol.name} pixel metrics"
            # each clip's flows once: EPE of any pairing compares them
            flows = {"pred": [], "gt": []} if protocol.epe else None
            total = (4 if protocol.epe else 2) * n
            with (
                ThreadPoolExecutor(_workers()) as pool,
                tqdm(total=total, desc=desc, unit="clip") as progress,
            ):
                if protocol.epe:
                    for which, videos in (("pred", pred_px), ("gt", gt_px)):
                        for flow in pool.map(partial(_flows, protocol=protocol), videos):
                            flows[which].append(flow)
                            progress.update()
                for name, pairing in pairings.items():
                    row = partial(
                        _pixel_row, pred=pred_px, gt=gt_px, pairing=pairing, protocol=protocol
                    )
                    rows = []
                    for values in pool.map(partial(row, flows=flows), range(n)):
                        rows.append(values)
                        progress.update()
                    results[name] |= {m: np.array([r[m] for r in rows]) for m in rows[0]}
            scores.time("pixel", begin)

        if protocol.clip_pcc:  # spatiotemporal: the prediction's frames alone
            begin = time.perf_counter()
            frames = predictions if protocol.clip_frames == "generated" else pred
            clip_key = (protocol.clip_model, view, protocol.clip_frames, key[1])
            if clip_key not in embeddings:
                flat = frames.reshape(-1, *frames.shape[2:])
                embeddings[clip_key] = models.clips[protocol.clip_model].embeds(flat, batch)
            embeds = embeddings[clip_key].reshape(n, frames.shape[1], -1)
            gate = _vifi_gate(protocol, models, frames, gt, batch)
            scores.protocols[protocol.name]["clip_gate"] = gate["status"]
            for variant in protocol.clip_pcc:
                values = np.array([clip_pcc(e, variant) for e in embeds])
                if gate["similarity"] is not None:  # Mind-Animator: <= threshold scores 0
                    values = np.where(gate["similarity"] <= protocol.clip_gate, 0.0, values)
                results["matched"][f"clip_pcc_{variant}"] = values
            scores.time("clip", begin)

        order = protocol.video_metrics(settings["n_way"])  # the tables' order
        for name, target in (("matched", scores.metrics), ("control", scores.control)):
            target |= {
                f"{protocol.name}.{m}": results[name][m] for m in order if m in results[name]
            }
    return scores


def _vifi_gate(protocol: Protocol, models: EvaluationModels, pred, gt, batch: int) -> dict:
    """ViFi-CLIP's video similarity of each prediction to its ground truth, for protocols
    that gate CLIP-pcc by it; skipped (recorded) where its weights are not given."""
    if protocol.clip_gate is None:
        return {"status": "none", "similarity": None}
    if models.vifi is None:
        return {"status": "skipped: evaluation.vifi_clip is not set", "similarity": None}
    similarity = models.vifi.similarity(pred, gt, batch, swap_pred=protocol.rgb_as_bgr)
    return {
        "status": f"applied: {int((similarity <= protocol.clip_gate).sum())} clips zeroed",
        "similarity": similarity,
    }


#: How the ± of the tables is computed, per kind of metric.
PM_KINDS = {
    "binomial": "mean over samples of each sample's binomial sd over the trials (the peers')",
    "sd": "sd over clips",
}


def summary_rows(scores: Scores, settings: dict, chance: dict | None = None) -> list[dict]:
    """One row per metric ``{protocol}.{metric}``: mean, sd, sem, bootstrap CI over clips,
    the field's ± (N-way: the mean of the per-sample binomial sds; else the sd over
    clips), chance and the shuffled control."""
    rows = []
    for name, values in scores.metrics.items():
        protocol, metric = name.split(".", 1)
        row = {"metric": name, "protocol": protocol} | summarize(
            values, n_resamples=settings["bootstrap_resamples"], seed=settings["seed"]
        )
        n_way = re.fullmatch(r"(video|frame)_(\d+)way", metric)
        row["higher_is_better"] = metric not in LOWER_IS_BETTER
        if name in scores.binomial_sd:
            row["field_pm"], row["pm_kind"] = float(scores.binomial_sd[name].mean()), "binomial"
        else:
            row["field_pm"], row["pm_kind"] = row["std"], "sd"
        # the protocol's chance: any of the 3 ground-truth classes may beat the N - 1 distractors
        row["chance"] = 3 / (int(n_way[2]) + 2) if n_way else (chance or {}).get(name)
        if name in scores.control:
            shuffled = summarize(
                scores.control[name],
                n_resamples=settings["bootstrap_resamples"],
                seed=settings["seed"],
            )
            row |= {f"control_{k}": shuffled[k] for k in ("mean", "ci_low", "ci_high")}
        else:
            row |= {"control_mean": None, "control_ci_low": None, "control_ci_high": None}
        rows.append(row)
    return rows


def read_summary(directory: str | os.PathLike) -> dict[str, dict]:
    """``summary.csv`` of an evaluation directory as ``{metric: row}`` (numbers as floats).

    Parameters
    ----------
    directory : str or PathLike
        An evaluation output directory.

    Returns
    -------
    dict of str to dict
        Per metric ``{protocol}.{metric}``, its row: mean, sd, CI, field's ±, chance and
        control, numbers as floats (None where empty).

    Raises
    ------
    DataError
        When ``summary.csv`` is missing.
    """
    path = Path(directory) / "summary.csv"
    if not path.is_file():
        raise DataError(f"{path}: missing; run the evaluation rule first")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    text = ("metric", "protocol", "pm_kind")
    return {r["metric"]: {k: (v if k in text else _cell(v)) for k, v in r.items()} for r in rows}


def _cell(value: str):
    """A summary.csv cell: empty → None, True/False → bool, else float."""
    special = {"": None, "True": True, "False": False}
    return special[value] if value in special else float(value)


def _write_evaluation(
    output: Path,
    stage: str,
    names: list[str],
    scores: Scores,
    rows: list[dict],
    attrs: dict,
    params: dict,
    inputs: list[str],
) -> None:
    with atomic_output(output) as tmp:
        tmp.mkdir(parents=True)
        store = zarr.open_group(tmp / "metrics.zarr", mode="w")
        create_array(store, "name", data=np.array(names, dtype=str), dims=["clip"])
        for prefix, arrays in (
            ("", scores.metrics),
            ("control_", scores.control),
            ("binomial_sd_", scores.binomial_sd),
        ):
            for name, values in arrays.items():
                data = np.asarray(values, dtype=np.float64)
                create_array(store, f"{prefix}{name}", data=data, dims=["clip"])
        store.attrs["summary"] = rows
        store.attrs.update(attrs)
        store.attrs["provenance"] = provenance(stage, params, inputs)
        table = [
            {"clip": c} | {k: float(v[i]) for k, v in scores.metrics.items()}
            for i, c in enumerate(names)
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
    """Score ``data`` under each protocol of ``settings["protocols"]``; write ``output``
    (metrics.zarr, clips.csv, summary.csv) and return the summary rows.

    Parameters
    ----------
    data : Reconstructions
        The predictions and ground truths to score.
    output : str or PathLike
        The output directory (written atomically).
    classifiers : str or PathLike
        Directory of the frame and video classifiers and the protocols' CLIP image encoders.
    clip : str or PathLike
        The preset's OpenCLIP model, for protocols whose CLIP model is ``preset``.
    settings : dict
        The ``evaluation`` configuration: ``protocols``, ``n_way``, ``trials``, ``seed``,
        ``batch_size``, ``size``, ``frame_sampling``, ``bootstrap_resamples``, optional
        ``vifi_clip``.
    device : torch.device
        Where the models run.
    dtype : torch.dtype
        The models' precision.
    stage : str
        The stage name recorded in the provenance.

    Returns
    -------
    list of dict
        One summary row per metric ``{protocol}.{metric}`` (as in ``summary.csv``).

    Raises
    ------
    ValueError
        When no chosen protocol scores videos.
    DataError
        With fewer than two clips (the shuffled control needs two).
    """
    started = time.perf_counter()
    chosen = [p for p in protocols(settings["protocols"]) if p.video_metrics(settings["n_way"])]
    if not chosen:
        raise ValueError(f"none of the protocols {settings['protocols']} scores videos")
    models = EvaluationModels(
        classifiers,
        clip,
        device,
        dtype,
        data.ground_truth.shape[1],
        chosen,
        settings.get("vifi_clip"),
    )
    loaded = time.perf_counter()
    scores = compute_metrics(data, models, settings, chosen)
    rows = summary_rows(scores, settings)
    finished = time.perf_counter()
    n = len(data.names)
    attrs = {
        "source": data.source,
        "protocols": {
            p.name: scores.protocols[p.name]
            | {"reproduces": p.reproduces, "frame_indices": scores.frame_indices[p.name]}
            for p in chosen
        },
        "prediction_shape": list(data.predictions.shape[1:]),
        "ground_truth_shape": list(data.ground_truth.shape[1:]),
        "psnr_max": PSNR_MAX,
        "pm_kinds": PM_KINDS,
        "timing": {
            "load_s": round(loaded - started, 3),
            "metrics_s": round(finished - loaded, 3),
            "per_clip_s": round((finished - loaded) / n, 4),
            **{f"{k}_s": round(v, 3) for k, v in scores.seconds.items()},
            "clips": n,
            "device": str(device),
        },
    }
    if hasattr(models, "frame"):
        attrs["classes"] = {"frame": models.frame.n_classes, "video": models.video.n_classes}
    for row in rows:
        log.info(
            "%-36s %.4f ± %.4f (%s) [%.4f, %.4f]  control %s",
            row["metric"],
            row["mean"],
            row["field_pm"],
            row["pm_kind"],
            row["ci_low"],
            row["ci_high"],
            row["control_mean"],
        )
    _write_evaluation(
        Path(output),
        stage,
        data.names,
        scores,
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
    """Keyframe and fMRI retrieval top-1 of a subject's Semantic Reconstructor, under each
    protocol of ``settings["protocols"]`` that has retrieval.

    The SR's fMRI embeddings against the cached CLIP tokens of each test
    clip's first keyframe candidate: ``neuroclips`` within consecutive parts
    of at most ``settings["retrieval_pool"]`` clips (paper appendix C.6),
    ``mindeye2`` in its 30 random subsets of 300
    (:func:`~pipeline.evaluation.metrics.retrieval_subsets`). The control
    pairs each fMRI embedding with another clip's keyframe.

    MindEye2's ``batchwise_cosine_similarity`` returns the transpose of its
    arguments' similarity, so what its code (and the official NeuroClips
    code, which calls it) prints as "fwd" is ``fmri_top1`` here, and "bwd" is
    ``keyframe_top1``.

    Parameters
    ----------
    semantic : str or PathLike
        The ``predict_semantic`` store: ``fmri_embeds`` (n_clips, n_tokens, width)
        (256 x 1664 at paper size), ``segment`` and ``clip``.
    clip_cache : str or PathLike
        The ``cache_clip_images`` store: ``tokens`` float16 (n_rows, n_candidates,
        n_tokens, width); the first candidate is the target.
    output : str or PathLike
        The output directory (written atomically).
    settings : dict
        The ``evaluation`` configuration: ``protocols``, ``retrieval_pool``,
        ``bootstrap_resamples``, ``seed``.

    Returns
    -------
    list of dict
        One summary row per metric (``{protocol}.keyframe_top1``, ``{protocol}.fmri_top1``),
        its chance the mean of 1 / pool size.

    Raises
    ------
    ValueError
        When no chosen protocol has retrieval.
    """
    from types import SimpleNamespace

    from pipeline.generation.stages import video_name
    from pipeline.reconstructors.data import cache_rows

    chosen = [p for p in protocols(settings["protocols"]) if p.retrieval]
    if not chosen:
        raise ValueError(f"none of the protocols {settings['protocols']} has retrieval")
    store = open_store(semantic, stage="predict_semantic")
    segments = [str(s) for s in store["segment"][:]]
    clips = store["clip"][:].astype(int)
    clips_of = SimpleNamespace(segment=np.array(segments), clip=clips)
    rows = cache_rows(clip_cache, clips_of, "cache_clip_images")
    target = open_store(clip_cache, stage="cache_clip_images")["tokens"].oindex[rows, 0]
    pred = np.asarray(store["fmri_embeds"][:], dtype=np.float32)
    pairing = _derangement(len(pred), np.random.default_rng(settings["seed"]))
    scores, chance, attrs = Scores(), {}, {}
    pool = settings["retrieval_pool"]
    for protocol in chosen:
        for into, paired in ((scores.metrics, target), (scores.control, target[pairing])):
            if protocol.retrieval == "parts":
                forward, backward, part = retrieval_top1(pred, paired, pool)
                per_chance = float(np.mean(1 / part))
                attrs["part_size"] = part.tolist()
            else:
                forward, backward, per_chance = retrieval_subsets(pred, paired)
            into[f"{protocol.name}.keyframe_top1"] = np.asarray(forward, dtype=float)
            into[f"{protocol.name}.fmri_top1"] = np.asarray(backward, dtype=float)
        chance |= {f"{protocol.name}.{m}": per_chance for m in protocol.retrieval_metrics()}
    summary = summary_rows(scores, settings, chance)
    for row in summary:  # one draw per clip: no trials to take an sd over
        row["field_pm"], row["pm_kind"] = row["std"], "sd"
    names = [video_name(s, c) for s, c in zip(segments, clips, strict=True)]
    params = {
        k: settings[k] for k in ("protocols", "retrieval_pool", "bootstrap_resamples", "seed")
    }
    attrs["protocols"] = {p.name: {"reproduces": p.reproduces} for p in chosen}
    _write_evaluation(
        Path(output),
        "evaluate_retrieval",
        names,
        scores,
        summary,
        attrs,
        params,
        [str(semantic), str(clip_cache)],
    )
    return summary
