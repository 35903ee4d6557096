"""Reading the cortex of CIFTI-2 dense time series (``.dtseries.nii``), any layout.

HCP-style dense time series (cc2017, the HCP releases) hold the cortical
surface vertices of both hemispheres followed by subcortical voxels; the
cortical columns are found by structure name in the brain-model index map.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import DataError

if TYPE_CHECKING:
    from nibabel import cifti2

__all__ = ["CORTEX_STRUCTURES", "cortex_columns", "read_cortex_bold"]

#: Brain structures whose surface vertices form "the cortex".
CORTEX_STRUCTURES = ("CIFTI_STRUCTURE_CORTEX_LEFT", "CIFTI_STRUCTURE_CORTEX_RIGHT")


def cortex_columns(
    brain_models: cifti2.Cifti2MatrixIndicesMap, path: str | os.PathLike = ""
) -> np.ndarray:
    """Grayordinate indices of the cortical surface vertices (left then right).

    Read from the brain-model index map of the CIFTI header (the structures'
    offsets and counts), which is much cheaper than building nibabel's
    ``BrainModelAxis`` for a 91k-grayordinate file.

    Parameters
    ----------
    brain_models : nibabel.cifti2.Cifti2MatrixIndicesMap
        The brain-models index map (axis 1) of a CIFTI-2 header.
    path : path, optional
        Named in error messages only.

    Returns
    -------
    ndarray of shape (n_cortex_vertices,), int
        Grayordinate (column) indices, CORTEX_LEFT then CORTEX_RIGHT (29,696 + 29,716
        = 59,412 in the HCP 91k space).

    Raises
    ------
    DataError
        If the brain model has no cortical surface structure.
    """
    columns = [
        np.arange(model.index_offset, model.index_offset + model.index_count)
        for model in brain_models.brain_models
        if model.brain_structure in CORTEX_STRUCTURES
    ]
    if not columns:
        raise DataError(f"{path}: CIFTI brain models have no CORTEX_LEFT/CORTEX_RIGHT")
    return np.concatenate(columns)


_SECONDS = {"SECOND": 1.0, "MSEC": 1e-3, "USEC": 1e-6}


def read_cortex_bold(
    path: str | os.PathLike,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Read the cortical vertices of one CIFTI-2 dense time series.

    Parameters
    ----------
    path : path
        A CIFTI-2 ``.dtseries.nii`` file.

    Returns
    -------
    bold : ndarray of shape (n_volumes, n_cortex_vertices), float32
    columns : ndarray of shape (n_cortex_vertices,), int
        Grayordinate index of every returned column.
    tr_s : float
        Series step in seconds from the file's time axis.

    Raises
    ------
    DataError
        If the file is missing, unreadable or not a dense time series.
    """
    import nibabel as nib  # here: stages that only read videos need not import it

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: fMRI run file not found")
    try:
        img = nib.load(str(path), mmap=False)
        series = img.header.matrix.get_index_map(0)
        models = img.header.matrix.get_index_map(1)
    except Exception as exc:  # nibabel raises many types for a broken header
        raise DataError(f"{path}: cannot read as CIFTI-2 ({exc})") from exc
    if (
        series.indices_map_to_data_type != "CIFTI_INDEX_TYPE_SERIES"
        or models.indices_map_to_data_type != "CIFTI_INDEX_TYPE_BRAIN_MODELS"
        or series.series_unit not in _SECONDS
    ):
        raise DataError(f"{path}: not a CIFTI-2 dense time series (dtseries) in time units")
    columns = cortex_columns(models, path)
    contiguous = columns[-1] - columns[0] + 1 == columns.size
    try:
        if contiguous:  # the usual layout: cortex first, a single slice read
            bold = np.asarray(img.dataobj[:, columns[0] : columns[-1] + 1], dtype=np.float32)
        else:
            bold = np.asarray(img.dataobj[:, :], dtype=np.float32)[:, columns]
    except Exception as exc:
        raise DataError(f"{path}: cannot read the data block ({exc}); file truncated?") from exc
    return bold, columns, float(series.series_step) * _SECONDS[series.series_unit]
