"""ResNet-18/34, CIFAR variant, as the paper uses (torchvision ResNet with a 3x3
stride-1 stem and no max-pool), batch norm, global average pooling.

Initialisation follows torchvision: convs kaiming-normal (fan_out, ReLU gain),
batch norm scale 1 / bias 0, and PyTorch's default nn.Linear init for the head.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddjax.models import layers

__all__ = ["ResNet", "ResNet18", "ResNet34"]

# torchvision: nn.init.kaiming_normal_(w, mode="fan_out", nonlinearity="relu").
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class BasicBlock(nn.Module):
  """torchvision's BasicBlock: two 3x3 convs with batch norm, and a projected shortcut
  (1x1 conv and batch norm) when the stride or the width changes.

  Attributes:
    features: the output channels.
    strides: the first conv's (and the shortcut's) stride.
    conv_impl: the convolution implementation (`layers.CONV_IMPLS`).
  """

  features: int
  strides: int = 1
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """The block's output [N, H / strides, W / strides, features].

    Args:
      x: NHWC feature maps.
      train: training mode (batch statistics).

    Returns:
      relu(block(x) + shortcut(x)).
    """
    conv = lambda f, k, s, p: layers.Conv2D(
        f, (k, k), strides=(s, s), padding=p, use_bias=False,
        impl=self.conv_impl, kernel_init=kaiming_normal_fan_out)
    residual = x
    y = conv(self.features, 3, self.strides, 1)(x)
    y = nn.relu(layers.Norm("batchnorm")(y, train=train))
    y = conv(self.features, 3, 1, 1)(y)
    y = layers.Norm("batchnorm")(y, train=train)
    if self.strides != 1 or x.shape[-1] != self.features:
      residual = conv(self.features, 1, self.strides, 0)(x)
      residual = layers.Norm("batchnorm")(residual, train=train)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """The CIFAR ResNet: a 3x3 stride-1 stem, no max-pool, four stages of BasicBlocks.

  Attributes:
    stage_sizes: blocks per stage; stage s has width * 2**s channels and, after the
      first, halves the resolution in its first block.
    num_classes: the size of the linear head.
    width: the stem's and the first stage's channels.
    conv_impl: the convolution implementation (`layers.CONV_IMPLS`).
  """

  stage_sizes: tuple[int, ...] = (2, 2, 2, 2)
  num_classes: int = 10
  width: int = 64
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_embedding: bool = False) -> jax.Array:
    """Logits [N, num_classes], or the pooled features with `return_embedding`.

    Args:
      x: NHWC images [N, H, W, C].
      train: training mode (batch norm uses and updates batch statistics; apply with
        `mutable=["batch_stats"]`).
      return_embedding: return the global-average-pooled features [N, F], F = width *
        2**(len(stage_sizes) - 1) (512 for ResNet-18/34).

    Returns:
      The logits or the features.
    """
    x = layers.Conv2D(self.width, (3, 3), padding=1, use_bias=False, impl=self.conv_impl,
                      kernel_init=kaiming_normal_fan_out)(x)
    x = nn.relu(layers.Norm("batchnorm")(x, train=train))
    for stage, num_blocks in enumerate(self.stage_sizes):
      for block in range(num_blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = BasicBlock(self.width * 2**stage, strides, self.conv_impl)(x, train=train)
    features = jnp.mean(x, axis=(1, 2))
    if return_embedding:
      return features
    return layers.Dense(self.num_classes)(features)

  def embed(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Penultimate features, the input of the linear head.

    Args:
      x: NHWC images [N, H, W, C].
      train: training mode (batch statistics).

    Returns:
      The global-average-pooled features [N, width * 2**(len(stage_sizes) - 1)].
    """
    return self(x, train=train, return_embedding=True)


def ResNet18(**kwargs) -> ResNet:
  """ResNet-18: stages of (2, 2, 2, 2) BasicBlocks.

  Args:
    **kwargs: the other ResNet fields (num_classes, width, conv_impl).

  Returns:
    The ResNet module.
  """
  return ResNet(stage_sizes=(2, 2, 2, 2), **kwargs)


def ResNet34(**kwargs) -> ResNet:
  """ResNet-34: stages of (3, 4, 6, 3) BasicBlocks.

  Args:
    **kwargs: the other ResNet fields (num_classes, width, conv_impl).

  Returns:
    The ResNet module.
  """
  return ResNet(stage_sizes=(3, 4, 6, 3), **kwargs)
