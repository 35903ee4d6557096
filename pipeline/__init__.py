"""NeuroClips as a reproducible pipeline: readers, preprocessing, stores and stages.

Every Snakemake rule is one call into this package; everything here is
importable and testable without Snakemake. The public names below are loaded
lazily (PEP 562), so a stage pays only for the modules it uses — every rule
starts a fresh interpreter.
"""

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("neuroclips-pipeline")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0+source"

#: Public name → module that defines it.
_EXPORTS = {
    "align_subject": "alignment",
    "shift_volumes": "alignment",
    "clip_features": "analysis",
    "lag_profile": "analysis",
    "lag_profile_from_stores": "analysis",
    "DataError": "errors",
    "PipelineError": "errors",
    "Dataset": "datasets",
    "discover": "datasets",
    "dataset_format": "datasets",
    "read_cortex_bold": "io.cifti",
    "read_stimulus_info": "io.stimulus",
    "ConfigError": "errors",
    "default_config": "config",
    "validate_config": "config",
    "DemoSettings": "demo",
    "canonical_hrf": "demo",
    "expected_dataset": "demo",
    "generate_demo": "demo",
    "extract_frames": "frames",
    "frame_schedule": "frames",
    "detrend_zscore": "preprocess",
    "preprocess_subject": "preprocess",
    "pearson_columns": "selection",
    "reliability_ttest": "selection",
    "select_vertices": "selection",
    "StoreError": "errors",
    "atomic_output": "stores",
    "create_array": "stores",
    "inspect_store": "stores",
    "open_store": "stores",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
    return getattr(import_module(f"pipeline.{module}"), name)


def __dir__() -> list[str]:
    return sorted(__all__)
