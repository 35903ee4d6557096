"""Hemodynamic shift: pair every clip with the BOLD response ``shift_s`` later.

Clip ``i`` of a segment (stimulus time ``[i TR, (i + 1) TR)``) is paired with
preprocessed volume ``i + shift_s / TR`` counted from stimulus onset. The
trailing volumes supply the responses of the last clips, so every clip keeps
its response (cc2017: 240 clips per segment). Training repetitions stay
separate samples; test repetitions are averaged. Only selected vertices are
kept.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction

import numpy as np
import zarr
from tqdm.auto import tqdm

from pipeline.stores import atomic_output, create_array, open_store, provenance

__all__ = ["align_subject", "shift_volumes"]

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


def align_subject(
    preprocessed: str | os.PathLike,
    selection: str | os.PathLike,
    output: str | os.PathLike,
    *,
    train_segments: list[str],
    test_segments: list[str],
    shift_s: float,
    tr_s: float,
) -> None:
    """Write the aligned fMRI samples of one subject.

    Store layout::

        train/fmri        (sample, vertex) float32   one sample per clip and repetition
        train/segment     (sample,) str
        train/clip        (sample,) int32   clip index within its segment
        train/repetition  (sample,) int32
        test/fmri         (sample, vertex) float32   averaged over the repetitions present
        test/segment, test/clip, test/n_repetitions  (sample,)
        grayordinate      (vertex,) int64   CIFTI column of every selected vertex

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

    def shifted(segment: str) -> tuple[zarr.Array, int]:
        runs = pre[f"runs/{segment}"]
        n_clips, n_trailing = runs.attrs["n_clips"], runs.attrs["n_trailing"]
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
                data = runs[:, shift : shift + n_clips][..., vertices]  # (rep, clip, vertex)
                if split == "train":
                    blocks.append(data.reshape(-1, vertices.size))
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
                dims=["sample", "vertex"],
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
                "n_vertices": int(vertices.size),
                "provenance": provenance(
                    "align",
                    {
                        "shift_s": shift_s,
                        "tr_s": tr_s,
                        "train_segments": train_segments,
                        "test_segments": test_segments,
                    },
                    [str(preprocessed), str(selection)],
                ),
            }
        )
