"""VGG-11 as defined in the DC/DSA/DM benchmark code (instance norm by default)."""

from __future__ import annotations

import flax.linen as nn
import jax

from ddjax.models import layers

__all__ = ["VGG"]

VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
  """VGG of the DC benchmark: 3x3 convs, each followed by a norm and ReLU, and max-pools.

  Attributes:
    num_classes: the size of the linear head.
    cfg: the layers: an int is a conv with that many channels, "M" a 2x2 max-pool
      (default VGG11_CFG, VGG-11).
    norm: the norm after each conv (`layers.NORMS`).
    conv_impl: the convolution implementation (`layers.CONV_IMPLS`).
  """

  num_classes: int = 10
  cfg: tuple = VGG11_CFG
  norm: str = "instancenorm"
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_embedding: bool = False) -> jax.Array:
    """Logits [N, num_classes], or the flattened features with `return_embedding`.

    Args:
      x: NHWC images [N, H, W, C]; 28x28 inputs are padded by 3 in the first conv.
      train: training mode (batch norm uses and updates batch statistics).
      return_embedding: return the features [N, F] instead of the logits.

    Returns:
      The logits or the features.
    """
    first = True
    for v in self.cfg:
      if v == "M":
        x = layers.pool(x, "maxpooling")
        continue
      # DC pads the first conv by 3 on 28x28 digits (-> 32x32 maps).
      pad = 3 if first and x.shape[1:3] == (28, 28) else 1
      first = False
      x = layers.Conv2D(v, (3, 3), padding=pad, impl=self.conv_impl)(x)
      x = nn.relu(layers.Norm(self.norm)(x, train=train))
    features = x.reshape(x.shape[0], -1)
    if return_embedding:
      return features
    return layers.Dense(self.num_classes)(features)

  def embed(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Penultimate features, the input of the linear head.

    Args:
      x: NHWC images [N, H, W, C].
      train: training mode (matters for batch norm only).

    Returns:
      The flattened features [N, F].
    """
    return self(x, train=train, return_embedding=True)
