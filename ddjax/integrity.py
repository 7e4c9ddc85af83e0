"""Content checksums for saved state: checkpoints, distilled sets, expert trajectories.

A checksum is `"sha256:<hex>"` over every array's name, dtype, shape and bytes (in a
fixed order) plus an optional JSON-able `extra` (e.g. a checkpoint's metadata). It is
computed when a file is written and compared when it is read, so a flipped byte in the
array data, which the file formats themselves may not notice, is caught.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Mapping

import numpy as np

PREFIX = "sha256:"


def _jsonable(value: Any) -> Any:
  if isinstance(value, (np.generic, np.ndarray)):
    return value.tolist()
  return str(value)


def canonical_json(obj: Any) -> str:
  """A deterministic JSON text of `obj`: sorted keys, no spaces, numpy values as Python
  numbers and lists, anything else that JSON lacks as its str."""
  return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_jsonable)


def _update(h, name: str, array: np.ndarray) -> None:
  array = np.ascontiguousarray(array)
  header = f"{name}|{array.dtype.str}|{array.shape}|{array.nbytes}|"
  h.update(header.encode())
  h.update(array.tobytes())


def arrays_digest(arrays: Mapping[str, Any], extra: Any = None) -> str:
  """The checksum of named host arrays (in sorted name order) and `extra`.

  Args:
    arrays: name -> array-like.
    extra: optional JSON-able data hashed after the arrays.

  Returns:
    "sha256:<64 hex digits>".
  """
  h = hashlib.sha256()
  for name in sorted(arrays):
    _update(h, name, np.asarray(arrays[name]))
  if extra is not None:
    h.update(canonical_json(extra).encode())
  return PREFIX + h.hexdigest()


def tree_digest(tree: Any, extra: Any = None) -> str | None:
  """The checksum of a pytree's leaves (path, dtype, shape, bytes) and `extra`.

  Args:
    tree: a pytree of arrays (jax or numpy; typed PRNG keys are hashed by their data).
    extra: optional JSON-able data hashed after the leaves.

  Returns:
    "sha256:<64 hex digits>", or None when a leaf is a jax.Array this process cannot
    read in full (sharded over several hosts), which cannot be hashed locally.
  """
  import jax  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    if isinstance(leaf, jax.Array):
      if not leaf.is_fully_addressable:
        return None
      if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
    _update(h, jax.tree_util.keystr(path), np.asarray(leaf))
  if extra is not None:
    h.update(canonical_json(extra).encode())
  return PREFIX + h.hexdigest()


def file_sha256(path: str) -> str:
  """The sha256 hex digest of a file's bytes (read in 1 MiB blocks), as shipped-set
  manifests record it."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()
