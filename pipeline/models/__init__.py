"""The model layer: presets, offline loaders and the tiny preset's builders.

The public names below are loaded lazily (PEP 562): the Snakefile reads the presets
(:mod:`pipeline.models.presets`, the standard library only) while it builds the DAG,
and must not pay for torch and the model libraries that the loaders import.
"""

from importlib import import_module

#: Public name → module that defines it.
_EXPORTS = {
    "ModelNotFoundError": "loading",
    "load_captioner": "loading",
    "load_clip": "loading",
    "load_vae": "loading",
    "resolve_device": "loading",
    "resolve_dtype": "loading",
    "PRESETS": "presets",
    "ROLES": "presets",
    "ModelSource": "presets",
    "model_dir": "presets",
    "preset_sources": "presets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline.models' has no attribute {name!r}")
    return getattr(import_module(f"pipeline.models.{module}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
