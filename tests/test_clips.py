"""Clips longer than a TR: a 2-s clip at TR 1 s spans two volumes, combined by their mean or
side by side; frames, preprocessing and alignment agree on the clips."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.alignment import align_subject, combine_volumes
from pipeline.config import validate_config
from pipeline.datasets import discover
from pipeline.demo import DemoSettings, generate_demo
from pipeline.errors import ConfigError
from pipeline.frames import extract_frames
from pipeline.preprocess import preprocess_subject
from pipeline.selection import select_vertices
from pipeline.stores import open_store
from tests.conftest import small_config


def test_combine_volumes_averages_or_concatenates_each_clips_volumes(rng):
    data = rng.standard_normal((3, 8, 5)).astype(np.float32)  # (rep, volume, vertex)
    mean = combine_volumes(data, 2, "mean")
    np.testing.assert_allclose(mean, (data[:, 0::2] + data[:, 1::2]) / 2, rtol=1e-6)
    concat = combine_volumes(data, 2, "concat")
    assert concat.shape == (3, 4, 10)
    np.testing.assert_array_equal(concat[:, :, :5], data[:, 0::2])
    np.testing.assert_array_equal(concat[:, :, 5:], data[:, 1::2])
    assert combine_volumes(data, 1, "mean") is data
    with pytest.raises(ValueError, match="whole clips"):
        combine_volumes(data[:, :7], 2, "mean")


def test_a_clip_must_be_a_whole_number_of_trs():
    with pytest.raises(ConfigError, match=r"alignment\.clip_s.*whole number of TRs"):
        validate_config({"dataset": {"tr_s": 2.0}, "alignment": {"clip_s": 3.0}})
    config = validate_config({"dataset": {"tr_s": 1.0}, "alignment": {"clip_s": 2.0}})
    assert config["alignment"]["clip_s"] == 2.0


@pytest.fixture(scope="module")
def tr1_workspace(tmp_path_factory):
    """A demo at TR 1 s, preprocessed for 2-s clips and selected."""
    config = small_config(
        dataset={"tr_s": 1.0},
        demo={
            "n_train_segments": 6,
            "segment_duration_s": 20,
            "test_repetitions": 2,
            "snr": [3.0, 6.0],
        },
    )
    root = tmp_path_factory.mktemp("tr1")
    generate_demo(DemoSettings.from_config(config), root / "raw")
    dataset = discover(config["dataset"], root / "raw")
    preprocess_subject(
        dataset.plan("subject1"),
        root / "pre.zarr",
        subject="subject1",
        tr_s=1.0,
        clip_s=2.0,
        trailing_volumes=4,
        max_leading_volumes=3,
        detrend_order=4,
    )
    select_vertices(
        root / "pre.zarr", root / "sel.zarr", train_segments=dataset.train_segments, alpha=0.05
    )
    return root, dataset


@pytest.mark.parametrize("combine", ["mean", "concat"])
def test_two_volumes_per_clip_at_tr_1s(tr1_workspace, combine):
    root, dataset = tr1_workspace
    out = root / f"al_{combine}.zarr"
    align_subject(
        root / "pre.zarr",
        root / "sel.zarr",
        out,
        train_segments=dataset.train_segments,
        test_segments=dataset.test_segments,
        shift_s=4.0,
        tr_s=1.0,
        clip_s=2.0,
        combine=combine,
    )
    pre = open_store(root / "pre.zarr")
    runs = pre["runs/seg1"]
    assert runs.attrs["n_clips"] == 10 and runs.shape[1] == 10 * 2 + 4
    aligned = open_store(out)
    mask = open_store(root / "sel.zarr")["mask"][:]
    n_selected = int(mask.sum())
    train = aligned["train/fmri"][:]
    width = n_selected * (2 if combine == "concat" else 1)
    assert train.shape == (6 * 2 * 10, width)
    assert aligned.attrs["volumes_per_clip"] == 2 and aligned.attrs["combine"] == combine
    # clip 3 of seg1, repetition 1: volumes 6 and 7 after onset, moved 4 volumes later
    volumes = runs[0, 4 + 6 : 4 + 8][:, mask]
    sample = train[(aligned["train/segment"][:] == "seg1") & (aligned["train/clip"][:] == 3)][0]
    expected = volumes.mean(0) if combine == "mean" else volumes.reshape(-1)
    np.testing.assert_allclose(sample, expected, rtol=1e-6, atol=1e-7)


def test_frames_cut_the_same_clips_as_the_fmri(tr1_workspace, tmp_path):
    root, dataset = tr1_workspace
    extract_frames(
        dataset.stimulus("seg1"),
        tmp_path / "seg1.zarr",
        clip_s=2.0,
        fps=3,
        size=16,
        window=dataset.segments["seg1"].to_dict(),
    )
    frames = open_store(tmp_path / "seg1.zarr")
    assert frames["frames"].shape[:2] == (10, 6)
    np.testing.assert_array_equal(frames["source_frame"][:][1], 60 + np.arange(6) * 10)
    assert frames.attrs["clip_s"] == 2.0
    assert open_store(root / "pre.zarr")["runs/seg1"].attrs["n_clips"] == 10
