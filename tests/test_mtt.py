"""MTT: the matching loss, its exact meta-gradient (images and lr), remat, the buffer."""

import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from configs import experts as experts_config
from configs.distill import mtt as mtt_config
from ddjax import experts, models, train
from ddjax.distill import base, mtt, unroll
from x64 import enable_x64  # tests/x64.py

KEY = jax.random.PRNGKey(0)
MODEL = models.get_model("convnet", 3, width=4, depth=1)


def _problem(dtype=jnp.float32, steps=3, batch=4):
  k1, k2, k3, k4 = jax.random.split(KEY, 4)
  images = jax.random.normal(k1, (6, 8, 8, 1), dtype)
  labels = jnp.repeat(jnp.arange(3), 2)
  params = models.init_variables(MODEL, k2, images.shape)["params"]
  start, unravel = ravel_pytree(jax.tree_util.tree_map(lambda p: p.astype(dtype), params))
  target = start + 0.05 * jax.random.normal(k3, start.shape, dtype)
  batches = mtt.student_batches(k4, 6, steps, batch)
  return images, labels, start, unravel, target, batches


def _loss(images, lr, labels, start, unravel, target, batches, remat=True, dsa_strategy="none"):
  return mtt.matching_loss(MODEL, unravel, images, labels, lr, start, target, batches, KEY,
                           remat=remat, dsa_strategy=dsa_strategy)


def test_loss_is_zero_when_the_student_reaches_the_expert():
  images, labels, start, unravel, _, batches = _problem()
  lr = jnp.float32(0.05)

  @jax.jit
  def check(images, lr, other_target):
    # The expert's segment is exactly what the student does on the synthetic data.
    student_loss = lambda p, idx: train.cross_entropy(MODEL.apply({"params": p}, images[idx]),
                                                      labels[idx])
    (final, _), _ = unroll.sgd_unroll(student_loss, unravel(start), batches, lr)
    target = jax.lax.stop_gradient(ravel_pytree(final)[0])
    f = lambda x, lr, t: _loss(x, lr, labels, start, unravel, t, batches)
    return jax.value_and_grad(f, argnums=(0, 1))(images, lr, target), f(images, lr, other_target), target

  target = start + 0.03
  (loss, (g_images, g_lr)), other_loss, reached = check(images, lr, target)
  assert float(loss) < 1e-10
  assert float(jnp.max(jnp.abs(g_images))) < 1e-6 and abs(float(g_lr)) < 1e-6  # a minimum
  # Another target: positive, and exactly the normalised squared distance.
  expected = jnp.sum((reached - target) ** 2) / jnp.sum((start - target) ** 2)
  assert float(other_loss) > 0.01
  np.testing.assert_allclose(other_loss, expected, rtol=1e-4)


def test_meta_gradient_matches_finite_differences():
  """d loss / d (images, syn_lr) through 3 student steps, in float64."""
  with enable_x64(True):
    images, labels, start, unravel, target, batches = _problem(jnp.float64)
    f = jax.jit(lambda x, lr: _loss(x, lr, labels, start, unravel, target, batches))
    lr = jnp.float64(0.05)
    g_images, g_lr = jax.jit(jax.grad(f, argnums=(0, 1)))(images, lr)
    direction = jax.random.normal(jax.random.PRNGKey(5), images.shape, jnp.float64)
    eps = 1e-5
    numeric = (f(images + eps * direction, lr) - f(images - eps * direction, lr)) / (2 * eps)
    assert abs(float(jnp.vdot(g_images, direction))) > 1e-6
    np.testing.assert_allclose(jnp.vdot(g_images, direction), numeric, rtol=1e-6)
    numeric_lr = (f(images, lr + eps) - f(images, lr - eps)) / (2 * eps)
    np.testing.assert_allclose(g_lr, numeric_lr, rtol=1e-6)


@pytest.mark.parametrize("dsa_strategy", ["none", "scale_rotate"])
def test_remat_equals_plain_unrolling(dsa_strategy):
  """Also with per-sample DSA: the recomputed steps redraw the same augmentation."""
  images, labels, start, unravel, target, batches = _problem(steps=4)

  def grads(remat):
    f = lambda x, lr: _loss(x, lr, labels, start, unravel, target, batches, remat=remat,
                            dsa_strategy=dsa_strategy)
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(images, jnp.float32(0.05))

  loss_r, g_r = grads(True)
  loss_p, g_p = grads(False)
  np.testing.assert_allclose(loss_r, loss_p, rtol=1e-6)
  chex.assert_trees_all_close(g_r, g_p, rtol=1e-5, atol=1e-8)


def test_student_batches_are_chunks_of_permutations():
  rows = np.asarray(mtt.student_batches(KEY, 12, 6, 4))
  assert rows.shape == (6, 4)
  for chunk in (rows[:3], rows[3:]):          # every 12 / 4 = 3 batches cover the set once
    np.testing.assert_array_equal(np.sort(chunk.reshape(-1)), np.arange(12))
  whole = np.asarray(mtt.student_batches(KEY, 5, 2, 5))
  np.testing.assert_array_equal(np.sort(whole, axis=1), np.tile(np.arange(5), (2, 1)))


def _write_npz(tmp_path):
  y = np.repeat(np.arange(3), 12).astype(np.int32)
  x = np.asarray(jax.nn.sigmoid(jax.random.normal(KEY, (36, 8, 8, 1)) + 0.5 * y[:, None, None, None]))
  path = os.path.join(tmp_path, "toy.npz")
  np.savez(path, x_train=x, y_train=y, x_test=x[::3], y_test=y[::3])
  return path


def test_distillation_on_a_trained_buffer(tmp_path):
  """Experts from ddjax.experts feed load_aux; two jitted steps move the images and lr."""
  npz = _write_npz(tmp_path)
  buffer_dir = str(tmp_path / "experts")
  ecfg = experts_config.get_config("quick")
  ecfg.update(dataset=f"npz:{npz}", train_per_class=0, test_per_class=0, num_experts=2,
              experts_per_batch=2, progress=False)
  ecfg.model_kwargs.depth = 1
  experts.train_experts(ecfg, buffer_dir)

  config = mtt_config.get_config("quick,ipc=2")
  config.dataset = f"npz:{npz}"
  config.model_kwargs.depth = 1
  config.mtt.update(buffer_dir=buffer_dir, batch_syn=3, syn_steps=2, lr_img=100.0, lr_lr=1e-2)
  aux = mtt.load_aux(config)
  assert aux.params.shape[:2] == (2, config.mtt.max_start_epoch + config.mtt.expert_epochs)
  y = np.repeat(np.arange(3), 12)
  x = np.asarray(jax.random.normal(KEY, (36, 8, 8, 1)))
  real = base.make_real_data(x, y, 3)
  state = mtt.init_state(config, KEY, real, aux)
  np.testing.assert_allclose(state.lr, config.mtt.lr_teacher)
  step = jax.jit(functools.partial(mtt.distill_step, config))
  new, metrics = step(state, jax.random.PRNGKey(1), real, aux)
  new, metrics = step(new, jax.random.PRNGKey(2), real, aux)
  assert int(new.step) == 2 and np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
  assert not np.allclose(new.images, state.images)
  assert float(new.lr) != float(state.lr)
  np.testing.assert_array_equal(new.labels, state.labels)
  assert mtt.LEARNS_LR

  # The buffer must fit the run.
  wrong = mtt_config.get_config("quick,ipc=2")
  wrong.dataset = f"npz:{npz}"
  wrong.mtt.buffer_dir = buffer_dir
  with pytest.raises(experts.ExpertBufferError, match="model_kwargs"):
    mtt.load_aux(wrong)   # depth 3 here, depth 1 in the buffer
  config.mtt.max_start_epoch = 5
  with pytest.raises(experts.ExpertBufferError, match="trained for 2 epochs"):
    mtt.load_aux(config)
  config.mtt.max_start_epoch = 1
  config.mtt.batch_syn = 7
  with pytest.raises(ValueError, match="batch_syn=7"):
    mtt.init_state(config, KEY, real, aux)
