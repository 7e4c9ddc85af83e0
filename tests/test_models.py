"""Model shapes, parameter counts, init statistics, im2col == hybrid == XLA conv, and the
CPU instance norm == flax GroupNorm."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax import models
from ddjax.models import layers
from x64 import enable_x64  # tests/x64.py

KEY = jax.random.PRNGKey(0)


@pytest.mark.parametrize("name,shape,num_classes,expected", [
    ("convnet", (32, 32, 3), 10, 320_010),      # the references' CIFAR-10 ConvNet
    ("convnet", (28, 28, 1), 10, 317_706),      # MNIST: first conv pads 28 -> 32
    ("convnet", (32, 32, 3), 100, 504_420),
    ("convnet_tiny", (32, 32, 3), 10, 7_754),   # the paper's ConvNet-Tiny
    ("alexnet", (32, 32, 3), 10, 1_872_202),    # DC's AlexNet
    ("vgg11", (32, 32, 3), 10, 9_231_114),      # DC's VGG-11 (instance norm)
    ("resnet18", (32, 32, 3), 10, 11_173_962),  # torchvision ResNet-18, CIFAR stem
    ("resnet34", (32, 32, 3), 10, 21_282_122),
])
def test_parameter_counts_and_shapes(name, shape, num_classes, expected):
  model = models.get_model(name, num_classes)
  variables = jax.eval_shape(lambda: models.init_variables(model, KEY, (1,) + shape))
  assert models.count_params(variables["params"]) == expected
  x = jnp.zeros((2,) + shape)
  logits = jax.eval_shape(lambda v: model.apply(v, x), variables)
  assert logits.shape == (2, num_classes)
  feats = jax.eval_shape(lambda v: model.apply(v, x, method="embed"), variables)
  assert feats.shape[0] == 2 and feats.ndim == 2


def test_convnet_embedding_is_penultimate():
  model = models.get_model("convnet", 10, width=16)
  v = models.init_variables(model, KEY, (1, 28, 28, 1))
  x = jax.random.normal(KEY, (3, 28, 28, 1))
  feats = model.apply(v, x, method="embed")
  chex.assert_shape(feats, (3, 16 * 4 * 4))
  head = v["params"]["head"]
  np.testing.assert_allclose(model.apply(v, x), feats @ head["kernel"] + head["bias"], rtol=1e-5, atol=1e-5)


def test_convnet_options():
  x = jnp.ones((2, 32, 32, 3))
  for norm in ("instancenorm", "batchnorm", "layernorm", "none"):
    for pooling in ("avgpooling", "maxpooling", "none"):
      model = models.get_model("convnet", 10, width=4, depth=2, norm=norm, pooling=pooling,
                               activation="leakyrelu")
      v = jax.eval_shape(lambda: models.init_variables(model, KEY, x.shape))
      assert jax.eval_shape(lambda v: model.apply(v, x), v).shape == (2, 10)
  with pytest.raises(ValueError, match="Unknown norm 'groupy'"):
    models.init_variables(models.get_model("convnet", 10, norm="groupy"), KEY, x.shape)
  with pytest.raises(ValueError, match="Unknown activation"):
    models.init_variables(models.get_model("convnet", 10, activation="swishy"), KEY, x.shape)
  with pytest.raises(ValueError, match="Unknown model 'resnet99'"):
    models.get_model("resnet99", 10)
  assert models.canonical_model_name("ResNet-18") == "resnet18"


def test_pytorch_default_init_statistics():
  model = models.get_model("convnet", 10)
  params = models.init_variables(model, KEY, (1, 32, 32, 3))["params"]
  for name, fan_in in (("convs_1", 128 * 9), ("head", 2048)):
    kernel, bias = np.asarray(params[name]["kernel"]), np.asarray(params[name]["bias"])
    bound = 1 / np.sqrt(fan_in)
    assert np.abs(kernel).max() <= bound and np.abs(bias).max() <= bound
    np.testing.assert_allclose(kernel.std(), bound / np.sqrt(3), rtol=0.02)  # U(-b, b)
  norm = params["norms_0"]["GroupNorm_0"]
  np.testing.assert_array_equal(norm["scale"], 1.0)
  np.testing.assert_array_equal(norm["bias"], 0.0)
  # torchvision ResNet convs: kaiming normal, fan_out, ReLU gain.
  rparams = models.init_variables(models.get_model("resnet18", 10), KEY, (1, 32, 32, 3))["params"]
  k = np.asarray(rparams["BasicBlock_3"]["Conv2D_0"]["kernel"])  # 3x3, 128 -> 128
  np.testing.assert_allclose(k.std(), np.sqrt(2 / (9 * k.shape[-1])), rtol=0.02)


def test_instance_norm_eps_matches_pytorch():
  norm = layers.Norm("instancenorm")
  x = jax.random.normal(KEY, (2, 4, 4, 3)) * 1e-3  # variance ~1e-6: eps matters
  y = norm.apply(norm.init(KEY, x), x)
  mean = x.mean(axis=(1, 2), keepdims=True)
  var = x.var(axis=(1, 2), keepdims=True)
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)


def test_batchnorm_updates_running_stats_only_in_train_mode():
  model = models.get_model("resnet18", 10)
  v = models.init_variables(model, KEY, (1, 32, 32, 3))
  x = jax.random.normal(KEY, (2, 32, 32, 3))
  _, updates = model.apply(v, x, train=True, mutable=["batch_stats"])
  before = jax.tree_util.tree_leaves(v["batch_stats"])[0]
  after = jax.tree_util.tree_leaves(updates["batch_stats"])[0]
  assert not np.allclose(before, after)


CONV_CASES = [  # (kernel, strides, padding, cin, cout)
    ((3, 3), (1, 1), 1, 3, 5),
    ((5, 5), (1, 1), 2, 2, 4),
    ((3, 3), (2, 2), 1, 3, 4),
    ((1, 1), (2, 2), 0, 3, 4),
    ((3, 3), (1, 1), 3, 1, 4),
]


@pytest.mark.parametrize("kernel,strides,padding,cin,cout", CONV_CASES)
def test_im2col_equals_xla_conv_in_value_and_derivatives(kernel, strides, padding, cin, cout):
  with enable_x64():
    kx, kw = jax.random.split(KEY)
    x = jax.random.normal(kx, (2, 7, 7, cin), jnp.float64)
    w = jax.random.normal(kw, kernel + (cin, cout), jnp.float64)
    f_xla = functools.partial(layers.conv2d_xla, strides=strides, padding=padding)
    f_col = functools.partial(layers.conv2d_im2col, strides=strides, padding=padding)
    np.testing.assert_allclose(f_col(x, w), f_xla(x, w), rtol=1e-12, atol=1e-12)
    # A nonlinear scalar of the output, so second derivatives are non-trivial.
    loss = lambda f: (lambda x, w: jnp.sum(jnp.tanh(f(x, w)) ** 2))
    g_xla = jax.grad(loss(f_xla), argnums=(0, 1))(x, w)
    g_col = jax.grad(loss(f_col), argnums=(0, 1))(x, w)
    chex.assert_trees_all_close(g_col, g_xla, rtol=1e-10, atol=1e-10)
    # Second derivatives: Hessian-vector products in w and the mixed x-w block.
    vw = jax.random.normal(KEY, w.shape, jnp.float64)
    hvp = lambda f: jax.jvp(jax.grad(loss(f), argnums=(0, 1)), (x, w), (jnp.zeros_like(x), vw))[1]
    chex.assert_trees_all_close(hvp(f_col), hvp(f_xla), rtol=1e-10, atol=1e-10)


HYBRID_CASES = [  # (kernel, padding, cin, cout): both kernel-gradient paths (cin < / >= 8)
    ((3, 3), 1, 3, 5),
    ((3, 3), ((1, 2), (0, 1)), 9, 4),   # asymmetric padding
    ((5, 5), 2, 10, 3),
    ((3, 3), 3, 1, 4),                  # pad > k - 1: the adjoint conv has negative padding
    ((3, 3), 0, 8, 2),
]


@pytest.mark.parametrize("kernel,padding,cin,cout", HYBRID_CASES)
def test_hybrid_conv_matches_im2col_to_third_order(kernel, padding, cin, cout):
  """The hand-written transposes must give every derivative order, forward mode included."""
  with enable_x64():
    kx, kw, kv = jax.random.split(KEY, 3)
    x = jax.random.normal(kx, (2, 7, 6, cin), jnp.float64)
    w = jax.random.normal(kw, kernel + (cin, cout), jnp.float64)
    f_hyb = functools.partial(layers.conv2d_hybrid, strides=(1, 1), padding=padding)
    f_col = functools.partial(layers.conv2d_im2col, strides=(1, 1), padding=padding)
    tight = dict(rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(f_hyb(x, w), f_col(x, w), rtol=1e-12, atol=1e-12)
    loss = lambda f: (lambda x, w: jnp.sum(jnp.tanh(f(x, w)) ** 2))
    grad = lambda f: jax.grad(loss(f), argnums=(0, 1))
    chex.assert_trees_all_close(grad(f_hyb)(x, w), grad(f_col)(x, w), **tight)
    # Reverse over reverse (the meta-gradient's structure), then once more (third order).
    second = lambda f: (lambda x, w: sum(jnp.sum(jnp.sin(t)) for t in grad(f)(x, w)))
    chex.assert_trees_all_close(jax.grad(second(f_hyb), argnums=(0, 1))(x, w),
                                jax.grad(second(f_col), argnums=(0, 1))(x, w), **tight)
    third = lambda f: jax.grad(lambda x: jnp.sum(jax.grad(second(f))(x, w) ** 2))(x)
    np.testing.assert_allclose(third(f_hyb), third(f_col), rtol=1e-8, atol=1e-8)
    # Forward over reverse (curvature's HVPs).
    vw = jax.random.normal(kv, w.shape, jnp.float64)
    hvp = lambda f: jax.jvp(grad(f), (x, w), (jnp.zeros_like(x), vw))[1]
    chex.assert_trees_all_close(hvp(f_hyb), hvp(f_col), **tight)


def test_hybrid_conv_vmap_equals_loop():
  """vmap over inputs (folded into the batch) and over kernels (independent retrains)."""
  with enable_x64():
    kx, kw = jax.random.split(KEY)
    xs = jax.random.normal(kx, (3, 2, 6, 6, 9), jnp.float64)
    ws = jax.random.normal(kw, (3, 3, 3, 9, 4), jnp.float64)
    conv = lambda x, w: layers.conv2d_hybrid(x, w, (1, 1), 1)
    grad = jax.grad(lambda w, x: jnp.sum(jnp.tanh(conv(x, w)) ** 2), argnums=(0, 1))
    for x_axis, w_axis in ((0, None), (None, 0), (0, 0)):
      x_arg = xs if x_axis == 0 else xs[0]
      w_arg = ws if w_axis == 0 else ws[0]
      x_i = lambda i: xs[i] if x_axis == 0 else xs[0]
      w_i = lambda i: ws[i] if w_axis == 0 else ws[0]
      np.testing.assert_allclose(jax.vmap(conv, (x_axis, w_axis))(x_arg, w_arg),
                                 jnp.stack([conv(x_i(i), w_i(i)) for i in range(3)]), rtol=1e-12)
      loop = [grad(w_i(i), x_i(i)) for i in range(3)]
      chex.assert_trees_all_close(jax.vmap(grad, (w_axis, x_axis))(w_arg, x_arg),
                                  jax.tree.map(lambda *a: jnp.stack(a), *loop),
                                  rtol=1e-10, atol=1e-10)


def test_hybrid_conv_rejects_bad_input():
  x = jnp.zeros((1, 5, 5, 3))
  with pytest.raises(ValueError, match="stride 1 only"):
    layers.conv2d_hybrid(x, jnp.zeros((3, 3, 3, 4)), (2, 2), 1)
  with pytest.raises(ValueError, match="does not match HWIO"):
    layers.conv2d_hybrid(x, jnp.zeros((3, 3, 2, 4)), (1, 1), 1)


@pytest.mark.parametrize("impl", ["im2col", "hybrid"])
def test_convnet_impls_agree_and_share_parameters(impl):
  m_xla = models.get_model("convnet", 10, width=8, conv_impl="xla")
  m_other = models.get_model("convnet", 10, width=8, conv_impl=impl)
  v = models.init_variables(m_xla, KEY, (1, 28, 28, 1))
  x = jax.random.normal(KEY, (3, 28, 28, 1))
  np.testing.assert_allclose(m_other.apply(v, x), m_xla.apply(v, x), rtol=1e-4, atol=1e-5)
  g = lambda m: jax.grad(lambda p: jnp.sum(m.apply({"params": p}, x) ** 2))(v["params"])
  chex.assert_trees_all_close(g(m_other), g(m_xla), rtol=1e-3, atol=1e-5)


def test_matmul_instance_norm_equals_flax_group_norm():
  """The CPU instance norm: same parameters, values and first/second derivatives."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  with enable_x64():
    kx, kp = jax.random.split(KEY)
    x = 3.0 + jax.random.normal(kx, (2, 16, 16, 3), jnp.float64)  # the matmul path
    ours, ref = layers.InstanceNorm(epsilon=1e-5), nn.GroupNorm(None, group_size=1, epsilon=1e-5)
    v = ref.init(KEY, x)
    assert jax.tree.structure(ours.init(KEY, x)) == jax.tree.structure(v)
    v = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(kp, p.shape, p.dtype), v)
    np.testing.assert_allclose(ours.apply(v, x), ref.apply(v, x), rtol=1e-10, atol=1e-10)
    loss = lambda m: (lambda v, x: jnp.sum(jnp.sin(m.apply(v, x)) ** 2))
    grad = lambda m: jax.grad(loss(m), argnums=(0, 1))
    chex.assert_trees_all_close(grad(ours)(v, x), grad(ref)(v, x), rtol=1e-9, atol=1e-9)
    second = lambda m: jax.grad(lambda x: jnp.sum(grad(m)(v, x)[1] ** 2))(x)
    np.testing.assert_allclose(second(ours), second(ref), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(layers.spatial_sum(x), x.sum((1, 2)), rtol=1e-12)


@pytest.mark.parametrize("shape", [(3, 4, 5, 2), (2, 16, 17, 3)])  # reduce / matmul path
def test_spatial_sum_and_broadcast_are_transposes_under_every_transform(shape):
  n, h, w, c = shape
  with enable_x64():
    kx, ks = jax.random.split(KEY)
    x = jax.random.normal(kx, shape, jnp.float64)
    s = jax.random.normal(ks, (n, c), jnp.float64)
    np.testing.assert_allclose(layers.spatial_sum(x), x.sum((1, 2)), rtol=1e-12)
    np.testing.assert_allclose(layers.spatial_broadcast(s, h, w),
                               jnp.broadcast_to(s[:, None, None], x.shape), rtol=0)
    # <sum(x), s> == <x, broadcast(s)>, via linear_transpose, vjp and jvp.
    (ct_x,) = jax.linear_transpose(layers.spatial_sum, x)(s)
    np.testing.assert_allclose(ct_x, layers.spatial_broadcast(s, h, w), rtol=0)
    (ct_s,) = jax.linear_transpose(lambda s: layers.spatial_broadcast(s, h, w), s)(x)
    np.testing.assert_allclose(ct_s, x.sum((1, 2)), rtol=1e-12)
    f = lambda x: jnp.sum(jnp.sin(layers.spatial_sum(x ** 2)))
    g = lambda x: jnp.sum(jnp.sin((x ** 2).sum((1, 2))))
    np.testing.assert_allclose(jax.jvp(jax.grad(f), (x,), (x,))[1],
                               jax.jvp(jax.grad(g), (x,), (x,))[1], rtol=1e-10)
    xs = jnp.stack([x, 2.0 * x])
    np.testing.assert_allclose(jax.vmap(jax.grad(f))(xs),
                               jnp.stack([jax.grad(g)(x_) for x_ in xs]), rtol=1e-10)
  with pytest.raises(ValueError, match="expects NHWC"):
    layers.spatial_sum(jnp.zeros((3, 4)))


def test_auto_conv_impl_per_backend():
  from ddjax.models import cpu_ops  # pylint: disable=g-import-not-at-top
  cpu = "hybrid" if cpu_ops.AVAILABLE else "im2col"
  expected = cpu if jax.default_backend() == "cpu" else "xla"
  assert models.resolve_conv_impl("auto") == expected
  with pytest.raises(ValueError, match="Unknown conv_impl"):
    models.resolve_conv_impl("cudnn")
