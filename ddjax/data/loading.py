"""`load_dataset`: any dataset ddjax reads, by name.

The one entry point above the loaders: the embedded mnist5k and npz files
(`datasets.py`), Fashion-MNIST's idx files (`idx.py`, which builds on `datasets.py`),
and TFDS.
"""

from __future__ import annotations

from ddjax.data import datasets, idx

__all__ = ["load_dataset"]


def load_dataset(name: str, data_dir: str | None = None,
                 download: bool = True) -> datasets.ImageDataset:
  """Loads a dataset by name: 'mnist5k', 'npz:PATH', 'fashion_mnist' (`idx.py`), or a TFDS name.

  Args:
    name: the dataset's name.
    data_dir: the TFDS data directory (for 'fashion_mnist' also a directory of idx
      files); unused by 'mnist5k' and 'npz:PATH'.
    download: let TFDS download a dataset that is not prepared.

  Returns:
    The ImageDataset: float32 NHWC images in [0, 1], int32 labels.

  Raises:
    DatasetError: an empty or unknown name, or a dataset that cannot be loaded.
  """
  if not isinstance(name, str) or not name:
    raise datasets.DatasetError(f"Dataset name must be a non-empty string, got {name!r}.")
  if name == "mnist5k":
    return datasets.load_mnist5k()
  if name.startswith("npz:"):
    return datasets.load_npz(name[len("npz:"):])
  if name == "fashion_mnist":  # idx files (data_dir or Debian's) first, then TFDS
    return idx.load_fashion_mnist(data_dir, download=download)
  return datasets.load_tfds(name, data_dir=data_dir, download=download)
