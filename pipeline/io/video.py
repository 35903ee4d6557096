"""Reading videos and GIFs as uint8 frame arrays, every frame that the file holds.

GIFs are decoded by Pillow, frame by frame (``ImageSequence``), whatever
their frame delays. FFmpeg's GIF decoding, through PyAV, depends on the
delays, on the file and on the FFmpeg build: PyAV 18.1 returns 1 frame of a
6-frame 64 × 64 GIF written by Pillow with no ``duration`` or ``duration=0``
(or by ``imageio.mimsave`` with no duration), and all 6 with ``duration=333``
(measured here with the locked PyAV 18.1.0).
The peers read their GIFs through Pillow too: MinD-Video's
``scripts/run_metrics.py`` (jqin4749/MindVideo@5097206d) calls
``imageio.v3.imread(path, index=None)`` (imageio 2.28.1, its ``env.yaml``),
whose GIF plugin is Pillow's.

Every file is also counted by a second parser: a GIF's frames by PyAV's
demuxer, a video's decoded frames against the frame count that its container
declares. A disagreement is an error that names the file, never a silently
shorter clip.

Pillow's GIF writer (and so ``imageio.mimsave``) merges identical consecutive
frames into one frame with the sum of their delays
(``GifImagePlugin._write_multiple_frames``), so such a GIF holds fewer frames
than the video it was written from; that is what the file holds, and what is
read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pipeline.errors import DataError

__all__ = ["VIDEO_SUFFIXES", "read_video"]

VIDEO_SUFFIXES = (".gif", ".mp4", ".webm", ".avi", ".mov")


def read_video(path: str | os.PathLike) -> np.ndarray:
    """Every frame that a GIF or video file holds.

    Parameters
    ----------
    path : path
        A ``.gif`` (decoded by Pillow) or a video that FFmpeg reads (PyAV).

    Returns
    -------
    ndarray of shape (frames, height, width, 3), uint8 RGB

    Raises
    ------
    DataError
        The file is unreadable, holds no frames, or its two frame counts
        (decoded and counted by the container) disagree.
    """
    path = Path(path)
    if path.suffix.lower() == ".gif":
        frames = _read_gif(path)
        counted, by = _container_frames(path), "PyAV's GIF demuxer counts"
    else:
        frames, counted = _read_with_pyav(path)
        by = "its container declares"
    if not frames:
        raise DataError(f"{path}: no frames")
    if counted and counted != len(frames):
        raise DataError(
            f"{path}: {len(frames)} frames decoded but {by} {counted}; the file is "
            "damaged or the decoder drops frames, so it cannot be scored frame-exactly"
        )
    return np.stack(frames)


def _read_gif(path: Path) -> list[np.ndarray]:
    """The GIF's frames as Pillow composites them (disposal and transparency applied)."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        image = Image.open(path)
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"{path}: not a readable GIF ({exc})") from exc
    with image:
        if image.format != "GIF":
            raise DataError(f"{path}: named .gif but holds {image.format} image data")
        try:
            return [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]
        except (OSError, EOFError, ValueError) as exc:
            raise DataError(f"{path}: GIF frame unreadable ({exc})") from exc


def _container_frames(path: Path) -> int:
    """The number of frames that PyAV's demuxer counts in the file (0 where unknown)."""
    import av

    try:
        with av.open(str(path)) as container:
            return int(container.streams.video[0].frames)
    except (av.error.FFmpegError, IndexError) as exc:
        raise DataError(f"{path}: not a readable video or GIF ({exc})") from exc


def _read_with_pyav(path: Path) -> tuple[list[np.ndarray], int]:
    """Decoded frames and the frame count that the container declares (0 where unknown)."""
    import av

    try:
        with av.open(str(path)) as container:
            declared = int(container.streams.video[0].frames)
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except (av.error.FFmpegError, IndexError) as exc:
        raise DataError(f"{path}: not a readable video or GIF ({exc})") from exc
    return frames, declared
