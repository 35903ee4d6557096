"""Zarr stores: atomic creation, arrays with dimension names, provenance, inspection.

Every stage writes its store into a temporary sibling directory and renames it
into place only after the last array is written, so an interrupted or failed
stage never leaves a store that could pass for complete.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import json
import os
import platform
import shutil
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from pipeline.environment import KEY_PACKAGES, installed_versions
from pipeline.errors import OutputError, StoreError

__all__ = [
    "atomic_output",
    "create_array",
    "inspect_store",
    "open_store",
    "provenance",
    "StoreError",
]

# Snakemake marks every directory output with a `.snakemake_timestamp` file, which
# zarr reports as an unknown object whenever it lists a store's members.
warnings.filterwarnings("ignore", message=r"Object at \.snakemake_timestamp is not recognized")

#: Compression choices of :func:`create_array` (None: uncompressed).
#: What the model download writes into each role's folder (repository, revision, commit).
MODEL_SOURCE = "source.json"

_COMPRESSORS = {
    "default": "auto",
    "fast": [BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle")],
    None: None,
}


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On any exception the temporary directory is removed and ``path`` is left
    untouched (absent if it was absent), so no partial output survives.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_orphaned_temporaries(path)
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            yield tmp
        except BaseException:
            _discard(tmp)
            raise
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        os.replace(tmp, path)
    except OSError as exc:
        reason = _WRITE_ERRORS.get(exc.errno)
        if exc.errno == errno.EACCES and str(exc.filename).startswith(str(path.parent)):
            reason = "permission denied"
        if reason is None or isinstance(exc, OutputError):
            raise
        raise OutputError(
            f"cannot write {path}: {reason}; nothing was left there. "
            "Free space or make the folder writable, then rerun."
        ) from exc


def _discard(tmp: Path, quiet_s: float = 0.2, attempts: int = 25) -> None:
    """Remove ``tmp`` until it stays gone: when a write fails, zarr's other writes of the
    same call may still be in flight on its I/O thread and recreate the folder."""
    for _ in range(attempts):
        shutil.rmtree(tmp, ignore_errors=True)
        time.sleep(quiet_s)
        if not tmp.exists():
            return


#: errno of a file system that cannot take an output, and what to tell the user
_WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
}


def _remove_orphaned_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left by processes that were killed (kill -9)."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def create_array(
    group: zarr.Group,
    name: str,
    *,
    dims: Sequence[str],
    data: np.ndarray | None = None,
    shape: Sequence[int] | None = None,
    dtype: Any = None,
    chunks: Sequence[int] | None = None,
    compression: str | None = "default",
    attrs: dict[str, Any] | None = None,
) -> zarr.Array:
    """Create an array with named dimensions, optionally filled with ``data``.

    Parameters
    ----------
    group : zarr.Group
        Parent group.
    name : str
        Array name (may contain ``/`` for nested groups).
    dims : sequence of str
        One name per dimension, stored as Zarr v3 ``dimension_names``.
    data : ndarray, optional
        Initial content; gives shape and dtype.
    compression : {'default', 'fast'} or None
        ``'default'``: Zarr's default (zstd). ``'fast'``: Blosc-zstd level 1,
        which releases the GIL and is several times faster for image data at
        a slightly lower ratio. None: uncompressed, for noisy float data where
        compression costs time and saves almost nothing.
    """
    if data is not None:
        data = np.asarray(data)
        shape, dtype = data.shape, data.dtype
        if data.dtype.kind == "U":
            dtype = str
    if len(dims) != len(shape):
        raise ValueError(f"array {name!r}: {len(dims)} dimension names for shape {shape}")
    if compression not in _COMPRESSORS:
        raise ValueError(f"array {name!r}: unknown compression {compression!r}")
    kwargs: dict[str, Any] = {}
    if compression != "default":
        kwargs["compressors"] = _COMPRESSORS[compression]
    array = group.create_array(
        name,
        shape=tuple(shape),
        dtype=dtype,
        chunks=tuple(chunks) if chunks is not None else "auto",
        dimension_names=list(dims),
        **kwargs,
    )
    if data is not None and data.size:
        array[...] = data
    if attrs:
        array.attrs.update(attrs)
    return array


def _file_record(path: str | os.PathLike) -> dict[str, Any]:
    p = Path(path)
    try:
        stat = p.stat()
    except OSError:
        return {"path": str(p)}
    size = stat.st_size if p.is_file() else None
    record = {
        "path": str(p),
        "size": size,
        "mtime": _dt.datetime.fromtimestamp(stat.st_mtime, _dt.UTC).isoformat(timespec="seconds"),
    }
    if p.is_dir():  # a downloaded model (or a set of them): where each came from
        sources = {
            str(m.parent.relative_to(p)): json.loads(m.read_text())
            for m in sorted([p / MODEL_SOURCE, *p.glob(f"*/{MODEL_SOURCE}")])
            if m.is_file()
        }
        if sources:
            record["models"] = sources
    return record


def _execution() -> dict[str, Any]:
    """The model stage's device, dtype, torch and CUDA versions (empty without torch)."""
    if "torch" not in sys.modules:
        return {}
    from pipeline.models.loading import EXECUTION

    return dict(EXECUTION)


def provenance(
    stage: str, params: dict[str, Any], inputs: Sequence[str | os.PathLike] = ()
) -> dict[str, Any]:
    """Provenance record stored in the ``provenance`` attribute of every store.

    Parameters
    ----------
    stage : str
        Name of the stage (the Snakemake rule) that wrote the store.
    params : dict
        Every configuration value the stage depends on.
    inputs : sequence of path
        Input files, recorded with size and modification time.
    """
    from pipeline import __version__

    return {
        "stage": stage,
        "params": params,
        "inputs": [_file_record(p) for p in inputs],
        "pipeline_version": __version__,
        "packages": installed_versions(KEY_PACKAGES),
        "execution": _execution(),
        "python": platform.python_version(),
        "host": platform.node(),
        "command": sys.argv,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def open_store(path: str | os.PathLike, stage: str | None = None) -> zarr.Group:
    """Open a store read-only; check it is complete and, optionally, which stage wrote it."""
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: store does not exist")
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:  # zarr raises several types for a broken store
        raise StoreError(f"{path}: not a readable Zarr store ({exc})") from exc
    prov = group.attrs.get("provenance")
    if prov is None:
        raise StoreError(f"{path}: no provenance attribute; not written by this pipeline")
    if stage is not None and prov.get("stage") != stage:
        raise StoreError(f"{path}: written by stage {prov.get('stage')!r}, expected {stage!r}")
    return group


def _format_attrs(attrs: dict[str, Any], indent: str, width: int = 100) -> list[str]:
    lines = []
    for key, value in attrs.items():
        text = repr(value)
        if len(text) > width:
            text = text[: width - 3] + "..."
        lines.append(f"{indent}@{key} = {text}")
    return lines


def inspect_store(path: str | os.PathLike, show_provenance: bool = False) -> str:
    """Describe a store: its tree, array shapes, dtypes, chunks, dimensions and attributes."""
    group = open_store(path)
    lines = [f"{path} (zarr v{group.metadata.zarr_format})"]

    def walk(g: zarr.Group, indent: str) -> None:
        attrs = dict(g.attrs)
        prov = attrs.pop("provenance", None)
        lines.extend(_format_attrs(attrs, indent))
        if prov is not None:
            if show_provenance:
                lines.extend(_format_attrs(prov, indent + "  provenance."))
            else:
                lines.append(
                    f"{indent}@provenance: stage={prov.get('stage')} created={prov.get('created')} "
                    f"params={prov.get('params')}"
                )
        for name, member in sorted(g.members(), key=lambda kv: kv[0]):
            if isinstance(member, zarr.Array):
                dims = member.metadata.dimension_names or ()
                lines.append(
                    f"{indent}{name}  shape={member.shape} dims={tuple(dims)} "
                    f"dtype={member.dtype} chunks={member.chunks}"
                )
                lines.extend(_format_attrs(dict(member.attrs), indent + "  "))
            else:
                lines.append(f"{indent}{name}/")
                walk(member, indent + "  ")

    walk(group, "  ")
    return "\n".join(lines)
