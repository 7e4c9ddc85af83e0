"""AlexNet as defined in the DC/DSA/DM benchmark code (5 convs, no norm, max-pool)."""

from __future__ import annotations

import flax.linen as nn
import jax

from ddjax.models import layers

__all__ = ["AlexNet"]


class AlexNet(nn.Module):
  """AlexNet of the DC benchmark: five convs (128, 192, 256, 192, 192), ReLU, three max-pools.

  Attributes:
    num_classes: the size of the linear head.
    conv_impl: the convolution implementation (`layers.CONV_IMPLS`).
  """

  num_classes: int = 10
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, return_embedding: bool = False) -> jax.Array:
    """Logits [N, num_classes], or the flattened features with `return_embedding`.

    Args:
      x: NHWC images [N, H, W, C]; 28x28 inputs are padded by 4 in the first conv.
      train: unused (no norm, no dropout).
      return_embedding: return the features [N, F] instead of the logits.

    Returns:
      The logits or the features.
    """
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
    """Penultimate features, the input of the linear head.

    Args:
      x: NHWC images [N, H, W, C].
      train: training mode (AlexNet has no train-time behaviour).

    Returns:
      The flattened features [N, F].
    """
    return self(x, train=train, return_embedding=True)
