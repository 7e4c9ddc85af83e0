"""Training and evaluation as pure functions (optax, lax.scan).

Protocols (the paper's two training setups, and the DC benchmark's evaluation):

* **Protocol A** (`train_full_batch`): full-batch training on a small set, e.g. 300
  steps of SGD(0.01, momentum 0.9) on 100 distilled images, as one `lax.scan`. It is
  vmappable over initial variables (seeds) and over per-example weights (leave-one-out:
  the loss is sum_i w_i l_i / sum_i w_i).
* **Protocol B** (`train_minibatch`): minibatch training on real data (batch 256,
  a seeded reshuffle every epoch, the last partial batch kept, as PyTorch's
  `drop_last=False`). An optional `record_fn` is evaluated after every iteration
  inside the scan (test accuracy, test predictions, ...), so nothing goes back to the
  host per step.
* **DC protocol** (`dc_optimizer`, `evaluate_dc_protocol`): SGD momentum 0.9,
  weight decay 5e-4, lr x0.1 at the midpoint, 300 or 1000 epochs, batch 256, an
  augmentation hook; mean and std over seeds.

State goes in and comes out: `TrainState(step, params, model_state, opt_state)`.
`model_state` holds the non-parameter collections (batch_stats), possibly `{}`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ddjax import optim

__all__ = [
    "AugmentFn", "RecordFn", "TrainState", "accuracy", "apply_model", "create_train_state",
    "cross_entropy", "dc_optimizer", "evaluate", "evaluate_dc_protocol", "make_eval_recorder",
    "mean_std", "protocol_a_accuracy", "sgd_momentum", "split_variables", "steps_per_epoch",
    "train_epoch", "train_full_batch", "train_minibatch", "train_step",
]

PyTree = Any
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]  # (key, images) -> images
RecordFn = Callable[[PyTree, PyTree], PyTree]  # (params, model_state) -> metrics pytree


@flax.struct.dataclass
class TrainState:
  """A network's training state, a pytree (it goes through jit, vmap and checkpoints).

  Attributes:
    step: int32 scalar, the number of optimiser steps taken.
    params: the 'params' collection.
    model_state: the other variable collections (batch_stats), possibly {}.
    opt_state: the optax state of `params`.
  """

  step: jax.Array
  params: PyTree
  model_state: PyTree
  opt_state: PyTree

  @property
  def variables(self) -> dict:
    """The flax variables {'params': ..., **model_state}, for `model.apply`."""
    return {"params": self.params, **self.model_state}


def split_variables(variables: dict) -> tuple[PyTree, dict]:
  """Splits flax variables into the parameters and the other collections.

  Args:
    variables: {'params': ..., and e.g. 'batch_stats': ...}.

  Returns:
    (params, {the other collections}).
  """
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables


def create_train_state(variables: dict, tx: optax.GradientTransformation) -> TrainState:
  """A fresh TrainState (step 0) with `tx` initialised on the parameters.

  Args:
    variables: the network's flax variables.
    tx: the optimiser.

  Returns:
    The TrainState.
  """
  params, model_state = split_variables(variables)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=tx.init(params))


def apply_model(model: nn.Module, params: PyTree, model_state: dict, x: jax.Array,
                train: bool) -> tuple[jax.Array, dict]:
  """Logits and the updated model_state (batch-norm statistics when training).

  Args:
    model: the flax module.
    params: its parameters.
    model_state: its other collections ({} for stateless models).
    x: the inputs [N, H, W, C].
    train: training mode: batch norm uses the batch statistics and updates the
      running averages.

  Returns:
    (logits [N, num_classes], model_state): the new statistics when training a
    stateful model, else `model_state` unchanged.
  """
  variables = {"params": params, **model_state}
  if train and model_state:
    logits, updates = model.apply(variables, x, train=True, mutable=list(model_state))
    return logits, {**model_state, **updates}
  return model.apply(variables, x, train=train), model_state


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  weights: jax.Array | None = None) -> jax.Array:
  """Mean (or weighted mean, sum w l / sum w) softmax cross-entropy.

  Args:
    logits: [N, C].
    labels: integer classes [N] or soft/one-hot targets [N, C].
    weights: optional per-example weights [N] (zeros drop examples).

  Returns:
    The scalar loss.
  """
  if labels.ndim == logits.ndim:
    losses = optax.softmax_cross_entropy(logits, labels)
  else:
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if weights is None:
    return losses.mean()
  return jnp.sum(weights * losses) / jnp.maximum(jnp.sum(weights), 1e-12)


def accuracy(logits: jax.Array, labels: jax.Array, weights: jax.Array | None = None) -> jax.Array:
  """The (weighted) fraction of examples whose argmax logit is the label.

  Args:
    logits: [N, C].
    labels: integer classes [N], or soft/one-hot targets [N, C] (their argmax counts).
    weights: optional per-example weights [N].

  Returns:
    The scalar accuracy in [0, 1].
  """
  if labels.ndim == logits.ndim:
    labels = jnp.argmax(labels, -1)
  correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
  if weights is None:
    return correct.mean()
  return jnp.sum(weights * correct) / jnp.maximum(jnp.sum(weights), 1e-12)


def sgd_momentum(learning_rate: float = 0.01, momentum: float = 0.9,
                 weight_decay: float = 0.0) -> optax.GradientTransformation:
  """torch.optim.SGD(lr, momentum, weight_decay): decay is added to the gradient first.

  Args:
    learning_rate: a float or an optax schedule.
    momentum: heavy-ball momentum (no dampening); 0 gives plain SGD.
    weight_decay: L2 decay added to the gradient before the update (PyTorch's
      `weight_decay`).

  Returns:
    `optim.make("sgd", ...)`: the optax GradientTransformation.
  """
  return optim.make("sgd", learning_rate, momentum=momentum, weight_decay=weight_decay)


def train_step(model: nn.Module, tx: optax.GradientTransformation, state: TrainState,
               x: jax.Array, y: jax.Array, weights: jax.Array | None = None
               ) -> tuple[TrainState, dict]:
  """One optimiser step on (x, y); returns the new state and the pre-step metrics.

  Args:
    model: the flax module.
    tx: the optimiser `state.opt_state` belongs to.
    state: the TrainState.
    x: the batch's inputs [N, H, W, C].
    y: its labels (integer [N] or soft [N, C]).
    weights: optional per-example loss weights [N].

  Returns:
    (new state, {'loss', 'accuracy'} of the batch before the step).
  """

  def loss_fn(params):
    logits, model_state = apply_model(model, params, state.model_state, x, train=True)
    return cross_entropy(logits, y, weights), (logits, model_state)

  (loss, (logits, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, model_state=model_state,
                            opt_state=opt_state)
  return new_state, {"loss": loss, "accuracy": accuracy(logits, y, weights)}


# ----------------------------------------------------------------------------- protocol A


def train_full_batch(model: nn.Module, tx: optax.GradientTransformation, variables: dict,
                     x: jax.Array, y: jax.Array, *, num_steps: int,
                     sample_weights: jax.Array | None = None,
                     augment_fn: AugmentFn | None = None, key: jax.Array | None = None,
                     record_fn: RecordFn | None = None) -> tuple[dict, dict]:
  """Protocol A: `num_steps` full-batch steps on (x, y), one `lax.scan`.

  Pure and jittable with `model`, `tx`, `num_steps`, `augment_fn` and `record_fn`
  static; vmap it over `variables` (seeds) or `sample_weights` (leave-one-out).

  Args:
    model: the flax module.
    tx: the optimiser (a fresh state is initialised).
    variables: the initial flax variables.
    x: the whole training set [N, H, W, C], every step's batch.
    y: its labels (integer [N] or soft [N, C]).
    num_steps: the number of steps.
    sample_weights: optional per-example loss weights [N]: the loss is
      sum_i w_i l_i / sum_i w_i.
    augment_fn: optional (key, images) -> images, applied afresh at every step.
    key: the PRNG key of the augmentation (required with `augment_fn`).
    record_fn: optional (params, model_state) -> pytree, evaluated after every step.

  Returns:
    (final variables, history): history['loss'|'accuracy'] are the [num_steps]
    pre-step full-batch metrics, and history['record'] (with `record_fn`) the pytree
    `record_fn(params, model_state)` after every step, stacked on a leading axis.

  Raises:
    ValueError: `augment_fn` without `key`.
  """
  if augment_fn is not None and key is None:
    raise ValueError("train_full_batch: augment_fn needs a PRNG key.")
  state = create_train_state(variables, tx)

  def body(state, step_key):
    xb = x if augment_fn is None else augment_fn(step_key, x)
    state, metrics = train_step(model, tx, state, xb, y, sample_weights)
    if record_fn is not None:
      metrics["record"] = record_fn(state.params, state.model_state)
    return state, metrics

  step_keys = (jax.random.split(key, num_steps) if key is not None
               else jnp.zeros((num_steps,), jnp.uint32))
  state, history = jax.lax.scan(body, state, step_keys)
  return state.variables, history


# ----------------------------------------------------------------------------- protocol B


def _epoch_batches(key: jax.Array, num_examples: int, batch_size: int) -> tuple[jax.Array, jax.Array]:
  """A seeded permutation split into [num_batches, batch_size] indices and a validity mask.

  The last batch is partial (PyTorch drop_last=False): padded entries get weight 0,
  so its loss is the mean over its real examples. The padding repeats the epoch's first
  examples (not one image `pad` times): batch-norm statistics, which see every entry of
  the batch, then come from a random batch rather than from copies of one image.
  """
  num_batches = -(-num_examples // batch_size)
  perm = jax.random.permutation(key, num_examples)
  pad = num_batches * batch_size - num_examples
  idx = jnp.concatenate([perm, jnp.resize(perm, (pad,))]).reshape(num_batches, batch_size)
  mask = (jnp.arange(num_batches * batch_size) < num_examples).reshape(num_batches, batch_size)
  return idx, mask.astype(jnp.float32)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
  """Batches per epoch with the last partial batch kept: ceil(num_examples / batch_size).

  Args:
    num_examples: the training set's size.
    batch_size: the batch size.

  Returns:
    The number of steps per epoch.
  """
  return -(-num_examples // batch_size)


def train_epoch(model: nn.Module, tx: optax.GradientTransformation, state: TrainState,
                x: jax.Array, y: jax.Array, key: jax.Array, *, batch_size: int = 256,
                augment_fn: AugmentFn | None = None,
                record_fn: RecordFn | None = None) -> tuple[TrainState, dict]:
  """One epoch of minibatch training (a scan over the epoch's batches).

  `key` draws the epoch's permutation (the last batch partial, its padding weighted
  0) and the augmentation keys.

  Args:
    model: the flax module.
    tx: the optimiser of `state`.
    state: the TrainState.
    x: the training inputs [N, H, W, C].
    y: their labels.
    key: the epoch's PRNG key.
    batch_size: the batch size.
    augment_fn: optional (key, images) -> images, applied to every batch.
    record_fn: optional (params, model_state) -> pytree, evaluated after every step.

  Returns:
    (new state, history): {'loss', 'accuracy'} per step [steps_per_epoch], and
    'record' with `record_fn`.
  """
  perm_key, aug_key = jax.random.split(key)
  batch_idx, batch_mask = _epoch_batches(perm_key, x.shape[0], batch_size)
  aug_keys = jax.random.split(aug_key, batch_idx.shape[0])

  def body(state, inputs):
    idx, mask, k = inputs
    xb, yb = x[idx], y[idx]
    if augment_fn is not None:
      xb = augment_fn(k, xb)
    state, metrics = train_step(model, tx, state, xb, yb, mask)
    if record_fn is not None:
      metrics["record"] = record_fn(state.params, state.model_state)
    return state, metrics

  return jax.lax.scan(body, state, (batch_idx, batch_mask, aug_keys))


def train_minibatch(model: nn.Module, tx: optax.GradientTransformation, state: TrainState,
                    x: jax.Array, y: jax.Array, key: jax.Array, *, num_epochs: int,
                    batch_size: int = 256, first_epoch: int = 0,
                    augment_fn: AugmentFn | None = None,
                    record_fn: RecordFn | None = None) -> tuple[TrainState, dict]:
  """Protocol B: `num_epochs` epochs; epoch e reshuffles with `fold_in(key, e)`.

  Args:
    model: the flax module.
    tx: the optimiser of `state`.
    state: the TrainState.
    x: the training inputs [N, H, W, C].
    y: their labels.
    key: the run's PRNG key.
    num_epochs: the number of epochs to train.
    batch_size: the batch size.
    first_epoch: the index of the first epoch, so that a resumed run continues the
      same shuffle sequence.
    augment_fn: optional (key, images) -> images, applied to every batch.
    record_fn: optional (params, model_state) -> pytree, evaluated after every step.

  Returns:
    (new state, history): history leaves are [num_epochs * steps_per_epoch, ...]
    (every iteration), as in `train_epoch`.
  """
  epoch_fn = functools.partial(train_epoch, model, tx, batch_size=batch_size,
                               augment_fn=augment_fn, record_fn=record_fn)

  def body(state, epoch):
    return epoch_fn(state, x, y, jax.random.fold_in(key, epoch))

  state, history = jax.lax.scan(body, state, first_epoch + jnp.arange(num_epochs))
  return state, jax.tree_util.tree_map(lambda h: h.reshape((-1,) + h.shape[2:]), history)


# ----------------------------------------------------------------------------- evaluation


def evaluate(model: nn.Module, variables: dict, x: jax.Array, y: jax.Array,
             batch_size: int = 1000) -> dict:
  """Accuracy, mean loss, per-example loss and predictions, batched with `lax.map`.

  Args:
    model: the flax module (applied with train=False).
    variables: its flax variables.
    x: the inputs [N, H, W, C].
    y: their labels, integer [N] or soft [N, C].
    batch_size: examples per forward pass (the last batch is zero-padded).

  Returns:
    {'accuracy': scalar, 'loss': scalar mean cross-entropy, 'per_example_loss': [N],
    'predictions': int32 [N] argmax classes}.
  """
  n = x.shape[0]
  batch_size = min(batch_size, n)
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  xp = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]) if pad else x
  xp = xp.reshape((num_batches, batch_size) + x.shape[1:])
  logits = jax.lax.map(lambda xb: model.apply(variables, xb, train=False), xp)
  logits = logits.reshape((num_batches * batch_size,) + logits.shape[2:])[:n]
  if y.ndim == 2:
    per_example = optax.softmax_cross_entropy(logits, y)
    labels = jnp.argmax(y, -1)
  else:
    per_example = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    labels = y
  predictions = jnp.argmax(logits, -1)
  return {"accuracy": jnp.mean((predictions == labels).astype(jnp.float32)),
          "loss": per_example.mean(), "per_example_loss": per_example,
          "predictions": predictions.astype(jnp.int32)}


def make_eval_recorder(model: nn.Module, x: jax.Array, y: jax.Array, *, batch_size: int = 1000,
                       predictions: bool = False) -> RecordFn:
  """A `record_fn` giving accuracy (and optionally predictions) on (x, y) per iteration.

  Args:
    model: the flax module.
    x: the evaluation inputs [N, H, W, C].
    y: their labels.
    batch_size: `evaluate`'s batch size.
    predictions: also record the int16 predictions [N].

  Returns:
    (params, model_state) -> {'accuracy', 'loss'} (and 'predictions').
  """

  def record(params, model_state):
    result = evaluate(model, {"params": params, **model_state}, x, y, batch_size)
    out = {"accuracy": result["accuracy"], "loss": result["loss"]}
    if predictions:
      out["predictions"] = result["predictions"].astype(jnp.int16)
    return out

  return record


# ----------------------------------------------------------------------------- protocols over seeds


def protocol_a_accuracy(model: nn.Module, keys: jax.Array, x: jax.Array, y: jax.Array,
                        x_test: jax.Array, y_test: jax.Array, *, num_steps: int = 300,
                        learning_rate: float = 0.01, momentum: float = 0.9) -> jax.Array:
  """Test accuracy after protocol A from each init key in `keys` (vmapped): [num_seeds].

  Args:
    model: the flax module (stateless, or its batch statistics are trained too).
    keys: one initialisation PRNG key per seed, [num_seeds, 2].
    x: the (distilled) training set [N, H, W, C].
    y: its labels.
    x_test: the test inputs.
    y_test: the test labels.
    num_steps: full-batch SGD steps.
    learning_rate: SGD's learning rate.
    momentum: SGD's momentum.

  Returns:
    The test accuracies [num_seeds].
  """
  tx = sgd_momentum(learning_rate, momentum)

  def one(key):
    variables = model.init(key, x[:1], train=False)
    variables, _ = train_full_batch(model, tx, dict(variables), x, y, num_steps=num_steps)
    return evaluate(model, variables, x_test, y_test)["accuracy"]

  return jax.vmap(one)(keys)


def dc_optimizer(learning_rate: float, total_steps: int, momentum: float = 0.9,
                 weight_decay: float = 5e-4) -> optax.GradientTransformation:
  """DC's evaluate_synset optimiser: lr x0.1 at the midpoint, wd 5e-4, momentum 0.9.

  (DC rebuilds its optimiser at the midpoint, which also resets the momentum buffer;
  this keeps it, a difference of one step's momentum.)

  Args:
    learning_rate: the initial learning rate.
    total_steps: the run's total steps; the rate drops x0.1 after total_steps // 2.
    momentum: SGD's momentum.
    weight_decay: L2 decay added to the gradient.

  Returns:
    The optax GradientTransformation.
  """
  schedule = optax.piecewise_constant_schedule(learning_rate, {total_steps // 2: 0.1})
  return sgd_momentum(schedule, momentum, weight_decay)


def evaluate_dc_protocol(model: nn.Module, keys: jax.Array, x: jax.Array, y: jax.Array,
                         x_test: jax.Array, y_test: jax.Array, *, num_epochs: int = 300,
                         batch_size: int = 256, learning_rate: float = 0.01,
                         augment_fn: AugmentFn | None = None) -> jax.Array:
  """DC evaluation protocol from each key in `keys` (init + shuffles + augmentation),
  vmapped over seeds.

  Args:
    model: the flax module.
    keys: one PRNG key per seed [num_seeds, 2] (init, shuffles and augmentation).
    x: the (distilled) training set [N, H, W, C].
    y: its labels.
    x_test: the test inputs.
    y_test: the test labels.
    num_epochs: epochs of minibatch training (`dc_optimizer`'s schedule).
    batch_size: the batch size (capped at N).
    learning_rate: the initial learning rate.
    augment_fn: optional (key, images) -> images, e.g. DSA.

  Returns:
    The test accuracies [num_seeds].
  """
  total_steps = num_epochs * steps_per_epoch(x.shape[0], batch_size)
  tx = dc_optimizer(learning_rate, total_steps)

  def one(key):
    init_key, train_key = jax.random.split(key)
    state = create_train_state(dict(model.init(init_key, x[:1], train=False)), tx)
    state, _ = train_minibatch(model, tx, state, x, y, train_key, num_epochs=num_epochs,
                               batch_size=min(batch_size, x.shape[0]), augment_fn=augment_fn)
    return evaluate(model, state.variables, x_test, y_test)["accuracy"]

  return jax.vmap(one)(keys)


def mean_std(values) -> tuple[float, float]:
  """The mean and the (population) standard deviation, as Python floats.

  Args:
    values: numbers (a list or an array).

  Returns:
    (mean, std), computed in float64.
  """
  values = np.asarray(values, np.float64)
  return float(values.mean()), float(values.std())
