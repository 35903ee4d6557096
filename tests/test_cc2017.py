"""The cc2017 reader: run lengths, brain models, missing repetitions and bad input."""

import logging
from fractions import Fraction
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from nibabel import cifti2

from pipeline.alignment import align_subject
from pipeline.datasets.base import Segment, onset_volume
from pipeline.datasets.cc2017 import discover_dataset, run_path
from pipeline.errors import DataError
from pipeline.io.cifti import read_cortex_bold
from pipeline.io.stimulus import StimulusInfo
from pipeline.preprocess import preprocess_subject
from pipeline.selection import select_vertices
from pipeline.stores import open_store

STIMULUS = StimulusInfo(Path("seg1.mp4"), Fraction(30), 14400, 64, 64)


def _leading(n_volumes: int) -> int:
    n_clips = Segment("seg1", "train", STIMULUS.path).n_clips(STIMULUS, 2.0)
    return onset_volume(
        n_volumes,
        n_clips,
        None,
        tr_s=2.0,
        clip_s=2.0,
        n_trailing=4,
        max_leading=3,
        run_file="run.nii",
        stimulus="seg1.mp4",
    )


@pytest.mark.parametrize(("n_volumes", "leading"), [(245, 1), (246, 2)])
def test_cc2017_run_lengths(n_volumes, leading):
    assert Segment("seg1", "train", STIMULUS.path).n_clips(STIMULUS, 2.0) == 240
    assert _leading(n_volumes) == leading


@pytest.mark.parametrize("n_volumes", [243, 250])
def test_fmri_and_stimulus_lengths_that_disagree(n_volumes):
    with pytest.raises(DataError, match=r"run\.nii: .*lengths disagree"):
        _leading(n_volumes)


def test_cortex_found_by_structure_not_position(tmp_path):
    mask = np.ones((2, 2, 2), bool)
    axis = (
        cifti2.BrainModelAxis.from_mask(mask, affine=np.eye(4), name="thalamus_left")
        + cifti2.BrainModelAxis.from_surface(np.arange(5), 10, "CortexLeft")
        + cifti2.BrainModelAxis.from_mask(mask, affine=np.eye(4), name="thalamus_right")
        + cifti2.BrainModelAxis.from_surface(np.arange(4), 10, "CortexRight")
    )
    data = np.arange(3 * axis.size, dtype=np.float32).reshape(3, axis.size)
    series = cifti2.SeriesAxis(0, 2.0, 3, unit="SECOND")
    path = tmp_path / "x.dtseries.nii"
    cifti2.Cifti2Image(data, header=(series, axis)).to_filename(path)
    bold, columns, tr = read_cortex_bold(path)
    np.testing.assert_array_equal(columns, [8, 9, 10, 11, 12, 21, 22, 23, 24])
    np.testing.assert_array_equal(bold, data[:, columns])
    assert tr == 2.0


def test_demo_runs_have_245_and_246_volumes(demo_root):
    lengths = {
        seg: nib.load(run_path(demo_root, "subject1", seg, 1)).shape[0]
        for seg in ("seg1", "test1", "test2")
    }
    assert lengths["seg1"] == lengths["test1"] == lengths["test2"] - 1


def test_discovery(demo_root):
    dataset = discover_dataset(demo_root, test_repetitions=3)
    assert dataset.subjects == ["subject1"]
    assert dataset.train_segments == [f"seg{k}" for k in range(1, 9)]
    assert dataset.test_segments == ["test1", "test2"]
    assert dataset.repetitions("subject1", "test2") == [1, 2, 3]
    assert dataset.warnings == []


def _preprocess(root, out, **kwargs):
    dataset = discover_dataset(root, test_repetitions=3)
    preprocess_subject(
        dataset.plan("subject1"),
        out,
        subject="subject1",
        tr_s=2.0,
        trailing_volumes=4,
        max_leading_volumes=3,
        detrend_order=4,
        **kwargs,
    )
    return dataset


def test_missing_repetition_warns_and_averages_the_rest(dataset_copy, tmp_path, caplog):
    run_path(dataset_copy, "subject1", "test2", 3).unlink()
    with caplog.at_level(logging.WARNING):
        dataset = discover_dataset(dataset_copy, test_repetitions=3)
    assert "subject1 test2: 2 of 3 repetitions present" in caplog.text
    _preprocess(dataset_copy, tmp_path / "pre.zarr")
    select_vertices(
        tmp_path / "pre.zarr",
        tmp_path / "sel.zarr",
        train_segments=dataset.train_segments,
        alpha=0.05,
    )
    align_subject(
        tmp_path / "pre.zarr",
        tmp_path / "sel.zarr",
        tmp_path / "al.zarr",
        train_segments=dataset.train_segments,
        test_segments=dataset.test_segments,
        shift_s=4.0,
        tr_s=2.0,
    )
    aligned = open_store(tmp_path / "al.zarr")
    segment, reps = aligned["test/segment"][:], aligned["test/n_repetitions"][:]
    assert set(reps[segment == "test2"]) == {2} and set(reps[segment == "test1"]) == {3}
    pre = open_store(tmp_path / "pre.zarr")
    mask = open_store(tmp_path / "sel.zarr")["mask"][:]
    expected = pre["runs/test2"][:, 2:12][..., mask].mean(0)
    np.testing.assert_allclose(aligned["test/fmri"][:][segment == "test2"], expected, rtol=1e-6)


def test_parallel_preprocessing_equals_serial(demo_root, tmp_path):
    dataset = discover_dataset(demo_root, test_repetitions=3)
    for threads in (1, 2):
        preprocess_subject(
            dataset.plan("subject1"),
            tmp_path / f"pre{threads}.zarr",
            subject="subject1",
            tr_s=2.0,
            trailing_volumes=4,
            max_leading_volumes=3,
            detrend_order=4,
            threads=threads,
        )
    serial, parallel = open_store(tmp_path / "pre1.zarr"), open_store(tmp_path / "pre2.zarr")
    for segment in dataset.segment_names:
        np.testing.assert_array_equal(serial[f"runs/{segment}"][:], parallel[f"runs/{segment}"][:])
        assert dict(serial[f"runs/{segment}"].attrs) == dict(parallel[f"runs/{segment}"].attrs)
    np.testing.assert_array_equal(serial["valid"][:], parallel["valid"][:])
