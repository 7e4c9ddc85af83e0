"""Model zoo: the DD ConvNet family, AlexNet, VGG-11 and CIFAR ResNet-18/34.

    model = ddjax.models.get_model("convnet", num_classes=10)
    variables = ddjax.models.init_variables(model, key, (1, 32, 32, 3))
    logits = model.apply(variables, x)                  # train=False
    feats = model.apply(variables, x, method="embed")   # penultimate features
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from ddjax.errors import ConfigError
from ddjax.models.alexnet import AlexNet
from ddjax.models.convnet import ConvNet
from ddjax.models.layers import Conv2D, Dense, Norm, conv2d_hybrid, conv2d_im2col, conv2d_xla, resolve_conv_impl
from ddjax.models.resnet import ResNet, ResNet18, ResNet34
from ddjax.models.vgg import VGG

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "convnet": ConvNet,
    "convnet_tiny": lambda **kw: ConvNet(**{"width": 16, **kw}),
    "alexnet": AlexNet,
    "vgg11": VGG,
    "resnet18": ResNet18,
    "resnet34": ResNet34,
}
MODEL_NAMES = tuple(_REGISTRY)


def canonical_model_name(name: str) -> str:
  """The registry key of a model name, accepting variants ("ResNet-18", "vgg_11", ...).

  Args:
    name: a model name, any case, '-' or '_' separated.

  Returns:
    One of MODEL_NAMES.

  Raises:
    ConfigError: an unknown model.
  """
  key = name.lower().replace("-", "_")
  key = {"convnettiny": "convnet_tiny", "resnet_18": "resnet18", "resnet_34": "resnet34",
         "vgg_11": "vgg11"}.get(key, key)
  if key not in _REGISTRY:
    raise ConfigError(f"Unknown model {name!r}; expected one of {MODEL_NAMES}.")
  return key


def get_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
  """Builds a model by name; kwargs are the model's fields (width, norm, conv_impl...).

  Args:
    name: a model name (`canonical_model_name` variants accepted).
    num_classes: the size of the linear head.
    **kwargs: the model's other fields.

  Returns:
    The flax module (unbound; `init_variables` makes its variables).

  Raises:
    ConfigError: an unknown model, or (at init) an unknown norm, activation or conv_impl.
  """
  return _REGISTRY[canonical_model_name(name)](num_classes=num_classes, **kwargs)


def init_variables(model: nn.Module, key: jax.Array, input_shape: tuple[int, ...]) -> dict:
  """Initial variables ({'params', maybe 'batch_stats'}) for NHWC `input_shape`.

  Args:
    model: the flax module.
    key: the PRNG key of the initialisation.
    input_shape: an NHWC shape; only the image shape (dims 1-3) matters.

  Returns:
    The variables dict: 'params', plus 'batch_stats' for batch-norm models.

  Raises:
    ValueError: `input_shape` is not 4-D.
  """
  if len(input_shape) != 4:
    raise ValueError(f"input_shape must be NHWC (4 dims), got {input_shape}.")
  return dict(model.init(key, jnp.zeros((1,) + tuple(input_shape[1:]), jnp.float32), train=False))


def count_params(params: Any) -> int:
  """The number of scalars in a pytree of arrays.

  Args:
    params: a pytree (parameters, or any variables).

  Returns:
    The total size of its leaves.
  """
  return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))


__all__ = [
    "AlexNet", "Conv2D", "ConvNet", "Dense", "MODEL_NAMES", "Norm", "ResNet", "ResNet18",
    "ResNet34", "VGG", "canonical_model_name", "conv2d_hybrid", "conv2d_im2col", "conv2d_xla",
    "count_params", "get_model", "init_variables", "resolve_conv_impl",
]
