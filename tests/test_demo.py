"""The demo generator: layout, ground truth, planted delay and determinism."""

from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import zarr

from pipeline import anatomy
from pipeline.datasets.cc2017 import discover_dataset, run_path, stimulus_path
from pipeline.demo import (
    AREA_SHARES,
    FEATURE_FAMILIES,
    VISUAL_SAMPLING,
    DemoSettings,
    _brain_model,
    _cortex,
    canonical_hrf,
    expected_dataset,
    family_scales,
    generate_demo,
    render_segment,
)
from tests.conftest import small_config

TINY = {
    "n_train_segments": 2,
    "n_test_segments": 1,
    "segment_duration_s": 10,
    "test_repetitions": 2,
    "frame_size": 16,
    "cortex_vertices": [30, 20],
    "subcortical_voxels": 5,
}


def test_generated_layout_is_the_expected_one(demo_root):
    settings = DemoSettings.from_config(
        small_config(demo={"n_train_segments": 8, "segment_duration_s": 20, "test_repetitions": 3})
    )
    found = discover_dataset(demo_root, test_repetitions=3)
    expected = expected_dataset(settings, demo_root)
    assert found.runs == expected.runs
    assert found.segments == expected.segments


def test_ground_truth_matches_the_settings(demo_root):
    truth = zarr.open_group(demo_root / "ground_truth.zarr", mode="r")
    driven = truth["subject1/driven"][:]
    assert driven.size == 1200 and driven.mean() == pytest.approx(0.2, abs=1e-3)
    assert (truth["subject1/snr"][:][driven] >= 3.0).all()
    assert truth.attrs["delay_s"] == 4.0


def test_each_feature_family_carries_its_share_of_the_drive(rng):
    shares = {"luminance": 2.0, "colour": 1.0, "objects": 1.0, "motion": 0.0}
    scales = family_scales(4, shares)
    sizes = {"luminance": 16, "colour": 3, "objects": 5, "motion": 1}
    assert scales.shape == (sum(sizes.values()),)
    # standardised independent features, standard-normal weights: each family's part of
    # the drive has the variance of its share
    features = rng.standard_normal((20000, len(scales))) * scales
    weights = rng.standard_normal((len(scales), 50))
    start = 0
    for family in FEATURE_FAMILIES:
        part = features[:, start : start + sizes[family]] @ weights[start : start + sizes[family]]
        start += sizes[family]
        expected = shares[family] / sum(shares.values())
        assert part.var(axis=0).mean() == pytest.approx(expected, abs=0.1)
    with pytest.raises(ValueError, match="need exactly"):
        family_scales(4, {"luminance": 1.0})
    with pytest.raises(ValueError, match="all zero"):
        family_scales(4, dict.fromkeys(FEATURE_FAMILIES, 0.0))


def test_the_demo_lies_on_the_fs_lr_cortex_with_its_driven_vertices_in_visual_areas(demo_root):
    axis = nib.load(run_path(demo_root, "subject1", "seg1", 1)).header.get_axis(1)
    truth = zarr.open_group(demo_root / "ground_truth.zarr", mode="r")
    vertices = truth["vertex"][:]
    hemisphere = truth["hemisphere"][:].astype(object)
    area = truth["area"][:].astype(object)
    parts = {structure: part for structure, part, _ in axis.iter_structures()}
    for name, structure, mesh in zip(
        anatomy.HEMISPHERES,
        ("CIFTI_STRUCTURE_CORTEX_LEFT", "CIFTI_STRUCTURE_CORTEX_RIGHT"),
        anatomy.cortex_vertices(),
        strict=True,
    ):
        part = parts[structure]
        assert axis.nvertices[structure] == anatomy.MESH_VERTICES
        np.testing.assert_array_equal(axis.vertex[part], vertices[hemisphere == name])
        assert np.isin(axis.vertex[part], mesh).all()
        # the areas recorded are the parcellation's
        np.testing.assert_array_equal(
            area[hemisphere == name], anatomy.vertex_areas(name, axis.vertex[part])
        )
    driven = truth["subject1/driven"][:]
    group = truth["area_group"][:].astype(object)
    visual = group != ""
    assert visual[driven].all()
    for name in anatomy.HEMISPHERES:
        side = hemisphere == name
        assert visual[side].sum() == VISUAL_SAMPLING * driven[side].sum()
    assert set(group[driven]) == set(anatomy.VISUAL_AREAS)


def test_each_group_of_areas_carries_its_families(tmp_path):
    """Standard-normal weights scaled per family: over a group's driven vertices, a
    family's mean squared weight is its share over its number of features."""
    settings = DemoSettings.from_config(small_config(demo=TINY | {"cortex_vertices": [3000, 3000]}))
    generate_demo(settings, tmp_path / "root")
    truth = zarr.open_group(tmp_path / "root/ground_truth.zarr", mode="r")
    weights = truth["subject1/weights"][:]
    group = truth["area_group"][:].astype(object)[truth["subject1/driven"][:]]
    sizes = {"luminance": 64, "colour": 3, "objects": 5, "motion": 1}
    bounds = dict(zip(FEATURE_FAMILIES, np.cumsum([0, *sizes.values()]), strict=False))
    for name, shares in AREA_SHARES.items():
        assert (group == name).sum() > 100, name
        for family, size in sizes.items():
            part = weights[bounds[family] : bounds[family] + size, group == name]
            expected = shares[family] / sum(shares.values()) / size
            assert np.mean(part**2) == pytest.approx(expected, rel=0.4), (name, family)
    assert truth.attrs["area_shares"]["motion"]["motion"] == pytest.approx(0.8)


def test_without_area_shares_every_feature_weighs_the_same(tmp_path):
    settings = DemoSettings.from_config(small_config(demo=TINY | {"area_shares": None}))
    generate_demo(settings, tmp_path / "root")
    truth = zarr.open_group(tmp_path / "root/ground_truth.zarr", mode="r")
    for shares in truth.attrs["area_shares"].values():
        # an 8 x 8 grid holds 64 of the 73 features
        assert shares["luminance"] == pytest.approx(64 / 73)


def test_scale_full_has_every_grayordinate_on_its_real_vertex():
    settings = DemoSettings.from_config(small_config(demo={"scale": "full"}))
    cortex = _cortex(settings)
    axis = _brain_model(settings, cortex)
    assert len(axis) == anatomy.GRAYORDINATES
    for mesh, vertices in zip(anatomy.cortex_vertices(), cortex.vertices, strict=True):
        np.testing.assert_array_equal(vertices, mesh)
    # a tenth of each hemisphere driven fits in its visual areas
    assert cortex.n_driven == (2970, 2972)
    assert all(
        n <= (cortex.group[cortex.hemisphere == h] != "").sum()
        for n, h in zip(cortex.n_driven, anatomy.HEMISPHERES, strict=True)
    )


def test_more_driven_vertices_than_visual_ones_is_refused_by_name():
    settings = DemoSettings.from_config(small_config(demo={"scale": "full"}))
    with pytest.raises(ValueError, match="demo.driven_fraction 0.5"):
        _cortex(replace(settings, driven_fraction=0.5))
    with pytest.raises(ValueError, match="demo.cortex_vertices"):
        _cortex(replace(settings, cortex_vertices=(40000, 10)))


@pytest.mark.parametrize("delay", [4.0, 6.0])
def test_hrf_peaks_at_the_planted_delay(delay):
    assert np.argmax(canonical_hrf(2.0, delay)) == delay / 2.0


def _texture_energy(grating_cycles) -> float:
    """Mean absolute difference of horizontally adjacent pixels over a rendered segment."""
    frames, _, _ = render_segment(
        np.random.default_rng(0), 90, 30, 64, object_speed=0.0, grating_cycles=grating_cycles
    )
    return float(np.mean([np.abs(np.diff(f.astype(np.int16), axis=1)).mean() for f in frames]))


def test_grating_cycles_set_how_fine_the_background_is():
    coarse, fine = _texture_energy((0.5, 0.5)), _texture_energy((6.0, 6.0))
    assert fine > 2 * coarse
    # the same range twice: the same frames, so the difference is the setting's
    assert _texture_energy((0.5, 0.5)) == coarse


def test_missing_runs_are_left_out(tmp_path):
    settings = DemoSettings.from_config(
        small_config(demo=TINY | {"missing_runs": ["subject1/test1/2"]})
    )
    assert expected_dataset(settings, tmp_path).repetitions("subject1", "test1") == [1]
    generate_demo(settings, tmp_path / "root")
    assert not run_path(tmp_path / "root", "subject1", "test1", 2).exists()
    assert run_path(tmp_path / "root", "subject1", "test1", 1).exists()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        generate_demo(
            DemoSettings.from_config(small_config(demo=TINY | {"seed": seed})), tmp_path / name
        )

    def data(name):
        return np.asarray(nib.load(run_path(tmp_path / name, "subject1", "seg1", 1)).dataobj)

    np.testing.assert_array_equal(data("a"), data("b"))
    assert not np.array_equal(data("a"), data("c"))
    video = [stimulus_path(tmp_path / n, "seg1").read_bytes() for n in ("a", "b")]
    assert video[0] == video[1]
