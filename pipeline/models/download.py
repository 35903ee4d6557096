"""Fetching a preset's models from the Hugging Face hub: the only code that uses the network.

Run by the ``download_models`` rule, e.g. on a cluster login node; every other
rule loads the local copies offline.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.models.presets import model_dir, preset_sources

__all__ = ["download_preset"]


def download_preset(preset: str, root: str | os.PathLike) -> list[Path]:
    """Download every model of ``preset`` into ``{root}/{preset}/{role}``.

    Each role's directory receives the files of its repository (or of its
    subfolder), laid out as on the hub, safetensors weights only.
    """
    from huggingface_hub import snapshot_download

    from pipeline.stores import atomic_output

    written = []
    for role, source in preset_sources(preset).items():
        if source.repo is None:
            raise ValueError(
                f"preset {preset!r} role {role!r} has no hub repository; it is written by the "
                "tiny_models rule"
            )
        target = model_dir(root, preset, role)
        patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
        if source.subfolder:
            patterns = [f"{source.subfolder}/{p}" for p in patterns]
        with atomic_output(target) as tmp:
            snapshot_download(source.repo, local_dir=tmp, allow_patterns=patterns)
            if source.subfolder:  # flatten: the role's directory is the subfolder
                nested = tmp / source.subfolder
                for item in nested.iterdir():
                    item.rename(tmp / item.name)
                nested.rmdir()
        written.append(target)
    return written
