"""The contract every distillation method follows, and the pieces they share.

A method is a module in `ddjax.distill` exposing:

    load_aux(config) -> pytree | None       # optional, host side: e.g. MTT's expert
                                            # trajectories; never checkpointed
    init_state(config, key, real: RealData, aux) -> DistillState
    distill_step(config, state, key, real: RealData, aux) -> (DistillState, metrics dict)

`distill_step` is one outer iteration; the driver jits it with `config` bound by
functools.partial, so it must be a pure function of (state, key, real, aux).
Method-specific state (DC's network and its optimiser state, a learned lr's
optimiser state, ...) lives in `state.extra`, which is checkpointed.

Optional module attribute: `LEARNS_LR = True` when `state.lr` is learned (MTT). The
driver (`ddjax.distill.driver`) then evaluates the DC protocol with that lr and records
it as `learned_lr` in the distilled-set file; otherwise `state.lr` is informational.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from ddjax import errors, models

__all__ = ["DistillState", "DistillationDiverged", "RealData", "check_finite", "make_model",
           "make_real_data", "method_hparams", "sample_class_indices", "sample_per_class"]

PyTree = Any


def method_hparams(config, method: str):
  """A method's hyperparameters, the config section named after it.

  Args:
    config: a configs/distill/<method>.py config.
    method: the section's name ('dc', 'dsa', 'dm', 'mtt', 'bptt' or 'kip').

  Returns:
    config.<method>.

  Raises:
    ConfigError: the config lacks that section.
  """
  if method not in config:
    raise errors.ConfigError(f"Config for method {method!r} lacks its hyperparameters "
                             f"(config.{method}); build it with configs/distill/{method}.py.")
  return config[method]


def make_model(config, num_classes: int):
  """The distillation network: config.model with config.model_kwargs.

  Args:
    config: the distillation config.
    num_classes: the size of the head.

  Returns:
    The flax module.
  """
  return models.get_model(config.model, num_classes, **config.model_kwargs)


class DistillationDiverged(FloatingPointError, errors.DdjaxError):
  """A loss, synthetic image or learned lr became NaN or infinite."""


@flax.struct.dataclass
class RealData:
  """Preprocessed real train data on device, with a per-class index table for
  class-conditional sampling inside jit (`make_real_data` builds it).

  Attributes:
    x: [N, H, W, C] images in model space.
    y: [N] int32 labels.
    class_index: [num_classes, max_count] int32 rows of each class, padded by
      repetition.
    class_count: [num_classes] int32 images per class.
    num_classes: the class count (static).
  """

  x: jax.Array            # [N, H, W, C], model space
  y: jax.Array            # [N] int32
  class_index: jax.Array  # [num_classes, max_count] int32, rows padded by repetition
  class_count: jax.Array  # [num_classes] int32
  num_classes: int = flax.struct.field(pytree_node=False)


def make_real_data(x, y, num_classes: int) -> RealData:
  """Puts the real train split on device with its per-class index table.

  Args:
    x: preprocessed images [N, H, W, C].
    y: integer labels [N].
    num_classes: the class count.

  Returns:
    The RealData.

  Raises:
    ValueError: a class has no images.
  """
  y_np = np.asarray(y)
  rows = [np.flatnonzero(y_np == c) for c in range(num_classes)]
  if any(len(r) == 0 for r in rows):
    empty = [c for c, r in enumerate(rows) if len(r) == 0]
    raise ValueError(f"Classes {empty} have no real training images.")
  width = max(len(r) for r in rows)
  table = np.stack([np.resize(r, width) for r in rows]).astype(np.int32)
  return RealData(x=jnp.asarray(x, jnp.float32), y=jnp.asarray(y_np, jnp.int32),
                  class_index=jnp.asarray(table),
                  class_count=jnp.asarray([len(r) for r in rows], jnp.int32),
                  num_classes=num_classes)


def sample_class_indices(key: jax.Array, real: RealData, c: jax.Array, n: int) -> jax.Array:
  """`n` distinct random indices of class `c` (DC's get_images: a permutation's
  first n), jittable with traced `c`; needs n <= the class's count.

  Args:
    key: the PRNG key.
    real: the real data.
    c: the class (may be traced).
    n: how many indices (static).

  Returns:
    int32 [n] row indices into `real.x`.
  """
  width = real.class_index.shape[1]
  scores = jax.random.uniform(key, (width,))
  # Padded (repeated) slots sort last, so the first n are distinct real rows.
  scores = jnp.where(jnp.arange(width) < real.class_count[c], scores, 2.0)
  order = jnp.argsort(scores)[:n]
  return real.class_index[c, order]


def sample_per_class(key: jax.Array, real: RealData, n: int) -> tuple[jax.Array, jax.Array]:
  """A real batch of n images of every class, class-sorted: ([C, n, H, W, C'], [C, n]).

  Args:
    key: the PRNG key (split per class).
    real: the real data.
    n: images per class (at most the smallest class's count).

  Returns:
    (images [num_classes, n, H, W, C], labels [num_classes, n]).
  """
  keys = jax.random.split(key, real.num_classes)
  idx = jax.vmap(lambda k, c: sample_class_indices(k, real, c, n))(keys, jnp.arange(real.num_classes))
  return real.x[idx], real.y[idx]


@flax.struct.dataclass
class DistillState:
  """A distillation run's state, a checkpointed pytree; fields as commented.

  Attributes:
    step: int32 scalar, outer iterations done.
    images: [N, H, W, C] synthetic images, class-sorted, model space.
    labels: [N] int32, or [N, num_classes] float32 when labels are learned.
    lr: the learned synthetic lr (MTT); the fixed inner lr otherwise.
    opt_state: the optimiser state of the learned quantities.
    extra: method-specific state.
  """
  step: jax.Array          # outer iterations done
  images: jax.Array        # [N, H, W, C] synthetic images, class-sorted, model space
  labels: jax.Array        # [N] int32, or [N, num_classes] float32 when labels are learned
  lr: jax.Array            # learned synthetic lr (MTT); the fixed inner lr otherwise
  opt_state: PyTree        # optimiser state of the learned quantities
  extra: PyTree = None     # method-specific


def check_finite(state: DistillState, metrics: dict) -> None:
  """Raises DistillationDiverged naming what went non-finite (host-side check).

  Args:
    state: the DistillState after a step.
    metrics: that step's metrics.

  Raises:
    DistillationDiverged: a float metric, the images, the lr or learned labels hold
      NaN/inf.
  """
  problems = []
  for name, value in metrics.items():
    arr = np.asarray(value)
    if np.issubdtype(arr.dtype, np.floating) and not np.all(np.isfinite(arr)):
      problems.append(f"metric {name!r} = {arr if arr.size == 1 else 'non-finite values'}")
  if not bool(jnp.all(jnp.isfinite(state.images))):
    problems.append("synthetic images contain NaN/inf")
  if not bool(jnp.all(jnp.isfinite(state.lr))):
    problems.append(f"learned lr = {np.asarray(state.lr)}")
  if jnp.issubdtype(state.labels.dtype, jnp.floating) and not bool(jnp.all(jnp.isfinite(state.labels))):
    problems.append("learned labels contain NaN/inf")
  if problems:
    raise DistillationDiverged(
        f"Distillation diverged at iteration {int(state.step)}: " + "; ".join(problems) + ".")
