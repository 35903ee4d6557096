"""Named evaluation protocols against references written from each peer's documented calls.

Each reference below is ours: the convention a peer's evaluation code follows (what it
computes, with which library call), cited by repository, path and commit, and computed
here with the same libraries (skimage, OpenCV, torchvision's ``make_grid``, imageio).
"""

from types import SimpleNamespace

import cv2
import imageio.v2 as imageio
import imageio.v3 as iio
import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.color import rgb2gray
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipeline.errors import DataError
from pipeline.evaluation.evaluate import (
    Reconstructions,
    compute_metrics,
    external_reconstructions,
    grid_border,
    summary_rows,
)
from pipeline.evaluation.metrics import (
    PSNR_MAX,
    epe,
    hue_pcc,
    n_way_top1,
    retrieval_subsets,
    retrieval_top1,
    ssim,
)
from pipeline.evaluation.protocols import (
    PROTOCOLS,
    ablation_protocols,
    main_protocol,
    metric_names,
    protocols,
)
from pipeline.evaluation.summary import paired_test

MINDVIDEO = "jqin4749/MindVideo@5097206d93209e7b32d24169a0b81e0d1104e6d1"
NEURONS = "xmed-lab/NEURONS@4e4fd545d982747cc9e2a4af2eb0186a22eb5c84"
MIND_ANIMATOR = "ReedOnePeck/Mind-Animator@a5adbf3b50cc34d7b65822238119e31dc9f84209"
MINDEYE2 = "MedARC-AI/MindEyeV2@c1847188200e075b960ad6b87333e51ea17be1b1"
FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)  # Mind-Animator Evaluation_Metrics/EPE.py


def _natural(n, frames, size, seed):
    """Smooth, textured, moving seeded frames (uint8 RGB), not white noise."""
    rng = np.random.default_rng(seed)
    base = gaussian_filter(rng.random((n, size * 2, size * 2, 3)), (0, 3, 3, 0))
    base = (base - base.min()) / np.ptp(base)
    out = [base[:, 2 * t : 2 * t + size, t : t + size] for t in range(frames)]
    return (np.stack(out, axis=1) * 255).astype(np.uint8)


# ------------------------------------------------------------------ model-free metrics


def test_ssim_variants_against_the_peers_calls():
    a, b = _natural(2, 1, 48, 0)[:, 0]
    grey = np.repeat(a[..., :1], 3, axis=-1)  # a grey image (R = G = B)
    for x, y in ((a, b), (grey, b), (a, a)):
        # MinD-Video eval_metrics.py: ssim(data_range=255, channel_axis=-1) on uint8 RGB
        rgb = structural_similarity(x, y, data_range=255, channel_axis=-1)
        assert ssim(x, y, "rgb_uniform") == pytest.approx(rgb, abs=1e-12)
        # MindEye2 final_evaluations.ipynb: rgb2gray, Gaussian sigma 1.5, population
        # covariance, data_range 1 (multichannel=True is ignored by skimage 0.22: 2-D)
        kwargs = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
        gx, gy = rgb2gray(x), rgb2gray(y)
        two_d = structural_similarity(gx, gy, data_range=1.0, **kwargs)
        assert ssim(x, y, "gray_gaussian") == pytest.approx(two_d, abs=1e-12)
        # NEURONS: the same with channel_axis=-1 on the grey image: skimage takes each
        # column for a channel, i.e. the mean of the columns' 1-D SSIMs
        columns = np.mean(
            [
                structural_similarity(gx[:, j], gy[:, j], data_range=1.0, **kwargs)
                for j in range(gx.shape[1])
            ]
        )
        assert ssim(x, y, "gray_columns") == pytest.approx(columns, abs=1e-9)
    assert ssim(a, a, "gray_columns") == pytest.approx(1.0)
    # the two grey variants are different metrics
    assert abs(ssim(a, b, "gray_columns") - ssim(a, b, "gray_gaussian")) > 0.01


def _mind_animator_hue(a, b):
    """Evaluation_Metrics/hue_pcc.py: OpenCV's BGR2HSV on RGB frames, H / 360, cosine."""
    h1 = cv2.cvtColor(a, cv2.COLOR_BGR2HSV)[:, :, 0] / 360.0
    h2 = cv2.cvtColor(b, cv2.COLOR_BGR2HSV)[:, :, 0] / 360.0
    return np.sum(h1 * h2) / (np.linalg.norm(h1) * np.linalg.norm(h2))


def test_hue_pcc_is_mind_animators_cosine_of_hue_maps():
    a, b = _natural(2, 1, 40, 1)[:, 0]
    assert hue_pcc(a, b, rgb_as_bgr=True) == pytest.approx(_mind_animator_hue(a, b), abs=1e-12)
    assert hue_pcc(a, a, rgb_as_bgr=True) == pytest.approx(1.0)
    # the layout counts: the same hues elsewhere score lower (a histogram would not notice)
    assert hue_pcc(a, a[::-1, ::-1], rgb_as_bgr=True) < 0.99
    # random images: an uncentred cosine of positive maps sits near 0.75, not 0
    noise = np.random.default_rng(2).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    assert 0.6 < hue_pcc(*noise) < 0.9
    # the corrected variant reads RGB as RGB: red and blue have their own hues again
    red, blue = np.zeros((2, 16, 16, 3), np.uint8)
    red[..., 0], blue[..., 2] = 200, 200
    assert hue_pcc(red, blue) == 0.0  # red's hue is 0
    assert hue_pcc(blue, blue) == pytest.approx(1.0)
    grey = np.full((16, 16, 3), 90, np.uint8)  # no hue anywhere: 0 / 0 in the peer's code
    assert hue_pcc(grey, grey) == 1.0 and hue_pcc(grey, blue) == 0.0


def test_epe_at_512_through_bgr_as_mind_animator():
    video = _natural(2, 4, 64, 3)
    pred, gt = video[0], video[1]

    def flows(frames):  # Evaluation_Metrics/EPE.py: cv2.resize to 512, BGR2GRAY, Farneback
        grey = [cv2.cvtColor(cv2.resize(f, (512, 512)), cv2.COLOR_BGR2GRAY) for f in frames]
        return [
            cv2.calcOpticalFlowFarneback(p, n, None, *FARNEBACK)
            for p, n in zip(grey[:-1], grey[1:], strict=True)
        ]

    reference = np.mean(
        [np.linalg.norm(g - p, axis=-1).mean() for g, p in zip(flows(gt), flows(pred), strict=True)]
    )
    big = [np.stack([cv2.resize(f, (512, 512)) for f in v]) for v in (pred, gt)]
    assert epe(*big, rgb_as_bgr=True) == pytest.approx(reference, rel=1e-6)
    assert epe(gt, gt) == 0.0


# ------------------------------------------------------------------ N-way ±


class _Classifier:
    """Stand-in classifier: logits a fixed random projection of the frames' pixels, so
    equal content has equal logits and the N-way accuracies are spread over (0, 1)."""

    def __init__(self, classes, seed, scale):
        self.classes, self.seed, self.scale = classes, seed, scale
        self.n_classes = classes

    def logits(self, x, batch_size=None):
        flat = x.reshape(len(x), -1).astype(np.float64) / 255
        rng = np.random.default_rng(self.seed)
        w = rng.normal(size=(flat.shape[1], self.classes))
        return (self.scale * (flat - flat.mean(axis=1, keepdims=True)) @ w).astype(np.float32)


class _Clip:
    def __init__(self, seed):
        self.seed = seed

    def embeds(self, frames, batch_size=None):
        w = np.random.default_rng(self.seed).normal(size=(frames[0].size, 8))
        return frames.reshape(len(frames), -1).astype(np.float64) @ w


def _models(vifi=None):
    return SimpleNamespace(
        frame=_Classifier(60, 0, 0.3),
        video=_Classifier(60, 1, 0.1),
        clips={"preset": _Clip(0), "clip_vit_l14": _Clip(1), "clip_vit_b32": _Clip(2)},
        vifi=vifi,
    )


SETTINGS = {
    "n_way": [2, 50],
    "trials": 100,
    "seed": 0,
    "frame_sampling": "neurons",
    "size": None,
    "batch_size": 8,
    "bootstrap_resamples": 200,
}


def test_the_n_way_pm_is_the_mean_of_the_per_sample_sds():
    """What every peer prints beside an N-way accuracy: the mean over samples of
    sqrt(p_i (1 - p_i) / trials) (MinD-Video src/MindVideo/utils/eval_metrics.py), for the
    frame metrics over every (clip, frame) sample; not sqrt(p (1 - p) / trials) of the mean."""
    video = _natural(12, 6, 32, 4)
    pred = np.clip(
        video.astype(int) + np.random.default_rng(5).integers(-60, 60, video.shape), 0, 255
    )
    data = Reconstructions([f"c{i}" for i in range(12)], pred.astype(np.uint8), video)
    models = _models()
    scores = compute_metrics(data, models, SETTINGS, [PROTOCOLS["mindvideo"]])
    rows = {r["metric"]: r for r in summary_rows(scores, SETTINGS)}

    def softmax(x):
        return torch.from_numpy(x).double().softmax(-1).numpy()

    for kind, classifier, p, g in (
        ("frame", models.frame, pred.reshape(-1, 32, 32, 3), video.reshape(-1, 32, 32, 3)),
        ("video", models.video, pred, video),
    ):
        for n in (2, 50):
            per_sample = n_way_top1(
                softmax(classifier.logits(p.astype(np.uint8))),
                softmax(classifier.logits(g)),
                n,
                trials=100,
                seed=0,
            )
            row = rows[f"mindvideo.{kind}_{n}way"]
            assert row["mean"] == pytest.approx(per_sample.mean())
            field = np.mean(np.sqrt(per_sample * (1 - per_sample) / 100))
            assert row["field_pm"] == pytest.approx(field) and row["pm_kind"] == "binomial"
            assert 0 < per_sample.mean() < 1
            pooled = np.sqrt(per_sample.mean() * (1 - per_sample.mean()) / 100)
            assert row["field_pm"] < pooled  # the pooled formula overstates the peers' ±


# ------------------------------------------------------------------ side-by-side GIFs


def _save_videos_grid(path, gt, pred, fps=3):
    """MinD-Video utils.save_videos_grid / NEURONS animatediff/utils/util.py: per frame
    make_grid of (ground truth, prediction) with its default padding 2, (x * 255) cast to
    uint8, imageio.mimsave."""
    from torchvision.utils import make_grid

    videos = torch.from_numpy(np.stack([gt, pred])).permute(1, 0, 4, 2, 3).float() / 255
    frames = []
    for x in videos:  # (b, c, h, w) per frame
        grid = make_grid(x, nrow=4).permute(1, 2, 0)
        frames.append((grid * 255).numpy().astype(np.uint8))
    imageio.mimsave(path, frames, duration=1000 / fps, loop=0)


def _peer_scores(path):
    """run_metrics.py of MinD-Video and NEURONS: iio.imread(index=None), np.split in halves
    (ground truth left), per frame: SSIM, grey column SSIM (NEURONS), PSNR."""
    gif = iio.imread(path, index=None)
    gt, pred = np.split(gif, 2, axis=2)
    kwargs = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
    return {
        "mindvideo.ssim_rgb_uniform": np.mean(
            [
                structural_similarity(p, g, data_range=255, channel_axis=-1)
                for p, g in zip(pred, gt, strict=True)
            ]
        ),
        "neurons.ssim_gray_columns": np.mean(
            [
                structural_similarity(
                    rgb2gray(p), rgb2gray(g), channel_axis=-1, data_range=1.0, **kwargs
                )
                for p, g in zip(pred, gt, strict=True)
            ]
        ),
        "mindvideo.psnr": np.mean(
            [peak_signal_noise_ratio(g, p, data_range=255) for p, g in zip(pred, gt, strict=True)]
        ),
        "mind_animator.ssim_rgb_uniform": np.mean(
            [
                structural_similarity(p, g, data_range=255, channel_axis=-1)
                for p, g in zip(pred[:6], gt[:6], strict=True)
            ]
        ),
        "mind_animator.hue_pcc": np.mean(
            [_mind_animator_hue(p, g) for p, g in zip(pred[:6], gt[:6], strict=True)]
        ),
    }


@pytest.fixture(scope="module")
def gifs(tmp_path_factory):
    """Peer-written side-by-side GIFs: ground truth | prediction, and ground truth | itself."""
    root = tmp_path_factory.mktemp("gifs")
    gt = _natural(4, 8, 64, 6)
    pred = _natural(4, 8, 64, 7)
    for name, right in (("pairs", pred), ("self", gt)):
        (root / name).mkdir()
        for i in range(4):
            _save_videos_grid(root / name / f"test{i}.gif", gt[i], right[i])
    return root


def test_peer_gifs_score_as_the_peers_code_and_identical_content_scores_the_maximum(gifs):
    chosen = protocols(["neuroclips", "mindvideo", "neurons", "mind_animator"])
    for name in ("pairs", "self"):
        data = external_reconstructions(gifs / name)
        assert data.source["border"] == 2  # make_grid's padding, detected
        assert data.predictions.shape[2:4] == (64, 64)  # the aligned panels
        assert data.halves[0].shape[2:4] == (68, 67)  # what np.split leaves: 260 x 259 at 256
        scores = compute_metrics(data, _models(), SETTINGS, chosen)
        references = [_peer_scores(gifs / name / f"{clip}.gif") for clip in data.names]
        for metric in references[0]:
            expected = np.array([r[metric] for r in references])
            np.testing.assert_allclose(scores.metrics[metric], expected, rtol=0, atol=1e-6)
        if name == "self":
            # the peers' halves are 1 px apart: identical content does not score the maximum
            assert scores.metrics["mindvideo.ssim_rgb_uniform"].max() < 0.95
            assert scores.metrics["mindvideo.psnr"].max() < 40
            # ours crops inside the border: SSIM 1, PSNR capped, EPE 0
            assert np.allclose(scores.metrics["neuroclips.ssim_rgb_uniform"], 1.0)
            assert np.allclose(scores.metrics["neuroclips.ssim_gray_gaussian"], 1.0)
            assert (scores.metrics["neuroclips.psnr"] == PSNR_MAX).all()
            assert (scores.metrics["neuroclips.epe"] == 0).all()
            for n in (2, 50):
                assert (scores.metrics[f"neuroclips.video_{n}way"] == 1).all()


def test_grid_border_detection_and_a_wrong_border(gifs, tmp_path):
    data = external_reconstructions(gifs / "pairs", border=0)  # told: no border, so halves
    assert data.source["border"] == 0 and data.predictions.shape[2:4] == (68, 67)
    plain = np.concatenate([_natural(1, 3, 32, 8), _natural(1, 3, 32, 9)], axis=3)
    assert grid_border(plain, 2) == 0
    folder = tmp_path / "plain"
    folder.mkdir()
    imageio.mimsave(folder / "a.gif", list(plain[0]), duration=300, loop=0)
    assert external_reconstructions(folder).source["border"] == 0
    with pytest.raises(DataError, match="uniform border of 3 px"):
        external_reconstructions(folder, border=3)


# ------------------------------------------------------------------ CLIP-pcc and its gate


class _Vifi:
    def __init__(self, value):
        self.value = value

    def similarity(self, pred, gt, batch_size=32, swap_pred=False):
        return np.full(len(pred), self.value)


def test_clip_pcc_frames_models_and_the_vifi_gate():
    video = _natural(3, 16, 32, 10)
    gt = video[:, ::3][:, :6].copy()
    data = Reconstructions(["a", "b", "c"], video, gt)
    chosen = protocols(["neuroclips", "neurons", "mind_animator"])
    no_gate = compute_metrics(data, _models(), SETTINGS, chosen)
    # neuroclips: all 16 generated frames, the preset's CLIP; neurons: the 6 compared ones
    # (frames 4, 6, ..., 14) with ViT-L/14
    assert no_gate.frame_indices["neurons"] == [4, 6, 8, 10, 12, 14]
    assert no_gate.protocols["mind_animator"]["clip_gate"].startswith("skipped")
    assert (no_gate.metrics["mind_animator.clip_pcc_adjacent"] != 0).all()
    gated = compute_metrics(data, _models(_Vifi(0.6)), SETTINGS, chosen)  # <= 0.6: zeroed
    assert (gated.metrics["mind_animator.clip_pcc_adjacent"] == 0).all()
    passed = compute_metrics(data, _models(_Vifi(0.61)), SETTINGS, chosen)
    np.testing.assert_array_equal(
        passed.metrics["mind_animator.clip_pcc_adjacent"],
        no_gate.metrics["mind_animator.clip_pcc_adjacent"],
    )
    # each protocol scores with its own model and frames
    a, b = (no_gate.metrics[f"{p}.clip_pcc_all_pairs"] for p in ("neuroclips", "neurons"))
    assert not np.allclose(a, b)


def test_vifi_clip_reads_a_released_checkpoints_image_tower(tmp_path):
    from open_clip.model import QuickGELU
    from open_clip.transformer import VisionTransformer
    from safetensors.torch import save_file

    from pipeline.models.vifi_clip import ViFiClip

    torch.manual_seed(0)
    tower = VisionTransformer(32, 8, 64, 2, 1, 4.0, output_dim=16, act_layer=QuickGELU)
    # trainers/vificlip.py under DataParallel: module.image_encoder.* beside the text tower
    state = {f"module.image_encoder.{k}": v for k, v in tower.state_dict().items()}
    state["module.text_encoder.positional_embedding"] = torch.zeros(4, 8)
    save_file(state, tmp_path / "vifi.safetensors")
    vifi = ViFiClip(tmp_path / "vifi.safetensors")
    video = _natural(2, 4, 40, 11)
    assert np.allclose(vifi.similarity(video, video), 1.0, atol=1e-5)
    other = vifi.similarity(video, video[::-1])
    assert (other < 0.9999).all()
    # the embedding: mean of the frames' embeddings, then normalised
    frames = tower.eval()(vifi._pixels(video[0])).detach()
    expected = torch.nn.functional.normalize(frames.mean(0), dim=0)
    assert torch.allclose(vifi.video_embeds(video[:1])[0], expected, atol=1e-5)
    with pytest.raises(DataError, match="safetensors"):
        ViFiClip(tmp_path / "k400_seed1_vifi_clip_base2novel.pth")
    save_file({"module.text_encoder.x": torch.zeros(1)}, tmp_path / "text.safetensors")
    with pytest.raises(DataError, match="no ViFi-CLIP image tower"):
        ViFiClip(tmp_path / "text.safetensors")


# ------------------------------------------------------------------ retrieval


def _batchwise_cosine_similarity(z, b):
    """MindEye2 src/utils.py batchwise_cosine_similarity: ((Z @ B.T) / norms).T."""
    z_norm = np.linalg.norm(z, axis=1, keepdims=True)
    b_norm = np.linalg.norm(b, axis=1, keepdims=True)
    return ((z @ b.T) / (z_norm @ b_norm.T)).T


def test_mindeye2_retrieval_subsets_and_its_transposed_labels():
    rng = np.random.default_rng(12)
    clip = rng.normal(size=(700, 24)).astype(np.float32)  # the keyframes' CLIP embeddings
    brain = clip + 1.1 * rng.normal(size=clip.shape).astype(np.float32)  # fMRI embeddings
    forward, backward, chance = retrieval_subsets(brain, clip)
    # src/final_evaluations.ipynb: seed_everything(42), 30 x np.random.choice(n, 300)
    np.random.seed(42)  # noqa: NPY002 (the peer seeds the legacy global generator)
    fwd, bwd = [], []
    for _ in range(30):
        rows = np.random.choice(np.arange(len(clip)), size=300, replace=False)  # noqa: NPY002
        emb, emb_ = clip[rows], brain[rows]
        labels = np.arange(300)
        fwd_sim = _batchwise_cosine_similarity(emb_, emb)  # "brain, clip"
        bwd_sim = _batchwise_cosine_similarity(emb, emb_)  # "clip, brain"
        fwd.append(np.mean(np.argsort(fwd_sim, axis=1)[:, -1] == labels))
        bwd.append(np.mean(np.argsort(bwd_sim, axis=1)[:, -1] == labels))
    assert chance == 1 / 300
    # the printed "fwd" is fMRI retrieval (each keyframe finds its fMRI) here, "bwd" keyframe
    assert backward.mean() == pytest.approx(np.mean(fwd), abs=1e-12)
    assert forward.mean() == pytest.approx(np.mean(bwd), abs=1e-12)
    assert 0.1 < np.mean(fwd) < 0.95
    # on the same embeddings the official consecutive parts give another number
    parts = retrieval_top1(brain, clip, 300)[0].mean()
    assert parts != pytest.approx(forward.mean(), abs=1e-3)
    shuffled = retrieval_subsets(brain, clip[rng.permutation(700)])[0].mean()
    assert shuffled < 5 / 300


# ------------------------------------------------------------------ paired tests


def test_paired_tests_find_a_known_shift_and_not_a_shuffled_one():
    rng = np.random.default_rng(13)
    a = rng.normal(0.4, 0.1, 200)
    b = a - 0.02 + rng.normal(0, 0.03, 200)  # b is worse by 0.02 on average
    shift = paired_test(a, b, n_resamples=2000, seed=0)
    assert shift["p_bootstrap"] < 0.01 and shift["p_wilcoxon"] < 0.01
    assert shift["ci_low"] < 0.02 < shift["ci_high"]
    # control: each clip's two scores swapped at random, so neither system is better
    swap = rng.random(200) < 0.5
    x, y = np.where(swap, a, b), np.where(swap, b, a)
    control = paired_test(x, y, n_resamples=2000, seed=0)
    assert control["p_bootstrap"] > 0.05 and control["p_wilcoxon"] > 0.05
    assert control["ci_low"] < 0 < control["ci_high"]
    same = paired_test(a, a)
    assert same["p_wilcoxon"] == 1.0 and same["p_bootstrap"] == 1.0 and same["difference"] == 0


def test_protocol_columns_name_protocol_and_variant():
    names = metric_names(["neuroclips", "neurons", "mindeye2"], [2, 50])
    assert "neuroclips.clip_pcc_adjacent" in names and "neurons.ssim_gray_columns" in names
    assert "mindeye2.ssim_gray_gaussian" in names
    assert metric_names(["mindeye2"], [2], retrieval=True) == [
        "mindeye2.keyframe_top1",
        "mindeye2.fmri_top1",
    ]
    with pytest.raises(ValueError, match="unknown evaluation protocols"):
        protocols(["minddream"])
    for p in PROTOCOLS.values():
        assert p.reproduces and (p.name == "neuroclips" or "@" in p.reproduces)


def test_mindeye2_ssim_resizes_to_425_as_torchvision_in_float():
    """src/final_evaluations.ipynb (MedARC-AI/MindEyeV2@c1847188): transforms.Resize(425,
    bilinear) on float tensors (no antialias), rgb2gray, then SSIM with Gaussian weights,
    population covariance, data_range 1; `multichannel=True` is ignored by its skimage 0.22,
    so the SSIM is 2-D."""
    from torchvision import transforms

    video = _natural(3, 6, 96, 14)
    pred = _natural(3, 6, 48, 15)
    data = Reconstructions(["a", "b", "c"], pred, video)
    scores = compute_metrics(data, _models(), SETTINGS, [PROTOCOLS["mindeye2"]])
    resize = transforms.Resize(
        425, interpolation=transforms.InterpolationMode.BILINEAR, antialias=False
    )

    def grey(x):
        tensor = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
        return rgb2gray(resize(tensor).permute(0, 2, 3, 1).numpy())

    kwargs = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
    expected = [
        np.mean(
            [
                structural_similarity(r, i, data_range=1.0, **kwargs)
                for r, i in zip(grey(p), grey(g), strict=True)
            ]
        )
        for p, g in zip(pred, video, strict=True)
    ]
    np.testing.assert_allclose(scores.metrics["mindeye2.ssim_gray_gaussian"], expected, atol=1e-6)
    assert scores.protocols["mindeye2"]["size"] == [425, 425]


@pytest.mark.parametrize(
    ("chosen", "ablation", "expected"),
    [
        # null: the main protocol, neuroclips where chosen, else the first that scores videos
        (list(PROTOCOLS), None, ["neuroclips"]),
        (["neurons", "mindvideo", "mindeye2"], None, ["neurons"]),
        # a list: in the order of evaluation.protocols
        (list(PROTOCOLS), ["mind_animator", "neuroclips"], ["neuroclips", "mind_animator"]),
    ],
)
def test_ablations_are_scored_under_the_main_protocol_unless_told(chosen, ablation, expected):
    evaluation = {"protocols": chosen, "n_way": [2, 50], "ablation_protocols": ablation}
    assert ablation_protocols(evaluation) == expected
    if ablation is None:
        assert expected == [main_protocol(chosen, [2, 50])]
