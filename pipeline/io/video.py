"""Reading videos and GIFs as uint8 frame arrays."""

from __future__ import annotations

import os

import numpy as np

from pipeline.errors import DataError

__all__ = ["VIDEO_SUFFIXES", "read_video"]

VIDEO_SUFFIXES = (".gif", ".mp4", ".webm", ".avi", ".mov")


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Every frame of a GIF or video file as uint8 (frames, h, w, 3), through PyAV."""
    import av

    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError) as exc:
        raise DataError(f"{path}: not a readable video or GIF ({exc})") from exc
    if not frames:
        raise DataError(f"{path}: no frames")
    return np.stack(frames)
