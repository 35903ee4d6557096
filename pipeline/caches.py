"""Feature caches shared by all subjects: VAE latents, CLIP image tokens, captions, text embeddings.

Frames come from the frame stores (each stimulus was decoded once). Every
cache is a Zarr store with one sample per clip, in the order of the frame
stores given (``segment`` and ``clip`` arrays name each sample), float16
features chunked by clip, written batch by batch with a progress bar and
renamed into place only when complete.

A background thread reads and prepares the next ``prefetch`` batches (Zarr
reads, conversion, resizing) and another writes the results, so the model
runs while the data moves; ``prefetch=0`` does everything in one thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
import zarr
from tqdm.auto import tqdm

from pipeline.models.loading import load_captioner, load_clip, load_vae
from pipeline.stores import atomic_output, create_array, open_store, provenance

__all__ = [
    "cache_captions",
    "cache_clip_images",
    "cache_clip_text",
    "cache_vae_latents",
    "caption_inputs",
    "clip_image_embeds",
    "generate_captions",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
_END = object()


class _ModelTimer:
    """Wall time inside the model calls against the whole stage, recorded in the store.

    The goal for the cache stages is that reading frames, converting and writing
    take at most 15 % of the wall time: the model should be kept busy.
    """

    def __init__(self, device: torch.device | str):
        self.start = self.loop_start = time.perf_counter()
        self.model_s = 0.0
        self.cuda = torch.device(device).type == "cuda"

    def loaded(self) -> None:
        """Mark the end of model loading: the batch loop starts here."""
        self.loop_start = time.perf_counter()

    @contextlib.contextmanager
    def model(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        if self.cuda:
            torch.cuda.synchronize()
        self.model_s += time.perf_counter() - start

    def record(self, store: zarr.Group, stage: str) -> None:
        loop = time.perf_counter() - self.loop_start
        load = self.loop_start - self.start
        outside = 1.0 - self.model_s / loop if loop > 0 else 0.0
        store.attrs["timing"] = {
            "load_s": round(load, 3),
            "loop_s": round(loop, 3),
            "model_s": round(self.model_s, 3),
            "outside_model_fraction": round(outside, 4),
        }
        log.info(
            "%s: model loaded in %.1f s; batches %.1f s, %.1f s in model calls (%.1f %% outside)",
            stage,
            load,
            loop,
            self.model_s,
            100 * outside,
        )


def _clip_batches(
    frame_stores: Sequence[str | os.PathLike], batch_size: int, frames: Sequence[int] | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_sample, frames)`` over the clips of all stores, ``batch_size`` at a time.

    ``frames`` selects frame indices within each clip (default all). Frame
    stores are chunked by clip: whole clips are read, then the frames selected.
    """
    start = 0
    for path in frame_stores:
        array = open_store(path, stage="extract_frames")["frames"]
        for first in range(0, array.shape[0], batch_size):
            block = array[first : first + batch_size]
            yield start + first, block if frames is None else block[:, list(frames)]
        start += array.shape[0]


def _ahead(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Iterate over ``items`` produced by a background thread, ``depth`` items ahead.

    The producer (reading Zarr chunks, converting, resizing: mostly GIL-free
    work) then overlaps with the model call of the batch before. Exceptions
    of the producer are raised here. ``depth=0`` iterates in the caller's thread.
    """
    if depth == 0:
        yield from items
        return
    source = iter(items)
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = deque(pool.submit(next, source, _END) for _ in range(depth))
        while (item := pending.popleft().result()) is not _END:
            pending.append(pool.submit(next, source, _END))
            yield item


class _Writer:
    """Run store writes in a background thread, one at a time, in order."""

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: Future | None = None

    def __call__(self, fn: Callable[..., object], *args) -> None:
        self.wait()
        self.pending = self.pool.submit(fn, *args)

    def wait(self) -> None:
        if self.pending is not None:
            self.pending.result()
            self.pending = None

    def __enter__(self) -> _Writer:
        return self

    def __exit__(self, *exc) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self.pool.shutdown(wait=True)


def _setitem(array: zarr.Array, start: int, values: np.ndarray) -> None:
    array[start : start + len(values)] = values


def _sample_index(frame_stores: Sequence[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray]:
    segments, clips = [], []
    for path in frame_stores:
        n = open_store(path, stage="extract_frames")["frames"].shape[0]
        segments.append(np.full(n, Path(path).name.removesuffix(".zarr")))
        clips.append(np.arange(n, dtype=np.int32))
    return np.concatenate(segments), np.concatenate(clips)


def _new_cache(tmp: Path, frame_stores, stage: str, params: dict, inputs) -> zarr.Group:
    store = zarr.open_group(tmp, mode="w")
    segment, clip = _sample_index(frame_stores)
    create_array(store, "segment", data=segment, dims=["sample"])
    create_array(store, "clip", data=clip, dims=["sample"])
    store.attrs["provenance"] = provenance(stage, params, [*map(str, frame_stores), *inputs])
    return store


def _to_tensor(frames: np.ndarray, device, dtype) -> torch.Tensor:
    """uint8 (..., h, w, 3) → float (n, 3, h, w) in [0, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames.reshape(-1, *frames.shape[-3:])))
    return x.to(device).permute(0, 3, 1, 2).to(dtype) / 255.0


@torch.no_grad()
def cache_vae_latents(
    frame_stores: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    model: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 32,
    prefetch: int = 2,
) -> None:
    """VAE latents (``latent_dist.mode() * scaling_factor``) of every frame of every clip.

    Store: ``latents`` (sample, frame, channel, y, x) float16, chunked by clip;
    ``y`` and ``x`` are the frame size in pixels divided by the VAE's downsampling
    factor (8 for Stable Diffusion's VAE). These are the Perception Reconstructor's
    targets (paper Sec. 3.1).

    Parameters
    ----------
    frame_stores : sequence of path
        ``extract_frames`` stores, one per segment; ``frames`` of shape
        (n_clips, n_frames, height, width, 3) uint8. Samples follow their order.
    output : path
        The cache store to write (atomically).
    model : path
        Directory of a diffusers ``AutoencoderKL``.
    device : torch.device or str
        Where the model runs.
    dtype : torch.dtype
        Model and input precision; the stored features are float16.
    batch_size : int
        Images per model call (clips per call is ``batch_size // n_images_per_clip``,
        at least 1).
    prefetch : int
        Batches prepared ahead by a background thread; 0 reads in the caller's thread.
    """
    timer = _ModelTimer(device)
    vae = load_vae(model, device, dtype)
    timer.loaded()
    n_samples = len(_sample_index(frame_stores)[0])
    first = open_store(frame_stores[0], stage="extract_frames")["frames"]
    per_clip, size = first.shape[1], first.shape[2]
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    shape = (n_samples, per_clip, vae.config.latent_channels, size // factor, size // factor)
    params = {"model": str(model), "dtype": str(dtype), "scaling_factor": vae.config.scaling_factor}
    clips_per_batch = max(1, batch_size // per_clip)
    with atomic_output(output) as tmp:
        store = _new_cache(tmp, frame_stores, "cache_vae", params, [str(model)])
        latents = create_array(
            store,
            "latents",
            shape=shape,
            dtype=np.float16,
            dims=["sample", "frame", "channel", "y", "x"],
            chunks=(1, *shape[1:]),
        )

        def batches():
            for start, frames in _clip_batches(frame_stores, clips_per_batch):
                yield start, len(frames), _to_tensor(frames, vae.device, vae.dtype) * 2 - 1

        progress = tqdm(total=n_samples, desc="VAE latents", unit="clip")
        with _Writer() as write:
            for start, n, x in _ahead(batches(), prefetch):
                with timer.model():
                    z = vae.encode(x).latent_dist.mode() * vae.config.scaling_factor
                write(_setitem, latents, start, z.float().cpu().numpy().reshape(n, *shape[1:]))
                progress.update(n)
        progress.close()
        timer.record(store, "cache_vae")


def _clip_preprocess(x: torch.Tensor, model) -> torch.Tensor:
    """Resize (bicubic, antialiased) to the visual tower's size and normalise."""
    size = model.visual.image_size
    size = size if isinstance(size, tuple) else (size, size)
    x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False)
    mean = torch.tensor(model.visual.image_mean, device=x.device, dtype=x.dtype)[:, None, None]
    std = torch.tensor(model.visual.image_std, device=x.device, dtype=x.dtype)[:, None, None]
    return (x.clamp(0, 1) - mean) / std


@torch.no_grad()
def clip_image_embeds(
    clip, images: np.ndarray, device, dtype, batch_size: int = 32
) -> torch.Tensor:
    """Pooled OpenCLIP image embeddings (what ``image_embeds`` of the cache holds) of uint8
    images (n, h, w, 3), on the CPU as float32.

    Parameters
    ----------
    clip : open_clip model
        As :func:`pipeline.models.loading.load_clip` returns it.
    images : ndarray of shape (n_images, height, width, 3), uint8
        Any size in pixels; resized (bicubic, antialiased) to the visual tower's input.
    device : torch.device or str
        Where the model runs.
    dtype : torch.dtype
        Input precision (the model's).
    batch_size : int
        Images per model call.

    Returns
    -------
    torch.Tensor of shape (n_images, embed_dim), float32, on the CPU
        Empty (shape (0,)) when ``images`` is empty.
    """
    parts = []
    for i in range(0, len(images), batch_size):
        x = _clip_preprocess(_to_tensor(images[i : i + batch_size], device, dtype), clip)
        parts.append(clip.visual(x)[0])
    return torch.cat(parts).float().cpu() if parts else torch.zeros(0)


@torch.no_grad()
def cache_clip_images(
    frame_stores: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    model: str | os.PathLike,
    candidates: Sequence[int],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 32,
    prefetch: int = 2,
) -> None:
    """OpenCLIP image tokens and pooled embeddings of the keyframe candidates.

    Store: ``tokens`` (sample, candidate, token, width) — the visual tower's
    tokens after ``ln_post``, CLS excluded, no projection — and ``image_embeds``
    (sample, candidate, embed), both float16 and chunked by clip. These are the
    Semantics Reconstructor's image targets (paper Sec. 3.2).

    Parameters
    ----------
    frame_stores : sequence of path
        ``extract_frames`` stores, one per segment; ``frames`` of shape
        (n_clips, n_frames, height, width, 3) uint8. Samples follow their order.
    output : path
        The cache store to write (atomically).
    model : path
        Directory of an OpenCLIP checkpoint.
    candidates : sequence of int
        Frame indices within each clip that are keyframe candidates.
    device : torch.device or str
        Where the model runs.
    dtype : torch.dtype
        Model and input precision; the stored features are float16.
    batch_size : int
        Images per model call (clips per call is ``batch_size // n_images_per_clip``,
        at least 1).
    prefetch : int
        Batches prepared ahead by a background thread; 0 reads in the caller's thread.
    """
    timer = _ModelTimer(device)
    clip, _ = load_clip(model, device, dtype)
    timer.loaded()
    n_samples = len(_sample_index(frame_stores)[0])
    probe = clip.visual(_clip_preprocess(torch.zeros(1, 3, 8, 8, device=device, dtype=dtype), clip))
    (_, embed), (_, n_tokens, width) = probe[0].shape, probe[1].shape
    k = len(candidates)
    params = {"model": str(model), "dtype": str(dtype), "candidates": list(candidates)}
    clips_per_batch = max(1, batch_size // k)
    with atomic_output(output) as tmp:
        store = _new_cache(tmp, frame_stores, "cache_clip_images", params, [str(model)])
        tokens = create_array(
            store,
            "tokens",
            shape=(n_samples, k, n_tokens, width),
            dtype=np.float16,
            dims=["sample", "candidate", "token", "width"],
            chunks=(1, k, n_tokens, width),
        )
        embeds = create_array(
            store,
            "image_embeds",
            shape=(n_samples, k, embed),
            dtype=np.float16,
            dims=["sample", "candidate", "embed"],
            chunks=(min(n_samples, 1024), k, embed),
        )
        store.attrs["candidates"] = list(candidates)
        progress = tqdm(total=n_samples, desc="CLIP image tokens", unit="clip")
        pooled_all = np.zeros((n_samples, k, embed), np.float16)

        def batches():
            for start, frames in _clip_batches(frame_stores, clips_per_batch, candidates):
                yield start, len(frames), _clip_preprocess(_to_tensor(frames, device, dtype), clip)

        with _Writer() as write:
            for start, n, x in _ahead(batches(), prefetch):
                with timer.model():
                    pooled, toks = clip.visual(x)
                write(
                    _setitem,
                    tokens,
                    start,
                    toks.float().cpu().numpy().reshape(n, *tokens.shape[1:]),
                )
                pooled_all[start : start + n] = pooled.float().cpu().numpy().reshape(n, k, embed)
                progress.update(n)
        embeds[:] = pooled_all
        progress.close()
        timer.record(store, "cache_clip_images")


def caption_inputs(processor, images: np.ndarray, device, dtype):
    """BLIP-2 processor inputs of uint8 images (n, h, w, 3), on ``device``.

    Parameters
    ----------
    processor : transformers.Blip2Processor
        As :func:`pipeline.models.loading.load_captioner` returns it.
    images : ndarray of shape (n_images, height, width, 3), uint8
    device : torch.device or str
        Where the captioner runs.
    dtype : torch.dtype
        Precision of ``pixel_values``.

    Returns
    -------
    transformers.BatchFeature
        ``pixel_values`` of shape (n_images, 3, size, size) in ``dtype``, on ``device``.
    """
    inputs = processor(images=list(images), return_tensors="pt").to(device)
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    return inputs


@torch.no_grad()
def generate_captions(processor, captioner, inputs, generation: dict) -> list[str]:
    """Captions of prepared inputs (greedy or beam search as ``generation`` says).

    Parameters
    ----------
    processor : transformers.Blip2Processor
        Decodes the generated tokens.
    captioner : transformers.Blip2ForConditionalGeneration
    inputs : transformers.BatchFeature
        As :func:`caption_inputs` returns them.
    generation : dict
        Keyword arguments of ``captioner.generate`` (``max_new_tokens``, ``num_beams``, ...).

    Returns
    -------
    list of str, length n_images
        One caption per image, stripped.
    """
    out = captioner.generate(**inputs, **generation)
    return [t.strip() for t in processor.batch_decode(out, skip_special_tokens=True)]


@torch.no_grad()
def cache_captions(
    frame_stores: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    model: str | os.PathLike,
    candidates: Sequence[int],
    max_new_tokens: int,
    min_new_tokens: int,
    num_beams: int = 1,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 32,
    prefetch: int = 2,
) -> None:
    """BLIP-2 captions of the keyframe candidates: ``captions`` (sample, candidate) str.

    The captions are the text modality of the Semantics Reconstructor (paper Sec. 3.2,
    "Reconstruction Enhancement from Text Modality").

    Parameters
    ----------
    frame_stores : sequence of path
        ``extract_frames`` stores, one per segment; ``frames`` of shape
        (n_clips, n_frames, height, width, 3) uint8. Samples follow their order.
    output : path
        The cache store to write (atomically).
    model : path
        Directory of a BLIP-2 checkpoint (transformers).
    candidates : sequence of int
        Frame indices within each clip that are keyframe candidates.
    max_new_tokens, min_new_tokens : int
        Caption length bounds, in tokens.
    num_beams : int
        Beam search width; 1 is greedy decoding.
    device : torch.device or str
        Where the model runs.
    dtype : torch.dtype
        Model and input precision; the stored features are float16.
    batch_size : int
        Images per model call (clips per call is ``batch_size // n_images_per_clip``,
        at least 1).
    prefetch : int
        Batches prepared ahead by a background thread; 0 reads in the caller's thread.
    """
    timer = _ModelTimer(device)
    processor, captioner = load_captioner(model, device, dtype)
    timer.loaded()
    n_samples = len(_sample_index(frame_stores)[0])
    k = len(candidates)
    generation = {
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": min_new_tokens,
        "num_beams": num_beams,
        "do_sample": False,
    }
    params = {"model": str(model), "dtype": str(dtype), "candidates": list(candidates)} | generation
    captions = np.empty((n_samples, k), dtype=object)
    with atomic_output(output) as tmp:
        store = _new_cache(tmp, frame_stores, "cache_captions", params, [str(model)])
        progress = tqdm(total=n_samples, desc="captions", unit="clip")

        def batches():
            for start, frames in _clip_batches(frame_stores, max(1, batch_size // k), candidates):
                images = frames.reshape(-1, *frames.shape[-3:])
                yield start, len(frames), caption_inputs(processor, images, device, dtype)

        for start, n, inputs in _ahead(batches(), prefetch):
            with timer.model():
                text = generate_captions(processor, captioner, inputs, generation)
            captions[start : start + n] = np.array(text, dtype=object).reshape(n, k)
            progress.update(n)
        progress.close()
        create_array(store, "captions", data=captions.astype(str), dims=["sample", "candidate"])
        store.attrs["candidates"] = list(candidates)
        timer.record(store, "cache_captions")


@torch.no_grad()
def cache_clip_text(
    captions: str | os.PathLike,
    output: str | os.PathLike,
    *,
    model: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    batch_size: int = 256,
    prefetch: int = 2,
) -> None:
    """OpenCLIP text embeddings of every caption: ``text_embeds`` (sample, candidate, embed).

    Stored float16; the targets of the text contrastive loss (paper Sec. 3.2, eq. 4).

    Parameters
    ----------
    captions : path
        The ``cache_captions`` store (``captions`` of shape (n_samples, n_candidates) str).
    output : path
        The cache store to write (atomically).
    model : path
        Directory of an OpenCLIP checkpoint.
    device : torch.device or str
        Where the model runs.
    dtype : torch.dtype
        Model precision; the stored embeddings are float16.
    batch_size : int
        Captions per model call.
    prefetch : int
        Batches tokenised ahead by a background thread; 0 tokenises in the caller's thread.
    """
    timer = _ModelTimer(device)
    clip, tokenizer = load_clip(model, device, dtype)
    timer.loaded()
    source = open_store(captions, stage="cache_captions")
    text = source["captions"][:]
    flat = [str(t) for t in text.ravel()]
    params = {"model": str(model), "dtype": str(dtype)}
    with atomic_output(output) as tmp:
        store = zarr.open_group(tmp, mode="w")
        create_array(store, "segment", data=source["segment"][:], dims=["sample"])
        create_array(store, "clip", data=source["clip"][:], dims=["sample"])
        embeds = []
        batches = (
            tokenizer(flat[i : i + batch_size]).to(device) for i in range(0, len(flat), batch_size)
        )
        total = -(-len(flat) // batch_size)
        for tokens in tqdm(_ahead(batches, prefetch), total=total, desc="CLIP text", unit="batch"):
            with timer.model():
                embeds.append(clip.encode_text(tokens).float().cpu().numpy())
        values = np.concatenate(embeds).reshape(*text.shape, -1).astype(np.float16)
        create_array(
            store,
            "text_embeds",
            data=values,
            dims=["sample", "candidate", "embed"],
            chunks=(min(len(values), 1024), *values.shape[1:]),
        )
        store.attrs["provenance"] = provenance(
            "cache_clip_text", params, [str(captions), str(model)]
        )
        timer.record(store, "cache_clip_text")
