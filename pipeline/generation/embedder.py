"""fMRI → a keyframe generator's own CLIP image embedding, fitted on the training clips.

The diffusers unCLIP generators (``sd21_unclip``, ``tiny``) are conditioned on
the CLIP image embedding of their own image encoder (ViT-H/14, 1024-d, for SD
2.1 unCLIP), a space the Semantic Reconstructor does not predict. This stage
fits a ridge regression (scikit-learn ``RidgeCV``, the penalty chosen by
efficient leave-one-out cross-validation on the training samples) from the
subject's standardised training fMRI to the generator's embedding of each
training clip's keyframe frame, and reports on the test clips how well the
prediction retrieves the true keyframe among up to 300 (paper appendix C.6).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from pipeline.evaluation.metrics import retrieval_top1
from pipeline.reconstructors.data import load_split
from pipeline.stores import atomic_output, open_store, provenance

__all__ = ["KeyframeEmbedder", "clip_frames", "fit_embedder", "load_embedder"]

log = logging.getLogger(__name__)

WEIGHTS, CONFIG = "embedder.safetensors", "config.json"


class KeyframeEmbedder:
    """``(fmri - mean) / std @ coef.T + intercept``.

    Parameters
    ----------
    tensors : dict of str to torch.Tensor
        ``coef`` float32 (dim, n_voxels), ``intercept`` (dim,), ``x_mean`` and ``x_std``
        (n_voxels,): the training fMRI's standardisation.
    config : dict
        The model directory's ``config.json``.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], config: dict):
        self.coef, self.intercept = tensors["coef"], tensors["intercept"]
        self.mean, self.std = tensors["x_mean"], tensors["x_std"]
        self.config = config

    def __call__(self, fmri: torch.Tensor) -> torch.Tensor:
        """The generator's image embedding predicted from ``fmri``.

        Parameters
        ----------
        fmri : torch.Tensor of shape (n, n_voxels)
            Aligned fMRI samples, any float dtype.

        Returns
        -------
        torch.Tensor of shape (n, dim), float32
            The predicted CLIP image embeddings of the generator's image encoder.
        """
        x = (fmri.float() - self.mean) / self.std
        return x @ self.coef.T + self.intercept


def clip_frames(frame_dir: str | os.PathLike, segments, clips, frame: int) -> np.ndarray:
    """Frame ``frame`` of each (segment, clip), read from ``{frame_dir}/{segment}.zarr``.

    Parameters
    ----------
    frame_dir : str or PathLike
        The extracted frames, one ``{segment}.zarr`` per segment.
    segments : sequence of str
        Each clip's segment.
    clips : sequence of int
        Each clip's index within its segment.
    frame : int
        The frame's index within the clip.

    Returns
    -------
    ndarray of shape (n_clips, h, w, 3), uint8
    """
    out, stores = [], {}
    for segment, clip in zip(segments, clips, strict=True):
        if segment not in stores:
            path = Path(frame_dir) / f"{segment}.zarr"
            stores[segment] = open_store(path, stage="extract_frames")
        out.append(stores[segment]["frames"][int(clip), frame])
    return np.stack(out)


def _embed(generator, images: np.ndarray, batch_size: int) -> torch.Tensor:
    from tqdm.auto import tqdm

    parts = [
        generator.image_embeds(images[i : i + batch_size])
        for i in tqdm(range(0, len(images), batch_size), desc="image embeddings", unit="batch")
    ]
    return torch.cat(parts).cpu()


def fit_embedder(
    aligned: str | os.PathLike,
    frame_dir: str | os.PathLike,
    generator,
    output: str | os.PathLike,
    *,
    frame: int,
    alphas: list[float],
    batch_size: int = 32,
) -> dict:
    """Fit, evaluate on the test clips and write ``output/{embedder.safetensors,config.json}``.

    Parameters
    ----------
    aligned : str or PathLike
        The subject's aligned store (``train`` and ``test`` splits).
    frame_dir : str or PathLike
        The extracted frames, one ``{segment}.zarr`` per segment.
    generator : KeyframeGenerator
        Its ``image_embeds`` gives the targets, (n, dim).
    output : str or PathLike
        The model directory (written atomically).
    frame : int
        The keyframe's index within each clip.
    alphas : list of float
        Ridge penalties ``RidgeCV`` chooses from.
    batch_size : int
        Images per ``image_embeds`` call.

    Returns
    -------
    dict
        Test metrics: ``alpha``, ``test_cosine``, ``test_keyframe_top1``, ``test_fmri_top1``
        and ``chance`` (1 / min(300, n_test)).
    """
    from sklearn.linear_model import RidgeCV

    train, test = load_split(aligned, "train"), load_split(aligned, "test")
    # embed each clip's keyframe once; training repetitions share it
    keys = sorted(set(zip(train.segment.tolist(), train.clip.tolist(), strict=True)))
    index = {key: i for i, key in enumerate(keys)}
    unique = _embed(generator, clip_frames(frame_dir, *zip(*keys, strict=True), frame), batch_size)
    y_train = unique[[index[k] for k in zip(train.segment, train.clip.tolist(), strict=True)]]
    y_test = _embed(generator, clip_frames(frame_dir, test.segment, test.clip, frame), batch_size)

    x = train.fmri.numpy().astype(np.float64)
    mean, std = x.mean(0), x.std(0) + 1e-6
    ridge = RidgeCV(alphas=alphas).fit((x - mean) / std, y_train.numpy().astype(np.float64))
    tensors = {
        "coef": torch.from_numpy(np.ascontiguousarray(ridge.coef_)).float(),
        "intercept": torch.from_numpy(np.atleast_1d(ridge.intercept_)).float(),
        "x_mean": torch.from_numpy(mean).float(),
        "x_std": torch.from_numpy(std).float(),
    }
    embedder = KeyframeEmbedder(tensors, {})
    pred = embedder(test.fmri)
    forward, backward, _ = retrieval_top1(pred, y_test)
    cosine = torch.nn.functional.cosine_similarity(pred, y_test).mean().item()
    metrics = {
        "alpha": float(ridge.alpha_),
        "test_cosine": cosine,
        "test_keyframe_top1": float(forward.mean()),
        "test_fmri_top1": float(backward.mean()),
        "chance": 1 / min(300, len(test)),
    }
    log.info("keyframe embedder: %s", metrics)
    config = {
        "stage": "fit_keyframe_embedder",
        "frame": frame,
        "alphas": list(alphas),
        "embedding_dim": int(y_train.shape[1]),
        "n_train": len(train),
        "metrics": metrics,
        "provenance": provenance(
            "fit_keyframe_embedder", {"frame": frame, "alphas": list(alphas)}, [str(aligned)]
        ),
    }
    with atomic_output(output) as tmp:
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / WEIGHTS))
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    return metrics


def load_embedder(directory: str | os.PathLike) -> KeyframeEmbedder:
    """The embedder that :func:`fit_embedder` wrote to ``directory``.

    Parameters
    ----------
    directory : str or PathLike
        The model directory.

    Returns
    -------
    KeyframeEmbedder

    Raises
    ------
    StoreError
        When the directory is incomplete or was written by another stage.
    """
    from pipeline.reconstructors.outputs import read_model_dir

    config, tensors = read_model_dir(directory, "fit_keyframe_embedder", weights=WEIGHTS)
    return KeyframeEmbedder(tensors, config)
