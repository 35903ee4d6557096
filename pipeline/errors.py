"""The pipeline's exceptions: bad input gets one of these, with the file or key named."""

__all__ = ["ConfigError", "DataError", "OutputError", "PipelineError", "StoreError"]


class PipelineError(Exception):
    """Base of the errors the command line reports as one clear line."""


class ConfigError(PipelineError, ValueError):
    """A configuration value is missing, unknown, mistyped or out of range."""


class DataError(PipelineError, ValueError):
    """A raw input file is missing, unreadable or inconsistent with the others."""


class StoreError(PipelineError, RuntimeError):
    """A store is missing, incomplete or not a store this pipeline wrote."""


class OutputError(PipelineError, OSError):
    """An output cannot be written: the disk is full, or its folder is read-only."""
