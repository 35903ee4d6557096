"""Frame extraction: the 3 FPS schedule, agreement with a direct decode, bad inputs."""

import json
from fractions import Fraction

import av
import numpy as np
import pytest

from pipeline.datasets.cc2017 import stimulus_path
from pipeline.errors import DataError
from pipeline.frames import extract_frames, frame_schedule, read_clips
from pipeline.stores import StoreError, open_store


def test_cc2017_schedule():
    schedule = frame_schedule(14400, Fraction(30), 2.0, 3)
    assert schedule.shape == (240, 6)
    np.testing.assert_array_equal(schedule[0], [0, 10, 20, 30, 40, 50])
    np.testing.assert_array_equal(schedule[239], 14340 + np.arange(0, 60, 10))


@pytest.mark.parametrize("fps", [4, 7])
def test_fps_that_does_not_divide_the_source_rate(fps):
    with pytest.raises(DataError, match="does not divide"):
        frame_schedule(14400, Fraction(30), 2.0, fps, "x.mp4")


def test_frames_equal_a_direct_decode(demo_root, tmp_path):
    video = stimulus_path(demo_root, "seg1")
    extract_frames(video, tmp_path / "f.zarr", clip_s=2.0, fps=3, size=32)
    store = open_store(tmp_path / "f.zarr", stage="extract_frames")
    frames = store["frames"][:]
    with av.open(str(video)) as container:
        decoded = [
            f.reformat(width=32, height=32, format="rgb24", interpolation="AREA").to_ndarray()
            for f in container.decode(video=0)
        ]
    assert frames.shape == (len(decoded) // 60, 6, 32, 32, 3)
    for clip in (0, frames.shape[0] - 1):
        for k in range(6):
            np.testing.assert_array_equal(frames[clip, k], decoded[clip * 60 + k * 10])
    assert store["frames"].metadata.dimension_names == ("clip", "frame", "y", "x", "channel")
    assert store.attrs["provenance"]["params"] == {"clip_s": 2.0, "fps": 3, "size": 32}


def test_read_clips_stacks_the_stores_in_their_order_and_checks_them(demo_root, tmp_path):
    """What the tiny fits read: every clip, store after store in the order given; a store
    changed after it was written is refused, as every stage refuses its inputs."""
    paths = [tmp_path / f"{segment}.zarr" for segment in ("seg2", "seg1")]
    for path in paths:
        video = stimulus_path(demo_root, path.stem)
        extract_frames(video, path, clip_s=2.0, fps=3, size=16)
    parts = [open_store(p)["frames"][:] for p in paths]
    assert not np.array_equal(parts[0][:1], parts[1][:1])  # the order can show
    np.testing.assert_array_equal(read_clips(paths), np.concatenate(parts))

    metadata = paths[1] / "zarr.json"
    document = json.loads(metadata.read_text())
    document["attributes"]["provenance"]["params"]["size"] = 32
    metadata.write_text(json.dumps(document))
    with pytest.raises(StoreError, match="seg1.zarr"):
        read_clips(paths)
