"""The one cache of the analyses: arrays keyed by a hash of what they depend on.

    arrays = cache.cached(cache_dir, "agreement_early", {"seeds": 30, ...}, compute)

An entry is `<directory>/<stem>-<key>.npz`, `key` a hash of the JSON of its payload
(every setting and input digest the arrays depend on), written atomically (a temporary
file, then a rename), so that a kill never leaves half an entry and a changed setting
never reads a stale one. A missing or unreadable entry is computed and written again.
Model pools, leave-one-out matrices, real-trained models and projections all go
through `cached` (pytrees through `cached_tree`).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np

__all__ = ["CACHE_DIR", "cache_dir", "digest", "entry_path", "read", "write", "cached",
           "cached_tree"]

CACHE_DIR = "cache"


def cache_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
  """`config.cache_dir`, or `<workdir>/cache` when it is empty.

  A reproduction points every analysis at one directory, so that they share real-trained
  models.

  Args:
    config: an analysis config; its optional `cache_dir` field is read.
    workdir: the analysis's output directory.

  Returns:
    The cache directory's path (not created here).
  """
  return config.get("cache_dir") or os.path.join(workdir, CACHE_DIR)


def digest(*arrays) -> str:
  """A short hash of arrays' shapes, dtypes and bytes, for a cache payload.

  Args:
    *arrays: array-likes.

  Returns:
    16 hex digits.
  """
  h = hashlib.sha1()
  for a in arrays:
    a = np.ascontiguousarray(np.asarray(a))
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def entry_path(directory: str, stem: str, payload: Mapping[str, Any]) -> str:
  """The file of the entry `stem` with this payload.

  Args:
    directory: the cache directory.
    stem: a readable name (unsafe characters become "_").
    payload: JSON-able settings (non-JSON values are hashed by their `str`).

  Returns:
    `<directory>/<stem>-<12 hex digits>.npz`.
  """
  text = json.dumps(payload, sort_keys=True, default=str)
  safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
  return os.path.join(directory, f"{safe}-{hashlib.sha1(text.encode()).hexdigest()[:12]}.npz")


def read(path: str) -> dict[str, np.ndarray] | None:
  """An entry's arrays, or None if it is missing or unreadable (then it is recomputed).

  Args:
    path: the entry's `.npz` file (from `entry_path`).

  Returns:
    {name: numpy array}, or None.
  """
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except Exception:  # pylint: disable=broad-except
    return None


def write(path: str, arrays: Mapping[str, Any]) -> None:
  """Writes arrays to `path` as npz, atomically (a temporary file, then a rename).

  Args:
    path: the entry's `.npz` file; its directory is created if missing.
    arrays: {name: array-like}, stored as numpy arrays (no pickles).
  """
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
  os.replace(tmp, path)


def cached(directory: str, stem: str, payload: Mapping[str, Any],
           compute: Callable[[], Mapping[str, Any]]) -> dict[str, np.ndarray]:
  """The entry's arrays if present, else `compute()`'s, written first.

  Args:
    directory: the cache directory.
    stem: the entry's readable name.
    payload: everything the arrays depend on (settings, digests of input arrays).
    compute: returns {name: array}; called only on a miss.

  Returns:
    {name: numpy array}, the same whether computed now or read back.
  """
  path = entry_path(directory, stem, payload)
  got = read(path)
  if got is None:
    got = {k: np.asarray(v) for k, v in compute().items()}
    write(path, got)
  return got


def cached_tree(directory: str, stem: str, payload: Mapping[str, Any], template: Any,
                compute: Callable[[], Any]) -> Any:
  """`cached` for a pytree of arrays (e.g. a model's variables) shaped like `template`.

  Args:
    directory, stem, payload: as `cached`.
    template: a pytree of the same structure, shapes and dtypes (e.g. fresh variables).
    compute: returns the pytree; called only on a miss (or if the entry does not match
      the template: then it is recomputed and replaced).

  Returns:
    The pytree, with numpy leaves.
  """
  leaves, treedef = jax.tree_util.tree_flatten(template)
  path = entry_path(directory, stem, payload)
  got = read(path)
  if got is not None and len(got) == len(leaves) and all(
      got.get(f"leaf_{i:05d}") is not None and got[f"leaf_{i:05d}"].shape == np.shape(l)
      for i, l in enumerate(leaves)):
    return jax.tree_util.tree_unflatten(treedef, [got[f"leaf_{i:05d}"]
                                                  for i in range(len(leaves))])
  tree = jax.device_get(compute())
  new_leaves, new_treedef = jax.tree_util.tree_flatten(tree)
  if new_treedef != treedef:
    raise ValueError(f"cache entry {stem!r}: computed tree {new_treedef} differs from the "
                     f"template {treedef}")
  write(path, {f"leaf_{i:05d}": np.asarray(l) for i, l in enumerate(new_leaves)})
  return jax.tree_util.tree_unflatten(treedef, [np.asarray(l) for l in new_leaves])
