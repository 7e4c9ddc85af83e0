"""AlexNet as defined in the DC/DSA/DM benchmark code (5 convs, no norm, max-pool)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddjax.models import layers


class AlexNet(nn.Module):
  num_classes: int = 10
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_embedding: bool = False) -> jax.Array:
    del train  # No norm, no dropout.
    conv = lambda f, k, p: layers.Conv2D(f, (k, k), padding=p, impl=self.conv_impl)
    # Padding 4 on 28x28 digits gives 32x32 after the 5x5 conv, as in DC.
    first_pad = 4 if x.shape[1:3] == (28, 28) else 2
    x = layers.pool(nn.relu(conv(128, 5, first_pad)(x)), "maxpooling")
    x = layers.pool(nn.relu(conv(192, 5, 2)(x)), "maxpooling")
    x = nn.relu(conv(256, 3, 1)(x))
    x = nn.relu(conv(192, 3, 1)(x))
    x = layers.pool(nn.relu(conv(192, 3, 1)(x)), "maxpooling")
    features = x.reshape(x.shape[0], -1)
    if return_embedding:
      return features
    return layers.Dense(self.num_classes)(features)

  def embed(self, x: jax.Array, train: bool = False) -> jax.Array:
    return self(x, train=train, return_embedding=True)
