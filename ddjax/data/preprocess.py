"""Invertible preprocessing: per-channel mean/std, and the two ZCA variants.

* ``standardize``: (x - mean_c) / std_c, with the dataset-distillation constants for
  MNIST, Fashion-MNIST, CIFAR-10/100 and SVHN (DC `get_dataset`), and per-channel
  statistics of the train set for any other dataset.
* ``zca_kornia``: MTT's `kornia.enhance.ZCAWhitening(eps=0.1)`, fit on the [0, 1]
  train images without mean/std normalisation: T = U diag((S + eps)^-1/2) U^T of the
  unbiased feature covariance, applied as (x - mean) T. Exactly invertible.
* ``zca_reg``: the regularised ZCA of KIP / Remember-the-Past / FRePo (from the
  neural-kernels code): each image is mean-centred and L2-normalised, then whitened by
  V diag((E + 0.1 * mean(E))^-1/2) V^T of the (biased) covariance. The per-image
  mean and norm are discarded, so `invert` recovers the image up to those two
  numbers and rescales each image to [0, 1] for display.

A `Preprocessor` is fit on the train set and then applied unchanged to the train
and test sets and to synthetic images; it round-trips through `to_arrays` /
`from_arrays` so distilled-set files can carry it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ddjax.errors import ConfigError

__all__ = ["NORMALIZATION_CONSTANTS", "PREPROCESS_KINDS", "Preprocessor", "fit_preprocessor"]

PREPROCESS_KINDS = ("standardize", "zca_kornia", "zca_reg", "none")

# DC / MTT normalisation constants (mean, std) per channel.
NORMALIZATION_CONSTANTS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "mnist5k": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2861,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn_cropped": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
}


@dataclasses.dataclass(frozen=True)
class Preprocessor:
  """A fitted, invertible map between [0, 1] images and model space (`fit_preprocessor`).

  Attributes:
    kind: one of PREPROCESS_KINDS.
    mean: per-channel means [C] (standardize) or per-feature means [D] (zca_kornia).
    std: per-channel standard deviations [C] (standardize).
    whiten: the [D, D] whitening matrix (ZCA kinds), D = H * W * C.
    unwhiten: its inverse [D, D] (ZCA kinds).
  """

  kind: str
  mean: np.ndarray | None = None        # per-channel (standardize) or per-feature (zca_kornia)
  std: np.ndarray | None = None
  whiten: np.ndarray | None = None      # [D, D]
  unwhiten: np.ndarray | None = None    # [D, D]

  def apply(self, x):
    """[N, H, W, C] images in [0, 1] -> model space. Works on numpy or jax arrays.

    Args:
      x: [N, H, W, C] images in [0, 1], numpy or jax.

    Returns:
      The preprocessed images, same shape, dtype and array type.
    """
    xp = _array_module(x)
    if self.kind == "none":
      return x
    if self.kind == "standardize":
      return (x - xp.asarray(self.mean, x.dtype)) / xp.asarray(self.std, x.dtype)
    flat = x.reshape(x.shape[0], -1)
    if self.kind == "zca_kornia":
      flat = flat - xp.asarray(self.mean, x.dtype)
    else:  # zca_reg
      flat = flat - flat.mean(axis=1, keepdims=True)
      flat = flat / xp.maximum(xp.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    return (flat @ xp.asarray(self.whiten, x.dtype)).reshape(x.shape)

  def invert(self, x):
    """Model space -> [0, 1]-scale images, for display and pixel statistics.

    Args:
      x: [N, H, W, C] images in model space, numpy or jax.

    Returns:
      The images on the [0, 1] pixel scale, same shape (zca_reg: each image rescaled
      to exactly [0, 1], since its mean and norm were discarded).
    """
    xp = _array_module(x)
    if self.kind == "none":
      return x
    if self.kind == "standardize":
      return x * xp.asarray(self.std, x.dtype) + xp.asarray(self.mean, x.dtype)
    flat = x.reshape(x.shape[0], -1) @ xp.asarray(self.unwhiten, x.dtype)
    if self.kind == "zca_kornia":
      return (flat + xp.asarray(self.mean, x.dtype)).reshape(x.shape)
    # zca_reg lost each image's mean and norm: rescale each image to [0, 1].
    lo, hi = flat.min(axis=1, keepdims=True), flat.max(axis=1, keepdims=True)
    return ((flat - lo) / xp.maximum(hi - lo, 1e-12)).reshape(x.shape)

  def to_arrays(self) -> dict[str, np.ndarray]:
    """The preprocessor as named arrays, for an .npz file (`from_arrays` reads them).

    Returns:
      {'preprocess_kind', and 'preprocess_<field>' for each field that is set}.
    """
    out = {"preprocess_kind": np.asarray(self.kind)}
    for field in ("mean", "std", "whiten", "unwhiten"):
      value = getattr(self, field)
      if value is not None:
        out[f"preprocess_{field}"] = np.asarray(value)
    return out

  @classmethod
  def from_arrays(cls, arrays: Any) -> "Preprocessor":
    """The preprocessor saved by `to_arrays`.

    Args:
      arrays: a mapping (dict, open .npz) holding the `to_arrays` entries.

    Returns:
      The Preprocessor.
    """
    get = lambda k: np.asarray(arrays[f"preprocess_{k}"]) if f"preprocess_{k}" in arrays else None
    return cls(kind=str(arrays["preprocess_kind"]), mean=get("mean"), std=get("std"),
               whiten=get("whiten"), unwhiten=get("unwhiten"))


def _array_module(x):
  if isinstance(x, np.ndarray):
    return np
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp


def fit_preprocessor(kind: str, x_train: np.ndarray, dataset_name: str | None = None,
                     zca_strength: float = 0.1) -> Preprocessor:
  """Fits a preprocessor on [0, 1] train images [N, H, W, C].

  Args:
    kind: one of PREPROCESS_KINDS.
    x_train: the train images, [N, H, W, C] in [0, 1].
    dataset_name: for ``standardize``, selects the published constants
      (NORMALIZATION_CONSTANTS) when the dataset has them; other datasets use the
      per-channel statistics of `x_train`.
    zca_strength: kornia's eps for ``zca_kornia`` and the relative regulariser
      (times the mean eigenvalue) for ``zca_reg``; both references use 0.1.

  Returns:
    The fitted Preprocessor (float32 statistics).

  Raises:
    ConfigError: an unknown kind, or published constants whose channel count differs
      from the images'.
    ValueError: `x_train` is not 4-D.
  """
  x_train = np.asarray(x_train)
  if x_train.ndim != 4:
    raise ValueError(f"fit_preprocessor expects [N, H, W, C] images, got shape {x_train.shape}.")
  if kind == "none":
    return Preprocessor("none")
  if kind == "standardize":
    base = (dataset_name or "").lower()
    if base in NORMALIZATION_CONSTANTS:
      mean, std = NORMALIZATION_CONSTANTS[base]
      if len(mean) != x_train.shape[-1]:
        raise ConfigError(f"{base} constants have {len(mean)} channels, images have {x_train.shape[-1]}.")
    else:
      mean = x_train.mean(axis=(0, 1, 2))
      std = x_train.std(axis=(0, 1, 2))
    return Preprocessor("standardize", mean=np.asarray(mean, np.float32),
                        std=np.asarray(std, np.float32))
  flat = x_train.reshape(x_train.shape[0], -1).astype(np.float64)
  n, d = flat.shape
  if kind == "zca_kornia":
    mean = flat.mean(axis=0)
    centred = flat - mean
    cov = centred.T @ centred / (n - 1)
    u, s, _ = np.linalg.svd(cov)
    whiten = (u * (s + zca_strength) ** -0.5) @ u.T
    unwhiten = (u * (s + zca_strength) ** 0.5) @ u.T
    return Preprocessor("zca_kornia", mean=mean.astype(np.float32),
                        whiten=whiten.astype(np.float32), unwhiten=unwhiten.astype(np.float32))
  if kind == "zca_reg":
    flat = flat - flat.mean(axis=1, keepdims=True)
    flat = flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)
    cov = flat.T @ flat / n
    eigvals, eigvecs = np.linalg.eigh(cov)
    eigvals = np.maximum(eigvals, 0.0) + zca_strength * eigvals.sum() / d
    whiten = (eigvecs * eigvals ** -0.5) @ eigvecs.T
    unwhiten = (eigvecs * eigvals ** 0.5) @ eigvecs.T
    return Preprocessor("zca_reg", whiten=whiten.astype(np.float32),
                        unwhiten=unwhiten.astype(np.float32))
  raise ConfigError(f"Unknown preprocessing {kind!r}; expected one of {PREPROCESS_KINDS}.")
