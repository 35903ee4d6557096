"""Detrend and z-score against scipy references; invalid vertices are flagged."""

import numpy as np
import pytest
from scipy import signal, stats

from pipeline.preprocess import detrend_zscore, polynomial_basis


def test_linear_detrend_equals_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 30)) + np.linspace(0, 5, 120)[:, None] * rng.normal(size=30)
    clean, valid = detrend_zscore(x, order=1)
    expected = stats.zscore(signal.detrend(x, axis=0, type="linear"), axis=0)
    np.testing.assert_allclose(clean, expected, atol=1e-5)
    assert valid.all()


def test_fourth_order_trend_is_removed_exactly():
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(244, 50))
    trend = polynomial_basis(244, 4) @ rng.normal(0, 100, size=(5, 50))
    clean_with, _ = detrend_zscore(noise + trend + 1e4, order=4)
    clean_without, _ = detrend_zscore(noise, order=4)
    np.testing.assert_allclose(clean_with, clean_without, atol=1e-4)
    np.testing.assert_allclose(clean_with.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(clean_with.std(0), 1, atol=1e-5)


def test_nan_and_constant_vertices_are_invalid_and_zero():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    x[:, 1] = np.nan
    x[3, 2] = np.inf
    x[:, 4] = 7.0
    clean, valid = detrend_zscore(x, order=4)
    np.testing.assert_array_equal(valid, [True, False, False, True, False, True])
    assert np.all(clean[:, ~valid] == 0) and np.isfinite(clean).all()


def test_too_short_run_is_an_error():
    with pytest.raises(ValueError, match="too few"):
        detrend_zscore(np.zeros((4, 3)), order=4)
