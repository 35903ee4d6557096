"""Reconstructor training throughput on the demo and parameter counts at the paper preset.

1. Runs the default demo workflow (tiny preset, CPU) up to both trained
   reconstructors in bench/output/caches/ (shared with bench_caches.py) and
   reads the per-epoch samples/s and the fraction of step time spent
   assembling batches (goal: < 5 %) from their metrics.csv.
2. Builds the Perception and Semantic Reconstructors at the paper preset on
   PyTorch's meta device (no memory) for cc2017 subject 1's voxel count in the
   official code (13,784) and the ViT-bigG/14 shapes, and counts parameters
   against the official architecture's main layers (gongzix/NeuroClips).

    python bench/bench_reconstructors.py      # writes bench/output/reconstructors.json
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import OUTPUT, report, snakemake_base  # noqa: E402
from pipeline.config import validate_config  # noqa: E402
from pipeline.models.presets import reconstructor_settings  # noqa: E402
from pipeline.reconstructors.perception import (  # noqa: E402
    PerceptionConfig,
    PerceptionReconstructor,
)
from pipeline.reconstructors.semantic import SemanticConfig, SemanticReconstructor  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VOXELS = 13_784  # the official Inception_Extension's default input size (subject 1)
TOKENS, WIDTH, TEXT = 256, 1664, 1280  # OpenCLIP ViT-bigG/14
LATENT = (4, 28, 28)  # SD VAE latent of a 224 px frame


def throughput(workdir: Path) -> dict:
    base = snakemake_base(workdir)
    targets = ["results/subject1/perception/model", "results/subject1/semantic/model"]
    subprocess.run([*base, "--cores", "2", *targets], check=True, capture_output=True)
    result = {}
    for target in targets:
        with open(workdir / target / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        for phase in dict.fromkeys(row.get("phase", "") for row in rows):
            selected = [r for r in rows if r.get("phase", "") == phase]
            name = target.split("/")[2] + (f" {phase}" if phase else "")
            result[name] = {
                "epochs": len(selected),
                "samples_per_s": round(
                    sum(float(r["samples_per_s"]) for r in selected) / len(selected), 1
                ),
                "data_fraction_max": round(max(float(r["data_fraction"]) for r in selected), 5),
                "epoch_s": round(sum(float(r["seconds"]) for r in selected) / len(selected), 1),
            }
    return result


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def paper_parameters() -> dict:
    config = validate_config(
        yaml.safe_load((REPO / "config.yaml").read_text()) | {"models": {"preset": "paper"}}
    )
    pr_arch = reconstructor_settings(config, "perception")["architecture"]
    sr_arch = reconstructor_settings(config, "semantic")["architecture"]
    with torch.device("meta"):
        pr = PerceptionReconstructor(
            PerceptionConfig(n_voxels=VOXELS, n_frames=6, latent_shape=LATENT, **pr_arch)
        )
        sr = SemanticReconstructor(
            SemanticConfig(n_voxels=VOXELS, n_tokens=TOKENS, width=WIDTH, text_dim=TEXT, **sr_arch)
        )
    h = pr_arch["hidden"]
    # the official main layers, biases included
    official_pr = {
        "inception extension": VOXELS * 256 + 256 + 256 * 256 + 256 + 256 * 6 * VOXELS + 6 * VOXELS,
        "ridge": VOXELS * h + h,
        "MLP blocks": 4 * 2 * (h * h + h),
        "to 64x7x7 map": h * 4 * 28 * 28 + 4 * 28 * 28,
    }
    ours_pr = {
        "inception extension": count(pr.extension),
        "ridge": count(pr.ridge),
        "MLP blocks": count(pr.backbone),
        "to 64x7x7 map": count(pr.to_map),
        "temporal upsampling": count(pr.stages) + count(pr.upsample) + count(pr.out),
    }
    official_sr = {
        "ridge": VOXELS * h + h,
        "MLP blocks": 4 * 2 * (h * h + h),
        "to 256x1664 tokens": h * TOKENS * WIDTH + TOKENS * WIDTH,
        "prior (6 layers, 1664 wide)": 6 * 12 * WIDTH * WIDTH,
    }
    ours_sr = {
        "ridge": count(sr.backbone.ridge),
        "MLP blocks": count(sr.backbone.blocks),
        "to 256x1664 tokens": count(sr.backbone.to_tokens),
        "projector": count(sr.backbone.projector),
        "prior (6 layers, 1664 wide)": count(sr.prior),
    }
    return {
        "perception": {
            "ours": ours_pr,
            "official": official_pr,
            "ours_total": count(pr),
            "official_total_main_layers": sum(official_pr.values()),
        },
        "semantic": {
            "ours": ours_sr,
            "official": official_sr,
            "ours_total": count(sr),
            "official_total_main_layers": sum(official_sr.values()),
        },
    }


def main() -> None:
    workdir = OUTPUT / "caches"
    workdir.mkdir(parents=True, exist_ok=True)
    result = {"paper_parameters": paper_parameters(), "demo_training": throughput(workdir)}
    result["goal"] = {"data_fraction": "< 0.05"}
    report("reconstructors", result)


if __name__ == "__main__":
    main()
