"""Checks of the stimulus-response relation: which delay pairs clips and BOLD best.

:func:`lag_profile` fits, for every candidate lag, a ridge encoding model from
simple per-clip image features (a luminance grid and the mean colour of the
extracted frames) to the BOLD ``lag`` volumes after each clip, and scores it
by the cross-validated correlation on held-out segments. On the demo data the
profile peaks at the planted delay; on real data it is a sanity check of
``alignment.shift_s``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from pipeline.stores import open_store

__all__ = ["clip_features", "lag_profile", "lag_profile_from_stores"]


def clip_features(frames: np.ndarray, grid: int = 4) -> np.ndarray:
    """Per-clip features: a ``grid`` x ``grid`` luminance grid and mean RGB, averaged over frames.

    Parameters
    ----------
    frames : array of shape (n_clips, n_frames, height, width, 3), uint8
        A NumPy or Zarr array; read a few clips at a time.
    grid : int
        Cells per side of the luminance grid (Rec. 601 luma in [0, 1]).

    Returns
    -------
    ndarray of shape (n_clips, grid * grid + 3), float64
    """
    n, _, h, w, _ = frames.shape
    cell_h, cell_w = h // grid, w // grid
    out = np.empty((n, grid * grid + 3))
    for start in range(0, n, 16):  # a few clips at a time: bounded memory for long segments
        x = np.asarray(frames[start : start + 16], dtype=np.float32) / 255.0
        luma = x @ np.array([0.299, 0.587, 0.114], np.float32)
        k, f = luma.shape[:2]
        cells = luma[:, :, : cell_h * grid, : cell_w * grid].reshape(
            k, f, grid, cell_h, grid, cell_w
        )
        out[start : start + k, : grid * grid] = cells.mean((1, 3, 5)).reshape(k, -1)
        out[start : start + k, grid * grid :] = x.mean((1, 2, 3))
    return out


def _ridge_fit(x: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    return np.linalg.solve(x.T @ x + alpha * np.eye(x.shape[1]), x.T @ y)


def lag_profile(
    bold: Sequence[np.ndarray],
    features: Sequence[np.ndarray],
    lags: Sequence[int],
    alpha: float = 10.0,
) -> np.ndarray:
    """Cross-validated encoding accuracy of clip features for BOLD at each lag.

    Parameters
    ----------
    bold : list of ndarray of shape (n_volumes, n_vertices)
        One per segment, volume 0 at stimulus onset (preprocessed runs).
    features : list of ndarray of shape (n_clips, n_features)
        Clip features of the same segments.
    lags : sequence of int
        Candidate delays in volumes.
    alpha : float
        Ridge penalty on standardised features.

    Returns
    -------
    ndarray of shape (len(lags),)
        Mean over vertices of the correlation between predicted and measured
        BOLD on held-out segments (two folds: even / odd segments).

    Raises
    ------
    ValueError
        If fewer than two segments are given.
    """
    if len(bold) < 2:
        raise ValueError("the lag profile needs at least two segments")
    scores = []
    for lag in lags:
        pairs = []
        for y, x in zip(bold, features, strict=True):
            n = min(x.shape[0], y.shape[0] - lag)
            pairs.append((x[:n], y[lag : lag + n]))
        folds = [pairs[0::2], pairs[1::2]]
        fold_scores = []
        for k in range(2):
            x_tr = np.concatenate([p[0] for p in folds[1 - k]])
            y_tr = np.concatenate([p[1] for p in folds[1 - k]])
            x_te = np.concatenate([p[0] for p in folds[k]])
            y_te = np.concatenate([p[1] for p in folds[k]])
            mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-8
            w = _ridge_fit((x_tr - mu) / sd, y_tr - y_tr.mean(0), alpha)
            pred = ((x_te - mu) / sd) @ w
            pred -= pred.mean(0)
            obs = y_te - y_te.mean(0)
            denom = np.sqrt((pred**2).sum(0) * (obs**2).sum(0)) + 1e-12
            fold_scores.append(np.mean((pred * obs).sum(0) / denom))
        scores.append(np.mean(fold_scores))
    return np.asarray(scores)


def lag_profile_from_stores(
    preprocessed: str | os.PathLike,
    selection: str | os.PathLike,
    frame_stores: dict[str, str | os.PathLike],
    lags: Sequence[int],
) -> np.ndarray:
    """:func:`lag_profile` of a subject's selected vertices, repetitions averaged.

    ``frame_stores`` maps segment name to its frames store.

    Parameters
    ----------
    preprocessed : path
        The subject's ``preprocess`` store; ``runs/<segment>`` of shape
        (n_repetitions, n_volumes, n_grayordinates) is averaged over repetitions.
    selection : path
        The subject's ``select_voxels`` store (boolean ``mask``).
    frame_stores : dict of str to path
        Segment name to its ``extract_frames`` store (``frames`` of shape
        (n_clips, n_frames, height, width, 3) uint8).
    lags : sequence of int
        Candidate delays in volumes.

    Returns
    -------
    ndarray of shape (len(lags),), float64
        Cross-validated correlation per lag, as :func:`lag_profile`.
    """
    pre = open_store(preprocessed, stage="preprocess")
    mask = open_store(selection, stage="select_voxels")["mask"][:]
    bold, feats = [], []
    for segment, path in frame_stores.items():
        runs = pre[f"runs/{segment}"]
        bold.append(runs[:].mean(0)[:, mask])
        # a clip of several TRs: its features stand for each of its volumes
        per_clip = (runs.shape[1] - runs.attrs["n_trailing"]) // runs.attrs["n_clips"]
        frames = open_store(path, stage="extract_frames")["frames"]
        feats.append(np.repeat(clip_features(frames), per_clip, axis=0))
    return lag_profile(bold, feats, lags)
