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

__all__ = ["write_tiny_classifiers", "write_tiny_frame_classifier"]

#: Input side of the tiny ViT (patch 8: a 4 x 4 grid of patches).
IMAGE_SIZE = 32


def _pixel_values(processor, frames: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    return torch.cat(
        [
            processor(images=list(frames[i : i + batch_size]), return_tensors="pt").pixel_values
            for i in range(0, len(frames), batch_size)
        ]
    )


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
    """
    from sklearn.cluster import KMeans
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    if len(frames) <= held_out:
        raise ValueError(f"{len(frames)} frames are too few to hold out {held_out} for checking")
    processor = ViTImageProcessor(
        do_resize=True,
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
        resample=2,  # bilinear
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    x = _pixel_values(processor, frames)
    features = torch.nn.functional.avg_pool2d(x, 4).flatten(1).numpy()  # 8 x 8 x 3 colours
    clusters = KMeans(n_clusters=classes, n_init=4, random_state=seed).fit_predict(features)
    order = np.random.default_rng(seed).permutation(len(frames))
    held, train = order[:held_out], order[held_out:]
    y = torch.from_numpy(clusters.astype(np.int64))

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=IMAGE_SIZE,
        patch_size=8,
        num_channels=3,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=classes,
        id2label={i: f"cluster_{i}" for i in range(classes)},
        label2id={f"cluster_{i}": i for i in range(classes)},
    )
    model = ViTForImageClassification(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
    rng = np.random.default_rng(seed)
    losses = []
    model.train()
    for _ in tqdm(range(steps), desc="fit tiny frame classifier", unit="step"):
        idx = torch.from_numpy(rng.choice(train, batch_size))
        batch = x[idx]
        flip = torch.from_numpy(rng.random(len(idx)) < 0.5)  # mirrored frames: same cluster
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
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    processor.save_pretrained(str(path))
    model.save_pretrained(str(path), safe_serialization=True)
    metadata = {
        "classes": "k-means clusters of the training frames (8 x 8 mean colours)",
        "n_classes": classes,
        "cluster_sizes": np.bincount(clusters, minlength=classes).tolist(),
        "n_frames": int(len(train)),
        "steps": steps,
        "seed": seed,
        "final_loss": losses[-1] if losses else None,
        "held_out_frames": int(len(held)),
        "held_out_accuracy": float((predicted == clusters[held]).mean()),
    }
    (path / "metadata.json").write_text(json.dumps(metadata, indent=2))
    return metadata


def write_tiny_classifiers(
    output: str | os.PathLike,
    frame_stores: list[str | os.PathLike],
    *,
    seed: int = 0,
    steps: int = 300,
    classes: int = 8,
    max_frames: int = 4096,
) -> dict:
    """Write the tiny preset's classifiers to ``output/{role}``, fitted to ``frame_stores``.

    At most ``max_frames`` training frames, drawn with ``seed``, are used. The
    directory appears only once complete. Returns the metadata per role.
    """
    import zarr

    from pipeline.stores import atomic_output

    clips = [zarr.open_group(p, mode="r")["frames"] for p in frame_stores]
    index = [
        (s, c, f) for s, a in enumerate(clips) for c in range(a.shape[0]) for f in range(a.shape[1])
    ]
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(index), min(max_frames, len(index)), replace=False))
    by_store: dict[int, list[tuple[int, int]]] = {}
    for i in chosen:
        s, c, f = index[i]
        by_store.setdefault(s, []).append((c, f))
    frames = []
    for s, items in by_store.items():
        data = clips[s][:]
        frames += [data[c, f] for c, f in items]
    frames = np.stack(frames)
    with atomic_output(output) as tmp:
        metadata = write_tiny_frame_classifier(
            tmp / "frame_classifier", frames, seed=seed, steps=steps, classes=classes
        )
        metadata["fitted_on"] = [str(p) for p in frame_stores]
        (tmp / "frame_classifier" / "metadata.json").write_text(json.dumps(metadata, indent=2))
    return {"frame_classifier": metadata}
