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

__all__ = ["PRESETS", "ROLES", "ModelSource", "model_dir", "preset_sources"]

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
    """

    library: str
    repo: str | None = None
    subfolder: str | None = None


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
            # the official train_PR.py mixes the latent targets only after computing the
            # loss (and never the fMRI), so its mixup has no effect: none here
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
