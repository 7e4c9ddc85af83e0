"""The portable distilled-set file (.npz) that every analysis reads.

Contents: class-sorted `images` [N, H, W, C] in the model (normalised or ZCA) space,
`labels` ([N] int or [N, C] soft), the preprocessor that maps [0, 1] pixels to that
space (so analyses can un-normalise for display and pixel statistics), and metadata
(method, dataset, ipc, num_classes, learned lr, the full config as JSON).
`load_distilled` validates all of it and raises `DistilledSetError` naming the problem.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any

import numpy as np

from ddjax import errors, integrity
from ddjax.data.preprocess import Preprocessor

__all__ = ["DistilledSet", "DistilledSetError", "load_distilled", "save_distilled"]

FORMAT_VERSION = 2


class DistilledSetError(ValueError, errors.DdjaxError):
  """A distilled-set file is missing, malformed, or does not fit the analysis."""


@dataclasses.dataclass(frozen=True)
class DistilledSet:
  """A distilled set with what is needed to use it (the contents of the .npz file).

  Attributes:
    images: [N, H, W, C] images in model space, class-sorted.
    labels: [N] int labels, or [N, C] soft labels whose argmax is the row's class.
    method: the distillation method.
    dataset: the dataset it was distilled from.
    ipc: images per class.
    num_classes: the class count.
    preprocessor: maps [0, 1] pixels to the images' space (`invert` maps back).
    learned_lr: the learned training lr (MTT), else None.
    config: the distillation config, as a dict.
  """

  images: np.ndarray
  labels: np.ndarray
  method: str
  dataset: str
  ipc: int
  num_classes: int
  preprocessor: Preprocessor
  learned_lr: float | None = None
  config: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def hard_labels(self) -> np.ndarray:
    """[N] int labels (the argmax of soft labels)."""
    return self.labels if self.labels.ndim == 1 else np.argmax(self.labels, -1).astype(np.int32)


def save_distilled(path: str, dset: DistilledSet) -> str:
  """Writes atomically (a temp file, then rename), so a crash never leaves half a file.

  Args:
    path: the .npz file to write (its directory is created).
    dset: the set; validated first.

  Returns:
    `path`.

  Raises:
    DistilledSetError: the set is malformed (shapes, NaN, labels, counts, order).
  """
  _validate(dset, path)
  meta = {"method": dset.method, "dataset": dset.dataset, "ipc": int(dset.ipc),
          "num_classes": int(dset.num_classes), "learned_lr": dset.learned_lr,
          "config": dset.config, "format_version": FORMAT_VERSION}
  arrays = dict(images=np.asarray(dset.images, np.float32), labels=np.asarray(dset.labels),
                **dset.preprocessor.to_arrays())
  meta = json.loads(json.dumps(meta, default=str))  # as load_distilled will read it
  meta["checksum"] = _checksum(arrays, meta)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}.npz"  # per process: concurrent writers never share it
  np.savez(tmp, metadata=np.asarray(json.dumps(meta, default=str)), **arrays)
  os.replace(tmp, path)
  return path


def _checksum(arrays: dict[str, np.ndarray], meta: dict) -> str:
  """sha256 over every array but the metadata, and the metadata without its checksum."""
  return integrity.arrays_digest({k: v for k, v in arrays.items() if k != "metadata"},
                                 extra={k: v for k, v in meta.items() if k != "checksum"})


def _as_float32(array: np.ndarray, what: str, path: str) -> np.ndarray:
  """float16/float64 -> float32 (logged for float16, whose conversion is exact)."""
  if not np.issubdtype(array.dtype, np.floating):
    raise DistilledSetError(f"{path}: {what} must be floating point, got dtype {array.dtype}.")
  if array.dtype == np.float16:
    logging.warning("%s: %s are float16; converted to float32 (exactly), the dtype ddjax "
                    "computes in.", path, what)
  return array.astype(np.float32)


def _validate(dset: DistilledSet, path: str) -> None:
  images, labels = np.asarray(dset.images), np.asarray(dset.labels)
  if images.ndim != 4:
    raise DistilledSetError(f"{path}: images must be [N, H, W, C], got shape {images.shape}.")
  n = images.shape[0]
  if labels.shape[:1] != (n,) or labels.ndim not in (1, 2):
    raise DistilledSetError(f"{path}: labels must be [N] or [N, C] with N={n}, got shape {labels.shape}.")
  if not np.all(np.isfinite(images)):
    raise DistilledSetError(f"{path}: images contain NaN or infinite values "
                            f"({int(np.sum(~np.isfinite(images)))} entries).")
  if labels.ndim == 2:
    if labels.shape[1] != dset.num_classes:
      raise DistilledSetError(f"{path}: soft labels have {labels.shape[1]} classes, metadata says {dset.num_classes}.")
    if not np.all(np.isfinite(labels)):
      raise DistilledSetError(f"{path}: labels contain NaN or infinite values.")
  elif not np.issubdtype(labels.dtype, np.integer):
    raise DistilledSetError(f"{path}: hard labels must be integers, got {labels.dtype}.")
  hard = dset.hard_labels
  if hard.size and (hard.min() < 0 or hard.max() >= dset.num_classes):
    raise DistilledSetError(f"{path}: labels outside [0, {dset.num_classes}).")
  counts = np.bincount(hard, minlength=dset.num_classes)
  if dset.ipc and not np.all(counts == dset.ipc):
    raise DistilledSetError(f"{path}: expected {dset.ipc} images per class for {dset.num_classes} "
                            f"classes, found per-class counts {counts.tolist()}.")
  if np.any(np.diff(hard) < 0):
    raise DistilledSetError(f"{path}: images are not sorted by class.")
  if dset.learned_lr is not None and not np.isfinite(dset.learned_lr):
    raise DistilledSetError(f"{path}: learned lr is {dset.learned_lr}.")


def load_distilled(path: str, num_classes: int | None = None,
                   image_shape: tuple[int, ...] | None = None) -> DistilledSet:
  """Loads and validates a distilled set; optionally checks it fits a dataset.

  Args:
    path: the .npz file.
    num_classes: if given, the class count the set must have.
    image_shape: if given, the (H, W, C) its images must have.

  Returns:
    The DistilledSet (float32 images).

  Raises:
    DistilledSetError: the file is missing, unreadable, fails its checksum, is
      malformed, or does not fit `num_classes` / `image_shape`.
  """
  if not os.path.exists(path):
    raise DistilledSetError(f"Distilled-set file not found: {path}")
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:
    raise DistilledSetError(f"{path} is not a readable distilled-set .npz file: {e}") from e
  missing = [k for k in ("images", "labels", "metadata", "preprocess_kind") if k not in arrays]
  if missing:
    raise DistilledSetError(f"{path} is missing {missing}; is it a ddjax distilled set?")
  try:
    meta = json.loads(str(arrays["metadata"]))
  except json.JSONDecodeError as e:
    raise DistilledSetError(f"{path}: metadata is not valid JSON: {e}") from e
  if not isinstance(meta, dict):
    raise DistilledSetError(f"{path}: metadata is not a JSON object.")
  if meta.get("checksum") is not None:
    actual = _checksum(arrays, meta)
    if actual != meta["checksum"]:
      raise DistilledSetError(
          f"{path} failed its checksum: its arrays or metadata changed after it was saved "
          f"(saved {str(meta['checksum'])[:19]}..., read {actual[:19]}...). Re-create it, or "
          "re-save an intended edit with ddjax.distill.save_distilled.")
  images, labels = arrays["images"], arrays["labels"]
  if images.dtype != np.float32:
    images = _as_float32(images, "images", path)
  if labels.ndim == 2 and labels.dtype != np.float32:
    labels = _as_float32(labels, "soft labels", path)
  try:
    dset = DistilledSet(images=images, labels=labels, method=meta["method"],
                        dataset=meta["dataset"], ipc=int(meta["ipc"]),
                        num_classes=int(meta["num_classes"]),
                        preprocessor=Preprocessor.from_arrays(arrays),
                        learned_lr=meta.get("learned_lr"), config=meta.get("config", {}))
  except KeyError as e:
    raise DistilledSetError(f"{path}: metadata lacks {e}.") from e
  _validate(dset, path)
  if num_classes is not None and dset.num_classes != num_classes:
    raise DistilledSetError(f"{path} has {dset.num_classes} classes; the dataset has {num_classes}.")
  if image_shape is not None and tuple(dset.images.shape[1:]) != tuple(image_shape):
    raise DistilledSetError(f"{path} holds images of shape {dset.images.shape[1:]}; "
                            f"the dataset's are {tuple(image_shape)}.")
  return dset
