"""Per-subject summaries of per-clip metrics (mean, spread, a bootstrap confidence interval)
and paired tests between two systems scored on the same clips."""

from __future__ import annotations

import numpy as np

__all__ = ["paired_test", "summarize"]


def _bootstrap_mean(x: np.ndarray, confidence: float, n_resamples: int, seed: int):
    """:func:`scipy.stats.bootstrap` of the mean of ``x`` over its clips: percentile, seeded."""
    from scipy.stats import bootstrap

    return bootstrap(
        (x,),
        np.mean,
        confidence_level=confidence,
        n_resamples=n_resamples,
        method="percentile",
        rng=np.random.default_rng(seed),
    )


def summarize(
    values, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Mean, standard deviation, standard error and a percentile-bootstrap CI of the mean.

    The interval comes from :func:`scipy.stats.bootstrap` (``n_resamples``
    resamples of the clips, seeded). NaNs are an error: a metric that could
    not be computed for a clip must say so before it is averaged.

    Parameters
    ----------
    values : array-like of shape (n_clips,)
        Per-clip values of one metric.
    confidence : float
        The interval's confidence level, in (0, 1).
    n_resamples : int
        Bootstrap resamples.
    seed : int
        Seed of the resampling.

    Returns
    -------
    dict of str to float
        ``n``, ``mean``, ``std`` (ddof 1; 0 for one clip), ``sem``, ``ci_low``,
        ``ci_high`` and ``confidence``, in the metric's unit.

    Raises
    ------
    ValueError
        When ``values`` is not a non-empty 1-D array, or holds NaN.
    """
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or len(x) == 0:
        raise ValueError(f"need a non-empty 1-D array of per-clip values, got shape {x.shape}")
    if np.isnan(x).any():
        raise ValueError(f"{int(np.isnan(x).sum())} of {len(x)} values are NaN")
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if len(x) > 1 else 0.0
    if len(x) > 1 and np.ptp(x) > 0:
        result = _bootstrap_mean(x, confidence, n_resamples, seed)
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


def paired_test(
    a, b, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Paired tests of two systems' per-clip scores on the same clips (``a[i]``, ``b[i]``).

    * a paired bootstrap of the mean difference (:func:`scipy.stats.bootstrap`
      resamples the clips' differences, seeded): its percentile CI and the
      two-sided p-value 2 · min(P*(d ≤ 0), P*(d ≥ 0)), each counted with one
      added to numerator and denominator, so it is never 0;
    * the Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`, two-sided;
      clips with equal scores are dropped, as its default does). Two systems
      equal on every clip have p = 1.

    Mind-Animator's significance script instead runs the Wilcoxon test on 100
    bootstrap means of each system (``Evaluation_Metrics/bootstrap_with_wilcoxon.py``
    at ReedOnePeck/Mind-Animator@a5adbf3b), whose p-value falls with the number
    of resamples; the test here is on the clips.

    Parameters
    ----------
    a, b : array-like of shape (n_clips,)
        The two systems' per-clip scores; ``n_clips >= 2``.
    confidence : float
        The interval's confidence level, in (0, 1).
    n_resamples : int
        Bootstrap resamples.
    seed : int
        Seed of the resampling.

    Returns
    -------
    dict of str to float
        ``n``, ``mean_a``, ``mean_b``, ``difference`` (mean of a - b), ``ci_low``,
        ``ci_high``, ``confidence``, ``p_bootstrap``, ``wilcoxon_statistic`` and
        ``p_wilcoxon``.

    Raises
    ------
    ValueError
        When ``a`` and ``b`` are not paired 1-D arrays of at least two clips, or hold NaN.
    """
    from scipy.stats import wilcoxon

    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(f"need two paired 1-D arrays of >= 2 clips: {x.shape}, {y.shape}")
    if np.isnan(x).any() or np.isnan(y).any():
        raise ValueError("paired scores contain NaN")
    d = x - y
    if np.ptp(d) > 0:
        result = _bootstrap_mean(d, confidence, n_resamples, seed)
        distribution = result.bootstrap_distribution
        low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    else:  # the same difference on every clip: every resample has it
        distribution = np.full(n_resamples, d[0])
        low = high = float(d[0])
    tail = min((distribution <= 0).sum(), (distribution >= 0).sum())
    p_bootstrap = min(1.0, 2 * (tail + 1) / (len(distribution) + 1))
    if np.any(d != 0):
        test = wilcoxon(x, y)
        statistic, p_wilcoxon = float(test.statistic), float(test.pvalue)
    else:
        statistic, p_wilcoxon = 0.0, 1.0
    return {
        "n": int(len(d)),
        "mean_a": float(x.mean()),
        "mean_b": float(y.mean()),
        "difference": float(d.mean()),
        "ci_low": low,
        "ci_high": high,
        "confidence": confidence,
        "p_bootstrap": float(p_bootstrap),
        "wilcoxon_statistic": statistic,
        "p_wilcoxon": p_wilcoxon,
    }
