"""Inference stages per subject: keyframes, their captions, and the videos (one call each).

Every stage loads its models once, works through the test clips in batches
with a progress bar, and writes its output atomically with provenance. Each
clip's seed is derived from ``(seed, segment, clip)``, so a clip's result does
not depend on the batch size or on the other clips.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import zarr
from tqdm.auto import tqdm

from pipeline.errors import DataError
from pipeline.generation.keyframes import KeyframeSettings, load_generator
from pipeline.generation.registry import keyframe_generator
from pipeline.stores import atomic_output, create_array, open_store, provenance

__all__ = [
    "batch_slices",
    "caption_keyframes",
    "clip_keys",
    "fit_keyframe_embedder",
    "generate_keyframes",
    "same_clips",
    "synthesize_videos",
    "video_name",
    "write_mp4",
]

log = logging.getLogger(__name__)


def clip_keys(segments, clips) -> list[int]:
    """A stable integer per (segment, clip): what each clip's seed is derived from.

    Parameters
    ----------
    segments : sequence of str
        Each clip's segment.
    clips : sequence of int
        Each clip's index within its segment.

    Returns
    -------
    list of int
        CRC-32 of ``"{segment}/{clip}"``, in [0, 2**32).
    """
    return [zlib.crc32(f"{s}/{int(c)}".encode()) for s, c in zip(segments, clips, strict=True)]


def video_name(segment: str, clip: int) -> str:
    """File stem of a test clip's video: ``{segment}_clip{clip:03d}``.

    Parameters
    ----------
    segment : str
        The clip's segment.
    clip : int
        The clip's index within its segment.

    Returns
    -------
    str
    """
    return f"{segment}_clip{int(clip):03d}"


def batch_slices(n: int, size: int) -> list[slice]:
    """Consecutive slices of at most ``size`` covering ``range(n)``.

    Parameters
    ----------
    n : int
        Number of items.
    size : int
        Largest batch.

    Returns
    -------
    list of slice
    """
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def same_clips(a: zarr.Group, b: zarr.Group, names: tuple[str, str]) -> None:
    """Check that two stores list the same test clips, in the same order.

    Parameters
    ----------
    a, b : zarr.Group
        Stores with ``segment`` and ``clip`` arrays.
    names : tuple of str
        The two stores' names, for the message.

    Raises
    ------
    DataError
        When their ``segment`` or ``clip`` arrays differ.
    """
    if a["segment"][:].tolist() != b["segment"][:].tolist() or not np.array_equal(
        a["clip"][:], b["clip"][:]
    ):
        raise DataError(f"{names[0]} and {names[1]} do not list the same test clips; rerun both")


def _generator_dir(generation_dir: str | os.PathLike, generator: str) -> Path:
    return Path(generation_dir) / keyframe_generator(generator).role


def fit_keyframe_embedder(
    aligned: str | os.PathLike,
    frame_dir: str | os.PathLike,
    generation_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    generator: str,
    frame: int,
    alphas: list[float],
    device: torch.device,
    dtype: torch.dtype,
) -> dict:
    """Ridge fMRI → the generator's own image embedding (:mod:`pipeline.generation.embedder`).

    Parameters
    ----------
    aligned : str or PathLike
        The subject's aligned store.
    frame_dir : str or PathLike
        The extracted frames, one ``{segment}.zarr`` per segment.
    generation_dir : str or PathLike
        The generation models; the generator's role directory is read.
    output : str or PathLike
        The embedder's model directory.
    generator : str
        A key of :data:`~pipeline.generation.registry.KEYFRAME_GENERATORS`.
    frame : int
        The keyframe's index within each clip.
    alphas : list of float
        Ridge penalties to choose from.
    device : torch.device
        Where the generator's image encoder runs.
    dtype : torch.dtype
        Its precision.

    Returns
    -------
    dict
        The test metrics of :func:`~pipeline.generation.embedder.fit_embedder`.

    Raises
    ------
    ValueError
        When the generator is not conditioned on ``image_embeds``.
    """
    from pipeline.generation.embedder import fit_embedder

    model = load_generator(generator, _generator_dir(generation_dir, generator), device, dtype)
    if model.conditioning != "image_embeds":
        raise ValueError(f"generator {generator!r} is conditioned on {model.conditioning}")
    return fit_embedder(aligned, frame_dir, model, output, frame=frame, alphas=alphas)


def _conditions(model, aligned, embedder, semantic, blurry) -> torch.Tensor:
    """The per-clip conditioning the generator takes, in the blurry store's clip order."""
    if model.conditioning == "image_embeds":
        from pipeline.generation.embedder import load_embedder
        from pipeline.reconstructors.data import load_split

        if embedder is None:
            raise ValueError("this generator needs the fitted keyframe embedder")
        test = load_split(aligned, "test")
        if test.segment.tolist() != blurry["segment"][:].tolist():
            raise DataError(f"{aligned} and the blurry videos list different test clips; rerun")
        return load_embedder(embedder)(test.fmri)
    if semantic is None:
        raise ValueError("this generator needs the Semantic Reconstructor's embeddings")
    store = open_store(semantic, stage="predict_semantic")
    same_clips(store, blurry, (str(semantic), "blurry.zarr"))
    return torch.from_numpy(store["prior_embeds"][:].astype(np.float32))


def generate_keyframes(
    blurry: str | os.PathLike,
    generation_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    settings: dict,
    aligned: str | os.PathLike | None = None,
    embedder: str | os.PathLike | None = None,
    semantic: str | os.PathLike | None = None,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int = 8,
) -> None:
    """One keyframe per test clip, started from the first blurry frame (β guidance).

    Store: ``keyframes`` (sample, y, x, channel) uint8, ``segment``, ``clip``, ``key``.

    Parameters
    ----------
    blurry : str or PathLike
        The ``predict_perception`` store: ``frames`` uint8 (n_clips, n_frames, h, w, 3).
    generation_dir : str or PathLike
        The generation models; the generator's role directory is read.
    output : str or PathLike
        The keyframe store (written atomically).
    settings : dict
        The ``keyframes`` configuration: ``generator``, ``steps``, ``guidance_scale``,
        ``strength`` (ϑ of the img2img start, in [0, 1]), ``noise_level``, ``seed``.
    aligned : str or PathLike, optional
        The aligned store; needed with ``embedder``.
    embedder : str or PathLike, optional
        The fitted keyframe embedder; needed by ``image_embeds`` generators.
    semantic : str or PathLike, optional
        The ``predict_semantic`` store (``prior_embeds``); needed by ``prior_tokens``
        generators.
    device : torch.device
        Where the generator runs.
    dtype : torch.dtype
        Its precision.
    batch_size : int
        Clips per call.

    Raises
    ------
    ValueError
        When the generator's conditioning input is not given.
    DataError
        When the inputs list different test clips.
    """
    name = settings["generator"]
    model = load_generator(name, _generator_dir(generation_dir, name), device, dtype)
    source = open_store(blurry, stage="predict_perception")
    condition = _conditions(model, aligned, embedder, semantic, source)
    segments, clips = source["segment"][:].tolist(), source["clip"][:]
    keys = clip_keys(segments, clips)
    run = KeyframeSettings(
        steps=settings["steps"],
        guidance_scale=settings["guidance_scale"],
        strength=settings["strength"],
        noise_level=settings["noise_level"],
        seed=settings["seed"],
    )
    n, size = len(keys), model.size
    params = {"generator": name} | {k: v for k, v in vars(run).items()}
    inputs = [str(p) for p in (blurry, generation_dir, embedder, semantic) if p is not None]
    with atomic_output(output) as tmp:
        store = zarr.open_group(tmp, mode="w")
        create_array(store, "segment", data=np.array(segments, dtype=str), dims=["sample"])
        create_array(store, "clip", data=clips.astype(np.int32), dims=["sample"])
        create_array(store, "key", data=np.array(keys, dtype=np.int64), dims=["sample"])
        images = create_array(
            store,
            "keyframes",
            shape=(n, size, size, 3),
            dtype=np.uint8,
            dims=["sample", "y", "x", "channel"],
            chunks=(1, size, size, 3),
            compression="fast",
        )
        for s in tqdm(batch_slices(n, batch_size), desc="keyframes", unit="batch"):
            first = source["frames"][s, 0]  # first frame of each blurry video only
            images[s] = model.generate(condition[s], first, keys[s], run)
        store.attrs["generator"] = name
        store.attrs["provenance"] = provenance("generate_keyframes", params, inputs)


@torch.no_grad()
def caption_keyframes(
    keyframes: str | os.PathLike,
    captioner: str | os.PathLike,
    output: str | os.PathLike,
    *,
    generation: dict,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int = 32,
) -> None:
    """BLIP-2 caption of every generated keyframe (γ guidance): ``captions`` (sample,) str.

    Parameters
    ----------
    keyframes : str or PathLike
        The ``generate_keyframes`` store.
    captioner : str or PathLike
        The BLIP-2 model directory.
    output : str or PathLike
        The caption store (written atomically).
    generation : dict
        Keyword arguments of the captioner's ``generate`` (e.g. ``max_new_tokens``).
    device : torch.device
        Where the captioner runs.
    dtype : torch.dtype
        Its precision.
    batch_size : int
        Images per call.
    """
    from pipeline.caches import caption_inputs, generate_captions
    from pipeline.models.loading import load_captioner

    processor, model = load_captioner(captioner, device, dtype)
    source = open_store(keyframes, stage="generate_keyframes")
    n = source["keyframes"].shape[0]
    captions: list[str] = []
    for s in tqdm(batch_slices(n, batch_size), desc="keyframe captions", unit="batch"):
        inputs = caption_inputs(processor, source["keyframes"][s], device, dtype)
        captions += generate_captions(processor, model, inputs, generation)
    with atomic_output(output) as tmp:
        store = zarr.open_group(tmp, mode="w")
        create_array(store, "segment", data=source["segment"][:], dims=["sample"])
        create_array(store, "clip", data=source["clip"][:], dims=["sample"])
        create_array(store, "captions", data=np.array(captions, dtype=str), dims=["sample"])
        params = {"model": str(captioner), "dtype": str(dtype)} | generation
        store.attrs["provenance"] = provenance(
            "caption_keyframes", params, [str(keyframes), str(captioner)]
        )


def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int) -> None:
    """uint8 (f, h, w, 3) → an H.264 mp4 (yuv420p) through PyAV.

    Parameters
    ----------
    path : str or PathLike
        The file to write.
    frames : ndarray of shape (n_frames, h, w, 3), uint8
        RGB frames; h and w even (yuv420p).
    fps : int
        Frames per second.
    """
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def synthesize_videos(
    blurry: str | os.PathLike,
    keyframes: str | os.PathLike,
    captions: str | os.PathLike,
    generation_dir: str | os.PathLike,
    output: str | os.PathLike,
    *,
    settings: dict,
    device: torch.device,
    dtype: torch.dtype,
    batch_size: int = 4,
) -> None:
    """The final videos: one mp4 per test clip and ``frames.zarr`` with everything used.

    ``frames.zarr``: ``videos`` (sample, frame, y, x, channel) uint8, the
    ``keyframes``, ``captions`` and ``prompts`` used, ``segment``, ``clip``,
    ``key`` (seed source) and ``file`` (the mp4 of each clip).

    Parameters
    ----------
    blurry : str or PathLike
        The ``predict_perception`` store: ``frames`` uint8 (n_clips, n_frames, h, w, 3)
        (α guidance, eq. 5).
    keyframes : str or PathLike
        The ``generate_keyframes`` store (β guidance).
    captions : str or PathLike
        The ``caption_keyframes`` store (γ guidance).
    generation_dir : str or PathLike
        The video generation models (:meth:`VideoSynthesizer.from_generation_dir`).
    output : str or PathLike
        The output directory (written atomically).
    settings : dict
        The ``video`` configuration: the fields of :class:`VideoSettings`, ``fps`` and
        ``domain_adapter``.
    device : torch.device
        Where the models run.
    dtype : torch.dtype
        Their precision.
    batch_size : int
        Clips per call.

    Raises
    ------
    DataError
        When the three stores list different test clips.
    """
    from pipeline.generation.video import SynthesisTrace, VideoSettings, VideoSynthesizer

    started = time.perf_counter()
    sources = {
        "blurry": open_store(blurry, stage="predict_perception"),
        "keyframes": open_store(keyframes, stage="generate_keyframes"),
        "captions": open_store(captions, stage="caption_keyframes"),
    }
    same_clips(sources["blurry"], sources["keyframes"], ("blurry.zarr", str(keyframes)))
    same_clips(sources["keyframes"], sources["captions"], (str(keyframes), str(captions)))
    run = VideoSettings(**{k: settings[k] for k in VideoSettings.__dataclass_fields__})
    synthesizer = VideoSynthesizer.from_generation_dir(
        generation_dir, device, dtype, domain_adapter=settings["domain_adapter"]
    )
    loaded = time.perf_counter()
    segments = sources["blurry"]["segment"][:].tolist()
    clips = sources["blurry"]["clip"][:]
    keys = clip_keys(segments, clips)
    prompts = [str(c) for c in sources["captions"]["captions"][:]]
    n, f, size = len(keys), run.n_frames, run.size
    files = [video_name(s, c) + ".mp4" for s, c in zip(segments, clips, strict=True)]
    with atomic_output(output) as tmp:
        tmp.mkdir(parents=True)
        store = zarr.open_group(tmp / "frames.zarr", mode="w")
        create_array(store, "segment", data=np.array(segments, dtype=str), dims=["sample"])
        create_array(store, "clip", data=clips.astype(np.int32), dims=["sample"])
        create_array(store, "key", data=np.array(keys, dtype=np.int64), dims=["sample"])
        create_array(store, "file", data=np.array(files, dtype=str), dims=["sample"])
        create_array(store, "captions", data=np.array(prompts, dtype=str), dims=["sample"])
        full = [run.prompt(p) for p in prompts]
        create_array(store, "prompts", data=np.array(full, dtype=str), dims=["sample"])
        create_array(
            store,
            "keyframes",
            data=sources["keyframes"]["keyframes"][:],
            dims=["sample", "y", "x", "channel"],
        )
        videos = create_array(
            store,
            "videos",
            shape=(n, f, size, size, 3),
            dtype=np.uint8,
            dims=["sample", "frame", "y", "x", "channel"],
            chunks=(1, f, size, size, 3),
            compression="fast",
        )
        trace, synthesis_s, write_s = SynthesisTrace(), 0.0, 0.0
        for s in tqdm(batch_slices(n, batch_size), desc="videos", unit="batch"):
            begin = time.perf_counter()
            out = synthesizer.synthesize(
                sources["blurry"]["frames"][s],
                sources["keyframes"]["keyframes"][s],
                prompts[s],
                keys[s],
                run,
                trace,
            )
            middle = time.perf_counter()
            videos[s] = out
            for name, video in zip(files[s], out, strict=True):
                write_mp4(tmp / name, video, settings["fps"])
            synthesis_s += middle - begin
            write_s += time.perf_counter() - middle
        store.attrs["settings"] = json.loads(json.dumps(settings))
        store.attrs["timing"] = {
            "load_s": round(loaded - started, 3),
            "synthesize_s": round(synthesis_s, 3),
            "denoise_s": round(trace.denoise_seconds, 3),
            "write_s": round(write_s, 3),
            "total_s": round(time.perf_counter() - started, 3),
            "videos": n,
            "batch_size": batch_size,
            "device": str(device),
        }
        store.attrs["provenance"] = provenance(
            "synthesize_videos",
            settings,
            [str(blurry), str(keyframes), str(captions), str(generation_dir)],
        )
