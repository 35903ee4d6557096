"""Zarr stores: atomic creation, arrays with dimension names, provenance, inspection.

Every stage writes its store into a temporary sibling directory and renames it
into place only after the last array is written, so an interrupted or failed
stage never leaves a store that could pass for complete.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from pipeline.environment import KEY_PACKAGES, installed_versions
from pipeline.errors import OutputError, StoreError
from pipeline.workflow import current_rule_params

__all__ = [
    "atomic_output",
    "create_array",
    "inspect_store",
    "open_store",
    "provenance",
    "StoreError",
    "verify_store",
]

# Snakemake marks every directory output with a `.snakemake_timestamp` file, which
# zarr reports as an unknown object whenever it lists a store's members.
warnings.filterwarnings("ignore", message=r"Object at \.snakemake_timestamp is not recognized")

#: Compression choices of :func:`create_array` (None: uncompressed).
#: What the model download writes into each role's folder (repository, revision, commit).
MODEL_SOURCE = "source.json"

#: Every chunk ends with a CRC-32C of its bytes (zarr v3's ``crc32c`` codec), so a chunk
#: changed on disk raises on read instead of returning garbage. ``default`` is Zarr's own
#: default compressor (zstd level 0).
_COMPRESSORS = {
    "default": [ZstdCodec(level=0), Crc32cCodec()],
    "fast": [BloscCodec(cname="zstd", clevel=1, shuffle="noshuffle"), Crc32cCodec()],
    None: [Crc32cCodec()],
}

#: Root attribute with what :func:`open_store` checks: a digest of the store's metadata
#: documents (attributes and array definitions) and the chunk count of every array.
INTEGRITY = "integrity"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success.

    On any exception the temporary directory is removed and ``path`` is left
    untouched (absent if it was absent), so no partial output survives. Every Zarr
    store at or directly inside the temporary path is sealed (:func:`seal_store`)
    before the rename.

    Parameters
    ----------
    path : path
        The final output (a store or a folder of stores); an existing one is replaced.

    Yields
    ------
    Path
        ``.{name}.tmp-{pid}`` beside ``path``, not yet created: write the output there.

    Raises
    ------
    OutputError
        If the disk is full, the quota exceeded, or the folder read-only or not writable.
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
        for store in _stores_in(tmp):
            seal_store(store)
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
        Initial content; gives shape and dtype (unicode strings are stored as ``str``).
    shape : sequence of int, optional
        Array shape when ``data`` is not given.
    dtype : dtype, optional
        Element type when ``data`` is not given.
    chunks : sequence of int, optional
        Chunk shape; default Zarr's automatic chunking.
    compression : {'default', 'fast'} or None
        ``'default'``: Zarr's default (zstd). ``'fast'``: Blosc-zstd level 1,
        which releases the GIL and is several times faster for image data at
        a slightly lower ratio. None: uncompressed, for noisy float data where
        compression costs time and saves almost nothing. Every choice appends a
        CRC-32C checksum to each chunk.
    attrs : dict, optional
        Attributes of the array.

    Returns
    -------
    zarr.Array
        The new array (filled with ``data`` when given).

    Raises
    ------
    ValueError
        If ``dims`` does not name every dimension or ``compression`` is unknown.
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
    array = group.create_array(
        name,
        shape=tuple(shape),
        dtype=dtype,
        chunks=tuple(chunks) if chunks is not None else "auto",
        dimension_names=list(dims),
        compressors=_COMPRESSORS[compression],
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
    store_id = _store_id(p)
    if store_id is not None:  # another store: which one, so that a remade one shows
        record["store_id"] = store_id
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

    Under the workflow the record also holds ``rule_params``: the params of the stage's
    rule under the config of the run (:func:`pipeline.workflow.rule_params`), which
    :func:`open_store` compares with the current config's.

    Parameters
    ----------
    stage : str
        Name of the stage (the Snakemake rule) that wrote the store.
    params : dict
        Every configuration value the stage depends on.
    inputs : sequence of path
        Input files, recorded with size and modification time (stores with their id).

    Returns
    -------
    dict
        ``stage``, a new random ``id``, ``params``, ``inputs``, pipeline and package
        versions, execution settings, Python version, host, command line and
        ``created`` (UTC, ISO 8601); JSON-serialisable.
    """
    from pipeline import __version__

    record = {
        "stage": stage,
        "id": uuid.uuid4().hex,
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
    rule = current_rule_params(stage)
    if rule is not None:
        record["rule_params"] = rule
    return record


def open_store(path: str | os.PathLike, stage: str | None = None) -> zarr.Group:
    """Open a store read-only and check it before anything reads it.

    Checked: it is complete and this pipeline's (its provenance), optionally which stage
    wrote it, that its metadata and chunk set are as sealed when it was written
    (:func:`seal_store`), and, under the workflow, that it was made with the current
    config's params of its rule. Each chunk's CRC-32C is checked when it is read.

    Parameters
    ----------
    path : path
        The store's directory.
    stage : str, optional
        The stage (rule) that must have written it.

    Returns
    -------
    zarr.Group
        The store's root group, read-only.

    Raises
    ------
    StoreError
        If the store is missing, unreadable, not this pipeline's, written by another
        stage, changed since it was sealed, or made under other rule params.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"{path}: store does not exist")
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:  # zarr raises several types for a broken store
        reason = " ".join(str(exc).split()) or type(exc).__name__
        metadata = next((path / n for n in ("zarr.json", ".zgroup") if (path / n).is_file()), None)
        if metadata is None:
            raise StoreError(f"{path}: not a readable Zarr store ({reason})") from exc
        raise StoreError(
            f"{metadata}: unreadable Zarr metadata ({reason}); "
            f"the store {path} is damaged, delete it and rerun the stage that wrote it"
        ) from exc
    prov = group.attrs.get("provenance")
    if prov is None:
        raise StoreError(f"{path}: no provenance attribute; not written by this pipeline")
    if stage is not None and prov.get("stage") != stage:
        raise StoreError(f"{path}: written by stage {prov.get('stage')!r}, expected {stage!r}")
    problem = _integrity_problem(path, group) or _params_problem(path, prov)
    if problem:
        raise StoreError(problem)
    OPENED.append(path)
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
    """Describe a store: its tree, array shapes, dtypes, chunks, dimensions and attributes.

    Parameters
    ----------
    path : path
        The store's directory.
    show_provenance : bool
        Show every field of the provenance record rather than a one-line summary.

    Returns
    -------
    str
        One line per group, array and attribute.

    Raises
    ------
    StoreError
        The store is missing, damaged or not this pipeline's. Where the metadata of one
        of its groups or arrays cannot be read, the message names that ``zarr.json``.
    """
    root = Path(path)

    def reason(exc: BaseException) -> str:
        text = " ".join(str(exc).split())
        if isinstance(exc, KeyError):
            return f"missing key {text}"
        return text or type(exc).__name__

    def broken_metadata() -> StoreError | None:
        # zarr's errors name neither the node nor its file: open each node on its own
        if not root.is_dir():
            return None
        for metadata in sorted(root.rglob("zarr.json")):
            try:
                zarr.open(metadata.parent, mode="r")
            except Exception as exc:  # zarr raises several types for broken metadata
                return StoreError(
                    f"{metadata}: unreadable Zarr metadata ({reason(exc)}); "
                    f"the store {path} is damaged, delete it and rerun the stage that wrote it"
                )
        return None

    try:
        group = open_store(root)
    except StoreError as exc:
        broken = broken_metadata()
        if broken is None:
            raise
        raise broken from exc
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
        try:
            members = sorted(g.members(), key=lambda kv: kv[0])
        except Exception as exc:  # zarr raises several types for broken metadata
            raise broken_metadata() or StoreError(f"{root / g.path}: {reason(exc)}") from exc
        # zarr leaves out, with only a warning, a member whose metadata lacks a key
        listed = {name for name, _ in members}
        folder = root / g.path
        for child in sorted(folder.iterdir()) if folder.is_dir() else []:
            if child.name not in listed and (child / "zarr.json").is_file():
                raise broken_metadata() or StoreError(f"{child}: not readable as a Zarr node")
        for name, member in members:
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


# -- integrity: what a store was when it was written, and whether it still is ------------

#: Stores opened by this process (:func:`open_store`), to name the one whose chunk fails
#: its checksum when an array read raises.
OPENED: list[Path] = []

#: Root attribute with the warnings the stage logged while it wrote the store.
WARNINGS_ATTR = "warnings"

#: The warnings this process logged (:class:`WarningCollector`), recorded in the stores
#: it seals.
WARNINGS: list[str] = []


class WarningCollector(logging.Handler):
    """Logging handler that keeps every warning (and ``warnings.warn``, once captured by
    logging) in :data:`WARNINGS`, so that the store a stage writes records them."""

    def __init__(self):
        super().__init__(level=logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        message = " ".join(record.getMessage().split())
        if message not in WARNINGS:
            WARNINGS.append(message)


def _stores_in(path: Path) -> list[Path]:
    """``path`` if it is a Zarr store, else the stores directly inside it (a stage's
    output folder, e.g. the videos' ``frames.zarr``)."""
    if (path / "zarr.json").is_file():
        return [path]
    if not path.is_dir():
        return []
    return sorted(p for p in path.iterdir() if (p / "zarr.json").is_file())


def _store_id(path: Path) -> str | None:
    """The provenance id of the store at ``path`` (None: not a store of this pipeline)."""
    try:
        root = json.loads((path / "zarr.json").read_text())
        return root["attributes"]["provenance"]["id"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _members(group: zarr.Group) -> list[tuple[str, Any]]:
    return sorted(group.members(max_depth=None), key=lambda kv: kv[0])


def _metadata_digest(path: Path, group: zarr.Group) -> str:
    """SHA-256 of every metadata document of the store (the root's without its
    integrity record), in canonical JSON: attributes, shapes, dtypes, codecs."""
    digest = hashlib.sha256()
    for name in ["", *(name for name, _ in _members(group))]:
        metadata = path / name / "zarr.json"
        try:
            document = json.loads(metadata.read_text())
        except ValueError as exc:
            raise ValueError(f"{metadata}: {exc}") from exc
        if not name:
            document.get("attributes", {}).pop(INTEGRITY, None)
        digest.update(f"{name}\0{json.dumps(document, sort_keys=True)}\n".encode())
    return digest.hexdigest()


def _chunk_counts(group: zarr.Group) -> dict[str, int]:
    """Array path → number of chunks present in the store."""
    return {
        name: member.nchunks_initialized
        for name, member in _members(group)
        if isinstance(member, zarr.Array)
    }


def seal_store(path: str | os.PathLike) -> None:
    """Record the stage's warnings and the store's metadata digest and chunk counts.

    :func:`atomic_output` seals every store it moves into place; :func:`open_store`
    then refuses a store whose attributes or array definitions were edited, or whose
    chunks were deleted, since. A chunk's content is checked by its CRC-32C on read.
    """
    path = Path(path)
    group = zarr.open_group(path, mode="r+")
    group.attrs[WARNINGS_ATTR] = list(WARNINGS)
    group.attrs[INTEGRITY] = {
        "metadata_sha256": _metadata_digest(path, group),
        "chunks": _chunk_counts(group),
    }


def _integrity_problem(path: Path, group: zarr.Group) -> str | None:
    """What is wrong with a sealed store's metadata or chunk set (None: nothing, or the
    store was not sealed)."""
    record = group.attrs.get(INTEGRITY)
    if record is None:
        return None
    try:
        digest = _metadata_digest(path, group)
        counts = _chunk_counts(group)
    except (OSError, ValueError) as exc:
        return f"{path}: damaged metadata ({exc}); delete the store and rerun its stage"
    if digest != record.get("metadata_sha256"):
        return (
            f"{path}: its attributes or array definitions were changed after it was written "
            "(metadata digest differs); delete the store and rerun its stage"
        )
    for name, expected in record.get("chunks", {}).items():
        found = counts.get(name)
        if found != expected:
            return (
                f"{path}: array {name!r} has {found or 0} of its {expected} chunks; chunks "
                "were deleted after it was written. Delete the store and rerun its stage"
            )
    return None


def _params_problem(path: Path, prov: dict[str, Any]) -> str | None:
    """Where the store's recorded rule params differ from the current config's (under
    the workflow only: outside it there is no current config to compare with)."""
    stage = prov.get("stage")
    current = current_rule_params(stage)
    recorded = prov.get("rule_params")
    if current is None or recorded is None:
        return None
    changed = [key for key in current if key in recorded and recorded[key] != current[key]]
    if not changed:
        return None
    differences = "; ".join(
        f"{key} = {recorded[key]!r} there, {current[key]!r} in the config" for key in changed
    )
    return (
        f"{path} was made under other settings than the current config ({differences}), "
        "and Snakemake did not remake it (its record in .snakemake/ is missing, e.g. the "
        f"store was copied in, or reruns were restricted). Remake it: snakemake TARGET "
        f"--forcerun {stage}"
    )


def _chunk_problems(array: zarr.Array) -> Iterator[str]:
    """Read every chunk of ``array``; yield the chunks that fail their checksum."""
    grid = [range(0, size, chunk) for size, chunk in zip(array.shape, array.chunks, strict=True)]
    for starts in np.ndindex(*(len(axis) for axis in grid)):
        region = tuple(
            slice(axis[i], axis[i] + chunk)
            for axis, i, chunk in zip(grid, starts, array.chunks, strict=True)
        )
        try:
            array[region]
        except ValueError as exc:  # the crc32c codec: stored and computed checksums differ
            yield f"chunk {starts} of array {array.path!r} fails its checksum ({exc})"


def corrupt_chunk(path: str | os.PathLike) -> str | None:
    """The first chunk of the store at ``path`` that fails its checksum (None: none)."""
    group = zarr.open_group(path, mode="r")
    for _, member in _members(group):
        if isinstance(member, zarr.Array):
            for problem in _chunk_problems(member):
                return problem
    return None


def _input_problems(prov: dict[str, Any]) -> Iterator[str]:
    """Inputs that are gone, or changed since the store was made from them."""
    for record in prov.get("inputs", []):
        if not isinstance(record, dict) or "path" not in record:
            continue
        input_path = Path(record["path"])
        if not input_path.exists():
            yield f"its input {input_path} is missing"
            continue
        if "store_id" in record:
            if _store_id(input_path) != record["store_id"]:
                yield f"its input {input_path} was remade after it"
            continue
        if record.get("size") is None:  # a folder (models): its content is not recorded
            continue
        now = _file_record(input_path)
        if (now.get("size"), now.get("mtime")) != (record["size"], record.get("mtime")):
            yield (
                f"its input {input_path} changed (size {record['size']} → {now.get('size')}, "
                f"modified {record.get('mtime')} → {now.get('mtime')})"
            )


def verify_store(path: str | os.PathLike) -> list[str]:
    """Everything wrong with the store at ``path``: unreadable, edited or incomplete
    metadata, chunks missing or failing their checksums, settings other than the
    current config's (under the workflow), inputs gone or changed. Empty: all is well.

    Every chunk is read, so this costs a full read of the store.

    Parameters
    ----------
    path : path
        The store's directory.

    Returns
    -------
    list of str
        One message per problem, each starting with the store's path.
    """
    path = Path(path)
    try:
        group = open_store(path)
    except StoreError as exc:
        return [str(exc)]
    problems = []
    if group.attrs.get(INTEGRITY) is None:
        problems.append(f"{path}: no integrity record (written by an older version)")
    for _, member in _members(group):
        if isinstance(member, zarr.Array):
            problems += [f"{path}: {p}" for p in _chunk_problems(member)]
    problems += [f"{path}: {p}" for p in _input_problems(group.attrs["provenance"])]
    return problems
