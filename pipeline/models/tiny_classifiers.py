"""The ``tiny`` preset's classifiers: small transformers models fitted to the training frames.

The paper preset's frame classifier is an ImageNet ViT
(``google/vit-base-patch16-224``). A randomly initialised network is useless
in its place: its top-1 class is nearly the same for every image, so every
fusion pair would be "same class". The tiny frame classifier is therefore a
small, seeded ``ViTForImageClassification`` trained to predict the k-means
cluster (scikit-learn, on downsampled pixels) of each training frame: its
classes exist without any labels, so any dataset in the cc2017 layout gets
one. It is written in the layout of the hub repository (``config.json`` with
``id2label``, ``preprocessor_config.json``, ``model.safetensors``) and read
back through :func:`pipeline.models.loading.load_image_classifier`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = [
    "TINY_CLIP_ROLES",
    "write_tiny_classifiers",
    "write_tiny_openai_clip",
    "write_tiny_frame_classifier",
    "write_tiny_video_classifier",
]

#: Input side of the tiny ViT and VideoMAE (patch 8: a 4 x 4 grid of patches).
IMAGE_SIZE = 32


def _processor_kwargs() -> dict:
    return {
        "do_resize": True,
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        "resample": 2,  # bilinear
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }


def _pixel_values(processor, items: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Processor outputs of images (n, h, w, 3) or clips (n, f, h, w, 3), in batches."""
    return torch.cat(
        [
            processor(list(items[i : i + batch_size]), return_tensors="pt").pixel_values
            for i in range(0, len(items), batch_size)
        ]
    )


def _fit_to_clusters(
    model, x: torch.Tensor, features: np.ndarray, *, classes, seed, steps, held_out, batch_size, lr
) -> dict:
    """Train ``model`` to predict the k-means cluster of each input; metadata of the fit."""
    from sklearn.cluster import KMeans

    if len(x) <= held_out:
        raise ValueError(f"{len(x)} inputs are too few to hold out {held_out} for checking")
    clusters = KMeans(n_clusters=classes, n_init=4, random_state=seed).fit_predict(features)
    order = np.random.default_rng(seed).permutation(len(x))
    held, train = order[:held_out], order[held_out:]
    y = torch.from_numpy(clusters.astype(np.int64))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    rng = np.random.default_rng(seed)
    losses = []
    model.train()
    name = type(model).__name__
    for _ in tqdm(range(steps), desc=f"fit tiny {name}", unit="step"):
        idx = torch.from_numpy(rng.choice(train, batch_size))
        batch = x[idx]
        flip = torch.from_numpy(rng.random(len(idx)) < 0.5)  # mirrored inputs: same cluster
        batch[flip] = batch[flip].flip(-1)
        loss = torch.nn.functional.cross_entropy(model(pixel_values=batch).logits, y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        predicted = model(pixel_values=x[torch.from_numpy(held)]).logits.argmax(-1).numpy()
    return {
        "n_classes": classes,
        "cluster_sizes": np.bincount(clusters, minlength=classes).tolist(),
        "n_fitted": int(len(train)),
        "steps": steps,
        "seed": seed,
        "final_loss": losses[-1] if losses else None,
        "held_out": int(len(held)),
        "held_out_accuracy": float((predicted == clusters[held]).mean()),
    }


def _labels(classes: int) -> dict:
    return {
        "num_labels": classes,
        "id2label": {i: f"cluster_{i}" for i in range(classes)},
        "label2id": {f"cluster_{i}": i for i in range(classes)},
    }


def _save(path, processor, model, metadata: dict) -> dict:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(str(path))
    model.save_pretrained(str(path), safe_serialization=True)
    (path / "metadata.json").write_text(json.dumps(metadata, indent=2))
    return metadata


def write_tiny_frame_classifier(
    path: str | os.PathLike,
    frames: np.ndarray,
    *,
    seed: int = 0,
    steps: int = 300,
    classes: int = 8,
    held_out: int = 256,
    batch_size: int = 64,
    lr: float = 2e-3,
) -> dict:
    """Fit a tiny ViT to the k-means clusters of ``frames`` (uint8, (n, h, w, 3)) and save it.

    Returns the metadata also written to ``path/metadata.json``: cluster
    sizes, the final loss and the accuracy on ``held_out`` frames not used
    for fitting (against their k-means cluster).

    Parameters
    ----------
    path : path
        The role folder to write (transformers layout).
    frames : ndarray of shape (n_frames, height, width, 3), uint8
        Resized to :data:`IMAGE_SIZE` pixels by the saved image processor.
    seed : int
        Seeds the weights, the k-means, the held-out split and the batches.
    steps : int
        Optimisation steps (AdamW, cosine learning-rate decay).
    classes : int
        Number of k-means clusters, the classifier's classes.
    held_out : int
        Frames kept out of the fit; must be fewer than ``n_frames``.
    batch_size : int
        Frames per step.
    lr : float
        Initial learning rate.

    Returns
    -------
    dict
        The metadata (JSON-serialisable).

    Raises
    ------
    ValueError
        If there are no more frames than ``held_out``.
    """
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    processor = ViTImageProcessor(**_processor_kwargs())
    x = _pixel_values(processor, frames)
    features = torch.nn.functional.avg_pool2d(x, 4).flatten(1).numpy()  # 8 x 8 x 3 colours
    torch.manual_seed(seed)
    model = ViTForImageClassification(
        ViTConfig(
            image_size=IMAGE_SIZE,
            patch_size=8,
            num_channels=3,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            **_labels(classes),
        )
    )
    metadata = {"classes": "k-means clusters of the frames (8 x 8 mean colours)"}
    metadata |= _fit_to_clusters(
        model,
        x,
        features,
        classes=classes,
        seed=seed,
        steps=steps,
        held_out=held_out,
        batch_size=batch_size,
        lr=lr,
    )
    return _save(path, processor, model, metadata)


def write_tiny_video_classifier(
    path: str | os.PathLike,
    clips: np.ndarray,
    *,
    seed: int = 0,
    steps: int = 300,
    classes: int = 8,
    held_out: int = 128,
    batch_size: int = 32,
    lr: float = 2e-3,
) -> dict:
    """Fit a tiny VideoMAE to the k-means clusters of ``clips`` (uint8, (n, f, h, w, 3)).

    The clusters are those of the clips' frames' 8 x 8 mean colours taken
    together, so content and its change over the clip both count. Metadata
    as for :func:`write_tiny_frame_classifier`.

    Parameters
    ----------
    path : path
        The role folder to write (transformers layout).
    clips : ndarray of shape (n_clips, n_frames, height, width, 3), uint8
        ``n_frames`` must be even (VideoMAE's tubelets of 2 frames).
    seed : int
        Seeds the weights, the k-means, the held-out split and the batches.
    steps : int
        Optimisation steps (AdamW, cosine learning-rate decay).
    classes : int
        Number of k-means clusters, the classifier's classes.
    held_out : int
        Clips kept out of the fit; must be fewer than ``n_clips``.
    batch_size : int
        Clips per step.
    lr : float
        Initial learning rate.

    Returns
    -------
    dict
        The metadata (JSON-serialisable).

    Raises
    ------
    ValueError
        If ``n_frames`` is odd or there are no more clips than ``held_out``.
    """
    from transformers import (
        VideoMAEConfig,
        VideoMAEForVideoClassification,
        VideoMAEImageProcessor,
    )

    if clips.shape[1] % 2:
        raise ValueError(
            f"clips of {clips.shape[1]} frames (frames.fps x alignment.clip_s): VideoMAE's "
            "tubelets of 2 frames need an even number; change frames.fps"
        )
    processor = VideoMAEImageProcessor(do_center_crop=False, **_processor_kwargs())
    x = _pixel_values(processor, clips)  # (n, frames, 3, size, size)
    features = torch.nn.functional.avg_pool2d(x.flatten(0, 1), 4).reshape(len(x), -1).numpy()
    torch.manual_seed(seed)
    model = VideoMAEForVideoClassification(
        VideoMAEConfig(
            image_size=IMAGE_SIZE,
            patch_size=8,
            num_channels=3,
            # the clip's frames (the field feeds VideoMAE the 6 frames of a clip:
            # MinD-Video's video_classify_metric loads it with num_frames=6)
            num_frames=clips.shape[1],
            tubelet_size=2,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            use_mean_pooling=True,
            **_labels(classes),
        )
    )
    metadata = {"classes": "k-means clusters of the clips (8 x 8 mean colours of every frame)"}
    metadata |= _fit_to_clusters(
        model,
        x,
        features,
        classes=classes,
        seed=seed,
        steps=steps,
        held_out=held_out,
        batch_size=batch_size,
        lr=lr,
    )
    return _save(path, processor, model, metadata)


#: The evaluation protocols' CLIP models (openai ViT-L/14 and ViT-B/32 in the paper preset)
#: as tiny CLIP models: role → patch size (14 and 32 in the real ones).
TINY_CLIP_ROLES = {"clip_vit_l14": 4, "clip_vit_b32": 8}


def write_tiny_openai_clip(path: str | os.PathLike, *, seed: int = 0, patch_size: int = 8) -> dict:
    """A tiny, seeded ``CLIPModel`` (both towers) with its image processor, saved in the
    layout of the openai CLIP hub repositories (``config.json``, ``model.safetensors``,
    ``preprocessor_config.json``); not trained: CLIP-pcc of the demo only runs the code.

    Parameters
    ----------
    path : path
        The role folder to write.
    seed : int
        Seeds the random weights.
    patch_size : int
        Patch side of the image tower, pixels (images are :data:`IMAGE_SIZE` pixels).

    Returns
    -------
    dict
        The metadata also written to ``path/metadata.json``.
    """
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(seed)
    tower = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    tower["intermediate_size"] = 64
    config = CLIPConfig(
        text_config=tower
        | {"vocab_size": 1000, "max_position_embeddings": 32}
        | {"bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1},
        vision_config=tower | {"image_size": IMAGE_SIZE, "patch_size": patch_size},
        projection_dim=16,
    )
    processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    metadata = {"weights": f"random, torch.manual_seed({seed}); not trained"}
    return _save(path, processor, CLIPModel(config).eval(), metadata | {"seed": seed})


def write_tiny_classifiers(
    output: str | os.PathLike,
    frame_stores: list[str | os.PathLike],
    *,
    seed: int = 0,
    steps: int = 300,
    classes: int = 8,
    max_frames: int = 4096,
    max_clips: int = 1024,
) -> dict:
    """Write the tiny preset's classifiers to ``output/{frame_classifier,video_classifier}``.

    Fitted to at most ``max_frames`` frames and ``max_clips`` clips of the
    training ``frame_stores``, drawn with ``seed``. The directory appears only
    once complete. Returns the metadata per role. The tiny CLIP models of
    :data:`TINY_CLIP_ROLES` are written beside the classifiers.

    Parameters
    ----------
    output : path
        The tiny preset's classifier folder, written atomically.
    frame_stores : list of path
        ``extract_frames`` stores of the training stimuli.
    seed : int
        Seeds the weights, the k-means, the held-out split and the batches.
    steps : int
        Optimisation steps (AdamW, cosine learning-rate decay).
    classes : int
        Number of k-means clusters, the classifier's classes.
    max_frames : int
        Most frames the frame classifier is fitted to.
    max_clips : int
        Most clips the video classifier is fitted to.

    Returns
    -------
    dict of str to dict
        Role → its metadata, as written to ``{role}/metadata.json``.
    """
    from pipeline.frames import read_clips
    from pipeline.stores import atomic_output

    clips = read_clips(frame_stores)
    frames = clips.reshape(-1, *clips.shape[2:])
    rng = np.random.default_rng(seed)
    frame_rows = np.sort(rng.choice(len(frames), min(max_frames, len(frames)), replace=False))
    clip_rows = np.sort(rng.choice(len(clips), min(max_clips, len(clips)), replace=False))
    fit = {"seed": seed, "steps": steps, "classes": classes}
    with atomic_output(output) as tmp:
        metadata = {
            "frame_classifier": write_tiny_frame_classifier(
                tmp / "frame_classifier", frames[frame_rows], **fit
            ),
            "video_classifier": write_tiny_video_classifier(
                tmp / "video_classifier", clips[clip_rows], **fit
            ),
        }
        for role, patch in TINY_CLIP_ROLES.items():
            metadata[role] = write_tiny_openai_clip(tmp / role, seed=seed, patch_size=patch)
        for role, record in metadata.items():
            record["fitted_on"] = [str(p) for p in frame_stores]
            (tmp / role / "metadata.json").write_text(json.dumps(record, indent=2))
    return metadata
