"""How far a distillation has come: the plateau test, image drift, the progress figure.

A distilled set counts as distilled only when its accuracy has stopped rising. The
driver evaluates the synthetic set every `config.eval.every` iterations (and at
iteration 0, the initialisation) and keeps the history as a list of records

    {"iteration": t, "protocol_a_mean": a, "protocol_a_std": s, "init_correlation": r}

`plateau_check` reads that history: the run has plateaued at iteration t when its
accuracy at t exceeds the accuracy at the last evaluation at or before
(1 - fraction) * t by less than `min_gain` (the default criterion: less than 0.5 points
over the last quarter of the iterations). `init_correlation` is the mean, over images,
of the Pearson correlation between each image and its own initialisation: 1.0 means
the images have not moved, and a real-initialised set near 1.0 is still a near-copy of
real data, whatever its accuracy.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Sequence

import numpy as np

from ddjax import errors
from ddjax.data.preprocess import Preprocessor

__all__ = ["image_correlation", "load_snapshots", "pick_iterations", "plateau_check"]

SNAPSHOT_DIR = "snapshots"


def image_correlation(images: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """Per-image Pearson correlation between two image sets of one shape.

  Correlation is invariant to a per-image affine map, so the value is the same in pixel
  space and in a mean/std-standardised model space.

  Args:
    images: [N, H, W, C] array.
    reference: [N, H, W, C] array, image i paired with `images[i]`.

  Returns:
    [N] float64 correlations; a constant image gets correlation 0.

  Raises:
    ValueError: the sets differ in shape.
  """
  a = np.asarray(images, np.float64).reshape(len(images), -1)
  b = np.asarray(reference, np.float64).reshape(len(reference), -1)
  if a.shape != b.shape:
    raise ValueError(f"image_correlation needs sets of one shape, got {np.shape(images)} and "
                     f"{np.shape(reference)}.")
  a = a - a.mean(axis=1, keepdims=True)
  b = b - b.mean(axis=1, keepdims=True)
  denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
  return np.where(denom > 0, (a * b).sum(axis=1) / np.where(denom > 0, denom, 1.0), 0.0)


def plateau_check(history: Sequence[dict[str, Any]], min_gain: float, fraction: float = 0.25,
                  min_iterations: int = 0, key: str = "protocol_a_mean") -> dict[str, Any]:
  """Whether the newest evaluation in `history` gained less than `min_gain` over the last
  `fraction` of the iterations.

  Args:
    history: evaluation records in iteration order, each with "iteration" and `key`.
    min_gain: the accuracy gain (a fraction: 0.005 = 0.5 points) below which the run has
      plateaued; <= 0 disables the test.
    fraction: the trailing share of the iterations the gain is measured over.
    min_iterations: no plateau is declared before this iteration.
    key: the accuracy field of the records.

  Returns:
    {"reached": bool, "gain": float | None, "iteration": newest iteration,
     "reference_iteration": the iteration the gain is measured from (None if there is
     no evaluation at or before (1 - fraction) * iteration, or the test is off)}.

  Raises:
    ConfigError: fraction outside (0, 1).
  """
  if not 0.0 < fraction < 1.0:
    raise errors.ConfigError(f"plateau fraction must be in (0, 1), got {fraction}.")
  if not history:
    return {"reached": False, "gain": None, "iteration": None, "reference_iteration": None}
  newest = history[-1]
  t = int(newest["iteration"])
  out = {"reached": False, "gain": None, "iteration": t, "reference_iteration": None}
  if min_gain <= 0:
    return out
  horizon = (1.0 - fraction) * t
  earlier = [h for h in history[:-1] if int(h["iteration"]) <= horizon]
  if not earlier:
    return out
  reference = earlier[-1]
  gain = float(newest[key]) - float(reference[key])
  out.update(gain=gain, reference_iteration=int(reference["iteration"]))
  out["reached"] = bool(t >= min_iterations and gain < min_gain)
  return out


def snapshot_path(workdir: str, iteration: int) -> str:
  """Where the snapshot of `iteration` is kept.

  Args:
    workdir: the run's directory.
    iteration: the iteration.

  Returns:
    <workdir>/snapshots/iteration_<7 digits>.npy.
  """
  return os.path.join(workdir, SNAPSHOT_DIR, f"iteration_{int(iteration):07d}.npy")


def save_snapshot(workdir: str, iteration: int, images: np.ndarray) -> str:
  """Writes the synthetic images at `iteration` (atomically) for the progress figure.

  Args:
    workdir: the run's directory.
    iteration: the iteration.
    images: the synthetic images [N, H, W, C] (saved as float32).

  Returns:
    The snapshot's path.
  """
  path = snapshot_path(workdir, iteration)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp.npy"
  np.save(tmp, np.asarray(images, np.float32))
  os.replace(tmp, path)
  return path


def load_snapshots(workdir: str) -> dict[int, np.ndarray]:
  """Every saved snapshot of a workdir, by iteration.

  Args:
    workdir: the run's directory.

  Returns:
    {iteration: images} ({} when there are none).
  """
  folder = os.path.join(workdir, SNAPSHOT_DIR)
  if not os.path.isdir(folder):
    return {}
  out = {}
  for name in sorted(os.listdir(folder)):
    if name.startswith("iteration_") and name.endswith(".npy") and ".tmp" not in name:
      out[int(name[len("iteration_"):-len(".npy")])] = np.load(os.path.join(folder, name))
  return out


def pick_iterations(iterations: Sequence[int], count: int = 5) -> list[int]:
  """`count` iterations spread over the run, always the first and the last.

  Args:
    iterations: the available iterations (any order, duplicates allowed).
    count: how many to pick.

  Returns:
    At most `count` distinct iterations, ascending (all of them if there are fewer).
  """
  its = sorted(set(int(i) for i in iterations))
  if len(its) <= count:
    return its
  idx = np.unique(np.round(np.linspace(0, len(its) - 1, count)).astype(int))
  return [its[i] for i in idx]


def save_progress_figure(path: str, history: Sequence[dict[str, Any]],
                         snapshots: dict[int, np.ndarray], labels: np.ndarray,
                         preprocessor: Preprocessor, title: str = "",
                         baseline: tuple[float, float] | None = None,
                         per_class: int = 1) -> str:
  """Accuracy against iteration (top) and the images at a few iterations (rows below).

  Args:
    path: the PNG to write.
    history: the driver's evaluation records.
    snapshots: images by iteration, in the state's order (that of `labels`).
    labels: [N] or [N, C] labels of the synthetic set.
    preprocessor: maps model-space images back to [0, 1] pixels.
    title: the figure title.
    baseline: optional (mean, std) of a reference accuracy (random real), drawn flat.
    per_class: images shown per class in each row.

  Returns:
    path.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  hard = np.asarray(labels) if np.ndim(labels) == 1 else np.argmax(labels, -1)
  classes = np.unique(hard)
  shown = [i for c in classes for i in np.flatnonzero(hard == c)[:per_class]]
  rows = pick_iterations(list(snapshots), 5)
  fig = plt.figure(figsize=(max(6.0, 0.55 * len(shown) + 1.5), 3.0 + 0.65 * len(rows)))
  outer = fig.add_gridspec(2, 1, height_ratios=[4.5, 1.0 * len(rows)], hspace=0.3)
  grid = outer[1].subgridspec(len(rows), len(shown), hspace=0.08, wspace=0.05)
  ax = fig.add_subplot(outer[0])
  its = np.array([h["iteration"] for h in history], float)
  mean = np.array([h["protocol_a_mean"] for h in history], float)
  std = np.array([h.get("protocol_a_std", 0.0) for h in history], float)
  ax.errorbar(its, mean, yerr=std, marker="o", ms=3, capsize=2, label="distilled set")
  if baseline is not None:
    ax.axhline(baseline[0], color="gray", ls="--", label=f"random real {baseline[0]:.3f}")
  if any("init_correlation" in h for h in history):
    ax2 = ax.twinx()
    corr = [h.get("init_correlation", np.nan) for h in history]
    ax2.plot(its, corr, color="tab:red", alpha=0.5, lw=1)
    ax2.set_ylabel("corr. with init", color="tab:red")
    ax2.set_ylim(0, 1.02)
  ax.set_xlabel("iteration")
  ax.set_ylabel("protocol-A test accuracy")
  ax.legend(loc="lower right", fontsize=8)
  ax.set_title(title, fontsize=10)
  for r, it in enumerate(rows):
    pixels = np.clip(np.asarray(preprocessor.invert(np.asarray(snapshots[it], np.float32))), 0, 1)
    for j, i in enumerate(shown):
      a = fig.add_subplot(grid[r, j])
      im = pixels[i]
      a.imshow(im[..., 0] if im.shape[-1] == 1 else im, cmap="gray", vmin=0, vmax=1)
      a.set_xticks([])
      a.set_yticks([])
      if j == 0:
        a.set_ylabel(f"{it}", rotation=0, ha="right", va="center", fontsize=8)
  fig.savefig(path, dpi=90, bbox_inches="tight")
  plt.close(fig)
  logging.info("Wrote %s", path)
  return path
