"""Per-subject summaries of per-clip metrics: mean, spread and a bootstrap confidence interval."""

from __future__ import annotations

import numpy as np

__all__ = ["summarize"]


def summarize(
    values, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Mean, standard deviation, standard error and a percentile-bootstrap CI of the mean.

    The interval comes from :func:`scipy.stats.bootstrap` (``n_resamples``
    resamples of the clips, seeded). NaNs are an error: a metric that could
    not be computed for a clip must say so before it is averaged.
    """
    from scipy.stats import bootstrap

    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"need a non-empty 1-D array of per-clip values, got shape {x.shape}")
    if np.isnan(x).any():
        raise ValueError(f"{int(np.isnan(x).sum())} of {len(x)} values are NaN")
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    if len(x) > 1 and np.ptp(x) > 0:
        result = bootstrap(
            (x,),
            np.mean,
            confidence_level=confidence,
            n_resamples=n_resamples,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    else:  # one clip, or all equal: no spread to resample
        low = high = mean
    return {
        "n": int(len(x)),
        "mean": mean,
        "std": std,
        "sem": std / np.sqrt(len(x)),
        "ci_low": low,
        "ci_high": high,
        "confidence": confidence,
    }
