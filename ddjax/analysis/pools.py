"""Models trained on real data (and on distilled sets) that the paper's section 4 compares
with: each pool one vmapped call, sharded over devices (`ddjax.parallel.sharded_vmap`).

* `subset_pool`: models trained to convergence (protocol B) on small class-balanced real
  subsets, one per key (the subset-trained models of the paper's Fig. 4).
* `early_stopped_pool`: protocol-B training on all real data, with the test predictions
  after every iteration (the early-stopped models of Fig. 4).
* `train_distilled_models`: protocol A on distilled sets (sets x seeds of one shape).
* `parameter_trajectories`: the parameters after every iteration of protocol-B real
  training, recorded inside the scan (the states of the paper's Fig. 6).

Iterations are counted as SGD steps taken: "iteration t" is the model after t steps.
Also here: the fold_in streams that keep the section-4 analyses' randomness apart, the
fields of their cache payloads, and their config checks. Not an analysis itself.
"""

from __future__ import annotations

import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddjax import data, models, parallel, train
from ddjax.analysis import common
from ddjax.errors import ConfigError

__all__ = ["AGREEMENT_STREAM", "RECOGNITION_STREAM", "CURVATURE_STREAM", "stream_key",
           "stack_keys", "model_fields", "data_fields", "check_positive_int",
           "check_fraction", "subset_per_class", "subset_indices", "fit_subset_model",
           "subset_pool", "early_stopped_pool", "train_distilled_models",
           "parameter_trajectories", "state_at"]

# fold_in constants: each analysis draws from its own stream of config.seed (agreement,
# the paper's Fig. 4; recognition over training, Fig. 5; curvature over training, Fig. 6).
AGREEMENT_STREAM, RECOGNITION_STREAM, CURVATURE_STREAM = 5, 6, 7


# ----------------------------------------------------------------------------- helpers


def stream_key(seed: int, stream: int) -> jax.Array:
  """The key of an analysis's stream: fold_in(PRNGKey(seed), stream).

  Args:
    seed: config.seed.
    stream: one of the *_STREAM constants.

  Returns:
    A PRNG key.
  """
  return jax.random.fold_in(jax.random.PRNGKey(seed), stream)


def stack_keys(key: jax.Array, ids: Iterable[int]) -> jax.Array:
  """The keys fold_in(key, i) for i in `ids`, stacked (one per vmapped member).

  Args:
    key: a PRNG key.
    ids: integers.

  Returns:
    [len(ids), ...] keys.
  """
  return jnp.stack([jax.random.fold_in(key, int(i)) for i in ids])


def model_fields(config: ml_collections.ConfigDict, which: str = "model") -> dict:
  """The network of `config.model` (or of `config.real_model` when which="real_model").

  Args:
    config: an analysis config.
    which: "model" (the network distilled sets train) or "real_model".

  Returns:
    {"model": canonical registry name, "kwargs": its constructor arguments}, for a
    result's JSON and a cache payload.
  """
  if which == "real_model":
    rm = config.real_model
    return {"model": models.canonical_model_name(rm.model),
            "kwargs": common.to_dict(rm.model_kwargs)}
  return {"model": models.canonical_model_name(config.model),
          "kwargs": common.to_dict(config.model_kwargs)}


def data_fields(config: ml_collections.ConfigDict, real: data.ImageDataset) -> dict:
  """What a cache entry's real data depends on: dataset, preprocessing, split sizes, seed.

  Args:
    config: an analysis config.
    real: the real dataset it loaded.

  Returns:
    A JSON-able dict for a cache payload.
  """
  return {"dataset": real.name, "preprocess": config.get("preprocess", "standardize"),
          "n_train": int(real.x_train.shape[0]), "n_test": int(real.x_test.shape[0]),
          "train_per_class": config.get("train_per_class", 0),
          "test_per_class": config.get("test_per_class", 0), "seed": int(config.seed)}


def check_positive_int(section_name: str, section: ml_collections.ConfigDict,
                       *fields: str) -> None:
  """Checks that `section.<field>` is a positive integer for every field.

  Args:
    section_name: the section's name, for the message.
    section: the config section.
    *fields: the fields to check.

  Raises:
    ConfigError: naming the first field that is not.
  """
  for f in fields:
    v = section[f]
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
      raise ConfigError(f"config.{section_name}.{f} must be a positive integer, got {v!r}.")


def check_fraction(section_name: str, field: str, value, *, allow_zero: bool = False) -> None:
  """Checks that `value` lies in (0, 1] (or [0, 1] with allow_zero).

  Args:
    section_name, field: where the value comes from, for the message.
    value: the number.
    allow_zero: whether 0 is allowed.

  Raises:
    ConfigError: if it does not.
  """
  lo_ok = value >= 0 if allow_zero else value > 0
  if not (lo_ok and value <= 1):
    interval = "[0, 1]" if allow_zero else "(0, 1]"
    raise ConfigError(f"config.{section_name}.{field} must be in {interval}, got {value!r}.")


# ----------------------------------------------------------------------------- subset pool


def subset_per_class(fraction: float, class_count: int) -> int:
  """Images per class of a `fraction` subset (the paper's int(5000 * s)).

  Args:
    fraction: the subset's fraction of each class, in (0, 1].
    class_count: the images of the smallest class.

  Returns:
    int(fraction * class_count), at least 1.

  Raises:
    ConfigError: if the fraction is not in (0, 1].
  """
  if not 0 < fraction <= 1:
    raise ConfigError(f"Subset fraction must be in (0, 1], got {fraction!r}.")
  return max(1, int(fraction * class_count))


def subset_indices(key: jax.Array, labels, fraction: float, num_classes: int) -> np.ndarray:
  """Class-balanced indices of a `fraction` subset of the train split.

  Args:
    key: the PRNG key of the draw.
    labels: the train labels [N].
    fraction: as `subset_per_class`, of the smallest class.
    num_classes: the class count.

  Returns:
    The indices, class-sorted.
  """
  labels = np.asarray(labels)
  counts = np.bincount(labels, minlength=num_classes)
  return data.class_balanced_indices(key, labels, subset_per_class(fraction, int(counts.min())),
                                     num_classes)


def _fit_subset_member(model, learning_rate, momentum, num_epochs, batch_size, key, idx, x, y,
                       x_test, y_test):
  """One subset-trained model: protocol B on (x[idx], y[idx]); its test predictions."""
  init_key, train_key = jax.random.split(key)
  tx = train.sgd_momentum(learning_rate, momentum)
  state = train.create_train_state(models.init_variables(model, init_key, x.shape), tx)
  state, _ = train.train_minibatch(model, tx, state, x[idx], y[idx], train_key,
                                   num_epochs=num_epochs, batch_size=min(batch_size, idx.shape[0]))
  out = train.evaluate(model, state.variables, x_test, y_test)
  return out["predictions"], out["accuracy"]


@functools.lru_cache(maxsize=32)
def _subset_member_fn(model, learning_rate: float, momentum: float, num_epochs: int,
                      batch_size: int):
  # One object per setting, so sharded_vmap's compiled program is reused across calls.
  return functools.partial(_fit_subset_member, model, learning_rate, momentum, num_epochs,
                           batch_size)


def fit_subset_model(model, key, idx, x, y, x_test, y_test, *, num_epochs: int,
                     batch_size: int = 256, learning_rate: float = 0.01,
                     momentum: float = 0.9) -> tuple[jax.Array, jax.Array]:
  """One subset-trained model (jitted, not vmapped): a reference for `subset_pool`.

  Args:
    model: the flax module.
    key: its init and batch-order key.
    idx: the subset's indices into (x, y).
    x, y: the real train split; x_test, y_test: the real test split.
    num_epochs, batch_size, learning_rate, momentum: protocol B.

  Returns:
    (test predictions [n_test], test accuracy).
  """
  fn = _subset_member_fn(model, float(learning_rate), float(momentum), int(num_epochs),
                         int(batch_size))
  return jax.jit(fn)(key, jnp.asarray(idx), jnp.asarray(x), jnp.asarray(y), jnp.asarray(x_test),
                     jnp.asarray(y_test))


def subset_pool(model, keys: jax.Array, subset_idx, x, y, x_test, y_test, *, num_epochs: int,
                batch_size: int = 256, learning_rate: float = 0.01,
                momentum: float = 0.9) -> tuple[jax.Array, jax.Array]:
  """Models trained on equal-size subsets, one per key, as one vmapped sharded call.

  Args:
    model: the flax module.
    keys: [M] init and batch-order keys.
    subset_idx: [M, n] each member's subset of (x, y).
    x, y: the real train split; x_test, y_test: the real test split.
    num_epochs, batch_size, learning_rate, momentum: protocol B.

  Returns:
    (test predictions [M, n_test], accuracies [M]).

  Raises:
    ValueError: if subset_idx is not [M, n].
  """
  subset_idx = jnp.asarray(subset_idx)
  if subset_idx.ndim != 2 or subset_idx.shape[0] != keys.shape[0]:
    raise ValueError(f"subset_idx must be [num_models, subset_size] with {keys.shape[0]} rows, "
                     f"got shape {subset_idx.shape}.")
  fn = _subset_member_fn(model, float(learning_rate), float(momentum), int(num_epochs),
                         int(batch_size))
  return parallel.sharded_vmap(fn, in_axes=(0, 0, None, None, None, None))(
      keys, subset_idx, jnp.asarray(x), jnp.asarray(y), jnp.asarray(x_test), jnp.asarray(y_test))


# ----------------------------------------------------------------------------- early-stopped pool


def _fit_early_member(model, learning_rate, momentum, num_epochs, batch_size, eval_batch_size,
                      key, x, y, x_test, y_test):
  init_key, train_key = jax.random.split(key)
  tx = train.sgd_momentum(learning_rate, momentum)
  state = train.create_train_state(models.init_variables(model, init_key, x.shape), tx)
  record = train.make_eval_recorder(model, x_test, y_test, batch_size=eval_batch_size,
                                    predictions=True)
  state, history = train.train_minibatch(model, tx, state, x, y, train_key, num_epochs=num_epochs,
                                         batch_size=min(batch_size, x.shape[0]), record_fn=record)
  return {"predictions": history["record"]["predictions"],
          "accuracy": history["record"]["accuracy"], "variables": state.variables}


@functools.lru_cache(maxsize=16)
def _early_member_fn(model, learning_rate: float, momentum: float, num_epochs: int,
                     batch_size: int, eval_batch_size: int):
  return functools.partial(_fit_early_member, model, learning_rate, momentum, num_epochs,
                           batch_size, eval_batch_size)


def early_stopped_pool(model, keys: jax.Array, x, y, x_test, y_test, *, num_epochs: int,
                       batch_size: int = 256, learning_rate: float = 0.01, momentum: float = 0.9,
                       eval_batch_size: int = 1000) -> dict[str, jax.Array]:
  """Protocol-B training on all of (x, y), one run per key, vmapped and sharded.

  Args:
    model: the flax module.
    keys: [S] init and batch-order keys.
    x, y: the real train split; x_test, y_test: the real test split.
    num_epochs, batch_size, learning_rate, momentum: protocol B.
    eval_batch_size: the batch of the per-iteration test evaluation.

  Returns:
    {"predictions": [S, T, n_test], "accuracy": [S, T]} on the test set after every
    iteration (entry j = after j + 1 steps, T = epochs x steps per epoch), and
    "variables": the final variables (leading axis S).
  """
  fn = _early_member_fn(model, float(learning_rate), float(momentum), int(num_epochs),
                        int(batch_size), int(eval_batch_size))
  return parallel.sharded_vmap(fn, in_axes=(0, None, None, None, None))(
      keys, jnp.asarray(x), jnp.asarray(y), jnp.asarray(x_test), jnp.asarray(y_test))


# ----------------------------------------------------------------------------- distilled-trained


def _fit_distilled_member(model, learning_rate, momentum, num_steps, key, x, y, x_test, y_test):
  tx = train.sgd_momentum(learning_rate, momentum)
  variables = models.init_variables(model, key, x.shape)
  variables, _ = train.train_full_batch(model, tx, variables, x, y, num_steps=num_steps)
  out = train.evaluate(model, variables, x_test, y_test)
  return out["predictions"], out["accuracy"]


@functools.lru_cache(maxsize=16)
def _distilled_member_fn(model, learning_rate: float, momentum: float, num_steps: int):
  return functools.partial(_fit_distilled_member, model, learning_rate, momentum, num_steps)


def train_distilled_models(model, keys: jax.Array, xs, ys, x_test, y_test, *, num_steps: int,
                           learning_rate: float = 0.01,
                           momentum: float = 0.9) -> tuple[jax.Array, jax.Array]:
  """Protocol A on member m's set (xs[m], ys[m]) from init key keys[m], vmapped over
  members (sets x seeds of one shape).

  Args:
    model: the flax module.
    keys: [M] init keys.
    xs, ys: [M, ...] the members' distilled images and labels.
    x_test, y_test: the real test split.
    num_steps, learning_rate, momentum: protocol A (full-batch SGD).

  Returns:
    (test predictions [M, n_test], accuracy [M]).
  """
  fn = _distilled_member_fn(model, float(learning_rate), float(momentum), int(num_steps))
  return parallel.sharded_vmap(fn, in_axes=(0, 0, 0, None, None))(
      keys, jnp.asarray(xs), jnp.asarray(ys), jnp.asarray(x_test), jnp.asarray(y_test))


# ----------------------------------------------------------------------------- trajectories


def _record_state(params, model_state):
  return {"params": params, "model_state": model_state}


def _fit_trajectory_member(model, learning_rate, momentum, num_epochs, batch_size, key, x, y):
  init_key, train_key = jax.random.split(key)
  tx = train.sgd_momentum(learning_rate, momentum)
  state = train.create_train_state(models.init_variables(model, init_key, x.shape), tx)
  first = _record_state(state.params, state.model_state)
  state, history = train.train_minibatch(model, tx, state, x, y, train_key, num_epochs=num_epochs,
                                         batch_size=min(batch_size, x.shape[0]),
                                         record_fn=_record_state)
  # States 0..T: the initialisation, then after every step.
  return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), first,
                                history["record"])


@functools.lru_cache(maxsize=16)
def _trajectory_member_fn(model, learning_rate: float, momentum: float, num_epochs: int,
                          batch_size: int):
  return functools.partial(_fit_trajectory_member, model, learning_rate, momentum, num_epochs,
                           batch_size)


def parameter_trajectories(model, keys: jax.Array, x, y, *, num_steps: int, batch_size: int = 256,
                           learning_rate: float = 0.01, momentum: float = 0.9) -> dict:
  """Protocol-B training on (x, y) per key (vmapped, sharded), recording the parameters
  (and model state) after every step inside the scan.

  All states are kept in memory: (num_steps + 1) x the parameter count per run (385 MB
  for the width-128 ConvNet at 300 steps).

  Args:
    model: the flax module.
    keys: [S] init and batch-order keys.
    x, y: the real train split.
    num_steps: the steps recorded (enough epochs are run to cover them).
    batch_size, learning_rate, momentum: protocol B.

  Returns:
    {"params", "model_state"} with leading axes [S, num_steps + 1] (state t = after t
    steps; state 0 = the init).
  """
  spe = train.steps_per_epoch(x.shape[0], min(batch_size, x.shape[0]))
  epochs = -(-num_steps // spe)
  fn = _trajectory_member_fn(model, float(learning_rate), float(momentum), int(epochs),
                             int(batch_size))
  out = parallel.sharded_vmap(fn, in_axes=(0, None, None))(keys, jnp.asarray(x), jnp.asarray(y))
  return jax.tree_util.tree_map(lambda a: a[:, :num_steps + 1], out)


def state_at(trajectories: dict, seed: int, t: int) -> dict:
  """One recorded state of `parameter_trajectories`.

  Args:
    trajectories: its output.
    seed: the run.
    t: the steps taken.

  Returns:
    The variables {"params", ...model_state} of run `seed` after `t` steps.
  """
  s = jax.tree_util.tree_map(lambda a: a[seed, t], trajectories)
  return {"params": s["params"], **s["model_state"]}
