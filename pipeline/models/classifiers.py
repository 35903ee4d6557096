"""Frame and clip classification with a preset's classifiers (fusion labels; evaluation)."""

from __future__ import annotations

import os

import numpy as np
import torch

from pipeline.models.loading import (
    load_clip_vision,
    load_image_classifier,
    load_video_classifier,
)

__all__ = ["ClipImageEncoder", "FrameClassifier", "VideoClassifier", "share_class"]


class FrameClassifier:
    """An image classifier loaded once; class scores of uint8 frames in batches.

    Parameters
    ----------
    path : path
        A transformers image-classification model directory
        (:func:`pipeline.models.loading.load_image_classifier`).
    device : torch.device or str
        Where the model runs.
    dtype : torch.dtype
        Precision of the weights and inputs.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.processor, self.model = load_image_classifier(path, device, dtype)
        self.device, self.dtype = torch.device(device), dtype

    @property
    def n_classes(self) -> int:
        return int(self.model.config.num_labels)

    @torch.no_grad()
    def logits(self, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """uint8 (n, h, w, 3) → float32 (n, classes).

        Parameters
        ----------
        frames : ndarray of shape (n_frames, height, width, 3), uint8
            RGB frames of any size in pixels; the model's image processor resizes them.
        batch_size : int
            Frames per model call.

        Returns
        -------
        ndarray of shape (n_frames, n_classes), float32
            Unnormalised class scores.
        """
        return _logits(self, frames, batch_size)

    def top_k(self, frames: np.ndarray, k: int = 1, batch_size: int = 64) -> np.ndarray:
        """Indices of the ``k`` highest-scoring classes per frame, best first: (n, k).

        Parameters
        ----------
        frames : ndarray of shape (n_frames, height, width, 3), uint8
        k : int
            Classes kept per frame.
        batch_size : int
            Frames per model call.

        Returns
        -------
        ndarray of shape (n_frames, k), int64
            Class indices; ties keep the lower index first.
        """
        logits = self.logits(frames, batch_size)
        return np.argsort(-logits, axis=1, kind="stable")[:, :k]


class VideoClassifier(FrameClassifier):
    """A video classifier loaded once; class scores of uint8 clips (n, f, h, w, 3) in batches.

    ``num_frames`` as in :func:`pipeline.models.loading.load_video_classifier`.

    Parameters
    ----------
    path : path
        A transformers video-classification model directory (e.g. VideoMAE).
    device : torch.device or str
        Where the model runs.
    dtype : torch.dtype
        Precision of the weights and inputs.
    num_frames : int, optional
        Frames per clip the model reads; default the checkpoint's.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        num_frames: int | None = None,
    ):
        self.processor, self.model = load_video_classifier(path, device, dtype, num_frames)
        self.device, self.dtype = torch.device(device), dtype

    @torch.no_grad()
    def logits(self, clips: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """uint8 (n, f, h, w, 3) → float32 (n, classes).

        Parameters
        ----------
        clips : ndarray of shape (n_clips, n_frames, height, width, 3), uint8
            RGB clips; the processor resizes the frames.
        batch_size : int
            Clips per model call.

        Returns
        -------
        ndarray of shape (n_clips, n_classes), float32
            Unnormalised class scores.
        """
        return _logits(self, clips, batch_size)


class ClipImageEncoder:
    """A transformers CLIP model's image embeddings (``get_image_features``) of uint8 frames,
    preprocessed by its own image processor, as the peers' CLIP-pcc calls it.

    Parameters
    ----------
    path : path
        A whole transformers CLIP model's directory
        (:func:`pipeline.models.loading.load_clip_vision`).
    device : torch.device or str
        Where the model runs.
    dtype : torch.dtype
        Precision of the weights and inputs.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.processor, self.model = load_clip_vision(path, device, dtype)
        self.device, self.dtype = torch.device(device), dtype

    @torch.no_grad()
    def embeds(self, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """uint8 (n, h, w, 3) → float32 (n, projection_dim).

        Parameters
        ----------
        frames : ndarray of shape (n_frames, height, width, 3), uint8
            RGB frames; the model's image processor resizes and normalises them.
        batch_size : int
            Frames per model call.

        Returns
        -------
        ndarray of shape (n_frames, projection_dim), float32
            Projected image embeddings, not normalised.
        """
        out = []
        for i in range(0, len(frames), batch_size):
            x = self.processor(images=list(frames[i : i + batch_size]), return_tensors="pt")
            x = x.pixel_values.to(self.device, self.dtype)
            out.append(self.model(pixel_values=x).image_embeds.float().cpu().numpy())
        return np.concatenate(out)


def _logits(classifier: FrameClassifier, items: np.ndarray, batch_size: int) -> np.ndarray:
    out = []
    for i in range(0, len(items), batch_size):
        x = classifier.processor(list(items[i : i + batch_size]), return_tensors="pt")
        x = x.pixel_values.to(classifier.device, classifier.dtype)
        out.append(classifier.model(pixel_values=x).logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, classifier.n_classes), np.float32)


def share_class(top_a: np.ndarray, top_b: np.ndarray) -> np.ndarray:
    """Per row, whether two top-k class sets intersect (top-1: the same class): (n,) bool.

    The semantic relevance test of multi-fMRI fusion (paper Sec. 3.4).

    Parameters
    ----------
    top_a, top_b : ndarray of shape (n, k), int
        Class indices per row, as :meth:`FrameClassifier.top_k` returns them.

    Returns
    -------
    ndarray of shape (n,), bool

    Raises
    ------
    ValueError
        If the two shapes differ.
    """
    top_a, top_b = np.asarray(top_a), np.asarray(top_b)
    if top_a.shape != top_b.shape:
        raise ValueError(f"top-k shapes differ: {top_a.shape} vs {top_b.shape}")
    return (top_a[:, :, None] == top_b[:, None, :]).any(axis=(1, 2))
