"""``python -m pipeline verify``: read every store back and check it against its record.

Each store is opened as a stage would open it (its metadata digest and chunk counts,
its settings against the current config's), every chunk is read (its CRC-32C), and its
inputs are compared with what it recorded: files by size and modification time, stores
by id. One line per store; the exit status is 1 when any store fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from tqdm import tqdm

from pipeline.stores import verify_store
from pipeline.workflow import RULE_PARAMS_ENV

__all__ = ["find_stores", "load_rule_params", "verify_stores"]

#: where the workflow writes its stores, relative to the working directory
STORE_ROOTS = ("results", "resources")


def load_rule_params(snakefile: Path, configfiles: Sequence[Path]) -> None:
    """Parse the workflow in the current directory with ``configfiles`` (after its own
    config.yaml, as Snakemake does), which puts every rule's params under that config
    into this process' environment (:func:`pipeline.workflow.export_rule_params`).

    Parameters
    ----------
    snakefile : Path
        The workflow's ``Snakefile``.
    configfiles : sequence of Path
        Further configuration files, in order.
    """
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import (
        ConfigSettings,
        DAGSettings,
        OutputSettings,
        ResourceSettings,
    )

    os.environ.pop(RULE_PARAMS_ENV, None)
    with SnakemakeApi(OutputSettings(quiet={Quietness.ALL})) as api:
        workflow = api.workflow(
            resource_settings=ResourceSettings(cores=1),
            config_settings=ConfigSettings(configfiles=[Path(f) for f in configfiles]),
            snakefile=Path(snakefile).resolve(),
            workdir=Path.cwd(),
        )
        workflow.dag(dag_settings=DAGSettings())  # parses the Snakefile


def find_stores(roots: Sequence[str | os.PathLike] = STORE_ROOTS) -> Iterator[Path]:
    """Every Zarr store under ``roots`` (a root may be a store itself), in path order.

    Stores are not descended into, and stages' temporaries (names starting with ``.``)
    are left out.

    Parameters
    ----------
    roots : sequence of path
        Folders to search; default :data:`STORE_ROOTS`.

    Yields
    ------
    Path
        A folder holding a ``zarr.json``.
    """
    for root in map(Path, roots):
        if (root / "zarr.json").is_file():
            yield root
            continue
        for folder, dirs, _ in os.walk(root):
            dirs.sort()
            for name in list(dirs):
                if (Path(folder, name) / "zarr.json").is_file():
                    dirs.remove(name)  # not into the store
                    if not name.startswith("."):  # a stage's temporary
                        yield Path(folder, name)


def verify_stores(paths: Sequence[Path]) -> dict[Path, list[str]]:
    """Store → its problems (empty: all is well), reading every chunk.

    Parameters
    ----------
    paths : sequence of Path
        Store directories, e.g. from :func:`find_stores`.

    Returns
    -------
    dict of Path to list of str
        :func:`pipeline.stores.verify_store` of each store, in the order given.
    """
    return {path: verify_store(path) for path in tqdm(paths, desc="verify", unit="store")}
