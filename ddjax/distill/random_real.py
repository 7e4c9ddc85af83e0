"""The random-real baseline: `ipc` real images per class, not distilled at all.

Registered as 'random'. `init_state` draws the same class-balanced subset that
`init='real'` gives every other method with the same seed (the driver derives the init
key from `config.seed` alone), so a 'random' run evaluates exactly the starting point
of a real-initialised distillation; `distill_step` changes nothing.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ddjax.data import sampling
from ddjax.distill import base

__all__ = ["distill_step", "init_state"]


def init_state(config: ml_collections.ConfigDict, key: jax.Array, real: base.RealData,
               aux: Any = None) -> base.DistillState:
  """The class-balanced real subset `init='real'` would start from.

  Args:
    config: a configs/distill/random.py config (ipc, eval.dc_lr).
    key: the PRNG key of the initialisation.
    real: the real train data.
    aux: unused (the method has no `load_aux`).

  Returns:
    The DistillState at step 0.
  """
  del aux
  images, labels = sampling.init_synthetic(key, real.x, real.y, config.ipc, real.num_classes,
                                           "real")
  return base.DistillState(step=jnp.zeros((), jnp.int32), images=images, labels=labels,
                           lr=jnp.asarray(config.eval.dc_lr, jnp.float32), opt_state={}, extra={})


def distill_step(config: ml_collections.ConfigDict, state: base.DistillState, key: jax.Array,
                 real: base.RealData, aux: Any = None) -> tuple[base.DistillState, dict]:
  """Counts an iteration and changes nothing: the baseline is not distilled.

  Args:
    config: unused.
    state: the DistillState.
    key: unused.
    real: unused.
    aux: unused.

  Returns:
    (the state with step + 1, no metrics).
  """
  del config, key, real, aux
  return state.replace(step=state.step + 1), {}
