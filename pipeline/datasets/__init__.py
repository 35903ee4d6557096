"""Dataset formats: the one place that knows how a dataset lays out its files.

Every format implements :class:`~pipeline.datasets.base.DatasetFormat`: it finds
the subjects, runs and stimulus segments under a root and says which segment
each run presents, when, and with which role. The rest of the pipeline reads
only the :class:`~pipeline.datasets.base.Dataset` it returns and the
per-subject plan derived from it. ``dataset.format`` picks the format.
"""

from __future__ import annotations

import os
from typing import Any

from pipeline.datasets.base import (
    Dataset,
    DatasetFormat,
    Presentation,
    Run,
    Segment,
    natural_key,
)
from pipeline.datasets.cc2017 import CC2017
from pipeline.datasets.hcp7t_movie import HCP7TMovie
from pipeline.errors import ConfigError

__all__ = [
    "FORMATS",
    "Dataset",
    "DatasetFormat",
    "Presentation",
    "Run",
    "Segment",
    "dataset_format",
    "discover",
    "natural_key",
]

#: ``dataset.format`` → the format (the schema's enum lists these names).
FORMATS: dict[str, DatasetFormat] = {fmt.name: fmt for fmt in (CC2017(), HCP7TMovie())}


def dataset_format(name: str) -> DatasetFormat:
    """The format registered as ``name``.

    Parameters
    ----------
    name : str
        A ``dataset.format`` value.

    Returns
    -------
    DatasetFormat

    Raises
    ------
    ConfigError
        If no format has that name, listing those that exist.
    """
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(
            f"config key 'dataset.format': unknown format {name!r}; one of {sorted(FORMATS)}"
        ) from None


def discover(
    settings: dict[str, Any],
    root: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
) -> Dataset:
    """Discover the dataset that the ``dataset`` config section describes.

    Parameters
    ----------
    settings : dict
        The validated ``dataset`` section (its ``format`` picks the reader).
    root : path, optional
        Overrides ``settings['root']``.
    cache : path, optional
        A folder where a format may keep what it read from the stimuli, so that the
        next discovery is quick (the workflow's is ``.snakemake/neuroclips``).

    Returns
    -------
    Dataset
    """
    fmt = dataset_format(settings["format"])
    return fmt.discover(settings["root"] if root is None else root, settings, cache)
