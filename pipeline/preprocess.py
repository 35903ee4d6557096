"""Per-run fMRI preprocessing: trim, polynomial detrend, z-score per cortical vertex.

Following Wen et al. (2018): each run's cortical time series is cut to the
stimulus period plus the trailing volumes (the leading volumes are dropped;
the trailing ones are kept because they carry the delayed response to the
last clips), a polynomial of order 4 is regressed out and every vertex is
z-scored. Runs are streamed one at a time, so memory stays at one run.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr
from numpy.polynomial import legendre
from tqdm.auto import tqdm

from pipeline.cc2017 import (
    DataError,
    parse_run_path,
    read_cortex_bold,
    read_stimulus_info,
    run_timing,
)
from pipeline.stores import atomic_output, create_array, provenance

__all__ = ["detrend_zscore", "polynomial_basis", "preprocess_subject"]

log = logging.getLogger(__name__)

_BLOCK = 16384  # vertices per float64 block


def polynomial_basis(n_volumes: int, order: int) -> np.ndarray:
    """Legendre polynomials of degree 0..order on an evenly spaced grid.

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
    """
    n_volumes, n_vertices = bold.shape
    if n_volumes <= order + 1:
        raise ValueError(f"{n_volumes} volumes are too few for a detrend of order {order}")
    basis = polynomial_basis(n_volumes, order)
    projector = np.linalg.pinv(basis)  # (order + 1, n_volumes)
    clean = np.zeros((n_volumes, n_vertices), np.float32)
    valid = np.isfinite(bold).all(axis=0)
    for start in range(0, n_vertices, _BLOCK):
        block = slice(start, start + _BLOCK)
        y = np.where(valid[block], bold[:, block], 0.0).astype(np.float64)
        y -= basis @ (projector @ y)
        std = y.std(axis=0)
        scale = np.abs(bold[:, block]).max(axis=0, initial=0.0, where=valid[block][None])
        ok = valid[block] & (std > 1e-6 * np.maximum(scale, 1e-12))
        valid[block] = ok
        clean[:, block] = np.where(ok, y / np.where(ok, std, 1.0), 0.0)
    return clean, valid


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
) -> None:
    """Preprocess every run of one subject into ``output`` (a Zarr store).

    Store layout::

        runs/{segment}   (repetition, time, vertex) float32   time 0 = stimulus onset
        grayordinate     (vertex,) int64    CIFTI column of every cortical vertex
        valid            (vertex,) bool     finite and non-constant in every run

    ``runs/{segment}`` carries ``repetitions``, ``n_clips``, ``n_trailing``,
    ``n_leading`` and ``files`` attributes.

    Raises
    ------
    DataError
        A run is missing or unreadable, its length disagrees with its stimulus,
        or its brain model differs from the other runs.
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
    missing = [p for reps in by_segment.values() for _, p in reps if not p.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: fMRI run file not found ({len(missing)} missing in all)")

    params = {
        "tr_s": tr_s,
        "trailing_volumes": trailing_volumes,
        "max_leading_volumes": max_leading_volumes,
        "detrend_order": detrend_order,
    }
    n_runs = sum(len(v) for v in by_segment.values())
    with atomic_output(output) as tmp:
        store = zarr.open_group(tmp, mode="w")
        columns = valid = None
        progress = tqdm(total=n_runs, desc=f"preprocess {subject}", unit="run")
        for segment, reps in by_segment.items():
            reps.sort()
            stimulus = read_stimulus_info(stimuli[segment])
            array = None
            leading = []
            for i, (_, path) in enumerate(reps):
                bold, cols, file_tr = read_cortex_bold(path)
                if abs(file_tr - tr_s) > 1e-3:
                    log.warning(
                        "%s: time axis step %.3f s differs from dataset.tr_s %.3f s",
                        path,
                        file_tr,
                        tr_s,
                    )
                if columns is None:
                    columns, valid = cols, np.ones(cols.size, bool)
                elif not np.array_equal(cols, columns):
                    raise DataError(
                        f"{path}: its cortical brain model ({cols.size} vertices) differs from "
                        f"the subject's other runs ({columns.size} vertices)"
                    )
                timing = run_timing(
                    bold.shape[0], stimulus, tr_s, trailing_volumes, max_leading_volumes, path
                )
                clean, ok = detrend_zscore(bold[timing.n_leading :], detrend_order)
                bad = ~ok & valid
                if bad.any():
                    all_nan = int(np.isnan(bold[:, bad]).all(axis=0).sum())
                    log.warning(
                        "%s: %d vertices dropped (%d all-NaN, the rest non-finite or constant)",
                        path,
                        int(bad.sum()),
                        all_nan,
                    )
                valid &= ok
                if array is None:
                    array = create_array(
                        store,
                        f"runs/{segment}",
                        shape=(len(reps), clean.shape[0], clean.shape[1]),
                        dtype=np.float32,
                        dims=["repetition", "time", "vertex"],
                        chunks=(1, clean.shape[0], min(clean.shape[1], 16384)),
                        compress=False,
                    )
                array[i] = clean
                leading.append(timing.n_leading)
                progress.update()
            array.attrs.update(
                {
                    "repetitions": [rep for rep, _ in reps],
                    "n_clips": timing.n_clips,
                    "n_trailing": trailing_volumes,
                    "n_leading": leading,
                    "files": [str(p) for _, p in reps],
                    "stimulus": str(stimuli[segment]),
                }
            )
        progress.close()
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
                    "preprocess", params, [*map(str, run_files), *map(str, stimulus_files)]
                ),
            }
        )
