"""Model shapes, parameter counts, init statistics, and im2col == XLA conv."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax import models
from ddjax.models import layers

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
  with jax.experimental.enable_x64():
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


def test_convnet_impls_agree_and_share_parameters():
  m_xla = models.get_model("convnet", 10, width=8, conv_impl="xla")
  m_col = models.get_model("convnet", 10, width=8, conv_impl="im2col")
  v = models.init_variables(m_xla, KEY, (1, 28, 28, 1))
  x = jax.random.normal(KEY, (3, 28, 28, 1))
  np.testing.assert_allclose(m_col.apply(v, x), m_xla.apply(v, x), rtol=1e-4, atol=1e-5)
  g = lambda m: jax.grad(lambda p: jnp.sum(m.apply({"params": p}, x) ** 2))(v["params"])
  chex.assert_trees_all_close(g(m_col), g(m_xla), rtol=1e-3, atol=1e-5)


def test_auto_conv_impl_per_backend():
  expected = "im2col" if jax.default_backend() == "cpu" else "xla"
  assert models.resolve_conv_impl("auto") == expected
  with pytest.raises(ValueError, match="Unknown conv_impl"):
    models.resolve_conv_impl("cudnn")
