"""Fashion-MNIST from idx files (ddjax/data/idx.py), on small files the tests write."""

import gzip
import os
import struct

import numpy as np
import pytest

from ddjax import data
from ddjax.data import idx

DEBIAN_FILES = all(idx.find_file(idx.DEBIAN_DIR, stem) for pair in idx.FILES.values()
                   for stem in pair)


def _arrays(n_train=30, n_test=20, seed=0):
  rng = np.random.default_rng(seed)
  return {"train": (rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
                    (np.arange(n_train) % 10).astype(np.uint8)),
          "test": (rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
                   (np.arange(n_test)[::-1] % 10).astype(np.uint8))}


def write_dir(directory, arrays, gz=("train",)):
  """The four files; the splits in `gz` gzipped, the others plain (both forms are read)."""
  os.makedirs(directory, exist_ok=True)
  for split, (images_stem, labels_stem) in idx.FILES.items():
    ext = ".gz" if split in gz else ""
    images, labels = arrays[split]
    idx.write_idx(os.path.join(directory, images_stem + ext), images)
    idx.write_idx(os.path.join(directory, labels_stem + ext), labels)
  return str(directory)


def test_load_from_data_dir_matches_the_files(tmp_path):
  arrays = _arrays()
  ds = data.load_dataset("fashion_mnist", data_dir=write_dir(tmp_path, arrays))
  assert ds.name == "fashion_mnist" and ds.num_classes == 10
  assert ds.x_train.shape == (30, 28, 28, 1) and ds.x_test.shape == (20, 28, 28, 1)
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
  for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
    images, labels = arrays[split]
    np.testing.assert_array_equal(x[..., 0], images.astype(np.float32) / 255.0)
    np.testing.assert_array_equal(y, labels)


def test_names_and_shapes_are_tfds_fashion_mnist(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (a hard requirement)
  info = tfds.builder("fashion_mnist").info   # the builder's static info: no download
  ds = idx.load_idx_dir(write_dir(tmp_path, _arrays()))
  assert ds.class_names == tuple(info.features["label"].names)
  assert ds.image_shape == tuple(info.features["image"].shape)
  assert ds.num_classes == info.features["label"].num_classes


def test_reader_follows_the_idx_layout(tmp_path):
  # Written byte by byte, independently of write_idx: magic 0x00000803, big-endian dims.
  images = np.arange(2 * 28 * 28, dtype=np.uint32).reshape(2, 28, 28).astype(np.uint8)
  raw = struct.pack(">IIII", 0x803, 2, 28, 28) + images.tobytes()
  path = tmp_path / "x-idx3-ubyte.gz"
  with gzip.open(path, "wb") as f:
    f.write(raw)
  np.testing.assert_array_equal(idx.read_idx(str(path), 3), images)
  labels_path = tmp_path / "y-idx1-ubyte"
  labels_path.write_bytes(struct.pack(">II", 0x801, 3) + bytes([7, 0, 9]))
  np.testing.assert_array_equal(idx.read_idx(str(labels_path), 1), [7, 0, 9])


@pytest.mark.parametrize("defect, message", [
    ("magic", r"magic number 0x00000801, expected 0x00000803"),
    ("truncated", r"declares shape \(30, 28, 28\).*truncated or corrupt"),
    ("count", r"holds 30 images but .* holds 29 labels"),
    ("label", r"label 10; Fashion-MNIST labels are 0..9"),
    ("size", r"images are \(27, 27\)"),
    ("gzip", r"Cannot read idx file .*train-images-idx3-ubyte.gz"),
])
def test_malformed_files_are_refused_naming_the_file(tmp_path, defect, message):
  arrays = _arrays()
  d = write_dir(tmp_path, arrays)
  images_path = os.path.join(d, "train-images-idx3-ubyte.gz")
  labels_path = os.path.join(d, "train-labels-idx1-ubyte.gz")
  images, labels = arrays["train"]
  if defect == "magic":
    idx.write_idx(images_path, labels)  # a labels file where the images belong
  elif defect == "truncated":
    with gzip.open(images_path, "rb") as f:
      raw = f.read()
    with gzip.open(images_path, "wb") as f:
      f.write(raw[:-5])
  elif defect == "count":
    idx.write_idx(labels_path, labels[:-1])
  elif defect == "label":
    idx.write_idx(labels_path, np.where(labels == 3, 10, labels).astype(np.uint8))
  elif defect == "size":
    idx.write_idx(images_path, images[:, :27, :27].copy())
  elif defect == "gzip":
    with open(images_path, "wb") as f:
      f.write(b"\x1f\x8b\x08\x00 not really gzip")
  with pytest.raises(data.DatasetError, match=message) as err:
    data.load_dataset("fashion_mnist", data_dir=d)
  assert "\n" not in str(err.value)


def test_incomplete_directory_names_the_missing_file(tmp_path):
  d = write_dir(tmp_path, _arrays())
  os.remove(os.path.join(d, "t10k-labels-idx1-ubyte"))
  with pytest.raises(data.DatasetError, match=r"lacks the Fashion-MNIST idx file\(s\) "
                     r"t10k-labels-idx1-ubyte\[.gz\].*make fashion-mnist"):
    data.load_dataset("fashion_mnist", data_dir=d)


def test_missing_everywhere_is_one_line_with_both_ways(tmp_path, monkeypatch):
  empty = tmp_path / "no-debian"
  empty.mkdir()
  monkeypatch.setattr(idx, "DEBIAN_DIR", str(empty))
  tried = []

  def offline_tfds(name, data_dir=None, download=True):
    tried.append((name, data_dir, download))
    raise data.DatasetError(f"TFDS dataset {name!r} is not prepared and downloading it failed "
                            "(no network?).\n    python -c ...")

  monkeypatch.setattr(idx, "load_tfds", offline_tfds)
  with pytest.raises(data.DatasetError) as err:
    data.load_dataset("fashion_mnist")
  message = str(err.value)
  assert "\n" not in message
  assert str(empty) in message and "no network" in message
  assert "make fashion-mnist" in message and "apt-get install dataset-fashion-mnist" in message
  assert "online through TFDS" in message and "--config.data_dir=DIR" in message
  assert tried == [("fashion_mnist", None, True)]


def test_directory_without_idx_files_is_a_tfds_data_dir(tmp_path, monkeypatch):
  calls = []
  sentinel = object()
  monkeypatch.setattr(idx, "load_tfds", lambda name, data_dir=None, download=True:
                      calls.append((name, data_dir, download)) or sentinel)
  assert data.load_dataset("fashion_mnist", data_dir=str(tmp_path), download=False) is sentinel
  assert calls == [("fashion_mnist", str(tmp_path), False)]


def test_debian_directory_must_hold_the_full_splits(tmp_path, monkeypatch):
  monkeypatch.setattr(idx, "DEBIAN_DIR", write_dir(tmp_path, _arrays()))
  with pytest.raises(data.DatasetError, match=r"holds 30 examples; the full Fashion-MNIST split "
                     r"has 60000.*make fashion-mnist"):
    data.load_dataset("fashion_mnist")


@pytest.mark.skipif(not DEBIAN_FILES, reason="dataset-fashion-mnist is not installed here "
                    "(make fashion-mnist)")
def test_debian_files_are_fashion_mnist():
  ds = data.load_dataset("fashion_mnist")
  assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
  np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
  # The pixel statistics DC normalises Fashion-MNIST with (preprocess.py: 0.2861, 0.3530).
  mean, std = data.NORMALIZATION_CONSTANTS["fashion_mnist"]
  assert abs(float(ds.x_train.mean()) - mean[0]) < 5e-4
  assert abs(float(ds.x_train.std()) - std[0]) < 5e-4
