"""The evaluation metrics against analytic values and the reference implementations."""

from math import comb

import numpy as np
import pytest
from skimage.color import rgb2gray
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.errors import DataError
from pipeline.evaluation.evaluate import _flows, _frame_metrics, external_reconstructions
from pipeline.evaluation.metrics import (
    PSNR_MAX,
    clip_pcc,
    epe,
    flow_epe,
    n_way_top1,
    psnr,
    retrieval_top1,
    sample_frames,
    ssim,
)
from pipeline.evaluation.protocols import PROTOCOLS


def _probabilities(n, classes, rng, peak=8.0):
    logits = rng.normal(size=(n, classes)) * peak
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(("n_way", "above"), [(2, 0), (2, 5), (5, 3), (50, 1), (50, 10)])
def test_n_way_matches_the_analytic_value(n_way, above):
    """``above`` non-ground-truth classes outscore the best ground-truth class: a trial
    succeeds iff none of them is drawn, C(M - above, n - 1) / C(M, n - 1)."""
    classes, trials = 100, 4000
    gt = np.zeros((1, classes))
    gt[0, :3] = [0.5, 0.3, 0.2]  # ground-truth set {0, 1, 2}
    pred = np.linspace(0.0, 1.0, classes)[None].copy()  # class 99 scores highest
    # the best ground-truth class just above the non-ground-truth class ranked above + 1
    pred[0, :3] = pred[0, classes - above - 1] + 1e-6 * np.array([1, -2, -3])
    others = classes - 3
    expected = comb(others - above, n_way - 1) / comb(others, n_way - 1)
    got = n_way_top1(pred, gt, n_way, trials=trials, seed=1)[0]
    assert abs(got - expected) <= 4 * np.sqrt(expected * (1 - expected) / trials) + 1e-12


@pytest.mark.parametrize("n_way", [2, 50])
def test_identical_prediction_beats_a_shuffled_one_at_chance(n_way):
    gt = _probabilities(200, 100, np.random.default_rng(n_way), peak=1.0)
    exact = n_way_top1(gt, gt, n_way).mean()
    shuffled = n_way_top1(np.roll(gt, 1, axis=0), gt, n_way, trials=400).mean()  # others' clips
    assert exact == 1.0
    # the field's protocol: any of the 3 ground-truth classes may beat the n - 1 distractors,
    # so an unrelated prediction succeeds with probability 3 / (n + 2), not 1 / n
    chance = 3 / (n_way + 2)
    assert exact > shuffled and abs(shuffled - chance) < 0.05


def test_ssim_and_psnr_equal_skimage(rng):
    a = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    b = np.clip(a + rng.normal(0, 30, a.shape), 0, 255).astype(np.uint8)
    assert abs(ssim(a, b) - structural_similarity(a, b, channel_axis=-1, data_range=255)) < 1e-6
    reference = structural_similarity(
        rgb2gray(a),
        rgb2gray(b),
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=1.0,
    )
    assert abs(ssim(a, b, "gray_gaussian") - reference) < 1e-6
    assert abs(psnr(a, b) - peak_signal_noise_ratio(a, b, data_range=255)) < 1e-6
    assert ssim(a, a) == pytest.approx(1.0) and ssim(a, a, "gray_gaussian") == pytest.approx(1.0)
    assert psnr(a, a) == PSNR_MAX


def test_clip_pcc_equals_a_direct_computation(rng):
    x = rng.normal(size=(6, 16))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    adjacent = np.mean([unit[i] @ unit[i + 1] for i in range(5)])
    pairs = np.mean([unit[i] @ unit[j] for i in range(6) for j in range(6) if i != j])
    assert clip_pcc(x) == pytest.approx(adjacent) and clip_pcc(x, "all_pairs") == pytest.approx(
        pairs
    )
    assert clip_pcc(np.repeat(x[:1], 6, axis=0)) == pytest.approx(1.0)


def test_frame_sampling_conventions():
    assert sample_frames(16, 6).tolist() == [4, 6, 8, 10, 12, 14]  # NEURONS
    assert sample_frames(16, 6, "uniform").tolist() == [0, 3, 6, 9, 12, 15]
    with pytest.raises(ValueError, match="frame sampling"):
        sample_frames(16, 6, "every_other")


def test_summary_bootstrap_interval_covers_the_mean_like_the_normal_one():
    from pipeline.evaluation.summary import summarize

    x = np.random.default_rng(3).normal(0.4, 0.1, 400)
    s = summarize(x)
    assert s["n"] == 400 and s["mean"] == pytest.approx(x.mean())
    assert s["ci_low"] < 0.4 < s["ci_high"]
    normal_width = 2 * 1.96 * x.std(ddof=1) / np.sqrt(400)
    assert abs((s["ci_high"] - s["ci_low"]) / normal_width - 1) < 0.15
    same = summarize(np.full(5, 0.25))
    assert same["ci_low"] == same["ci_high"] == 0.25 and same["std"] == 0
    with pytest.raises(ValueError, match="NaN"):
        summarize([0.1, float("nan")])


def _moving_square(shift, frames=6, size=48, colour=(220, 40, 40)):
    """A textured square moving ``shift`` pixels per frame to the right."""
    rng = np.random.default_rng(1)
    texture = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    video = np.full((frames, size, size, 3), 30, dtype=np.uint8)
    for t in range(frames):
        x = 8 + shift * t
        video[t, 16:32, x : x + 16] = texture // 2 + np.array(colour, dtype=np.uint8) // 2
    return video


def test_epe_is_zero_for_equal_motion_and_grows_with_the_difference():
    still, slow, fast = _moving_square(0), _moving_square(2), _moving_square(4)
    assert epe(slow, slow) == 0.0
    assert 0 < epe(slow, still) < epe(fast, still)


def test_retrieval_finds_its_pair_and_a_shuffled_pairing_sits_at_chance():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(600, 32))
    pred = target + 0.3 * rng.normal(size=target.shape)
    forward, backward, part = retrieval_top1(pred, target, pool=300)
    assert forward.all() and backward.all() and set(part) == {300}
    shuffled = np.mean(
        [retrieval_top1(pred, target[rng.permutation(600)])[0].mean() for _ in range(20)]
    )
    assert shuffled == pytest.approx(1 / 300, abs=0.01)
    # fewer clips than the pool: one part of all of them
    assert set(retrieval_top1(pred[:120], target[:120])[2]) == {120}


def test_retrieval_holds_one_float32_part_and_leaves_its_inputs_alone():
    """Paper-size retrieval (1,200 × 256 × 1664 tokens) must not make float64 copies of both
    sets: the peak beyond the inputs stays within three float32 parts (one part of each set,
    and the float16 part being converted); float64 copies of both would be eight."""
    import tracemalloc

    rng = np.random.default_rng(1)
    target = rng.normal(size=(600, 16, 256)).astype(np.float16)  # the cache's dtype
    pred = (target + 0.5 * rng.normal(size=target.shape)).astype(np.float32)
    before = pred.copy()
    tracemalloc.start()
    forward, backward, _ = retrieval_top1(pred, target, pool=300)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    part = 300 * 16 * 256 * 4  # one part of the predictions in float32
    assert peak < 3 * part, peak / part
    assert np.array_equal(pred, before)
    assert forward.mean() > 0.9 and backward.mean() > 0.9


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
def test_ground_truth_against_itself_scores_the_maximum(protocol):
    video = _moving_square(3)
    chosen = PROTOCOLS[protocol]
    scores = _frame_metrics(video, video, chosen)
    if chosen.epe:  # at the protocol's EPE size, as the stage computes it
        scores["epe"] = flow_epe(*(_flows(video, chosen) for _ in range(2)))
    pixel = [
        m
        for m in PROTOCOLS[protocol].video_metrics([2])
        if m.startswith(("ssim", "psnr", "epe", "hue"))
    ]
    assert set(scores) == set(pixel)
    for metric, value in scores.items():
        expected = {"psnr": PSNR_MAX, "epe": 0.0}.get(metric, 1.0)
        assert value == pytest.approx(expected), metric


def _write_gif(path, frames):
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=333, loop=0)


def test_side_by_side_gifs_are_split_into_their_panels(tmp_path):
    gt, pred = _moving_square(2, colour=(250, 0, 0)), _moving_square(3, colour=(0, 0, 250))
    for i in (1, 2, 10):  # natural order: 1, 2, 10 (not 1, 10, 2)
        _write_gif(tmp_path / f"test{i}.gif", np.concatenate([gt, pred, gt], axis=2))
    data = external_reconstructions(tmp_path, panels=3, gt_panel=0, pred_panel=1)
    assert data.names == ["test1", "test2", "test10"]
    assert data.predictions.shape == data.ground_truth.shape == (3, *gt.shape)
    # GIF quantisation: colours within a few levels
    assert np.abs(data.ground_truth[0].astype(int) - gt).mean() < 3
    assert np.abs(data.predictions[0].astype(int) - pred).mean() < 3


def test_bad_external_folders_are_named(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        external_reconstructions(tmp_path / "missing")
    with pytest.raises(DataError, match="no .gif"):
        external_reconstructions(tmp_path)
    _write_gif(tmp_path / "a.gif", _moving_square(1, size=48)[:, :, :47])
    with pytest.raises(DataError, match="a.gif: width 47 does not split into 2"):
        external_reconstructions(tmp_path)
    _write_gif(tmp_path / "a.gif", _moving_square(1, size=48))
    _write_gif(tmp_path / "b.gif", _moving_square(1, size=64))
    with pytest.raises(DataError, match="b.gif: shape"):
        external_reconstructions(tmp_path)
    (tmp_path / "b.gif").unlink()
    with pytest.raises(DataError, match=r"not named \{segment\}_clip"):
        external_reconstructions(tmp_path, layout="separate", frames_dir=tmp_path)
    (tmp_path / "c.mp4").write_bytes(b"not a video")
    with pytest.raises(DataError, match="c.mp4: not a readable video"):
        external_reconstructions(tmp_path)
