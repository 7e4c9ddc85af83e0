"""Gradient matching: DC (Zhao, Mopuri & Bilen, ICLR 2021) and DSA (Zhao & Bilen, ICML 2021).

Registered as 'dc' and 'dsa'; hyperparameters live in `config.dc` or `config.dsa`
(whichever `config.method` names). DSA is DC plus differentiable Siamese augmentation
(`dsa_strategy` != 'none'); the reference also changes its defaults (real init,
1000-epoch augmented evaluation), which the configs encode.

One `distill_step` is one iteration of the reference's `Iteration` loop:

    sample a fresh network theta
    repeat outer_loop times:
      for every class c (vmapped, or mapped in chunks of `class_batch`):
        real batch of `batch_real` images of c and the ipc synthetic images of c,
        both augmented with the same DSA key (DSA only);
        loss_c = D(grad_theta CE(real), grad_theta CE(syn))   # real side constant
      one SGD(lr_img, momentum 0.5) step on the images with grad of sum_c loss_c
      unless last: train theta on the synthetic set for `inner_loop` epochs
                   (SGD lr_net, batch_train, per-sample DSA if DSA)

D is the reference `match_loss`: 'ours' sums, over every weight tensor of rank >= 2,
1 - cos(g_real, g_syn) per output channel; 1-D tensors (biases, norm scales) give 0.
'mse' and 'cos' compare the concatenated gradient vectors.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ddjax import augment, models, parallel, train
from ddjax.data import sampling
from ddjax.distill import base
from ddjax.errors import ConfigError

__all__ = ["LOOPS", "METRICS", "class_match_loss", "distill_step", "get_loops", "init_state",
           "match_distance", "matching_loss_and_grad"]

PyTree = Any
METRICS = ("ours", "mse", "cos")

# DC `get_loops`: (outer_loop, inner_loop) per IPC, "empirically good" per the authors.
LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def get_loops(ipc: int) -> tuple[int, int]:
  """The reference (outer_loop, inner_loop) for `ipc`.

  Args:
    ipc: images per class.

  Returns:
    LOOPS[ipc].

  Raises:
    ConfigError: the reference defines no loops for this ipc.
  """
  if ipc not in LOOPS:
    raise ConfigError(f"DC/DSA define (outer_loop, inner_loop) only for IPC {sorted(LOOPS)}, not "
                      f"{ipc}; set config.<method>.outer_loop and .inner_loop explicitly.")
  return LOOPS[ipc]


def hparams(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The method's hyperparameters, config.dc or config.dsa (as config.method names).

  Args:
    config: a configs/distill/dc.py or dsa.py config.

  Returns:
    config.<method>.

  Raises:
    ConfigError: another method, or the config lacks them.
  """
  if config.method not in ("dc", "dsa"):
    raise ConfigError(f"ddjax.distill.gm implements 'dc' and 'dsa', not {config.method!r}.")
  return base.method_hparams(config, config.method)


# ----------------------------------------------------------------------------- distances


def _safe_norm(x: jax.Array, axis=-1) -> jax.Array:
  """L2 norm whose gradient at 0 is 0 (as PyTorch's), not NaN."""
  sq = jnp.sum(x * x, axis=axis)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def layer_distance(g_real: jax.Array, g_syn: jax.Array) -> jax.Array:
  """DC's `distance_wb`: sum over output channels of 1 - cos; 0 for 1-D tensors.

  Flax kernels keep the output channel last (HWIO convs, [in, out] dense), where
  PyTorch keeps it first; the per-output-channel grouping is the same.

  Args:
    g_real: one parameter's gradient on the real batch.
    g_syn: the same parameter's gradient on the synthetic batch.

  Returns:
    The scalar distance.
  """
  if g_real.ndim <= 1:
    return jnp.zeros((), g_real.dtype)
  gr = jnp.moveaxis(g_real, -1, 0).reshape(g_real.shape[-1], -1)
  gs = jnp.moveaxis(g_syn, -1, 0).reshape(g_syn.shape[-1], -1)
  cos = jnp.sum(gr * gs, -1) / (_safe_norm(gr) * _safe_norm(gs) + 1e-6)
  return jnp.sum(1.0 - cos)


def match_distance(g_real: PyTree, g_syn: PyTree, metric: str = "ours") -> jax.Array:
  """The reference `match_loss` between two gradient pytrees.

  Args:
    g_real: the gradients on the real batch.
    g_syn: the gradients on the synthetic batch, same structure.
    metric: "ours" (layer-wise `layer_distance`), "mse" or "cos" (on the
      concatenated vectors).

  Returns:
    The scalar distance.

  Raises:
    ConfigError: an unknown metric.
  """
  real_leaves = jax.tree_util.tree_leaves(g_real)
  syn_leaves = jax.tree_util.tree_leaves(g_syn)
  if metric == "ours":
    return sum(layer_distance(r, s) for r, s in zip(real_leaves, syn_leaves))
  real_vec = jnp.concatenate([r.reshape(-1) for r in real_leaves])
  syn_vec = jnp.concatenate([s.reshape(-1) for s in syn_leaves])
  if metric == "mse":
    return jnp.sum((syn_vec - real_vec) ** 2)
  if metric == "cos":
    return 1.0 - jnp.sum(real_vec * syn_vec) / (_safe_norm(real_vec) * _safe_norm(syn_vec) + 1e-6)
  raise ConfigError(f"Unknown gradient-matching distance {metric!r}; expected one of {METRICS}.")


# ----------------------------------------------------------------------------- pieces


# The distillation network, config.model with config.model_kwargs.
make_model = base.make_model


def map_classes(fn, args: tuple, class_batch: int):
  """fn over the leading (class) axis: one vmap, or `lax.map` in chunks to bound memory.

  Args:
    fn: the per-class function of the unpacked `args`.
    args: a tuple of arrays with a leading class axis.
    class_batch: classes per vmapped call (<= 0 or >= C: all at once).

  Returns:
    fn's outputs stacked over classes.
  """
  num_classes = jax.tree_util.tree_leaves(args)[0].shape[0]
  if class_batch <= 0 or class_batch >= num_classes:
    return jax.vmap(lambda a: fn(*a))(args)
  return jax.lax.map(lambda a: fn(*a), args, batch_size=class_batch)


def dsa_params(hp: ml_collections.ConfigDict) -> augment.DSAParams:
  """DSA's parameters for the method (align_corners, default False).

  Args:
    hp: config.dc or config.dsa.

  Returns:
    The DSAParams.
  """
  return augment.DSAParams(align_corners=bool(hp.get("align_corners", False)))


def class_match_loss(model, params: PyTree, model_state: dict, x_real: jax.Array,
                     x_syn: jax.Array, label: jax.Array, key: jax.Array, *, metric: str = "ours",
                     strategy: str = "none",
                     aug_params: augment.DSAParams = augment.DSAParams()) -> jax.Array:
  """D(grad CE(real batch), grad CE(syn batch)) for one class; differentiable in x_syn.

  Args:
    model: the flax module.
    params: the network's parameters (the gradients are taken with respect to them).
    model_state: its other collections (used in eval mode).
    x_real: the class's real batch [B, H, W, ch].
    x_syn: the class's synthetic images [ipc, H, W, ch].
    label: the class.
    key: the Siamese augmentation key (the same transform for both batches).
    metric: the distance (`match_distance`).
    strategy: the DSA strategy ('none': no augmentation).
    aug_params: DSA's parameters.

  Returns:
    The scalar distance.
  """
  if augment.parse_strategy(strategy):
    # Siamese: the same key, hence the same transform, for both batches.
    x_real = augment.dsa(key, x_real, strategy, siamese=True, params=aug_params)
    x_syn = augment.dsa(key, x_syn, strategy, siamese=True, params=aug_params)

  def ce(p, x):
    logits = model.apply({"params": p, **model_state}, x, train=False)
    return train.cross_entropy(logits, jnp.full((x.shape[0],), label, jnp.int32))

  g_real = jax.lax.stop_gradient(jax.grad(ce)(params, x_real))
  g_syn = jax.grad(ce)(params, x_syn)
  return match_distance(g_real, g_syn, metric)


def matching_loss_and_grad(model, params: PyTree, model_state: dict, x_real: jax.Array,
                           images: jax.Array, key: jax.Array, *, metric: str, strategy: str,
                           aug_params: augment.DSAParams, class_batch: int = 0
                           ) -> tuple[jax.Array, jax.Array]:
  """Per-class losses [C] and d(sum_c loss_c)/d images, for class-sorted images.

  Class c's synthetic images only enter loss_c, so the per-class gradients are the
  blocks of the total gradient.

  Args:
    model: the flax module.
    params: the network's parameters.
    model_state: its other collections.
    x_real: real images per class [C, B, H, W, ch].
    images: the synthetic images [C * ipc, H, W, ch], class-sorted.
    key: the augmentation key, split per class.
    metric: the distance (`match_distance`).
    strategy: the DSA strategy.
    aug_params: DSA's parameters.
    class_batch: classes per vmapped call (0: all).

  Returns:
    (losses [C], gradient with respect to `images`, shaped like it).
  """
  num_classes = x_real.shape[0]
  x_syn = images.reshape((num_classes, -1) + images.shape[1:])
  keys = jax.random.split(key, num_classes)
  x_real = parallel.shard_axis(x_real, 1)  # data-parallel over the real batch (several devices)
  loss_fn = functools.partial(class_match_loss, model, params, model_state, metric=metric,
                              strategy=strategy, aug_params=aug_params)

  def one(xr, xs, c, k):
    return jax.value_and_grad(lambda s: loss_fn(xr, s, c, k))(xs)

  losses, grads = map_classes(one, (x_real, x_syn, jnp.arange(num_classes), keys), class_batch)
  return losses, grads.reshape(images.shape)


def image_optimizer(hp: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """torch.optim.SGD([images], lr_img, momentum).

  Args:
    hp: config.dc or config.dsa.

  Returns:
    The optax GradientTransformation (`train.sgd_momentum`).
  """
  return train.sgd_momentum(hp.lr_img, hp.momentum_img)


def _freeze_batch_stats(model, params, model_state, key, real: base.RealData, per_class: int):
  """DC's BatchNorm handling: one train-mode pass on 16 real images per class updates
  the running statistics, which matching then uses (eval mode)."""
  x, _ = base.sample_per_class(key, real, per_class)
  x = x.reshape((-1,) + x.shape[2:])
  _, model_state = train.apply_model(model, params, model_state, x, train=True)
  return model_state


# ----------------------------------------------------------------------------- the contract


def init_state(config: ml_collections.ConfigDict, key: jax.Array, real: base.RealData,
               aux: Any = None) -> base.DistillState:
  """The initial synthetic set, lr_net and the image optimiser's state.

  Args:
    config: a configs/distill/dc.py or dsa.py config.
    key: the PRNG key of the initialisation.
    real: the real train data.
    aux: unused.

  Returns:
    The DistillState at step 0.

  Raises:
    ConfigError: missing hyperparameters, learn_labels, batch_real above the smallest class's
      count, bad loops, an unknown dis_metric or DSA strategy.
  """
  del aux
  hp = hparams(config)
  if config.get("learn_labels", False):
    raise ConfigError(f"{config.method.upper()} matches gradients of hard-label losses; "
                      "config.learn_labels must be False.")
  smallest = int(jnp.min(real.class_count))
  if hp.batch_real > smallest:
    raise ConfigError(f"config.{config.method}.batch_real={hp.batch_real} exceeds the smallest "
                      f"class's {smallest} real training images; lower it.")
  if hp.outer_loop < 1 or hp.inner_loop < 0:
    raise ConfigError(f"config.{config.method}.outer_loop must be >= 1 and inner_loop >= 0, got "
                      f"{hp.outer_loop} and {hp.inner_loop}.")
  if hp.dis_metric not in METRICS:
    raise ConfigError(f"Unknown config.{config.method}.dis_metric {hp.dis_metric!r}; expected one "
                      f"of {METRICS}.")
  augment.parse_strategy(hp.dsa_strategy)  # fail early on a bad strategy
  images, labels = sampling.init_synthetic(key, real.x, real.y, config.ipc, real.num_classes,
                                           config.init)
  return base.DistillState(step=jnp.zeros((), jnp.int32), images=images, labels=labels,
                           lr=jnp.asarray(hp.lr_net, jnp.float32),
                           opt_state=image_optimizer(hp).init(images), extra={})


def distill_step(config: ml_collections.ConfigDict, state: base.DistillState, key: jax.Array,
                 real: base.RealData, aux: Any = None) -> tuple[base.DistillState, dict]:
  """One DC iteration: a fresh network, `outer_loop` image updates, inner training between.

  Args:
    config: the dc/dsa config (bound by the driver).
    state: the DistillState.
    key: this iteration's PRNG key.
    real: the real train data.
    aux: unused.

  Returns:
    (new state, {'loss': the mean over outer loops of the summed class losses /
    num_classes, 'loss_last': the last outer loop's}).
  """
  del aux
  hp = hparams(config)
  model = make_model(config, real.num_classes)
  tx_img = image_optimizer(hp)
  # state.lr holds lr_net (the contract's "fixed inner lr"), so it is a traced value.
  tx_net = train.sgd_momentum(state.lr, hp.get("net_momentum", 0.0))
  aug_params = dsa_params(hp)
  train_augment = augment.make_augment_fn(hp.dsa_strategy, siamese=False, params=aug_params)
  num_images = state.images.shape[0]
  batch_train = min(hp.batch_train, num_images)

  net_key, loop_key = jax.random.split(key)
  net = train.create_train_state(models.init_variables(model, net_key, state.images.shape), tx_net)
  has_batch_stats = "batch_stats" in net.model_state

  def outer(carry, inputs):
    images, opt_state, net = carry
    step_key, is_last = inputs
    real_key, match_key, train_key, bn_key = jax.random.split(step_key, 4)
    model_state = net.model_state
    if has_batch_stats:
      model_state = _freeze_batch_stats(model, net.params, model_state, bn_key, real, 16)
    x_real, _ = base.sample_per_class(real_key, real, hp.batch_real)
    losses, grads = matching_loss_and_grad(
        model, net.params, model_state, x_real, images, match_key, metric=hp.dis_metric,
        strategy=hp.dsa_strategy, aug_params=aug_params, class_batch=hp.get("class_batch", 0))
    updates, opt_state = tx_img.update(grads, opt_state, images)
    images = optax.apply_updates(images, updates)

    def train_net(net):
      net, _ = train.train_minibatch(model, tx_net, net, images, state.labels, train_key,
                                     num_epochs=hp.inner_loop, batch_size=batch_train,
                                     augment_fn=train_augment)
      return net

    # The reference skips net training after the last image update.
    if hp.inner_loop > 0:
      net = jax.lax.cond(is_last, lambda n: n, train_net, net)
    return (images, opt_state, net), jnp.sum(losses)

  keys = jax.random.split(loop_key, hp.outer_loop)
  is_last = jnp.arange(hp.outer_loop) == hp.outer_loop - 1
  (images, opt_state, _), losses = jax.lax.scan(outer, (state.images, state.opt_state, net),
                                                (keys, is_last))
  new_state = state.replace(step=state.step + 1, images=images, opt_state=opt_state)
  # The reference logs loss_avg = sum over outer loops and classes / (C * outer_loop).
  metrics = {"loss": jnp.mean(losses) / real.num_classes,
             "loss_last": losses[-1] / real.num_classes}
  return new_state, metrics
