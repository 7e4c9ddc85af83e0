"""Seeded class-balanced sampling and synthetic-set initialisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.errors import ConfigError

__all__ = ["class_balanced_indices", "init_synthetic", "sample_class_balanced"]


def class_balanced_indices(key: jax.Array, labels, n_per_class: int,
                           num_classes: int | None = None) -> np.ndarray:
  """`n_per_class` distinct indices of each class, class-sorted (class 0 first).

  Deterministic given `key`; class c draws with `fold_in(key, c)`, so a larger
  n_per_class with the same key extends (nests) a smaller one.

  Args:
    key: the PRNG key.
    labels: integer labels [N] (host or device array).
    n_per_class: how many indices of each class (>= 0).
    num_classes: the class count; None infers the largest label + 1.

  Returns:
    int64 [num_classes * n_per_class] row indices into `labels`, class 0's first.

  Raises:
    ConfigError: a negative n_per_class, or a class with fewer than n_per_class rows.
  """
  labels = np.asarray(labels)
  if num_classes is None:
    num_classes = int(labels.max()) + 1
  if n_per_class < 0:
    raise ConfigError(f"n_per_class must be >= 0, got {n_per_class}.")
  out = []
  for c in range(num_classes):
    rows = np.flatnonzero(labels == c)
    if len(rows) < n_per_class:
      raise ConfigError(f"Class {c} has {len(rows)} examples; cannot sample {n_per_class} per class.")
    perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, c), len(rows)))
    out.append(rows[perm[:n_per_class]])
  return np.concatenate(out).astype(np.int64) if out else np.zeros((0,), np.int64)


def sample_class_balanced(key: jax.Array, x, y, n_per_class: int, num_classes: int | None = None):
  """(x[idx], y[idx]) for `class_balanced_indices`.

  Args:
    key: the PRNG key.
    x: the examples [N, ...].
    y: their integer labels [N].
    n_per_class: how many examples of each class.
    num_classes: the class count; None infers it from `y`.

  Returns:
    (x, y) of the sample as numpy arrays, class-sorted.

  Raises:
    ConfigError: as `class_balanced_indices`.
  """
  idx = class_balanced_indices(key, y, n_per_class, num_classes)
  return np.asarray(x)[idx], np.asarray(y)[idx]


def init_synthetic(key: jax.Array, x_real, y_real, ipc: int, num_classes: int,
                   init: str = "real") -> tuple[jax.Array, jax.Array]:
  """A class-sorted synthetic set of `ipc` images per class, in model space.

  Args:
    key: the PRNG key.
    x_real: the real train images [N, H, W, C], already preprocessed.
    y_real: their labels [N].
    ipc: images per class.
    num_classes: the class count.
    init: "real" takes distinct real images of each class; "noise" draws standard
      normal pixels, as DC's `torch.randn` init.

  Returns:
    (float32 images [num_classes * ipc, H, W, C], int32 labels [num_classes * ipc]),
    class-sorted (class 0's ipc rows first).

  Raises:
    ConfigError: an unknown init, or a class with fewer than ipc real images.
  """
  labels = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), ipc)
  if init == "real":
    x, _ = sample_class_balanced(key, x_real, y_real, ipc, num_classes)
    return jnp.asarray(x, jnp.float32), labels
  if init == "noise":
    shape = (num_classes * ipc,) + tuple(np.shape(x_real)[1:])
    return jax.random.normal(key, shape, jnp.float32), labels
  raise ConfigError(f"Unknown synthetic init {init!r}; expected 'real' or 'noise'.")
