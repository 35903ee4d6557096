"""Multi-fMRI fusion (paper §3.4): which neighbouring test clips continue one another.

A shallow MLP reads the CLIP image embeddings of two neighbouring keyframes
and predicts whether they show the same class of object. It is trained on
pairs of neighbouring *training* clips, whose label says whether their
ground-truth keyframes share the frame classifier's top-1 class. On the test
clips, runs of neighbours it calls "same" become chains of at most
``max_chain`` clips (3 in the paper: 6 s); within a chain each later clip is
regenerated from the last frame of the video before it, and the chain is
written as one continuous video.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "FusionClassifier",
    "FusionSettings",
    "fit_fusion",
    "fuse_videos",
    "fusion_chains",
    "load_fusion",
    "neighbour_pairs",
    "train_fusion",
]

log = logging.getLogger(__name__)


class FusionClassifier(nn.Module):
    """``[a, b, |a - b|, a * b]`` of two L2-normalised embeddings → logit of "same class".

    The shallow MLP of the paper's multi-fMRI fusion (section 3.4).

    Parameters
    ----------
    dim : int
        Width of the CLIP image embeddings.
    hidden : int
        Width of the hidden layer.
    dropout : float
        Dropout probability after the hidden layer.
    """

    def __init__(self, dim: int, hidden: int = 256, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(4 * dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Logit that two keyframes show the same class.

        Parameters
        ----------
        a, b : torch.Tensor of shape (n, dim)
            CLIP image embeddings of the earlier and the later keyframe; normalised here.

        Returns
        -------
        torch.Tensor of shape (n,), float32
            Logits of "same class" (sigmoid for a probability).
        """
        a = nn.functional.normalize(a.float(), dim=-1)
        b = nn.functional.normalize(b.float(), dim=-1)
        return self.net(torch.cat([a, b, (a - b).abs(), a * b], dim=-1)).squeeze(-1)


def neighbour_pairs(segments, clips) -> np.ndarray:
    """Index pairs ``(i, j)`` of consecutive clips of the same segment, in the given order.

    Parameters
    ----------
    segments : array-like of shape (n_clips,)
        Each clip's segment.
    clips : array-like of shape (n_clips,), int
        Each clip's index within its segment.

    Returns
    -------
    ndarray of shape (n_pairs, 2), int64
        Indices into the inputs: clip j follows clip i, sorted by segment then clip.
    """
    segments, clips = np.asarray(segments), np.asarray(clips)
    order = np.lexsort((clips, segments))
    pairs = [
        (i, j)
        for i, j in zip(order[:-1], order[1:], strict=True)
        if segments[i] == segments[j] and clips[j] == clips[i] + 1
    ]
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


@dataclass(frozen=True)
class FusionSettings:
    hidden: int = 256
    dropout: float = 0.1
    epochs: int = 50
    lr: float = 1e-3
    weight_decay: float = 1e-2
    batch_size: int = 64
    seed: int = 0


def train_fusion(
    a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, settings: FusionSettings
) -> tuple[FusionClassifier, list[float]]:
    """Fit the classifier with class-balanced BCE; returns it (eval mode) and the epoch losses.

    Runs on one CPU thread: for batches this small, intra-op threads only add
    synchronisation (30x slower beside another busy process on 2 cores).

    Parameters
    ----------
    a, b : torch.Tensor of shape (n_pairs, dim)
        CLIP image embeddings of the pairs' earlier and later clips.
    labels : torch.Tensor of shape (n_pairs,)
        1 where the pair shares a class, else 0.
    settings : FusionSettings
        Architecture, optimiser, epochs, batch size and seed.

    Returns
    -------
    model : FusionClassifier
        In eval mode.
    losses : list of float
        Mean training loss of each epoch.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_fusion(a, b, labels, settings)
    finally:
        torch.set_num_threads(threads)


def _train_fusion(a, b, labels, settings: FusionSettings):
    torch.manual_seed(settings.seed)
    model = FusionClassifier(a.shape[1], settings.hidden, settings.dropout)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    labels = labels.float()
    positive = labels.mean().clamp(1e-3, 1 - 1e-3)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=(1 - positive) / positive)
    generator = torch.Generator().manual_seed(settings.seed)
    losses = []
    for _ in range(settings.epochs):
        order = torch.randperm(len(labels), generator=generator)
        total = 0.0
        model.train()
        for start in range(0, len(order), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            loss = loss_fn(model(a[idx], b[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(order))
    return model.eval(), losses


def fusion_chains(
    same: np.ndarray, pairs: np.ndarray, n_clips: int, max_chain: int = 3
) -> list[list[int]]:
    """Chains of clip indices joined where ``same[k]`` holds for neighbour pair ``pairs[k]``.

    Walking each segment forward, a clip joins the chain of its predecessor
    when the pair is "same" and the chain has fewer than ``max_chain`` clips;
    otherwise it starts a new chain. Every clip is in exactly one chain.

    Parameters
    ----------
    same : ndarray of shape (n_pairs,), bool
        Whether the classifier calls each pair "same".
    pairs : ndarray of shape (n_pairs, 2), int
        Neighbour pairs (:func:`neighbour_pairs`).
    n_clips : int
        Number of clips.
    max_chain : int
        Most clips per chain (3 clips of 2 s: the paper's 6 s videos).

    Returns
    -------
    list of list of int
        The chains, each in time order; together they hold every clip once.

    Raises
    ------
    ValueError
        When ``max_chain`` is less than 1.
    """
    if max_chain < 1:
        raise ValueError(f"max_chain must be at least 1, got {max_chain}")
    joins = {int(j): int(i) for (i, j), s in zip(pairs, same, strict=True) if s}
    chain_of: dict[int, list[int]] = {}
    chains: list[list[int]] = []
    successors = {int(i): int(j) for i, j in pairs}
    predecessors = set(successors.values())
    starts = [c for c in range(n_clips) if c not in predecessors]
    for start in starts:
        clip: int | None = start
        while clip is not None:
            previous = joins.get(clip)
            if previous is not None and len(chain_of[previous]) < max_chain:
                chain = chain_of[previous]
                chain.append(clip)
            else:
                chain = [clip]
                chains.append(chain)
            chain_of[clip] = chain
            clip = successors.get(clip)
    return chains


# --- stages ---------------------------------------------------------------------------


def _training_pairs(clip_images, frame_stores, classifier, top_k: int):
    """Neighbouring training clips: both clips' cached CLIP embeddings of each keyframe
    candidate, and whether the two candidate frames share the classifier's top-k class."""
    from tqdm.auto import tqdm

    from pipeline.models.classifiers import share_class
    from pipeline.stores import open_store

    cache = open_store(clip_images, stage="cache_clip_images")
    candidates = list(cache.attrs["candidates"])
    names = [Path(p).name.removesuffix(".zarr") for p in frame_stores]
    all_segments = cache["segment"][:]
    rows = np.flatnonzero(np.isin(all_segments, names))
    segments, clips = all_segments[rows], cache["clip"][:][rows]
    embeds = torch.from_numpy(cache["image_embeds"][:][rows].astype(np.float32))
    top = np.zeros((len(rows), len(candidates), top_k), np.int64)
    for name, path in tqdm(list(zip(names, frame_stores, strict=True)), desc="classify frames"):
        frames = open_store(path, stage="extract_frames")["frames"]
        mine = np.flatnonzero(segments == name)
        images = frames.get_orthogonal_selection((clips[mine], candidates))  # (n, k, h, w, 3)
        found = classifier.top_k(images.reshape(-1, *images.shape[2:]), top_k)
        top[mine] = found.reshape(len(mine), len(candidates), top_k)
    pairs = neighbour_pairs(segments, clips)
    i, j = pairs[:, 0], pairs[:, 1]
    a = embeds[i].reshape(-1, embeds.shape[-1])  # pair-major, candidate-minor
    b = embeds[j].reshape(-1, embeds.shape[-1])
    labels = share_class(top[i].reshape(-1, top_k), top[j].reshape(-1, top_k))
    pair_segments = np.repeat(segments[i], len(candidates))
    return a, b, torch.from_numpy(labels), pair_segments, candidates


def _scores(model: FusionClassifier, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(model(a, b)).numpy() if len(a) else np.zeros(0, np.float32)


def _classification_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    if len(labels) == 0:
        return {}
    predicted = scores >= threshold
    both = 0 < labels.sum() < len(labels)
    return {
        "pairs": int(len(labels)),
        "positive_rate": float(labels.mean()),
        "accuracy": float((predicted == labels).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(labels, predicted)) if both else None,
        "auc": float(roc_auc_score(labels, scores)) if both else None,
    }


#: Shuffled-label refits averaged for the control (one refit's validation AUC is widely
#: spread when a single feature, the keyframes' similarity, explains most labels).
CONTROL_REPEATS = 20


def _shuffled_control(a, b, labels, fit, val, run: FusionSettings, threshold: float) -> dict:
    """Validation metrics of refits on permuted training labels, averaged over repeats."""
    truth, runs = labels[val].numpy(), []
    for r in range(CONTROL_REPEATS):
        generator = torch.Generator().manual_seed(run.seed + 1 + r)
        shuffled = labels[fit][torch.randperm(int(fit.sum()), generator=generator)]
        control, _ = train_fusion(a[fit], b[fit], shuffled, run)
        runs.append(_classification_metrics(_scores(control, a[val], b[val]), truth, threshold))
    out = {"repeats": CONTROL_REPEATS}
    for key in ("accuracy", "balanced_accuracy", "auc"):
        values = [m.get(key) for m in runs]
        out[key] = float(np.mean(values)) if values and None not in values else None
    return out


def fit_fusion(
    clip_images: str | os.PathLike,
    frame_stores: list[str | os.PathLike],
    classifier_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    settings: dict,
    device: torch.device,
    dtype: torch.dtype,
) -> dict:
    """Train the pair classifier on neighbouring training clips and write it to ``output``.

    Labels: the two clips' candidate frames share the frame classifier's
    top-``label_top_k`` class. A seeded ``validation_fraction`` of the training
    segments is held out; the metrics on it, and those of the same model
    trained on shuffled labels (a control that must sit at chance), go to
    ``output/config.json`` (a model directory like the reconstructors': weights,
    config, per-epoch ``metrics.csv`` and ``loss.png``). The classifier kept is
    the one fitted on the other segments.

    Parameters
    ----------
    clip_images : str or PathLike
        The ``cache_clip_images`` store (pooled CLIP embeddings of each clip's keyframe
        candidates).
    frame_stores : list of str or PathLike
        The training segments' frame stores, for the frame classifier's labels.
    classifier_dir : str or PathLike
        Directory of the frame classifier.
    output : str or PathLike
        The model directory (written atomically).
    settings : dict
        The ``fusion`` configuration: the fields of :class:`FusionSettings`,
        ``label_top_k`` and ``validation_fraction``.
    device : torch.device
        Where the frame classifier runs.
    dtype : torch.dtype
        Its precision.

    Returns
    -------
    dict
        ``train``, ``validation`` and ``shuffled_label_control`` classification metrics,
        ``validation_segments`` and ``final_loss``.

    Raises
    ------
    ValueError
        When the training clips hold no neighbouring pair.
    """
    from pipeline.models.classifiers import FrameClassifier
    from pipeline.reconstructors.outputs import write_model_dir
    from pipeline.stores import atomic_output, provenance

    classifier = FrameClassifier(classifier_dir, device, dtype)
    a, b, labels, pair_segments, candidates = _training_pairs(
        clip_images, frame_stores, classifier, settings["label_top_k"]
    )
    del classifier
    if len(labels) == 0:
        raise ValueError(f"{clip_images}: no neighbouring training clips to train fusion on")
    run = FusionSettings(**{k: settings[k] for k in FusionSettings.__dataclass_fields__})
    unique = np.unique(pair_segments)
    n_val = int(round(settings["validation_fraction"] * len(unique)))
    if 0 < settings["validation_fraction"] and len(unique) > 1:
        n_val = min(max(n_val, 1), len(unique) - 1)
    held = np.random.default_rng(run.seed).choice(unique, n_val, replace=False)
    val = torch.from_numpy(np.isin(pair_segments, held))
    fit = ~val
    model, losses = train_fusion(a[fit], b[fit], labels[fit], run)
    threshold = 0.5  # the metrics' decision point; fuse_videos' threshold is set apart
    truth = labels[val].numpy()
    metrics = {
        "train": _classification_metrics(
            _scores(model, a[fit], b[fit]), labels[fit].numpy(), threshold
        ),
        "validation": _classification_metrics(_scores(model, a[val], b[val]), truth, threshold),
        "shuffled_label_control": _shuffled_control(a, b, labels, fit, val, run, threshold),
        "validation_segments": sorted(map(str, held)),
        "final_loss": losses[-1] if losses else None,
    }
    log.info("fusion classifier: %s", json.dumps(metrics))
    config = {
        "stage": "train_fusion",
        "embedding_dim": int(a.shape[1]),
        "settings": asdict(run),
        "label_top_k": settings["label_top_k"],
        "candidates": candidates,
        "metrics": metrics,
        "provenance": provenance(
            "train_fusion",
            settings,
            [str(clip_images), str(classifier_dir), *map(str, frame_stores)],
        ),
    }
    rows = [{"epoch": i + 1, "train_loss": loss} for i, loss in enumerate(losses)]
    with atomic_output(output) as tmp:
        write_model_dir(tmp, model, config, rows, "fusion pair classifier")
    return metrics


def load_fusion(directory: str | os.PathLike) -> FusionClassifier:
    """The pair classifier written by :func:`fit_fusion` (eval mode).

    Parameters
    ----------
    directory : str or PathLike
        The model directory.

    Returns
    -------
    FusionClassifier

    Raises
    ------
    StoreError
        When the directory is incomplete, written by another stage, or its weights do not
        fit the recorded architecture.
    """
    from pipeline.reconstructors.outputs import load_into, read_model_dir

    config, state = read_model_dir(directory, "train_fusion")
    settings = config["settings"]
    dims = (config["embedding_dim"], settings["hidden"], settings["dropout"])
    return load_into(lambda: FusionClassifier(*dims), state, directory).eval()


def _chain_name(segment: str, clips: list[int]) -> str:
    from pipeline.generation.stages import video_name

    stem = video_name(segment, clips[0])
    return f"{stem}-{int(clips[-1]):03d}.mp4" if len(clips) > 1 else f"{stem}.mp4"


def _write_table(path: Path, header: list[str], rows: list[list]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def fuse_videos(
    videos: str | os.PathLike,
    blurry: str | os.PathLike,
    clip_model: str | os.PathLike,
    generation_dir: str | os.PathLike,
    fusion: str | os.PathLike,
    output: str | os.PathLike,
    *,
    threshold: float,
    max_chain: int,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int = 4,
) -> list[list[int]]:
    """Chain neighbouring test clips whose keyframes the classifier calls "same", regenerate
    each later clip of a chain from the tail frame of the video before it, and write the
    chains as continuous videos.

    ``output`` holds one mp4 per chain (``{segment}_clip{first}-{last}.mp4``;
    single clips keep their name), ``pairs.csv`` (every neighbour pair, its
    score and whether it was joined), ``chains.csv``, and ``frames.zarr``:
    the per-clip videos after fusion, the first-frame condition each used
    (its keyframe, or the tail frame it was regenerated from), ``chain``,
    ``position`` and ``regenerated``. The video settings are those the input
    videos were made with (read from their store), so fused and unfused clips
    differ only in their first-frame condition.

    Parameters
    ----------
    videos : str or PathLike
        The ``synthesize_videos`` output directory.
    blurry : str or PathLike
        The ``predict_perception`` store of the same clips: ``frames`` uint8
        (n_clips, n_frames, h, w, 3).
    clip_model : str or PathLike
        The OpenCLIP model whose keyframe embeddings the classifier reads.
    generation_dir : str or PathLike
        The video generation models (:meth:`VideoSynthesizer.from_generation_dir`).
    fusion : str or PathLike
        The :func:`fit_fusion` model directory.
    output : str or PathLike
        The output directory (written atomically).
    threshold : float
        Sigmoid score, in [0, 1], at or above which a pair is "same".
    max_chain : int
        Most clips per chain.
    device : torch.device
        Where the models run.
    dtype : torch.dtype
        Their precision.
    batch_size : int
        Clips regenerated per call.

    Returns
    -------
    list of list of int
        The chains of clip indices (:func:`fusion_chains`).
    """
    import zarr
    from tqdm.auto import tqdm

    from pipeline.caches import clip_image_embeds
    from pipeline.generation.diffusion import resize_images
    from pipeline.generation.stages import batch_slices, same_clips, write_mp4
    from pipeline.generation.video import VideoSettings, VideoSynthesizer
    from pipeline.models.loading import load_clip
    from pipeline.stores import atomic_output, create_array, open_store, provenance

    started = time.perf_counter()
    source = open_store(Path(videos) / "frames.zarr", stage="synthesize_videos")
    blurry_store = open_store(blurry, stage="predict_perception")
    same_clips(blurry_store, source, ("blurry.zarr", str(videos)))
    settings = dict(source.attrs["settings"])
    run = VideoSettings(**{k: settings[k] for k in VideoSettings.__dataclass_fields__})
    segments = source["segment"][:].tolist()
    clips = source["clip"][:].astype(int)
    keys = source["key"][:].tolist()
    captions = [str(c) for c in source["captions"][:]]
    n, size = len(keys), run.size

    clip, _ = load_clip(clip_model, device, dtype)
    embeds = clip_image_embeds(clip, source["keyframes"][:], device, dtype)
    del clip
    model = load_fusion(fusion)
    pairs = neighbour_pairs(segments, clips)
    scores = _scores(model, embeds[pairs[:, 0]], embeds[pairs[:, 1]])
    chains = fusion_chains(scores >= threshold, pairs, n, max_chain)
    chain_of = {c: k for k, chain in enumerate(chains) for c in chain}
    position = {c: p for chain in chains for p, c in enumerate(chain)}
    log.info(
        "fusion: %d of %d neighbour pairs called same; %d chains of >1 clip",
        int((scores >= threshold).sum()),
        len(pairs),
        sum(len(c) > 1 for c in chains),
    )

    params = {"threshold": threshold, "max_chain": max_chain, "video": settings}
    inputs = [str(videos), str(blurry), str(clip_model), str(generation_dir), str(fusion)]
    with atomic_output(output) as tmp:
        tmp.mkdir(parents=True)
        store = zarr.open_group(tmp / "frames.zarr", mode="w")
        for name in ("segment", "clip", "key", "captions", "prompts"):
            create_array(store, name, data=source[name][:], dims=["sample"])
        create_array(
            store, "chain", data=np.array([chain_of[c] for c in range(n)]), dims=["sample"]
        )
        create_array(
            store, "position", data=np.array([position[c] for c in range(n)]), dims=["sample"]
        )
        regenerated = np.array([position[c] > 0 for c in range(n)])
        create_array(store, "regenerated", data=regenerated, dims=["sample"])
        out = create_array(
            store,
            "videos",
            shape=source["videos"].shape,
            dtype=np.uint8,
            dims=["sample", "frame", "y", "x", "channel"],
            chunks=(1, *source["videos"].shape[1:]),
            compression="fast",
        )
        first = create_array(
            store,
            "first_frames",
            shape=(n, size, size, 3),
            dtype=np.uint8,
            dims=["sample", "y", "x", "channel"],
            chunks=(1, size, size, 3),
        )
        for c in range(n):
            if not regenerated[c]:
                out[c] = source["videos"][c]
                first[c] = resize_images(source["keyframes"][c : c + 1], size)[0]

        prepared = time.perf_counter()
        # position p of every chain at once: each clip needs its predecessor's final video
        steps = [
            [(chain[p - 1], chain[p]) for chain in chains if len(chain) > p]
            for p in range(1, max_chain)
        ]
        n_later = sum(map(len, steps))
        synthesizer = None
        if n_later:
            synthesizer = VideoSynthesizer.from_generation_dir(
                generation_dir, device, dtype, domain_adapter=settings["domain_adapter"]
            )
        progress = tqdm(total=n_later, desc="regenerate fused clips", unit="clip")
        for step in steps:
            for s in batch_slices(len(step), batch_size):
                previous, current = zip(*step[s], strict=True)
                tails = np.stack([out[c][-1] for c in previous])
                videos_out = synthesizer.synthesize(
                    np.stack([blurry_store["frames"][c] for c in current]),
                    tails,
                    [captions[c] for c in current],
                    [keys[c] for c in current],
                    run,
                )
                for c, tail, video in zip(current, tails, videos_out, strict=True):
                    out[c], first[c] = video, tail
                progress.update(len(current))
        progress.close()
        generated = time.perf_counter()

        files = []
        for chain in chains:
            name = _chain_name(segments[chain[0]], [clips[c] for c in chain])
            write_mp4(tmp / name, np.concatenate([out[c] for c in chain]), settings["fps"])
            files.append(name)
        create_array(
            store,
            "file",
            data=np.array([files[chain_of[c]] for c in range(n)], dtype=str),
            dims=["sample"],
        )
        joined = {(chain[p - 1], chain[p]) for chain in chains for p in range(1, len(chain))}
        _write_table(
            tmp / "pairs.csv",
            ["segment", "clip_a", "clip_b", "score", "same", "joined"],
            [
                [
                    segments[i],
                    clips[i],
                    clips[j],
                    f"{score:.6f}",
                    bool(score >= threshold),
                    (i, j) in joined,
                ]
                for (i, j), score in zip(pairs.tolist(), scores, strict=True)
            ],
        )
        pair_score = {(int(i), int(j)): float(x) for (i, j), x in zip(pairs, scores, strict=True)}
        _write_table(
            tmp / "chains.csv",
            ["chain", "segment", "first_clip", "last_clip", "n_clips", "seconds", "file", "scores"],
            [
                [
                    k,
                    segments[chain[0]],
                    clips[chain[0]],
                    clips[chain[-1]],
                    len(chain),
                    len(chain) * run.n_frames / settings["fps"],
                    files[k],
                    ";".join(f"{pair_score[(a, b)]:.6f}" for a, b in pairwise(chain)),
                ]
                for k, chain in enumerate(chains)
            ],
        )
        store.attrs["settings"] = settings
        store.attrs["timing"] = {
            "prepare_s": round(prepared - started, 3),
            "regenerate_s": round(generated - prepared, 3),
            "write_s": round(time.perf_counter() - generated, 3),
            "regenerated_clips": n_later,
        }
        store.attrs["provenance"] = provenance("fuse_videos", params, inputs)
    return chains
