"""Does a reconstruction resemble its own clip more than the others? Clip identification.

The field's tables (:mod:`pipeline.evaluation.metrics`) average a metric over
the test clips, so a method that outputs nearly the same video for every clip
can still score close to a good one. Identification asks the question a reader
of a sample grid asks: is each reconstruction closer to the clip it was
decoded from than to the other clips? For every prediction ``i`` the
similarity to its own ground truth is compared with the median of its
similarities to the other clips' ground truths; the *identification rate* is
the share of predictions whose own similarity is higher. A prediction
unrelated to its clip sits at 0.5 in expectation, and so does the
``shuffled`` control, which pairs each prediction with another clip's ground
truth.

Two similarities, both cheap and independent of any learned model:

* ``colour_histogram`` — the intersection of the two clips' joint RGB
  histograms (all frames, :data:`HISTOGRAM_BINS` bins per channel), in [0, 1];
* ``ssim_32`` — the mean over matched frames of the RGB SSIM (skimage, 7 × 7
  uniform window) at 32 × 32 pixels: layout and coarse structure, not detail.

Generated videos with more frames than the ground truth are matched to it with
:func:`pipeline.evaluation.metrics.sample_frames`.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "HISTOGRAM_BINS",
    "SIMILARITIES",
    "colour_histograms",
    "identification",
    "identification_rate",
    "matched_vs_shuffled",
    "similarity_matrix",
]

#: Bins per RGB channel of the joint colour histogram.
HISTOGRAM_BINS = 8
#: The similarities :func:`similarity_matrix` computes.
SIMILARITIES = ("colour_histogram", "ssim_32")
_SSIM_SIZE = 32


def colour_histograms(clips: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """Joint RGB histograms of whole clips, each summing to 1.

    Parameters
    ----------
    clips : ndarray of shape (n_clips, n_frames, height, width, 3), uint8
    bins : int
        Bins per channel (256 must be a multiple).

    Returns
    -------
    ndarray of shape (n_clips, bins ** 3), float64
    """
    step = 256 // bins
    q = (np.asarray(clips) // step).astype(np.int64)
    codes = (q[..., 0] * bins + q[..., 1]) * bins + q[..., 2]
    codes = codes.reshape(len(q), -1)
    counts = np.stack([np.bincount(c, minlength=bins**3) for c in codes]).astype(np.float64)
    return counts / counts.sum(axis=1, keepdims=True)


def _small(clips: np.ndarray, size: int) -> np.ndarray:
    """Clips resized to ``size`` x ``size`` (antialiased), uint8."""
    from skimage.transform import resize

    n, t, h, w, c = clips.shape
    if (h, w) == (size, size):
        return np.asarray(clips)
    flat = np.asarray(clips).reshape(n * t, h, w, c)
    small = np.stack(
        [resize(f, (size, size), anti_aliasing=True, preserve_range=True) for f in flat]
    )
    return small.round().clip(0, 255).astype(np.uint8).reshape(n, t, size, size, c)


def similarity_matrix(pred: np.ndarray, truth: np.ndarray, kind: str) -> np.ndarray:
    """Similarity of every prediction to every ground-truth clip.

    Parameters
    ----------
    pred : ndarray of shape (n_clips, n_generated, height, width, 3), uint8
        Reconstructions; with more frames than ``truth``, the frames
        :func:`~pipeline.evaluation.metrics.sample_frames` picks are compared.
    truth : ndarray of shape (n_clips, n_frames, height', width', 3), uint8
        Ground-truth clips, in the order of ``pred``.
    kind : str
        One of :data:`SIMILARITIES`.

    Returns
    -------
    ndarray of shape (n_clips, n_clips), float64
        ``[i, j]``: prediction ``i`` against ground truth ``j``; higher is more similar.

    Raises
    ------
    ValueError
        For an unknown ``kind`` or fewer predicted than ground-truth frames.
    """
    from skimage.metrics import structural_similarity

    from pipeline.evaluation.metrics import sample_frames

    if kind not in SIMILARITIES:
        raise ValueError(f"unknown similarity {kind!r}; known: {SIMILARITIES}")
    if pred.shape[1] < truth.shape[1]:
        raise ValueError(f"{pred.shape[1]} predicted frames for {truth.shape[1]} true frames")
    if pred.shape[1] > truth.shape[1]:
        pred = pred[:, sample_frames(pred.shape[1], truth.shape[1], "uniform")]
    if kind == "colour_histogram":
        a, b = colour_histograms(pred), colour_histograms(truth)
        return np.minimum(a[:, None, :], b[None, :, :]).sum(axis=-1)
    a, b = _small(pred, _SSIM_SIZE), _small(truth, _SSIM_SIZE)
    out = np.empty((len(a), len(b)))
    for i, p in enumerate(a):
        for j, t in enumerate(b):
            out[i, j] = np.mean(
                [
                    structural_similarity(x, y, channel_axis=-1, data_range=255)
                    for x, y in zip(p, t, strict=True)
                ]
            )
    return out


def identification(similarity: np.ndarray) -> np.ndarray:
    """Whether each prediction is closer to its own clip than to the median other clip.

    Parameters
    ----------
    similarity : ndarray of shape (n_clips, n_clips)
        As :func:`similarity_matrix` returns it, at least 2 clips.

    Returns
    -------
    ndarray of shape (n_clips,), bool
    """
    s = np.asarray(similarity, dtype=np.float64)
    others = np.where(np.eye(len(s), dtype=bool), np.nan, s)
    return np.diag(s) > np.nanmedian(others, axis=1)


def identification_rate(similarity: np.ndarray, *, shuffled: bool = False, seed: int = 0) -> float:
    """The share of predictions identified (:func:`identification`).

    Parameters
    ----------
    similarity : ndarray of shape (n_clips, n_clips)
    shuffled : bool
        The control: each prediction's own clip replaced by another clip (a
        random derangement of the columns), so the rate estimates chance.
    seed : int
        Seeds the derangement.

    Returns
    -------
    float
        In [0, 1]; about 0.5 for predictions unrelated to their clips.
    """
    s = np.asarray(similarity)
    if shuffled:
        rng = np.random.default_rng(seed)
        while True:
            order = rng.permutation(len(s))
            if len(s) < 2 or not np.any(order == np.arange(len(s))):
                break
        s = s[:, order]
    return float(identification(s).mean())


def matched_vs_shuffled(
    similarity: np.ndarray, *, permutations: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Mean similarity of matched pairs against random re-pairings (a permutation test).

    Parameters
    ----------
    similarity : ndarray of shape (n_clips, n_clips)
        ``[i, j]``: prediction ``i`` against ground truth ``j`` (e.g. CLIP cosine
        similarities of keyframes and ground-truth frames).
    permutations : int
        Random re-pairings drawn for the null distribution.
    seed : int
        Seeds the permutations.

    Returns
    -------
    dict
        ``matched`` (mean of the diagonal), ``shuffled`` (mean over the
        permutations of the re-paired mean) and ``p`` (one-sided permutation
        p-value, (1 + #{shuffled >= matched}) / (1 + permutations)).
    """
    s = np.asarray(similarity, dtype=np.float64)
    rng = np.random.default_rng(seed)
    matched = float(np.diag(s).mean())
    rows = np.arange(len(s))
    null = np.array([s[rows, rng.permutation(len(s))].mean() for _ in range(permutations)])
    p = (1 + int((null >= matched).sum())) / (1 + permutations)
    return {"matched": matched, "shuffled": float(null.mean()), "p": p}
