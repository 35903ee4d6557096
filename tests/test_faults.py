"""Fault injection: what a user sees when a file, a store, a run or the machine fails.

One test (or parametrized case) per fault, grouped as the table "When something goes wrong"
(docs/reliability.md) lists them with the message the user gets: raw input, the machine (a
full disk and a read-only folder are real file systems mounted for the test, a 64 KiB tmpfs
and a read-only bind mount, which needs root; file permissions would not do, since root
writes through them), failed runs, stores, the command line, and warnings.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
import zarr
from nibabel import cifti2
from PIL import Image

from pipeline import stores
from pipeline.cli import main as cli_main
from pipeline.config import validate_config
from pipeline.datasets.cc2017 import discover_dataset, run_path, stimulus_path
from pipeline.demo import DemoSettings, generate_demo
from pipeline.errors import ConfigError, DataError
from pipeline.evaluation.report import qc_section
from pipeline.frames import check_frame_rate, extract_frames
from pipeline.io import read_video
from pipeline.io import video as video_io
from pipeline.io.cifti import read_cortex_bold
from pipeline.io.stimulus import read_stimulus_info
from pipeline.preprocess import preprocess_subject
from pipeline.selection import select_vertices
from pipeline.stores import atomic_output, create_array, open_store, provenance
from pipeline.workflow import check_writable
from tests.conftest import REPO, SMALL_OVERLAY, planned_jobs, snakemake, snakemake_command
from tests.test_cc2017 import _preprocess as _preprocess_demo
from tests.test_video_io import _frames, _mp4, _pillow_gif

# -- raw input ---------------------------------------------------------------------------

#: A tiny demo: 200 vertices, runs of 30 clips + 4 trailing volumes (enough volumes for a
#: data block of random bytes to drop many vertices).
TINY_DEMO = DemoSettings(
    tr_s=2.0,
    seed=3,
    n_subjects=2,
    n_train_segments=3,
    n_test_segments=2,
    segment_duration_s=60,
    train_repetitions=2,
    test_repetitions=2,
    frame_size=32,
    luminance_grid=4,
    cortex_vertices=(100, 100),
    subcortical_voxels=8,
)
REPS = {"train_repetitions": 2, "test_repetitions": 2}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """The undamaged tiny demo, written once per module."""
    root = tmp_path_factory.mktemp("tiny") / "cc2017"
    generate_demo(TINY_DEMO, root)
    return root


@pytest.fixture
def raw(tiny_root, tmp_path) -> Path:
    """A private copy of the tiny demo that a test damages."""
    target = tmp_path / "cc2017"
    shutil.copytree(tiny_root / "video_fmri_dataset", target / "video_fmri_dataset")
    return target


def _preprocess(root: Path, out: Path, subject: str = "subject1", **kwargs) -> None:
    dataset = discover_dataset(root, **REPS)
    preprocess_subject(
        dataset.plan(subject),
        out,
        subject=subject,
        tr_s=2.0,
        trailing_volumes=4,
        max_leading_volumes=3,
        detrend_order=4,
        **kwargs,
    )


def _rewrite_run(path: Path, data=None, step: float | None = None) -> None:
    """Write the CIFTI ``path`` again with another data block and/or time step."""
    img = nib.load(path, mmap=False)
    data = np.asarray(img.dataobj) if data is None else data
    series = img.header.get_axis(0)
    series = cifti2.SeriesAxis(0.0, series.step if step is None else step, data.shape[0], "SECOND")
    cifti2.Cifti2Image(data, header=(series, img.header.get_axis(1))).to_filename(path)


def _workdir(tmp_path: Path) -> Path:
    (tmp_path / "work").mkdir()
    return tmp_path / "work"


def _dag_overlay(root: Path, **sections) -> dict:
    """Config overlay for a dry run on ``root`` as a real (not demo) dataset."""
    overlay = {"dataset": {"root": str(root), **REPS}}
    for key, values in sections.items():
        overlay.setdefault(key, {}).update(values)
    return overlay


# -- control ---------------------------------------------------------------------------


def test_undamaged_demo_passes_discovery_and_preprocessing(raw, tmp_path, caplog):
    """The intact dataset: every segment found, preprocessed without a warning or a drop."""
    with caplog.at_level(logging.WARNING):
        dataset = discover_dataset(raw, **REPS)
        _preprocess(raw, tmp_path / "pre.zarr")
    assert dataset.subjects == ["subject1", "subject2"]
    assert dataset.segment_names == ["seg1", "seg2", "seg3", "test1", "test2"]
    assert dataset.warnings == [] and caplog.text == ""
    pre = open_store(tmp_path / "pre.zarr", stage="preprocess")
    assert pre["valid"][:].all()
    assert pre.attrs["provenance"]["params"]["max_dropped_fraction"] == 0.05
    assert check_frame_rate(stimulus_path(raw, "seg1"), 3, 2.0) == 30


# -- discovery -------------------------------------------------------------------------


def test_deleted_stimulus_is_an_error_naming_its_fmri(raw):
    """stimuli/seg2.mp4 deleted: an error naming seg2.mp4, the orphaned fMRI and the key."""
    stimulus_path(raw, "seg2").unlink()
    with pytest.raises(DataError) as error:
        discover_dataset(raw, **REPS)
    message = str(error.value)
    base = raw / "video_fmri_dataset"
    assert (
        f"fMRI without a stimulus: no {stimulus_path(raw, 'seg2')} for "
        f"{base / 'subject1' / 'fmri' / 'seg2'}, {base / 'subject2' / 'fmri' / 'seg2'}"
    ) in message
    assert "dataset.unmatched: drop" in message


def test_misnamed_stimulus_is_an_error_naming_the_file(raw):
    """test2.mp4 renamed test_2.mp4: an error naming test_2.mp4 and the fMRI of test2."""
    video = stimulus_path(raw, "test2")
    video.rename(video.with_name("test_2.mp4"))
    with pytest.raises(DataError) as error:
        discover_dataset(raw, **REPS)
    message = str(error.value)
    assert f"videos not named seg<k>.mp4 or test<k>.mp4: {video.with_name('test_2.mp4')}" in (
        message
    )
    assert str(raw / "video_fmri_dataset" / "subject1" / "fmri" / "test2") in message


def test_stimulus_without_fmri_is_an_error_naming_the_stimulus(raw):
    """An extra stimuli/seg4.mp4 with no runs: an error naming seg4.mp4, its folder and the key."""
    shutil.copy(stimulus_path(raw, "seg3"), stimulus_path(raw, "seg4"))
    with pytest.raises(DataError) as error:
        discover_dataset(raw, **REPS)
    message = str(error.value)
    for subject in ("subject1", "subject2"):
        assert f"{run_path(raw, subject, 'seg4', 1).parent}: no fMRI run of {subject}" in message
    assert f"for the stimulus {stimulus_path(raw, 'seg4')}" in message
    assert "dataset.unmatched: drop" in message


def test_fmri_missing_in_one_subject_is_an_error_naming_subject_and_key(raw):
    """subject2/fmri/test1 deleted: an error naming that folder and dataset.unmatched."""
    shutil.rmtree(run_path(raw, "subject2", "test1", 1).parent.parent)
    with pytest.raises(DataError) as error:
        discover_dataset(raw, **REPS)
    message = str(error.value)
    assert "dataset.unmatched: drop" in message
    assert f"{run_path(raw, 'subject2', 'test1', 1).parent}: no fMRI run of subject2" in message
    assert "of subject1" not in message


def test_unmatched_drop_leaves_the_segments_out_with_a_warning(raw, caplog):
    """dataset.unmatched: drop: seg2 (no stimulus) and test1 (not in subject2) left out, named."""
    stimulus_path(raw, "seg2").unlink()
    shutil.rmtree(run_path(raw, "subject2", "test1", 1).parent.parent)
    with caplog.at_level(logging.WARNING):
        dataset = discover_dataset(raw, unmatched="drop", **REPS)
    assert dataset.segment_names == ["seg1", "seg3", "test2"]
    assert "segments test1 left out for every subject" in caplog.text
    assert any("seg2" in w and "fMRI without a stimulus" in w for w in dataset.warnings)
    assert run_path(raw, "subject1", "seg2", 1) not in dataset.run_files("subject1")


def test_empty_subject_folder_is_an_error_naming_it_and_dataset_subjects(raw):
    """An empty subject3/: an error naming that folder and asking for dataset.subjects."""
    (raw / "video_fmri_dataset" / "subject3").mkdir()
    with pytest.raises(DataError) as error:
        discover_dataset(raw, **REPS)
    message = str(error.value)
    assert message.startswith(f"{raw / 'video_fmri_dataset' / 'subject3'}: no fMRI run")
    assert "list the subjects to process in dataset.subjects, e.g. [subject1, subject2]" in (
        message
    )
    assert discover_dataset(raw, subjects=["subject1", "subject2"], **REPS).subjects == [
        "subject1",
        "subject2",
    ]


def test_bids_subject_folders_are_found_and_accepted_by_the_config(raw):
    """sub-01 / sub-02 folders: discovered in natural order and valid in dataset.subjects."""
    base = raw / "video_fmri_dataset"
    (base / "subject1").rename(base / "sub-02")
    (base / "subject2").rename(base / "sub-10")
    assert discover_dataset(raw, **REPS).subjects == ["sub-02", "sub-10"]
    config = validate_config({"dataset": {"root": str(raw), "subjects": ["sub-10"]}})
    assert config["dataset"]["subjects"] == ["sub-10"]
    assert discover_dataset(raw, subjects=["sub-10"], **REPS).subjects == ["sub-10"]


# -- preprocessing ---------------------------------------------------------------------


def test_cifti_time_step_other_than_tr_is_an_error_naming_file_and_key(raw, tmp_path):
    """A run with a 0.72 s SeriesAxis step (dataset.tr_s 2 s): an error naming both and the key."""
    path = run_path(raw, "subject1", "seg3", 2)
    _rewrite_run(path, step=0.72)
    with pytest.raises(DataError) as error:
        _preprocess(raw, tmp_path / "pre.zarr")
    message = str(error.value)
    assert message.startswith(f"{path}: the CIFTI time axis step is 0.72 s")
    assert "dataset.tr_s is 2 s" in message and "preprocess.accept_tr_mismatch: true" in message
    assert list(tmp_path.glob("*pre.zarr*")) == []


def test_accepted_tr_mismatch_only_warns(raw, tmp_path, caplog):
    """preprocess.accept_tr_mismatch: true: the 0.72 s run is used, with a warning naming it."""
    path = run_path(raw, "subject1", "seg3", 2)
    _rewrite_run(path, step=0.72)
    with caplog.at_level(logging.WARNING):
        _preprocess(raw, tmp_path / "pre.zarr", accept_tr_mismatch=True)
    assert f"{path}: the CIFTI time axis step is 0.72 s" in caplog.text
    assert (tmp_path / "pre.zarr").is_dir()


def test_random_cifti_data_block_is_an_error_naming_file_share_and_key(raw, tmp_path):
    """A data block of random bytes: many vertices non-finite; an error naming the share and key."""
    path = run_path(raw, "subject2", "test1", 2)
    shape = nib.load(path).shape
    noise = np.random.default_rng(0).integers(0, 2**32, shape, dtype=np.uint32)
    _rewrite_run(path, data=noise.view(np.float32))
    with pytest.raises(DataError) as error:
        _preprocess(raw, tmp_path / "pre.zarr", subject="subject2")
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert "cortical vertices (" in message and "%) are non-finite or constant" in message
    assert "more than preprocess.max_dropped_fraction = 0.05" in message
    assert list(tmp_path.glob("*pre.zarr*")) == []


def test_dropped_vertices_under_max_dropped_fraction_only_warn(raw, tmp_path, caplog):
    """20 of 200 vertices NaN: an error at the default 0.05, a warning at 0.2."""
    path = run_path(raw, "subject1", "seg1", 1)
    data = np.asarray(nib.load(path, mmap=False).dataobj).copy()
    data[:, 10:30] = np.nan
    _rewrite_run(path, data=data)
    with pytest.raises(DataError, match=r"20 of 200 cortical vertices \(10\.0%\)"):
        _preprocess(raw, tmp_path / "pre.zarr")
    with caplog.at_level(logging.WARNING):
        _preprocess(raw, tmp_path / "pre.zarr", max_dropped_fraction=0.2)
    assert f"{path}: 20 vertices dropped (20 all-NaN" in caplog.text
    assert open_store(tmp_path / "pre.zarr")["valid"][:].sum() == 180


def test_preprocess_command_passes_the_new_keys(raw, tmp_path, capsys):
    """`pipeline preprocess`: --max-dropped-fraction and --accept-tr-mismatch reach the stage."""
    path = run_path(raw, "subject1", "seg1", 1)
    _rewrite_run(path, step=0.72)
    dataset = discover_dataset(raw, **REPS)
    argv = [
        "preprocess",
        "--subject",
        "subject1",
        "--plan",
        json.dumps(dataset.plan("subject1")),
        "--output",
        str(tmp_path / "pre.zarr"),
        "--tr-s",
        "2.0",
        "--trailing-volumes",
        "4",
        "--max-leading-volumes",
        "3",
        "--detrend-order",
        "4",
    ]
    assert cli_main(argv) == 1
    assert "preprocess.accept_tr_mismatch" in capsys.readouterr().err
    argv += ["--accept-tr-mismatch", "True", "--max-dropped-fraction", "0.5"]
    assert cli_main(argv) == 0
    params = open_store(tmp_path / "pre.zarr").attrs["provenance"]["params"]
    assert params["accept_tr_mismatch"] is True and params["max_dropped_fraction"] == 0.5


# -- frame rate ------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [4, 7])
def test_fps_that_does_not_divide_the_stimulus_rate_names_the_key_and_file(raw, fps):
    """frames.fps 4 or 7 with 30 FPS stimuli: a ConfigError naming frames.fps, the file, choices."""
    video = stimulus_path(raw, "seg1")
    with pytest.raises(ConfigError) as error:
        check_frame_rate(video, fps, 2.0)
    message = str(error.value)
    assert message.startswith(f"config key 'frames.fps': {fps} frames/s does not divide")
    assert f"frame rate 30 of the stimulus {video}" in message
    assert "choose one of [1, 2, 3, 5, 6, 10, 15, 30]" in message


def test_fps_7_config_error_names_frames_fps():
    """frames.fps: 7 on real data: the 'neurons' frame-sampling error also names frames.fps."""
    with pytest.raises(ConfigError, match=r"frames\.fps = 7\b.*lower frames\.fps"):
        validate_config({"dataset": {"root": "/data/cc2017"}, "frames": {"fps": 7}})


def test_dag_stops_on_fps_that_does_not_divide_the_stimulus_rate(raw, tmp_path):
    """`snakemake -n` with frames.fps 4 on 30 FPS stimuli stops at DAG time naming key and file."""
    result = snakemake(
        _workdir(tmp_path), "-n", overlay=_dag_overlay(raw, frames={"fps": 4}), check=False
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "config key 'frames.fps': 4 frames/s does not divide the frame rate 30" in output
    assert "seg1.mp4" in output


def test_dag_stops_on_a_deleted_stimulus_unless_unmatched_drop(raw, tmp_path):
    """`snakemake -n` without seg2.mp4: a DAG-time error; with dataset.unmatched: drop, a plan."""
    stimulus_path(raw, "seg2").unlink()
    workdir = _workdir(tmp_path)
    result = snakemake(workdir, "-n", overlay=_dag_overlay(raw), check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "fMRI without a stimulus" in output
    result = snakemake(workdir, "-n", overlay=_dag_overlay(raw, dataset={"unmatched": "drop"}))
    output = result.stdout + result.stderr
    assert "segments seg2 left out" not in output  # an orphan fMRI drops no stimulus
    assert "dataset: dataset.unmatched: drop: fMRI without a stimulus" in output
    assert "results/frames/seg2.zarr" not in output and "results/frames/seg3.zarr" in output


# -- damaged raw files: CIFTI runs, stimuli, evaluated GIFs -----------------------------


def test_missing_segment_runs_are_an_error_naming_the_folder(dataset_copy):
    for rep in (1, 2):
        run_path(dataset_copy, "subject1", "seg2", rep).unlink()
    with pytest.raises(DataError, match=r"seg2/cifti: no fMRI run of subject1 for segment seg2"):
        discover_dataset(dataset_copy)


def test_missing_run_file_is_an_error_and_leaves_no_store(dataset_copy, tmp_path):
    dataset = discover_dataset(dataset_copy, test_repetitions=3)
    files = dataset.run_files("subject1")
    files[0].unlink()
    with pytest.raises(DataError, match=rf"{files[0].name}: fMRI run file not found"):
        preprocess_subject(
            dataset.plan("subject1"),
            tmp_path / "pre.zarr",
            subject="subject1",
            tr_s=2.0,
            trailing_volumes=4,
            max_leading_volumes=3,
            detrend_order=4,
        )
    assert list(tmp_path.glob("*pre.zarr*")) == []


def test_lengths_that_disagree_leave_no_store(dataset_copy, tmp_path):
    path = run_path(dataset_copy, "subject1", "seg3", 2)
    img = nib.load(path, mmap=False)
    short = cifti2.Cifti2Image(
        np.asarray(img.dataobj)[:-6],
        header=(cifti2.SeriesAxis(0, 2.0, img.shape[0] - 6, unit="SECOND"), img.header.get_axis(1)),
    )
    short.to_filename(path)
    with pytest.raises(DataError, match=r"seg3_2_Atlas\.dtseries\.nii: .*lengths disagree"):
        _preprocess_demo(dataset_copy, tmp_path / "pre.zarr")
    assert list(tmp_path.glob("*pre.zarr*")) == []


def test_nan_only_vertices_are_dropped_with_a_warning(dataset_copy, tmp_path, caplog):
    path = run_path(dataset_copy, "subject1", "seg1", 1)
    img = nib.load(path, mmap=False)
    data = np.asarray(img.dataobj).copy()
    data[:, [3, 700]] = np.nan
    cifti2.Cifti2Image(data, header=img.header).to_filename(path)
    with caplog.at_level(logging.WARNING):
        _preprocess_demo(dataset_copy, tmp_path / "pre.zarr")
    assert "seg1_1_Atlas.dtseries.nii: 2 vertices dropped (2 all-NaN" in caplog.text
    pre = open_store(tmp_path / "pre.zarr")
    assert not pre["valid"][3] and not pre["valid"][700] and pre["valid"][:].sum() == 1198
    result = select_vertices(
        tmp_path / "pre.zarr",
        tmp_path / "sel.zarr",
        train_segments=[f"seg{k}" for k in range(1, 9)],
        alpha=0.05,
    )
    assert not result["mask"][[3, 700]].any() and np.isnan(result["p"][[3, 700]]).all()


def test_truncated_stimulus_is_a_clear_error(dataset_copy):
    video = stimulus_path(dataset_copy, "test1")
    video.write_bytes(video.read_bytes()[:5000])
    with pytest.raises(DataError, match=r"test1\.mp4: cannot open .*truncated"):
        read_stimulus_info(video)


def test_not_a_cifti_file(tmp_path):
    bad = tmp_path / "seg1_1_Atlas.dtseries.nii"
    bad.write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match=r"seg1_1_Atlas\.dtseries\.nii: cannot read as CIFTI-2"):
        read_cortex_bold(bad)


def test_error_in_a_worker_is_reported_and_leaves_no_store(dataset_copy, tmp_path):
    run_path(dataset_copy, "subject1", "seg4", 1).write_bytes(b"\0" * 1000)
    with pytest.raises(DataError, match=r"seg4_1_Atlas\.dtseries\.nii: cannot read as CIFTI-2"):
        _preprocess_demo(dataset_copy, tmp_path / "pre.zarr", threads=2)
    assert list(tmp_path.glob("*pre.zarr*")) == []


def test_truncated_mp4_is_a_clear_error_and_leaves_no_store(dataset_copy, tmp_path):
    video = stimulus_path(dataset_copy, "seg1")
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"seg1\.mp4.*truncated"):
        extract_frames(video, tmp_path / "out" / "f.zarr", clip_s=2.0, fps=3, size=32)
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_gif_whose_demuxer_counts_other_frames_is_an_error(tmp_path, monkeypatch):
    _pillow_gif(tmp_path / "clip.gif", _frames(4), duration=333)
    assert read_video(tmp_path / "clip.gif").shape[0] == 4
    monkeypatch.setattr(video_io, "_container_frames", lambda path: 7)
    with pytest.raises(DataError, match=r"clip\.gif: 4 frames decoded but PyAV's GIF .* 7"):
        read_video(tmp_path / "clip.gif")


def test_a_video_that_decodes_fewer_frames_than_declared_is_an_error(tmp_path, monkeypatch):
    _mp4(tmp_path / "clip.mp4", _frames(4))
    read = video_io._read_with_pyav
    assert read(tmp_path / "clip.mp4")[1] == 4  # the container declares its frames
    monkeypatch.setattr(video_io, "_read_with_pyav", lambda path: (read(path)[0][:-1], 4))
    with pytest.raises(DataError, match=r"clip\.mp4: 3 frames decoded but its container .* 4"):
        read_video(tmp_path / "clip.mp4")


@pytest.mark.parametrize("content", [b"", b"GIF89a\x00", b"\x89PNG\r\n\x1a\n"])
def test_unreadable_gifs_are_named(tmp_path, content):
    (tmp_path / "bad.gif").write_bytes(content)
    with pytest.raises(DataError, match="bad.gif"):
        read_video(tmp_path / "bad.gif")


def test_a_png_named_gif_is_refused(tmp_path):
    Image.fromarray(_frames(1)[0]).save(tmp_path / "still.gif", format="PNG")
    with pytest.raises(DataError, match="still.gif: named .gif but holds PNG"):
        read_video(tmp_path / "still.gif")


# -- the machine: a full disk, a read-only folder --------------------------------------

STIMULUS = "resources/demo/video_fmri_dataset/stimuli/seg1.mp4"


@contextmanager
def mounted(target: Path, *args: str):
    """``mount *args target`` for the duration; skip where mounting is not permitted."""
    target.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a test file system here: {result.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", str(target)], check=True)


@contextmanager
def read_only(target: Path):
    """``target`` as a read-only bind mount of an empty folder."""
    source = target.with_name(target.name + "-source")
    source.mkdir(parents=True)
    with mounted(target, "--bind", str(source)):
        subprocess.run(["mount", "-o", "remount,ro,bind", str(target)], check=True)
        yield target


def _extract_frames(workspace: Path, output: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline", "frames", "--video", str(workspace / STIMULUS)]
    cmd += ["--output", str(output), "--clip-s", "2", "--fps", "3", "--size", "64"]
    return subprocess.run(cmd, capture_output=True, text=True)


def test_a_full_disk_names_the_output_and_leaves_nothing(workspace, tmp_path):
    with mounted(tmp_path / "full", "-t", "tmpfs", "-o", "size=64k", "tmpfs") as full:
        result = _extract_frames(workspace, full / "seg1.zarr")
        assert list(full.iterdir()) == []
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot write {full / 'seg1.zarr'}: no space left on the device; nothing was "
        "left there. Free space or make the folder writable, then rerun."
    ]
    assert "Traceback" not in result.stderr


def test_a_read_only_results_folder_stops_the_run_before_any_job(workspace, tmp_path):
    """Through Snakemake, which would otherwise fail removing old outputs with a traceback."""
    workdir = tmp_path / "work"
    # the raw files with their times, so that the demo counts as made
    shutil.copytree(workspace / "resources/demo", workdir / "resources/demo")
    with read_only(workdir / "results/frames") as frames:
        result = snakemake(workdir, "results/frames/seg1.zarr", check=False)
        assert list(frames.iterdir()) == []
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert (
        "cannot write to results/frames: the file system is read-only. The stages write "
        "their outputs there; make it writable, then rerun." in text
    )
    assert "Traceback" not in text
    assert not (workdir / "logs/extract_frames").exists()  # no job started
    # a dry run only reads: it still plans
    assert "extract_frames" in snakemake(workdir, "-n", "results/frames/seg1.zarr").stdout


def test_a_dry_run_over_read_only_stores_plans_or_names_the_store(fmri_copy):
    """Stores on a read-only mount: a dry run plans while none of them has to be remade;
    when one has to, Snakemake names it (it could not delete it)."""
    results = fmri_copy / "results"
    source = fmri_copy / "results-source"
    results.rename(source)
    with mounted(results, "--bind", str(source)):
        subprocess.run(["mount", "-o", "remount,ro,bind", str(results)], check=True)
        assert planned_jobs(fmri_copy, None, ALIGNED) == {}
        overlay = {"alignment": {"shift_s": 6.0}}
        result = snakemake(fmri_copy, "-n", ALIGNED, overlay=overlay, check=False)
    text = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Write-protected output files for rule align" in text and ALIGNED in text


def test_a_writable_workdir_passes_the_check(tmp_path):
    (tmp_path / "results/a.zarr/c").mkdir(parents=True)
    check_writable([str(tmp_path / "results"), str(tmp_path / "logs")])  # logs: not yet made


# -- interrupted and concurrent runs ----------------------------------------------------


def test_real_dataset_with_a_missing_segment_fails_at_dag_time(dataset_copy, tmp_path):
    shutil.rmtree(run_path(dataset_copy, "subject1", "seg2", 1).parent.parent)
    overlay = {"dataset": {"root": str(dataset_copy)}}
    result = snakemake(tmp_path, "-n", overlay=overlay, check=False)
    assert result.returncode != 0
    assert "no fMRI run of subject1 for segment seg2" in result.stdout + result.stderr


def test_killed_cache_stage_is_not_taken_as_complete(workspace):
    """kill -9 of Snakemake and its job mid-stage: nothing passes for complete; the rerun ends
    with the store of the uninterrupted run."""
    cache = workspace / "results/cache"
    target = "results/cache/vae_latents.zarr"
    before = open_store(cache / "vae_latents.zarr")["latents"][:]
    cmd = snakemake_command(workspace, target, "--forcerun", "cache_vae")
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while not list(cache.glob(".vae_latents.zarr.tmp-*")):
        assert proc.poll() is None and time.monotonic() < deadline, "stage never started"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (cache / "vae_latents.zarr").exists()
    snakemake(workspace, "--unlock")
    assert planned_jobs(workspace).get("cache_vae") == 1
    snakemake(workspace, target)
    assert not list(cache.glob(".vae_latents.zarr.tmp-*"))  # the orphan was cleaned up
    assert np.array_equal(open_store(cache / "vae_latents.zarr")["latents"][:], before)
    # the same bytes as before: what was made from them stays valid, mark it so
    snakemake(workspace, "--touch")
    assert planned_jobs(workspace) == {}


def test_a_second_run_on_the_same_workdir_is_refused_by_the_lock(workspace):
    """Two runs on one workdir: while the first holds Snakemake's lock the second stops with
    Snakemake's message, touching nothing; the first completes."""
    target = "results/report/index.html"
    first = subprocess.Popen(
        snakemake_command(workspace, target, "--forcerun", "report"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    locks = workspace / ".snakemake/locks"
    deadline = time.monotonic() + 120
    while not (locks.is_dir() and any(locks.iterdir())):
        assert first.poll() is None and time.monotonic() < deadline, "the first run never locked"
        time.sleep(0.02)
    second = snakemake(workspace, target, "--forcerun", "report", check=False)
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-2000:]
    output = second.stdout + second.stderr
    assert second.returncode != 0
    assert "Directory cannot be locked" in output
    assert "rule report:" not in output  # no job started
    assert planned_jobs(workspace) == {}


# -- stale results after a failed run ----------------------------------------------------

CIFTI = "resources/demo/video_fmri_dataset/subject1/fmri/seg4/cifti/seg4_1_Atlas.dtseries.nii"
ALIGNED = "results/subject1/aligned.zarr"
FMRI_JOBS = {"preprocess": 1, "select_voxels": 1, "align": 1}


@pytest.fixture(scope="module")
def fmri_run(early_stores, tmp_path_factory) -> Path:
    """A workdir where the small demo ran up to the aligned fMRI (no models), from the
    end-to-end run's demo dataset (copied with its file times, so it is not remade)."""
    workdir = tmp_path_factory.mktemp("fmri_run")
    shutil.copytree(early_stores / "resources/demo", workdir / "resources/demo")
    snakemake(workdir, ALIGNED)
    return workdir


@pytest.fixture
def fmri_copy(fmri_run, tmp_path) -> Path:
    """A private copy of :func:`fmri_run` (file times and Snakemake's records kept)."""
    target = tmp_path / "work"
    shutil.copytree(fmri_run, target, symlinks=True)
    return target


def _kill_when_running(pattern: str, stop: threading.Event) -> None:
    """kill -9 the first process whose command line starts with ``pattern``, as the
    out-of-memory killer would (Snakemake itself survives)."""
    while not stop.is_set():
        found = subprocess.run(["pgrep", "-f", f"^{pattern}"], capture_output=True, text=True)
        if found.stdout.split():
            subprocess.run(["pkill", "-9", "-f", f"^{pattern}"])
            return
        time.sleep(0.01)


def test_a_failed_rerun_after_an_input_change_is_rerun(fmri_copy):
    """A file damaged after a run: its stage fails, and the next run tries it again
    instead of saying "Nothing to be done" over the stale selection and alignment."""
    cifti = fmri_copy / CIFTI
    cifti.write_bytes(cifti.read_bytes()[:1000])
    result = snakemake(fmri_copy, ALIGNED, check=False)
    assert result.returncode != 0
    assert f"error: {CIFTI}" in result.stdout + result.stderr  # the failed log, shown
    assert planned_jobs(fmri_copy, None, ALIGNED) == FMRI_JOBS


def test_a_killed_job_after_a_config_change_is_rerun(fmri_copy):
    """A config change whose job is killed (kill -9, Snakemake survives): the next run
    still makes the change instead of taking the old results for the new settings."""
    overlay = {"preprocess": {"detrend_order": 3}}
    stop = threading.Event()
    killer = threading.Thread(
        target=_kill_when_running, args=("python -m pipeline preprocess", stop)
    )
    killer.start()
    try:
        result = snakemake(fmri_copy, ALIGNED, overlay=overlay, check=False)
    finally:
        stop.set()
        killer.join()
    assert result.returncode != 0, "the preprocess job was not killed"
    assert planned_jobs(fmri_copy, overlay, ALIGNED) == FMRI_JOBS
    assert planned_jobs(fmri_copy, None, ALIGNED) == FMRI_JOBS  # and back: also remade


# -- stores checked on open and by `verify` ----------------------------------------------


def _pipeline(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipeline", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)


def _errors(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def _verify(workdir: Path, overlay: dict | None = None) -> subprocess.CompletedProcess:
    """``pipeline verify`` under the small demo's config (and ``overlay``)."""
    config = workdir / "verify.yaml"
    merged = {k: dict(v) for k, v in SMALL_OVERLAY.items()}
    for key, value in (overlay or {}).items():
        merged.setdefault(key, {}).update(value)
    config.write_text(yaml.safe_dump(merged))
    return _pipeline(workdir, "verify", "--configfile", str(config))


def _chunk(store: Path, array: str) -> Path:
    return sorted(p for p in (store / array / "c").rglob("*") if p.is_file())[0]


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _set_attribute(store: Path, key: str, value) -> None:
    metadata = store / "zarr.json"
    document = json.loads(metadata.read_text())
    document["attributes"][key] = value
    metadata.write_text(json.dumps(document))


def _select(workdir: Path) -> subprocess.CompletedProcess:
    """The voxel selection stage on the copy's preprocessed store."""
    return _pipeline(
        workdir,
        "select",
        "--preprocessed",
        "results/subject1/preprocessed.zarr",
        "--output",
        "results/subject1/selection-again.zarr",
        "--train-segments",
        *[f"seg{i}" for i in range(1, 13)],
        "--settings",
        '{"method": "repetition_ttest", "alpha": 0.05, "alternative": "two-sided"}',
    )


def test_a_flipped_chunk_stops_the_reading_stage_naming_the_store(fmri_copy):
    """One byte changed in a chunk: the stage that reads it stops with the store and the
    chunk named (CRC-32C), and writes nothing."""
    store = fmri_copy / "results/subject1/preprocessed.zarr"
    _flip_byte(_chunk(store, "runs/seg1"))
    result = _select(fmri_copy)
    assert result.returncode == 1
    (error,) = _errors(result)
    assert error.startswith("error: results/subject1/preprocessed.zarr: chunk (")
    assert "of array 'runs/seg1' fails its checksum" in error
    assert not (fmri_copy / "results/subject1/selection-again.zarr").exists()


def test_a_deleted_chunk_stops_the_reading_stage_naming_the_store(fmri_copy):
    """A chunk file deleted (it would read back as zeros): the store is refused on open."""
    store = fmri_copy / "results/subject1/preprocessed.zarr"
    _chunk(store, "runs/seg1").unlink()
    result = _select(fmri_copy)
    assert result.returncode == 1
    (error,) = _errors(result)
    assert error.startswith("error: results/subject1/preprocessed.zarr: array 'runs/seg1' has ")
    assert "chunks were deleted after it was written" in error


def test_a_tampered_attribute_is_refused_naming_the_store(fmri_copy):
    """A store's attribute edited by hand (shift_s 4 → 6): refused on open."""
    _set_attribute(fmri_copy / ALIGNED, "shift_s", 6.0)
    result = _pipeline(fmri_copy, "inspect", ALIGNED)
    assert result.returncode == 1
    assert _errors(result) == [
        f"error: {ALIGNED}: its attributes or array definitions were changed after it was "
        "written (metadata digest differs); delete the store and rerun its stage"
    ]


def test_a_foreign_store_is_refused_by_its_consumer(fmri_copy):
    """Results made with shift_s 6, copied without .snakemake/ into a workdir whose config
    says 4: Snakemake does not remake them, the stage that reads them refuses them."""
    snakemake(fmri_copy, ALIGNED, overlay={"alignment": {"shift_s": 6.0}})
    shutil.rmtree(fmri_copy / ".snakemake")
    assert planned_jobs(fmri_copy, None, ALIGNED) == {}  # Snakemake takes it as it is
    code = (
        "import os, sys; from pathlib import Path; "
        "from pipeline.verify import load_rule_params; from pipeline.stores import open_store; "
        f"load_rule_params(Path({str(REPO / 'Snakefile')!r}), [Path('overlay.yaml')]); "
        f"open_store({ALIGNED!r})"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=fmri_copy
    )
    assert result.returncode == 1
    assert (
        f"pipeline.errors.StoreError: {ALIGNED} was made under other settings than the current "
        "config (alignment.shift_s = 6.0 there, 4.0 in the config)" in result.stderr
    )


def test_verify_passes_on_a_clean_workdir(fmri_copy):
    """Every store read back and checked: one `ok` line per store, exit status 0."""
    result = _verify(fmri_copy)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert sorted(lines) == sorted(
        f"ok      {p}"
        for p in (
            ALIGNED,
            "results/subject1/preprocessed.zarr",
            "results/subject1/selection.zarr",
            "resources/demo/ground_truth.zarr",
        )
    )


TAMPERINGS = {
    "attribute": (
        lambda w: _set_attribute(w / ALIGNED, "shift_s", 6.0),
        ALIGNED,
        "attributes or array definitions were changed",
    ),
    "flipped chunk": (
        lambda w: _flip_byte(_chunk(w / "results/subject1/selection.zarr", "t")),
        "results/subject1/selection.zarr",
        "of array 't' fails its checksum",
    ),
    "deleted chunk": (
        lambda w: _chunk(w / "results/subject1/selection.zarr", "t").unlink(),
        "results/subject1/selection.zarr",
        "chunks were deleted",
    ),
    "changed input": (
        lambda w: os.utime(w / CIFTI, (1e9, 1e9)),
        "results/subject1/preprocessed.zarr",
        f"its input {CIFTI} changed",
    ),
    "remade input": (
        lambda w: snakemake(w, "results/subject1/selection.zarr", "--forcerun", "select_voxels"),
        ALIGNED,
        "its input results/subject1/selection.zarr was remade after it",
    ),
}


@pytest.mark.parametrize("tampering", TAMPERINGS)
def test_verify_fails_on_a_tampered_workdir(fmri_copy, tampering):
    """Each kind of damage: a FAILED line naming the store and the problem, exit 1."""
    tamper, store, problem = TAMPERINGS[tampering]
    tamper(fmri_copy)
    result = _verify(fmri_copy)
    assert result.returncode == 1
    (failed,) = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert failed.startswith(f"FAILED  {store}: ") and problem in failed


def test_verify_fails_on_a_store_made_under_other_settings(fmri_copy):
    """The config says shift_s 6, the store was made with 4."""
    result = _verify(fmri_copy, {"alignment": {"shift_s": 6.0}})
    assert result.returncode == 1
    (failed,) = [line for line in result.stdout.splitlines() if line.startswith("FAILED")]
    assert failed.startswith(f"FAILED  {ALIGNED}: ")
    assert "alignment.shift_s = 4.0 there, 6.0 in the config" in failed


# -- the command line --------------------------------------------------------------------

#: a demo of two short training segments: its raw files take seconds to generate
CLI_DEMO = {
    "demo": {
        "n_train_segments": 2,
        "n_test_segments": 1,
        "segment_duration_s": 20,
        "test_repetitions": 2,
    }
}
CLI_CIFTI = "resources/demo/video_fmri_dataset/subject1/fmri/seg2/cifti/seg2_1_Atlas.dtseries.nii"
#: the files a user copies commands from
DOCUMENTS = [
    REPO / "README.md",
    *sorted((REPO / "docs").glob("*.md")),
    REPO / "Makefile",
    *sorted((REPO / "configs").glob("*.yaml")),
    *sorted((REPO / "profiles").glob("*/config.yaml")),
]
CONFIG_FILE = re.compile(r"\.(ya?ml|json)$")


def _store(path: Path) -> Path:
    """A small store as the stages write one: an array at the root, one in a subgroup."""
    with atomic_output(path) as tmp:
        group = zarr.open_group(tmp, mode="w")
        create_array(group, "values", data=np.zeros((3, 4), np.float32), dims=["clip", "vertex"])
        create_array(group, "sub/inner", data=np.arange(3), dims=["clip"])
        group.attrs["provenance"] = provenance("test", {"k": 1})
    return path


def _inspect(store: Path, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline", "inspect", str(store)]
    return subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, cwd=REPO, **popen)


def test_inspect_missing_store_is_an_error(tmp_path, capsys):
    assert cli_main(["inspect", str(tmp_path / "nope.zarr")]) == 1
    assert "nope.zarr: store does not exist" in capsys.readouterr().err


def test_inspect_broken_array_metadata(tmp_path):
    """A truncated array zarr.json: one `error:` line naming that file, exit status 1."""
    store = _store(tmp_path / "x.zarr")
    metadata = store / "values" / "zarr.json"
    metadata.write_text(metadata.read_text()[:20])
    proc = _inspect(store, stdout=subprocess.PIPE)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert errors[0].startswith(f"error: {metadata}: unreadable Zarr metadata ("), errors[0]
    assert "Traceback" not in stderr


def test_inspect_output_pipe_closed_early(tmp_path):
    """`pipeline inspect STORE | head -1`: the reader stops early, inspect stops quietly."""
    store = _store(tmp_path / "x.zarr")
    proc = _inspect(store, stdout=subprocess.PIPE)
    proc.stdout.close()  # before the interpreter has even started: every write meets EPIPE
    stderr = proc.stderr.read()
    proc.wait(timeout=120)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
    assert proc.returncode == 0, stderr


def test_a_failed_job_shows_its_log_on_the_console(tmp_path):
    """A job that fails on a truncated CLI_CIFTI file: its `error:` line is on the console."""
    demo = subprocess.run(
        snakemake_command(tmp_path, "resources/demo/ground_truth.zarr", overlay=CLI_DEMO),
        capture_output=True,
        text=True,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    with open(tmp_path / CLI_CIFTI, "r+b") as cifti:
        cifti.truncate(1000)
    cmd = snakemake_command(tmp_path, "results/subject1/preprocessed.zarr", overlay=CLI_DEMO)
    assert "--show-failed-logs" not in cmd
    result = subprocess.run(cmd, capture_output=True, text=True)
    console = result.stdout + result.stderr
    assert result.returncode != 0, console
    log = (tmp_path / "logs/preprocess/subject1.log").read_text()
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert errors and CLI_CIFTI in errors[0], log
    assert errors[0] in console.splitlines(), console


def _code(text: str) -> list[str]:
    """The commands of a Markdown text: fenced blocks line by line, continuations joined,
    and inline code spans, which may wrap across lines."""
    commands = []
    fences = re.compile(r"^\s*```[^\n]*\n(.*?)^\s*```", re.S | re.M)
    for block in fences.findall(text):
        commands += block.replace("\\\n", " ").splitlines()
    commands += re.findall(r"`([^`]+)`", fences.sub("", text))
    return commands


def _configfile_swallows(command: str) -> bool:
    """Whether a word after ``--configfile`` (up to the next option or ``--``) is not a
    config file: Snakemake reads a target written there as one more config file."""
    words = command.split("#", 1)[0].split()
    for i, word in enumerate(words):
        if word != "--configfile":
            continue
        for value in words[i + 1 :]:
            if value.startswith("-"):
                break
            if not CONFIG_FILE.search(value):
                return True
    return False


def test_no_documented_command_puts_a_target_after_configfile():
    """A documented `snakemake ... --configfile my.yaml TARGET` stops on a missing config file."""
    assert _configfile_swallows("snakemake --cores all --configfile my.yaml results/x")
    assert not _configfile_swallows("snakemake --cores all results/x --configfile a.yaml b.yml")
    assert not _configfile_swallows("snakemake --configfile a.yaml -- results/x")
    wrong = []
    for path in DOCUMENTS:
        text = path.read_text()
        commands = _code(text) if path.suffix == ".md" else text.splitlines()
        commands = [c.lstrip("#").strip() for c in commands if "snakemake" in c]
        name = path.relative_to(REPO)
        wrong += [f"{name}: {' '.join(c.split())}" for c in commands if _configfile_swallows(c)]
    assert wrong == [], "\n".join(wrong)


# -- warnings kept with the results ------------------------------------------------------


def test_a_stage_warning_is_recorded_in_its_store_and_the_report(tmp_path, monkeypatch):
    """What a stage warned about stays with its store and shows in the report's QC."""
    monkeypatch.setattr(stores, "WARNINGS", [])
    logger = logging.getLogger("pipeline.test")
    collector = stores.WarningCollector()
    logger.addHandler(collector)
    try:
        logger.warning("subject1 seg3 run 2: 12 vertices dropped (constant)")
        path = tmp_path / "results/subject1/x.zarr"
        with stores.atomic_output(path) as tmp:
            group = zarr.open_group(tmp, mode="w")
            stores.create_array(group, "a", data=np.arange(4), dims=["i"])
            group.attrs["provenance"] = stores.provenance("preprocess", {})
    finally:
        logger.removeHandler(collector)
    group = stores.open_store(path)
    assert group.attrs["warnings"] == ["subject1 seg3 run 2: 12 vertices dropped (constant)"]
    html = qc_section(tmp_path / "results", ["subject1", "subject2"])
    subject1, subject2 = html.split("<h3>")[1:3]
    assert "12 vertices dropped (constant)" in subject1 and "preprocess" in subject1
    assert "<summary>1 warning from 1 of 1 stores</summary>" in subject1
    assert "No stage warned (0 stores)" in subject2
