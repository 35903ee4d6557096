"""Voxel selection: equals a scipy.stats reference, finds the planted vertices, not noise."""

import numpy as np
import pytest
import zarr
from scipy import stats

from pipeline.selection import pearson_columns, reliability_ttest
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
