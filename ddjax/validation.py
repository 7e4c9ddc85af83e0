"""Config values checked in one place, before any JAX computation or file is touched.

`check_config(config)` looks up every field it knows (wherever a job's config has it)
and raises a one-line `ConfigError` naming the first bad one: counts that must be
positive (`ipc`, `num_iterations` >= 0, batch sizes, seeds, ...), learning rates that
must be positive and finite, restore modes. Method-specific sections (config.dm,
config.mtt, ...) are checked by their methods, which raise ConfigError as well.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ddjax import errors

# field (dotted path) -> smallest allowed integer value
MIN_INT = {
    "ipc": 1, "num_iterations": 0, "num_epochs": 0, "batch_size": 1, "eval_batch_size": 1,
    "num_experts": 1, "experts_per_batch": 1, "log_every": 1, "checkpoint_every": 1,
    "eval_every_epochs": 1, "checkpoint_every_epochs": 1, "train_per_class": 0,
    "test_per_class": 0, "seed": 0,
    "eval.every": 0, "eval.num_seeds": 1, "eval.protocol_a_steps": 1, "eval.dc_epochs": 1,
    "eval.dc_batch_size": 1, "eval.test_per_class": 0, "eval.seed_chunk": 0,
    "eval.plateau_min_iterations": 0,
}
# fields that may also be None (no limit)
MIN_INT_OR_NONE = {"keep_checkpoints": 1}
# fields that must be finite and > 0, or >= 0
POSITIVE_FLOAT = ("learning_rate", "eval.protocol_a_lr", "eval.dc_lr")
NON_NEGATIVE_FLOAT = ("momentum", "weight_decay", "eval.protocol_a_momentum",
                      "eval.plateau_gain")

_MISSING = object()


def _lookup(config: Any, path: str) -> Any:
  node = config
  for part in path.split("."):
    try:
      node = node[part] if part in node else _MISSING
    except TypeError:  # not a mapping
      return _MISSING
    if node is _MISSING:
      return _MISSING
  return node


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_config(config: Any) -> None:
  """Raises ConfigError naming the first invalid value among the fields `config` has.

  Args:
    config: a job's ConfigDict (or dict); fields it lacks are not checked.

  Raises:
    ConfigError: e.g. "config.ipc must be an integer >= 1, got 0."
  """
  for path, low in MIN_INT.items():
    value = _lookup(config, path)
    if value is not _MISSING and (not _is_int(value) or value < low):
      raise errors.ConfigError(f"config.{path} must be an integer >= {low}, got {value!r}.")
  for path, low in MIN_INT_OR_NONE.items():
    value = _lookup(config, path)
    if value is not _MISSING and value is not None and (not _is_int(value) or value < low):
      raise errors.ConfigError(
          f"config.{path} must be an integer >= {low} (or None for no limit), got {value!r}.")
  for paths, positive in ((POSITIVE_FLOAT, True), (NON_NEGATIVE_FLOAT, False)):
    for path in paths:
      value = _lookup(config, path)
      if value is _MISSING:
        continue
      ok = (isinstance(value, numbers.Real) and not isinstance(value, bool)
            and math.isfinite(value) and (value > 0 if positive else value >= 0))
      if not ok:
        raise errors.ConfigError(f"config.{path} must be a finite number "
                                 f"{'> 0' if positive else '>= 0'}, got {value!r}.")
