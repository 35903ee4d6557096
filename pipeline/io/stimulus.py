"""Stream properties of stimulus videos, read from the container without decoding."""

from __future__ import annotations

import os
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from pipeline.errors import DataError

__all__ = ["StimulusInfo", "read_stimulus_info"]


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
