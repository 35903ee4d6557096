"""Memory budgets of the model stages at paper size, from models built on the meta device.

The models are built at the paper preset's sizes on PyTorch's meta device
(shapes without storage), so their exact parameter counts cost nothing here.
Each stage's budget adds what it holds at its peak, by its code:

* host: the weights as loaded (one copy: our models are built on the meta
  device and take the loaded tensors, :func:`pipeline.reconstructors.outputs.load_into`;
  OpenCLIP's are copied in one tensor at a time, :func:`pipeline.models.loading.copy_weights`),
  plus the caches and fMRI the stage reads into memory;
* GPU: the weights, and for training the gradients and AdamW's two moments of
  the parameters trained in the phase (float32: 4 + 4 + 8 bytes each), plus the
  data the stage keeps on the device.

Activations are not counted: a stage fits a GPU when its budget leaves
:data:`HEADROOM` of the card free for them and the allocator. These are
estimates from parameter counts and array shapes, not measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = [
    "CC2017",
    "GPU_SIZES_GB",
    "HEADROOM",
    "PROCESS_GB",
    "Budget",
    "fits",
    "fits_host",
    "paper_budgets",
    "table",
]

#: cc2017 at paper size: the largest subject's selected vertices (NeuroClips' 14,828, subject
#: 2), 18 × 240 training clips seen twice, 5 × 240 test clips, 6 frames of 4 × 28 × 28 VAE
#: latents, OpenCLIP ViT-bigG/14's 256 × 1664 image tokens and 1280-d text embedding.
CC2017 = {
    "n_voxels": 14828,
    "train_clips": 4320,
    "train_samples": 8640,
    "test_clips": 1200,
    "frames": 6,
    "latent_shape": (4, 28, 28),
    "tokens": 256,
    "width": 1664,
    "text_dim": 1280,
    "candidates": 2,
}
#: GPU sizes the budgets are checked against (A100/H100 80 GB, A100 40 GB).
GPU_SIZES_GB = (80, 40)
#: Fraction of a GPU left for activations and the allocator.
HEADROOM = 0.15
#: Host memory of a model stage's process besides its arrays: Python, torch, CUDA's host
#: side (an estimate; a CUDA context alone takes a few hundred MB to a few GB).
PROCESS_GB = 4.0

_GB = 1e9


@dataclass
class Budget:
    """Bytes a stage holds at its peak, by part."""

    stage: str
    host: dict[str, float] = field(default_factory=dict)
    gpu: dict[str, float] = field(default_factory=dict)

    @property
    def host_bytes(self) -> float:
        return sum(self.host.values())

    @property
    def gpu_bytes(self) -> float:
        return sum(self.gpu.values())


def fits(budget: Budget, gpu_gb: float) -> bool:
    """Whether ``budget`` leaves :data:`HEADROOM` of a ``gpu_gb`` GB card free."""
    return budget.gpu_bytes <= (1 - HEADROOM) * gpu_gb * _GB


def fits_host(budget: Budget, mem_mb: int) -> bool:
    """Whether ``budget`` and :data:`PROCESS_GB` fit a Slurm ``mem_mb`` (MiB) allocation."""
    return budget.host_bytes + PROCESS_GB * _GB <= mem_mb * 2**20


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def paper_models() -> dict[str, torch.nn.Module]:
    """Our reconstructors and OpenCLIP ViT-bigG/14 at paper size, on the meta device."""
    import open_clip

    from pipeline.models.presets import RECONSTRUCTORS
    from pipeline.reconstructors.perception import PerceptionConfig, PerceptionReconstructor
    from pipeline.reconstructors.semantic import SemanticConfig, SemanticReconstructor

    d = CC2017
    semantic = SemanticConfig(
        n_voxels=d["n_voxels"],
        n_tokens=d["tokens"],
        width=d["width"],
        text_dim=d["text_dim"],
        **RECONSTRUCTORS["paper"]["semantic"]["architecture"],
    )
    perception = PerceptionConfig(
        n_voxels=d["n_voxels"],
        n_frames=d["frames"],
        latent_shape=d["latent_shape"],
        **RECONSTRUCTORS["paper"]["perception"]["architecture"],
    )
    with torch.device("meta"):
        return {
            "semantic": SemanticReconstructor(semantic),
            "perception": PerceptionReconstructor(perception),
            "clip": open_clip.create_model("ViT-bigG-14", load_weights=False, device="meta"),
        }


def paper_budgets() -> dict[str, Budget]:
    """The budgets of the model stages that our models and ViT-bigG/14 dominate."""
    d = CC2017
    models = paper_models()
    sr, pr, clip = models["semantic"], models["perception"], models["clip"]
    clips = d["train_clips"] + d["test_clips"]
    fmri_train = d["train_samples"] * d["n_voxels"] * 4
    fmri_test = d["test_clips"] * d["n_voxels"] * 4
    tokens_f16 = clips * d["candidates"] * d["tokens"] * d["width"] * 2
    latents_f16 = clips * d["frames"] * 4 * 28 * 28 * 2
    test_tokens_f32 = d["test_clips"] * d["tokens"] * d["width"] * 4
    states = 4 + 8  # a trained parameter's gradient and AdamW moments, float32

    budgets = {}
    budgets["train_semantic"] = Budget(
        "train_semantic",
        host={
            "model (float32, built on the host)": _count(sr) * 4,
            "CLIP token cache (float16)": tokens_f16,
            "fMRI": fmri_train + fmri_test,
        },
        gpu={
            "model (float32)": _count(sr) * 4,
            "gradients + AdamW, larger phase (alignment)": max(
                _count(sr.backbone), _count(sr.prior)
            )
            * states,
            "fMRI": fmri_train + fmri_test,
            "test targets (float32)": test_tokens_f32,
        },
    )
    budgets["predict_semantic"] = Budget(
        "predict_semantic",
        host={"weights, one copy": _count(sr) * 4, "test fMRI": fmri_test},
        gpu={"model (float32)": _count(sr) * 4, "test fMRI": fmri_test},
    )
    budgets["train_perception"] = Budget(
        "train_perception",
        host={"model": _count(pr) * 4, "VAE latent cache (float16)": latents_f16},
        gpu={
            "model": _count(pr) * 4,
            "gradients + AdamW": _count(pr) * states,
            "fMRI": fmri_train + fmri_test,
            "latents (float16)": latents_f16,
        },
    )
    for stage in ("cache_clip_images", "cache_clip_text"):
        budgets[stage] = Budget(
            stage,
            host={"model (float32, weights copied in)": _count(clip) * 4},
            gpu={"model (float32)": _count(clip) * 4},
        )
    return budgets


def table(budgets: dict[str, Budget], mem_mb: dict[str, int] | None = None) -> str:
    """Markdown table: host and GPU GB per stage, the profile's host memory, the GPU fits
    (host GB without the process's own :data:`PROCESS_GB`)."""
    head = "| stage | host GB | profile mem_mb | GPU GB | " + " | ".join(
        f"fits {g} GB" for g in GPU_SIZES_GB
    )
    lines = [head + " |", "|---" * (4 + len(GPU_SIZES_GB)) + "|"]
    for name, b in budgets.items():
        fit = " | ".join("yes" if fits(b, g) else "no" for g in GPU_SIZES_GB)
        profile = (mem_mb or {}).get(name, "")
        lines.append(
            f"| {name} | {b.host_bytes / _GB:.1f} | {profile} | {b.gpu_bytes / _GB:.1f} | {fit} |"
        )
    return "\n".join(lines)
