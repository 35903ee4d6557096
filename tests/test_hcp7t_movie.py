"""The HCP 7T movie layout: discovery from the release's files, its bad inputs, and the
pipeline on its demo (selection without repeated training runs, the test set kept apart).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import zarr
from nibabel import cifti2

from pipeline.alignment import combine_volumes
from pipeline.analysis import clip_features, lag_profile_from_stores
from pipeline.datasets import discover
from pipeline.datasets.hcp7t_movie import RUNS, TEST_SEGMENT, run_path, stimulus_path
from pipeline.demo import DemoSettings, _write_video, expected_dataset, generate_demo
from pipeline.errors import DataError
from pipeline.evaluation.evaluate import read_summary
from pipeline.frames import extract_frames
from pipeline.io import read_video
from pipeline.preprocess import preprocess_subject
from pipeline.selection import (
    corrected_p_values,
    encoding_scores,
    motion_energy,
    select_vertices,
)
from pipeline.stores import open_store
from tests.conftest import HCP_SUBJECT, small_config

#: A small HCP-layout demo for the readers' tests: 8 training clips of 40 s dealt over the
#: 4 movies, a 40-s test clip closing each, 12-s rest blocks, TR 1 s, 24 FPS
HCP_SECTIONS = {
    "dataset": {"format": "hcp7t_movie", "tr_s": 1.0},
    "alignment": {"clip_s": 2.0},
    "selection": {"method": "encoding"},
    "demo": {
        "fps": 24,
        "n_train_segments": 8,
        "segment_duration_s": 40,
        "rest_s": 12,
        "snr": [3.0, 6.0],
    },
}


def _config(**overrides):
    sections = {k: dict(v) for k, v in HCP_SECTIONS.items()}
    for key, value in overrides.items():
        sections.setdefault(key, {}).update(value)
    return small_config(**sections)


@pytest.fixture(scope="module")
def hcp_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hcp") / "release"
    generate_demo(DemoSettings.from_config(_config()), root)
    return root


@pytest.fixture
def hcp_copy(hcp_root, tmp_path) -> Path:
    target = tmp_path / "release"
    shutil.copytree(hcp_root, target)
    return target


def _discover(root, **dataset):
    return discover(_config(dataset=dataset)["dataset"], root)


def test_discovery_reads_the_clips_from_the_movies(hcp_root):
    """The clips found between the movies' still rest blocks are the ones the demo wrote."""
    found = _discover(hcp_root)
    expected = expected_dataset(DemoSettings.from_config(_config()), hcp_root)
    assert found.segments == expected.segments
    assert found.runs == expected.runs
    assert found.subjects == ["100001"]
    assert found.test_segments == [TEST_SEGMENT]
    assert found.repetitions("100001", TEST_SEGMENT) == [1, 2, 3, 4]
    assert len(found.train_segments) == 8
    assert found.segments["movie1_clip2"].start_s == 12 + 40 + 12


def test_a_missing_run_is_an_error_naming_the_file(hcp_copy, caplog):
    missing = run_path(hcp_copy, "100001", RUNS[2])
    missing.unlink()
    with pytest.raises(DataError, match=rf"100001: no {missing}"):
        _discover(hcp_copy)
    with pytest.raises(DataError, match="no subject has all four movie runs"):
        _discover(hcp_copy, unmatched="drop")


def test_a_renamed_subject_is_an_error_naming_the_folder(hcp_copy):
    (hcp_copy / "100001").rename(hcp_copy / "sub-100001")
    with pytest.raises(DataError, match=r"six-digit HCP id.*\['sub-100001'\]"):
        _discover(hcp_copy)
    with pytest.raises(DataError, match=r"subject folder\(s\) not found: 100001"):
        _discover(hcp_copy, subjects=["100001"])


def _rewrite_movie(movie: Path, edit) -> None:
    """Replace a demo movie by ``edit`` of its frames, at its rate and size."""
    frames = list(read_video(movie))
    fps = DemoSettings.from_config(_config()).fps
    _write_video(movie, edit(frames, fps), fps, frames[0].shape[0])


def test_a_movie_without_rest_blocks_is_an_error_naming_it(hcp_copy):
    movie = stimulus_path(hcp_copy / "Post_20140821_version", RUNS[1])
    # the clips alone, back to back
    _rewrite_movie(movie, lambda frames, fps: [f for f in frames if f.std() > 5])
    with pytest.raises(DataError, match=rf"{movie.name}: no rest block found"):
        _discover(hcp_copy)


def test_closing_clips_of_different_lengths_are_an_error(hcp_copy):
    """Only the same test clip in every run can be averaged as repetitions."""

    def shorten(frames, fps):  # 4 s off the closing clip, before the final 12-s rest
        return frames[: len(frames) - 16 * fps] + frames[-12 * fps :]

    movie = stimulus_path(hcp_copy / "Post_20140821_version", RUNS[3])
    _rewrite_movie(movie, shorten)
    with pytest.raises(DataError, match="closing clips of the movies differ in length"):
        _discover(hcp_copy)


def _rewrite(path: Path, change) -> None:
    img = nib.load(path, mmap=False)
    data = change(np.asarray(img.dataobj).copy())
    cifti2.Cifti2Image(data, header=img.header).to_filename(path)


def _preprocess(root: Path, out: Path) -> None:
    dataset = _discover(root)
    preprocess_subject(
        dataset.plan("100001"),
        out,
        subject="100001",
        tr_s=1.0,
        clip_s=2.0,
        trailing_volumes=4,
        max_leading_volumes=3,
        detrend_order=4,
    )


def test_a_run_shorter_than_its_movie_is_an_error_naming_it(hcp_copy, tmp_path):
    path = run_path(hcp_copy, "100001", RUNS[0])
    img = nib.load(path, mmap=False)
    data = np.asarray(img.dataobj)[:-20]
    series = cifti2.SeriesAxis(0.0, 1.0, data.shape[0], unit="SECOND")
    cifti2.Cifti2Image(data, header=(series, img.header.get_axis(1))).to_filename(path)
    with pytest.raises(DataError, match=rf"{path.name}: .*shorter than its stimulus"):
        _preprocess(hcp_copy, tmp_path / "pre.zarr")
    assert not (tmp_path / "pre.zarr").exists()


@pytest.fixture(scope="module")
def hcp_stages(hcp_root, tmp_path_factory) -> Path:
    """The demo preprocessed, its training clips' frames extracted and encoding-selected."""
    out = tmp_path_factory.mktemp("hcp_stages")
    dataset = _discover(hcp_root)
    _preprocess(hcp_root, out / "pre.zarr")
    for name in dataset.train_segments:
        segment = dataset.segments[name]
        extract_frames(
            segment.stimulus,
            out / f"frames/{name}.zarr",
            clip_s=2.0,
            fps=3,
            size=32,
            window=segment.to_dict(),
        )
    _select(out / "pre.zarr", out / "sel.zarr", out, dataset.train_segments)
    return out


def _select(pre: Path, output: Path, stages: Path, segments: list[str]) -> dict:
    return select_vertices(
        pre,
        output,
        train_segments=segments,
        alpha=0.05,
        method="encoding",
        frames=[stages / f"frames/{s}.zarr" for s in segments],
        shift_s=4.0,
        tr_s=1.0,
        permutations=200,
    )


def test_the_test_clips_bold_never_reaches_the_selection(hcp_root, hcp_stages, tmp_path):
    """Changing the test clip's BOLD in every run leaves the training data and the mask
    bit-identical; changing a training clip's BOLD the same way does not (the control)."""
    dataset = _discover(hcp_root)
    rng = np.random.default_rng(5)

    def scramble(segment: str) -> Path:
        root = tmp_path / segment
        shutil.copytree(hcp_root, root)
        for run in dataset.runs["100001"]:
            for p in run.presentations:
                if p.segment == segment:
                    first = round(p.onset_s)
                    n = round(dataset.segments[segment].duration_s) + 4

                    def change(data, first=first, n=n):
                        data[first : first + n] += rng.normal(0, 500, data[first : first + n].shape)
                        return data

                    _rewrite(root / run.path.relative_to(hcp_root), change)
        _preprocess(root, root / "pre.zarr")
        return root

    changed = scramble(TEST_SEGMENT)
    before, after = open_store(hcp_stages / "pre.zarr"), open_store(changed / "pre.zarr")
    for name in dataset.train_segments:
        np.testing.assert_array_equal(before[f"runs/{name}"][:], after[f"runs/{name}"][:])
    assert not np.array_equal(before[f"runs/{TEST_SEGMENT}"][:], after[f"runs/{TEST_SEGMENT}"][:])
    mask = _select(changed / "pre.zarr", changed / "sel.zarr", hcp_stages, dataset.train_segments)
    np.testing.assert_array_equal(mask["mask"], open_store(hcp_stages / "sel.zarr")["mask"][:])

    # the other training clip of the same run moves with it: its run's fit includes it
    control = open_store(scramble("movie2_clip1") / "pre.zarr")
    assert not np.array_equal(before["runs/movie2_clip2"][:], control["runs/movie2_clip2"][:])


# -- the whole workflow on the HCP-layout demo ------------------------------------------


def test_the_workflow_runs_to_the_videos_and_the_report(hcp_workspace):
    videos = open_store(hcp_workspace / f"results/{HCP_SUBJECT}/videos/frames.zarr")
    aligned = open_store(hcp_workspace / f"results/{HCP_SUBJECT}/aligned.zarr")
    assert videos["videos"].shape[0] == aligned["test/fmri"].shape[0] == 40  # 80 s of 2-s clips
    assert set(aligned["test/n_repetitions"][:]) == {4}
    assert aligned.attrs["volumes_per_clip"] == 2
    assert (hcp_workspace / "results/report/index.html").stat().st_size > 0


def test_encoding_selection_recovers_the_planted_vertices(hcp_workspace):
    selection = open_store(hcp_workspace / f"results/{HCP_SUBJECT}/selection.zarr")
    assert selection.attrs["method"] == "encoding"
    truth = zarr.open_group(hcp_workspace / "resources/demo/ground_truth.zarr", mode="r")
    mask, driven = selection["mask"][:], truth[f"{HCP_SUBJECT}/driven"][:]
    hit = (mask & driven).sum()
    assert hit / driven.sum() >= 0.9 and hit / mask.sum() >= 0.9


def test_shuffled_features_select_at_chance(hcp_workspace):
    """Control: each training clip's frame features in a random order."""
    pre = open_store(hcp_workspace / f"results/{HCP_SUBJECT}/preprocessed.zarr")
    valid = pre["valid"][:]
    segments = [s for s in pre.attrs["segments"] if s != TEST_SEGMENT]
    rng = np.random.default_rng(4)
    features, bold = [], []
    for segment in segments:
        clips = open_store(hcp_workspace / f"results/frames/{segment}.zarr")["frames"]
        x = np.hstack([clip_features(clips), motion_energy(clips)])
        features.append(x[rng.permutation(len(x))])
        runs = pre[f"runs/{segment}"]
        volumes = runs[:, 4 : 4 + 2 * runs.attrs["n_clips"]][..., valid].mean(0)
        bold.append(combine_volumes(volumes, 2, "mean"))
    _, p = encoding_scores(features, bold, n_folds=2, alpha=10.0, permutations=200, rng=rng)
    assert abs((p < 0.05).mean() - 0.05) < 0.03
    assert (corrected_p_values(p, "fdr") < 0.05).sum() <= 0.01 * valid.sum()


def test_the_lag_scan_peaks_at_the_planted_delay(hcp_workspace):
    results = hcp_workspace / f"results/{HCP_SUBJECT}"
    pre = open_store(results / "preprocessed.zarr")
    frames = {
        s: hcp_workspace / f"results/frames/{s}.zarr"
        for s in pre.attrs["segments"]
        if s != TEST_SEGMENT
    }
    lags = list(range(0, 9))
    scores = lag_profile_from_stores(
        results / "preprocessed.zarr", results / "selection.zarr", frames, lags
    )
    truth = zarr.open_group(hcp_workspace / "resources/demo/ground_truth.zarr", mode="r")
    assert lags[int(np.argmax(scores))] == round(truth.attrs["delay_s"] / truth.attrs["tr_s"])


def test_retrieval_beats_its_shuffled_control(hcp_workspace):
    """The test set is one continuous 80-s clip: neighbouring 2-s clips share a scene, so
    the shuffled pairing's hits sit above 1/40 (a deranged partner is often a neighbour);
    its bootstrap interval still reaches chance, and the real pairing lies above it."""
    summary = read_summary(hcp_workspace / f"results/{HCP_SUBJECT}/evaluation/retrieval")
    for metric, row in summary.items():
        assert row["chance"] == pytest.approx(1 / 40), metric
        assert row["mean"] > 3 * row["chance"], row
        assert row["mean"] > row["control_ci_high"], row
        assert row["control_ci_low"] <= row["chance"] + 1e-9, row
