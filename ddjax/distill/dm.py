"""Distribution matching: DM (Zhao & Bilen, WACV 2023). Hyperparameters in `config.dm`.

One `distill_step` is one iteration of the reference `main_DM.py`:

    sample a fresh, randomly initialised network and freeze it (it is never trained)
    for every class c: a real batch of `batch_real` images of c and the ipc synthetic
      images of c, both augmented with the same DSA key;
      loss_c = || mean embed(real) - mean embed(syn) ||^2      # real side constant
    one SGD(lr_img, momentum 0.5) step on the images with grad of sum_c loss_c

`embed` is the network's penultimate features (`model.apply(..., method='embed')`).
Networks with batch statistics (BatchNorm) embed the concatenated real batch and the
concatenated synthetic batch in train mode, as the reference's ConvNetBN branch does.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ddjax import augment, models, parallel, train
from ddjax.data import sampling
from ddjax.distill import base
from ddjax.distill.gm import map_classes
from ddjax.errors import ConfigError

__all__ = ["distill_step", "init_state", "make_model", "matching_loss"]


def hparams(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The method's hyperparameters (`base.method_hparams`).

  Args:
    config: a configs/distill/dm.py config.

  Returns:
    config.dm; a ConfigError if the config lacks it.
  """
  return base.method_hparams(config, "dm")


# The distillation network, config.model with config.model_kwargs.
make_model = base.make_model


def image_optimizer(hp: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """torch.optim.SGD([images], lr_img, momentum_img).

  Args:
    hp: config.dm.

  Returns:
    The optax GradientTransformation (`train.sgd_momentum`).
  """
  return train.sgd_momentum(hp.lr_img, hp.momentum_img)


def _embed(model, variables: dict, x: jax.Array) -> jax.Array:
  """Penultimate features; batch-statistics models run in train mode (batch statistics)."""
  if "batch_stats" in variables:
    feats, _ = model.apply(variables, x, train=True, method="embed", mutable=["batch_stats"])
    return feats
  return model.apply(variables, x, method="embed")


def matching_loss(model, variables: dict, x_real: jax.Array, images: jax.Array, key: jax.Array,
                  *, strategy: str = "none", aug_params: augment.DSAParams = augment.DSAParams(),
                  class_batch: int = 0) -> tuple[jax.Array, jax.Array]:
  """(sum_c loss_c, per-class losses [C]) for class-sorted `images`; differentiable in images.

  Args:
    model: the flax module (frozen).
    variables: its variables; with 'batch_stats' the embeddings use batch statistics.
    x_real: real images per class [C, B, H, W, ch].
    images: the synthetic images [C * ipc, H, W, ch], class-sorted.
    key: the PRNG key of the (Siamese) augmentation, split per class.
    strategy: the DSA strategy ('none': no augmentation).
    aug_params: DSA's parameters.
    class_batch: classes per vmapped call (0: all; `gm.map_classes`).

  Returns:
    (sum_c loss_c, [C] loss_c), loss_c the squared distance of the mean embeddings.
  """
  num_classes = x_real.shape[0]
  x_syn = images.reshape((num_classes, -1) + images.shape[1:])
  keys = jax.random.split(key, num_classes)
  siamese = bool(augment.parse_strategy(strategy))

  def aug(k, x):
    return augment.dsa(k, x, strategy, siamese=True, params=aug_params) if siamese else x

  if "batch_stats" in variables:
    xr = jax.vmap(aug)(keys, x_real)
    xs = jax.vmap(aug)(keys, x_syn)
    real_mean = jax.lax.stop_gradient(
        _embed(model, variables, xr.reshape((-1,) + xr.shape[2:]))
        .reshape(num_classes, xr.shape[1], -1).mean(1))
    syn_mean = _embed(model, variables, xs.reshape((-1,) + xs.shape[2:])).reshape(
        num_classes, xs.shape[1], -1).mean(1)
    losses = jnp.sum((real_mean - syn_mean) ** 2, -1)
    return jnp.sum(losses), losses

  x_real = parallel.shard_axis(x_real, 1)  # data-parallel over the real batch (several devices)

  def one(xr, xs, k):
    real_mean = jax.lax.stop_gradient(_embed(model, variables, aug(k, xr)).mean(0))
    syn_mean = _embed(model, variables, aug(k, xs)).mean(0)
    return jnp.sum((real_mean - syn_mean) ** 2)

  losses = map_classes(one, (x_real, x_syn, keys), class_batch)
  return jnp.sum(losses), losses


def init_state(config: ml_collections.ConfigDict, key: jax.Array, real: base.RealData,
               aux: Any = None) -> base.DistillState:
  """The initial synthetic set and the image optimiser's state.

  Args:
    config: a configs/distill/dm.py config.
    key: the PRNG key of the initialisation.
    real: the real train data.
    aux: unused.

  Returns:
    The DistillState at step 0.

  Raises:
    ConfigError: missing hyperparameters, learn_labels, batch_real above the smallest class's
      count, or a bad DSA strategy.
  """
  del aux
  hp = hparams(config)
  if config.get("learn_labels", False):
    raise ConfigError("DM matches class-conditional embeddings; config.learn_labels must be False.")
  smallest = int(jnp.min(real.class_count))
  if hp.batch_real > smallest:
    raise ConfigError(f"config.dm.batch_real={hp.batch_real} exceeds the smallest class's "
                      f"{smallest} real training images; lower it.")
  augment.parse_strategy(hp.dsa_strategy)  # fail early on a bad strategy
  images, labels = sampling.init_synthetic(key, real.x, real.y, config.ipc, real.num_classes,
                                           config.init)
  return base.DistillState(step=jnp.zeros((), jnp.int32), images=images, labels=labels,
                           lr=jnp.asarray(hp.get("lr_net", 0.01), jnp.float32),
                           opt_state=image_optimizer(hp).init(images), extra={})


def distill_step(config: ml_collections.ConfigDict, state: base.DistillState, key: jax.Array,
                 real: base.RealData, aux: Any = None) -> tuple[base.DistillState, dict]:
  """One DM iteration: a fresh frozen network, one image update.

  Args:
    config: the dm config (bound by the driver).
    state: the DistillState.
    key: this iteration's PRNG key.
    real: the real train data.
    aux: unused.

  Returns:
    (new state, {'loss': the summed matching loss / num_classes, as the reference
    logs it}).
  """
  del aux
  hp = hparams(config)
  model = make_model(config, real.num_classes)
  net_key, real_key, aug_key = jax.random.split(key, 3)
  variables = jax.lax.stop_gradient(models.init_variables(model, net_key, state.images.shape))
  x_real, _ = base.sample_per_class(real_key, real, hp.batch_real)
  aug_params = augment.DSAParams(align_corners=bool(hp.get("align_corners", False)))
  (loss, _), grads = jax.value_and_grad(
      lambda im: matching_loss(model, variables, x_real, im, aug_key, strategy=hp.dsa_strategy,
                               aug_params=aug_params, class_batch=hp.get("class_batch", 0)),
      has_aux=True)(state.images)
  tx = image_optimizer(hp)
  updates, opt_state = tx.update(grads, state.opt_state, state.images)
  new_state = state.replace(step=state.step + 1, images=optax.apply_updates(state.images, updates),
                            opt_state=opt_state)
  # The reference logs loss / num_classes.
  return new_state, {"loss": loss / real.num_classes}
