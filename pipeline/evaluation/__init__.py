"""Evaluation: the field's metrics, computed the same way for any system's videos."""
