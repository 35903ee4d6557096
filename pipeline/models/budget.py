"""Memory budgets of the model stages at paper size, from models built on the meta device.

Every model is built at its published size on PyTorch's meta device
(:mod:`pipeline.models.paper_size`; shapes without storage), so their exact
parameter counts cost nothing here.
Each stage's budget adds what it holds at its peak, by its code:

* host: the weights as loaded, in the stage family's precision where the loader
  loads in it (one copy: our models are built on the meta
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

from pipeline.models.paper_size import BUILDERS, CC2017, build, count
from pipeline.models.presets import PRECISION

__all__ = [
    "GPU_SIZES_GB",
    "HEADROOM",
    "PROCESS_GB",
    "UNBUDGETED",
    "Budget",
    "fits",
    "fits_host",
    "paper_budgets",
    "paper_models",
    "table",
]

#: GPU sizes the budgets are checked against (A100/H100 80 GB, A100 40 GB).
GPU_SIZES_GB = (80, 40)
#: Fraction of a GPU left for activations and the allocator.
HEADROOM = 0.15
#: Host memory of a model stage's process besides its arrays: Python, torch, CUDA's host
#: side (an estimate; a CUDA context alone takes a few hundred MB to a few GB).
PROCESS_GB = 4.0

_GB = 1e9
_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass
class Budget:
    """Bytes a stage holds at its peak, by part.

    Attributes
    ----------
    stage : str
        The rule name.
    host, gpu : dict of str to float
        Part (e.g. ``"model (float32)"``) → bytes held in host or GPU memory.
    """

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
    """Whether ``budget`` leaves :data:`HEADROOM` of a ``gpu_gb`` GB card free.

    Parameters
    ----------
    budget : Budget
    gpu_gb : float, GB (10**9 bytes)
        GPU memory.

    Returns
    -------
    bool
        ``budget.gpu_bytes <= (1 - HEADROOM) * gpu_gb * 1e9``.
    """
    return budget.gpu_bytes <= (1 - HEADROOM) * gpu_gb * _GB


def fits_host(budget: Budget, mem_mb: int) -> bool:
    """Whether ``budget`` and :data:`PROCESS_GB` fit a Slurm ``mem_mb`` (MiB) allocation.

    Parameters
    ----------
    budget : Budget
    mem_mb : int, MiB
        Host memory of the job.

    Returns
    -------
    bool
        ``budget.host_bytes + PROCESS_GB * 1e9 <= mem_mb * 2**20``.
    """
    return budget.host_bytes + PROCESS_GB * _GB <= mem_mb * 2**20


def paper_models() -> dict[str, torch.nn.Module]:
    """Every paper-size model (:mod:`pipeline.models.paper_size`) on the meta device.

    Returns
    -------
    dict of str to torch.nn.Module
        Name in :data:`pipeline.models.paper_size.BUILDERS` → model without storage.
    """
    return {name: build(name, "meta") for name in BUILDERS}


#: Model stages without a budget: the `sd21_unclip` generator's ridge fit (not the paper
#: preset's default generator; its unCLIP image encoder is ViT-H/14, 0.63 B parameters).
UNBUDGETED = ("fit_keyframe_embedder",)


def paper_budgets(precision: dict[str, str] | None = None) -> dict[str, Budget]:
    """The budgets of the model stages at paper size, in ``precision`` (stage family →
    dtype name; default: the paper preset's, :data:`pipeline.models.presets.PRECISION`).

    Parameters
    ----------
    precision : dict of str to str, optional
        Stage family (``caches``, ``training``, ``keyframes``, ``videos``,
        ``evaluation``) → ``float32``, ``float16`` or ``bfloat16``.

    Returns
    -------
    dict of str to Budget
        Stage (rule) name → bytes held at its peak, for cc2017 sizes
        (:data:`pipeline.models.paper_size.CC2017`).
    """
    d = CC2017
    precision = precision or PRECISION["paper"]
    nbytes = {family: _BYTES[name] for family, name in precision.items()}
    models = paper_models()
    n = {name: count(model) for name, model in models.items()}
    sr = models["semantic"]
    clips = d["train_clips"] + d["test_clips"]
    fmri_train = d["train_samples"] * d["n_voxels"] * 4
    fmri_test = d["test_clips"] * d["n_voxels"] * 4
    tokens_f16 = clips * d["candidates"] * d["tokens"] * d["width"] * 2
    latents_f16 = clips * d["frames"] * 4 * 28 * 28 * 2
    test_tokens_f32 = d["test_clips"] * d["tokens"] * d["width"] * 4
    states = 4 + 8  # a trained parameter's gradient and AdamW moments, float32

    budgets = {}
    # caches: diffusers and transformers load in the stage's dtype; OpenCLIP builds in
    # float32 on the host, takes the weights tensor by tensor, then moves in the dtype
    caches = nbytes["caches"]
    budgets["cache_vae"] = Budget(
        "cache_vae", host={"VAE": n["vae"] * caches}, gpu={"VAE": n["vae"] * caches}
    )
    for stage in ("cache_clip_images", "cache_clip_text"):
        budgets[stage] = Budget(
            stage,
            host={"ViT-bigG/14 (built in float32)": n["clip"] * 4},
            gpu={"ViT-bigG/14": n["clip"] * caches},
        )
    budgets["cache_captions"] = Budget(
        "cache_captions",
        host={"BLIP-2 OPT-2.7b": n["captioner"] * caches},
        gpu={"BLIP-2 OPT-2.7b": n["captioner"] * caches},
    )
    # our reconstructors: float32 weights (autocast computes in the training precision)
    budgets["train_semantic"] = Budget(
        "train_semantic",
        host={
            "model (float32, built on the host)": n["semantic"] * 4,
            "CLIP token cache (float16)": tokens_f16,
            "fMRI": fmri_train + fmri_test,
        },
        gpu={
            "model (float32)": n["semantic"] * 4,
            "gradients + AdamW, larger phase (alignment)": max(count(sr.backbone), count(sr.prior))
            * states,
            "fMRI": fmri_train + fmri_test,
            "test targets (float32)": test_tokens_f32,
        },
    )
    budgets["predict_semantic"] = Budget(
        "predict_semantic",
        host={"weights, one copy": n["semantic"] * 4, "test fMRI": fmri_test},
        gpu={"model (float32)": n["semantic"] * 4, "test fMRI": fmri_test},
    )
    # the interpretation: both trained reconstructors, and the test fMRI's gradients
    budgets["interpret"] = Budget(
        "interpret",
        host={
            "reconstructors, one copy each": (n["semantic"] + n["perception"]) * 4,
            "test fMRI": fmri_test,
        },
        gpu={
            "reconstructors (float32)": (n["semantic"] + n["perception"]) * 4,
            "test fMRI and its gradient": 2 * fmri_test,
        },
    )
    budgets["train_perception"] = Budget(
        "train_perception",
        host={"model": n["perception"] * 4, "VAE latent cache (float16)": latents_f16},
        gpu={
            "model": n["perception"] * 4,
            "gradients + AdamW": n["perception"] * states,
            "fMRI": fmri_train + fmri_test,
            "latents (float16)": latents_f16,
        },
    )
    budgets["predict_perception"] = Budget(
        "predict_perception",
        host={"model": n["perception"] * 4, "VAE": n["vae"] * nbytes["training"]},
        gpu={"model": n["perception"] * 4, "VAE": n["vae"] * nbytes["training"]},
    )
    budgets["train_fusion"] = Budget(
        "train_fusion",
        host={"frame classifier": n["frame_classifier"] * caches},
        gpu={"frame classifier": n["frame_classifier"] * caches},
    )
    # keyframes: the SDXL unCLIP engine is built in float32 and runs under autocast; its
    # checkpoint (float32) is read beside it without the unused ViT-bigG image embedder
    engine = (n["sdxl_unclip_unet"] + n["vae"]) * 4
    budgets["generate_keyframes"] = Budget(
        "generate_keyframes",
        host={"engine (float32)": engine, "checkpoint read, less the embedder": engine},
        gpu={"engine (float32)": engine},
    )
    budgets["caption_keyframes"] = Budget(
        "caption_keyframes",
        host={"BLIP-2 OPT-2.7b": n["captioner"] * nbytes["keyframes"]},
        gpu={"BLIP-2 OPT-2.7b": n["captioner"] * nbytes["keyframes"]},
    )
    # videos: the pipeline loads SD 1.5's UNet and the motion adapter, then builds the
    # motion UNet from both (three UNet-sized parts on the host at once)
    videos = nbytes["videos"]
    on_gpu = n["video_unet"] + n["sparsectrl"] + n["sd15_text_encoder"] + n["vae"]
    video_host = {
        "SD 1.5 UNet (replaced by the motion UNet)": n["sd15_unet"] * videos,
        "motion adapter": n["motion_adapter"] * videos,
        "motion UNet, SparseCtrl, text encoder, VAE": on_gpu * videos,
    }
    video_gpu = {"motion UNet, SparseCtrl, text encoder, VAE": on_gpu * videos}
    for stage in ("synthesize_videos", "synthesize_ablation"):
        budgets[stage] = Budget(stage, host=dict(video_host), gpu=dict(video_gpu))
    budgets["fuse_videos"] = Budget(
        "fuse_videos",
        host=video_host | {"ViT-bigG/14 (built in float32)": n["clip"] * 4},
        gpu=video_gpu | {"ViT-bigG/14": n["clip"] * videos},
    )
    # evaluation with every protocol on: both classifiers, ViT-bigG/14 (CLIP-pcc of the
    # neuroclips protocol) and the peers' openai ViT-L/14 (NEURONS) and ViT-B/32 (Mind-Animator)
    evaluation = nbytes["evaluation"]
    classifiers = n["frame_classifier"] + n["video_classifier"]
    peers = n["clip_vit_l14"] + n["clip_vit_b32"]
    for stage in ("evaluate_videos", "evaluate_external"):
        budgets[stage] = Budget(
            stage,
            host={
                "classifiers, openai CLIPs": (classifiers + peers) * evaluation,
                "ViT-bigG/14 (float32)": n["clip"] * 4,
            },
            gpu={
                "classifiers, openai CLIPs": (classifiers + peers) * evaluation,
                "ViT-bigG/14": n["clip"] * evaluation,
            },
        )
    return budgets


def table(budgets: dict[str, Budget], mem_mb: dict[str, int] | None = None) -> str:
    """Markdown table: host and GPU GB per stage, the profile's host memory, the GPU fits
    (host GB without the process's own :data:`PROCESS_GB`).

    Parameters
    ----------
    budgets : dict of str to Budget
        As :func:`paper_budgets` returns them.
    mem_mb : dict of str to int, optional
        Stage → the cluster profile's ``mem_mb`` (MiB), shown beside its budget.

    Returns
    -------
    str
        A Markdown table, one row per stage; sizes in GB (10**9 bytes).
    """
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
