"""Frame extraction: each segment's stimulus decoded once, ``fps`` frames per second kept.

Clip ``i`` of a segment starting ``start`` seconds into its video spans
``[start + i clip_s, start + (i + 1) clip_s)``; its frames are taken at
``start + i clip_s + k / fps`` for ``k = 0 .. clip_s fps - 1`` (cc2017, 2-s
clips at 3 FPS: source frames 0, 10, ..., 50 of every 60), converted to RGB
and resized by FFmpeg's swscale (area interpolation) to ``size`` x ``size``.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import zarr
from av.video.reformatter import VideoReformatter
from tqdm.auto import tqdm

from pipeline.datasets.base import clip_window
from pipeline.errors import ConfigError, DataError
from pipeline.io.stimulus import read_stimulus_info
from pipeline.stores import atomic_output, create_array, open_store, provenance

__all__ = ["check_frame_rate", "extract_frames", "frame_schedule", "read_clips", "valid_fps"]

log = logging.getLogger(__name__)

_BATCH = 16  # clips per write


def valid_fps(source_fps: Fraction, clip_s: float) -> list[int]:
    """Every ``frames.fps`` the frame schedule accepts for a stimulus at ``source_fps``.

    A kept frame is every ``source_fps / fps``-th source frame, so ``fps`` must
    divide the source rate, and a clip must hold a whole number of kept frames.

    Parameters
    ----------
    source_fps : Fraction
        Frame rate of the stimulus, frames per second.
    clip_s : float, seconds
        Clip length.

    Returns
    -------
    list of int
        Accepted rates in frames per second, ascending (empty when none is).
    """
    clip = Fraction(str(clip_s))
    return [
        fps
        for fps in range(1, int(source_fps) + 1)
        if (Fraction(source_fps) / fps).denominator == 1 and (clip * fps).denominator == 1
    ]


def check_frame_rate(video: str | os.PathLike, fps: int, clip_s: float) -> Fraction:
    """Check ``frames.fps`` against the frame rate of one stimulus (its header only).

    Cheap enough for DAG time: no frame is decoded and nothing heavier than
    PyAV is imported.

    Parameters
    ----------
    video : path
        One stimulus video.
    fps : int
        ``frames.fps``: kept frames per second.
    clip_s : float, seconds
        Clip length (``alignment.clip_s``).

    Returns
    -------
    Fraction
        The stimulus frame rate.

    Raises
    ------
    ConfigError
        If ``fps`` does not divide the stimulus rate (or a clip is not a whole
        number of frames at ``fps``), naming ``frames.fps``, the stimulus file
        and the rates that would work.
    DataError
        If the stimulus cannot be read.
    """
    source_fps = read_stimulus_info(video).fps
    choices = valid_fps(source_fps, clip_s)
    if fps not in choices:
        hint = (
            f"choose one of {choices}"
            if choices
            else "no whole frame rate does; re-encode the stimuli at a whole frame rate"
        )
        raise ConfigError(
            f"config key 'frames.fps': {fps} frames/s does not divide the frame rate "
            f"{float(source_fps):g} of the stimulus {video} (every source_fps / fps-th frame "
            f"is kept, a whole number of them per clip of {clip_s:g} s); {hint}"
        )
    return source_fps


def frame_schedule(
    n_source_frames: int,
    source_fps: Fraction,
    clip_s: float,
    fps: int,
    path: str | os.PathLike = "",
    window: dict | None = None,
) -> np.ndarray:
    """Source frame index of every kept frame.

    Parameters
    ----------
    n_source_frames : int
        Frames in the stimulus video.
    source_fps : Fraction
        Stimulus frame rate, frames per second.
    clip_s : float, seconds
        Clip length.
    fps : int
        Kept frames per second; must divide ``source_fps``.
    path : path, optional
        Named in error messages only.
    window : dict, optional
        The segment's ``name``, ``start_s``, ``duration_s`` and ``whole_clips``
        (:class:`pipeline.datasets.Segment`); default the whole video, a whole
        number of clips.

    Returns
    -------
    ndarray of shape (n_clips, frames_per_clip), int64
        ``n_clips`` as :func:`pipeline.datasets.base.clip_window`,
        ``frames_per_clip = clip_s * fps``.

    Raises
    ------
    DataError
        If ``fps`` does not divide the source rate, a clip is not a whole number
        of frames, or the window does not fit the video.
    """
    step = Fraction(source_fps) / fps
    if step.denominator != 1:
        raise DataError(
            f"{path}: frames.fps = {fps} does not divide the stimulus frame rate "
            f"{float(source_fps):g}"
        )
    per_clip = Fraction(str(clip_s)) * fps
    if per_clip.denominator != 1:
        raise DataError(
            f"{path}: a clip of {clip_s} s is not a whole number of frames at {fps} FPS"
        )
    window = window or {}
    first, n_clips = clip_window(
        n_source_frames,
        source_fps,
        clip_s,
        start_s=window.get("start_s", 0.0),
        duration_s=window.get("duration_s"),
        whole_clips=window.get("whole_clips", True),
        path=path,
        name=window.get("name", ""),
    )
    source_per_clip = int(Fraction(str(clip_s)) * Fraction(source_fps))
    clip_start = first + np.arange(n_clips)[:, None] * source_per_clip
    return clip_start + np.arange(int(per_clip))[None, :] * int(step)


class _BatchWriter:
    """Convert decoded frames to RGB at the output size and write whole clips."""

    def __init__(self, frames: zarr.Array, size: int):
        self.frames = frames
        self.size = size
        # one reformatter for all frames keeps FFmpeg's scaler context (5x faster)
        self.reformatter = VideoReformatter()

    def __call__(self, first_clip: int, batch: list[av.VideoFrame]) -> None:
        per_clip = self.frames.shape[1]
        rgb = np.stack(
            [
                self.reformatter.reformat(
                    frame, width=self.size, height=self.size, format="rgb24", interpolation="AREA"
                ).to_ndarray()
                for frame in batch
            ]
        )
        n = len(batch) // per_clip
        self.frames[first_clip : first_clip + n] = rgb.reshape(n, per_clip, *rgb.shape[1:])


def extract_frames(
    video: str | os.PathLike,
    output: str | os.PathLike,
    *,
    clip_s: float,
    fps: int,
    size: int,
    threads: int = 1,
    window: dict | None = None,
) -> None:
    """Decode one segment of ``video`` and write its clips' frames to ``output`` (Zarr).

    Store layout::

        frames   (clip, frame, y, x, channel) uint8   RGB, chunked by clip
        source_frame (clip, frame) int64              index of the frame in the video

    Parameters
    ----------
    video : path
        The stimulus video holding the segment.
    output : path
        The ``extract_frames`` store to write (atomically).
    clip_s : float, seconds
        Clip length (``alignment.clip_s``).
    fps : int
        Kept frames per second (``frames_per_clip = clip_s * fps``).
    size : int
        Output frame side, pixels (frames are resized to ``size`` x ``size``).
    threads : int
        FFmpeg decoder threads.
    window : dict, optional
        Where the segment lies in ``video``: its ``name``, ``start_s``,
        ``duration_s`` and ``whole_clips`` (:meth:`pipeline.datasets.Segment.to_dict`);
        default the whole video, named after the file.

    Raises
    ------
    DataError
        If the video cannot be decoded or holds fewer frames than its
        container declares (a truncated file), or if ``fps`` does not divide its
        frame rate.
    """
    video = Path(video)
    window = dict(window or {})
    info = read_stimulus_info(video)
    schedule = frame_schedule(info.n_frames, info.fps, clip_s, fps, video, window)
    n_clips, per_clip = schedule.shape
    wanted = {int(idx): pos for pos, idx in enumerate(schedule.ravel())}
    first_wanted, last_wanted = int(schedule.min()), int(schedule.max())
    params = {"clip_s": clip_s, "fps": fps, "size": size}
    if window:
        params["window"] = window
    with atomic_output(output) as tmp:
        store = zarr.open_group(tmp, mode="w")
        frames = create_array(
            store,
            "frames",
            shape=(n_clips, per_clip, size, size, 3),
            dtype=np.uint8,
            dims=["clip", "frame", "y", "x", "channel"],
            chunks=(1, per_clip, size, size, 3),
            compression="fast",
        )
        # The decoder runs here; a background thread converts and writes each batch
        # of clips (swscale and Blosc release the GIL), so both cores are busy.
        writer = _BatchWriter(frames, size)
        batch: list = []
        filled = decoded = 0
        try:
            with av.open(str(video)) as container, ThreadPoolExecutor(max_workers=1) as pool:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                stream.codec_context.thread_count = threads
                # frame index = pts * time_base * fps, in integers
                rate = stream.time_base * info.fps
                num, den = rate.numerator, rate.denominator
                start_pts = None
                if first_wanted > 0:  # a segment inside a longer video: start at a keyframe
                    start_pts = stream.start_time or 0
                    container.seek(
                        start_pts + int(first_wanted / rate), backward=True, stream=stream
                    )
                pending = None
                progress = tqdm(total=n_clips, desc=f"frames {video.name}", unit="clip")
                for frame in container.decode(stream):
                    if start_pts is None:
                        start_pts = frame.pts or 0
                    index = (2 * (frame.pts - start_pts) * num + den) // (2 * den)
                    decoded += 1
                    pos = wanted.get(index)
                    if pos is not None:
                        batch.append(frame)
                        filled += 1
                        clip, k = divmod(pos, per_clip)
                        last_of_batch = clip % _BATCH == _BATCH - 1 or clip == n_clips - 1
                        if k == per_clip - 1 and last_of_batch:
                            if pending is not None:
                                pending.result()
                            first = clip - clip % _BATCH
                            pending = pool.submit(writer, first, batch)
                            batch = []
                            progress.update(clip + 1 - first)
                    if index >= last_wanted:
                        break
                if pending is not None:
                    pending.result()
                progress.close()
        except av.error.FFmpegError as exc:
            raise DataError(f"{video}: decoding failed after {decoded} frames ({exc})") from exc
        if filled != schedule.size:
            raise DataError(
                f"{video}: decoded {decoded} frames, but the container declares {info.n_frames} "
                f"and {n_clips} clips need frame {last_wanted}; the file is truncated or corrupt"
            )
        create_array(store, "source_frame", data=schedule, dims=["clip", "frame"])
        store.attrs.update(
            {
                "segment": window.get("name", video.stem),
                "source_fps": float(info.fps),
                "source_size": [info.width, info.height],
                "clip_s": clip_s,
                "fps": fps,
                "provenance": provenance("extract_frames", params, [str(video)]),
            }
        )


def read_clips(stores: list[str | os.PathLike]) -> np.ndarray:
    """Every clip of the ``extract_frames`` stores, store after store.

    Parameters
    ----------
    stores : list of path
        ``extract_frames`` stores (``results/frames/{segment}.zarr``), each checked as
        :func:`pipeline.stores.open_store` does.

    Returns
    -------
    ndarray of shape (n_clips, frames_per_clip, size, size, 3), uint8
        The RGB frames of all clips, in the order of ``stores``.
    """
    return np.concatenate([open_store(p, stage="extract_frames")["frames"][:] for p in stores])
