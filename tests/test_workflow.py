"""Snakemake end to end: outputs, staleness (only stale stages rerun), real-data mode."""

import subprocess
import sys

import numpy as np
import pytest

from pipeline.datasets.cc2017 import run_path
from pipeline.stores import open_store
from tests.conftest import FRAME_SIZE, SMALL_DEMO, planned_jobs, snakemake

N_TRAIN, N_TEST = SMALL_DEMO["n_train_segments"], SMALL_DEMO["n_test_segments"]
N_CLIPS = SMALL_DEMO["segment_duration_s"] // 2
CACHES = ("cache_vae", "cache_clip_images", "cache_captions", "cache_clip_text")


def test_outputs_of_the_main_job(workspace):
    aligned = open_store(workspace / "results/subject1/aligned.zarr", stage="align")
    selection = open_store(workspace / "results/subject1/selection.zarr", stage="select_voxels")
    n_selected = int(selection["mask"][:].sum())
    assert aligned["train/fmri"].shape == (N_TRAIN * 2 * N_CLIPS, n_selected)
    assert aligned["test/fmri"].shape == (N_TEST * N_CLIPS, n_selected)
    assert aligned["train/fmri"].metadata.dimension_names == ("sample", "vertex")
    assert set(aligned["train/repetition"][:]) == {1, 2}
    assert set(aligned["test/n_repetitions"][:]) == {SMALL_DEMO["test_repetitions"]}
    prov = aligned.attrs["provenance"]
    assert prov["params"]["shift_s"] == 4.0 and prov["pipeline_version"] and prov["created"]
    frames = open_store(workspace / "results/frames/test2.zarr", stage="extract_frames")
    assert frames["frames"].shape == (N_CLIPS, 6, FRAME_SIZE, FRAME_SIZE, 3)
    assert frames["frames"].dtype == np.uint8


def test_complete_run_has_nothing_to_do(workspace):
    assert planned_jobs(workspace) == {}


N_ABLATIONS = 2  # evaluation.ablations: no_keyframe, no_blurry
#: the tables and the report follow any evaluation
TABLES = {"evaluation_tables": 1, "report": 1}
#: the evaluations of videos, fused and each ablation
EVALUATIONS = {"evaluate_videos": 2 + N_ABLATIONS, **TABLES}
VIDEO = {
    "synthesize_videos": 1,
    "fuse_videos": 1,
    "synthesize_ablation": N_ABLATIONS,
    **EVALUATIONS,
}
GEN = {"generate_keyframes": 1, "caption_keyframes": 1, **VIDEO}
FUSED = {"fuse_videos": 1, "evaluate_videos": 1, **TABLES}
FUSION = {"train_fusion": 1, **FUSED}
#: the interpretation reads both trained reconstructors
PR = {"train_perception": 1, "predict_perception": 1, "interpret": 1, **GEN}
SR = {"train_semantic": 1, "predict_semantic": 1, "evaluate_retrieval": 1, "interpret": 1, **TABLES}
EMB = {"fit_keyframe_embedder": 1, **GEN}


@pytest.mark.parametrize(
    ("overlay", "expected"),
    [
        ({"alignment": {"shift_s": 6.0}}, {"align": 1, **PR, **SR, **EMB, "all": 1}),
        (
            {"selection": {"alpha": 0.01}},
            {"select_voxels": 1, "align": 1, **PR, **SR, **EMB, "all": 1},
        ),
        (
            {"preprocess": {"detrend_order": 3}},
            {"preprocess": 1, "select_voxels": 1, "align": 1, **PR, **SR, **EMB, "all": 1},
        ),
        (
            {"frames": {"size": 40}},
            {
                "extract_frames": N_TRAIN + N_TEST,
                "tiny_models": 1,
                "tiny_generation_models": 1,
                "tiny_classifiers": 1,
                **dict.fromkeys(CACHES, 1),
                **FUSION,
                **PR,
                **SR,
                **EMB,
                "all": 1,
            },
        ),
        (
            {"captions": {"max_new_tokens": 12}},
            {
                "cache_captions": 1,
                "cache_clip_text": 1,
                **SR,
                "caption_keyframes": 1,
                **VIDEO,
                "all": 1,
            },
        ),
        (
            {"keyframes": {"candidates": [2]}},
            {
                "cache_clip_images": 1,
                "cache_captions": 1,
                "cache_clip_text": 1,
                **SR,
                **FUSION,
                "all": 1,
            },
        ),
        (
            {"models": {"preset": "paper"}},
            {
                "download_models": 1,
                "download_generation_models": 1,
                "download_classifiers": 1,
                **dict.fromkeys(CACHES, 1),
                **FUSION,
                **PR,
                **SR,
                "all": 1,
            },
        ),
        ({"models": {"batch_size": 7, "device": "cpu"}}, {}),
        # a PR hyperparameter: PR training and its descendants, not SR or the caches
        ({"perception": {"architecture": {"hidden": 128}}}, {**PR, "all": 1}),
        ({"semantic": {"reftm_weight": 0.5}}, {**SR, "all": 1}),
        # inference-only settings of the prior: prediction only
        (
            {"semantic": {"guidance": 2.0}},
            {"predict_semantic": 1, "evaluate_retrieval": 1, **TABLES, "all": 1},
        ),
        # generation: each setting reruns its stage and what follows, never training
        ({"keyframes": {"strength": 0.5}}, {**GEN, "all": 1}),
        ({"keyframes": {"embedder_alphas": [1.0, 10.0]}}, {**EMB, "all": 1}),
        ({"video": {"theta": 0.5}}, {**VIDEO, "all": 1}),
        # fusion: the classifier's training is shared by the subjects; the threshold and the
        # chain length are read only where the chains are made
        ({"fusion": {"threshold": 0.7}}, {**FUSED, "all": 1}),
        ({"fusion": {"epochs": 20}}, {**FUSION, "all": 1}),
        # the classifiers serve the fusion labels and the N-way metrics
        (
            {"models": {"tiny_classifier_steps": 50}},
            {"tiny_classifiers": 1, **FUSION, **EVALUATIONS, "all": 1},
        ),
        # evaluation: metric settings rerun the evaluations, never a video
        ({"evaluation": {"n_way": [2, 10]}}, {**EVALUATIONS, "all": 1}),
        ({"evaluation": {"retrieval_pool": 50}}, {"evaluate_retrieval": 1, **TABLES, "all": 1}),
        # fewer protocols: the evaluations of videos and fused again, retrieval included; the
        # ablations keep theirs (the main protocol), and no video is made again
        (
            {"evaluation": {"protocols": ["neuroclips", "mindvideo"]}},
            {"evaluate_videos": 2, **TABLES, "evaluate_retrieval": 1, "all": 1},
        ),
        (
            {"evaluation": {"ablation_protocols": ["neuroclips", "mindvideo"]}},
            {"evaluate_videos": N_ABLATIONS, **TABLES, "all": 1},
        ),
        ({"evaluation": {"report_clips": 2}}, {"report": 1, "all": 1}),
        ({"evaluation": {"ablations": {"no_keyframe": None}}}, {**TABLES, "all": 1}),
        (
            {"evaluation": {"ablations": {"no_caption": {"use_caption": False}}}},
            {"synthesize_ablation": 1, "evaluate_videos": 1, **TABLES, "all": 1},
        ),
        ({"evaluation": {"batch_size": 4}}, {}),
    ],
)
def test_changing_a_key_reruns_only_its_stage_and_descendants(
    workspace, rerun_table, overlay, expected
):
    assert planned_jobs(workspace, overlay) == expected
    # the generated table of docs/configuration.md says the same, where it has the keys
    keys = [f"{section}.{key}" for section, values in overlay.items() for key in values]
    if all(key in rerun_table for key in keys):
        assert set(expected) - {"all"} == {rule for key in keys for rule in rerun_table[key]}


def test_inspect_command_on_a_stage_output(workspace):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "inspect",
            str(workspace / "results/subject1/aligned.zarr"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "train/" in out and "dims=('sample', 'vertex')" in out and "stage=align" in out


@pytest.fixture
def real_root(dataset_copy, tmp_path):
    """A cc2017-layout copy used as a *real* dataset (not generated by the demo rule)."""
    return dataset_copy


def test_real_dataset_mode_plans_from_the_files(real_root, tmp_path):
    run_path(real_root, "subject1", "test2", 3).unlink()
    overlay = {"dataset": {"root": str(real_root), "test_repetitions": 3}}
    jobs = planned_jobs(tmp_path, overlay)
    assert "demo_dataset" not in jobs and jobs["preprocess"] == 1
    log = snakemake(tmp_path, "-n", overlay=overlay)
    assert "subject1 test2: 2 of 3 repetitions present" in log.stdout + log.stderr


def test_forcerun_and_until_rerun_one_stage_on_demand(workspace):
    """`--forcerun align` plans align and everything downstream of it; with `--until align`
    only align itself (the recipe of docs/configuration.md for rerunning one stage)."""
    downstream = {"align": 1, **PR, **SR, **EMB, "all": 1}
    assert planned_jobs(workspace, None, "--forcerun", "align") == downstream
    assert planned_jobs(workspace, None, "--forcerun", "align", "--until", "align") == {"align": 1}
