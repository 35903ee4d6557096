"""Hemodynamic shift: pair every clip with the BOLD response ``shift_s`` later.

Clip ``i`` of a segment (stimulus time ``[i clip_s, (i + 1) clip_s)``) spans
the ``k = clip_s / TR`` volumes from ``i k`` counted from stimulus onset; it is
paired with those volumes moved ``shift_s / TR`` later, combined by their mean
or side by side (``alignment.combine``). The trailing volumes supply the
responses of the last clips, so every clip keeps its response (cc2017: 2-s
clips at TR 2 s, 240 clips per segment). Training repetitions stay separate
samples; test repetitions are averaged. Only selected vertices are kept.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction

import numpy as np
import zarr
from tqdm.auto import tqdm

from pipeline.stores import atomic_output, create_array, open_store, provenance

__all__ = ["COMBINE_RULES", "align_subject", "combine_volumes", "shift_volumes"]

#: How the volumes of a clip that spans several TRs combine (``alignment.combine``).
COMBINE_RULES = ("mean", "concat")

log = logging.getLogger(__name__)


def shift_volumes(shift_s: float, tr_s: float) -> int:
    """Convert a delay in seconds into whole volumes; raise if it is not a multiple of the TR.

    Parameters
    ----------
    shift_s : float, seconds
        Hemodynamic delay between a clip and its BOLD response.
    tr_s : float, seconds
        Repetition time of the fMRI runs.

    Returns
    -------
    int
        The delay in volumes, ``shift_s / tr_s``.

    Raises
    ------
    ValueError
        If ``shift_s`` is negative or not a whole multiple of ``tr_s`` (compared as
        exact decimal fractions).
    """
    ratio = Fraction(str(shift_s)) / Fraction(str(tr_s))
    if ratio.denominator != 1 or ratio < 0:
        raise ValueError(
            f"shift of {shift_s} s is not a non-negative whole number of TRs ({tr_s} s)"
        )
    return int(ratio)


def combine_volumes(data: np.ndarray, per_clip: int, rule: str) -> np.ndarray:
    """Combine the ``per_clip`` consecutive volumes of every clip.

    Parameters
    ----------
    data : ndarray of shape (..., n_clips * per_clip, n_vertices)
        Volumes in time order along the second-to-last axis.
    per_clip : int
        Volumes per clip.
    rule : {"mean", "concat"}
        ``mean``: their average; ``concat``: volume after volume along the last axis.

    Returns
    -------
    ndarray of shape (..., n_clips, n_vertices) or (..., n_clips, per_clip * n_vertices)
        ``data`` itself when ``per_clip`` is 1.

    Raises
    ------
    ValueError
        If ``rule`` is unknown or the volumes are not whole clips.
    """
    if rule not in COMBINE_RULES:
        raise ValueError(f"combine must be one of {COMBINE_RULES}, not {rule!r}")
    if per_clip == 1:
        return data
    *lead, n_time, n_vertices = data.shape
    if n_time % per_clip:
        raise ValueError(f"{n_time} volumes are not whole clips of {per_clip}")
    clips = data.reshape(*lead, n_time // per_clip, per_clip, n_vertices)
    if rule == "mean":
        return clips.mean(axis=-2, dtype=np.float64).astype(data.dtype)
    return clips.reshape(*lead, n_time // per_clip, per_clip * n_vertices)


def align_subject(
    preprocessed: str | os.PathLike,
    selection: str | os.PathLike,
    output: str | os.PathLike,
    *,
    train_segments: list[str],
    test_segments: list[str],
    shift_s: float,
    tr_s: float,
    clip_s: float | None = None,
    combine: str = "mean",
) -> None:
    """Write the aligned fMRI samples of one subject.

    Store layout::

        train/fmri        (sample, feature) float32  one sample per clip and repetition
        train/segment     (sample,) str
        train/clip        (sample,) int32   clip index within its segment
        train/repetition  (sample,) int32
        test/fmri         (sample, feature) float32  averaged over the repetitions present
        test/segment, test/clip, test/n_repetitions  (sample,)
        grayordinate      (vertex,) int64   CIFTI column of every selected vertex

    A feature is a selected vertex (``combine: mean``, or one volume per clip);
    with ``combine: concat`` the features are the vertices of the clip's first
    volume, then of its second, and so on (``volumes_per_clip`` attribute).

    Parameters
    ----------
    preprocessed : path
        The subject's ``preprocess`` store: ``runs/<segment>`` of shape
        (n_repetitions, n_clips + n_trailing, n_grayordinates).
    selection : path
        The subject's ``select_voxels`` store: boolean ``mask`` of shape
        (n_grayordinates,) and its ``grayordinate`` columns.
    output : path
        The ``align`` store to write (atomically).
    train_segments, test_segments : list of str
        Segment names of each split.
    shift_s : float, seconds
        Hemodynamic delay; a whole multiple of ``tr_s``.
    tr_s : float, seconds
        Repetition time.
    clip_s : float, seconds, optional
        Clip length, as preprocessed (default one TR).
    combine : {"mean", "concat"}
        How the volumes of one clip combine (:func:`combine_volumes`).

    Raises
    ------
    ValueError
        If the shift needs more trailing volumes than a run kept, or is not a
        non-negative whole number of TRs.
    """
    pre = open_store(preprocessed, stage="preprocess")
    sel = open_store(selection, stage="select_voxels")
    mask = sel["mask"][:]
    vertices = np.flatnonzero(mask)
    shift = shift_volumes(shift_s, tr_s)
    clip_s = tr_s if clip_s is None else clip_s
    per_clip = shift_volumes(clip_s, tr_s)

    def shifted(segment: str) -> tuple[zarr.Array, int]:
        runs = pre[f"runs/{segment}"]
        n_clips, n_trailing = runs.attrs["n_clips"], runs.attrs["n_trailing"]
        if runs.shape[1] != n_clips * per_clip + n_trailing:
            raise ValueError(
                f"{preprocessed}: runs/{segment} holds {runs.shape[1]} volumes, not the "
                f"{n_clips} clips of {per_clip} volumes and {n_trailing} trailing volumes of "
                f"clip_s = {clip_s} s; preprocess with the same alignment.clip_s"
            )
        if shift > n_trailing:
            raise ValueError(
                f"{preprocessed}: a shift of {shift_s} s ({shift} volumes) needs more than the "
                f"{n_trailing} trailing volumes kept for {segment}"
            )
        return runs, n_clips

    with atomic_output(output) as tmp:
        store = zarr.open_group(tmp, mode="w")
        for split, segments in (("train", train_segments), ("test", test_segments)):
            blocks, seg_col, clip_col, rep_col = [], [], [], []
            for segment in tqdm(segments, desc=f"align {split}", unit="segment"):
                runs, n_clips = shifted(segment)
                reps = runs.attrs["repetitions"]
                volumes = runs[:, shift : shift + n_clips * per_clip][..., vertices]
                data = combine_volumes(volumes, per_clip, combine)  # (rep, clip, feature)
                if split == "train":
                    blocks.append(data.reshape(-1, data.shape[-1]))
                    rep_col.append(np.repeat(reps, n_clips))
                    clip_col.append(np.tile(np.arange(n_clips), len(reps)))
                    seg_col.append(np.full(len(reps) * n_clips, segment))
                else:
                    blocks.append(data.mean(axis=0))
                    rep_col.append(np.full(n_clips, len(reps)))
                    clip_col.append(np.arange(n_clips))
                    seg_col.append(np.full(n_clips, segment))
                    log.info("%s: averaged %d repetitions %s", segment, len(reps), reps)
            fmri = np.concatenate(blocks).astype(np.float32)
            create_array(
                store,
                f"{split}/fmri",
                data=fmri,
                dims=["sample", "vertex" if fmri.shape[1] == vertices.size else "feature"],
                chunks=(min(len(fmri), 256), fmri.shape[1]),
                compression=None,
            )
            create_array(store, f"{split}/segment", data=np.concatenate(seg_col), dims=["sample"])
            create_array(
                store,
                f"{split}/clip",
                data=np.concatenate(clip_col).astype(np.int32),
                dims=["sample"],
            )
            name = "repetition" if split == "train" else "n_repetitions"
            create_array(
                store,
                f"{split}/{name}",
                data=np.concatenate(rep_col).astype(np.int32),
                dims=["sample"],
            )
        create_array(store, "grayordinate", data=sel["grayordinate"][:][vertices], dims=["vertex"])
        store.attrs.update(
            {
                "subject": pre.attrs["subject"],
                "shift_s": shift_s,
                "shift_volumes": shift,
                "tr_s": tr_s,
                "clip_s": clip_s,
                "volumes_per_clip": per_clip,
                "combine": combine,
                "n_vertices": int(vertices.size),
                "provenance": provenance(
                    "align",
                    {
                        "shift_s": shift_s,
                        "tr_s": tr_s,
                        "clip_s": clip_s,
                        "combine": combine,
                        "train_segments": train_segments,
                        "test_segments": test_segments,
                    },
                    [str(preprocessed), str(selection)],
                ),
            }
        )
