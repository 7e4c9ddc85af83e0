"""Helpers shared by configs: big_vision-style `path.py:key=value,flag` arguments."""

from __future__ import annotations

import ml_collections

from ddjax.errors import ConfigError


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'a=1,b=x,flag' into a ConfigDict typed like `defaults` (flags -> True)."""
  out = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    name, _, value = item.partition("=")
    if name not in defaults:
      raise ConfigError(f"Unknown config argument {name!r}; expected one of {sorted(defaults)}.")
    default = defaults[name]
    if not value:
      out[name] = True
    elif isinstance(default, bool):
      out[name] = value.lower() in ("1", "true", "yes")
    elif isinstance(default, int):
      out[name] = int(value)
    elif isinstance(default, float):
      out[name] = float(value)
    else:
      out[name] = value
  return out


def model_kwargs(model: str, conv_impl: str = "auto", **overrides) -> ml_collections.ConfigDict:
  """The model's tunable fields with their defaults, so `--config.model_kwargs.X=` works."""
  if model in ("convnet", "convnet_tiny"):
    kwargs = dict(width=128 if model == "convnet" else 16, depth=3, norm="instancenorm",
                  pooling="avgpooling", activation="relu")
  elif model == "vgg11":
    kwargs = dict(norm="instancenorm")
  else:
    kwargs = {}
  kwargs.update(conv_impl=conv_impl, **overrides)
  return ml_collections.ConfigDict(kwargs)
