"""KIP: the KRR solve, the loss gradient, tiled kernels, labels, the kernel implementations
(ddjax's by default; neural-tangents, lazily, as the reference). The kernel itself is
tested in tests/test_ntk.py."""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.distill import kip as kip_config
from ddjax.distill import base, kip
from x64 import enable_x64  # tests/x64.py

KEY = jax.random.PRNGKey(0)


def _kernel(pooling=False):
  return kip.convnet_ntk(depth=2, pooling=pooling, num_outputs=3)


def test_krr_prediction_matches_a_direct_solve():
  with enable_x64(True):
    k1, k2 = jax.random.split(KEY)
    x_s = jax.random.normal(k1, (6, 8, 8, 1), jnp.float64)
    x_t = jax.random.normal(k2, (5, 8, 8, 1), jnp.float64)
    y_s = kip.centred_one_hot(jnp.arange(6) % 3, 3).astype(jnp.float64)
    kernel = jax.jit(_kernel())
    k_ss, k_ts = np.asarray(kernel(x_s, x_s)), np.asarray(kernel(x_t, x_s))
    np.testing.assert_allclose(k_ss, k_ss.T, rtol=1e-12)
    assert np.all(np.linalg.eigvalsh(k_ss) > 0)
    reg = 1e-3
    lam = reg * np.trace(k_ss) / 6
    expected = k_ts @ np.linalg.solve(k_ss + lam * np.eye(6), np.asarray(y_s))
    got = kip.krr_predict(jnp.asarray(k_ts), jnp.asarray(k_ss), y_s, reg)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)
    # With a vanishing ridge, KRR interpolates its own support set.
    np.testing.assert_allclose(kip.krr_predict(jnp.asarray(k_ss), jnp.asarray(k_ss), y_s, 1e-12),
                               y_s, atol=1e-5)


def test_loss_gradient_matches_finite_differences():
  """d loss / d (support images, support labels), in float64."""
  with enable_x64(True):
    k1, k2, k3 = jax.random.split(KEY, 3)
    x_s = jax.random.normal(k1, (6, 8, 8, 1), jnp.float64)
    y_s = jax.nn.one_hot(jnp.arange(6) % 3, 3, dtype=jnp.float64)
    x_t = jax.random.normal(k2, (9, 8, 8, 1), jnp.float64)
    y_t = kip.centred_one_hot(jnp.arange(9) % 3, 3).astype(jnp.float64)
    kernel = _kernel()
    f = jax.jit(lambda x, y: kip.krr_loss(kernel, x, kip.centred_one_hot(y, 3), x_t, y_t, 1e-3)[0])
    g_x, g_y = jax.jit(jax.grad(f, argnums=(0, 1)))(x_s, y_s)
    d_x = jax.random.normal(k3, x_s.shape, jnp.float64)
    d_y = jax.random.normal(k3, y_s.shape, jnp.float64)
    # The NTK's arc-cosine loses a few digits even in float64, so eps is not tiny.
    eps = 1e-4
    numeric_x = (f(x_s + eps * d_x, y_s) - f(x_s - eps * d_x, y_s)) / (2 * eps)
    numeric_y = (f(x_s, y_s + eps * d_y) - f(x_s, y_s - eps * d_y)) / (2 * eps)
    assert abs(float(jnp.vdot(g_x, d_x))) > 1e-4 and abs(float(jnp.vdot(g_y, d_y))) > 1e-4
    np.testing.assert_allclose(jnp.vdot(g_x, d_x), numeric_x, rtol=1e-5)
    np.testing.assert_allclose(jnp.vdot(g_y, d_y), numeric_y, rtol=1e-5)


def test_tiled_kernel_equals_one_call():
  x1 = jax.random.normal(KEY, (7, 8, 8, 1))
  x2 = jax.random.normal(jax.random.PRNGKey(1), (5, 8, 8, 1))
  kernel = _kernel()
  tiled = kip.blocked(kernel, 3)   # ragged: 7 and 5 rows in tiles of 3
  np.testing.assert_allclose(jax.jit(tiled)(x1, x2), jax.jit(kernel)(x1, x2), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jax.jit(tiled)(x1), jax.jit(kernel)(x1, None), rtol=1e-5, atol=1e-6)
  g = jax.jit(jax.grad(lambda x: jnp.sum(tiled(x, x2) ** 2)))(x1)
  g_ref = jax.jit(jax.grad(lambda x: jnp.sum(kernel(x, x2) ** 2)))(x1)
  np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-6)


def _real(num_classes=3, per_class=8):
  y = np.repeat(np.arange(num_classes), per_class)
  x = jax.random.normal(KEY, (len(y), 8, 8, 1)) + 0.5 * y[:, None, None, None]
  return base.make_real_data(x, y, num_classes)


@pytest.mark.parametrize("learn_labels", [False, True])
def test_distill_step_keeps_classes(learn_labels):
  config = kip_config.get_config("quick,ipc=2")
  config.learn_labels = learn_labels
  config.kip.lr = 0.3  # large, so the label projection has work to do
  real = _real()
  state = kip.init_state(config, KEY, real)
  step = jax.jit(functools.partial(kip.distill_step, config))
  new = state
  losses = []
  for i in range(3):
    new, metrics = step(new, jax.random.PRNGKey(i), real, None)
    losses.append(float(metrics["loss"]))
  assert int(new.step) == 3 and np.all(np.isfinite(losses))
  assert not np.allclose(new.images, state.images)
  classes = np.repeat(np.arange(3), 2)
  if learn_labels:
    assert new.labels.shape == (6, 3) and float(jnp.min(new.labels)) >= 0
    assert not np.allclose(new.labels, state.labels)
    np.testing.assert_array_equal(np.argmax(new.labels, -1), classes)
  else:
    assert new.labels.dtype == jnp.int32
    np.testing.assert_array_equal(new.labels, classes)


def test_bad_settings_are_refused():
  config = kip_config.get_config("quick,ipc=2")
  config.kip.target_per_class = 50
  with pytest.raises(ValueError, match="target_per_class=50 exceeds"):
    kip.init_state(config, KEY, _real())
  config.kip.target_per_class = 2
  config.kip.reg = 0.0
  with pytest.raises(ValueError, match="reg must be > 0"):
    kip.init_state(config, KEY, _real())
  config.kip.reg = 1e-6
  config.kip.kernel_impl = "jax_ntk"
  with pytest.raises(ValueError, match="kernel_impl must be one of"):
    kip.init_state(config, KEY, _real())


def _run_isolated(code):
  subprocess.run([sys.executable, "-c", code], check=True, timeout=300,
                 env={"JAX_PLATFORMS": "cpu", "PATH": "", "TF_CPP_MIN_LOG_LEVEL": "3",
                      "PYTHONPATH": "."})


def test_default_kernel_needs_no_neural_tangents():
  """kernel_impl='ddjax' (the default): KIP initialises and steps without neural-tangents."""
  _run_isolated(
      "import sys, functools, jax, numpy as np; import ddjax, ddjax.experts, ddjax.distill.driver; "
      "from ddjax.distill import base, bptt, mtt, kip; "
      "from configs.distill import kip as kip_config; "
      "config = kip_config.get_config('quick,ipc=2'); assert config.kip.kernel_impl == 'ddjax'; "
      "y = np.repeat(np.arange(3), 4); x = np.random.default_rng(0).normal(size=(12, 6, 6, 1)); "
      "real = base.make_real_data(x.astype(np.float32), y, 3); "
      "state = kip.init_state(config, jax.random.PRNGKey(0), real); "
      "jax.jit(functools.partial(kip.distill_step, config))(state, jax.random.PRNGKey(1), real, None); "
      "assert 'neural_tangents' not in sys.modules, 'imported'")


@pytest.mark.legacy_nt
def test_neural_tangents_is_imported_only_for_the_reference_kernel():
  _run_isolated(
      "import sys; import ddjax, ddjax.experts, ddjax.distill.driver; "
      "from ddjax.distill import bptt, mtt, kip; "
      "kip.convnet_ntk(1, False); assert 'neural_tangents' not in sys.modules, 'imported eagerly'; "
      "kip.convnet_ntk(1, False, impl='neural_tangents'); assert 'neural_tangents' in sys.modules")


@pytest.mark.legacy_nt
def test_distill_step_is_the_same_with_either_kernel():
  real = _real()
  results = {}
  for impl in ("ddjax", "neural_tangents"):
    config = kip_config.get_config("quick,ipc=2")
    config.kip.kernel_impl = impl
    state = kip.init_state(config, KEY, real)
    new, metrics = jax.jit(functools.partial(kip.distill_step, config))(
        state, jax.random.PRNGKey(1), real, None)
    results[impl] = (new.images, metrics)
  (images, metrics), (images_nt, metrics_nt) = results["ddjax"], results["neural_tangents"]
  # The KRR solve (reg 1e-6) amplifies the kernels' float32 round-off: loose tolerances.
  np.testing.assert_allclose(metrics["loss"], metrics_nt["loss"], rtol=1e-3)
  np.testing.assert_allclose(metrics["grad_norm"], metrics_nt["grad_norm"], rtol=1e-2)
  np.testing.assert_allclose(images, images_nt, atol=1e-3)
