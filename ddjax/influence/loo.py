"""Exact leave-one-out influence by retraining, as one batched computation (the paper's
section 5, Fig. 10).

The paper retrains protocol A (300 full-batch SGD steps, lr 0.01, momentum 0.9)
from one fixed initialisation n + 1 times: once without each of the n training
(distilled) points and once on all of them, and reports, per test image t,

    I[i, t] = loss(x_t; theta_without_i) - loss(x_t; theta_all),

positive when point i helps test image t. Here the n + 1 runs are one `vmap` (or
chunks of one, `chunk_size`) of `train.train_full_batch` over weight masks: run i
weights point i by 0, so its loss sum_j w_j l_j / sum_j w_j is exactly the mean
over the other n - 1 points, and every run starts from the same variables.

With several local devices the runs are split over them (`mesh="auto"`, the default;
see `ddjax.parallel`): the masks are padded to a multiple of the device count and
sharded, each run's arithmetic is unchanged, so the matrix is the single-device one.

Batch norm would break the equivalence (a masked point still enters the batch
statistics), so models with `batch_stats` are refused.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ddjax import parallel, train
from ddjax.errors import ConfigError

__all__ = ["LOOResult", "loo_influence", "loo_masks", "loo_retrain"]

PyTree = Any


def loo_masks(n: int, dtype=jnp.float32) -> jax.Array:
  """[n + 1, n] weights: row i < n drops point i; the last row keeps every point.

  Args:
    n: the number of training points (>= 2).
    dtype: the weights' dtype.

  Returns:
    The [n + 1, n] 0/1 weight masks.

  Raises:
    ConfigError: n < 2.
  """
  if n < 2:
    raise ConfigError(f"Leave-one-out needs at least 2 training points, got {n}.")
  return (1 - jnp.eye(n + 1, n)).astype(dtype)


@dataclasses.dataclass(frozen=True)
class LOOResult:
  """Exact leave-one-out results (`loo_influence`).

  Attributes:
    influence: [n_train, n_test], loss_without[i] - loss_all: positive when point i
      helps test point t.
    loss_all: [n_test] per-example test loss of the model trained on all points.
    loss_without: [n_train, n_test] the same without each point.
    accuracy_all: test accuracy of the model trained on all points.
    accuracy_without: [n_train] test accuracy without each point.
    variables_all: the model trained on all points.
  """
  influence: np.ndarray       # [n_train, n_test]: loss_without_i - loss_all
  loss_all: np.ndarray        # [n_test] per-example test loss of the model trained on all points
  loss_without: np.ndarray    # [n_train, n_test]
  accuracy_all: float
  accuracy_without: np.ndarray  # [n_train]
  variables_all: PyTree       # the model trained on all points


def _check(variables: dict, x, y, x_test, y_test) -> None:
  if any(k != "params" for k in variables):
    raise ConfigError(
        f"Batched leave-one-out needs a model without batch statistics (got collections "
        f"{sorted(variables)}): a masked point would still enter the batch-norm statistics.")
  if x.shape[0] != y.shape[0] or x_test.shape[0] != y_test.shape[0]:
    raise ValueError(f"Inputs and labels disagree: train {x.shape[0]} vs {y.shape[0]}, "
                     f"test {x_test.shape[0]} vs {y_test.shape[0]}.")


@functools.partial(jax.jit, static_argnames=("model", "num_steps", "learning_rate", "momentum",
                                             "weight_decay", "chunk_size", "eval_batch_size",
                                             "mesh"))
def _retrain_and_evaluate(model, variables, x, y, x_test, y_test, masks, *, num_steps: int,
                          learning_rate: float, momentum: float, weight_decay: float,
                          chunk_size: int | None, eval_batch_size: int, mesh=None):
  tx = train.sgd_momentum(learning_rate, momentum, weight_decay)

  def one(weights):
    final, _ = train.train_full_batch(model, tx, variables, x, y, num_steps=num_steps,
                                      sample_weights=weights)
    ev = train.evaluate(model, final, x_test, y_test, eval_batch_size)
    return final, ev["per_example_loss"], ev["accuracy"]

  if mesh is not None:  # masks padded to whole chunks that split over the devices
    chunk = chunk_size or masks.shape[0]
    chunks = parallel.shard_axis(masks.reshape((-1, chunk) + masks.shape[1:]), 1, mesh)
    out = jax.lax.map(jax.vmap(one), chunks)
    return jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:]), out)
  if chunk_size is None or chunk_size >= masks.shape[0]:
    return jax.vmap(one)(masks)
  return jax.lax.map(one, masks, batch_size=chunk_size)


def loo_retrain(model, variables: dict, x, y, x_test, y_test, *, masks=None, num_steps: int = 300,
                learning_rate: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0,
                chunk_size: int | None = None, eval_batch_size: int = 100, mesh="auto"):
  """Protocol A from `variables` once per row of `masks` (default `loo_masks(n)`).

  (torch-style SGD with momentum; `weight_decay` is 0 in the paper.)

  All runs are one jitted call: a vmap, or a `lax.map` over chunks of `chunk_size`
  vmapped runs to bound memory. Every vmapped run evaluates `eval_batch_size` test
  images at once, so memory also grows with runs x eval_batch_size (101 runs x 1,000
  images, width-32 ConvNet: ~14 GB; x 100: ~2 GB).

  Args:
    model: the flax module (without batch statistics).
    variables: the common initial variables.
    x: the training (distilled) points [n, ...].
    y: their labels.
    x_test: the test inputs.
    y_test: the test labels.
    masks: per-run example weights [runs, n] (default `loo_masks(n)`).
    num_steps: full-batch SGD steps per run.
    learning_rate: SGD's learning rate.
    momentum: SGD's momentum.
    weight_decay: L2 decay added to the gradient.
    chunk_size: runs vmapped per call (None: all).
    eval_batch_size: test images evaluated at once per run.
    mesh: "auto" (every local device), None (one device) or a Mesh; splits the runs
      of a chunk over the devices.

  Returns:
    (final variables stacked over runs, per-example test losses [runs, n_test],
    test accuracies [runs]), device arrays.

  Raises:
    ConfigError: a model with batch statistics.
    ValueError: inputs and labels of different lengths, or masks not [runs, n].
  """
  variables = dict(variables)
  x, y, x_test, y_test = map(jnp.asarray, (x, y, x_test, y_test))
  _check(variables, x, y, x_test, y_test)
  if masks is None:
    masks = loo_masks(x.shape[0])
  masks = jnp.asarray(masks, jnp.float32)
  if masks.ndim != 2 or masks.shape[1] != x.shape[0]:
    raise ValueError(f"masks must be [runs, {x.shape[0]}], got {masks.shape}.")
  runs = masks.shape[0]
  mesh = parallel.resolve_mesh(mesh)
  if mesh is not None:
    # Whole chunks, each a multiple of the device count; the padding repeats the last
    # run and is trimmed below.
    chunk = parallel.round_up(min(chunk_size or runs, runs), mesh.devices.size)
    masks = parallel.pad_members(masks, chunk)
    chunk_size = chunk if chunk < masks.shape[0] else None
  out = _retrain_and_evaluate(model, variables, x, y, x_test, y_test, masks, num_steps=num_steps,
                              learning_rate=float(learning_rate), momentum=float(momentum),
                              weight_decay=float(weight_decay), chunk_size=chunk_size,
                              eval_batch_size=min(eval_batch_size, x_test.shape[0]), mesh=mesh)
  return out if mesh is None else jax.tree_util.tree_map(lambda a: a[:runs], out)


def loo_influence(model, variables: dict, x, y, x_test, y_test, *, num_steps: int = 300,
                  learning_rate: float = 0.01, momentum: float = 0.9, weight_decay: float = 0.0,
                  chunk_size: int | None = None, eval_batch_size: int = 100,
                  mesh="auto") -> LOOResult:
  """Exact leave-one-out influence of each training point on each test point.

  n + 1 protocol-A retrains from the same `variables` in one batched call (see
  module doc).

  Args:
    model: the flax module (without batch statistics).
    variables: the common initial variables.
    x: the training (distilled) points [n, ...].
    y: their labels.
    x_test: the test inputs.
    y_test: the test labels.
    num_steps: full-batch SGD steps per run.
    learning_rate: SGD's learning rate.
    momentum: SGD's momentum.
    weight_decay: L2 decay added to the gradient.
    chunk_size: runs vmapped per call (None: all).
    eval_batch_size: test images evaluated at once per run.
    mesh: "auto", None or a Mesh (see `loo_retrain`).

  Returns:
    The LOOResult; `influence` is the [n_train, n_test] matrix of test-loss changes.

  Raises:
    ConfigError: fewer than 2 points, or a model with batch statistics.
    FloatingPointError: a retrain diverged (non-finite test loss).
  """
  finals, losses, accs = loo_retrain(model, variables, x, y, x_test, y_test, num_steps=num_steps,
                                     learning_rate=learning_rate, momentum=momentum,
                                     weight_decay=weight_decay, chunk_size=chunk_size,
                                     eval_batch_size=eval_batch_size, mesh=mesh)
  losses = np.asarray(losses, np.float64)
  if not np.all(np.isfinite(losses)):
    bad = np.flatnonzero(~np.all(np.isfinite(losses), axis=1))
    raise FloatingPointError(f"Leave-one-out retraining diverged (non-finite test loss) in runs "
                             f"{bad[:5].tolist()}; lower the learning rate.")
  accs = np.asarray(accs, np.float64)
  return LOOResult(influence=losses[:-1] - losses[-1], loss_all=losses[-1],
                   loss_without=losses[:-1], accuracy_all=float(accs[-1]),
                   accuracy_without=accs[:-1],
                   variables_all=jax.tree_util.tree_map(lambda a: a[-1], finals))
