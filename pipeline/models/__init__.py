"""The model layer: presets, offline loaders and the tiny preset's builders."""

from pipeline.models.loading import (
    ModelNotFoundError,
    load_captioner,
    load_clip,
    load_vae,
    resolve_device,
    resolve_dtype,
)
from pipeline.models.presets import PRESETS, ROLES, ModelSource, model_dir, preset_sources

__all__ = [
    "PRESETS",
    "ROLES",
    "ModelNotFoundError",
    "ModelSource",
    "load_captioner",
    "load_clip",
    "load_vae",
    "model_dir",
    "preset_sources",
    "resolve_device",
    "resolve_dtype",
]
