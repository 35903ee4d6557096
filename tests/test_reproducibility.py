"""Two clean runs of the deterministic stages give the same stores, bit for bit.

The second run starts in a new workdir from the end-to-end run's raw files and tiny
models (copied with their times, so that neither is remade) and runs preprocessing,
voxel selection, alignment, frame extraction and the four feature caches again. Every
array and every attribute must be equal, except what describes the run: the wall
times, and the provenance record's id, times, host, command and input mtimes (and the
metadata digest, which covers them). Training and
generation are checked in tests/test_reconstructors.py and tests/test_generation.py
(same seed on the CPU, same weights and videos).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.conftest import snakemake

DETERMINISTIC_RULES = (
    "preprocess",
    "select_voxels",
    "align",
    "extract_frames",
    "cache_vae",
    "cache_clip_images",
    "cache_captions",
    "cache_clip_text",
)
#: provenance fields that describe the run rather than the result (``id``: each store's own)
RUN_FIELDS = ("created", "host", "command", "inputs", "id")
#: attributes that do: the stages' wall times
RUN_ATTRS = ("timing",)


def _stores(workdir: Path) -> list[Path]:
    subject = sorted(workdir.glob("results/subject*/*.zarr"))
    return (
        subject
        + sorted(workdir.glob("results/frames/*.zarr"))
        + sorted(workdir.glob("results/cache/*.zarr"))
    )


@pytest.fixture(scope="module")
def second_run(early_stores, tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("second_run")
    for part in ("resources/demo", "resources/models/tiny"):
        shutil.copytree(early_stores / part, workdir / part)
    targets = [str(p.relative_to(early_stores)) for p in _stores(early_stores)]
    snakemake(workdir, *targets, "--allowed-rules", *DETERMINISTIC_RULES)
    return workdir


def _attrs(node) -> dict:
    attrs = {k: v for k, v in node.attrs.items() if k not in RUN_ATTRS}
    if "integrity" in attrs:  # the chunk counts; the metadata digest covers the provenance
        attrs["integrity"] = attrs["integrity"]["chunks"]
    provenance = attrs.pop("provenance", None)
    if provenance is not None:
        attrs["provenance"] = {k: v for k, v in provenance.items() if k not in RUN_FIELDS}
    return attrs


def _compare(first: zarr.Group, second: zarr.Group, where: str) -> None:
    assert _attrs(first) == _attrs(second), where
    assert sorted(first.keys()) == sorted(second.keys()), where
    for name, node in first.members():
        other = second[name]
        if isinstance(node, zarr.Group):
            _compare(node, other, f"{where}/{name}")
            continue
        a, b = node[...], other[...]
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}/{name}"
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), f"{where}/{name} differs"
        assert _attrs(node) == _attrs(other), f"{where}/{name}"


def test_deterministic_stages_are_bitwise_identical_across_two_clean_runs(early_stores, second_run):
    stores = _stores(early_stores)
    assert len(stores) >= 3 + 4
    assert [p.relative_to(early_stores) for p in stores] == [
        p.relative_to(second_run) for p in _stores(second_run)
    ]
    for store in stores:
        relative = store.relative_to(early_stores)
        again = zarr.open_group(second_run / relative, mode="r")
        _compare(zarr.open_group(store, mode="r"), again, str(relative))


def test_the_comparison_sees_a_one_bit_change(early_stores, tmp_path):
    """The control: flipping the lowest bit of one value makes the stores differ."""
    store = early_stores / "results/subject1/selection.zarr"
    copy = tmp_path / "selection.zarr"
    shutil.copytree(store, copy)
    group = zarr.open_group(copy, mode="r+")
    name = next(n for n, a in group.arrays() if a.dtype.kind == "f")
    values = group[name][...]
    flat = values.reshape(-1).view(np.uint32 if values.dtype.itemsize == 4 else np.uint64)
    flat[0] ^= 1
    group[name][...] = values
    with pytest.raises(AssertionError, match=f"{name} differs"):
        _compare(zarr.open_group(store, mode="r"), zarr.open_group(copy, mode="r"), "selection")
