"""Distribution matching: the loss, its gradient, Siamese augmentation, fresh frozen nets."""

import functools
import json

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.distill import dm as dm_config
from ddjax import augment, models
from ddjax.distill import base, dm
from x64 import enable_x64  # tests/x64.py

KEY = jax.random.PRNGKey(0)


def _real(num_classes=3, per_class=6, size=8, key=KEY):
  y = np.repeat(np.arange(num_classes), per_class)
  x = jax.random.normal(key, (len(y), size, size, 1)) + 0.5 * y[:, None, None, None]
  return base.make_real_data(x, y, num_classes)


def _config(**hp):
  """The quick config, smaller still: a depth-1 width-4 net, two DSA families."""
  config = dm_config.get_config("quick,ipc=2")
  config.model_kwargs.width = 4
  config.model_kwargs.depth = 1
  config.dm.batch_real = 4
  config.dm.dsa_strategy = "crop_rotate"
  config.dm.update(hp)
  return config


def _net(num_classes=3, size=8, norm="instancenorm", key=KEY):
  model = models.get_model("convnet", num_classes, width=4, depth=1, norm=norm)
  return model, models.init_variables(model, key, (1, size, size, 1))


def test_loss_is_squared_distance_of_class_mean_embeddings():
  model, variables = _net()
  x_real = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 8, 8, 1))
  images = jax.random.normal(jax.random.PRNGKey(2), (6, 8, 8, 1))
  loss = jax.jit(functools.partial(dm.matching_loss, model, variables),
                 static_argnames="class_batch")
  total, per_class = loss(x_real, images, KEY)
  emb = jax.jit(lambda x: model.apply(variables, x, method="embed"))
  expected = [np.sum((emb(x_real[c]).mean(0) - emb(images[2 * c:2 * c + 2]).mean(0)) ** 2)
              for c in range(3)]
  np.testing.assert_allclose(per_class, expected, rtol=1e-5)
  np.testing.assert_allclose(total, sum(expected), rtol=1e-5)
  # Chunked classes give the same numbers.
  _, chunked = loss(x_real, images, KEY, class_batch=2)
  np.testing.assert_allclose(chunked, per_class, rtol=1e-5)


def test_gradient_matches_finite_differences(strategy="rotate"):
  with enable_x64(True):
    model = models.get_model("convnet", 2, width=3, depth=1)
    variables = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64),
                                       models.init_variables(model, KEY, (1, 6, 6, 1)))
    x_real = jax.random.normal(jax.random.PRNGKey(1), (2, 4, 6, 6, 1), jnp.float64)
    images = jax.random.normal(jax.random.PRNGKey(2), (4, 6, 6, 1), jnp.float64)
    loss = lambda im: dm.matching_loss(model, variables, x_real, im, KEY, strategy=strategy)[0]
    directions = jax.random.normal(KEY, (3,) + images.shape, jnp.float64)
    eps = 1e-5

    @jax.jit
    def check(images):
      grad = jax.grad(loss)(images)
      fd = jax.vmap(lambda v: (loss(images + eps * v) - loss(images - eps * v)) / (2 * eps))(
          directions)
      return jnp.einsum("k...,...->k", directions, grad), fd

    analytic, numeric = check(images)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-9)


def test_siamese_augmentation_keeps_identical_batches_identical():
  """Synthetic images == the real batch: Siamese DSA transforms both the same way, so the
  loss is exactly 0 whatever family is drawn; per-sample augmentation would not be."""
  model, variables = _net()
  x_real = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 8, 8, 1))
  images = x_real.reshape(6, 8, 8, 1)
  loss = jax.jit(lambda xs, k: dm.matching_loss(model, variables, x_real, xs, k,
                                                 strategy="color_crop_scale")[0])
  assert float(jax.vmap(lambda k: loss(images, k))(jax.random.split(KEY, 8)).max()) < 1e-8
  no_aug = jax.jit(lambda xs: dm.matching_loss(model, variables, x_real, xs, KEY)[0])
  moved = augment.dsa(KEY, images, "rotate", siamese=False)
  assert float(no_aug(images)) < 1e-8 and float(no_aug(moved)) > 1e-4


def test_distill_step_fresh_frozen_network_and_sgd_momentum():
  real = _real()
  config = _config()
  state = dm.init_state(config, KEY, real)
  # Real init: the synthetic images are real training images, class-sorted.
  assert all(np.any(np.all(np.isclose(real.x, im), axis=(1, 2, 3))) for im in state.images)
  np.testing.assert_array_equal(state.labels, [0, 0, 1, 1, 2, 2])
  step = jax.jit(functools.partial(dm.distill_step, config))
  s1, m1 = step(state, jax.random.PRNGKey(1), real)
  s1b, m1b = step(state, jax.random.PRNGKey(1), real)
  chex.assert_trees_all_equal((s1.images, m1["loss"]), (s1b.images, m1b["loss"]))
  # Nothing but the images and their optimiser state is carried: no network survives.
  assert s1.extra == {} and int(s1.step) == 1
  # The network is drawn from the step key: another key, another loss.
  _, m2 = step(state, jax.random.PRNGKey(2), real)
  assert float(m1["loss"]) != float(m2["loss"])
  # SGD(lr_img, momentum 0.5): the first step is -lr * grad, the second adds 0.5 x the first.
  s2, _ = step(s1, jax.random.PRNGKey(3), real)
  first = s1.images - state.images
  _, g2 = _loss_grad_jit(config.to_json(), s1.images, jax.random.PRNGKey(3), real)
  np.testing.assert_allclose(s2.images - s1.images, 0.5 * first - config.dm.lr_img * g2,
                             rtol=1e-4, atol=1e-6)


@functools.partial(jax.jit, static_argnums=0)
def _loss_grad_jit(config_json, images, key, real):
  return _loss_grad(ml_collections.ConfigDict(json.loads(config_json)), images, key, real)


def _loss_grad(config, images, key, real):
  """The loss/gradient `distill_step` uses, rebuilt from its documented key usage."""
  model = dm.make_model(config, real.num_classes)
  net_key, real_key, aug_key = jax.random.split(key, 3)
  variables = models.init_variables(model, net_key, images.shape)
  x_real, _ = base.sample_per_class(real_key, real, config.dm.batch_real)
  return jax.value_and_grad(lambda im: dm.matching_loss(
      model, variables, x_real, im, aug_key, strategy=config.dm.dsa_strategy)[0])(images)


def test_batchnorm_network_uses_batch_statistics():
  model, variables = _net(norm="batchnorm")
  x_real = jax.random.normal(jax.random.PRNGKey(1), (3, 4, 8, 8, 1))
  images = jax.random.normal(jax.random.PRNGKey(2), (6, 8, 8, 1))
  total, grad = jax.jit(jax.value_and_grad(
      lambda im: dm.matching_loss(model, variables, x_real, im, KEY)[0]))(images)
  assert np.isfinite(float(total)) and np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_config_and_errors():
  c = dm_config.get_config("dataset=cifar10,ipc=50")
  assert (c.dm.lr_img, c.dm.momentum_img, c.dm.batch_real) == (1.0, 0.5, 256)
  assert c.num_iterations == 20000
  assert c.dm.dsa_strategy == "color_crop_cutout_flip_scale_rotate" and c.init == "real"
  assert c.eval.dc_epochs == 1000 and c.eval.dc_augment == c.dm.dsa_strategy
  assert dm_config.get_config("dataset=cifar100,ipc=10").dm.class_batch == 10
  real = _real(per_class=6)
  with pytest.raises(ValueError, match="batch_real=9 exceeds"):
    dm.init_state(_config(batch_real=9), KEY, real)
  with pytest.raises(ValueError, match="Unknown DSA"):
    dm.init_state(_config(dsa_strategy="crop_zoom"), KEY, real)
