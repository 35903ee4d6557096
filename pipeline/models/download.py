"""Fetching a preset's models from the Hugging Face hub: the only code that uses the network.

Run by the ``download_models`` and ``download_generation_models`` rules, e.g. on
a cluster login node; every other rule loads the local copies offline.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.models.presets import (
    CLASSIFIERS,
    GENERATION,
    ModelSource,
    classifier_dir,
    generation_dir,
    preset_sources,
)

__all__ = ["SETS", "convert_checkpoint", "download_preset", "download_set"]

#: Name of a single-file source's weights after conversion, per role.
SINGLE_FILE_NAMES = {"sdxl_unclip": "unclip6.safetensors", "domain_adapter": "lora.safetensors"}


def convert_checkpoint(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """A pickled checkpoint → safetensors, unpickling tensors only (``weights_only=True``).

    Lightning checkpoints keep the weights under ``state_dict``; that mapping
    is written. Anything that is not a tensor mapping is refused.
    """
    import torch
    from safetensors.torch import save_file

    from pipeline.models.loading import load_tensors

    data = load_tensors(source)
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{source}: not a checkpoint of tensors")
    save_file({k: v.contiguous() for k, v in state.items()}, str(target))


def _fetch(source: ModelSource, role: str, target: Path) -> None:
    from huggingface_hub import hf_hub_download, snapshot_download

    from pipeline.stores import atomic_output

    with atomic_output(target) as tmp:
        if source.filename:
            tmp.mkdir(parents=True)
            path = hf_hub_download(
                source.repo, source.filename, repo_type=source.repo_type, local_dir=tmp
            )
            name = SINGLE_FILE_NAMES.get(role, Path(source.filename).stem + ".safetensors")
            if path.endswith(".safetensors"):
                Path(path).rename(tmp / name)
            else:
                convert_checkpoint(path, tmp / name)
                Path(path).unlink()
            return
        patterns = ["*.json", "*.safetensors", "*.txt", "*.model"]
        if source.subfolder:
            patterns = [f"{source.subfolder}/{p}" for p in patterns]
        snapshot_download(
            source.repo, local_dir=tmp, allow_patterns=patterns, repo_type=source.repo_type
        )
        if source.subfolder:  # flatten: the role's directory is the subfolder
            nested = tmp / source.subfolder
            for item in nested.iterdir():
                item.rename(tmp / item.name)
            nested.rmdir()


def _hub_sources(preset: str, sources: dict[str, ModelSource]) -> dict[str, ModelSource]:
    for role, source in sources.items():
        if source.repo is None:
            raise ValueError(
                f"preset {preset!r} role {role!r} has no hub repository; it is written by the "
                "tiny model rules"
            )
    return sources


def download_preset(preset: str, root: str | os.PathLike) -> list[Path]:
    """Download every encoder model of ``preset`` into ``{root}/{preset}/{role}``.

    Each role's directory receives the files of its repository (or of its
    subfolder), laid out as on the hub, safetensors weights only.
    """
    written = []
    for role, source in _hub_sources(preset, preset_sources(preset)).items():
        target = Path(root) / preset / role
        _fetch(source, role, target)
        written.append(target)
    return written


#: The model sets besides the encoders: name → (registry, directory of a preset's set).
SETS = {"generation": (GENERATION, generation_dir), "classifiers": (CLASSIFIERS, classifier_dir)}


def download_set(name: str, preset: str, root: str | os.PathLike) -> list[Path]:
    """Download ``preset``'s models of set ``name`` (``generation``, ``classifiers``) into
    ``{root}/{preset}-{name}/{role}``."""
    registry, directory = SETS[name]
    written = []
    for role, source in _hub_sources(preset, registry[preset]).items():
        target = directory(root, preset) / role
        _fetch(source, role, target)
        written.append(target)
    return written
