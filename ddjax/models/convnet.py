"""The dataset-distillation ConvNet (DC/DSA/DM/MTT/RTP/WhatIsDD), in Flax linen.

Block = Conv3x3 -> norm -> act -> 2x2 pool, repeated `depth` times, then a linear
head on the flattened features. With the defaults (width 128, depth 3, instance
norm, ReLU, avg pooling) it has 320,010 parameters on CIFAR-10 and 317,706 on
MNIST, as in the PyTorch references. 28x28 inputs are padded to 32x32 by the first
conv (padding 3), as the references do. The flatten order is NHWC (PyTorch
flattens CHW), which only matters when importing PyTorch weights.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddjax.errors import ConfigError
from ddjax.models import layers

__all__ = ["ConvNet"]


class ConvNet(nn.Module):
  """The dataset-distillation ConvNet: `depth` blocks of conv3x3, norm, activation, pool.

  Attributes:
    num_classes: the size of the linear head.
    width: channels of every conv.
    depth: the number of blocks (each halves the resolution).
    norm: one of `layers.NORMS`.
    pooling: "avgpooling", "maxpooling" or "none".
    activation: one of `layers.ACTIVATIONS`.
    conv_impl: the convolution implementation (`layers.CONV_IMPLS`).
  """

  num_classes: int = 10
  width: int = 128
  depth: int = 3
  norm: str = "instancenorm"
  pooling: str = "avgpooling"
  activation: str = "relu"
  conv_impl: str = "auto"

  def setup(self):
    """Builds the convs, norms and head (flax's setup); ConfigError for an unknown norm."""
    if self.norm not in layers.NORMS:
      raise ConfigError(f"Unknown norm {self.norm!r}; expected one of {layers.NORMS}.")
    self.convs = [
        layers.Conv2D(self.width, (3, 3), padding=1, impl=self.conv_impl)
        for _ in range(self.depth)
    ]
    self.norms = [layers.Norm(self.norm) for _ in range(self.depth)]
    self.head = layers.Dense(self.num_classes)

  def embed(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Penultimate features (DM and UMAP use these): [N, width * h * w].

    Args:
      x: NHWC images [N, H, W, C]; 28x28 inputs are zero-padded to 32x32.
      train: training mode (matters for batch norm only).

    Returns:
      The flattened features [N, width * h * w], h and w the final resolution.
    """
    act = layers.get_activation(self.activation)
    if x.shape[1:3] == (28, 28):
      # The references' first conv uses padding 3 on 28x28 digits (-> 32x32):
      # zero-padding the input by 2 and convolving with padding 1 is the same.
      x = jnp.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for conv, norm in zip(self.convs, self.norms):
      x = layers.pool(act(norm(conv(x), train=train)), self.pooling)
    return x.reshape(x.shape[0], -1)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Logits [N, num_classes].

    Args:
      x: NHWC images [N, H, W, C].
      train: training mode (matters for batch norm only).

    Returns:
      The logits.
    """
    return self.head(self.embed(x, train=train))
