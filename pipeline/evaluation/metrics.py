"""The metrics of the fMRI-to-video field, each named by the variant it computes.

Every peer's evaluation code computes its own variant of each metric; each
variant here is named, and :mod:`pipeline.evaluation.protocols` says which
system's code computes which.

* **N-way top-1** (MinD-Video's protocol, used by NeuroClips, NEURONS and
  Mind-Animator): the ground-truth class set is the classifier's top-3 on the
  ground truth; each of ``trials`` trials draws n−1 distractor classes
  outside that set, and succeeds when, for some ground-truth class, the
  prediction's probability of it beats every distractor's. With a set of 3,
  a prediction unrelated to the ground truth succeeds with probability
  3/(n+2), not 1/n. The ± every peer prints is the mean over samples of each
  sample's binomial sd, sqrt(p_i(1−p_i)/trials) (:func:`binomial_sd`): a
  statement about the trials, not about the clips (the bootstrap CI over
  clips is that).
* **SSIM**, three variants in use: ``rgb_uniform`` (skimage on RGB uint8,
  7 × 7 uniform window: MinD-Video, Mind-Animator), ``gray_gaussian``
  (grayscale in [0, 1], Gaussian σ = 1.5, population covariance, 2-D:
  MindEye2) and ``gray_columns`` (the same settings with ``channel_axis=-1``
  on the grey image, so skimage averages the 1-D SSIMs of the image's
  columns: NEURONS). **PSNR** on RGB uint8, data range 255, capped at
  :data:`PSNR_MAX` for identical images.
* **CLIP-pcc**, two definitions: ``adjacent`` (the paper's: mean cosine
  similarity of the CLIP embeddings of consecutive frames) and ``all_pairs``
  (NEURONS: the mean over all ordered pairs of distinct frames).
* **EPE** (Mind-Animator): the mean end-point error between the Farneback
  optical flows (OpenCV) of consecutive ground-truth frames and of the
  corresponding predicted frames; lower is better. **Hue-pcc**
  (Mind-Animator): the uncentred cosine similarity of two frames' per-pixel
  hue maps (OpenCV HSV). Mind-Animator converts RGB frames with OpenCV's
  BGR codes; ``rgb_as_bgr`` reproduces that.
* **Retrieval top-1**: within a pool of clips, a clip's fMRI embedding must
  be nearest (cosine) to its own keyframe embedding (keyframe retrieval) and
  the keyframe embedding to its own fMRI embedding (fMRI retrieval). Pools
  are the consecutive parts of at most 300 clips (paper appendix C.6) or
  MindEye2's random subsets (:func:`retrieval_subsets`).
* **Frame sampling** from the generated frames onto the ground truth's:
  ``neurons`` (of 16 frames drop the first 4, then every 2nd: 6 frames) or
  ``uniform`` (evenly spaced, first and last kept).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "FRAME_SAMPLINGS",
    "PSNR_MAX",
    "binomial_sd",
    "clip_pcc",
    "epe",
    "flow_epe",
    "hue_pcc",
    "n_way_top1",
    "optical_flows",
    "psnr",
    "retrieval_subsets",
    "retrieval_top1",
    "sample_frames",
    "ssim",
]

#: PSNR reported for identical images (dB): skimage would return infinity.
PSNR_MAX = 100.0

FRAME_SAMPLINGS = ("neurons", "uniform")
SSIM_VARIANTS = ("rgb_uniform", "gray_gaussian", "gray_columns")
CLIP_PCC_VARIANTS = ("adjacent", "all_pairs")


def n_way_top1(
    pred_probs: np.ndarray,
    gt_probs: np.ndarray,
    n_way: int,
    *,
    trials: int = 100,
    gt_top: int = 3,
    seed: int = 0,
) -> np.ndarray:
    """Per-sample N-way top-1 accuracy over ``trials`` random draws of distractors.

    Parameters
    ----------
    pred_probs, gt_probs : ndarray of shape (n_samples, n_classes)
        The classifier's class probabilities on each prediction and on its
        ground truth.
    n_way : int
        Classes per trial: the ground truth's plus ``n_way - 1`` distractors.
    trials : int
        Random draws of distractors per sample.
    gt_top : int
        Size of the ground-truth class set: the classifier's top ``gt_top`` on the ground truth.
    seed : int
        Seed of the generator that draws the distractors.

    Returns
    -------
    ndarray of shape (n_samples,), float64
        The fraction of successful trials of each sample, in [0, 1].

    Raises
    ------
    ValueError
        When the probabilities are not two (n_samples, n_classes) arrays alike, or
        ``n_way`` is outside 2 .. ``n_classes - gt_top + 1``.
    """
    pred_probs, gt_probs = np.asarray(pred_probs), np.asarray(gt_probs)
    if pred_probs.shape != gt_probs.shape or pred_probs.ndim != 2:
        raise ValueError(
            f"probabilities must be (n, classes) alike: {pred_probs.shape}, {gt_probs.shape}"
        )
    n, n_classes = pred_probs.shape
    if not 2 <= n_way <= n_classes - gt_top + 1:
        raise ValueError(
            f"n_way={n_way} needs 2..{n_classes - gt_top + 1} with {n_classes} classes"
        )
    rng = np.random.default_rng(seed)
    gt_sets = np.argsort(-gt_probs, axis=1, kind="stable")[:, :gt_top]
    accuracy = np.empty(n)
    for i in range(n):
        others = np.setdiff1d(np.arange(n_classes), gt_sets[i])
        # a trial succeeds iff no distractor beats the best-scored ground-truth class
        best = pred_probs[i, gt_sets[i]].max()
        # n_way - 1 distinct distractors per trial: the first columns of random permutations
        draws = others[np.argsort(rng.random((trials, len(others))), axis=1)[:, : n_way - 1]]
        accuracy[i] = (pred_probs[i, draws].max(axis=1) < best).mean()
    return accuracy


def binomial_sd(accuracy: np.ndarray, trials: int) -> np.ndarray:
    """Each sample's binomial sd over its trials, sqrt(p_i(1−p_i)/trials).

    Their mean is the ± every peer prints beside an N-way accuracy
    (MinD-Video ``src/MindVideo/utils/eval_metrics.py`` and the scripts that
    call it, at jqin4749/MindVideo@5097206d; NEURONS and Mind-Animator call
    the same code): not sqrt(p̄(1−p̄)/trials), which is never smaller (the
    square root is concave).

    Parameters
    ----------
    accuracy : ndarray of shape (n_samples,)
        Each sample's fraction of successful trials, in [0, 1] (:func:`n_way_top1`).
    trials : int
        Trials per sample.

    Returns
    -------
    ndarray of shape (n_samples,), float64
        Each sample's binomial standard deviation.
    """
    p = np.asarray(accuracy, dtype=np.float64)
    return np.sqrt(p * (1 - p) / trials)


def ssim(a: np.ndarray, b: np.ndarray, variant: str = "rgb_uniform") -> float:
    """SSIM of two RGB images (h, w, 3) in one of :data:`SSIM_VARIANTS`: uint8, or for the
    grey variants also float in [0, 1] (what MindEye2's float resizing gives).

    Parameters
    ----------
    a, b : ndarray of shape (h, w, 3)
        The two images: uint8 in [0, 255], or for the grey variants float in [0, 1].
    variant : str
        One of :data:`SSIM_VARIANTS`.

    Returns
    -------
    float
        The mean SSIM, at most 1.

    Raises
    ------
    ValueError
        For an unknown ``variant``, or non-uint8 images with ``rgb_uniform``.
    """
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    if variant == "rgb_uniform":
        if a.dtype != np.uint8 or b.dtype != np.uint8:
            raise ValueError(f"rgb_uniform SSIM compares uint8 images, not {a.dtype}, {b.dtype}")
        return float(structural_similarity(a, b, channel_axis=-1, data_range=255))
    if variant in ("gray_gaussian", "gray_columns"):
        # gray_columns: NEURONS passes channel_axis=-1 with the grey (h, w) image, so skimage
        # takes its columns for channels and averages their 1-D SSIMs
        axis = {"channel_axis": -1} if variant == "gray_columns" else {}
        return float(
            structural_similarity(
                rgb2gray(a),
                rgb2gray(b),
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
                **axis,
            )
        )
    raise ValueError(f"unknown SSIM variant {variant!r}; known: {SSIM_VARIANTS}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR (dB) of two uint8 RGB images, data range 255; :data:`PSNR_MAX` when identical.

    Parameters
    ----------
    a, b : ndarray of shape (h, w, 3), uint8
        The two images.

    Returns
    -------
    float
        PSNR in dB, at most :data:`PSNR_MAX`.
    """
    from skimage.metrics import peak_signal_noise_ratio

    if np.array_equal(a, b):
        return PSNR_MAX
    return float(min(peak_signal_noise_ratio(a, b, data_range=255), PSNR_MAX))


def clip_pcc(embeddings: np.ndarray, variant: str = "adjacent") -> float:
    """CLIP-pcc of one video from its frames' CLIP image embeddings (frames, dim).

    Parameters
    ----------
    embeddings : ndarray of shape (n_frames, dim)
        The CLIP image embeddings of the video's frames, in frame order; normalised here.
    variant : str
        ``adjacent`` (consecutive frames, the paper's section 4.1) or ``all_pairs``.

    Returns
    -------
    float
        The mean cosine similarity, in [-1, 1].

    Raises
    ------
    ValueError
        For fewer than two frames or an unknown ``variant``.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    if len(x) < 2:
        raise ValueError("CLIP-pcc needs at least two frames")
    if variant == "adjacent":
        return float(np.mean(np.sum(x[:-1] * x[1:], axis=1)))
    if variant == "all_pairs":
        similarity = x @ x.T
        return float(similarity[~np.eye(len(x), dtype=bool)].mean())
    raise ValueError(f"unknown CLIP-pcc variant {variant!r}; known: {CLIP_PCC_VARIANTS}")


def sample_frames(n_generated: int, n_target: int, mode: str = "neurons") -> np.ndarray:
    """Indices of the generated frames compared with the ``n_target`` ground-truth frames.

    Parameters
    ----------
    n_generated : int
        Frames of the generated video.
    n_target : int
        Frames of the ground-truth clip.
    mode : str
        One of :data:`FRAME_SAMPLINGS`.

    Returns
    -------
    ndarray of shape (n_target,), int
        Indices into the generated frames, increasing.

    Raises
    ------
    ValueError
        For an unknown ``mode``, or ``neurons`` with fewer than ``2 * n_target`` frames.
    """
    if mode == "neurons":
        # NEURONS: drop the first frames, then every 2nd (16 -> 6: frames 4, 6, ..., 14)
        start = n_generated - 2 * n_target
        if start < 0:
            raise ValueError(f"'neurons' sampling needs 2 x {n_target} frames, got {n_generated}")
        return np.arange(start, n_generated, 2)
    if mode == "uniform":
        return np.linspace(0, n_generated - 1, n_target).round().astype(int)
    raise ValueError(f"unknown frame sampling {mode!r}; known: {FRAME_SAMPLINGS}")


#: Farneback parameters (OpenCV's documented example values, as used for video EPE)
FARNEBACK = {
    "pyr_scale": 0.5,
    "levels": 3,
    "winsize": 15,
    "iterations": 3,
    "poly_n": 5,
    "poly_sigma": 1.2,
    "flags": 0,
}


def optical_flows(frames: np.ndarray, *, rgb_as_bgr: bool = False) -> np.ndarray:
    """Farneback flows (OpenCV, :data:`FARNEBACK`) between consecutive frames of a uint8
    video (f, h, w, 3): (f − 1, h, w, 2). ``rgb_as_bgr`` converts to grey with OpenCV's
    BGR weights, as Mind-Animator does with its RGB frames (``Evaluation_Metrics/EPE.py``
    at ReedOnePeck/Mind-Animator@a5adbf3b).

    Parameters
    ----------
    frames : ndarray of shape (n_frames, h, w, 3), uint8
        The video.
    rgb_as_bgr : bool
        Convert to grey with BGR weights (Mind-Animator's handling of its RGB frames).

    Returns
    -------
    ndarray of shape (n_frames - 1, h, w, 2), float32
        Each pixel's displacement (x, y) in pixels from one frame to the next.
    """
    import cv2

    code = cv2.COLOR_BGR2GRAY if rgb_as_bgr else cv2.COLOR_RGB2GRAY
    gray = [cv2.cvtColor(np.ascontiguousarray(f), code) for f in frames]
    return np.stack(
        [
            cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK)
            for a, b in zip(gray[:-1], gray[1:], strict=True)
        ]
    )


def flow_epe(pred_flows: np.ndarray, gt_flows: np.ndarray) -> float:
    """Mean end-point error (pixels) between two videos' flows of one shape.

    Parameters
    ----------
    pred_flows, gt_flows : ndarray of shape (n_frames - 1, h, w, 2)
        Flows of the prediction and the ground truth (:func:`optical_flows`), in pixels.

    Returns
    -------
    float
        The mean Euclidean distance between the flow vectors, in pixels; lower is better.

    Raises
    ------
    ValueError
        When the flows' shapes differ.
    """
    if pred_flows.shape != gt_flows.shape:
        raise ValueError(f"EPE needs flows of one shape: {pred_flows.shape}, {gt_flows.shape}")
    return float(np.linalg.norm(pred_flows - gt_flows, axis=-1).mean())


def epe(pred: np.ndarray, gt: np.ndarray, *, rgb_as_bgr: bool = False) -> float:
    """Mean end-point error (pixels) between the optical flows of two uint8 videos
    (f, h, w, 3) of one shape (:func:`optical_flows`, :func:`flow_epe`).

    Parameters
    ----------
    pred, gt : ndarray of shape (n_frames, h, w, 3), uint8
        The predicted and the ground-truth video; ``n_frames >= 2``.
    rgb_as_bgr : bool
        As in :func:`optical_flows`.

    Returns
    -------
    float
        The mean end-point error, in pixels; lower is better.

    Raises
    ------
    ValueError
        When the shapes differ or a video has fewer than two frames.
    """
    if pred.shape != gt.shape or len(pred) < 2:
        raise ValueError(
            f"EPE needs two videos of one shape with >= 2 frames: {pred.shape}, {gt.shape}"
        )
    return flow_epe(
        optical_flows(pred, rgb_as_bgr=rgb_as_bgr), optical_flows(gt, rgb_as_bgr=rgb_as_bgr)
    )


def hue_pcc(a: np.ndarray, b: np.ndarray, *, rgb_as_bgr: bool = False) -> float:
    """Mind-Animator's hue-pcc of two uint8 RGB images (h, w, 3): the uncentred cosine
    similarity of their per-pixel hue maps (``Evaluation_Metrics/hue_pcc.py`` at
    ReedOnePeck/Mind-Animator@a5adbf3b; OpenCV's 8-bit hue, scaled by 1/360 there,
    which a cosine ignores).

    ``rgb_as_bgr`` converts with ``COLOR_BGR2HSV`` as Mind-Animator does with its
    RGB frames (red and blue swap their hues). An image without hue (grey) has a
    zero map, where the cosine is 0/0: two hue-free images score 1, one scores 0.

    Parameters
    ----------
    a, b : ndarray of shape (h, w, 3), uint8
        The two images, RGB.
    rgb_as_bgr : bool
        Convert with ``COLOR_BGR2HSV``, as Mind-Animator does.

    Returns
    -------
    float
        The cosine similarity of the hue maps, in [0, 1].
    """
    import cv2

    code = cv2.COLOR_BGR2HSV if rgb_as_bgr else cv2.COLOR_RGB2HSV
    h = [cv2.cvtColor(np.ascontiguousarray(x), code)[..., 0].astype(np.float64) for x in (a, b)]
    norm = np.linalg.norm(h[0]) * np.linalg.norm(h[1])
    if norm == 0:
        return float(not h[0].any() and not h[1].any())
    return float(np.sum(h[0] * h[1]) / norm)


def _array(x) -> np.ndarray:
    """An array of ``x``; a torch tensor (the reconstructors' embeddings, on any device)
    leaves autograd and the device first."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        x = x.float() if str(x.dtype) == "torch.bfloat16" else x  # numpy has no bfloat16
    return np.asarray(x)


def retrieval_top1(
    pred: np.ndarray, target: np.ndarray, pool: int = 300
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-sample top-1 retrieval both ways within consecutive parts of at most ``pool``.

    The protocol of the paper's appendix C.6 (the test set in parts of 300; chance
    1/300), and the one retrieval of the pipeline: the evaluation's and the test-set
    scores the reconstructors and the keyframe embedder log while they train.
    ``pred`` and ``target`` (n, ...) are arrays or torch tensors.

    Returns ``(forward, backward, part_size)``: whether each prediction's
    nearest target (cosine) is its own (keyframe retrieval), whether each
    target's nearest prediction is its own (fMRI retrieval), and the size of
    each sample's part (chance is ``1 / part_size``). Works in float32 on one
    part at a time, normalising in place: at paper size (1,200 clips of 256 ×
    1664 tokens) it holds one part's copy beside the inputs, about 1 GB, not
    float64 copies of both sets (about 16 GB).

    Parameters
    ----------
    pred, target : ndarray or torch.Tensor of shape (n, ...)
        Paired embeddings (e.g. float32, (n, 256, 1664)), flattened to (n, d) here.
    pool : int
        The largest part; parts are consecutive and of near-equal size.

    Returns
    -------
    forward, backward : ndarray of shape (n,), bool
        Keyframe retrieval and fMRI retrieval correct, per sample.
    part_size : ndarray of shape (n,), int64
        The size of each sample's part.

    Raises
    ------
    ValueError
        When ``pred`` and ``target`` differ in length or are empty.
    """
    p = _array(pred).reshape(len(pred), -1)
    t = _array(target).reshape(len(target), -1)
    if len(p) != len(t) or len(p) == 0:
        raise ValueError(f"need paired, non-empty embeddings: {len(p)} vs {len(t)}")
    forward = np.empty(len(p), dtype=bool)
    backward = np.empty(len(p), dtype=bool)
    size = np.empty(len(p), dtype=np.int64)
    for part in np.array_split(np.arange(len(p)), -(-len(p) // pool)):
        a = p[part].astype(np.float32, copy=False)  # p[part] is a copy already
        b = t[part].astype(np.float32, copy=False)
        a /= np.sqrt(np.einsum("ij,ij->i", a, a))[:, None]  # no squared copy, as norm makes
        b /= np.sqrt(np.einsum("ij,ij->i", b, b))[:, None]
        similarity = a @ b.T
        del a, b  # before the next part's copies are made
        own = np.arange(len(part))
        forward[part] = similarity.argmax(axis=1) == own
        backward[part] = similarity.argmax(axis=0) == own
        size[part] = len(part)
    return forward, backward, size


def retrieval_subsets(
    pred: np.ndarray, target: np.ndarray, pool: int = 300, subsets: int = 30, seed: int = 42
) -> tuple[np.ndarray, np.ndarray, float]:
    """MindEye2's retrieval: top-1 both ways within ``subsets`` random subsets of ``pool``.

    As ``src/final_evaluations.ipynb`` at MedARC-AI/MindEyeV2@c1847188: numpy's
    global generator seeded with ``seed`` (``utils.seed_everything(42)``; nothing
    else draws from it before), each subset ``np.random.choice(np.arange(n), 300,
    replace=False)``, cosine similarity of the flattened, normalised
    embeddings. With fewer than ``pool`` clips, every subset holds them all.

    Returns ``(forward, backward, chance)`` per clip: its correct retrievals
    (fMRI → keyframe, keyframe → fMRI) divided by the mean number of subsets a
    clip is drawn into, ``subsets * pool / n``; so their mean over clips is
    the mean over subsets of each subset's accuracy, the number MindEye2
    prints. ``chance`` is 1 / pool.

    Parameters
    ----------
    pred, target : ndarray of shape (n, ...)
        Paired embeddings, flattened to (n, d) in float32.
    pool : int
        Clips per subset (all ``n`` when fewer).
    subsets : int
        Number of random subsets.
    seed : int
        Seed of the legacy numpy generator.

    Returns
    -------
    forward, backward : ndarray of shape (n,), float64
        Each clip's correct retrievals per subset it is drawn into.
    chance : float
        ``1 / min(pool, n)``.

    Raises
    ------
    ValueError
        When ``pred`` and ``target`` differ in length or are empty.
    """
    p = np.asarray(pred, dtype=np.float32).reshape(len(pred), -1)
    t = np.asarray(target, dtype=np.float32).reshape(len(target), -1)
    if len(p) != len(t) or len(p) == 0:
        raise ValueError(f"need paired, non-empty embeddings: {len(p)} vs {len(t)}")
    n = len(p)
    size = min(pool, n)
    rng = np.random.RandomState(seed)  # the legacy global generator MindEye2 seeds
    forward, backward = np.zeros(n), np.zeros(n)
    for _ in range(subsets):
        rows = rng.choice(np.arange(n), size=size, replace=False)
        a = p[rows] / np.linalg.norm(p[rows], axis=1, keepdims=True)
        b = t[rows] / np.linalg.norm(t[rows], axis=1, keepdims=True)
        similarity = a @ b.T
        own = np.arange(size)
        forward[rows] += similarity.argmax(axis=1) == own
        backward[rows] += similarity.argmax(axis=0) == own
    scale = n / (subsets * size)
    return forward * scale, backward * scale, 1 / size
