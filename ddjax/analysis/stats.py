"""The statistics the analyses report, from scipy where scipy has them.

Each returns plain floats (JSON-ready): means with Student-t intervals over seeds,
Welch's test of two samples and Benjamini-Hochberg q-values. Pearson and Spearman
correlations are `ddjax.influence.pearson` / `spearman` (scipy's, with shape checks).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

__all__ = ["finite_or_none", "mean_ci", "welch", "benjamini_hochberg"]


def finite_or_none(x) -> float | None:
  """A JSON-safe float: None for NaN, inf or a missing value.

  Args:
    x: a number (Python or numpy scalar, or a 0-d array), or None.

  Returns:
    `float(x)`, or None when x is None or not finite.
  """
  if x is None:
    return None
  x = float(x)
  return x if np.isfinite(x) else None


def mean_ci(values, confidence: float = 0.95) -> dict[str, float]:
  """Mean, std and a Student-t confidence interval of the mean (e.g. over seeds).

  Args:
    values: the samples (any shape; flattened).
    confidence: the interval's coverage.

  Returns:
    {"mean", "std" (ddof 1), "ci_low", "ci_high", "n"}; a single sample has std 0 and
    a zero-width interval.
  """
  values = np.asarray(values, np.float64).ravel()
  n = values.size
  mean = float(values.mean())
  std = float(values.std(ddof=1)) if n > 1 else 0.0
  half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / np.sqrt(n)) if n > 1 else 0.0
  return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def welch(a, b, confidence: float = 0.95) -> dict[str, Any]:
  """Welch's unequal-variance t test of mean(a) - mean(b), with its confidence interval.

  Args:
    a, b: the two samples (at least 2 each).
    confidence: the interval's coverage.

  Returns:
    {"difference", "ci_low", "ci_high", "t", "df", "p"} (two-sided). When both samples
    are constant the difference is exact: a zero-width interval, t = inf (or 0 if the
    means are equal), df = n_a + n_b - 2.
  """
  a = np.asarray(a, np.float64).ravel()
  b = np.asarray(b, np.float64).ravel()
  diff = float(a.mean() - b.mean())
  if a.var(ddof=1) + b.var(ddof=1) > 0:
    result = stats.ttest_ind(a, b, equal_var=False)
    ci = result.confidence_interval(confidence)
    return {"difference": diff, "ci_low": float(ci.low), "ci_high": float(ci.high),
            "t": float(result.statistic), "df": float(result.df), "p": float(result.pvalue)}
  return {"difference": diff, "ci_low": diff, "ci_high": diff,
          "t": float("inf") if diff else 0.0, "df": float(a.size + b.size - 2),
          "p": 0.0 if diff else 1.0}


def benjamini_hochberg(pvalues, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
  """The Benjamini-Hochberg step-up procedure (scipy's `false_discovery_control`).

  Args:
    pvalues: [m] p-values in [0, 1].
    alpha: the false discovery rate.

  Returns:
    (rejected [m] bool, q-values [m]): q_(i) = min_{j >= i} p_(j) m / j over the
    ascending p-values, capped at 1; rejected where q <= alpha.

  Raises:
    ValueError: if a p-value is not a number in [0, 1].
  """
  p = np.asarray(pvalues, np.float64).ravel()
  if p.size == 0:
    return np.zeros(0, bool), np.zeros(0)
  if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
    raise ValueError("p-values must lie in [0, 1].")
  q = np.asarray(stats.false_discovery_control(p, method="bh"), np.float64)
  return q <= alpha, q
