"""Per-run fMRI preprocessing: trim, polynomial detrend, z-score per cortical vertex.

Following Wen et al. (2018): each run's cortical time series is cut to the
stimulus period plus the trailing volumes (the leading volumes are dropped;
the trailing ones are kept because they carry the delayed response to the
last clips), a polynomial of order 4 is regressed out and every vertex is
z-scored. Runs are streamed one at a time, so memory stays at one run.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from numpy.polynomial import legendre
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from pipeline.cc2017 import (
    DataError,
    StimulusInfo,
    clip_count,
    parse_run_path,
    read_cortex_bold,
    read_stimulus_info,
    run_timing,
)
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


def detrend_zscore(bold: np.ndarray, order: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove a polynomial trend of ``order`` and z-score every column.

    Parameters
    ----------
    bold : ndarray of shape (n_volumes, n_vertices)
    order : int
        Polynomial order (Wen et al. 2018: 4).

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
    if n_volumes <= order + 1:
        raise ValueError(f"{n_volumes} volumes are too few for a detrend of order {order}")
    # orthonormal basis of the trend space: the least-squares fit is q @ (q.T @ y)
    q = np.linalg.qr(polynomial_basis(n_volumes, order))[0]
    valid = np.isfinite(bold).all(axis=0)
    clean = np.empty(bold.shape, np.float32)
    for start in range(0, bold.shape[1], _BLOCK):
        block = slice(start, start + _BLOCK)
        with np.errstate(invalid="ignore"):  # signalling NaNs (corrupt files) are set to 0 next
            y = bold[:, block].astype(np.float64)
        y[:, ~valid[block]] = 0.0
        level = np.abs(y).max(axis=0)
        y -= q @ (q.T @ y)
        std = np.sqrt(np.einsum("ij,ij->j", y, y) / n_volumes)
        # a constant column leaves only rounding noise, far below 1e-6 of its level
        ok = valid[block] & (std > 1e-6 * np.maximum(level, 1e-12))
        valid[block] = ok
        clean[:, block] = y * np.where(ok, 1.0 / np.where(ok, std, 1.0), 0.0)
    return clean, valid


@dataclass(frozen=True)
class _RunResult:
    valid: np.ndarray  # (n_vertices,) bool
    n_leading: int
    n_all_nan: int
    file_tr: float


def _preprocess_run(
    path: Path,
    stimulus: StimulusInfo,
    array_path: Path,
    index: int,
    columns: np.ndarray,
    tr_s: float,
    trailing_volumes: int,
    max_leading_volumes: int,
    detrend_order: int,
) -> _RunResult:
    """Read, trim, detrend and z-score one run; write it to ``array_path[index]``.

    Runs write disjoint chunks, so worker processes can run this in parallel.
    """
    bold, cols, file_tr = read_cortex_bold(path)
    if not np.array_equal(cols, columns):
        raise DataError(
            f"{path}: its cortical brain model ({cols.size} vertices) differs from "
            f"the subject's other runs ({columns.size} vertices)"
        )
    timing = run_timing(bold.shape[0], stimulus, tr_s, trailing_volumes, max_leading_volumes, path)
    clean, valid = detrend_zscore(bold[timing.n_leading :], detrend_order)
    zarr.open_array(array_path, mode="r+")[index] = clean
    n_all_nan = int(np.isnan(bold[:, ~valid]).all(axis=0).sum())
    return _RunResult(valid, timing.n_leading, n_all_nan, file_tr)


def preprocess_subject(
    run_files: Sequence[str | os.PathLike],
    stimulus_files: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    subject: str,
    tr_s: float,
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
    ``n_leading`` and ``files`` attributes. With ``threads`` > 1 that many
    worker processes handle runs in parallel (most of a CIFTI read is nibabel
    parsing the XML header, which holds the GIL, so threads would not help);
    each holds one run in memory at a time.

    Parameters
    ----------
    run_files : sequence of path
        The subject's CIFTI-2 dense time series, named ``{segment}_{rep}_Atlas.dtseries.nii``.
    stimulus_files : sequence of path
        Stimulus videos ``{segment}.mp4``; each run's segment must be among them.
    output : path
        The ``preprocess`` store to write (atomically).
    subject : str
        Recorded in the store and named in messages.
    tr_s : float, seconds
        Repetition time.
    trailing_volumes : int
        Volumes kept after each stimulus ends.
    max_leading_volumes : int
        Most volumes accepted before the stimulus onset (dropped).
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
    stimuli = {Path(p).stem: Path(p) for p in stimulus_files}
    by_segment: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for path in map(Path, run_files):
        segment, rep = parse_run_path(path)
        if segment not in stimuli:
            raise DataError(f"{path}: no stimulus video {segment}.mp4 among the inputs")
        by_segment[segment].append((rep, path))
    if not by_segment:
        raise DataError(f"{subject}: no fMRI runs given")
    for reps in by_segment.values():
        reps.sort()
    missing = [p for reps in by_segment.values() for _, p in reps if not p.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: fMRI run file not found ({len(missing)} missing in all)")

    settings = {
        "tr_s": tr_s,
        "trailing_volumes": trailing_volumes,
        "max_leading_volumes": max_leading_volumes,
        "detrend_order": detrend_order,
    }
    checks = {
        "max_dropped_fraction": max_dropped_fraction,
        "accept_tr_mismatch": accept_tr_mismatch,
    }
    first_run = next(iter(by_segment.values()))[0][1]
    columns = read_cortex_bold(first_run)[1]
    with atomic_output(output) as tmp:
        store = zarr.open_group(tmp, mode="w")
        tasks = []
        for segment, reps in by_segment.items():
            stimulus = read_stimulus_info(stimuli[segment])
            n_clips = clip_count(stimulus, tr_s)
            n_time = n_clips + trailing_volumes
            create_array(
                store,
                f"runs/{segment}",
                shape=(len(reps), n_time, columns.size),
                dtype=np.float32,
                dims=["repetition", "time", "vertex"],
                chunks=(1, n_time, min(columns.size, 16384)),
                compression=None,
                attrs={
                    "repetitions": [rep for rep, _ in reps],
                    "n_clips": n_clips,
                    "n_trailing": trailing_volumes,
                    "files": [str(p) for _, p in reps],
                    "stimulus": str(stimuli[segment]),
                },
            )
            array_path = tmp / "runs" / segment
            tasks += [
                (segment, path, (path, stimulus, array_path, i, columns))
                for i, (_, path) in enumerate(reps)
            ]

        valid = np.ones(columns.size, bool)
        leading: dict[str, list[int]] = defaultdict(list)
        for (segment, path, _), result in zip(
            tasks, _map_runs(tasks, settings, threads, subject), strict=True
        ):
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
            leading[segment].append(result.n_leading)
        for segment, values in leading.items():
            store[f"runs/{segment}"].attrs["n_leading"] = values
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
        store.attrs.update(
            {
                "subject": subject,
                "segments": list(by_segment),
                "provenance": provenance(
                    "preprocess",
                    settings | checks,
                    [*map(str, run_files), *map(str, stimulus_files)],
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
        for _, _, args in tasks:
            yield _preprocess_run(*args, **settings)
            progress.update()
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=threads, mp_context=context, initializer=_single_threaded_blas
        ) as pool:
            futures = [pool.submit(_preprocess_run, *args, **settings) for _, _, args in tasks]
            try:
                for future in futures:
                    yield future.result()
                    progress.update()
            finally:  # on an error, do not wait for the runs not yet started
                for future in futures:
                    future.cancel()
    progress.close()
