"""Stimulus videos: stream properties read from the container without decoding, and the
still stretches (rest blocks) found by decoding."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

__all__ = ["StimulusInfo", "read_stimulus_info", "still_blocks"]


@dataclass(frozen=True)
class StimulusInfo:
    """Stream properties of a stimulus video.

    Attributes
    ----------
    path : Path
    fps : Fraction
        Frame rate, frames per second.
    n_frames : int
    width, height : int
        Frame size, pixels.
    """

    path: Path
    fps: Fraction
    n_frames: int
    width: int
    height: int

    @property
    def duration_s(self) -> float:
        return float(self.n_frames / self.fps)


def read_stimulus_info(path: str | os.PathLike) -> StimulusInfo:
    """Read frame rate, frame count and size of a video from its container (no decoding).

    Parameters
    ----------
    path : path
        A video file that FFmpeg (PyAV) opens.

    Returns
    -------
    StimulusInfo
        ``fps`` (frames per second, exact fraction), ``n_frames``, and ``width`` and
        ``height`` in pixels.

    Raises
    ------
    DataError
        If the file is missing, is not a readable video (e.g. truncated) or
        declares no frame count or rate.
    """
    import av  # here: the Snakefile imports this module, and reads videos only with real data

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: stimulus video not found")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DataError(f"{path}: no video stream")
            stream = container.streams.video[0]
            fps = stream.average_rate
            n_frames = stream.frames
            if not n_frames and stream.duration is not None and fps:
                n_frames = round(stream.duration * stream.time_base * fps)
            width, height = stream.codec_context.width, stream.codec_context.height
    except av.error.FFmpegError as exc:
        raise DataError(
            f"{path}: cannot open the stimulus video ({exc}); the file may be truncated"
        ) from exc
    if not fps or not n_frames:
        raise DataError(f"{path}: the container declares no frame rate or frame count")
    return StimulusInfo(path, Fraction(fps), int(n_frames), width, height)


def still_blocks(
    path: str | os.PathLike, *, threshold: float, min_s: float, size: int = 32
) -> tuple[Fraction, int, list[tuple[int, int]]]:
    """The stretches of a video where the picture stays still: its rest blocks.

    Every frame is reduced to a ``size`` x ``size`` grey image; a frame is still
    when its mean absolute difference from the previous frame is below
    ``threshold`` (grey levels 0-1). A block is a run of still frames lasting at
    least ``min_s``, together with the frame that starts it.

    Parameters
    ----------
    path : path
        The video.
    threshold : float
        Largest mean absolute change of a still frame.
    min_s : float, seconds
        Shortest block.
    size : int
        Side of the grey images compared.

    Returns
    -------
    fps : Fraction
    n_frames : int
        Frames decoded.
    blocks : list of (int, int)
        ``[first, stop)`` frame ranges, in order.

    Raises
    ------
    DataError
        If the video cannot be decoded.
    """
    import av

    path = Path(path)
    changes = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            fps = Fraction(stream.average_rate)
            previous = None
            for frame in container.decode(stream):
                grey = frame.reformat(width=size, height=size, format="gray").to_ndarray()
                grey = grey.astype(np.float32) / 255.0
                changes.append(
                    np.inf if previous is None else float(np.abs(grey - previous).mean())
                )
                previous = grey
    except (av.error.FFmpegError, IndexError) as exc:
        raise DataError(f"{path}: cannot decode the movie ({exc})") from exc
    still = np.asarray(changes) < threshold
    blocks = []
    start = None
    for i, is_still in enumerate([*still, False]):
        if is_still and start is None:
            start = i
        elif not is_still and start is not None:
            first = start - 1 if start > 0 else 0  # the frame that starts the still picture
            if (i - first) / fps >= min_s:
                blocks.append((first, i))
            start = None
    return fps, len(changes), blocks
