"""A small wrapper over orbax's CheckpointManager: save, verify, restore, resume, refuse.

Each checkpoint holds a `state` pytree (restored against the caller's template, so
the tree structure, shapes and dtypes must match) and a JSON `meta` dict. Saves are
synchronous, so a run killed mid-save leaves only orbax's temporary directory,
which is ignored; the previous checkpoints stay valid.

Every save records in `meta` a signature (each leaf's path, shape and dtype) and a
content checksum (sha256 over the leaves' bytes and the metadata, `ddjax.integrity`);
a restore checks both. A checkpoint that cannot be read, fails its checksum or holds
non-finite values is *corrupt*; one whose signature differs from the template is
*incompatible* (another config wrote it). Either raises a one-line `CheckpointError`
naming the checkpoint, and nothing on disk is touched.

Resuming (`restore_or`) takes a mode: 'latest' (the default) resumes from the newest
checkpoint or fails on it; 'previous' resumes from the newest checkpoint that passes
verification, moving the newer corrupt ones aside to `<directory>.corrupt/` (never
deleting them), so that the run can write those steps again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from ddjax import errors, integrity

PyTree = Any

RESTORE_MODES = ("latest", "previous")
_HOW_TO_RECOVER = ("It was left untouched; re-run with --restore=previous to resume from the "
                   "newest intact checkpoint, or use a new workdir.")

class CheckpointError(RuntimeError, errors.DdjaxError):
  """A checkpoint is corrupt, unreadable or incompatible with the run's state.

  Attributes:
    corrupt: True when the checkpoint's files are damaged (unreadable, a checksum
      mismatch, non-finite values), False when it is intact but does not fit.
  """

  def __init__(self, message: str, corrupt: bool = False):
    super().__init__(message)
    self.corrupt = corrupt


def _signature(tree: PyTree) -> list[str]:
  leaves = jax.tree_util.tree_leaves_with_path(tree)
  return [f"{jax.tree_util.keystr(p)}:{tuple(np.shape(x))}:{np.result_type(x)}" for p, x in leaves]


def _checksum(state: PyTree, meta: dict) -> str | None:
  """The content checksum of a checkpoint: its state's leaves and its metadata."""
  return integrity.tree_digest(state, extra={k: v for k, v in meta.items() if k != "_checksum"})


def _meta_checksum(meta: dict) -> str:
  """The checksum of the metadata alone, checked before its signature is trusted."""
  return integrity.arrays_digest(
      {}, extra={k: v for k, v in meta.items() if k not in ("_checksum", "_meta_checksum")})


def check_restore_mode(mode: str) -> str:
  """Returns `mode` if it is one of RESTORE_MODES; else raises a ConfigError."""
  if mode not in RESTORE_MODES:
    raise errors.ConfigError(f"Unknown restore mode {mode!r}; expected one of {RESTORE_MODES}.")
  return mode


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
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: PyTree, meta: dict | None = None) -> None:
    """Saves `state` and `meta` (JSON-able) as checkpoint `step`, with its checksum."""
    meta = dict(meta or {})
    meta["_signature"] = _signature(state)
    # The checksum covers the metadata as it will read back from JSON.
    meta = json.loads(integrity.canonical_json(meta))
    meta["_meta_checksum"] = _meta_checksum(meta)
    meta["_checksum"] = _checksum(state, meta)
    self._manager.save(int(step), args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
    self._manager.wait_until_finished()

  def restore(self, template: PyTree, step: int | None = None) -> tuple[PyTree, dict]:
    """Restores and verifies checkpoint `step` (default: the latest) into `template`'s structure.

    Args:
      template: a pytree with the structure, shapes and dtypes of the saved state.
      step: the checkpoint to restore; None for the latest.

    Returns:
      (state, meta), meta without ddjax's private entries.

    Raises:
      CheckpointError: there is no checkpoint, or it is corrupt (`corrupt=True`) or
        incompatible with `template`.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"No checkpoint to restore in {self.directory}.")
    if step not in self.all_steps():
      raise CheckpointError(f"No checkpoint of step {step} in {self.directory}; it has steps "
                            f"{self.all_steps()}.")
    where = os.path.join(self.directory, str(step))
    how_to = _HOW_TO_RECOVER
    try:
      meta = self._manager.restore(
          step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
      if not isinstance(meta, dict):
        raise TypeError(f"metadata is a {type(meta).__name__}, not a dict")
    except Exception as e:  # orbax raises a variety of types for unreadable files
      raise CheckpointError(f"Checkpoint {where} is corrupt or unreadable ({type(e).__name__}: "
                            f"{_first_line(e)}). {how_to}", corrupt=True) from e
    if "_meta_checksum" in meta and meta["_meta_checksum"] != _meta_checksum(meta):
      raise CheckpointError(f"Checkpoint {where} (step {step}) failed its checksum: its metadata "
                            f"changed after it was saved. {how_to}", corrupt=True)
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
      raise CheckpointError(f"Checkpoint {where} is corrupt or unreadable ({type(e).__name__}: "
                            f"{_first_line(e)}). {how_to}", corrupt=True) from e
    saved_sum = meta.get("_checksum")
    if saved_sum is None:
      logging.warning("Checkpoint %s has no checksum (written before ddjax recorded them, or "
                      "from a multi-host state); restored without verifying its content.", where)
    else:
      actual = _checksum(state, meta)
      if actual is not None and actual != saved_sum:
        raise CheckpointError(
            f"Checkpoint {where} (step {step}) failed its checksum: its content changed after it "
            f"was saved (saved {saved_sum[:19]}..., read {actual[:19]}...). {how_to}", corrupt=True)
    bad = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(state)
           if np.issubdtype(np.asarray(x).dtype, np.floating)
           and not np.all(np.isfinite(np.asarray(x)))]
    if bad:
      raise CheckpointError(f"Checkpoint {where} holds non-finite values in {bad[:3]}. {how_to}",
                            corrupt=True)
    meta = {k: v for k, v in meta.items() if not k.startswith("_")}
    return state, meta

  def restore_or(self, template: PyTree, mode: str = "latest") -> tuple[PyTree, dict, int | None]:
    """Resumes: (state, meta, step) from a verified checkpoint, or (template, {}, None) if none.

    Args:
      template: the fresh state, whose structure the checkpoint must have.
      mode: 'latest' restores the newest checkpoint and raises CheckpointError if it
        fails verification; 'previous' restores the newest one that passes, moving
        each newer corrupt one to `<directory>.corrupt/<step>` (logged, never deleted).

    Returns:
      (state, meta, step); step is None when there is no checkpoint.

    Raises:
      CheckpointError: the newest checkpoint ('latest') or every checkpoint ('previous')
        failed verification, or a checkpoint is incompatible with `template`.
    """
    check_restore_mode(mode)
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      return template, {}, None
    if mode == "latest":
      state, meta = self.restore(template, steps[0])
      return state, meta, steps[0]
    corrupt = []
    for step in steps:
      try:
        state, meta = self.restore(template, step)
      except CheckpointError as e:
        if not e.corrupt:
          raise
        logging.warning("Skipping checkpoint %s: %s", step,
                        str(e).replace(f" {_HOW_TO_RECOVER}", ""))
        corrupt.append(step)
        continue
      for bad in corrupt:
        moved = self._set_aside(bad)
        logging.warning("Checkpoint %s failed verification; moved to %s (not deleted). Resuming "
                        "from step %d.", os.path.join(self.directory, str(bad)), moved, step)
      if corrupt:
        self._manager.reload()
      return state, meta, step
    raise CheckpointError(
        f"No intact checkpoint in {self.directory}: every one (steps {sorted(steps)}) failed "
        "verification, and they were left untouched. Use a new workdir, or --overwrite to move "
        "this run aside and start over.", corrupt=True)

  def _set_aside(self, step: int) -> str:
    """Moves checkpoint `step` out of the manager's directory, keeping its files."""
    root = self.directory + ".corrupt"
    os.makedirs(root, exist_ok=True)
    target, n = os.path.join(root, str(step)), 1
    while os.path.exists(target):
      target, n = os.path.join(root, f"{step}.{n}"), n + 1
    shutil.move(os.path.join(self.directory, str(step)), target)
    return target

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _first_line(error: BaseException, limit: int = 160) -> str:
  """The start of an error's message (orbax's can run to kilobytes of tensorstore spec)."""
  text = str(error).strip()
  text = text.splitlines()[0] if text else ""
  return text if len(text) <= limit else text[:limit - 3] + "..."
