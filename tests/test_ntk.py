"""ddjax's infinite-width ConvNet NNGP / NTK (ddjax.distill.ntk).

Tests marked `legacy_nt` compare it with neural-tangents 0.6.5, the reference, and run
only on the legacy stack (jax 0.5.x): they import neural_tangents directly, so elsewhere
they fail rather than skip; deselect them there with `-m "not legacy_nt"`. The others need
no neural-tangents.

Tolerances are relative to the kernel's (or the gradient's) largest entry. Measured over
CASES on jax 0.5.3 / CPU (BUILD_NOTES.md, "KIP's ConvNet NTK in ddjax"): float32 values
within 3e-7 of neural-tangents', gradients within 7e-7 (up to 1.2e-5 seen with depth 3,
pooling, b_std = 1, where both are that far from float64); float64 within 5e-16 / 6e-16,
except x2=None's NTK diagonal, where neural-tangents' own round-off leaves 2e-9 / 2e-8.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from ddjax.distill import kip, ntk
from x64 import enable_x64  # tests/x64.py

SQRT2 = 2.0 ** 0.5

# (pooling, depth, w_std, b_std, image size, channels): pooling off / on, depth 1-3, each
# (w_std, b_std) with and without pooling, b_std = 0 included; 7x7 pools 7 -> 3 -> 1 (VALID
# drops the odd row and column).
CASES = [(False, 1, SQRT2, 0.1, 8, 3), (False, 2, 1.3, 0.0, 8, 3), (False, 3, 0.9, 1.0, 8, 3),
         (True, 1, 1.3, 0.0, 8, 3), (True, 2, 0.9, 1.0, 8, 3), (True, 3, SQRT2, 0.1, 8, 3),
         (True, 2, SQRT2, 0.1, 7, 1)]


def _ids(case):
  pooling, depth, w, b, size, c = case
  return f"{'pool' if pooling else 'nopool'}-d{depth}-w{w:.2f}-b{b}-{size}x{size}x{c}"


def _images(size=8, channels=3, n1=5, n2=4, seed=0):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return (jax.random.normal(k1, (n1, size, size, channels)),
          jax.random.normal(k2, (n2, size, size, channels)))


def _rel(got, ref):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))


def _values_and_grads(kernel_fn, x1, x2, weights):
  """(nngp, ntk), and d/dx1 of sum(K * weights) for K = nngp and K = ntk: one jitted call."""
  def run(a, b):
    values, vjp = jax.vjp(lambda a_: kernel_fn(a_, b), a)
    zero = jnp.zeros_like(weights)
    return values, [vjp((weights, zero))[0], vjp((zero, weights))[0]]

  return jax.jit(run)(x1, x2)


def _ddjax(pooling, depth, w, b, **kw):
  return ntk.convnet_kernel_fn(depth, pooling, w, b, get=("nngp", "ntk"), **kw)


def _neural_tangents(pooling, depth, w, b):
  """The reference: the same network from neural-tangents' stax."""
  from neural_tangents import stax  # pylint: disable=g-import-not-at-top
  layers = []
  for _ in range(depth):
    layers += [stax.Conv(1, (3, 3), padding="SAME", W_std=w, b_std=b), stax.Relu()]
    if pooling:
      layers.append(stax.AvgPool((2, 2), strides=(2, 2)))
  layers += [stax.Flatten(), stax.Dense(10, W_std=w, b_std=b)]
  kernel_fn = stax.serial(*layers)[2]
  return lambda x1, x2: tuple(kernel_fn(x1, x2, ("nngp", "ntk")))


# --- against neural-tangents (legacy stack) -----------------------------------------------

@pytest.mark.legacy_nt
@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_float32_matches_neural_tangents(case):
  pooling, depth, w, b, size, channels = case
  x1, x2 = _images(size, channels)
  ours, ref = _ddjax(pooling, depth, w, b), _neural_tangents(pooling, depth, w, b)

  # x2 given: values and gradients (w.r.t. x1, and w.r.t. x2) to float32 round-off.
  weights = jax.random.normal(jax.random.PRNGKey(7), (5, 4))
  (k_ours, g_ours), (k_ref, g_ref) = (_values_and_grads(f, x1, x2, weights) for f in (ours, ref))
  for i in range(2):  # nngp, ntk
    assert _rel(k_ours[i], k_ref[i]) < 2e-6
    assert _rel(g_ours[i], g_ref[i]) < 2e-5
  g2 = [jax.jit(jax.grad(lambda b_: jnp.sum(f(x1, b_)[1] * weights)))(x2) for f in (ours, ref)]
  assert _rel(*g2) < 2e-5

  # x2=None. Off the diagonal, to round-off. On it, neural-tangents' float32 NTK is off by
  # up to ~1e-4 (its separately rounded variances put the correlation a hair below 1; see
  # ddjax.distill.ntk), so there the reference is neural-tangents in float64, which ours (in
  # float32) matches to round-off in values and gradients.
  weights = jax.random.normal(jax.random.PRNGKey(8), (5, 5))
  (k_ours, g_ours), (k_ref32, _) = (_values_and_grads(f, x1, None, weights) for f in (ours, ref))
  with enable_x64(True):
    x1_64 = jnp.asarray(np.asarray(x1), jnp.float64)
    k_ref, g_ref = _values_and_grads(ref, x1_64, None, jnp.asarray(np.asarray(weights), jnp.float64))
    k_ref, g_ref = jax.tree_util.tree_map(np.asarray, (k_ref, g_ref))
  off = ~np.eye(5, dtype=bool)
  for i in range(2):
    scale = np.max(np.abs(k_ref32[i]))
    np.testing.assert_allclose(np.asarray(k_ours[i])[off], np.asarray(k_ref32[i])[off], rtol=0,
                               atol=2e-6 * scale)
    np.testing.assert_allclose(np.diag(k_ours[i]), np.diag(k_ref32[i]), rtol=0, atol=3e-4 * scale)
    assert _rel(k_ours[i], k_ref[i]) < 2e-6
    assert _rel(g_ours[i], g_ref[i]) < 2e-5
    np.testing.assert_allclose(k_ours[i], np.asarray(k_ours[i]).T, rtol=1e-6)


@pytest.mark.legacy_nt
@pytest.mark.parametrize("case", [CASES[2], CASES[4], CASES[6]], ids=_ids)
def test_float64_matches_neural_tangents(case):
  pooling, depth, w, b, size, channels = case
  with enable_x64(True):
    x1, x2 = (jnp.asarray(np.asarray(x), jnp.float64) for x in _images(size, channels))
    ours, ref = _ddjax(pooling, depth, w, b), _neural_tangents(pooling, depth, w, b)
    for other, shape in ((x2, (5, 4)), (None, (5, 5))):
      weights = jax.random.normal(jax.random.PRNGKey(9), shape, jnp.float64)
      (k_ours, g_ours), (k_ref, g_ref) = (_values_and_grads(f, x1, other, weights)
                                          for f in (ours, ref))
      # x2=None's NTK diagonal: neural-tangents' float64 round-off (~sqrt(eps)) remains.
      tol = 1e-12 if other is not None else 2e-8
      for i in range(2):
        assert k_ours[i].dtype == jnp.float64
        assert _rel(k_ours[i], k_ref[i]) < tol
        assert _rel(g_ours[i], g_ref[i]) < 10 * tol


@pytest.mark.legacy_nt
def test_kip_kernel_impls_agree():
  """KIP's own kernel (tiled, pooled) with kernel_impl ddjax and neural_tangents."""
  x1, x2 = _images(8, 3, n1=5, n2=3)
  ours = kip.blocked(kip.convnet_ntk(2, True, num_outputs=3, impl="ddjax"), 2)
  ref = kip.blocked(kip.convnet_ntk(2, True, num_outputs=3, impl="neural_tangents"), 2)
  assert _rel(jax.jit(ours)(x1, x2), jax.jit(ref)(x1, x2)) < 2e-6


# --- properties (no neural-tangents) -----------------------------------------------------

def _relu_kernel_numpy(c, q):
  """The arc-cosine formulas, written independently with np.arccos (float64)."""
  rho = np.clip(c / np.sqrt(q), -1, 1)
  t = np.arccos(rho)
  return np.sqrt(q) * (np.sin(t) + (np.pi - t) * rho) / (2 * np.pi), (np.pi - t) / (2 * np.pi)


def test_relu_kernel_values_and_derivatives():
  with enable_x64(True):
    rng = np.random.default_rng(0)
    q = rng.uniform(0.5, 3.0, 50) ** 2
    c = rng.uniform(-0.95, 0.95, 50) * np.sqrt(q)
    k, dot = ntk.relu_kernel(jnp.asarray(c), jnp.asarray(q))
    k_np, dot_np = _relu_kernel_numpy(c, q)
    np.testing.assert_allclose(k, k_np, rtol=1e-12)
    np.testing.assert_allclose(dot, dot_np, rtol=1e-12)
    for i in range(2):  # the custom JVP against finite differences, both modes
      check_grads(lambda a, b: ntk.relu_kernel(a, b)[i], (jnp.asarray(c), jnp.asarray(q)),
                  order=1, modes=("fwd", "rev"), eps=1e-6)

    # Correlation +-1 and zero variance: the arc-cosine's limits, finite derivatives.
    c = jnp.asarray([2.0, -2.0, 0.0, 2.0 * (1 - 1e-16)])
    q = jnp.asarray([4.0, 4.0, 0.0, 4.0])
    k, dot = ntk.relu_kernel(c, q)
    np.testing.assert_allclose(k, [1.0, 0.0, 0.0, 1.0], atol=1e-15)
    np.testing.assert_allclose(dot, [0.5, 0.0, 0.25, 0.5], atol=1e-15)
    for i in range(2):
      g = jax.grad(lambda a, b: jnp.sum(ntk.relu_kernel(a, b)[i]), argnums=(0, 1))(c, q)
      assert all(np.all(np.isfinite(x)) for x in g)
    # d kernel / d c is the derivative factor itself, also at correlation 1.
    np.testing.assert_allclose(
        jax.grad(lambda a: jnp.sum(ntk.relu_kernel(a, q)[0]))(c)[:2], [0.5, 0.0], atol=1e-15)


@pytest.mark.parametrize("depth", [1, 2])
def test_one_pixel_images_match_the_mlp_formula(depth):
  """On 1x1 images the 3x3 SAME conv sees only its centre tap: the ConvNet is a ReLU MLP with
  first-layer weight variance W^2 / 9 (the same for deeper convs), by hand in float64."""
  w, b = 1.3, 0.2
  with enable_x64(True):
    x = jax.random.normal(jax.random.PRNGKey(3), (6, 1, 1, 2), jnp.float64)
    nngp, ntk_ = ntk.convnet_kernel_fn(depth, False, w, b, get=("nngp", "ntk"))(x)
  xs = np.asarray(x).reshape(6, 2)
  s = (w ** 2 / 9) * xs @ xs.T / 2 + b ** 2
  t = s
  for layer in range(depth):
    v = np.diag(s)
    k, dot = _relu_kernel_numpy(s, np.outer(v, v))
    t = t * dot
    s_next = (w ** 2 / 9) * k + b ** 2 if layer + 1 < depth else w ** 2 * k + b ** 2
    t = (w ** 2 / 9) * t + s_next if layer + 1 < depth else w ** 2 * t + s_next
    s = s_next
  np.testing.assert_allclose(nngp, s, rtol=1e-12)
  np.testing.assert_allclose(ntk_, t, rtol=1e-12)


@pytest.mark.parametrize("pooling", [False, True])
def test_symmetric_positive_semidefinite(pooling):
  x, _ = _images(8, 3, n1=12)
  for k in jax.jit(_ddjax(pooling, 3, SQRT2, 0.1))(x, None):
    k = np.asarray(k, np.float64)
    np.testing.assert_allclose(k, k.T, rtol=1e-6, atol=0)
    eig = np.linalg.eigvalsh(k)
    assert eig[0] >= -1e-6 * eig[-1]


@pytest.mark.parametrize("pooling", [False, True])
def test_x2_none_equals_x1_twice_and_jit_equals_eager(pooling):
  x1, x2 = _images(8, 3)
  kernel_fn = _ddjax(pooling, 2, SQRT2, 0.1)
  alone, twice = jax.jit(kernel_fn)(x1, None), jax.jit(kernel_fn)(x1, x1)
  for i in range(2):
    # The diagonal too: an image paired with itself stays at correlation 1 (ntk's degenerate
    # tolerance), so the NTK diagonal carries no sqrt(eps) noise.
    assert _rel(alone[i], twice[i]) < 1e-6
  shallow = _ddjax(pooling, 1, SQRT2, 0.1)  # eager runs op by op: kept small
  for eager, jitted in zip(shallow(x1, x2), jax.jit(shallow)(x1, x2)):
    assert _rel(eager, jitted) < 1e-6


def test_diagonal_and_full_spatial_paths_agree():
  """Without pooling only the per-pixel covariances are needed; the full spatial recursion
  (the pooled path's machinery) must give the same kernel, and gradient."""
  x1, x2 = _images(7, 2)
  for other in (x2, None):
    w_ = jax.random.normal(jax.random.PRNGKey(1), (5, 5 if other is None else 4))
    diag = _values_and_grads(_ddjax(False, 2, SQRT2, 0.1), x1, other, w_)
    full = _values_and_grads(_ddjax(False, 2, SQRT2, 0.1, full_spatial=True), x1, other, w_)
    for a, b in zip(jax.tree_util.tree_leaves(diag), jax.tree_util.tree_leaves(full)):
      assert _rel(a, b) < 1e-5


def test_blocked_equals_one_call_pooled():
  x1, x2 = _images(8, 3, n1=5, n2=3)
  kernel = ntk.convnet_kernel_fn(1, True)
  tiled = kip.blocked(kernel, 2)  # ragged: 5 and 3 rows in tiles of 2
  assert _rel(jax.jit(tiled)(x1, x2), jax.jit(kernel)(x1, x2)) < 1e-6
  assert _rel(jax.jit(tiled)(x1), jax.jit(kernel)(x1, None)) < 1e-6
  g = jax.jit(jax.grad(lambda x: jnp.sum(tiled(x, x2) ** 2)))(x1)
  g_ref = jax.jit(jax.grad(lambda x: jnp.sum(kernel(x, x2) ** 2)))(x1)
  assert _rel(g, g_ref) < 1e-5


def test_vmap_over_batches_of_images():
  x1, x2 = _images(8, 1, n1=6)
  stack = x1.reshape(2, 3, 8, 8, 1)
  kernel = ntk.convnet_kernel_fn(2, True)
  batched = jax.jit(jax.vmap(kernel, in_axes=(0, None)))(stack, x2)
  one = jax.jit(kernel)
  for i in range(2):
    assert _rel(batched[i], one(stack[i], x2)) < 1e-6
  same = jax.jit(jax.vmap(lambda a: kernel(a, None)))(stack)
  assert _rel(same[1], one(stack[1], None)) < 1e-6


def test_gradients_finite_on_constant_images():
  """Constant regions (MNIST's background) and all-zero images put correlations at exactly
  1 and variances at b_std^2: gradients must stay finite."""
  x = jnp.zeros((4, 8, 8, 1)).at[1, 2:5, 3:6, 0].set(1.0).at[2].set(-0.4).at[3, 4, 4, 0].set(3.0)
  for pooling, b in [(False, 0.0), (True, 0.0), (True, 0.1)]:
    kernel = ntk.convnet_kernel_fn(2, pooling, SQRT2, b)
    loss = lambda a: jnp.sum(kernel(a, None) ** 2) + jnp.sum(kernel(a, x[::-1]) ** 2)
    k, g = jax.jit(jax.value_and_grad(loss))(x)
    assert np.isfinite(float(k)) and np.all(np.isfinite(g)), (pooling, b)


@pytest.mark.parametrize("pooling", [False, True])
def test_many_channels(pooling):
  """Over 16 channels the input covariance is an einsum: duplicating each of 10 channels
  (20) leaves the channel mean, hence the kernel, unchanged."""
  x1, x2 = _images(6, 10, n1=3, n2=2)
  kernel = jax.jit(ntk.convnet_kernel_fn(2, pooling))
  double = lambda x: jnp.concatenate([x, x], -1)
  assert _rel(kernel(double(x1), double(x2)), kernel(x1, x2)) < 1e-6
  assert _rel(kernel(double(x1)), kernel(x1)) < 1e-6


def test_get_and_argument_checks():
  x1, x2 = _images(8, 1)
  both = jax.jit(ntk.convnet_kernel_fn(2, False, get=("ntk", "nngp")))(x1, x2)
  assert _rel(both[0], jax.jit(ntk.convnet_kernel_fn(2, False))(x1, x2)) < 1e-6
  assert _rel(both[1], jax.jit(ntk.convnet_kernel_fn(2, False, get="nngp"))(x1, x2)) < 1e-6
  assert both[0].dtype == jnp.float32 and both[0].shape == (5, 4)
  with pytest.raises(ValueError, match="get must be"):
    ntk.convnet_kernel_fn(get="cov1")
  with pytest.raises(ValueError, match="depth"):
    ntk.convnet_kernel_fn(depth=0)
  with pytest.raises(ValueError, match="pooling needs"):
    ntk.convnet_kernel_fn(pooling=True, full_spatial=False)
  with pytest.raises(ValueError, match="NHWC"):
    ntk.convnet_kernel_fn()(x1, x2[:, :4])
