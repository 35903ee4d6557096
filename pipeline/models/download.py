"""Fetching a preset's models from the Hugging Face hub: the only code that uses the network.

Run by the ``download_models``, ``download_generation_models`` and
``download_classifiers`` rules, e.g. on a cluster login node; every other rule
loads the local copies offline.

Each role names the files of its repository that its loader reads, as the
repository really holds them (:class:`~pipeline.models.presets.ModelSource`).
They are resolved through the Hugging Face cache (``HF_HOME`` /
``HF_HUB_CACHE``): fetched into it when the hub is reachable, read from it
when ``HF_HUB_OFFLINE=1``, as on cluster nodes that share a cache. From the
cache each role is laid out in ``{models.root}/{preset}[-set]/{role}``:
pickled weights (``.bin``, ``.ckpt``, ``.pth``) are converted to safetensors
with ``torch.load(weights_only=True)``, everything else is linked (or copied).

Every role is built on its own, atomically, in a staging folder beside the
set (``{root}/.download/{set}/{role}``): a role that fails costs only itself,
the others are kept, and a rerun rebuilds only the roles not yet complete.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import shutil
from pathlib import Path

from pipeline.errors import DataError, PipelineError
from pipeline.models.presets import (
    CLASSIFIERS,
    GENERATION,
    PRESETS,
    ModelSource,
    classifier_dir,
    generation_dir,
    generation_roles,
)
from pipeline.stores import MODEL_SOURCE, atomic_output

__all__ = [
    "SETS",
    "DownloadError",
    "convert_checkpoint",
    "download_set",
    "fetch_role",
    "layout_role",
]

log = logging.getLogger(__name__)

#: Pickle formats converted to safetensors when a role is laid out.
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pth", ".pt")
#: A converted pickle's name where the loader expects another one (diffusers and
#: transformers read these names with ``use_safetensors=True``).
CONVERTED_NAMES = {
    "diffusion_pytorch_model.bin": "diffusion_pytorch_model.safetensors",
    "pytorch_model.bin": "model.safetensors",
}


class DownloadError(PipelineError, RuntimeError):
    """One or more roles could not be fetched or laid out."""


def convert_checkpoint(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """A pickled checkpoint → safetensors, unpickling tensors only (``weights_only=True``).

    Lightning checkpoints keep the weights under ``state_dict``; that mapping
    is written. Anything that is not a tensor mapping is refused. The file is
    memory-mapped, so an 18 GB checkpoint does not need 18 GB of RAM; tensors
    that share storage with another (tied weights) are written as copies.

    Parameters
    ----------
    source : path
        A pickled checkpoint (``.bin``, ``.ckpt``, ``.pth``, ``.pt``).
    target : path
        The ``.safetensors`` file to write.

    Raises
    ------
    DataError
        If the file does not hold a mapping of tensors (directly or under ``state_dict``).
    """
    import torch
    from safetensors.torch import save_file

    from pipeline.models.loading import load_tensors

    data = load_tensors(source, mmap=True)
    state = data.get("state_dict", data) if isinstance(data, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{source}: not a checkpoint of tensors")
    storages: dict[int, int] = {}
    for tensor in state.values():
        key = tensor.untyped_storage().data_ptr()
        storages[key] = storages.get(key, 0) + 1
    tensors = {}
    for name, tensor in state.items():
        shared = storages[tensor.untyped_storage().data_ptr()] > 1
        tensors[name] = tensor.clone() if shared else tensor.contiguous()
    save_file(tensors, str(target))


def fetch_role(source: ModelSource) -> Path:
    """The repository snapshot in the Hugging Face cache holding ``source.files``.

    Fetches the files into the cache when the hub is reachable; with
    ``HF_HUB_OFFLINE=1`` finds them there. Only the role's files are fetched.

    Parameters
    ----------
    source : ModelSource
        Repository, revision, repository type and file patterns of one role.

    Returns
    -------
    Path
        The snapshot folder (named after the commit) in the Hugging Face cache.

    Raises
    ------
    DataError
        If the files can be neither fetched nor found in the cache.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = snapshot_download(
            source.repo,
            revision=source.revision,
            repo_type=source.repo_type,
            allow_patterns=list(source.files),
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as exc:
        where = f"{source.repo}@{source.revision or 'main'} ({source.repo_type})"
        raise DataError(f"{where}: not fetched ({type(exc).__name__}: {exc})") from exc
    return Path(path)


def _laid_out_name(relative: str, source: ModelSource) -> str:
    """Where a repository file goes in the role folder: the role's subfolder prefix
    removed, pickles renamed to their safetensors name."""
    if source.subfolder:
        relative = relative.removeprefix(f"{source.subfolder}/")
    path = Path(relative)
    if path.suffix not in PICKLE_SUFFIXES:
        return relative
    if source.converted_name:
        return source.converted_name
    name = CONVERTED_NAMES.get(path.name, path.with_suffix(".safetensors").name)
    return str(path.with_name(name))


def layout_role(role: str, source: ModelSource, snapshot: str | os.PathLike, target: Path) -> None:
    """Lay out ``source.files`` of a cached ``snapshot`` in the (new) folder ``target``.

    Every pattern must match at least one file: a repository that does not
    hold what the loader reads is an error that names the pattern.

    Parameters
    ----------
    role : str
        The role's name, for messages.
    source : ModelSource
        Its repository and file patterns.
    snapshot : path
        The cached snapshot, as :func:`fetch_role` returns it.
    target : Path
        The role folder to create; pickles are converted to safetensors, other files
        hard-linked (or copied), and ``source.json`` written last.

    Raises
    ------
    DataError
        If a pattern matches no file, or a pickle holds no tensor mapping.
    """
    snapshot = Path(snapshot)
    present = sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())
    chosen: list[str] = []
    for pattern in source.files:
        matches = [p for p in present if fnmatch.fnmatchcase(p, pattern)]
        if not matches:
            raise DataError(
                f"{source.repo}@{source.revision or 'main'}: no file matches {pattern!r} "
                f"(role {role!r}; the snapshot holds {present[:12]})"
            )
        chosen += [m for m in matches if m not in chosen]
    target.mkdir(parents=True)
    for relative in chosen:
        out = target / _laid_out_name(relative, source)
        out.parent.mkdir(parents=True, exist_ok=True)
        file = (snapshot / relative).resolve()
        if Path(relative).suffix in PICKLE_SUFFIXES:
            log.info("%s: converting %s to %s", role, relative, out.name)
            convert_checkpoint(file, out)
        else:
            try:
                os.link(file, out)  # the cache's blob, without a second copy
            except OSError:
                shutil.copyfile(file, out)
    # written last: where the files came from (stores that read the model record it)
    record = {
        "repo": source.repo,
        "repo_type": source.repo_type,
        "revision": source.revision or "main",
        "commit": snapshot.name,
        "patterns": list(source.files),
        "files": chosen,
    }
    (target / MODEL_SOURCE).write_text(json.dumps(record, indent=2) + "\n")


def _role_is_complete(folder: Path, source: ModelSource) -> bool:
    manifest = folder / MODEL_SOURCE
    if not manifest.is_file():
        return False
    record = json.loads(manifest.read_text())
    wanted = (source.repo, source.revision or "main", list(source.files))
    return (record["repo"], record["revision"], record.get("patterns")) == wanted


def _hub_sources(preset: str, sources: dict[str, ModelSource]) -> dict[str, ModelSource]:
    for role, source in sources.items():
        if source.repo is None:
            raise ValueError(
                f"preset {preset!r} role {role!r} has no hub repository; it is written by the "
                "tiny model rules"
            )
    return sources


#: The model sets: name → (registry of a preset's roles, directory of a preset's set).
SETS = {
    "encoders": (PRESETS, None),
    "generation": (GENERATION, generation_dir),
    "classifiers": (CLASSIFIERS, classifier_dir),
}


def _set_dir(name: str, preset: str, root: str | os.PathLike) -> Path:
    directory = SETS[name][1]
    return Path(root) / preset if directory is None else directory(root, preset)


def download_set(
    name: str, preset: str, root: str | os.PathLike, generator: str | None = None
) -> list[Path]:
    """Fetch ``preset``'s models of set ``name`` (``encoders``, ``generation``,
    ``classifiers``) into their set folder, one role folder each.

    For ``generation``, only the video roles and ``generator``'s own roles.
    Roles are built one by one in a staging folder; a failed role is reported
    after the others are built, and the set folder appears only when every
    role is complete.

    Parameters
    ----------
    name : {'encoders', 'generation', 'classifiers'}
        A key of :data:`SETS`.
    preset : str
        A model preset with hub repositories (not ``tiny``).
    root : path
        ``models.root``.
    generator : str, optional
        The keyframe generator; required for ``generation``.

    Returns
    -------
    list of Path
        The role folders in the set folder.

    Raises
    ------
    ValueError
        If ``generator`` is missing for ``generation``, or a role has no hub repository.
    DownloadError
        If any role failed (the others are kept for a rerun).
    """
    sources = SETS[name][0][preset]
    if name == "generation":
        if generator is None:
            raise ValueError("the generation set needs the keyframe generator")
        sources = {r: sources[r] for r in generation_roles(preset, generator)}
    sources = _hub_sources(preset, sources)
    target = _set_dir(name, preset, root)
    staging = Path(root) / ".download" / target.name
    failed = {}
    for role, source in sources.items():
        folder = staging / role
        if _role_is_complete(folder, source):
            log.info("%s: complete from an earlier run", role)
            continue
        try:
            snapshot = fetch_role(source)
            with atomic_output(folder) as tmp:
                layout_role(role, source, snapshot, tmp)
        except PipelineError as exc:
            log.error("%s: %s", role, exc)
            failed[role] = str(exc)
            continue
        log.info("%s: %s laid out in %s", role, source.repo, folder)
    if failed:
        raise DownloadError(
            f"{len(failed)} of {len(sources)} roles failed ({'; '.join(failed.values())}); "
            f"the others are kept in {staging} and a rerun fetches only the failed ones"
        )
    with atomic_output(target) as tmp:
        tmp.mkdir(parents=True)
        for role in sources:
            (staging / role).rename(tmp / role)
    shutil.rmtree(staging, ignore_errors=True)
    if staging.parent.is_dir() and not any(staging.parent.iterdir()):
        staging.parent.rmdir()
    return [target / role for role in sources]
