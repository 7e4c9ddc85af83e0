"""VGG-11 as defined in the DC/DSA/DM benchmark code (instance norm by default)."""

from __future__ import annotations

import flax.linen as nn
import jax

from ddjax.models import layers

VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
  num_classes: int = 10
  cfg: tuple = VGG11_CFG
  norm: str = "instancenorm"
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_embedding: bool = False) -> jax.Array:
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
    return self(x, train=train, return_embedding=True)
