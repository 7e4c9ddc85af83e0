"""Seeded class-balanced sampling and synthetic-set initialisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ddjax.errors import ConfigError


def class_balanced_indices(key: jax.Array, labels, n_per_class: int,
                           num_classes: int | None = None) -> np.ndarray:
  """`n_per_class` distinct indices of each class, class-sorted (class 0 first).

  Deterministic given `key`; class c draws with `fold_in(key, c)`, so a larger
  n_per_class with the same key extends (nests) a smaller one.
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
  """(x[idx], y[idx]) for `class_balanced_indices`."""
  idx = class_balanced_indices(key, y, n_per_class, num_classes)
  return np.asarray(x)[idx], np.asarray(y)[idx]


def init_synthetic(key: jax.Array, x_real, y_real, ipc: int, num_classes: int,
                   init: str = "real") -> tuple[jax.Array, jax.Array]:
  """A class-sorted synthetic set of `ipc` images per class, in model space.

  init="real": distinct real images per class (x_real must already be preprocessed);
  init="noise": standard normal pixels, as DC's `torch.randn` init.
  """
  labels = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), ipc)
  if init == "real":
    x, _ = sample_class_balanced(key, x_real, y_real, ipc, num_classes)
    return jnp.asarray(x, jnp.float32), labels
  if init == "noise":
    shape = (num_classes * ipc,) + tuple(np.shape(x_real)[1:])
    return jax.random.normal(key, shape, jnp.float32), labels
  raise ConfigError(f"Unknown synthetic init {init!r}; expected 'real' or 'noise'.")
