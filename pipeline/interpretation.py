"""Where in the brain: the reconstructors' voxel importance on the fs_LR 32k cortex.

Paper §7 and appendix C.5 (Figures 5 and 12) draw, for each reconstructor, the
weights of its first ridge layer on flat maps of the cortex: "each voxel's
weight averaged and normalized to between 0 and 1", with the colour bar set to
0.25–0.75 (appendix A: Connectome Workbench on the ``Q1-Q6_R440`` flat
surfaces). Perception weights sit in early visual cortex, semantic weights
spread over higher visual cortex. This module computes such maps per subject:

* ``ridge_weights`` — the paper's: the mean absolute weight of the ridge
  layer (``Linear(voxels, hidden)``) over its outputs, per voxel;
* ``gradient_x_input`` — a saliency: the mean over the test clips of
  ``|x ⊙ ∂(½‖f(x)‖²)/∂x|``, where ``f`` is the Perception Reconstructor's
  predicted latents or the Semantic Reconstructor's backbone tokens.

Each map is scaled to [0, 1] over the selected voxels (min–max) and placed
back on the grayordinates of the subject's CIFTI runs, NaN where a vertex was
not selected. The flat maps are drawn with matplotlib on the HCP S1200 flat
surfaces (:mod:`pipeline.anatomy`; the same fs_LR 32k mesh, another
flattening than the paper's), with the borders of the MMP 1.0 areas named in
``interpretation.border_areas``. The ROI table compares the two reconstructors
per MMP area and per group of visual areas: the mean difference of their
importances, each z-scored over the selected voxels, with a permutation
p-value of the area labels, and the same for the groups after the ROI labels are
shuffled across the selected voxels (a control that must find nothing).
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.anatomy import HEMISPHERES, MESH_VERTICES, VISUAL_AREAS

if TYPE_CHECKING:
    import torch
    from nibabel import cifti2

__all__ = [
    "METHODS",
    "RECONSTRUCTORS",
    "cortex_axis",
    "draw_flat_map",
    "gradient_x_input",
    "interpret_subject",
    "permutation_p",
    "ridge_importance",
    "roi_table",
    "scale_unit",
    "spread_labels",
]

log = logging.getLogger(__name__)

#: The importance methods (``interpretation.methods``).
METHODS = ("ridge_weights", "gradient_x_input")
#: The reconstructors interpreted, as their stages name them.
RECONSTRUCTORS = ("perception", "semantic")
_CORTEX = {"CIFTI_STRUCTURE_CORTEX_LEFT": "left", "CIFTI_STRUCTURE_CORTEX_RIGHT": "right"}


# --------------------------------------------------------------------------- importance


def ridge_importance(weight: np.ndarray) -> np.ndarray:
    """The paper's voxel weight: the mean absolute weight of a ridge layer per input voxel.

    Parameters
    ----------
    weight : ndarray of shape (hidden, n_voxels)
        ``Linear(n_voxels, hidden).weight``.

    Returns
    -------
    ndarray of shape (n_voxels,), float64
    """
    return np.abs(np.asarray(weight, np.float64)).mean(axis=0)


def gradient_x_input(
    forward: Callable[[torch.Tensor], torch.Tensor], fmri: torch.Tensor, batch_size: int = 64
) -> np.ndarray:
    """Mean over samples of ``|x ⊙ ∂(½‖forward(x)‖²)/∂x|``, per voxel.

    Parameters
    ----------
    forward : callable
        Maps fMRI (batch, n_voxels) to any output tensor (batch, ...); run in eval mode.
    fmri : torch.Tensor of shape (n_samples, n_voxels)
        The samples (e.g. the test clips), on the forward's device.
    batch_size : int
        Samples per backward pass.

    Returns
    -------
    ndarray of shape (n_voxels,), float64
    """
    import torch

    total = None
    for start in range(0, len(fmri), batch_size):
        x = fmri[start : start + batch_size].detach().float().clone().requires_grad_(True)
        out = forward(x).float()
        # the gradient with respect to the input only: no parameter gradients are made
        (grad,) = torch.autograd.grad(0.5 * out.pow(2).sum(), x)
        part = (grad * x).abs().sum(0).detach().double().cpu().numpy()
        total = part if total is None else total + part
    return total / len(fmri)


def scale_unit(values: np.ndarray) -> np.ndarray:
    """Min–max scaling to [0, 1] (all zeros for a constant map), as the paper's maps.

    Parameters
    ----------
    values : ndarray

    Returns
    -------
    ndarray, float64
    """
    values = np.asarray(values, np.float64)
    low, high = values.min(), values.max()
    return np.zeros_like(values) if high == low else (values - low) / (high - low)


def _zscore(values: np.ndarray) -> np.ndarray:
    sd = values.std()
    return (values - values.mean()) / (sd if sd > 0 else 1.0)


# --------------------------------------------------------------------------- statistics


def permutation_p(
    differences: np.ndarray, regions: np.ndarray, permutations: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Mean difference of each region and its two-sided label-permutation p-value.

    Under the null hypothesis the region labels are exchangeable across the voxels: each
    permutation shuffles the differences over all voxels and takes every region's mean
    again. A region is thus compared with the voxels outside it, and a region that holds
    most of the voxels is not penalised for it.

    Parameters
    ----------
    differences : ndarray of shape (n,)
        Per-voxel differences of two maps.
    regions : ndarray of shape (k, n), bool
        Each region's voxels; none may be empty.
    permutations : int
        Random permutations drawn for the null distributions (shared by the regions).
    rng : numpy.random.Generator

    Returns
    -------
    means : ndarray of shape (k,)
    p : ndarray of shape (k,)
        ``(1 + #{|null mean| >= |mean|}) / (1 + permutations)`` per region.
    """
    d = np.asarray(differences, np.float64)
    members = np.asarray(regions, bool).astype(np.float64)
    counts = members.sum(axis=1)
    if (counts == 0).any():
        raise ValueError("a region without voxels has no mean")
    observed = members @ d / counts
    exceed = np.zeros(len(members))
    for start in range(0, permutations, 64):  # bounded memory for many voxels
        n = min(64, permutations - start)
        shuffled = np.stack([d[rng.permutation(len(d))] for _ in range(n)])
        null = shuffled @ members.T / counts
        exceed += (np.abs(null) >= np.abs(observed) - 1e-12).sum(axis=0)
    return observed, (1 + exceed) / (1 + permutations)


def roi_table(
    importance: dict[str, np.ndarray],
    areas: np.ndarray,
    *,
    permutations: int,
    seed: int,
    shuffle_labels: bool = False,
) -> list[dict]:
    """Per MMP area and per group of visual areas: selected voxels, mean importance of each
    reconstructor, and their difference with a permutation p-value (:func:`permutation_p`).

    The difference is taken between the maps z-scored over all selected voxels, so that
    it says where each reconstructor puts its weight relative to its own map, and each
    area's mean difference is compared with those of as many voxels drawn at random.

    Parameters
    ----------
    importance : dict of str to ndarray of shape (n_voxels,)
        ``perception`` and ``semantic`` maps (scaled to [0, 1]) over the selected voxels.
    areas : ndarray of shape (n_voxels,)
        The MMP 1.0 area of each voxel (``''`` outside the cortex' areas).
    permutations : int
        Permutations of the voxels' labels, shared by the tests.
    seed : int
        Seeds the permutations (and the label shuffle).
    shuffle_labels : bool
        The control: the area labels permuted across the voxels first.

    Returns
    -------
    list of dict
        Rows ``roi``, ``kind`` (``group`` or ``area``), ``group``, ``n_selected``,
        ``perception``, ``semantic``, ``difference`` (perception − semantic, z units) and
        ``p``; groups first, then areas by name.
    """
    rng = np.random.default_rng(seed)
    areas = np.asarray(areas, dtype=object)
    if shuffle_labels:
        areas = areas[rng.permutation(len(areas))]
    pr, sr = importance["perception"], importance["semantic"]
    difference = _zscore(pr) - _zscore(sr)
    group_of = {area: group for group, names in VISUAL_AREAS.items() for area in names}
    regions = [(g, "group", g, np.isin(areas, names)) for g, names in VISUAL_AREAS.items()]
    regions += [(a, "area", group_of.get(a, ""), areas == a) for a in sorted(set(areas) - {""})]
    filled = [r for r in regions if r[3].any()]
    means, ps = (
        permutation_p(difference, np.stack([r[3] for r in filled]), permutations, rng)
        if filled
        else ((), ())
    )
    tested = {r[0]: (float(m), float(p)) for r, m, p in zip(filled, means, ps, strict=True)}
    rows = []
    for name, kind, group, mask in regions:
        row = {"roi": name, "kind": kind, "group": group, "n_selected": int(mask.sum())}
        if name not in tested:
            rows.append(row | dict.fromkeys(("perception", "semantic", "difference", "p")))
            continue
        mean, p = tested[name]
        rows.append(
            row
            | {
                "perception": float(pr[mask].mean()),
                "semantic": float(sr[mask].mean()),
                "difference": mean,
                "p": p,
            }
        )
    return rows


def _write_table(rows: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.items()})


# --------------------------------------------------------------------------- anatomy


def cortex_axis(run: str | os.PathLike) -> cifti2.BrainModelAxis:
    """The brain model of a CIFTI run, checked to lie on the fs_LR 32k mesh.

    Parameters
    ----------
    run : path
        A ``.dtseries.nii`` of the subject.

    Returns
    -------
    nibabel.cifti2.BrainModelAxis

    Raises
    ------
    ValueError
        If its cortex is on another mesh than the fs_LR 32k one (32,492 vertices per
        hemisphere), naming the file and both counts.
    """
    import nibabel as nib

    axis = nib.load(run).header.get_axis(1)
    for structure in _CORTEX:
        found = axis.nvertices.get(structure)
        if found != MESH_VERTICES:
            raise ValueError(
                f"{run}: {structure} lies on a mesh of {found} vertices; the interpretation "
                f"maps need the fs_LR 32k mesh of the HCP grayordinates ({MESH_VERTICES} "
                "vertices per hemisphere, 91,282 grayordinates)"
            )
    return axis


def _cortex_vertices(axis: cifti2.BrainModelAxis) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Hemisphere → (grayordinate columns, mesh vertices) of the cortex."""
    out = {}
    for structure, part, _ in axis.iter_structures():
        if structure in _CORTEX:
            columns = np.arange(len(axis))[part]
            out[_CORTEX[structure]] = (columns, axis.vertex[part])
    return out


def grayordinate_areas(
    run: str | os.PathLike, columns: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The hemisphere and MMP 1.0 area of grayordinate columns of a subject's runs.

    Parameters
    ----------
    run : path
        One CIFTI run; its brain model places the columns on the fs_LR 32k mesh.
    columns : ndarray of int
        Grayordinate indices.

    Returns
    -------
    hemisphere, area : ndarray of shape (len(columns),), object
        ``''`` off the cortex.

    Raises
    ------
    ValueError
        If the run's cortex is not on the fs_LR 32k mesh.
    """
    return _areas_of_columns(cortex_axis(run), columns)


def _areas_of_columns(
    axis: cifti2.BrainModelAxis, columns: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(hemisphere, MMP area) of grayordinate columns; ``''`` off the cortex."""
    from pipeline.anatomy import vertex_areas

    hemisphere = np.full(len(columns), "", dtype=object)
    area = np.full(len(columns), "", dtype=object)
    for name, (cols, vertices) in _cortex_vertices(axis).items():
        where = np.isin(columns, cols)
        position = np.searchsorted(cols, columns[where])
        hemisphere[where] = name
        area[where] = vertex_areas(name, vertices[position])
    return hemisphere, area


# --------------------------------------------------------------------------- flat maps


def _area_borders(hemisphere: str, areas: Iterable[str]):
    """Flat-map segments between vertices of different MMP areas, where one of them is in
    ``areas``; and the centre of each of those areas (for its label)."""
    from pipeline.anatomy import cortex_vertices, flat_surface, vertex_areas

    surface = flat_surface(hemisphere)
    mesh = cortex_vertices()[HEMISPHERES.index(hemisphere)]
    label = np.full(MESH_VERTICES, "", dtype=object)
    label[mesh] = vertex_areas(hemisphere, mesh)
    wanted = set(areas)
    tri = surface.triangles
    edges = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [2, 0]]])
    a, b = label[edges[:, 0]], label[edges[:, 1]]
    keep = (a != b) & (np.isin(a, list(wanted)) | np.isin(b, list(wanted)))
    # the border runs through the middle of each crossing edge: join the midpoints of the
    # two crossing edges of every triangle
    mid = surface.coords[edges].mean(axis=1)
    n = len(tri)
    crossing = keep.reshape(3, n).T
    segments = [
        np.stack([mid[j * n + t] for j in np.flatnonzero(crossing[t])])
        for t in np.flatnonzero(crossing.sum(1) == 2)
    ]
    centres = {
        area: surface.coords[np.flatnonzero(label == area)].mean(axis=0)
        for area in sorted(wanted)
        if (label == area).any()
    }
    return segments, centres


def draw_flat_map(
    ax,
    hemisphere: str,
    vertices: np.ndarray,
    values: np.ndarray,
    *,
    vmin: float,
    vmax: float,
    cmap: str = "inferno",
    border_areas: Iterable[str] = (),
):
    """Draw values at mesh vertices on a hemisphere's flat map.

    The flat sheet is drawn grey; triangles whose three vertices carry values are
    filled (Gouraud shading), and every valued vertex is also drawn as a dot, so that a
    sparse sample of vertices shows too.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    hemisphere : {'left', 'right'}
    vertices : ndarray of int
        fs_LR 32k mesh vertices.
    values : ndarray of float
        One value per vertex (NaN: not drawn).
    vmin, vmax : float
        Colour range.
    cmap : str
        Matplotlib colour map.
    border_areas : iterable of str
        MMP 1.0 areas whose borders are drawn and named.

    Returns
    -------
    matplotlib.collections.PathCollection
        The dots: their offsets are the vertices' flat-map coordinates.
    """
    from matplotlib.collections import LineCollection
    from matplotlib.patheffects import withStroke
    from matplotlib.tri import Triangulation

    from pipeline.anatomy import flat_surface

    surface = flat_surface(hemisphere)
    x, y = surface.coords[:, 0], surface.coords[:, 1]
    sheet = Triangulation(x, y, surface.triangles)
    ax.tripcolor(sheet, np.zeros(MESH_VERTICES), cmap="Greys", vmin=-4, vmax=1, shading="flat")
    values = np.asarray(values, np.float64)
    valid = np.isfinite(values)
    full = np.full(MESH_VERTICES, np.nan)
    full[vertices[valid]] = values[valid]
    filled = np.isfinite(full)[surface.triangles].all(axis=1)
    if filled.any():
        coloured = Triangulation(x, y, surface.triangles[filled])
        ax.tripcolor(
            coloured, np.nan_to_num(full), cmap=cmap, vmin=vmin, vmax=vmax, shading="gouraud"
        )
    dots = ax.scatter(
        x[vertices[valid]],
        y[vertices[valid]],
        c=values[valid],
        s=4 if valid.sum() < 5000 else 0.5,
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        linewidths=0,
    )
    segments, centres = _area_borders(hemisphere, border_areas)
    if segments:
        ax.add_collection(LineCollection(segments, colors="white", linewidths=0.6))
    for area, (cx, cy) in centres.items():
        label = ax.annotate(
            area,
            (cx, cy),
            xytext=(cx, cy),
            color="white",
            fontsize=6,
            ha="center",
            va="center",
            arrowprops={"arrowstyle": "-", "color": "white", "linewidth": 0.4},
            path_effects=[withStroke(linewidth=1.5, foreground="black")],  # off the sheet too
        )
        label.set_in_layout(False)  # moved by :func:`spread_labels`, not by the layout
    ax.set_aspect("equal")
    ax.set_axis_off()
    ax.set_title(hemisphere, fontsize=8)
    return dots


def spread_labels(fig, iterations: int = 200, gap_px: float = 3.0) -> int:
    """Move the area labels of a drawn figure's flat maps apart until none overlap.

    Each label stays joined to its area's centre by a thin line. Overlaps are resolved
    in display space, after the figure's layout: each overlapping pair is pushed apart
    along the axis on which it overlaps least, half the overlap each.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        Drawn with :func:`draw_flat_map`; drawn here once to fix its layout.
    iterations : int
        Most passes over all pairs.
    gap_px : float
        Space left between two labels, pixels.

    Returns
    -------
    int
        Pairs still overlapping after the last pass, over all axes (0 when all are apart).
    """
    from matplotlib.text import Annotation

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    remaining = 0
    for ax in fig.axes:
        labels = [t for t in ax.texts if isinstance(t, Annotation)]
        if len(labels) < 2:
            continue
        to_data = ax.transData.inverted()
        boxes = [t.get_window_extent(renderer) for t in labels]
        centre = np.array([[b.x0 + b.x1, b.y0 + b.y1] for b in boxes]) / 2
        size = np.array([[b.width, b.height] for b in boxes]) + gap_px
        for _ in range(iterations):
            overlapping = 0
            for i in range(len(labels)):
                for j in range(i + 1, len(labels)):
                    delta = centre[j] - centre[i]
                    overlap = (size[i] + size[j]) / 2 - np.abs(delta)
                    if (overlap <= 0).any():
                        continue
                    overlapping += 1
                    axis = int(np.argmin(overlap))
                    sign = 1.0 if delta[axis] >= 0 else -1.0
                    centre[i, axis] -= sign * overlap[axis] / 2
                    centre[j, axis] += sign * overlap[axis] / 2
            if not overlapping:
                break
        for label, position in zip(labels, centre, strict=True):
            label.xyann = tuple(to_data.transform(position))
        remaining += overlapping
    return remaining


def _figure(
    maps: dict[str, tuple[np.ndarray, np.ndarray]],
    title: str,
    path: Path,
    *,
    vmin: float,
    vmax: float,
    cmap: str,
    border_areas: Iterable[str],
    label: str,
) -> None:
    """Both hemispheres of one map side by side, with a colour bar; ``maps``: hemisphere →
    (vertices, values)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), layout="constrained")
    dots = None
    for ax, hemisphere in zip(axes, HEMISPHERES, strict=True):
        vertices, values = maps[hemisphere]
        dots = draw_flat_map(
            ax,
            hemisphere,
            vertices,
            values,
            vmin=vmin,
            vmax=vmax,
            cmap=cmap,
            border_areas=border_areas,
        )
    fig.colorbar(dots, ax=axes, shrink=0.7, label=label)
    fig.suptitle(title, fontsize=10)
    fig.set_dpi(110)
    spread_labels(fig)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- the stage


def _importances(
    perception: str | os.PathLike,
    semantic: str | os.PathLike,
    aligned: str | os.PathLike,
    methods: list[str],
    device: str,
) -> dict[str, dict[str, np.ndarray]]:
    """Method → reconstructor → raw importance per selected voxel."""
    from pipeline.models.loading import resolve_device
    from pipeline.reconstructors.data import load_split
    from pipeline.reconstructors.stages import load_perception, load_semantic

    device = resolve_device(device)
    models = {
        "perception": load_perception(perception, device).requires_grad_(False),
        "semantic": load_semantic(semantic, device).requires_grad_(False),
    }
    ridge = {
        "perception": models["perception"].ridge.weight,
        "semantic": models["semantic"].backbone.ridge.weight,
    }
    forward = {
        "perception": models["perception"],
        "semantic": lambda x: models["semantic"].backbone(x)[0],
    }
    out: dict[str, dict[str, np.ndarray]] = {}
    if "ridge_weights" in methods:
        out["ridge_weights"] = {
            name: ridge_importance(w.detach().float().cpu().numpy()) for name, w in ridge.items()
        }
    if "gradient_x_input" in methods:
        test = load_split(aligned, "test").fmri.to(device)
        out["gradient_x_input"] = {name: gradient_x_input(f, test) for name, f in forward.items()}
    return out


def check_areas(names: Iterable[str], key: str = "interpretation.border_areas") -> None:
    """Refuse names that are no MMP 1.0 area (``V1``, ``FFC``, …).

    Parameters
    ----------
    names : iterable of str
        Area names without the hemisphere's ``L_`` or ``R_``.
    key : str
        The config key named in the error.

    Raises
    ------
    ValueError
        Naming ``key`` and the unknown names.
    """
    from pipeline.anatomy import mmp_areas

    known = {label.split("_", 1)[1] for label in mmp_areas()[1] if label.startswith("L_")}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(
            f"{key}: {unknown} are no MMP 1.0 areas (names as in V1, "
            "MT, FFC, without the hemisphere's L_ or R_)"
        )


def interpret_subject(
    perception: str | os.PathLike,
    semantic: str | os.PathLike,
    aligned: str | os.PathLike,
    selection: str | os.PathLike,
    run: str | os.PathLike,
    output: str | os.PathLike,
    *,
    methods: list[str],
    colour_range: tuple[float, float] = (0.25, 0.75),
    border_areas: list[str] = ("V1", "V2", "V3", "V4", "MT", "LO1", "LO2", "LO3", "FFC"),
    permutations: int = 2000,
    seed: int = 0,
    device: str = "auto",
) -> dict[str, list[dict]]:
    """Write a subject's ``interpretation/`` folder.

    Contents: ``importance.zarr`` (each map over the selected voxels and on every
    grayordinate, the selection's t and mask), ``maps.dscalar.nii`` (every map as a
    CIFTI dense scalar over the runs' grayordinates, NaN where not selected: it opens in
    Connectome Workbench), ``flatmap_{map}.png`` per map, and
    ``roi_table_{method}.csv`` per method.

    Parameters
    ----------
    perception, semantic : path
        The trained reconstructors' model directories.
    aligned : path
        The subject's aligned store (selected voxels, test clips).
    selection : path
        The subject's voxel-selection store (t and mask over the cortex).
    run : path
        One of the subject's CIFTI runs: its brain model places the grayordinates.
    output : path
        The folder to write (atomically).
    methods : list of str
        Of :data:`METHODS`.
    colour_range : tuple of float
        Colour-bar range of the importance maps (the paper: 0.25–0.75).
    border_areas : list of str
        MMP 1.0 areas outlined on the flat maps.
    permutations : int
        Permutations of the area labels per ROI test.
    seed : int
        Seeds the permutations.
    device : str
        Where the reconstructors run (``auto``: CUDA when available).

    Returns
    -------
    dict of str to list of dict
        Method → its ROI table's rows.

    Raises
    ------
    ValueError
        For an unknown method or border area, or runs on another mesh than fs_LR 32k.
    """
    import zarr

    from pipeline.stores import atomic_output, create_array, open_store, provenance

    unknown = set(methods) - set(METHODS)
    if unknown or not methods:
        raise ValueError(f"interpretation methods {sorted(unknown) or methods}; known: {METHODS}")
    check_areas(border_areas)
    axis = cortex_axis(run)
    n_gray = len(axis)
    aligned_store = open_store(aligned, stage="align")
    columns = aligned_store["grayordinate"][:].astype(np.int64)
    if columns.size and columns.max() >= n_gray:
        raise ValueError(f"{aligned}: grayordinates beyond the {n_gray} of {run}")
    sel = open_store(selection, stage="select_voxels")
    sel_columns = sel["grayordinate"][:].astype(np.int64)
    hemisphere, areas = _areas_of_columns(axis, columns)
    raw = _importances(perception, semantic, aligned, methods, device)
    if aligned_store.attrs.get("combine") == "concat":  # features: volume after volume
        per_clip = aligned_store.attrs["volumes_per_clip"]
        raw = {
            method: {name: v.reshape(per_clip, -1).sum(0) for name, v in by_model.items()}
            for method, by_model in raw.items()
        }

    maps: dict[str, np.ndarray] = {}  # name → values per selected voxel
    tables = {}
    for method, by_model in raw.items():
        scaled = {name: scale_unit(v) for name, v in by_model.items()}
        for name in RECONSTRUCTORS:
            maps[f"{name}_{method}"] = scaled[name]
        rows = roi_table(scaled, areas, permutations=permutations, seed=seed)
        control = roi_table(
            scaled, areas, permutations=permutations, seed=seed, shuffle_labels=True
        )
        for row, ctl in zip(rows, control, strict=True):
            row["difference_shuffled_labels"] = ctl["difference"]
            row["p_shuffled_labels"] = ctl["p"]
        tables[method] = rows

    def on_grayordinates(values: np.ndarray, where: np.ndarray) -> np.ndarray:
        full = np.full(n_gray, np.nan, np.float32)
        full[where] = values
        return full

    dense = {name: on_grayordinates(v, columns) for name, v in maps.items()}
    # the selection's own statistic (reliability t, encoding r), or its mask where it has none
    statistic = sel.attrs.get("statistic", "t")
    selection_values = sel[statistic][:] if statistic else sel["mask"][:].astype(np.float32)
    dense["selection_t"] = on_grayordinates(selection_values, sel_columns)
    dense["selection_mask"] = on_grayordinates(sel["mask"][:].astype(np.float32), sel_columns)
    vertices = _cortex_vertices(axis)
    vmin, vmax = colour_range
    with atomic_output(output) as tmp:
        tmp.mkdir(parents=True)
        store = zarr.open_group(tmp / "importance.zarr", mode="w")
        create_array(store, "grayordinate", data=columns, dims=["voxel"])
        create_array(store, "area", data=areas.astype(str), dims=["voxel"])
        create_array(store, "hemisphere", data=hemisphere.astype(str), dims=["voxel"])
        for name, values in maps.items():
            create_array(store, name, data=values.astype(np.float32), dims=["voxel"])
        dense_group = store.create_group("grayordinates")
        for name, values in dense.items():
            create_array(dense_group, name, data=values, dims=["grayordinate"])
        store.attrs.update(
            {
                "subject": aligned_store.attrs["subject"],
                "methods": list(methods),
                "scaling": "min-max over the selected voxels, per map (paper §7)",
                "colour_range": list(colour_range),
                "provenance": provenance(
                    "interpret",
                    {
                        "methods": list(methods),
                        "colour_range": list(colour_range),
                        "border_areas": list(border_areas),
                        "permutations": permutations,
                        "seed": seed,
                    },
                    [str(perception), str(semantic), str(aligned), str(selection), str(run)],
                ),
            }
        )
        _write_dscalar(tmp / "maps.dscalar.nii", dense, axis)
        for name, values in dense.items():
            if name == "selection_t":
                finite = values[np.isfinite(values)]
                low, high = (0.0, float(np.percentile(finite, 99))) if finite.size else (0, 1)
                label = {"t": "reliability t", "r": "encoding r"}.get(statistic, "selected")
                cmap = "viridis"
            elif name == "selection_mask":
                low, high, label, cmap = 0.0, 1.0, "selected", "viridis"
            else:
                low, high, label, cmap = vmin, vmax, "importance (0-1)", "inferno"
            per_hemisphere = {h: (v, values[c]) for h, (c, v) in vertices.items()}
            _figure(
                per_hemisphere,
                f"{aligned_store.attrs['subject']}: {name.replace('_', ' ')}",
                tmp / f"flatmap_{name}.png",
                vmin=low,
                vmax=high,
                cmap=cmap,
                border_areas=border_areas,
                label=label,
            )
        for method, rows in tables.items():
            _write_table(rows, tmp / f"roi_table_{method}.csv")
    for method, rows in tables.items():
        for row in rows[: len(VISUAL_AREAS)]:
            log.info(
                "%s %s: %s voxels, perception - semantic %s (p %s; shuffled labels p %s)",
                method,
                row["roi"],
                row["n_selected"],
                row["difference"],
                row["p"],
                row["p_shuffled_labels"],
            )
    return tables


def _write_dscalar(path: Path, maps: dict[str, np.ndarray], axis) -> None:
    from nibabel import cifti2

    scalars = cifti2.ScalarAxis(list(maps))
    data = np.stack([maps[name] for name in maps]).astype(np.float32)
    cifti2.Cifti2Image(data, header=(scalars, axis)).to_filename(str(path))
