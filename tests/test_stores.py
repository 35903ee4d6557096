"""Atomic store creation and inspection."""

import numpy as np
import pytest
import zarr

from pipeline.cli import main
from pipeline.stores import StoreError, atomic_output, create_array, open_store, provenance


def test_failed_stage_leaves_nothing(tmp_path):
    target = tmp_path / "x.zarr"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        group = zarr.open_group(tmp, mode="w")
        create_array(group, "a", data=np.zeros(3), dims=["i"])
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_store_without_provenance_is_refused(tmp_path):
    zarr.open_group(tmp_path / "x.zarr", mode="w")
    with pytest.raises(StoreError, match="no provenance"):
        open_store(tmp_path / "x.zarr")


def test_inspect_cli(tmp_path, capsys):
    with atomic_output(tmp_path / "x.zarr") as tmp:
        group = zarr.open_group(tmp, mode="w")
        create_array(
            group,
            "sub/a",
            data=np.zeros((4, 3), np.float32),
            dims=["sample", "vertex"],
            chunks=(2, 3),
        )
        group.attrs["provenance"] = provenance("test", {"k": 1})
    assert main(["inspect", str(tmp_path / "x.zarr")]) == 0
    out = capsys.readouterr().out
    assert "shape=(4, 3) dims=('sample', 'vertex') dtype=float32 chunks=(2, 3)" in out
    assert "stage=test" in out and "sub/" in out


def test_provenance_records_the_key_packages_at_their_installed_versions():
    from importlib.metadata import version

    from pipeline.environment import KEY_PACKAGES

    packages = provenance("test", {})["packages"]
    assert set(packages) == set(KEY_PACKAGES)  # every key package is installed here
    for name, installed in packages.items():
        assert installed == version(name), name


def test_every_public_name_resolves():
    import pipeline

    for name in pipeline.__all__:
        assert getattr(pipeline, name) is not None, name
