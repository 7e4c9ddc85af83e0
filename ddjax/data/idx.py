"""Fashion-MNIST from the original idx files (offline), else from TFDS.

    ds = load_fashion_mnist()                     # Debian's files, else TFDS
    ds = load_fashion_mnist("/path/with/idx")     # any directory with the four files

The idx format (LeCun's MNIST files, reused by Fashion-MNIST): a big-endian header of
two zero bytes, a type byte (0x08 = uint8) and the number of dimensions, then one
big-endian uint32 per dimension, then the values in C order. Images are
``0x00000803 n 28 28``, labels ``0x00000801 n``. Files may be gzipped (``NAME.gz``, as
Debian's `dataset-fashion-mnist` ships them under `/usr/share/datasets/fashion-mnist/`)
or plain (``NAME``).

Where `fashion_mnist` comes from (`load_fashion_mnist`):

1. `data_dir`, if given and it holds the four idx files;
2. else the Debian directory, if it holds them;
3. else TFDS (`load_tfds`, which downloads when there is a network; a `data_dir` without
   idx files is passed on as the TFDS data directory).

The arrays are those of TFDS `fashion_mnist` (same name, images [n, 28, 28, 1] mapped to
float32 [0, 1] like every ddjax loader, int32 labels, the same ten class names), in the
idx files' order; TFDS stores its examples in its own shuffled order, so only the order
differs.
"""

from __future__ import annotations

import gzip
import logging
import os
import struct
import zlib

import numpy as np

from ddjax.data.datasets import DatasetError, ImageDataset, _validate_arrays, load_tfds

__all__ = ["DEBIAN_DIR", "FILES", "find_file", "load_fashion_mnist", "load_idx_dir", "read_idx",
           "write_idx"]

NAME = "fashion_mnist"
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
# split -> (images file, labels file), without the optional .gz
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FULL_COUNTS = {"train": 60000, "test": 10000}  # the published dataset (checked on the Debian files)
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
# TFDS fashion_mnist's label names, in label order.
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
UINT8 = 0x08
GET_IT = ("get it with `make fashion-mnist` (apt-get install dataset-fashion-mnist) or online "
          "through TFDS, or pass --config.data_dir=DIR holding "
          + ", ".join(f"{f}[.gz]" for pair in FILES.values() for f in pair))


def find_file(directory: str, stem: str) -> str | None:
  """The path of `stem` or `stem.gz` in `directory` (plain first), or None.

  Args:
    directory: where to look.
    stem: the file name without the optional .gz.

  Returns:
    The path of the file found, or None.
  """
  for name in (stem, stem + ".gz"):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  return None


def idx_files(directory: str) -> tuple[dict[str, str], list[str]]:
  """The four Fashion-MNIST idx files (`FILES`) that `directory` holds.

  Args:
    directory: where to look.

  Returns:
    ({stem: path} of the files found, [stems missing]).
  """
  found, missing = {}, []
  for pair in FILES.values():
    for stem in pair:
      path = find_file(directory, stem)
      if path is None:
        missing.append(stem)
      else:
        found[stem] = path
  return found, missing


def read_idx(path: str, ndim: int) -> np.ndarray:
  """Reads one uint8 idx file (gzipped if its name ends in .gz), validating its header.

  Args:
    path: the file.
    ndim: the number of dimensions the file must declare (3 for images, 1 for labels).

  Returns:
    A uint8 array of the declared shape.

  Raises:
    DatasetError: the file is unreadable, has another magic number, or its payload does
      not hold exactly the declared number of values.
  """
  try:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
      raw = f.read()
  except (OSError, EOFError, zlib.error) as e:  # gzip raises BadGzipFile (an OSError) or EOFError
    raise DatasetError(f"Cannot read idx file {path}: {e}") from e
  expected_magic = (UINT8 << 8) | ndim
  if len(raw) < 4 + 4 * ndim:
    raise DatasetError(f"{path} is too short ({len(raw)} bytes) for an idx header with {ndim} "
                       "dimensions.")
  (magic,) = struct.unpack(">I", raw[:4])
  if magic != expected_magic:
    raise DatasetError(f"{path}: magic number {magic:#010x}, expected {expected_magic:#010x} "
                       f"(uint8 with {ndim} dimensions); not an idx file of this kind.")
  dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
  payload = memoryview(raw)[4 + 4 * ndim:]
  if len(payload) != int(np.prod(dims, dtype=np.int64)):
    raise DatasetError(f"{path}: header declares shape {dims} ({int(np.prod(dims))} values) but "
                       f"the file holds {len(payload)}; truncated or corrupt.")
  return np.frombuffer(payload, np.uint8).reshape(dims)


def write_idx(path: str, array: np.ndarray) -> str:
  """Writes a uint8 array as an idx file (gzipped if `path` ends in .gz); returns `path`.

  Args:
    path: the file to write.
    array: uint8 values, any number of dimensions.

  Returns:
    `path`.

  Raises:
    ValueError: `array` is not uint8.
  """
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise ValueError(f"write_idx writes uint8 arrays only, got {array.dtype}.")
  header = (struct.pack(">I", (UINT8 << 8) | array.ndim)
            + struct.pack(f">{array.ndim}I", *array.shape))
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array).tobytes())
  return path


def read_split(images_path: str, labels_path: str, expected_count: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
  """One split's uint8 images [n, 28, 28] and labels [n], cross-checked.

  Args:
    images_path: the idx3 images file.
    labels_path: the idx1 labels file.
    expected_count: if given, the number of examples the split must have.

  Returns:
    (images, labels) as read.

  Raises:
    DatasetError: wrong image size, counts that disagree (or differ from
      `expected_count`), or labels outside [0, 10).
  """
  images = read_idx(images_path, 3)
  labels = read_idx(labels_path, 1)
  if images.shape[1:] != IMAGE_SHAPE:
    raise DatasetError(f"{images_path}: images are {images.shape[1:]}, Fashion-MNIST's are "
                       f"{IMAGE_SHAPE}.")
  if images.shape[0] != labels.shape[0]:
    raise DatasetError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                       f"{labels.shape[0]} labels.")
  if expected_count is not None and images.shape[0] != expected_count:
    raise DatasetError(f"{images_path} holds {images.shape[0]} examples; the full Fashion-MNIST "
                       f"split has {expected_count}. Reinstall it ({GET_IT}).")
  if labels.size and labels.max() >= NUM_CLASSES:
    raise DatasetError(f"{labels_path} has label {int(labels.max())}; Fashion-MNIST labels are "
                       f"0..{NUM_CLASSES - 1}.")
  return images, labels


def load_idx_dir(directory: str, full: bool = False) -> ImageDataset:
  """`fashion_mnist` from a directory holding the four idx files (plain or .gz).

  Args:
    directory: where the files are.
    full: also require the published 60,000 / 10,000 split sizes (the Debian files).

  Returns:
    The ImageDataset (float32 [n, 28, 28, 1] in [0, 1], int32 labels).

  Raises:
    DatasetError: a file is missing or fails validation (the message names it).
  """
  found, missing = idx_files(directory)
  if missing:
    raise DatasetError(f"{directory} lacks the Fashion-MNIST idx file(s) "
                       f"{', '.join(m + '[.gz]' for m in missing)}; {GET_IT}.")
  splits = {}
  for split, (images_stem, labels_stem) in FILES.items():
    splits[split] = read_split(found[images_stem], found[labels_stem],
                               FULL_COUNTS[split] if full else None)
  (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
  x_train, y_train, x_test, y_test, num_classes = _validate_arrays(
      NAME, x_train, y_train, x_test, y_test, NUM_CLASSES)
  logging.info("Fashion-MNIST from idx files in %s: %d train, %d test", directory,
               len(y_train), len(y_test))
  return ImageDataset(NAME, x_train, y_train, x_test, y_test, num_classes, CLASS_NAMES)


def load_fashion_mnist(data_dir: str | None = None, download: bool = True,
                       debian_dir: str | None = None) -> ImageDataset:
  """`fashion_mnist`: idx files in `data_dir`, else Debian's, else TFDS.

  Args:
    data_dir: a directory with the four idx files, or a TFDS data directory, or None.
    download: let TFDS download and prepare the dataset if it is not prepared.
    debian_dir: where `dataset-fashion-mnist` installs the files (default DEBIAN_DIR).

  Returns:
    The ImageDataset.

  Raises:
    DatasetError: in one line, naming where it looked and how to get the files.
  """
  if data_dir:
    data_dir = os.path.expanduser(data_dir)
    found, missing = idx_files(data_dir)
    if found:  # an idx directory, complete or not (load_idx_dir names what is missing)
      return load_idx_dir(data_dir)
    where = f"no idx files in {data_dir}"
  else:
    debian_dir = debian_dir or DEBIAN_DIR
    found, _ = idx_files(debian_dir)
    if found:
      return load_idx_dir(debian_dir, full=True)
    where = f"no idx files in {debian_dir}"
  try:
    return load_tfds(NAME, data_dir=data_dir, download=download)
  except DatasetError as e:
    reason = str(e).splitlines()[0]
    raise DatasetError(f"Fashion-MNIST not found: {where}, and TFDS could not load it ({reason}); "
                       f"{GET_IT}.") from e
