"""A small wrapper over orbax's CheckpointManager: save, restore, resume, refuse.

Each checkpoint holds a `state` pytree (restored against the caller's template, so
the tree structure, shapes and dtypes must match) and a JSON `meta` dict. Saves are
synchronous, so a run killed mid-save leaves only orbax's temporary directory,
which is ignored; the previous checkpoints stay valid. A checkpoint that cannot be
read or does not match the template raises `CheckpointError` naming the directory,
and nothing on disk is touched.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import jax.monitoring
import orbax.checkpoint as ocp

PyTree = Any

if not hasattr(jax.monitoring, "record_scalar"):
  # orbax-checkpoint 0.11.24 reports array sizes through jax.monitoring.record_scalar,
  # which jax 0.5.3 (pinned for neural-tangents) lacks. It is a metrics hook only.
  jax.monitoring.record_scalar = lambda *args, **kwargs: None


class CheckpointError(RuntimeError):
  """A checkpoint is corrupt, unreadable or incompatible with the run's state."""


def _signature(tree: PyTree) -> list[str]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return [f"{jax.tree_util.keystr(p)}:{tuple(np.shape(x))}:{np.result_type(x)}" for p, x in leaves]


class Checkpointer:
  """Orbax checkpoints under `directory`, keeping the newest `max_to_keep`."""

  def __init__(self, directory: str, max_to_keep: int | None = 3):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False),
        item_names=("state", "meta"),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: PyTree, meta: dict | None = None) -> None:
    meta = dict(meta or {})
    meta["_signature"] = _signature(state)
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()

  def restore(self, template: PyTree, step: int | None = None) -> tuple[PyTree, dict]:
    """Restores (state, meta) at `step` (default latest) into `template`'s structure."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint to restore in {self.directory}.")
    where = os.path.join(self.directory, str(step))
    try:
      meta = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # orbax raises a variety of types for unreadable files
      raise CheckpointError(
          f"Checkpoint {where} is corrupt or unreadable ({type(e).__name__}: {e}). It was left "
          "untouched; move it away to resume from an earlier step, or use a new workdir.") from e
    expected = _signature(template)
    found = list(meta.get("_signature", []))
    if found != expected:
      diff = next((f"{a} vs {b}" for a, b in zip(found, expected) if a != b),
                  f"{len(found)} vs {len(expected)} arrays")
      raise CheckpointError(
          f"Checkpoint {where} is incompatible with this run's state (first difference, "
          f"saved vs expected: {diff}). Was the workdir written with another config? "
          "It was left untouched; use a new workdir or the config that wrote it.")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, template)
    try:
      state = self._manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    except Exception as e:
      raise CheckpointError(
          f"Checkpoint {where} is corrupt or unreadable ({type(e).__name__}: {e}). It was left "
          "untouched; move it away to resume from an earlier step, or use a new workdir.") from e
    bad = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(state)
           if np.issubdtype(np.asarray(x).dtype, np.floating) and not np.all(np.isfinite(np.asarray(x)))]
    if bad:
      raise CheckpointError(f"Checkpoint {where} holds non-finite values in {bad[:3]}; it was left untouched.")
    meta.pop("_signature", None)
    return state, meta

  def restore_or(self, template: PyTree) -> tuple[PyTree, dict, int | None]:
    """(state, meta, step) from the latest checkpoint, or (template, {}, None) if none."""
    step = self.latest_step()
    if step is None:
      return template, {}, None
    state, meta = self.restore(template, step)
    return state, meta, step

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
