"""Model presets: which pretrained model fills each role of the pipeline.

Every rule loads its models from a local directory laid out like the model's
hub repository, ``{models.root}/{preset}/{role}``, through one loader per
library (:mod:`pipeline.models.loading`). The ``paper`` preset's directories
are filled by the ``download_models`` rule (the only one that touches the
network); the ``tiny`` preset's are written by the ``tiny_models`` rule with
small, seeded, random configurations of the same classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CLASSIFIER_CLASSES",
    "CLASSIFIERS",
    "GENERATION",
    "GENERATOR_ROLES",
    "PRESETS",
    "ROLES",
    "ModelSource",
    "classifier_dir",
    "generation_dir",
    "generation_settings",
    "model_dir",
    "preset_sources",
]

#: The roles a preset fills (later stages add keyframe, video and evaluation models).
ROLES = ("clip", "vae", "captioner")


@dataclass(frozen=True)
class ModelSource:
    """Where one model comes from.

    Attributes
    ----------
    library : {'open_clip', 'diffusers', 'transformers'}
        Which loader reads the directory.
    repo : str or None
        Hub repository the ``download_models`` rule fetches; None when the
        ``tiny_models`` rule writes the directory.
    subfolder : str or None
        Folder of the repository that holds this model (e.g. ``vae``).
    filename : str or None
        A single checkpoint file of the repository to fetch instead of its
        diffusers/transformers layout; a pickled ``.ckpt`` is converted to
        safetensors on download (``torch.load(weights_only=True)``).
    repo_type : str
        ``model`` or ``dataset`` (MindEye2's weights live in a dataset repository).
    """

    library: str
    repo: str | None = None
    subfolder: str | None = None
    filename: str | None = None
    repo_type: str = "model"


#: Registry of presets: role → source.
PRESETS: dict[str, dict[str, ModelSource]] = {
    "paper": {
        # OpenCLIP ViT-bigG/14 laion2b_s39b_b160k: 256 visual tokens of width 1664,
        # 1280-d text embedding (SPEC §3)
        "clip": ModelSource("open_clip", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"),
        # the official code loads MindEye2's `sd_image_var_autoenc.pth`, the VAE of
        # Stable Diffusion image variations; this is the same model in diffusers format
        "vae": ModelSource("diffusers", "lambdalabs/sd-image-variations-diffusers", "vae"),
        "captioner": ModelSource("transformers", "Salesforce/blip2-opt-2.7b"),
    },
    "tiny": {
        "clip": ModelSource("open_clip"),
        "vae": ModelSource("diffusers"),
        "captioner": ModelSource("transformers"),
    },
}


#: Generation models per preset (issue 5): keyframe generators and the video model.
#: They live in ``{models.root}/{preset}-generation/{role}``, apart from the encoders,
#: so that changing them never invalidates the caches or the trained reconstructors.
GENERATION: dict[str, dict[str, ModelSource]] = {
    "paper": {
        # `sd21_unclip` generator: SD 2.1 unCLIP, 1024-d ViT-H/14 image embeddings
        "unclip": ModelSource("diffusers", "stabilityai/stable-diffusion-2-1-unclip"),
        # `mindeye2_sdxl_unclip` generator: MindEye2's fine-tuned SDXL unCLIP (SPEC §3)
        "sdxl_unclip": ModelSource(
            "sgm",
            "pscotti/mindeyev2",
            filename="unclip6_epoch0_step110000.ckpt",
            repo_type="dataset",
        ),
        # AnimateDiff v3 on RealisticVision V6.0 B1, SparseCtrl RGB (paper appendix A)
        "video_base": ModelSource("diffusers", "SG161222/Realistic_Vision_V6.0_B1_noVAE"),
        "video_vae": ModelSource("diffusers", "stabilityai/sd-vae-ft-mse"),
        "motion_adapter": ModelSource("diffusers", "guoyww/animatediff-motion-adapter-v1-5-3"),
        "sparsectrl": ModelSource("diffusers", "guoyww/animatediff-sparsectrl-rgb"),
        "domain_adapter": ModelSource(
            "diffusers", "guoyww/animatediff", filename="v3_sd15_adapter.ckpt"
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
        # the ImageNet classifier of the field's frame N-way metric (SPEC §4)
        "frame_classifier": ModelSource("transformers", "google/vit-base-patch16-224"),
        # the Kinetics-400 classifier of its video N-way metric
        "video_classifier": ModelSource("transformers", "MCG-NJU/videomae-base-finetuned-kinetics"),
    },
    "tiny": {
        "frame_classifier": ModelSource("transformers"),
        "video_classifier": ModelSource("transformers"),
    },
}

#: Classes of the named classifiers of a preset (ImageNet-1k, Kinetics-400); the tiny
#: preset's come from ``models.tiny_classifier_classes``.
CLASSIFIER_CLASSES: dict[str, dict[str, int]] = {"paper": {"frame": 1000, "video": 400}}

#: Keyframe generator → the generation role holding its model.
GENERATOR_ROLES = {"mindeye2_sdxl_unclip": "sdxl_unclip", "sd21_unclip": "unclip", "tiny": "unclip"}

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


def tiny_video_size(frame_size: int) -> int:
    """The tiny preset's video side: half the frames', a multiple of 8, at least 32."""
    return max(32, frame_size // 2 // 8 * 8)


def generation_dir(root: str | os.PathLike, preset: str) -> Path:
    """Directory of ``preset``'s generation models (one role per subdirectory)."""
    if preset not in GENERATION:
        raise ValueError(f"unknown model preset {preset!r}; known: {sorted(GENERATION)}")
    return Path(root) / f"{preset}-generation"


def classifier_dir(root: str | os.PathLike, preset: str) -> Path:
    """Directory of ``preset``'s classifiers (one role per subdirectory)."""
    if preset not in CLASSIFIERS:
        raise ValueError(f"unknown model preset {preset!r}; known: {sorted(CLASSIFIERS)}")
    return Path(root) / f"{preset}-classifiers"


def generation_settings(config: dict, section: str) -> dict:
    """``keyframes`` or ``video`` settings with null values resolved from the preset."""
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
    """The sources of ``preset``; a clear error for an unknown name."""
    try:
        return PRESETS[preset]
    except KeyError:
        raise ValueError(f"unknown model preset {preset!r}; known: {sorted(PRESETS)}") from None


def model_dir(root: str | os.PathLike, preset: str, role: str) -> Path:
    """Local directory of ``role`` in ``preset`` under the models root."""
    if role not in preset_sources(preset):
        raise ValueError(f"preset {preset!r} has no model for role {role!r}")
    return Path(root) / preset / role


#: Sizes of the trainable reconstructors per preset (SPEC §3 for ``paper``); the
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
            "align_epochs": 20,
            "align_batch_size": 32,
            "prior_epochs": 8,
            "prior_batch_size": 32,
        },
    },
}


#: Settings used only at inference (prediction rules), not by training.
INFERENCE_KEYS = ("sampling_steps", "guidance")


def reconstructor_settings(config: dict, name: str) -> dict:
    """Effective settings of reconstructor ``name``: the preset's sizes, overridden by config.

    Config keys set to null take the preset's value; ``architecture`` is merged
    key by key (an unknown architecture key is an error).
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
    return settings
