"""Voxel selection: equals a scipy.stats reference, finds the planted vertices, not noise."""

import numpy as np
import pytest
import zarr
from scipy import stats

from pipeline.analysis import clip_features
from pipeline.selection import (
    corrected_p_values,
    encoding_scores,
    motion_energy,
    pearson_columns,
    reliability_ttest,
    select_vertices,
)
from pipeline.stores import open_store


def test_pearson_equals_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 7)), rng.normal(size=(40, 7))
    b[:, 0] += 2 * a[:, 0]
    expected = [stats.pearsonr(a[:, i], b[:, i]).statistic for i in range(7)]
    np.testing.assert_allclose(pearson_columns(a, b), expected, rtol=1e-10)


@pytest.mark.parametrize("alternative", ["two-sided", "greater"])
def test_ttest_equals_scipy_reference(alternative):
    rng = np.random.default_rng(1)
    r = np.tanh(rng.normal(0.0, 0.2, size=(18, 500)))
    r[:, :40] = np.tanh(rng.normal(0.4, 0.2, size=(18, 40)))
    valid = np.ones(500, bool)
    valid[-5:] = False
    result = reliability_ttest(r, 0.05, valid, alternative)
    for v in range(495):
        ref = stats.ttest_1samp(np.arctanh(r[:, v]), 0.0, alternative=alternative)
        assert result.t[v] == pytest.approx(ref.statistic, rel=1e-9)
        assert result.p[v] == pytest.approx(ref.pvalue, rel=1e-9)
    assert result.n_tested == 495
    expected_mask = np.zeros(500, bool)
    expected_mask[:495] = np.minimum(result.p[:495] * 495, 1) < 0.05
    np.testing.assert_array_equal(result.mask, expected_mask)
    assert np.isnan(result.t[-5:]).all() and not result.mask[-5:].any()
    assert result.mask[:40].mean() > 0.9  # the reliable vertices are found


def test_null_data_selects_at_most_chance():
    rng = np.random.default_rng(2)
    r = np.tanh(rng.normal(0.0, 0.2, size=(18, 20000)))
    assert reliability_ttest(r, 0.05).mask.sum() <= 2  # FWER 0.05


def _recall_precision(mask, driven):
    hit = (mask & driven).sum()
    return hit / driven.sum(), hit / max(mask.sum(), 1)


def test_demo_driven_vertices_are_recovered(early_stores):
    selection = open_store(early_stores / "results/subject1/selection.zarr", stage="select_voxels")
    truth = zarr.open_group(early_stores / "resources/demo/ground_truth.zarr", mode="r")
    recall, precision = _recall_precision(selection["mask"][:], truth["subject1/driven"][:])
    assert recall >= 0.9
    assert precision >= 0.9
    assert selection.attrs["n_selected"] == selection["mask"][:].sum()


def test_shuffled_repetitions_sit_at_chance(early_stores):
    """Control: pairing repetition 1 of one segment with repetition 2 of another."""
    pre = open_store(early_stores / "results/subject1/preprocessed.zarr", stage="preprocess")
    segments = [s for s in pre.attrs["segments"] if s.startswith("seg")]
    runs = [pre[f"runs/{s}"] for s in segments]
    n = min(r.attrs["n_clips"] for r in runs)
    r_true = np.stack([pearson_columns(x[0, :n], x[1, :n]) for x in runs])
    r_shuf = np.stack(
        [
            pearson_columns(runs[i][0, :n], runs[(i + 1) % len(runs)][1, :n])
            for i in range(len(runs))
        ]
    )
    valid = pre["valid"][:]
    assert reliability_ttest(r_true, 0.05, valid).mask.sum() > 100
    assert reliability_ttest(r_shuf, 0.05, valid).mask.sum() <= 0.005 * valid.sum()


# -- encoding and roi selection --------------------------------------------------------


def _training(early_stores):
    pre = early_stores / "results/subject1/preprocessed.zarr"
    segments = [s for s in open_store(pre).attrs["segments"] if s.startswith("seg")]
    frames = [early_stores / f"results/frames/{s}.zarr" for s in segments]
    return pre, segments, frames


def test_encoding_selection_recovers_the_planted_vertices(early_stores, tmp_path):
    """One repetition's worth of design: cross-validated encoding, permutation null, FDR."""
    pre, segments, frames = _training(early_stores)
    arrays = select_vertices(
        pre,
        tmp_path / "sel.zarr",
        train_segments=segments,
        alpha=0.05,
        method="encoding",
        frames=frames,
    )
    truth = zarr.open_group(early_stores / "resources/demo/ground_truth.zarr", mode="r")
    recall, precision = _recall_precision(arrays["mask"], truth["subject1/driven"][:])
    assert recall >= 0.9 and precision >= 0.9
    store = open_store(tmp_path / "sel.zarr", stage="select_voxels")
    assert store.attrs["method"] == "encoding" and store.attrs["statistic"] == "r"
    assert store.attrs["n_selected"] == arrays["mask"].sum()


def test_shuffled_features_sit_at_chance(early_stores):
    """Control: each segment's clip features in a random order; the null's p is uniform."""
    pre_path, segments, frames = _training(early_stores)
    pre = open_store(pre_path)
    valid = pre["valid"][:]
    rng = np.random.default_rng(3)
    features, bold = [], []
    for segment, path in zip(segments, frames, strict=True):
        clips = open_store(path)["frames"]
        x = np.hstack([clip_features(clips), motion_energy(clips)])
        features.append(x[rng.permutation(len(x))])
        runs = pre[f"runs/{segment}"]
        bold.append(runs[:, 2 : 2 + runs.attrs["n_clips"]][..., valid].mean(0))
    _, p = encoding_scores(features, bold, n_folds=2, alpha=10.0, permutations=200, rng=rng)
    assert abs((p < 0.05).mean() - 0.05) < 0.03
    mask = corrected_p_values(p, "fdr") < 0.05
    assert mask.sum() <= 0.01 * valid.sum()


def test_fdr_and_bonferroni_equal_scipy():
    p = np.array([0.001, 0.01, 0.02, 0.5, np.nan])
    fdr = corrected_p_values(p, "fdr")
    np.testing.assert_allclose(fdr[:4], stats.false_discovery_control(p[:4], method="bh"))
    np.testing.assert_allclose(corrected_p_values(p, "bonferroni")[:4], [0.004, 0.04, 0.08, 1])
    assert np.isnan(fdr[4])


def test_roi_selection_keeps_the_areas_vertices(early_stores, tmp_path):
    pre, segments, _ = _training(early_stores)
    run = next((early_stores / "resources/demo/video_fmri_dataset/subject1/fmri").rglob("*.nii"))
    arrays = select_vertices(
        pre,
        tmp_path / "sel.zarr",
        train_segments=segments,
        alpha=0.05,
        method="roi",
        run=run,
        roi_areas=["V1", "MT"],
    )
    truth = zarr.open_group(early_stores / "resources/demo/ground_truth.zarr", mode="r")
    expected = np.isin(truth["area"][:], ["V1", "MT"]) & open_store(pre)["valid"][:]
    np.testing.assert_array_equal(arrays["mask"], expected)
    assert expected.sum() > 0
    with pytest.raises(ValueError, match=r"roi_areas: \['V99'\] are no MMP"):
        select_vertices(
            pre,
            tmp_path / "x.zarr",
            train_segments=segments,
            alpha=0.05,
            method="roi",
            run=run,
            roi_areas=["V99"],
        )
