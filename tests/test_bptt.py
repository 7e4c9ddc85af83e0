"""BPTT and the shared unrolled SGD: torch semantics, exact meta-gradients, remat, windows."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.distill import bptt as bptt_config
from ddjax import models, train
from ddjax.distill import base, bptt, labels, unroll
from x64 import enable_x64  # tests/x64.py

KEY = jax.random.PRNGKey(0)
MODEL = models.get_model("convnet", 3, width=4, depth=1)


def _cast(tree, dtype):
  return jax.tree_util.tree_map(lambda a: a.astype(dtype), tree)


def _problem(dtype=jnp.float32, ipc=2, steps=3, num_classes=3, soft=False):
  """A tiny meta-learning problem: ConvNet width 4 on 8x8 images."""
  k1, k2, k3, k4 = jax.random.split(KEY, 4)
  images = jax.random.normal(k1, (num_classes * ipc, 8, 8, 1), dtype)
  row_labels = labels.row_classes(num_classes * ipc, num_classes)
  learned = {"images": images}
  if soft:
    learned["labels"] = jax.nn.one_hot(row_labels, num_classes, dtype=dtype) + 0.1
  params0 = _cast(models.init_variables(MODEL, k2, images.shape)["params"], dtype)
  batches = bptt.inner_batches(k3, steps, num_classes, ipc, 1)
  x_real = jax.random.normal(k4, (9, 8, 8, 1), dtype)
  y_real = jnp.arange(9) % num_classes
  return learned, row_labels, params0, batches, x_real, y_real


def test_unroll_is_torch_sgd_with_momentum():
  """v <- mu v + g; p <- p - lr v, step by step (a quadratic with a known gradient)."""
  targets = jnp.array([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.0]])
  loss_fn = lambda p, t: 0.5 * jnp.sum((p["w"] - t) ** 2)
  (params, velocity), losses = unroll.sgd_unroll(loss_fn, {"w": jnp.zeros(2)}, targets, 0.1,
                                                 momentum=0.9)
  p, v = np.zeros(2), np.zeros(2)
  expected_losses = []
  for t in np.asarray(targets):
    expected_losses.append(0.5 * np.sum((p - t) ** 2))
    v = 0.9 * v + (p - t)
    p = p - 0.1 * v
  np.testing.assert_allclose(params["w"], p, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(velocity["w"], v, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(losses, expected_losses, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="velocity given with momentum=0"):
    unroll.sgd_unroll(loss_fn, {"w": jnp.zeros(2)}, targets, 0.1, velocity={"w": jnp.zeros(2)})


def test_meta_gradient_matches_finite_differences():
  """Images and soft labels, through 3 momentum-SGD steps (the momentum path included),
  in float64."""
  with enable_x64(True):
    learned, row_labels, params0, batches, x_real, y_real = _problem(jnp.float64, soft=True)
    f = jax.jit(lambda l: bptt.meta_loss(MODEL, l, row_labels, params0, batches, x_real, y_real,
                                         lr=0.05, momentum=0.9)[0])
    grads = jax.jit(jax.grad(f))(learned)
    direction = jax.tree_util.tree_map(
        lambda a: jax.random.normal(jax.random.PRNGKey(7), a.shape, a.dtype), learned)
    eps = 1e-5
    shifted = lambda s: jax.tree_util.tree_map(lambda a, d: a + s * eps * d, learned, direction)
    numeric = (f(shifted(1.0)) - f(shifted(-1.0))) / (2 * eps)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(grads),
                                                   jax.tree_util.tree_leaves(direction)))
    assert abs(float(analytic)) > 1e-6  # a non-trivial check
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6)


def test_remat_equals_plain_unrolling():
  learned, row_labels, params0, batches, x_real, y_real = _problem(steps=4)

  def grad(remat):
    f = lambda l: bptt.meta_loss(MODEL, l, row_labels, params0, batches, x_real, y_real, lr=0.05,
                                 momentum=0.9, remat=remat)
    return jax.jit(jax.value_and_grad(f, has_aux=True))(learned)

  (loss_r, _), g_r = grad(True)
  (loss_p, _), g_p = grad(False)
  np.testing.assert_allclose(loss_r, loss_p, rtol=1e-6)
  chex.assert_trees_all_close(g_r, g_p, rtol=1e-5, atol=1e-7)


def test_truncation_window_differentiates_only_the_window():
  """Window W from start c: the forward pass is c + W ordinary steps; the gradient is that
  of the last W steps started from the (constant) state the first c steps reached."""
  steps, window, start = 5, 2, 2
  learned, row_labels, params0, batches, x_real, y_real = _problem(steps=steps)
  images = learned["images"]
  truncated = jax.jit(jax.value_and_grad(
      lambda x: bptt.meta_loss(MODEL, {"images": x}, row_labels, params0, batches, x_real, y_real,
                               lr=0.05, momentum=0.9, window=window, window_start=start)[0]))
  loss, got = truncated(images)

  def inner_loss(x):
    return lambda p, idx: train.cross_entropy(MODEL.apply({"params": p}, x[idx]), row_labels[idx])

  def run(x, params, velocity, rows):
    (params, velocity), _ = unroll.sgd_unroll(inner_loss(x), params, rows, 0.05, momentum=0.9,
                                              velocity=velocity)
    return params, velocity

  def outer(params):
    return train.cross_entropy(MODEL.apply({"params": params}, x_real), y_real)

  zeros = jax.tree_util.tree_map(jnp.zeros_like, params0)
  # Forward: identical to c + W plain steps.
  full_params, _ = run(images, params0, zeros, batches[:start + window])
  np.testing.assert_allclose(loss, outer(full_params), rtol=1e-5)
  # Gradient: only through the window, from the prefix's state held constant.
  prefix_params, prefix_velocity = run(images, params0, zeros, batches[:start])
  manual = jax.grad(lambda x: outer(run(x, prefix_params, prefix_velocity,
                                        batches[start:start + window])[0]))(images)
  np.testing.assert_allclose(got, manual, rtol=1e-4, atol=1e-7)
  # ...which differs from differentiating all c + W steps.
  untruncated = jax.grad(lambda x: outer(run(x, params0, zeros, batches[:start + window])[0]))(
      images)
  assert float(jnp.max(jnp.abs(untruncated - got))) > 1e-4 * float(jnp.max(jnp.abs(got)))


def test_window_start_is_uniform_over_valid_starts():
  starts = jax.vmap(lambda k: bptt.sample_window_start(k, 10, 4))(jax.random.split(KEY, 4000))
  counts = np.bincount(np.asarray(starts), minlength=8)
  assert counts[7:].sum() == 0                       # never beyond T - W = 6
  assert np.all(counts[:7] > 4000 / 7 * 0.8)          # every start in {0..6}, roughly evenly


def test_inner_batches_are_class_balanced_and_distinct():
  rows = np.asarray(bptt.inner_batches(KEY, 6, num_classes=3, ipc=4, batch_per_class=2))
  assert rows.shape == (6, 6)
  classes = rows // 4
  np.testing.assert_array_equal(np.sort(classes, axis=1), np.tile([0, 0, 1, 1, 2, 2], (6, 1)))
  assert all(len(set(r)) == len(r) for r in rows)
  full = np.asarray(bptt.inner_batches(KEY, 2, num_classes=3, ipc=4, batch_per_class=0))
  np.testing.assert_array_equal(full, np.tile(np.arange(12), (2, 1)))


def _real(num_classes=3, per_class=8, size=8):
  y = np.repeat(np.arange(num_classes), per_class)
  x = jax.random.normal(KEY, (len(y), size, size, 1)) + 0.5 * y[:, None, None, None]
  return base.make_real_data(x, y, num_classes)


def _config(**overrides):
  config = bptt_config.get_config("quick,ipc=2")
  config.model_kwargs.update(width=4, depth=1)
  config.bptt.update(overrides)
  return config


def test_distill_step_learns_images_and_labels_and_keeps_classes():
  config = _config()
  config.learn_labels = True
  config.bptt.lr_label = 0.5  # large, so the argmax projection has work to do
  real = _real()
  state = bptt.init_state(config, KEY, real)
  step = jax.jit(functools.partial(bptt.distill_step, config))
  new, metrics = step(state, jax.random.PRNGKey(1), real, None)
  new, metrics = step(new, jax.random.PRNGKey(2), real, None)
  assert int(new.step) == 2
  chex.assert_trees_all_equal_shapes_and_dtypes(new, state)
  assert not np.allclose(new.images, state.images)
  assert np.isfinite(float(metrics["loss"]))
  assert 0 <= int(metrics["window_start"]) <= config.bptt.inner_steps - config.bptt.window
  assert new.labels.shape == (6, 3) and float(jnp.min(new.labels)) >= 0
  assert not np.allclose(new.labels, state.labels)
  np.testing.assert_array_equal(np.argmax(new.labels, -1), np.repeat(np.arange(3), 2))


def test_bad_settings_are_refused():
  real = _real()
  with pytest.raises(ValueError, match="window=9 must be 0"):
    bptt.init_state(_config(window=9, inner_steps=4), KEY, real)
  with pytest.raises(ValueError, match="real_per_class=50 exceeds"):
    bptt.init_state(_config(real_per_class=50), KEY, real)
  config = _config()
  config.model_kwargs.norm = "batchnorm"
  with pytest.raises(ValueError, match="without mutable state"):
    bptt.init_state(config, KEY, real)


def test_keep_class_argmax_projection():
  y = jnp.array([[0.2, 0.9, 0.0], [0.5, 0.5, 0.5], [0.0, 0.1, 3.0],
                 [0.1, 0.7, 0.2], [2.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
  out = labels.keep_class_argmax(y)
  np.testing.assert_array_equal(np.argmax(out, -1), [0, 0, 1, 1, 2, 2])
  # Only the own-class entry changes, and only where it did not already lead.
  np.testing.assert_array_equal(out[3], y[3])
  np.testing.assert_array_equal(out[5], y[5])
  np.testing.assert_allclose(out[0], [0.9 + labels.ARGMAX_MARGIN, 0.9, 0.0])
