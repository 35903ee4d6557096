"""Stimulus-activated vertex selection, by one of three methods (``selection.method``).

``repetition_ttest`` (Wen et al. 2018; the paper's Sec. 4.1): for every
training segment, the Pearson correlation between the two repetitions is
computed per vertex and Fisher z-transformed; a one-sample t-test of the z
values across segments against 0 gives a p value per vertex; vertices whose
Bonferroni-corrected p is below alpha are kept (NeuroClips: p < 0.05, 13,447 /
14,828 / 9,114 vertices for subjects 1 / 2 / 3). It needs two repetitions of
every training segment.

``roi``: the vertices of chosen areas of the HCP MMP 1.0 parcellation
(:mod:`pipeline.anatomy`), by default the visual areas.

``encoding``: a ridge regression from simple per-clip frame features
(:func:`pipeline.analysis.clip_features` and the motion energy) to every
vertex's response ``shift_s`` later, scored by the correlation of its
cross-validated predictions over folds of training segments; a permutation
null (each segment's features shifted circularly) gives a p value per vertex,
corrected by Benjamini-Hochberg (FDR) or Bonferroni. It needs one repetition.

Every method reads the training segments only: the test set never takes part
in choosing the vertices.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import zarr
from scipy import stats

from pipeline.anatomy import VISUAL_AREAS
from pipeline.stores import atomic_output, create_array, open_store, provenance

__all__ = [
    "SELECTION_METHODS",
    "SelectionMethod",
    "SelectionResult",
    "encoding_scores",
    "motion_energy",
    "pearson_columns",
    "corrected_p_values",
    "reliability_ttest",
    "select_vertices",
]

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


@dataclass(frozen=True)
class SelectionMethod:
    """One entry of :data:`SELECTION_METHODS`.

    Attributes
    ----------
    name : str
        The ``selection.method`` value.
    inputs : tuple of str
        What it reads beside the preprocessed store: ``frames`` (the training
        segments' frame stores) and ``run`` (one CIFTI run: its brain model places
        the areas).
    statistic : str or None
        The per-vertex statistic it writes (shown in the report), None for none.
    """

    name: str
    inputs: tuple[str, ...]
    statistic: str | None


#: ``selection.method`` → what it reads and writes (the schema's enum lists these names).
SELECTION_METHODS = {
    m.name: m
    for m in (
        SelectionMethod("repetition_ttest", (), "t"),
        SelectionMethod("roi", ("run",), None),
        SelectionMethod("encoding", ("frames",), "r"),
    )
}


def motion_energy(frames: np.ndarray) -> np.ndarray:
    """Mean absolute luminance change between consecutive frames of every clip.

    Parameters
    ----------
    frames : array of shape (n_clips, n_frames, height, width, 3), uint8

    Returns
    -------
    ndarray of shape (n_clips, 1), float64
        0 for clips of one frame.
    """
    out = np.zeros((frames.shape[0], 1))
    for start in range(0, frames.shape[0], 16):
        x = np.asarray(frames[start : start + 16], dtype=np.float32) / 255.0
        luma = x @ np.array([0.299, 0.587, 0.114], np.float32)
        if luma.shape[1] > 1:
            out[start : start + len(x), 0] = np.abs(np.diff(luma, axis=1)).mean((1, 2, 3))
    return out


def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-8
    return (x_train - mu) / sd, (x_test - mu) / sd


def _cv_predictions(
    features: list[np.ndarray], folds: list[np.ndarray], bold: list[np.ndarray], alpha: float
) -> np.ndarray:
    """Held-out ridge predictions of every sample, fold by fold, each fold's mean removed."""
    predictions = []
    for held_out in folds:
        train = [k for k in range(len(features)) if k not in set(held_out)]
        x_tr, x_te = _standardise(
            np.concatenate([features[k] for k in train]),
            np.concatenate([features[k] for k in held_out]),
        )
        y_tr = np.concatenate([bold[k] for k in train])
        gram = x_tr.T @ x_tr + alpha * np.eye(x_tr.shape[1])
        weights = np.linalg.solve(gram, x_tr.T @ (y_tr - y_tr.mean(0)))
        pred = (x_te @ weights).astype(np.float32)
        predictions.append(pred - pred.mean(0))
    return np.concatenate(predictions)


def _correlate(pred: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Pearson r per column of two centred arrays (0 where either has no variance)."""
    num = np.einsum("ij,ij->j", pred, observed, dtype=np.float64)
    den = np.sqrt(
        np.einsum("ij,ij->j", pred, pred, dtype=np.float64)
        * np.einsum("ij,ij->j", observed, observed, dtype=np.float64)
    )
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def encoding_scores(
    features: list[np.ndarray],
    bold: list[np.ndarray],
    *,
    n_folds: int,
    alpha: float,
    permutations: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Cross-validated encoding accuracy per vertex and its permutation p value.

    Segments are dealt round-robin into ``n_folds`` folds; each fold is predicted
    by a ridge model fitted on the others (features standardised on the
    training folds). The null shifts every segment's features circularly by a
    random non-zero offset, which keeps their autocorrelation and breaks their
    pairing with the BOLD.

    Parameters
    ----------
    features : list of ndarray of shape (n_clips_k, n_features)
        One per training segment.
    bold : list of ndarray of shape (n_clips_k, n_vertices)
        The response to every clip of the same segments.
    n_folds : int
        Folds of segments (at most the number of segments).
    alpha : float
        Ridge penalty on the standardised features.
    permutations : int
        Null fits.
    rng : numpy.random.Generator
        Draws the null's shifts.

    Returns
    -------
    r : ndarray of shape (n_vertices,)
        Correlation between the held-out predictions and the responses.
    p : ndarray of shape (n_vertices,)
        ``(1 + #{null r >= r}) / (1 + permutations)``.

    Raises
    ------
    ValueError
        If there are fewer than two segments, or fewer than ``n_folds``.
    """
    if len(features) < 2 or len(features) < n_folds:
        raise ValueError(
            f"the encoding selection needs at least max(2, folds = {n_folds}) training "
            f"segments, got {len(features)}"
        )
    folds = [np.arange(k, len(features), n_folds) for k in range(n_folds)]
    # the responses in fold order, each fold centred as its predictions are
    observed = np.concatenate([np.concatenate([bold[k] for k in fold]) for fold in folds]).astype(
        np.float32
    )
    start = 0
    for fold in folds:
        stop = start + sum(len(bold[k]) for k in fold)
        observed[start:stop] -= observed[start:stop].mean(0)
        start = stop
    r = _correlate(_cv_predictions(features, folds, bold, alpha), observed)
    exceed = np.zeros(r.shape, np.int64)
    for _ in range(permutations):
        shifted = [np.roll(x, rng.integers(1, max(len(x), 2)), axis=0) for x in features]
        exceed += _correlate(_cv_predictions(shifted, folds, bold, alpha), observed) >= r
    return r, (1 + exceed) / (1 + permutations)


def corrected_p_values(p: np.ndarray, correction: str) -> np.ndarray:
    """p values corrected for testing every vertex: below alpha, they control the false
    discovery rate (``fdr``) or the family-wise error rate (``bonferroni``) at alpha.

    Parameters
    ----------
    p : ndarray of shape (n_vertices,)
        Uncorrected p values, NaN where not tested.
    correction : {"fdr", "bonferroni"}

    Returns
    -------
    p_corrected : ndarray of shape (n_vertices,)
        Benjamini-Hochberg adjusted (:func:`scipy.stats.false_discovery_control`) or
        Bonferroni p values; NaN where not tested.
    """
    tested = np.isfinite(p)
    out = np.full(p.shape, np.nan)
    if correction == "fdr":
        out[tested] = stats.false_discovery_control(p[tested], method="bh")
    elif correction == "bonferroni":
        out[tested] = np.minimum(p[tested] * tested.sum(), 1.0)
    else:
        raise ValueError(f"correction must be fdr or bonferroni, not {correction!r}")
    return out


def select_vertices(
    preprocessed: str | os.PathLike,
    output: str | os.PathLike,
    *,
    train_segments: list[str],
    alpha: float,
    method: str = "repetition_ttest",
    alternative: str = "two-sided",
    frames: list[str | os.PathLike] | None = None,
    run: str | os.PathLike | None = None,
    roi_areas: list[str] | None = None,
    shift_s: float = 4.0,
    tr_s: float = 2.0,
    permutations: int = 1000,
    correction: str = "fdr",
    ridge_alpha: float = 10.0,
    folds: int = 2,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Select a subject's vertices by ``method`` and write ``output``.

    Store layout (every method)::

        mask (vertex,) bool; grayordinate (vertex,) int64
        repetition_ttest: t, p, p_bonferroni, mean_z (vertex,) float64; z (segment, vertex)
        roi:              area (vertex,) str  (MMP 1.0 area, '' off the cortex)
        encoding:         r, p, p_corrected (vertex,) float64

    The ``statistic`` attribute names the per-vertex statistic (None for ``roi``).

    Parameters
    ----------
    preprocessed : path
        The subject's ``preprocess`` store (``runs/<segment>`` of shape
        (n_repetitions, n_volumes, n_vertices) and ``valid``).
    output : path
        The ``select_voxels`` store to write (atomically).
    train_segments : list of str
        Training segments: the only data any method reads.
    alpha : float
        Family-wise error rate (``repetition_ttest``: Bonferroni, NeuroClips 0.05) or,
        for ``encoding``, the rate its ``correction`` controls.
    method : str
        One of :data:`SELECTION_METHODS`.
    alternative : {'two-sided', 'greater'}
        ``repetition_ttest``: alternative hypothesis of the t-test.
    frames : list of path, optional
        ``encoding``: the training segments' ``extract_frames`` stores, in any order
        (matched by their ``segment`` attribute).
    run : path, optional
        ``roi``: one CIFTI run of the subject (its brain model places the areas).
    roi_areas : list of str, optional
        ``roi``: MMP 1.0 area names (``V1``, ``MT``, ...); default every area of
        :data:`pipeline.anatomy.VISUAL_AREAS`.
    shift_s, tr_s : float, seconds
        ``encoding``: the hemodynamic delay and the repetition time.
    permutations : int
        ``encoding``: null fits.
    correction : {'fdr', 'bonferroni'}
        ``encoding``: multiple-comparison correction (:func:`corrected_p_values`).
    ridge_alpha : float
        ``encoding``: ridge penalty on standardised features.
    folds : int
        ``encoding``: folds of training segments.
    seed : int
        ``encoding``: seed of the null.

    Returns
    -------
    dict of str to ndarray
        The arrays written.

    Raises
    ------
    ValueError
        An unknown method, a missing input of the method, a training segment without
        runs, or no vertex selected.
    """
    if method not in SELECTION_METHODS:
        raise ValueError(f"selection method {method!r}; known: {sorted(SELECTION_METHODS)}")
    pre = open_store(preprocessed, stage="preprocess")
    for segment in train_segments:
        if f"runs/{segment}" not in pre:
            raise ValueError(f"{preprocessed}: no runs of training segment {segment}")
    settings: dict = {"method": method, "alpha": alpha, "train_segments": train_segments}
    inputs = [str(preprocessed)]
    if method == "repetition_ttest":
        arrays, attrs = _repetition_ttest(pre, preprocessed, train_segments, alpha, alternative)
        settings["alternative"] = alternative
    elif method == "roi":
        if run is None:
            raise ValueError("the roi selection needs a CIFTI run of the subject (run)")
        areas = list(roi_areas or [a for group in VISUAL_AREAS.values() for a in group])
        arrays, attrs = _roi(pre, run, areas)
        settings["roi_areas"] = areas
        inputs.append(str(run))
    else:
        if not frames:
            raise ValueError("the encoding selection needs the training segments' frames")
        options = {
            "shift_s": shift_s,
            "tr_s": tr_s,
            "permutations": permutations,
            "correction": correction,
            "ridge_alpha": ridge_alpha,
            "folds": folds,
            "seed": seed,
        }
        arrays, attrs = _encoding(pre, preprocessed, train_segments, frames, alpha, **options)
        settings |= options
        inputs += [str(f) for f in frames]
    mask = arrays["mask"]
    n_selected = int(mask.sum())
    log.info(
        "%s: %s selects %d of %d tested vertices",
        preprocessed,
        method,
        n_selected,
        attrs["n_tested"],
    )
    if n_selected == 0:
        raise ValueError(
            f"{preprocessed}: the {method} selection keeps no vertex ({attrs['n_tested']} "
            f"tested); {attrs['hint']}"
        )
    del attrs["hint"]
    with atomic_output(output) as tmp:
        store = zarr.open_group(tmp, mode="w")
        for name, values in arrays.items():
            dims = ["segment", "vertex"] if values.ndim == 2 else ["vertex"]
            create_array(store, name, data=values, dims=dims)
        create_array(store, "grayordinate", data=pre["grayordinate"][:], dims=["vertex"])
        store.attrs.update(
            {
                "subject": pre.attrs["subject"],
                **attrs,
                "n_selected": n_selected,
                "method": method,
                "statistic": SELECTION_METHODS[method].statistic,
                "provenance": provenance("select_voxels", settings, inputs),
            }
        )
    return arrays


def _repetition_ttest(pre, preprocessed, train_segments, alpha, alternative):
    valid = pre["valid"][:]
    used, r_rows = [], []
    for segment in train_segments:
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
    arrays = {
        "mask": result.mask,
        "z": result.z.astype(np.float32),
        "mean_z": result.z.mean(0),
        "t": result.t,
        "p": result.p,
        "p_bonferroni": result.p_bonferroni,
    }
    attrs = {
        "segments": used,
        "n_tested": result.n_tested,
        "alpha": alpha,
        "alternative": alternative,
        "hint": f"the Bonferroni-corrected t-test over {len(used)} segments passes none at "
        f"alpha={alpha}; check the data or raise selection.alpha",
    }
    return arrays, attrs


def _roi(pre, run, areas):
    from pipeline.interpretation import check_areas, grayordinate_areas

    check_areas(areas, "selection.roi_areas")
    area = grayordinate_areas(run, pre["grayordinate"][:].astype(np.int64))[1]
    valid = pre["valid"][:]
    mask = valid & np.isin(area, areas)
    attrs = {
        "n_tested": int(valid.sum()),
        "roi_areas": list(areas),
        "hint": f"no valid vertex lies in the areas {areas}",
    }
    return {"mask": mask, "area": area.astype(str)}, attrs


def _encoding(pre, preprocessed, train_segments, frames, alpha, *, shift_s, tr_s, **options):
    from pipeline.alignment import combine_volumes, shift_volumes
    from pipeline.analysis import clip_features

    stores = {}
    for path in frames:
        store = open_store(path, stage="extract_frames")
        stores[store.attrs["segment"]] = store
    missing = [s for s in train_segments if s not in stores]
    if missing:
        raise ValueError(f"the encoding selection has no frames of the training segments {missing}")
    shift = shift_volumes(shift_s, tr_s)
    valid = pre["valid"][:]
    features, bold = [], []
    for segment in train_segments:
        runs = pre[f"runs/{segment}"]
        n_clips, n_trailing = runs.attrs["n_clips"], runs.attrs["n_trailing"]
        per_clip = (runs.shape[1] - n_trailing) // n_clips
        if shift > n_trailing:
            raise ValueError(
                f"{preprocessed}: a shift of {shift_s} s needs more than the {n_trailing} "
                f"trailing volumes kept for {segment}"
            )
        volumes = runs[:, shift : shift + n_clips * per_clip][..., valid].mean(0)
        bold.append(combine_volumes(volumes, per_clip, "mean"))
        clips = stores[segment]["frames"]
        if clips.shape[0] != n_clips:
            raise ValueError(
                f"{segment}: {clips.shape[0]} clips of frames but {n_clips} clips of fMRI; "
                "extract the frames and preprocess with the same alignment.clip_s"
            )
        features.append(np.hstack([clip_features(clips), motion_energy(clips)]))
    rng = np.random.default_rng(options["seed"])
    r_valid, p_valid = encoding_scores(
        features,
        bold,
        n_folds=options["folds"],
        alpha=options["ridge_alpha"],
        permutations=options["permutations"],
        rng=rng,
    )
    r = np.full(valid.size, np.nan)
    p = np.full(valid.size, np.nan)
    r[valid], p[valid] = r_valid, p_valid
    p_corrected = corrected_p_values(p, options["correction"])
    mask = np.zeros(valid.size, bool)
    mask[valid] = (p_corrected[valid] < alpha) & (r[valid] > 0)
    attrs = {
        "segments": list(train_segments),
        "n_tested": int(valid.sum()),
        "alpha": alpha,
        "correction": options["correction"],
        "permutations": options["permutations"],
        "hint": f"no encoding model beats its permutation null at {options['correction']} "
        f"alpha={alpha} with {options['permutations']} permutations (the smallest p is "
        f"{1 / (1 + options['permutations']):.2g}); raise selection.permutations or "
        "selection.alpha",
    }
    return {"mask": mask, "r": r, "p": p, "p_corrected": p_corrected}, attrs
