"""The response-stimulus relation peaks at the planted delay; shuffled stimuli sit at chance."""

import numpy as np
import zarr

from pipeline.analysis import clip_features, lag_profile
from pipeline.stores import open_store

LAGS = list(range(6))


def _segments(early_stores):
    pre = open_store(early_stores / "results/subject1/preprocessed.zarr", stage="preprocess")
    mask = open_store(early_stores / "results/subject1/selection.zarr")["mask"][:]
    segments = [s for s in pre.attrs["segments"] if s.startswith("seg")]
    bold = [pre[f"runs/{s}"][:].mean(0)[:, mask] for s in segments]
    feats = [
        clip_features(open_store(early_stores / f"results/frames/{s}.zarr")["frames"][:])
        for s in segments
    ]
    return bold, feats


def test_lag_profile_peaks_at_planted_delay(early_stores):
    truth = zarr.open_group(early_stores / "resources/demo/ground_truth.zarr", mode="r")
    planted = round(truth.attrs["delay_s"] / truth.attrs["tr_s"])
    bold, feats = _segments(early_stores)
    scores = lag_profile(bold, feats, LAGS)
    assert LAGS[int(np.argmax(scores))] == planted
    assert scores.max() > 0.2


def test_shuffled_stimuli_sit_at_chance(early_stores):
    """Control: the features of one segment against the BOLD of another."""
    bold, feats = _segments(early_stores)
    true = lag_profile(bold, feats, LAGS)
    shuffled = lag_profile(bold, feats[1:] + feats[:1], LAGS)
    assert np.abs(shuffled).max() < 0.1
    assert np.abs(shuffled).max() < 0.25 * true.max()
