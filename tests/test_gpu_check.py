"""The GPU check script (bench/gpu_check.py): its skip without CUDA, its code on the CPU with
small models of the same classes, and its FLOP estimates at paper size on the meta device."""

import json

import pytest
import torch

from bench import gpu_check

STAGES = [
    "cache_vae",
    "cache_clip_images",
    "cache_captions",
    "cache_clip_text",
    "train_perception",
    "train_semantic (align)",
    "train_semantic (prior)",
    "predict_semantic",
    "generate_keyframes",
    "caption_keyframes",
    "synthesize_videos (+ ablations, fusion)",
    "evaluate_videos",
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_without_cuda_it_says_why_and_succeeds(tmp_path, capsys):
    assert gpu_check.main(["--output", str(tmp_path)]) == 0
    assert "gpu-check skipped: no CUDA device" in capsys.readouterr().out
    assert "no CUDA device" in json.loads((tmp_path / "gpu_check.json").read_text())["skipped"]
    assert not (tmp_path / "gpu_check.md").exists()


def test_every_stage_runs_on_small_models(tmp_path):
    """--smoke: the same stage code (VideoSynthesizer included) on small configurations."""
    assert (
        gpu_check.main(["--smoke", "--clips", "1", "--steps", "1", "--output", str(tmp_path)]) == 0
    )
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    assert record["smoke"] and list(record["stages"]) == STAGES
    for name, stage in record["stages"].items():
        assert stage["seconds_per_unit"] > 0 and stage["units_per_subject"] > 0, name
    table = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {name} |" in table for name in STAGES)


def test_paper_size_flop_estimates(tmp_path):
    """--estimate counts every stage's FLOPs on the meta device, in the same rows."""
    assert gpu_check.main(["--estimate", "--output", str(tmp_path)]) == 0
    stages = json.loads((tmp_path / "gpu_estimate.json").read_text())["stages"]
    assert list(stages) == STAGES
    assert all(s["tflop_per_unit"] > 0 for s in stages.values())
    # the count sees the work: one SDXL keyframe (38 guided steps at 768 px) costs more than
    # a hundred VAE encodings of a 6-frame clip; a training step sees its backward pass
    assert (
        stages["generate_keyframes"]["tflop_per_unit"] > 100 * stages["cache_vae"]["tflop_per_unit"]
    )
    assert (
        stages["train_semantic (prior)"]["tflop_per_unit"]
        > stages["predict_semantic"]["tflop_per_unit"]
    )
