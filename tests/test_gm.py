"""Gradient matching (DC/DSA): the distance, the meta-gradient, the iteration's structure."""

import contextlib
import functools
import json

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs.distill import dc as dc_config
from configs.distill import dsa as dsa_config
from ddjax import augment, models, train
from ddjax.distill import base, gm

KEY = jax.random.PRNGKey(0)


@contextlib.contextmanager
def enable_x64(on: bool = True):
  """float64 inside the block (jax.config, so it works across jax versions)."""
  previous = jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64
  jax.config.update("jax_enable_x64", on)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", previous)


def _real(num_classes=3, per_class=6, size=8, key=KEY):
  y = np.repeat(np.arange(num_classes), per_class)
  x = jax.random.normal(key, (len(y), size, size, 1)) + 0.5 * y[:, None, None, None]
  return base.make_real_data(x, y, num_classes)


def _config(method="dc", **hp):
  config = (dc_config if method == "dc" else dsa_config).get_config("quick,ipc=2")
  config.model_kwargs.width = 4
  config.model_kwargs.depth = 1
  h = config[method]
  h.batch_real = 4
  h.outer_loop, h.inner_loop = 2, 2
  h.update(hp)
  return config


@functools.lru_cache(maxsize=None)
def _compiled(config_json: str):
  config = ml_collections.ConfigDict(json.loads(config_json))
  return jax.jit(functools.partial(gm.distill_step, config))


def _step(config):
  """distill_step jitted once per distinct config (compiles dominate these tests)."""
  return _compiled(config.to_json())


# ----------------------------------------------------------------------------- distance


def _numpy_ours(g_real, g_syn):
  total = 0.0
  for r, s in zip(jax.tree_util.tree_leaves(g_real), jax.tree_util.tree_leaves(g_syn)):
    r, s = np.asarray(r, np.float64), np.asarray(s, np.float64)
    if r.ndim == 1:
      continue
    for o in range(r.shape[-1]):  # flax: output channel last
      a, b = r[..., o].ravel(), s[..., o].ravel()
      total += 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-6)
  return total


def _grad_trees(key):
  shapes = {"conv": {"kernel": (3, 3, 2, 5), "bias": (5,)}, "norm": {"scale": (5,)},
            "head": {"kernel": (20, 4), "bias": (4,)}}
  leaves, treedef = jax.tree_util.tree_flatten(shapes, is_leaf=lambda s: isinstance(s, tuple))
  keys = jax.random.split(key, len(leaves))
  return treedef.unflatten([jax.random.normal(k, s) for k, s in zip(keys, leaves)])


def test_distance_matches_reference_formula():
  g_real, g_syn = _grad_trees(jax.random.PRNGKey(1)), _grad_trees(jax.random.PRNGKey(2))
  np.testing.assert_allclose(gm.match_distance(g_real, g_syn, "ours"), _numpy_ours(g_real, g_syn),
                             rtol=1e-5)
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)])
  r, s = flat(g_real), flat(g_syn)
  np.testing.assert_allclose(gm.match_distance(g_real, g_syn, "mse"), np.sum((r - s) ** 2),
                             rtol=1e-5)
  np.testing.assert_allclose(gm.match_distance(g_real, g_syn, "cos"),
                             1 - r @ s / (np.linalg.norm(r) * np.linalg.norm(s) + 1e-6), rtol=1e-4)
  with pytest.raises(ValueError, match="Unknown gradient-matching distance 'l1'"):
    gm.match_distance(g_real, g_syn, "l1")


def test_distance_ignores_one_dimensional_parameters():
  g_real, g_syn = _grad_trees(jax.random.PRNGKey(1)), _grad_trees(jax.random.PRNGKey(2))
  d = gm.match_distance(g_real, g_syn)
  # Replace every 1-D gradient (biases, norm scale) by something else entirely: no change.
  scrambled = jax.tree_util.tree_map(lambda g: g * -7.0 + 3.0 if g.ndim == 1 else g, g_syn)
  np.testing.assert_allclose(gm.match_distance(g_real, scrambled), d, rtol=1e-6)
  # Per output channel, only the direction counts: rescaling a channel changes nothing,
  # flipping its sign does.
  scaled_kernel = g_syn["conv"]["kernel"] * jnp.arange(1.0, 6.0)
  rescaled = dict(g_syn, conv=dict(g_syn["conv"], kernel=scaled_kernel))
  np.testing.assert_allclose(gm.match_distance(g_real, rescaled), d, rtol=1e-5)
  flipped = dict(g_syn, head=dict(g_syn["head"], kernel=-g_syn["head"]["kernel"]))
  assert abs(float(gm.match_distance(g_real, flipped)) - float(d)) > 1e-2
  # Identical gradients: zero distance, and a zero gradient gives finite meta-gradients.
  assert float(gm.match_distance(g_real, g_real)) == pytest.approx(0.0, abs=1e-4)
  zero = jax.tree_util.tree_map(jnp.zeros_like, g_syn)
  grad = jax.grad(lambda t: gm.match_distance(g_real, t))(zero)
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(grad))


# ----------------------------------------------------------------------------- meta-gradient


def test_meta_gradient_matches_finite_differences(metric="ours", strategy="scale"):
  """d/d(images) of the summed per-class matching loss vs central differences, in float64."""
  with enable_x64(True):
    model = models.get_model("convnet", 2, width=3, depth=1)
    k1, k2, k3, k4 = jax.random.split(jax.random.PRNGKey(4), 4)
    params, model_state = train.split_variables(models.init_variables(model, k1, (1, 6, 6, 1)))
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
    x_real = jax.random.normal(k2, (2, 5, 6, 6, 1), jnp.float64)
    images = jax.random.normal(k3, (4, 6, 6, 1), jnp.float64)
    loss_and_grad = lambda im: gm.matching_loss_and_grad(
        model, params, model_state, x_real, im, k4, metric=metric, strategy=strategy,
        aug_params=augment.DSAParams())
    directions = jax.random.normal(KEY, (3,) + images.shape, jnp.float64)
    eps = 1e-5

    @jax.jit
    def check(images):
      losses, grads = loss_and_grad(images)
      total = lambda im: jnp.sum(loss_and_grad(im)[0])
      fd = jax.vmap(lambda v: (total(images + eps * v) - total(images - eps * v)) / (2 * eps))(
          directions)
      return losses, grads, jnp.einsum("k...,...->k", directions, grads), fd

    losses, grads, analytic, numeric = check(images)
    assert grads.dtype == jnp.float64 and losses.shape == (2,)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-8)


def test_class_chunks_equal_one_vmap_and_blocks_are_per_class():
  model = models.get_model("convnet", 4, width=4, depth=1)
  params, model_state = train.split_variables(models.init_variables(model, KEY, (1, 6, 6, 1)))
  x_real = jax.random.normal(jax.random.PRNGKey(1), (4, 3, 6, 6, 1))
  images = jax.random.normal(jax.random.PRNGKey(2), (8, 6, 6, 1))

  @functools.partial(jax.jit, static_argnames="class_batch")
  def f(im, class_batch=0):
    return gm.matching_loss_and_grad(model, params, model_state, x_real, im, jax.random.PRNGKey(3),
                                     metric="ours", strategy="none",
                                     aug_params=augment.DSAParams(), class_batch=class_batch)

  l_all, g_all = f(images)
  l_chunk, g_chunk = f(images, class_batch=3)
  np.testing.assert_allclose(l_chunk, l_all, rtol=1e-5)
  np.testing.assert_allclose(g_chunk, g_all, rtol=1e-4, atol=1e-6)
  # Class c's loss depends only on class c's images (rows 2c, 2c+1).
  l_moved, _ = f(images.at[2:4].add(1.0))
  np.testing.assert_allclose(np.delete(l_moved, 1), np.delete(l_all, 1), rtol=1e-6)
  assert abs(float(l_moved[1] - l_all[1])) > 1e-4


def test_siamese_augmentation_makes_identical_batches_match():
  """Real batch == synthetic batch: the Siamese transform keeps them identical, so the
  gradients coincide (loss ~ 0); independent augmentations would not."""
  model = models.get_model("convnet", 2, width=4, depth=1)
  params, model_state = train.split_variables(models.init_variables(model, KEY, (1, 8, 8, 1)))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 8, 8, 1))
  loss = jax.jit(lambda xr, xs, k: gm.class_match_loss(model, params, model_state, xr, xs, 0, k,
                                                       strategy="crop_rotate"))
  keys = jax.random.split(KEY, 6)
  assert float(jax.vmap(lambda k: loss(x[0], x[0], k))(keys).max()) < 1e-3
  # A per-sample rotation of the synthetic copy breaks the match.
  rotated = augment.dsa(jax.random.PRNGKey(9), x[0], "rotate", siamese=False)
  no_aug = jax.jit(lambda xr, xs: gm.class_match_loss(model, params, model_state, xr, xs, 0, KEY))
  assert float(no_aug(x[0], x[0])) < 1e-3 and float(no_aug(x[0], rotated)) > 1e-2


# ----------------------------------------------------------------------------- the iteration


def test_distill_step_updates_images_only_and_is_deterministic():
  real = _real()
  config = _config()
  state = gm.init_state(config, KEY, real)
  chex.assert_shape(state.images, (6, 8, 8, 1))
  np.testing.assert_array_equal(state.labels, [0, 0, 1, 1, 2, 2])
  step = _step(config)
  s1, m1 = step(state, jax.random.PRNGKey(1), real)
  s1b, _ = step(state, jax.random.PRNGKey(1), real)
  s2, _ = step(state, jax.random.PRNGKey(2), real)
  chex.assert_trees_all_equal(s1.images, s1b.images)
  assert int(s1.step) == 1 and np.isfinite(m1["loss"])
  np.testing.assert_array_equal(s1.labels, state.labels)
  assert not np.allclose(s1.images, state.images)
  # A fresh network per iteration: another key, another network, another update.
  assert not np.allclose(s1.images, s2.images)
  base.check_finite(s1, m1)


def test_outer_and_inner_loop_structure():
  real = _real()
  state = gm.init_state(_config(), KEY, real)
  # The network trains with state.lr (lr_net) between outer loops; lr 0 = no training.
  run = lambda cfg, lr: _step(cfg)(state.replace(lr=jnp.float32(lr)), KEY, real)[0].images
  # With one outer loop the network is never trained (the reference skips training
  # after the last image update), so lr_net cannot matter ...
  one = _config(outer_loop=1)
  np.testing.assert_allclose(run(one, 0.0), run(one, 0.5), rtol=1e-6)
  # ... with two it does: the second update matches gradients of the trained network.
  assert _config().dc.outer_loop == 2 and _config().dc.inner_loop > 0
  assert not np.allclose(run(_config(), 0.0), run(_config(), 0.5))


def test_dsa_differs_from_dc_and_config_defaults():
  real = _real()
  dsa_cfg, dc_cfg = _config("dsa"), _config()
  assert dsa_cfg.dsa.dsa_strategy == "color_crop_cutout_scale_rotate"  # digits: no flip
  assert dc_cfg.dc.dsa_strategy == "none"
  assert {k: v for k, v in dsa_cfg.dsa.items() if k != "dsa_strategy"} == \
      {k: v for k, v in dc_cfg.dc.items() if k != "dsa_strategy"}
  state = gm.init_state(dsa_cfg, KEY, real)
  dsa_cfg.dsa.dsa_strategy = "crop_rotate"  # two families keep the compile short
  a = _step(dsa_cfg)(state, KEY, real)[0].images
  b = _step(dc_cfg)(state, KEY, real)[0].images
  assert not np.allclose(a, b)
  # Published hyperparameters.
  for ipc, loops in ((1, (1, 1)), (10, (10, 50)), (50, (50, 10))):
    c = dc_config.get_config(f"dataset=cifar10,ipc={ipc}")
    assert (c.dc.outer_loop, c.dc.inner_loop) == loops == gm.get_loops(ipc)
    assert (c.dc.lr_img, c.dc.momentum_img, c.dc.lr_net, c.dc.batch_real) == (0.1, 0.5, 0.01, 256)
    assert c.init == "noise" and c.eval.dc_epochs == 300 and c.num_iterations == 1000
    d = dsa_config.get_config(f"dataset=cifar10,ipc={ipc}")
    assert d.init == "real" and d.dsa.dsa_strategy == dc_config.DSA_STRATEGY
    assert d.eval.dc_epochs == 1000 and d.eval.dc_augment == dc_config.DSA_STRATEGY
  with pytest.raises(ValueError, match="only for IPC"):
    gm.get_loops(7)


def test_init_state_rejects_bad_settings():
  real = _real(per_class=6)
  with pytest.raises(ValueError, match="batch_real=7 exceeds the smallest class's 6"):
    gm.init_state(_config(batch_real=7), KEY, real)
  with pytest.raises(ValueError, match="dis_metric 'l2'"):
    gm.init_state(_config(dis_metric="l2"), KEY, real)
  with pytest.raises(ValueError, match="Unknown DSA"):
    gm.init_state(_config("dsa", dsa_strategy="color_jitter"), KEY, real)
  config = _config()
  config.learn_labels = True
  with pytest.raises(ValueError, match="learn_labels"):
    gm.init_state(config, KEY, real)
  config = _config()
  config.method = "dm"
  with pytest.raises(ValueError, match="implements 'dc' and 'dsa'"):
    gm.init_state(config, KEY, real)
