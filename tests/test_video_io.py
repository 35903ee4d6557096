"""read_video returns every frame that a GIF or video holds, whoever wrote it and with
whatever frame delays; a file whose two frame counts disagree is an error naming it."""

import av
import imageio.v2 as imageio
import numpy as np
import pytest
from PIL import Image

from pipeline.io import read_video

SIZE = 64


def _frames(n, seed=0):
    """n distinct RGB frames drawn from 256 colours, so a GIF palette holds them exactly."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
    return palette[rng.integers(0, 256, (n, SIZE, SIZE))]


def _pillow_gif(path, frames, **options):
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, save_all=True, append_images=images[1:], **options)


#: how GIFs are written in the field: Pillow's save without and with frame delays, and
#: imageio.mimsave as MinD-Video's save_videos_grid calls it (duration=1000 * 1/fps ms,
#: src/MindVideo/utils/utils.py, jqin4749/MindVideo@5097206d) and with no duration
WRITERS = {
    "pillow, no duration": lambda p, f: _pillow_gif(p, f),
    "pillow, duration 0": lambda p, f: _pillow_gif(p, f, duration=0),
    "pillow, duration 333 ms": lambda p, f: _pillow_gif(p, f, duration=333, loop=0),
    "pillow, mixed durations": lambda p, f: _pillow_gif(p, f, duration=[0, 100, 20, 500, 0, 10]),
    "imageio.mimsave, 3 fps": lambda p, f: imageio.mimsave(p, list(f), duration=1000 * 1 / 3),
    "imageio.mimsave, 8 fps": lambda p, f: imageio.mimsave(p, list(f), duration=1000 * 1 / 8),
    "imageio.mimsave, no duration": lambda p, f: imageio.mimsave(p, list(f)),
}


@pytest.mark.parametrize("writer", WRITERS, ids=list(WRITERS))
def test_every_frame_of_a_gif_is_read_whatever_its_delays(tmp_path, writer):
    frames = _frames(6)
    WRITERS[writer](tmp_path / "clip.gif", frames)
    out = read_video(tmp_path / "clip.gif")
    assert out.dtype == np.uint8
    assert out.shape == (6, SIZE, SIZE, 3)
    assert np.array_equal(out, frames)


def test_a_single_frame_gif(tmp_path):
    frames = _frames(1)
    _pillow_gif(tmp_path / "one.gif", frames)
    assert np.array_equal(read_video(tmp_path / "one.gif"), frames)


def _rgb8_gif(path, indices, fps=3):
    """A GIF written by FFmpeg's encoder, which keeps identical consecutive frames; the
    frames arrive in its rgb8 format, so no dithering makes equal frames differ."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("gif", rate=fps)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "rgb8"
        for index in indices:
            frame = av.VideoFrame.from_ndarray(index, format="rgb8")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return np.stack(
        [av.VideoFrame.from_ndarray(i, format="rgb8").to_ndarray(format="rgb24") for i in indices]
    )


def test_identical_consecutive_frames_are_kept(tmp_path):
    rng = np.random.default_rng(1)
    a, b, c = rng.integers(0, 256, (3, SIZE, SIZE), dtype=np.uint8)
    expected = _rgb8_gif(tmp_path / "still.gif", [a, a, b, b, b, c])
    out = read_video(tmp_path / "still.gif")
    assert out.shape == (6, SIZE, SIZE, 3)
    assert np.array_equal(out, expected)
    assert np.array_equal(out[0], out[1]) and np.array_equal(out[2], out[4])
    assert not np.array_equal(out[1], out[2])


def test_pillow_merges_identical_consecutive_frames_when_it_writes(tmp_path):
    """Pillow's writer (and imageio's, through it) stores a repeated frame once, with the
    summed delay: the file holds 3 frames, and 3 are read."""
    a, b, c = _frames(3)
    _pillow_gif(tmp_path / "merged.gif", [a, a, b, b, b, c], duration=100)
    with Image.open(tmp_path / "merged.gif") as image:
        assert image.n_frames == 3
    assert np.array_equal(read_video(tmp_path / "merged.gif"), np.stack([a, b, c]))


def _mp4(path, frames):
    """A lossless H.264 file (4:4:4, qp 0) in an MP4 container, which declares its frames."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=3)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv444p"
        stream.options = {"qp": "0"}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())


def test_every_frame_of_a_video_is_read(tmp_path):
    frames = _frames(5)
    _mp4(tmp_path / "clip.mp4", frames)
    out = read_video(tmp_path / "clip.mp4")
    assert out.shape == (5, SIZE, SIZE, 3)
    assert np.abs(out.astype(int) - frames).mean() < 3  # YUV rounding back to RGB
