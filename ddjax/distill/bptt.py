"""BPTT: back-propagation through unrolled training (Remember-the-Past without memory
addressing, Deng & Russakovsky 2022; RaT-BPTT, Feng et al. 2024). Hyperparameters in
`config.bptt`.

One `distill_step` is one outer iteration:

    theta_0 ~ a fresh random initialisation of config.model; v_0 = 0
    T inner steps of SGD with momentum (torch semantics) on class-balanced minibatches
      of `batch_per_class` synthetic images per class, cross-entropy on the synthetic
      labels (hard, or learned soft labels)
    outer loss: cross-entropy of theta_T on a real batch of `real_per_class` per class
    meta-gradient with respect to the images (and labels) through every inner step,
      the momentum buffer included; global-norm clipping; one outer optimiser step

RaT-BPTT truncation (`window` W > 0): a window start c ~ U{0, ..., T - W} is drawn per
iteration; the first c steps run without gradients (a `fori_loop` on stop-gradiented
data), the next W are differentiated, and the outer loss is taken after step c + W, as
RaT-BPTT does: the steps after the window are not run, since no gradient could flow
back through them anyway.

Memory: the differentiated steps are a `lax.scan` whose body is `jax.checkpoint`ed, so
the backward pass keeps one (params, velocity) pair per step plus one step's
activations, instead of all steps' activations (the constant-memory reverse pass RTP
implements by hand).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ddjax import models, optim, train
from ddjax.data import sampling
from ddjax.distill import base, labels as labels_lib, unroll
from ddjax.errors import ConfigError

__all__ = ["distill_step", "init_state", "inner_batches", "meta_loss", "sample_window_start"]

PyTree = Any


def hparams(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The method's hyperparameters (`base.method_hparams`).

  Args:
    config: a configs/distill/bptt.py config.

  Returns:
    config.bptt; a ConfigError if the config lacks it.
  """
  return base.method_hparams(config, "bptt")


# The distillation network, config.model with config.model_kwargs.
make_model = base.make_model


def check_stateless(variables: dict, method: str) -> None:
  """Unrolled methods differentiate a pure params -> logits map; batch statistics would
  make every step depend on a second, mutable state.

  Args:
    variables: the model's initial variables.
    method: the method's name, for the message.

  Raises:
    ConfigError: the variables hold collections besides 'params'.
  """
  extra = sorted(set(variables) - {"params"})
  if extra:
    raise ConfigError(f"{method} needs a model without mutable state; this one has {extra} "
                      "(BatchNorm?). Use norm='instancenorm', 'layernorm' or 'none'.")


def outer_optimizer(hp: ml_collections.ConfigDict, learn_labels: bool) -> optax.GradientTransformation:
  """Global-norm clipping, then SGD-momentum (RTP) or Adam (RaT-BPTT) per learned array.

  Args:
    hp: config.bptt (optimizer, lr_img, lr_label, momentum_img, clip_norm).
    learn_labels: also optimise 'labels' (with lr_label).

  Returns:
    The optax GradientTransformation on {'images'[, 'labels']}.

  Raises:
    ConfigError: an unknown optimizer.
  """

  if hp.optimizer not in optim.OPTIMIZERS:
    raise ConfigError(f"Unknown config.bptt.optimizer {hp.optimizer!r}; expected 'sgd' or 'adam'.")

  momentum = hp.momentum_img if hp.optimizer == "sgd" else 0.0  # SGD's only

  def make(lr):
    return optim.make(hp.optimizer, lr, momentum=momentum)

  transforms = {"images": make(hp.lr_img)}
  if learn_labels:
    transforms["labels"] = make(hp.lr_label)
  tx = optax.multi_transform(transforms, {k: k for k in transforms})
  return optax.chain(optax.clip_by_global_norm(hp.clip_norm), tx) if hp.clip_norm else tx


def inner_batches(key: jax.Array, num_steps: int, num_classes: int, ipc: int,
                  batch_per_class: int) -> jax.Array:
  """Row indices into the class-sorted synthetic set, [num_steps, num_classes * b].

  Each step takes b distinct images of every class (RTP's n_per_c, RaT-BPTT's
  batch_per_class); b = 0 or b >= ipc means the whole set at every step.

  Args:
    key: the PRNG key.
    num_steps: inner steps T.
    num_classes: the class count.
    ipc: images per class.
    batch_per_class: b.

  Returns:
    int32 [T, num_classes * b] (or [T, num_classes * ipc]) row indices.
  """
  offsets = (jnp.arange(num_classes) * ipc)[:, None]
  if not batch_per_class or batch_per_class >= ipc:
    rows = (offsets + jnp.arange(ipc)).reshape(-1)
    return jnp.broadcast_to(rows, (num_steps, rows.size))
  order = jnp.argsort(jax.random.uniform(key, (num_steps, num_classes, ipc)), axis=-1)
  return (order[..., :batch_per_class] + offsets).reshape(num_steps, -1)


def sample_window_start(key: jax.Array, num_steps: int, window: int) -> jax.Array:
  """c ~ U{0, ..., num_steps - window}: the RaT-BPTT random window start.

  Args:
    key: the PRNG key.
    num_steps: inner steps T.
    window: the window length W.

  Returns:
    The int32 scalar c.
  """
  return jax.random.randint(key, (), 0, num_steps - window + 1)


def meta_loss(model, learned: dict, row_labels: jax.Array, params0: PyTree, batches: jax.Array,
              x_real: jax.Array, y_real: jax.Array, *, lr: float, momentum: float,
              window: int = 0, window_start: jax.Array | int = 0, remat: bool = True,
              remat_policy: str = "nothing") -> tuple[jax.Array, dict]:
  """The outer loss after unrolled inner training, and diagnostics; differentiable in `learned`.

  Args:
    model: the flax module (stateless).
    learned: {'images': [N, ...], optionally 'labels': [N, C] soft targets}; without
      learned labels the inner loss uses the hard `row_labels`.
    row_labels: the hard class of every row [N].
    params0: the inner network's initial parameters.
    batches: [T, b] row indices of the inner steps.
    x_real: the real batch of the outer loss.
    y_real: its labels.
    lr: the inner learning rate.
    momentum: the inner momentum.
    window: 0 differentiates all T steps; else `window_start` steps run without
      gradients and the next `window` with them.
    window_start: c (may be traced).
    remat: rematerialise each differentiated step.
    remat_policy: see `unroll.REMAT_POLICIES`.

  Returns:
    (outer loss, {'inner_loss': the last inner step's loss, 'real_accuracy'}).

  Raises:
    ConfigError: window outside [1, T] (when not 0).
  """
  images = learned["images"]
  targets = learned.get("labels", row_labels)

  def make_loss(x, y):
    def loss_fn(params, idx):
      return train.cross_entropy(model.apply({"params": params}, x[idx]), y[idx])
    return loss_fn

  num_steps = batches.shape[0]
  velocity = jax.tree_util.tree_map(jnp.zeros_like, params0) if momentum else None
  params = params0
  if window:
    if not 0 < window <= num_steps:
      raise ConfigError(f"BPTT window {window} must be in [1, inner_steps={num_steps}].")
    frozen = make_loss(jax.lax.stop_gradient(images), jax.lax.stop_gradient(targets))
    params, velocity = unroll.sgd_run(frozen, params, velocity, batches, window_start, lr, momentum)
    batches = jax.lax.dynamic_slice_in_dim(batches, window_start, window)
  (params, _), inner_losses = unroll.sgd_unroll(
      make_loss(images, targets), params, batches, lr, momentum=momentum, velocity=velocity,
      remat=remat, remat_policy=remat_policy)
  logits = model.apply({"params": params}, x_real)
  loss = train.cross_entropy(logits, y_real)
  return loss, {"inner_loss": inner_losses[-1], "real_accuracy": train.accuracy(logits, y_real)}


def init_state(config: ml_collections.ConfigDict, key: jax.Array, real: base.RealData,
               aux: Any = None) -> base.DistillState:
  """The initial synthetic set (one-hot labels if learned) and the outer optimiser's state.

  Args:
    config: a configs/distill/bptt.py config.
    key: the PRNG key of the initialisation.
    real: the real train data.
    aux: unused.

  Returns:
    The DistillState at step 0 (lr holds the inner lr).

  Raises:
    ConfigError: missing hyperparameters, a bad window or inner_steps, real_per_class
      above the smallest class's count, a model with batch statistics, an unknown
      init or optimizer.
  """
  del aux
  hp = hparams(config)
  if hp.window < 0 or hp.window > hp.inner_steps:
    raise ConfigError(f"config.bptt.window={hp.window} must be 0 (no truncation) or in "
                      f"[1, inner_steps={hp.inner_steps}].")
  if hp.inner_steps < 1:
    raise ConfigError(f"config.bptt.inner_steps must be >= 1, got {hp.inner_steps}.")
  smallest = int(jnp.min(real.class_count))
  if hp.real_per_class > smallest:
    raise ConfigError(f"config.bptt.real_per_class={hp.real_per_class} exceeds the smallest "
                      f"class's {smallest} real training images; lower it.")
  model = make_model(config, real.num_classes)
  check_stateless(models.init_variables(model, key, real.x.shape), "BPTT")
  images, hard = sampling.init_synthetic(key, real.x, real.y, config.ipc, real.num_classes,
                                         config.init)
  learned = {"images": images}
  if config.learn_labels:
    learned["labels"] = jax.nn.one_hot(hard, real.num_classes, dtype=jnp.float32)
  opt_state = outer_optimizer(hp, config.learn_labels).init(learned)
  return base.DistillState(step=jnp.zeros((), jnp.int32), images=images,
                           labels=learned.get("labels", hard),
                           lr=jnp.asarray(hp.inner_lr, jnp.float32), opt_state=opt_state, extra={})


def distill_step(config: ml_collections.ConfigDict, state: base.DistillState, key: jax.Array,
                 real: base.RealData, aux: Any = None) -> tuple[base.DistillState, dict]:
  """One BPTT iteration: a fresh network, an unrolled inner run, one outer update.

  Args:
    config: the bptt config (bound by the driver).
    state: the DistillState.
    key: this iteration's PRNG key.
    real: the real train data.
    aux: unused.

  Returns:
    (new state, {'loss', 'grad_norm', 'window_start', 'inner_loss', 'real_accuracy'}).
  """
  del aux
  hp = hparams(config)
  num_classes = real.num_classes
  model = make_model(config, num_classes)
  init_key, batch_key, window_key, real_key = jax.random.split(key, 4)
  params0 = models.init_variables(model, init_key, state.images.shape)["params"]
  batches = inner_batches(batch_key, hp.inner_steps, num_classes, config.ipc, hp.batch_per_class)
  window_start = sample_window_start(window_key, hp.inner_steps, hp.window) if hp.window else 0
  x_real, y_real = base.sample_per_class(real_key, real, hp.real_per_class)
  x_real = x_real.reshape((-1,) + x_real.shape[2:])
  y_real = y_real.reshape(-1)
  row_labels = labels_lib.row_classes(state.images.shape[0], num_classes)

  learned = {"images": state.images}
  if config.learn_labels:
    learned["labels"] = state.labels
  (loss, aux_metrics), grads = jax.value_and_grad(
      lambda l: meta_loss(model, l, row_labels, params0, batches, x_real, y_real,
                          lr=hp.inner_lr, momentum=hp.inner_momentum, window=hp.window,
                          window_start=window_start, remat=hp.remat,
                          remat_policy=hp.get("remat_policy", "nothing")),
      has_aux=True)(learned)
  tx = outer_optimizer(hp, config.learn_labels)
  updates, opt_state = tx.update(grads, state.opt_state, learned)
  learned = optax.apply_updates(learned, updates)
  new_labels = state.labels
  if config.learn_labels:
    # RaT-BPTT clips learned labels at 0; the argmax projection keeps rows in their class.
    new_labels = labels_lib.keep_class_argmax(jnp.maximum(learned["labels"], 0.0))
  metrics = {"loss": loss, "grad_norm": optax.global_norm(grads),
             "window_start": jnp.asarray(window_start, jnp.int32), **aux_metrics}
  return state.replace(step=state.step + 1, images=learned["images"], labels=new_labels,
                       opt_state=opt_state), metrics
