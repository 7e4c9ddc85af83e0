"""How well an influence approximation agrees with exact leave-one-out."""

from __future__ import annotations

import numpy as np
from scipy import stats

__all__ = ["compare_influence", "pearson", "spearman", "topk_overlap"]


def _pair(a, b) -> tuple[np.ndarray, np.ndarray]:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"Influence matrices differ in shape: {a.shape} vs {b.shape}.")
  if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
    raise ValueError("Influence matrices must be finite to be compared.")
  return a, b


def pearson(a, b) -> float:
  """Pearson correlation of all entries.

  Args:
    a: an array.
    b: an array of the same shape.

  Returns:
    The correlation (nan when either is constant).

  Raises:
    ValueError: different shapes, or non-finite entries.
  """
  a, b = _pair(a, b)
  if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
    return float("nan")  # undefined for a constant array (scipy would warn)
  return float(stats.pearsonr(a.ravel(), b.ravel()).statistic)


def spearman(a, b) -> float:
  """Spearman rank correlation of all entries (average ranks for ties).

  Args:
    a: an array.
    b: an array of the same shape.

  Returns:
    The rank correlation (nan when either is constant).

  Raises:
    ValueError: different shapes, or non-finite entries.
  """
  a, b = _pair(a, b)
  if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
    return float("nan")
  return float(stats.spearmanr(a.ravel(), b.ravel()).statistic)


def topk_overlap(approx, exact, k: int = 9) -> float:
  """Mean over rows (training points) of |top-k(approx row) & top-k(exact row)| / k.

  k = 9 is the paper's figure: the 9 test images most influenced by a distilled image.

  Args:
    approx: the approximate influence [n_train, n_test] (or one row).
    exact: the exact influence, same shape.
    k: the number of top entries per row.

  Returns:
    The mean overlap fraction in [0, 1].

  Raises:
    ValueError: different shapes, non-finite entries, or k outside [1, n_test].
  """
  a, b = _pair(approx, exact)
  a, b = np.atleast_2d(a), np.atleast_2d(b)
  if not 1 <= k <= a.shape[1]:
    raise ValueError(f"k must be in [1, {a.shape[1]}], got {k}.")
  top_a = np.argpartition(-a, k - 1, axis=1)[:, :k]
  top_b = np.argpartition(-b, k - 1, axis=1)[:, :k]
  return float(np.mean([np.intersect1d(x, y).size / k for x, y in zip(top_a, top_b)]))


def compare_influence(approx, exact, k: int = 9) -> dict[str, float]:
  """Pearson and Spearman over all entries, their means over rows, and top-k overlap.

  Args:
    approx: the approximate influence [n_train, n_test].
    exact: the exact (leave-one-out) influence, same shape.
    k: the top-k of `topk_overlap`.

  Returns:
    {'pearson', 'spearman', 'pearson_row_mean', 'spearman_row_mean', 'top<k>_overlap'}.

  Raises:
    ValueError: as `topk_overlap`.
  """
  a, b = _pair(approx, exact)
  rows = [(pearson(x, y), spearman(x, y)) for x, y in zip(np.atleast_2d(a), np.atleast_2d(b))]
  return {"pearson": pearson(a, b), "spearman": spearman(a, b),
          "pearson_row_mean": float(np.nanmean([r[0] for r in rows])),
          "spearman_row_mean": float(np.nanmean([r[1] for r in rows])),
          f"top{k}_overlap": topk_overlap(a, b, k)}
