"""Checkpoint save / restore / resume, and refusal of corrupt or incompatible ones."""

import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax import checkpoint, models, train
from files import tree_bytes  # tests/files.py


def _state(width=4):
  model = models.get_model("convnet", 3, width=width, depth=1)
  variables = models.init_variables(model, jax.random.PRNGKey(0), (1, 8, 8, 1))
  return train.create_train_state(variables, train.sgd_momentum(0.01, 0.9))


def test_save_restore_roundtrip_and_latest(tmp_path):
  state = _state()
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2)
  assert ckpt.restore_or(state)[2] is None
  for step in (1, 2, 3):
    bumped = state.replace(step=jnp.asarray(step, jnp.int32))
    ckpt.save(step, bumped, meta={"epoch": step})
  assert ckpt.latest_step() == 3 and ckpt.all_steps() == [2, 3]  # max_to_keep
  restored, meta, step = ckpt.restore_or(state)
  assert step == 3 and meta == {"epoch": 3} and int(restored.step) == 3
  chex.assert_trees_all_equal(restored.params, state.params)
  chex.assert_trees_all_equal_structs(restored, state)
  ckpt.close()


def test_incompatible_checkpoint_is_refused_untouched(tmp_path):
  directory = str(tmp_path / "ckpt")
  with checkpoint.Checkpointer(directory) as ckpt:
    ckpt.save(1, _state(width=4))
  before = tree_bytes(directory)
  with checkpoint.Checkpointer(directory) as ckpt:
    with pytest.raises(checkpoint.CheckpointError, match="incompatible.*another config"):
      ckpt.restore(_state(width=8))
  assert tree_bytes(directory) == before


def test_corrupt_checkpoint_is_refused_untouched(tmp_path):
  directory = str(tmp_path / "ckpt")
  with checkpoint.Checkpointer(directory) as ckpt:
    ckpt.save(1, _state())
  # Scribble over every data file of the saved state.
  for root, _, files in os.walk(os.path.join(directory, "1", "state")):
    for f in files:
      with open(os.path.join(root, f), "wb") as fh:
        fh.write(b"\x00garbage")
  before = tree_bytes(directory)
  with checkpoint.Checkpointer(directory) as ckpt:
    with pytest.raises(checkpoint.CheckpointError, match="corrupt or unreadable.*left untouched"):
      ckpt.restore(_state())
  assert tree_bytes(directory) == before


def test_non_finite_checkpoint_is_refused(tmp_path):
  state = _state()
  bad = state.replace(params=jax.tree_util.tree_map(lambda p: p * jnp.nan, state.params))
  with checkpoint.Checkpointer(str(tmp_path / "c")) as ckpt:
    ckpt.save(1, bad)
    with pytest.raises(checkpoint.CheckpointError, match="non-finite"):
      ckpt.restore(state)
