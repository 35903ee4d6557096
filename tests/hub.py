"""A Hugging Face cache written by hand, in huggingface_hub's own layout, for offline tests.

``{cache}/{models|datasets}--{org}--{name}/`` holds ``blobs/<sha256>`` (file
contents), ``snapshots/<commit>/<path>`` (relative symlinks to the blobs) and
``refs/main`` (the commit), as ``hf_hub_download`` / ``snapshot_download``
leave them (huggingface_hub ``file_download.py``). With ``HF_HUB_OFFLINE=1``
and ``HF_HUB_CACHE`` pointing here, the real client resolves these repositories
without a network.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_repo(
    cache: Path,
    repo_id: str,
    files: dict[str, Path | bytes],
    *,
    repo_type: str = "model",
    commit: str | None = None,
) -> str:
    """Add ``files`` (repository path → local file or bytes) as ``repo_id``'s main.

    Returns the commit hash (derived from the repository id unless given).
    """
    folder = cache / f"{repo_type}s--{repo_id.replace('/', '--')}"
    commit = commit or hashlib.sha1(repo_id.encode()).hexdigest()
    for relative, content in files.items():
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = folder / "snapshots" / commit / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    return commit


def tree(folder: Path, prefix: str = "") -> dict[str, Path]:
    """Every file under ``folder`` as repository path → file, paths prefixed by ``prefix``."""
    return {
        prefix + p.relative_to(folder).as_posix(): p
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
