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
