"""NeuroClips as a reproducible pipeline: readers, preprocessing, stores and stages.

Every Snakemake rule is one call into this package; everything here is
importable and testable without Snakemake.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("neuroclips-pipeline")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0+source"

from pipeline.alignment import align_subject, shift_volumes
from pipeline.analysis import clip_features, lag_profile, lag_profile_from_stores
from pipeline.cc2017 import (
    DataError,
    Dataset,
    discover_dataset,
    read_cortex_bold,
    read_stimulus_info,
    run_timing,
)
from pipeline.config import ConfigError, default_config, validate_config
from pipeline.demo import DemoSettings, canonical_hrf, expected_dataset, generate_demo
from pipeline.frames import extract_frames, frame_schedule
from pipeline.preprocess import detrend_zscore, preprocess_subject
from pipeline.selection import pearson_columns, reliability_ttest, select_vertices
from pipeline.stores import StoreError, atomic_output, create_array, inspect_store, open_store

__all__ = [
    "__version__",
    "ConfigError",
    "DataError",
    "Dataset",
    "DemoSettings",
    "StoreError",
    "align_subject",
    "atomic_output",
    "canonical_hrf",
    "clip_features",
    "create_array",
    "default_config",
    "detrend_zscore",
    "discover_dataset",
    "expected_dataset",
    "extract_frames",
    "frame_schedule",
    "generate_demo",
    "inspect_store",
    "lag_profile",
    "lag_profile_from_stores",
    "open_store",
    "pearson_columns",
    "preprocess_subject",
    "read_cortex_bold",
    "read_stimulus_info",
    "reliability_ttest",
    "run_timing",
    "select_vertices",
    "shift_volumes",
    "validate_config",
]
