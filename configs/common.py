"""Helpers shared by configs: big_vision-style `path.py:key=value,flag` arguments."""

from __future__ import annotations

import ml_collections

from ddjax.errors import ConfigError

# The CPU-sized settings (ConvNet width 32, cut iterations, the demo's analysis sizes) that
# every config keys on mnist5k were made for 4,000 train images of 28x28x1 in 10 classes.
# Fashion-MNIST has that shape; it takes those settings when a config is asked for them
# (the `cpu` argument, which configs/reproduce.py passes at sizes tiny and demo), on a
# class-balanced subset of mnist5k's size.
CPU_SIZED_DATASETS = ("mnist5k", "fashion_mnist")
CPU_SIZES = ("tiny", "demo")   # the reproduction / analysis sizes made for 2 CPU cores
CPU_TRAIN_PER_CLASS = 400      # mnist5k's 4,000 train images
CPU_TEST_PER_CLASS = 100       # mnist5k's 1,000 test images


def cpu_sized(dataset: str, cpu: bool = False) -> bool:
  """Whether a config takes its CPU-sized (mnist5k) settings: always for mnist5k; for
  another dataset of CPU_SIZED_DATASETS when `cpu` asks (else its published settings)."""
  if cpu and dataset not in CPU_SIZED_DATASETS:
    raise ConfigError(f"The CPU-sized settings (`cpu`) are made for 28x28x1 datasets of 10 "
                      f"classes, {', '.join(CPU_SIZED_DATASETS)}; not {dataset!r}.")
  return dataset == "mnist5k" or bool(cpu)


def cpu_subset(dataset: str) -> tuple[int, int]:
  """(train_per_class, test_per_class) of the CPU-sized settings: (0, 0), the whole
  splits, for mnist5k (already that size); a class-balanced 400 / 100 per class (4,000 /
  1,000 images, mnist5k's sizes) of any other dataset's splits."""
  return (0, 0) if dataset == "mnist5k" else (CPU_TRAIN_PER_CLASS, CPU_TEST_PER_CLASS)


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
