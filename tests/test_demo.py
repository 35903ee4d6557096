"""The demo generator: layout, ground truth, planted delay and determinism."""

import nibabel as nib
import numpy as np
import pytest
import zarr

from pipeline.cc2017 import discover_dataset, run_path, stimulus_path
from pipeline.demo import (
    FEATURE_FAMILIES,
    DemoSettings,
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


def test_ground_truth_records_the_feature_shares(demo_root):
    truth = zarr.open_group(demo_root / "ground_truth.zarr", mode="r")
    # every feature alike (the default): an 8 x 8 grid holds 64 of the 73 features
    assert truth.attrs["feature_shares"]["luminance"] == pytest.approx(64 / 73)
    assert sum(truth.attrs["feature_shares"].values()) == pytest.approx(1.0)


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
    assert expected_dataset(settings, tmp_path).runs["subject1"]["test1"] == [1]
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
