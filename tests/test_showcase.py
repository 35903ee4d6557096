"""Clip identification: own clip against the median other clip, with a shuffled control."""

import numpy as np
import pytest

from pipeline.evaluation.showcase import (
    HISTOGRAM_BINS,
    SIMILARITIES,
    colour_histograms,
    identification,
    identification_rate,
    matched_vs_shuffled,
    similarity_matrix,
)


def _clips(rng, n=24, frames=6, size=48):
    """Clips of a flat random colour with a moving rectangle of another colour."""
    clips = np.empty((n, frames, size, size, 3), np.uint8)
    for i in range(n):
        background, patch = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        y, x = rng.integers(0, size // 2, 2)
        for t in range(frames):
            clips[i, t] = background
            clips[i, t, y : y + size // 3, x + t : x + t + size // 3] = patch
    return clips


def _noisy(clips, rng, sd=25.0):
    return (clips + rng.normal(0, sd, clips.shape)).clip(0, 255).round().astype(np.uint8)


def test_a_flat_clip_fills_one_histogram_bin():
    clip = np.zeros((1, 2, 4, 4, 3), np.uint8)
    clip[...] = (10, 100, 200)
    hist = colour_histograms(clip)
    step = 256 // HISTOGRAM_BINS
    code = ((10 // step) * HISTOGRAM_BINS + 100 // step) * HISTOGRAM_BINS + 200 // step
    assert hist.shape == (1, HISTOGRAM_BINS**3)
    assert hist[0, code] == 1.0 and hist.sum() == 1.0


def test_histogram_similarity_is_one_for_the_same_colours_and_zero_for_disjoint_ones():
    a = np.zeros((2, 1, 4, 4, 3), np.uint8)
    a[1] = 255
    s = similarity_matrix(a, a, "colour_histogram")
    np.testing.assert_allclose(s, np.eye(2))


def test_identification_compares_with_the_median_other_clip():
    # row 0: own 0.5 beats the median of (0.9, 0.1, 0.2) = 0.2; row 1: own 0.3 loses to 0.4
    s = np.array(
        [
            [0.5, 0.9, 0.1, 0.2],
            [0.4, 0.3, 0.4, 0.9],
            [0.0, 0.0, 0.1, 0.0],
            [0.2, 0.2, 0.2, 0.2],
        ]
    )
    np.testing.assert_array_equal(identification(s), [True, False, True, False])
    assert identification_rate(s) == 0.5


@pytest.mark.parametrize("kind", SIMILARITIES)
def test_noisy_copies_are_identified_and_the_shuffled_control_is_at_chance(kind, rng):
    truth = _clips(rng)
    s = similarity_matrix(_noisy(truth, rng), truth, kind)
    assert identification_rate(s) >= 0.9
    # chance is 0.5; 24 clips give a binomial sd of 0.1
    shuffled = [identification_rate(s, shuffled=True, seed=k) for k in range(10)]
    assert 0.3 <= np.mean(shuffled) <= 0.7


@pytest.mark.parametrize("kind", SIMILARITIES)
def test_predictions_of_other_clips_sit_at_chance(kind, rng):
    truth = _clips(rng)
    unrelated = _noisy(_clips(np.random.default_rng(1)), rng)
    assert 0.25 <= identification_rate(similarity_matrix(unrelated, truth, kind)) <= 0.75


def test_longer_predictions_are_matched_by_frame_sampling(rng):
    truth = _clips(rng, n=6)
    # 16 generated frames: the 6 uniformly sampled ones (0, 3, 6, 9, 12, 15) carry the truth
    pred = np.zeros((6, 16, *truth.shape[2:]), np.uint8)
    pred[:, [0, 3, 6, 9, 12, 15]] = truth
    s = similarity_matrix(pred, truth, "ssim_32")
    np.testing.assert_allclose(np.diag(s), 1.0)


def test_bad_arguments_are_refused(rng):
    truth = _clips(rng, n=3)
    with pytest.raises(ValueError, match="unknown similarity"):
        similarity_matrix(truth, truth, "psnr")
    with pytest.raises(ValueError, match="predicted frames"):
        similarity_matrix(truth[:, :2], truth, "ssim_32")


def test_matched_pairs_beat_the_permutation_null_and_unrelated_ones_do_not(rng):
    n = 40
    related = rng.normal(0, 1, (n, n)) + 3 * np.eye(n)
    result = matched_vs_shuffled(related, permutations=200)
    assert result["matched"] > result["shuffled"] and result["p"] < 0.01
    unrelated = matched_vs_shuffled(rng.normal(0, 1, (n, n)), permutations=200)
    assert unrelated["p"] > 0.01
