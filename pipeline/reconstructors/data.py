"""Training data in memory: aligned fMRI joined with the feature caches by (segment, clip)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.errors import DataError
from pipeline.stores import open_store

__all__ = ["Split", "cache_rows", "input_identity", "load_split"]


@dataclass
class Split:
    """One split of a subject's aligned fMRI.

    ``fmri`` (sample, voxel) float32; ``segment``/``clip`` name each sample's
    clip (training repetitions are separate samples of the same clip).
    """

    fmri: torch.Tensor
    segment: np.ndarray
    clip: np.ndarray

    def __len__(self) -> int:
        return len(self.fmri)


def load_split(aligned: str | os.PathLike, split: str) -> Split:
    """Read ``train`` or ``test`` of an aligned store into memory.

    Parameters
    ----------
    aligned : str or PathLike
        The subject's aligned store.
    split : str
        ``train`` or ``test``.

    Returns
    -------
    Split
        ``fmri`` float32 (n_samples, n_voxels), ``segment`` str and ``clip`` int64
        (n_samples,).

    Raises
    ------
    DataError
        When the store has no such split.
    """
    store = open_store(aligned, stage="align")
    if split not in store:
        raise DataError(f"{aligned}: no {split!r} split")
    group = store[split]
    return Split(
        fmri=torch.from_numpy(np.ascontiguousarray(group["fmri"][:], dtype=np.float32)),
        segment=np.array(group["segment"][:].tolist(), dtype=str),
        clip=group["clip"][:].astype(np.int64),
    )


def cache_rows(cache: str | os.PathLike, split: Split, stage: str) -> np.ndarray:
    """Row of a cache store for every sample of ``split`` (anything with ``segment`` and
    ``clip`` arrays).

    Parameters
    ----------
    cache : str or PathLike
        A cache store with ``segment`` and ``clip`` arrays.
    split : Split
        Or anything with ``segment`` and ``clip`` arrays of shape (n_samples,).
    stage : str
        The stage that must have written ``cache``.

    Returns
    -------
    ndarray of shape (n_samples,), int64
        Row indices into the cache's arrays.

    Raises
    ------
    DataError
        Naming the cache and the first clip it lacks (e.g. a cache built
        from other frame stores than the aligned subject's segments).
    """
    store = open_store(cache, stage=stage)
    index = {
        (str(s), int(c)): row
        for row, (s, c) in enumerate(zip(store["segment"][:], store["clip"][:], strict=True))
    }
    rows = np.empty(len(split.segment), np.int64)
    for i, key in enumerate(zip(split.segment, split.clip.tolist(), strict=True)):
        row = index.get((str(key[0]), key[1]))
        if row is None:
            raise DataError(f"{cache}: no entry for segment {key[0]} clip {key[1]}")
        rows[i] = row
    return rows


def input_identity(*stores: str | os.PathLike) -> list[dict]:
    """Which version of each input store a result was computed from (stage, params, time).

    Parameters
    ----------
    *stores : str or PathLike
        Input stores.

    Returns
    -------
    list of dict
        Per store, its ``path``, ``stage`` and ``created`` time.
    """
    out = []
    for path in stores:
        record = open_store(path).attrs.get("provenance", {})
        out.append(
            {
                "path": str(path),
                "stage": record.get("stage"),
                "created": record.get("created"),
            }
        )
    return out
