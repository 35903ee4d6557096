"""Per-run fMRI preprocessing: trim, polynomial detrend, z-score per cortical vertex.

Following Wen et al. (2018): each run's leading volumes are dropped, a
polynomial of order 4 is regressed out of every cortical vertex and every
vertex is z-scored. Each segment the run presents is then cut out from its
onset to its last clip plus the trailing volumes (they carry the delayed
response to the last clips); a cc2017 run presents one segment and ends with
its trailing volumes, so the whole detrended run is kept. What each run
presents comes from the subject's plan (:meth:`pipeline.datasets.Dataset.plan`).
Runs are streamed one at a time, so memory stays at one run.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import zarr
from numpy.polynomial import legendre
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from pipeline.datasets.base import Run, Segment, onset_volume
from pipeline.errors import DataError
from pipeline.io.cifti import read_cortex_bold
from pipeline.io.stimulus import read_stimulus_info
from pipeline.stores import atomic_output, create_array, provenance

__all__ = ["detrend_zscore", "polynomial_basis", "preprocess_subject"]

log = logging.getLogger(__name__)

_BLOCK = 2048  # vertices per float64 block: (n_volumes, 2048) stays in the CPU cache
_TR_TOLERANCE_S = 1e-3  # CIFTI steps are written with a few decimals (HCP: 0.72, cc2017: 2)


def polynomial_basis(n_volumes: int, order: int) -> np.ndarray:
    """Legendre polynomials of degree 0..order on an evenly spaced grid.

    Parameters
    ----------
    n_volumes : int
        Grid points, spread evenly over [-1, 1].
    order : int
        Highest degree.

    Returns
    -------
    ndarray of shape (n_volumes, order + 1), float64
    """
    t = np.linspace(-1.0, 1.0, n_volumes)
    return legendre.legvander(t, order)


def detrend_zscore(
    bold: np.ndarray, order: int, fit: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Remove a polynomial trend of ``order`` and z-score every column.

    Parameters
    ----------
    bold : ndarray of shape (n_volumes, n_vertices)
    order : int
        Polynomial order (Wen et al. 2018: 4).
    fit : ndarray of shape (n_volumes,), bool, optional
        The volumes the trend, mean and standard deviation are estimated on (the
        others are only transformed); default all.

    Returns
    -------
    clean : ndarray of shape (n_volumes, n_vertices), float32
        Zero mean, unit variance (ddof=0) per valid vertex; 0 elsewhere.
    valid : ndarray of shape (n_vertices,), bool
        False for vertices with a non-finite value or no variance left.

    Raises
    ------
    ValueError
        If there are ``order + 1`` volumes or fewer.
    """
    n_volumes = bold.shape[0]
    if fit is not None and fit.all():
        fit = None
    n_fit = n_volumes if fit is None else int(fit.sum())
    if n_fit <= order + 1:
        raise ValueError(f"{n_fit} volumes are too few for a detrend of order {order}")
    basis = polynomial_basis(n_volumes, order)
    if fit is None:
        # orthonormal basis of the trend space: the least-squares fit is q @ (q.T @ y)
        q = np.linalg.qr(basis)[0]
    else:
        # the least-squares fit on the fit volumes, extended to all: basis @ pinv @ y[fit]
        trend = basis @ np.linalg.pinv(basis[fit])
    valid = np.isfinite(bold).all(axis=0)
    clean = np.empty(bold.shape, np.float32)
    for start in range(0, bold.shape[1], _BLOCK):
        block = slice(start, start + _BLOCK)
        with np.errstate(invalid="ignore"):  # signalling NaNs (corrupt files) are set to 0 next
            y = bold[:, block].astype(np.float64)
        y[:, ~valid[block]] = 0.0
        level = np.abs(y).max(axis=0)
        if fit is None:
            y -= q @ (q.T @ y)
            std = np.sqrt(np.einsum("ij,ij->j", y, y) / n_volumes)
        else:
            y -= trend @ y[fit]
            y -= y[fit].mean(axis=0)  # 0 up to rounding; the z-score is about the fit volumes
            std = np.sqrt(np.einsum("ij,ij->j", y[fit], y[fit]) / n_fit)
        # a constant column leaves only rounding noise, far below 1e-6 of its level
        ok = valid[block] & (std > 1e-6 * np.maximum(level, 1e-12))
        valid[block] = ok
        clean[:, block] = y * np.where(ok, 1.0 / np.where(ok, std, 1.0), 0.0)
    return clean, valid


@dataclass(frozen=True)
class _RunResult:
    valid: np.ndarray  # (n_vertices,) bool
    onsets: list[int]  # onset volume of every presentation
    n_all_nan: int
    file_tr: float


@dataclass(frozen=True)
class _Target:
    """Where one presentation of a run goes: ``runs/{segment}[index]``."""

    segment: str
    onset_s: float | None
    n_clips: int
    array_path: Path
    index: int
    test: bool


def _preprocess_run(
    path: Path,
    drop_volumes: int | None,
    targets: list[_Target],
    columns: np.ndarray,
    tr_s: float,
    clip_s: float,
    trailing_volumes: int,
    max_leading_volumes: int,
    detrend_order: int,
) -> _RunResult:
    """Read, trim, detrend and z-score one run; write each presentation to its array.

    Runs write disjoint chunks, so worker processes can run this in parallel.
    """
    bold, cols, file_tr = read_cortex_bold(path)
    if not np.array_equal(cols, columns):
        raise DataError(
            f"{path}: its cortical brain model ({cols.size} vertices) differs from "
            f"the subject's other runs ({columns.size} vertices)"
        )
    onsets = [
        onset_volume(
            bold.shape[0],
            t.n_clips,
            t.onset_s,
            tr_s=tr_s,
            clip_s=clip_s,
            n_trailing=trailing_volumes,
            max_leading=max_leading_volumes,
            run_file=path,
            stimulus=t.segment,
        )
        for t in targets
    ]
    drop = min(onsets) if drop_volumes is None else drop_volumes
    if drop > min(onsets):
        raise DataError(
            f"{path}: {drop} leading volumes are dropped, but a segment starts at volume "
            f"{min(onsets)}"
        )
    per_clip = round(clip_s / tr_s)
    # a run that also presents training segments is normalised on its other volumes only,
    # so that the test presentations' BOLD never reaches the training data
    held_out = np.zeros(bold.shape[0] - drop, bool)
    for target, onset in zip(targets, onsets, strict=True):
        if target.test:
            n_time = target.n_clips * per_clip + trailing_volumes
            held_out[onset - drop : onset - drop + n_time] = True
    trains = any(not target.test for target in targets)
    clean, valid = detrend_zscore(bold[drop:], detrend_order, fit=~held_out if trains else None)
    for target, onset in zip(targets, onsets, strict=True):
        n_time = target.n_clips * per_clip + trailing_volumes
        window = clean[onset - drop : onset - drop + n_time]
        zarr.open_array(target.array_path, mode="r+")[target.index] = window
    n_all_nan = int(np.isnan(bold[:, ~valid]).all(axis=0).sum())
    return _RunResult(valid, onsets, n_all_nan, file_tr)


def preprocess_subject(
    plan: dict,
    output: str | os.PathLike,
    *,
    subject: str,
    tr_s: float,
    clip_s: float | None = None,
    trailing_volumes: int,
    max_leading_volumes: int,
    detrend_order: int,
    max_dropped_fraction: float = 0.05,
    accept_tr_mismatch: bool = False,
    threads: int = 1,
) -> None:
    """Preprocess every run of one subject into ``output`` (a Zarr store).

    Store layout::

        runs/{segment}   (repetition, time, vertex) float32   time 0 = stimulus onset
        grayordinate     (vertex,) int64    CIFTI column of every cortical vertex
        valid            (vertex,) bool     finite and non-constant in every run

    ``runs/{segment}`` carries ``repetitions``, ``n_clips``, ``n_trailing``,
    ``n_leading`` (the onset volume of every repetition), ``files`` and
    ``stimulus`` attributes. With ``threads`` > 1 that many worker processes
    handle runs in parallel (most of a CIFTI read is nibabel parsing the XML
    header, which holds the GIL, so threads would not help); each holds one run
    in memory at a time.

    Parameters
    ----------
    plan : dict
        The subject's :meth:`pipeline.datasets.Dataset.plan`: the segments and the
        runs, with what each run presents and when.
    output : path
        The ``preprocess`` store to write (atomically).
    subject : str
        Recorded in the store and named in messages.
    tr_s : float, seconds
        Repetition time.
    clip_s : float, seconds, optional
        Clip length, a whole number of TRs (``alignment.clip_s``); default one TR.
        A segment of ``n_clips`` clips keeps ``n_clips * clip_s / tr_s`` volumes.
    trailing_volumes : int
        Volumes kept after each segment ends.
    max_leading_volumes : int
        Most volumes accepted before a derived onset (dropped).
    detrend_order : int
        Order of the Legendre polynomial regressed out (Wen et al. 2018: 4).
    max_dropped_fraction : float
        Largest share of a run's cortical vertices that may be dropped as
        non-finite or constant (``preprocess.max_dropped_fraction``). A few
        such vertices give a warning; many mean a corrupt data block.
    accept_tr_mismatch : bool
        Whether a run whose CIFTI time step differs from ``tr_s`` is only
        warned about (``preprocess.accept_tr_mismatch``) instead of refused.
    threads : int
        Worker processes; 1 runs in this process.

    Raises
    ------
    DataError
        A run is missing or unreadable, its length disagrees with its stimulus,
        its brain model differs from the other runs, its time step differs
        from ``tr_s`` (unless accepted), or it drops more than
        ``max_dropped_fraction`` of the vertices.
    """
    segments = {s["name"]: Segment.from_dict(s) for s in plan["segments"]}
    runs = [Run.from_dict(r) for r in plan["runs"]]
    if not runs:
        raise DataError(f"{subject}: no fMRI runs given")
    # every repetition of a segment, ascending: (repetition, run, onset)
    shown: dict[str, list[tuple[int, Run, float | None]]] = defaultdict(list)
    for run in runs:
        for p in run.presentations:
            if p.segment not in segments:
                raise DataError(f"{run.path}: presents {p.segment}, a segment not in the plan")
            shown[p.segment].append((p.repetition, run, p.onset_s))
    order = [name for name in segments if name in shown]
    for name in order:
        shown[name].sort(key=lambda item: item[0])
    missing = [run.path for run in runs if not run.path.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: fMRI run file not found ({len(missing)} missing in all)")

    clip_s = tr_s if clip_s is None else clip_s
    per_clip = Fraction(str(clip_s)) / Fraction(str(tr_s))
    if per_clip.denominator != 1 or per_clip < 1:
        raise ValueError(f"a clip of {clip_s} s is not a whole number of TRs ({tr_s} s)")
    settings = {
        "tr_s": tr_s,
        "clip_s": clip_s,
        "trailing_volumes": trailing_volumes,
        "max_leading_volumes": max_leading_volumes,
        "detrend_order": detrend_order,
    }
    checks = {
        "max_dropped_fraction": max_dropped_fraction,
        "accept_tr_mismatch": accept_tr_mismatch,
    }
    columns = read_cortex_bold(runs[0].path)[1]
    with atomic_output(output) as tmp:
        store = zarr.open_group(tmp, mode="w")
        targets: dict[Path, list[_Target]] = defaultdict(list)
        for name in order:
            segment = segments[name]
            n_clips = segment.n_clips(read_stimulus_info(segment.stimulus), clip_s)
            n_time = n_clips * round(clip_s / tr_s) + trailing_volumes
            reps = shown[name]
            create_array(
                store,
                f"runs/{name}",
                shape=(len(reps), n_time, columns.size),
                dtype=np.float32,
                dims=["repetition", "time", "vertex"],
                chunks=(1, n_time, min(columns.size, 16384)),
                compression=None,
                attrs={
                    "repetitions": [rep for rep, _, _ in reps],
                    "n_clips": n_clips,
                    "n_trailing": trailing_volumes,
                    "files": [str(run.path) for _, run, _ in reps],
                    "stimulus": str(segment.stimulus),
                },
            )
            for index, (_, run, onset_s) in enumerate(reps):
                targets[run.path].append(
                    _Target(
                        name, onset_s, n_clips, tmp / "runs" / name, index, segment.role == "test"
                    )
                )
        tasks = [(run, (run.path, run.drop_volumes, targets[run.path], columns)) for run in runs]

        valid = np.ones(columns.size, bool)
        onsets: dict[tuple[str, int], int] = {}
        for (run, _), result in zip(
            tasks, _map_runs(tasks, settings, threads, subject), strict=True
        ):
            path = run.path
            if abs(result.file_tr - tr_s) > _TR_TOLERANCE_S:
                message = (
                    f"{path}: the CIFTI time axis step is {result.file_tr:g} s but "
                    f"dataset.tr_s is {tr_s:g} s"
                )
                if not accept_tr_mismatch:
                    raise DataError(
                        f"{message}; the file is from another acquisition or its header is "
                        "wrong (set preprocess.accept_tr_mismatch: true to use it with "
                        "dataset.tr_s)"
                    )
                log.warning("%s (accepted: preprocess.accept_tr_mismatch)", message)
            dropped = ~result.valid
            share = float(dropped.mean())
            if share > max_dropped_fraction:
                raise DataError(
                    f"{path}: {int(dropped.sum())} of {dropped.size} cortical vertices "
                    f"({share:.1%}) are non-finite or constant ({result.n_all_nan} all-NaN), "
                    f"more than preprocess.max_dropped_fraction = {max_dropped_fraction:g}; "
                    "the data block looks corrupt (raise preprocess.max_dropped_fraction "
                    "to keep the run)"
                )
            if dropped.any():
                log.warning(
                    "%s: %d vertices dropped (%d all-NaN, the rest non-finite or constant)",
                    path,
                    int(dropped.sum()),
                    result.n_all_nan,
                )
            valid &= result.valid
            for target, onset in zip(targets[path], result.onsets, strict=True):
                onsets[target.segment, target.index] = onset
        for name in order:
            store[f"runs/{name}"].attrs["n_leading"] = [
                onsets[name, i] for i in range(len(shown[name]))
            ]
        n_dropped = int((~valid).sum())
        if n_dropped:
            log.warning(
                "%s: %d of %d cortical vertices dropped (non-finite or constant)",
                subject,
                n_dropped,
                valid.size,
            )
        if not valid.any():
            raise DataError(
                f"{subject}: no cortical vertex is finite and non-constant in every run"
            )
        create_array(store, "grayordinate", data=columns.astype(np.int64), dims=["vertex"])
        create_array(store, "valid", data=valid, dims=["vertex"])
        inputs = [str(run.path) for run in runs]
        inputs += list(dict.fromkeys(str(segments[n].stimulus) for n in order))
        store.attrs.update(
            {
                "subject": subject,
                "segments": order,
                "provenance": provenance(
                    "preprocess", settings | checks | {"format": plan["format"]}, inputs
                ),
            }
        )


def _single_threaded_blas() -> None:
    """Worker initializer: one BLAS thread per worker (the workers are the parallelism)."""
    threadpool_limits(1)


def _map_runs(tasks: list, settings: dict, threads: int, subject: str) -> Iterator[_RunResult]:
    """:func:`_preprocess_run` of every task, in order, on ``threads`` worker processes."""
    progress = tqdm(total=len(tasks), desc=f"preprocess {subject}", unit="run")
    if threads <= 1:
        for _, args in tasks:
            yield _preprocess_run(*args, **settings)
            progress.update()
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=threads, mp_context=context, initializer=_single_threaded_blas
        ) as pool:
            futures = [pool.submit(_preprocess_run, *args, **settings) for _, args in tasks]
            try:
                for future in futures:
                    yield future.result()
                    progress.update()
            finally:  # on an error, do not wait for the runs not yet started
                for future in futures:
                    future.cancel()
    progress.close()
