"""Stimulus-activated vertex selection by test-retest reliability (Wen et al. 2018).

For every training segment, the Pearson correlation between the two
repetitions is computed per vertex and Fisher z-transformed; a one-sample
t-test of the z values across segments against 0 gives a p value per vertex;
vertices whose Bonferroni-corrected p is below alpha are kept (NeuroClips:
p < 0.05, 13,447 / 14,828 / 9,114 vertices for subjects 1 / 2 / 3).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import zarr
from scipy import stats

from pipeline.stores import atomic_output, create_array, open_store, provenance

__all__ = ["SelectionResult", "pearson_columns", "reliability_ttest", "select_vertices"]

log = logging.getLogger(__name__)


def pearson_columns(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r between matching columns of two arrays of shape (n_time, n_vertices).

    Returns NaN for a column without variance.

    Parameters
    ----------
    a, b : ndarray of shape (n_time, n_vertices)
        Two time series of the same vertices (any float dtype; computed in float64).

    Returns
    -------
    ndarray of shape (n_vertices,), float64
        Correlation in [-1, 1] per column.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a - a.mean(0)
    b = b - b.mean(0)
    denom = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(0) / denom


@dataclass
class SelectionResult:
    """Per-vertex statistics of the reliability test.

    Attributes
    ----------
    z : ndarray of shape (n_segments, n_vertices)
        Fisher z of the repetition correlation per segment.
    t, p, p_bonferroni : ndarray of shape (n_vertices,)
        t statistic, uncorrected and Bonferroni-corrected p values (NaN where not tested).
    mask : ndarray of shape (n_vertices,), bool
        ``p_bonferroni < alpha``.
    n_tested : int
        Number of vertices tested (the Bonferroni factor).
    """

    z: np.ndarray
    t: np.ndarray
    p: np.ndarray
    p_bonferroni: np.ndarray
    mask: np.ndarray
    n_tested: int


def reliability_ttest(
    r: np.ndarray, alpha: float, valid: np.ndarray | None = None, alternative: str = "two-sided"
) -> SelectionResult:
    """Fisher z → one-sample t-test against 0 across segments → Bonferroni.

    Parameters
    ----------
    r : ndarray of shape (n_segments, n_vertices)
        Correlation between repetitions per segment and vertex.
    alpha : float
        Family-wise error rate.
    valid : ndarray of shape (n_vertices,), bool, optional
        Vertices to test; the others get NaN statistics and are not selected.
    alternative : {'two-sided', 'greater'}
        Passed to :func:`scipy.stats.ttest_1samp`.

    Returns
    -------
    SelectionResult
        Per-vertex z, t, p, Bonferroni p and the selection mask.

    Raises
    ------
    ValueError
        If ``r`` has fewer than two segments (rows).
    """
    r = np.asarray(r, np.float64)
    if r.shape[0] < 2:
        raise ValueError(
            f"the t-test needs at least 2 segments with 2 repetitions, got {r.shape[0]}"
        )
    valid = np.ones(r.shape[1], bool) if valid is None else valid & np.isfinite(r).all(0)
    z = np.arctanh(np.clip(r, -1 + 1e-7, 1 - 1e-7))
    t = np.full(r.shape[1], np.nan)
    p = np.full(r.shape[1], np.nan)
    if valid.any():
        res = stats.ttest_1samp(z[:, valid], 0.0, axis=0, alternative=alternative)
        t[valid], p[valid] = res.statistic, res.pvalue
    n_tested = int(valid.sum())
    p_bonf = np.minimum(p * n_tested, 1.0)
    mask = np.zeros(r.shape[1], bool)
    mask[valid] = p_bonf[valid] < alpha
    return SelectionResult(z, t, p, p_bonf, mask, n_tested)


def select_vertices(
    preprocessed: str | os.PathLike,
    output: str | os.PathLike,
    *,
    train_segments: list[str],
    alpha: float,
    alternative: str = "two-sided",
) -> SelectionResult:
    """Run the reliability test on a subject's preprocessed store and write ``output``.

    Only the stimulus period (the first ``n_clips`` volumes) of repetitions
    1 and 2 (the first two present) of every training segment enters the
    correlation. Store layout::

        mask (vertex,) bool; t, p, p_bonferroni, mean_z (vertex,) float64;
        z (segment, vertex) float32; grayordinate (vertex,) int64

    This is the voxel selection of the paper's Sec. 4.1.

    Parameters
    ----------
    preprocessed : path
        The subject's ``preprocess`` store (``runs/<segment>`` of shape
        (n_repetitions, n_volumes, n_vertices) and ``valid``).
    output : path
        The ``select_voxels`` store to write (atomically).
    train_segments : list of str
        Training segments; those with fewer than two repetitions are left out.
    alpha : float
        Family-wise error rate of the Bonferroni-corrected test (NeuroClips: 0.05).
    alternative : {'two-sided', 'greater'}
        Alternative hypothesis of the t-test.

    Returns
    -------
    SelectionResult
        The statistics that were written.

    Raises
    ------
    ValueError
        A training segment has no runs, fewer than two usable training segments, or no
        vertex passes.
    """
    pre = open_store(preprocessed, stage="preprocess")
    valid = pre["valid"][:]
    used, r_rows = [], []
    for segment in train_segments:
        if f"runs/{segment}" not in pre:
            raise ValueError(f"{preprocessed}: no runs of training segment {segment}")
        runs = pre[f"runs/{segment}"]
        if runs.shape[0] < 2:
            log.warning(
                "%s: %s has %d repetition; left out of the reliability test",
                preprocessed,
                segment,
                runs.shape[0],
            )
            continue
        n_clips = runs.attrs["n_clips"]
        r_rows.append(pearson_columns(runs[0, :n_clips], runs[1, :n_clips]))
        used.append(segment)
    result = reliability_ttest(
        np.stack(r_rows) if r_rows else np.empty((0, valid.size)), alpha, valid, alternative
    )
    n_selected = int(result.mask.sum())
    log.info(
        "%s: %d of %d tested vertices pass Bonferroni p < %g (%d segments)",
        preprocessed,
        n_selected,
        result.n_tested,
        alpha,
        len(used),
    )
    if n_selected == 0:
        raise ValueError(
            f"{preprocessed}: no vertex passes the Bonferroni-corrected t-test at alpha={alpha} "
            f"({result.n_tested} tested over {len(used)} segments); check the data or raise "
            "selection.alpha"
        )
    with atomic_output(output) as tmp:
        store = zarr.open_group(tmp, mode="w")
        create_array(store, "mask", data=result.mask, dims=["vertex"])
        create_array(store, "z", data=result.z.astype(np.float32), dims=["segment", "vertex"])
        create_array(store, "mean_z", data=result.z.mean(0), dims=["vertex"])
        create_array(store, "t", data=result.t, dims=["vertex"])
        create_array(store, "p", data=result.p, dims=["vertex"])
        create_array(store, "p_bonferroni", data=result.p_bonferroni, dims=["vertex"])
        create_array(store, "grayordinate", data=pre["grayordinate"][:], dims=["vertex"])
        store.attrs.update(
            {
                "subject": pre.attrs["subject"],
                "segments": used,
                "n_selected": n_selected,
                "n_tested": result.n_tested,
                "alpha": alpha,
                "alternative": alternative,
                "provenance": provenance(
                    "select_voxels",
                    {"alpha": alpha, "alternative": alternative, "train_segments": train_segments},
                    [str(preprocessed)],
                ),
            }
        )
    return result
