"""Model presets: which pretrained model fills each role of the pipeline.

Every rule loads its models from a local directory laid out like the model's
hub repository, ``{models.root}/{preset}/{role}``, through one loader per
library (:mod:`pipeline.models.loading`). The ``paper`` preset's directories
are filled by the ``download_models`` rule (the only one that touches the
network); the ``tiny`` preset's are written by the ``tiny_models`` rule with
small, seeded, random configurations of the same classes.

Only the standard library is imported here: the rules read the presets while Snakemake
builds the DAG, in every Snakemake process, and must not import torch or a model
library (``tests/test_dag_imports.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CLASSIFIER_CLASSES",
    "CLASSIFIERS",
    "GENERATION",
    "PRESETS",
    "ROLES",
    "PRECISION",
    "PRECISION_FAMILIES",
    "ModelSource",
    "classifier_dir",
    "generation_dir",
    "generation_roles",
    "generation_settings",
    "model_device",
    "model_dir",
    "precision_settings",
    "preset_sources",
]

#: The roles a preset fills (later stages add keyframe, video and evaluation models).
ROLES = ("clip", "vae", "captioner")


@dataclass(frozen=True)
class ModelSource:
    """Where one model comes from, and which of its repository's files the loader reads.

    Attributes
    ----------
    library : {'open_clip', 'diffusers', 'transformers', 'sgm'}
        Which loader reads the directory.
    repo : str or None
        Hub repository the download rules fetch; None when a tiny-model rule
        writes the directory.
    files : tuple of str
        The repository's files that the loader reads, as the repository names
        them on ``revision`` (``fnmatch`` patterns; each must match a file).
        Only these are fetched. Pickles among them (``.bin``, ``.ckpt``,
        ``.pth``) are converted to safetensors on download
        (``torch.load(weights_only=True)``); :mod:`pipeline.models.download`.
    subfolder : str or None
        Folder of the repository that holds this model (e.g. ``vae``); its
        files are laid out at the top of the role's directory.
    revision : str or None
        Commit of ``repo`` whose layout ``files`` describes; None where no
        commit could be confirmed (``main`` is fetched then). Recorded in the
        role's ``source.json``.
    repo_type : str
        ``model`` or ``dataset`` (MindEye2's weights live in a dataset repository).
    converted_name : str or None
        Name of a converted single-file checkpoint in the role's directory.
    """

    library: str
    repo: str | None = None
    files: tuple[str, ...] = ()
    subfolder: str | None = None
    revision: str | None = None
    repo_type: str = "model"
    converted_name: str | None = None


# Revisions: commits of each repository seen in public hub URLs and cache paths
# (2026-12); a role without one fetches main.

#: transformers repositories with safetensors weights on main: what the loaders read.
_TRANSFORMERS_FILES = ("config.json", "preprocessor_config.json", "model.safetensors")

#: Registry of presets: role → source.
PRESETS: dict[str, dict[str, ModelSource]] = {
    "paper": {
        # OpenCLIP ViT-bigG/14 laion2b_s39b_b160k: 256 visual tokens of width 1664,
        # 1280-d text embedding. The repository also holds the .bin and a transformers
        # copy in shards (about 10 GB each); only the open_clip safetensors are read.
        "clip": ModelSource(
            "open_clip",
            "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k",
            # "Adding `safetensors` variant of this model (#12)": the commit that added
            # open_clip_pytorch_model.safetensors (open_clip_config.json is older, #2)
            revision="bc7788f151930d91b58474715fdce5524ad9a189",
            files=("open_clip_config.json", "open_clip_pytorch_model.safetensors"),
        ),
        # the official code loads MindEye2's `sd_image_var_autoenc.pth`, the VAE of
        # Stable Diffusion image variations; this is the same model in diffusers format.
        # On main its vae/ holds only the pickle (safetensors only in unmerged PR branches).
        "vae": ModelSource(
            "diffusers",
            "lambdalabs/sd-image-variations-diffusers",
            revision="42bc0ee1726b141d49f519a6ea02ccfbf073db2e",
            files=("vae/config.json", "vae/diffusion_pytorch_model.bin"),
            subfolder="vae",
        ),
        "captioner": ModelSource(
            "transformers",
            "Salesforce/blip2-opt-2.7b",
            revision="51572668da0eb669e01a189dc22abe6088589a24",
            # configs, processor and tokenizer (tokenizer.json) and the safetensors shards;
            # not the pickled shards beside them
            files=(
                "*.json",
                "tokenizer.json",
                "model.safetensors.index.json",
                "model-*-of-*.safetensors",
            ),
        ),
    },
    "tiny": {
        "clip": ModelSource("open_clip"),
        "vae": ModelSource("diffusers"),
        "captioner": ModelSource("transformers"),
    },
}


#: Generation models per preset: keyframe generators and the video model.
#: They live in ``{models.root}/{preset}-generation/{role}``, apart from the encoders,
#: so that changing them never invalidates the caches or the trained reconstructors.
GENERATION: dict[str, dict[str, ModelSource]] = {
    "paper": {
        # `sd21_unclip` generator: SD 2.1 unCLIP, 1024-d ViT-H/14 image embeddings. Stability
        # AI removed stabilityai/stable-diffusion-2-1-unclip (and the SD 2.x family) from the
        # hub in November 2025; sd2-community keeps a copy in the same diffusers layout,
        # the replacement the hub maintainers approved (huggingface/optimum-habana). No commit
        # of the mirror is published anywhere we could read (its history is its own, not
        # stabilityai's), so this role alone fetches main.
        "unclip": ModelSource(
            "diffusers",
            "sd2-community/stable-diffusion-2-1-unclip",
            # every component's config and safetensors weights, not the fp16 variants
            files=(
                "model_index.json",
                "*/config.json",
                "*/preprocessor_config.json",
                "*/scheduler_config.json",
                "tokenizer/*",
                "*/diffusion_pytorch_model.safetensors",
                "*/model.safetensors",
            ),
        ),
        # `mindeye2_sdxl_unclip` generator: MindEye2's fine-tuned SDXL unCLIP, a Lightning
        # checkpoint in a dataset repository (read by sgm, pipeline/generation/sdxl_unclip.py)
        "sdxl_unclip": ModelSource(
            "sgm",
            "pscotti/mindeyev2",
            revision="3f20ccbe614876c83894e148cc36530c4b04caa7",
            files=("unclip6_epoch0_step110000.ckpt",),
            repo_type="dataset",
            converted_name="unclip6.safetensors",
        ),
        # AnimateDiff v3 on RealisticVision V6.0 B1, SparseCtrl RGB (paper appendix A).
        # RealisticVision's unet/ and text_encoder/ hold pickles only on main; its top-level
        # single-file checkpoints (12.8 GB) are not read. It ships no VAE (video_vae).
        "video_base": ModelSource(
            "diffusers",
            "SG161222/Realistic_Vision_V6.0_B1_noVAE",
            revision="7f177697718f088f243fd357263b9f0cb22d0cac",
            files=(
                "model_index.json",
                "feature_extractor/preprocessor_config.json",
                "scheduler/scheduler_config.json",
                "text_encoder/config.json",
                "text_encoder/pytorch_model.bin",
                "tokenizer/*",
                "unet/config.json",
                "unet/diffusion_pytorch_model.bin",
            ),
        ),
        "video_vae": ModelSource(
            "diffusers",
            "stabilityai/sd-vae-ft-mse",
            revision="31f26fdeee1355a5c34592e401dd41e45d25a493",
            files=("config.json", "diffusion_pytorch_model.safetensors"),
        ),
        "motion_adapter": ModelSource(
            "diffusers",
            "guoyww/animatediff-motion-adapter-v1-5-3",
            revision="449d8993ead63a068e1030eb26925132814db1c8",
            files=("config.json", "diffusion_pytorch_model.safetensors"),
        ),
        "sparsectrl": ModelSource(
            "diffusers",
            "guoyww/animatediff-sparsectrl-rgb",
            revision="b8003d681d813c095e459b9141122894daff2d13",
            files=("config.json", "diffusion_pytorch_model.safetensors"),
        ),
        # the v3 domain adapter LoRA in diffusers' format: the official
        # guoyww/animatediff v3_sd15_adapter.ckpt names its keys without the `unet.` prefix,
        # and diffusers loads no layer from it (only a warning). diffusers' own SparseCtrl
        # example loads this repository (pipelines/animatediff/pipeline_animatediff_sparsectrl.py)
        "domain_adapter": ModelSource(
            "diffusers",
            "guoyww/animatediff-motion-lora-v1-5-3",
            revision="8b5ff2775000d82040bf595e66f14db7246c1534",
            files=("*.safetensors",),
        ),
    },
    "tiny": {
        "unclip": ModelSource("diffusers"),
        "video_base": ModelSource("diffusers"),
        "motion_adapter": ModelSource("diffusers"),
        "sparsectrl": ModelSource("diffusers"),
    },
}

#: Classifiers per preset: the frame classifier labels the fusion pairs (paper §3.4:
#: "the same class of object"); evaluation uses both for the N-way metrics. They live in
#: ``{models.root}/{preset}-classifiers/{role}``; the tiny ones are fitted to the
#: training frames (pipeline/models/tiny_classifiers.py).
CLASSIFIERS: dict[str, dict[str, ModelSource]] = {
    "paper": {
        # the ImageNet classifier of the field's frame N-way metric
        "frame_classifier": ModelSource(
            "transformers",
            "google/vit-base-patch16-224",
            files=_TRANSFORMERS_FILES,
            revision="3f49326eb077187dfe1c2a2bb15fbd74e6ab91e3",
        ),
        # the Kinetics-400 classifier of its video N-way metric
        "video_classifier": ModelSource(
            "transformers",
            "MCG-NJU/videomae-base-finetuned-kinetics",
            files=_TRANSFORMERS_FILES,
            revision="488eb9a0565f257b32866000305c8178965eb9f6",
        ),
        # the CLIP of NEURONS' CLIP-pcc (its eval_metrics.py loads CLIPModel and
        # AutoProcessor from this repository, xmed-lab/NEURONS@4e4fd545)
        "clip_vit_l14": ModelSource(
            "transformers",
            "openai/clip-vit-large-patch14",
            files=_TRANSFORMERS_FILES,
            revision="32bd64288804d66eefd0ccbe215aa642df71cc41",
        ),
        # the CLIP of Mind-Animator's CLIP-pcc, clip.load("ViT-B/32")
        # (Evaluation_Metrics/CLIP_consist.py at ReedOnePeck/Mind-Animator@a5adbf3b): the
        # same weights, converted by transformers' convert_clip_original_pytorch_to_hf.py.
        # The repository has no safetensors; its pickle is converted when laid out
        "clip_vit_b32": ModelSource(
            "transformers",
            "openai/clip-vit-base-patch32",
            files=("config.json", "preprocessor_config.json", "pytorch_model.bin"),
            revision="3d74acf9a28c67741b2f4f2ea7635f0aaf6f0268",
        ),
    },
    "tiny": {
        "frame_classifier": ModelSource("transformers"),
        "video_classifier": ModelSource("transformers"),
        "clip_vit_l14": ModelSource("transformers"),
        "clip_vit_b32": ModelSource("transformers"),
    },
}

#: Classes of the named classifiers of a preset (ImageNet-1k, Kinetics-400); the tiny
#: preset's come from ``models.tiny_classifier_classes``.
CLASSIFIER_CLASSES: dict[str, dict[str, int]] = {"paper": {"frame": 1000, "video": 400}}


def generation_roles(preset: str, generator: str) -> list[str]:
    """The generation roles a run with keyframe ``generator`` reads: the generator's own
    (its :data:`~pipeline.generation.registry.KEYFRAME_GENERATORS` entry's role) and every
    role that is no generator's (the video models).

    Parameters
    ----------
    preset : str
        A key of :data:`GENERATION`.
    generator : str
        A keyframe generator's name.

    Returns
    -------
    list of str
        Role names, in the preset's order.

    Raises
    ------
    ValueError
        If ``generator`` is unknown or ``preset`` has no model for it.
    """
    from pipeline.generation.registry import KEYFRAME_GENERATORS, keyframe_generator

    roles = GENERATION[preset]
    keyframe_roles = {entry.role for entry in KEYFRAME_GENERATORS.values()}
    own = keyframe_generator(generator).role
    if own not in roles:
        raise ValueError(f"preset {preset!r} has no model for keyframe generator {generator!r}")
    return [r for r in roles if r not in keyframe_roles or r == own]


#: Per-preset side of the extracted frames in pixels (``frames.size: null`` takes it): the
#: official code's 224 for the paper preset; 64 for the tiny one, whose VAE, generators and
#: evaluation run on a CPU in minutes at that size.
FRAME_SIZES = {"paper": 224, "tiny": 64}

#: Per-preset CPU threads of a model stage's job (the rules' ``threads``; profiles/slurm sets
#: its own per rule). Paper: 2, for decoding and data loading beside the GPU. Tiny: 1, because
#: its models run on the CPU and are too small for intra-op threads to pay: train_perception
#: of the default demo takes 87.9 s on one thread and 72.6 s on two (its benchmark file in
#: bench/bench_demo.py's workspace, rerun with --forcerun and --set-threads
#: train_perception=1), so on 2 cores two one-thread jobs side by side finish sooner.
MODEL_THREADS = {"paper": 2, "tiny": 1}

#: Per-preset defaults of the generation settings (config keys set to null take these).
GENERATION_DEFAULTS = {
    "paper": {
        "keyframes": {"generator": "mindeye2_sdxl_unclip", "steps": 38, "guidance_scale": 5.0},
        "video": {"size": 256, "steps": 25},
    },
    # tiny: videos at half the extracted frames' side (:func:`tiny_video_size`) over a
    # 10-step schedule, so that the demo's 120 clips take minutes on a CPU, not an hour
    "tiny": {
        "keyframes": {"generator": "tiny", "steps": 20, "guidance_scale": 5.0},
        "video": {"steps": 10},
    },
}


#: The stage families of the ``precision`` config section and the rules of each.
PRECISION_FAMILIES = {
    "caches": (
        "cache_vae",
        "cache_clip_images",
        "cache_captions",
        "cache_clip_text",
        "train_fusion",
    ),
    "training": ("train_perception", "predict_perception", "train_semantic", "predict_semantic"),
    "keyframes": ("fit_keyframe_embedder", "generate_keyframes", "caption_keyframes"),
    "videos": ("synthesize_videos", "synthesize_ablation", "fuse_videos"),
    "evaluation": ("evaluate_videos", "evaluate_external"),
}

#: Per-preset precision of each stage family (``precision.*`` set to null takes these).
#: ``paper`` is what the official code runs on an A100: the caches' targets under
#: fp16 autocast and BLIP-2 loaded in float16 (src/train_PR.py, src/train_SR.py,
#: src/caption.py), both reconstructors trained with Accelerate's fp16 mixed precision
#: (src/train_SR.py, src/train_PR.py), the SDXL unCLIP keyframes under fp16 autocast
#: (src/recon_keyframe.py), AnimateDiff in float32 (its models moved with `.cuda()` and
#: no dtype, Animatediff/scripts/neuroclips.py); the evaluation's classifiers in float32.
PRECISION = {
    "paper": {
        "caches": "float16",
        "training": "float16",
        "keyframes": "float16",
        "videos": "float32",
        "evaluation": "float32",
    },
    "tiny": dict.fromkeys(PRECISION_FAMILIES, "float32"),
}


def precision_settings(config: dict) -> dict[str, str]:
    """The ``precision`` section with null values resolved from the preset.

    Parameters
    ----------
    config : dict
        A validated configuration (``models.preset`` and ``precision`` are read).

    Returns
    -------
    dict of str to str
        Stage family → ``float32``, ``float16`` or ``bfloat16``.
    """
    defaults = PRECISION[config["models"]["preset"]]
    return {
        family: value if value is not None else defaults[family]
        for family, value in config["precision"].items()
    }


def model_device(models: dict) -> str:
    """The model stages' device setting: ``auto`` stays ``auto`` (CUDA when present, else the
    CPU) except with the paper preset, which asks for CUDA so that a job without it stops
    and says why (``loading.resolve_device``) instead of running on the CPU; ``cpu``
    forces the CPU.

    Parameters
    ----------
    models : dict
        The ``models`` config section (``device`` and ``preset`` are read).

    Returns
    -------
    str
        ``auto``, ``cuda``, ``cpu`` or the configured device name.
    """
    if models["device"] == "auto" and models["preset"] == "paper":
        return "cuda"
    return models["device"]


def tiny_video_size(frame_size: int) -> int:
    """The tiny preset's video side: half the frames', a multiple of 8, at least 64 (the
    frames' own side when smaller)."""
    return min(frame_size // 8 * 8, max(64, frame_size // 2 // 8 * 8))


def generation_dir(root: str | os.PathLike, preset: str) -> Path:
    """Directory of ``preset``'s generation models (one role per subdirectory).

    Parameters
    ----------
    root : path
        ``models.root``.
    preset : str
        A key of :data:`GENERATION`.

    Returns
    -------
    Path
        ``{root}/{preset}-generation``.

    Raises
    ------
    ValueError
        If ``preset`` is unknown.
    """
    if preset not in GENERATION:
        raise ValueError(f"unknown model preset {preset!r}; known: {sorted(GENERATION)}")
    return Path(root) / f"{preset}-generation"


def classifier_dir(root: str | os.PathLike, preset: str) -> Path:
    """Directory of ``preset``'s classifiers (one role per subdirectory).

    Parameters
    ----------
    root : path
        ``models.root``.
    preset : str
        A key of :data:`CLASSIFIERS`.

    Returns
    -------
    Path
        ``{root}/{preset}-classifiers``.

    Raises
    ------
    ValueError
        If ``preset`` is unknown.
    """
    if preset not in CLASSIFIERS:
        raise ValueError(f"unknown model preset {preset!r}; known: {sorted(CLASSIFIERS)}")
    return Path(root) / f"{preset}-classifiers"


def generation_settings(config: dict, section: str) -> dict:
    """``keyframes`` or ``video`` settings with null values resolved from the preset.

    Parameters
    ----------
    config : dict
        A validated configuration.
    section : {'keyframes', 'video'}
        The config section.

    Returns
    -------
    dict
        A copy of the section; for the tiny preset the video ``size`` (pixels) defaults
        to :func:`tiny_video_size` of the extracted frames' side.
    """
    preset = config["models"]["preset"]
    values = dict(config[section])
    defaults = GENERATION_DEFAULTS[preset][section]
    if section == "video" and "size" not in defaults:
        defaults = defaults | {"size": tiny_video_size(config["frames"]["size"])}
    for key, value in defaults.items():
        if values.get(key) is None:
            values[key] = value
    return values


def preset_sources(preset: str) -> dict[str, ModelSource]:
    """The sources of ``preset``; a clear error for an unknown name.

    Parameters
    ----------
    preset : str
        A key of :data:`PRESETS`.

    Returns
    -------
    dict of str to ModelSource
        Role → where its model comes from.

    Raises
    ------
    ValueError
        If ``preset`` is unknown.
    """
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown model preset {preset!r}; known: {sorted(PRESETS)}") from None


def model_dir(root: str | os.PathLike, preset: str, role: str) -> Path:
    """Local directory of ``role`` in ``preset`` under the models root.

    Parameters
    ----------
    root : path
        ``models.root``.
    preset : str
        A key of :data:`PRESETS`.
    role : str
        One of the preset's roles (:data:`ROLES`).

    Returns
    -------
    Path
        ``{root}/{preset}/{role}``.

    Raises
    ------
    ValueError
        If the preset is unknown or has no such role.
    """
    if role not in preset_sources(preset):
        raise ValueError(f"preset {preset!r} has no model for role {role!r}")
    return Path(root) / preset / role


#: Sizes of the trainable reconstructors per preset (``paper``: the official code's); the
#: ``perception`` / ``semantic`` config sections override any of them.
RECONSTRUCTORS: dict[str, dict[str, dict]] = {
    "paper": {
        "perception": {
            "architecture": {
                "extension_width": 256,
                "extension_blocks": 1,
                "hidden": 4096,
                "blocks": 4,
                "channels": 64,
                "upsamplings": 2,
                "heads": 4,
                "attention_max_size": 14,
                "dropout": 0.15,
            },
            "epochs": 150,
            "batch_size": 40,
            "lr": 3e-4,
            # the official src/train_PR.py and src/train_SR.py (1b70c86) build AdamW
            # without a weight_decay argument: PyTorch's default, 0.01
            "weight_decay": 0.01,
            # the official train_PR.py would mix only the latent targets, after the loss is
            # computed, with `perm`/`select` it never defines (the script stops there on
            # its first batch): no mixup in the paper preset
            "mixup_fraction": 0.0,
        },
        "semantic": {
            "architecture": {
                "hidden": 4096,
                "blocks": 4,
                "projector_hidden": 2048,
                "dropout": 0.15,
                "prior_depth": 6,
                "prior_heads": 32,
                "prior_timesteps": 100,
                "condition_drop": 0.2,
            },
            "align_epochs": 30,
            "align_batch_size": 240,
            "prior_epochs": 150,
            "prior_batch_size": 64,
            "weight_decay": 0.01,
        },
    },
    "tiny": {
        "perception": {
            "architecture": {
                "extension_width": 64,
                "extension_blocks": 0,
                "hidden": 256,
                "blocks": 0,
                "channels": 16,
                "upsamplings": 1,
                "heads": 2,
                "attention_max_size": 7,
                "dropout": 0.3,
            },
            "epochs": 60,
            "batch_size": 32,
            "lr": 1e-3,
            # on ~1,000 training samples the PR overfits without it (bench/bench_blurry.py)
            "mixup_fraction": 1.0,
            # the decay shrinks the first layer's weights of voxels whose gradients do not
            # agree, so the trained ridge layer, not its initialisation, sets the
            # interpretation's importance (bench/bench_tiny_training.py)
            "weight_decay": 1.0,
        },
        "semantic": {
            "architecture": {
                "hidden": 256,
                "blocks": 2,
                "projector_hidden": 64,
                "dropout": 0.1,
                "prior_depth": 2,
                "prior_heads": 4,
                "prior_timesteps": 100,
                "condition_drop": 0.2,
            },
            # 10 epochs at 3e-4 left the ridge layer at its initialisation
            # (bench/bench_tiny_training.py)
            "align_epochs": 30,
            "align_lr": 1e-3,
            "align_batch_size": 32,
            "prior_epochs": 4,
            "prior_batch_size": 32,
            "weight_decay": 1.0,
        },
    },
}


#: Settings used only at inference (prediction rules), not by training.
INFERENCE_KEYS = ("sampling_steps", "guidance")
#: Settings of how a training runs that never change the trained model.
RUN_KEYS = ("checkpoint_every",)


def reconstructor_settings(config: dict, name: str) -> dict:
    """Effective settings of reconstructor ``name``: the preset's sizes, overridden by config.

    Config keys set to null take the preset's value; ``architecture`` is merged
    key by key (an unknown architecture key is an error). ``precision`` is the
    training family's (``precision.training``).
    """
    preset = config["models"]["preset"]
    base = RECONSTRUCTORS[preset][name]
    section = dict(config[name])
    overrides = section.pop("architecture", {}) or {}
    unknown = set(overrides) - set(base["architecture"])
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(base['architecture'])}")
    settings = {k: v for k, v in base.items() if k != "architecture"}
    settings |= {k: v for k, v in section.items() if v is not None}
    settings["architecture"] = base["architecture"] | overrides
    settings["precision"] = precision_settings(config)["training"]
    return settings
