"""Layers shared by every ddjax model: PyTorch-equivalent init and a switchable conv.

Why a custom Conv: XLA on the CPU differentiates `lax.conv_general_dilated` twice
very slowly (a meta-gradient through 2 unrolled SGD steps of ConvNet-32 took
8.8 s, vs 0.77 s with im2col; see BUILD_NOTES.md). `Conv2D(impl="im2col")` writes
the convolution as kh*kw shifted slices concatenated on the channel axis and one
matmul, whose first and second derivatives are plain slices and matmuls.
`Conv2D(impl="hybrid")` (cpu_ops.py) keeps XLA's Eigen conv for the forward pass and
the input gradient and gives the kernel gradient hand-written transposes, so every
derivative order stays on fast kernels; it is about 2x faster than im2col on CPU
meta-gradients. All implementations share the same HWIO kernel, so parameters and
checkpoints are interchangeable. `impl="auto"` picks hybrid on the CPU (im2col on a JAX
without the primitive APIs) and XLA (cuDNN) elsewhere.

Why a custom instance norm on the CPU: XLA:CPU runs a reduction as one serial scalar
add chain (~0.5 ms for the [20, 32, 32, 32] sums of an instance norm, 20x PyTorch), but
a batched matmul with a ones matrix takes ~0.1 ms. `InstanceNorm` computes its
statistics with cpu_ops.spatial_sum / spatial_broadcast, so all their derivatives are
such matmuls and broadcasts.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from ddjax.errors import ConfigError
from ddjax.models import cpu_ops

__all__ = ["ACTIVATIONS", "CONV_IMPLS", "Conv2D", "Dense", "InstanceNorm", "NORMS", "Norm",
           "conv2d_hybrid", "conv2d_im2col", "conv2d_xla", "pool", "resolve_conv_impl",
           "spatial_broadcast", "spatial_sum"]

Array = jax.Array
PaddingLike = int | Sequence[tuple[int, int]]

CONV_IMPLS = ("auto", "xla", "im2col", "hybrid")


def resolve_conv_impl(impl: str) -> str:
  """Maps "auto" to the measured-fastest conv on the default backend.

  Args:
    impl: one of CONV_IMPLS.

  Returns:
    "xla", "im2col" or "hybrid": `impl` itself unless it is "auto", which gives XLA off
    the CPU, and on the CPU hybrid (im2col on a JAX without the primitive APIs).

  Raises:
    ConfigError: an unknown impl.
  """
  if impl not in CONV_IMPLS:
    raise ConfigError(f"Unknown conv_impl {impl!r}; expected one of {CONV_IMPLS}.")
  if impl == "auto":
    if jax.default_backend() != "cpu":
      return "xla"
    return "hybrid" if cpu_ops.AVAILABLE else "im2col"
  return impl


# PyTorch's default Conv2d/Linear weight init, kaiming_uniform(a=sqrt(5)), is
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)): variance_scaling(1/3, fan_in, uniform).
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int) -> Callable[..., Array]:
  """PyTorch's default bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  Args:
    fan_in: the layer's fan-in (kh * kw * C for a conv, the input size for a dense).

  Returns:
    A flax initializer (key, shape, dtype) -> array.
  """
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _normalize_padding(padding: PaddingLike) -> tuple[tuple[int, int], tuple[int, int]]:
  if isinstance(padding, int):
    return ((padding, padding), (padding, padding))
  (top, bottom), (left, right) = padding
  return ((int(top), int(bottom)), (int(left), int(right)))


def conv2d_im2col(
    x: Array, kernel: Array, strides: tuple[int, int], padding: PaddingLike
) -> Array:
  """NHWC x HWIO convolution as shifted slices plus one matmul (see module doc).

  Args:
    x: NHWC input [N, H, W, C].
    kernel: HWIO kernel [kh, kw, C, O].
    strides: (sh, sw).
    padding: an int (all sides) or ((top, bottom), (left, right)).

  Returns:
    The NHWC output [N, Ho, Wo, O].
  """
  return cpu_ops.conv2d_im2col(x, kernel, tuple(strides), _normalize_padding(padding))


def conv2d_xla(
    x: Array, kernel: Array, strides: tuple[int, int], padding: PaddingLike
) -> Array:
  """NHWC x HWIO convolution by `lax.conv_general_dilated` (cuDNN on GPU).

  Args:
    x: NHWC input [N, H, W, C].
    kernel: HWIO kernel [kh, kw, C, O].
    strides: (sh, sw).
    padding: an int (all sides) or ((top, bottom), (left, right)).

  Returns:
    The NHWC output [N, Ho, Wo, O].
  """
  return jax.lax.conv_general_dilated(
      x,
      kernel,
      window_strides=strides,
      padding=_normalize_padding(padding),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


def conv2d_hybrid(
    x: Array, kernel: Array, strides: tuple[int, int], padding: PaddingLike
) -> Array:
  """XLA's (Eigen) conv with hand-written transposes: see ddjax/models/cpu_ops.py.

  Args:
    x: NHWC input [N, H, W, C].
    kernel: HWIO kernel [kh, kw, C, O].
    strides: must be (1, 1).
    padding: an int (all sides) or ((top, bottom), (left, right)).

  Returns:
    The NHWC output [N, Ho, Wo, O].
  """
  return cpu_ops.conv2d_hybrid(x, kernel, strides, _normalize_padding(padding))


class Conv2D(nn.Module):
  """2-D convolution, NHWC, HWIO kernel, PyTorch-default init, switchable impl.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    strides: (sh, sw); the hybrid impl runs strided convs as im2col.
    padding: an int (all sides) or ((top, bottom), (left, right)).
    use_bias: add a bias (PyTorch's default init).
    impl: one of CONV_IMPLS (`resolve_conv_impl`); the parameters are the same for all.
    kernel_init: the kernel initializer; None is PyTorch's default.
  """

  features: int
  kernel_size: tuple[int, int] = (3, 3)
  strides: tuple[int, int] = (1, 1)
  padding: PaddingLike = 1
  use_bias: bool = True
  impl: str = "auto"
  kernel_init: Callable[..., Array] | None = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """The convolution of NHWC `x` [N, H, W, C]: [N, Ho, Wo, features]."""
    cin = x.shape[-1]
    kh, kw = self.kernel_size
    fan_in = kh * kw * cin
    kernel = self.param(
        "kernel",
        self.kernel_init or torch_kernel_init,
        (kh, kw, cin, self.features),
    )
    kernel = kernel.astype(x.dtype)
    impl = resolve_conv_impl(self.impl)
    if impl == "hybrid" and tuple(self.strides) != (1, 1):
      impl = "im2col"  # the hybrid primitives are stride-1 only (ResNet downsampling)
    conv = {"im2col": conv2d_im2col, "xla": conv2d_xla, "hybrid": conv2d_hybrid}[impl]
    y = conv(x, kernel, tuple(self.strides), self.padding)
    if self.use_bias:
      bias = self.param("bias", torch_bias_init(fan_in), (self.features,))
      y = y + bias.astype(y.dtype)
    return y


class Dense(nn.Module):
  """Fully connected layer with PyTorch's default nn.Linear init.

  Attributes:
    features: output size.
    use_bias: add a bias.
  """

  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """x @ kernel (+ bias) for `x` [..., fan_in]: [..., features]."""
    fan_in = x.shape[-1]
    kernel = self.param("kernel", torch_kernel_init, (fan_in, self.features))
    y = x @ kernel.astype(x.dtype)
    if self.use_bias:
      y = y + self.param("bias", torch_bias_init(fan_in), (self.features,)).astype(y.dtype)
    return y


NORMS = ("instancenorm", "batchnorm", "layernorm", "none")


spatial_sum = cpu_ops.spatial_sum
spatial_broadcast = cpu_ops.spatial_broadcast


class InstanceNorm(nn.Module):
  """flax GroupNorm(group_size=1) with the same parameters and formula (fast variance),
  its per-sample, per-channel statistics computed by `spatial_sum` (see module doc).

  Attributes:
    epsilon: added to the variance.
  """

  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Each sample's channels normalised over H and W, then scaled and shifted; NHWC."""
    n, h, w, c = x.shape
    scale = self.param("scale", nn.initializers.ones, (c,)).astype(x.dtype)
    bias = self.param("bias", nn.initializers.zeros, (c,)).astype(x.dtype)
    mean = spatial_sum(x) / (h * w)
    var = jnp.maximum(spatial_sum(x * x) / (h * w) - mean * mean, 0.0)
    # y = (x - mean) * rsqrt(var + eps) * scale + bias as one per-(n, c) scale and shift:
    # the [N, C] -> [C] reductions for scale and bias gradients are then tiny.
    a = scale * lax.rsqrt(var + self.epsilon)
    return x * spatial_broadcast(a, h, w) + spatial_broadcast(bias - mean * a, h, w)


class Norm(nn.Module):
  """The DC ConvNet's norm options, with PyTorch's eps=1e-5.

  `train` only matters for batch norm: batch statistics (and a running-average
  update in the `batch_stats` collection) when True, running averages when False.

  Attributes:
    kind: one of NORMS.
  """

  kind: str = "instancenorm"

  @nn.compact
  def __call__(self, x: Array, train: bool = False) -> Array:
    """The normalised NHWC `x`.

    Args:
      x: NHWC features.
      train: batch norm's mode (see the class docstring); ignored by the others.

    Returns:
      The normalised features, same shape.

    Raises:
      ConfigError: an unknown kind.
    """
    if self.kind == "instancenorm":
      # GroupNorm(C, C) in PyTorch: one group per channel, per-channel affine.
      if jax.default_backend() == "cpu":
        # Same parameters ("GroupNorm_0/scale", "bias"), statistics via matmuls.
        return InstanceNorm(epsilon=1e-5, name="GroupNorm_0")(x)
      return nn.GroupNorm(num_groups=None, group_size=1, epsilon=1e-5)(x)
    if self.kind == "layernorm":
      # DC's "layernorm" is GroupNorm(1, C): normalise over H, W and C together.
      return nn.GroupNorm(num_groups=1, epsilon=1e-5)(x)
    if self.kind == "batchnorm":
      # PyTorch momentum 0.1 is flax momentum 0.9.
      return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
    if self.kind == "none":
      return x
    raise ConfigError(f"Unknown norm {self.kind!r}; expected one of {NORMS}.")


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "relu": nn.relu,
    "sigmoid": nn.sigmoid,
    "leakyrelu": lambda x: nn.leaky_relu(x, 0.01),
    "gelu": nn.gelu,
    "tanh": jnp.tanh,
}


def get_activation(name: str) -> Callable[[Array], Array]:
  """The activation function `name`.

  Args:
    name: a key of ACTIVATIONS.

  Returns:
    The elementwise function.

  Raises:
    ConfigError: an unknown name.
  """
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ConfigError(
        f"Unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}."
    ) from None


def pool(x: Array, pooling: str) -> Array:
  """2x2, stride-2 pooling written as a reshape (floor-crops odd sizes like PyTorch).

  A reshape-and-reduce differentiates twice into plain reshapes, where
  reduce_window's transpose goes through slower pad/select-and-scatter kernels.

  Args:
    x: NHWC features [N, H, W, C].
    pooling: "avgpooling" (or "avg"), "maxpooling" (or "max"), or "none" (also "" and
      None) for no pooling.

  Returns:
    [N, H // 2, W // 2, C], or `x` itself for no pooling.

  Raises:
    ConfigError: an unknown pooling.
  """
  if pooling in ("none", "", None):
    return x
  n, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2, :].reshape(n, h // 2, 2, w // 2, 2, c)
  if pooling in ("avgpooling", "avg"):
    return x.mean(axis=(2, 4))
  if pooling in ("maxpooling", "max"):
    return x.max(axis=(2, 4))
  raise ConfigError(f"Unknown pooling {pooling!r}; expected avgpooling, maxpooling or none.")

