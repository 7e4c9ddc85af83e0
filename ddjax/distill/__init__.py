"""Dataset distillation methods. Each is a module with `init_state` and `distill_step`
(see `ddjax.distill.base`); `get_method(name)` imports it by name."""

import importlib

from ddjax.distill.base import (DistillState, DistillationDiverged, RealData, check_finite,
                                make_real_data, sample_class_indices, sample_per_class)
from ddjax.distill.synset import DistilledSet, DistilledSetError, load_distilled, save_distilled
from ddjax.errors import ConfigError

METHODS = {"bptt": "ddjax.distill.bptt", "dc": "ddjax.distill.gm", "dsa": "ddjax.distill.gm",
           "dm": "ddjax.distill.dm", "mtt": "ddjax.distill.mtt", "kip": "ddjax.distill.kip",
           "random": "ddjax.distill.random_real"}


def get_method(name: str):
  """The module implementing method `name` (bptt, dc, dsa, dm, mtt, kip; random = the
  random-real baseline).

  Args:
    name: a key of METHODS.

  Returns:
    The imported method module (`init_state`, `distill_step`, maybe `load_aux`).

  Raises:
    ConfigError: an unknown method.
  """
  if name not in METHODS:
    raise ConfigError(f"Unknown distillation method {name!r}; expected one of {sorted(METHODS)}.")
  return importlib.import_module(METHODS[name])
from ddjax.distill.pretrained import available as available_pretrained, load_pretrained

__all__ = [
    "METHODS", "DistillState", "DistillationDiverged", "DistilledSet", "DistilledSetError",
    "RealData", "available_pretrained", "check_finite", "get_method", "load_distilled",
    "load_pretrained", "make_real_data", "sample_class_indices", "sample_per_class",
    "save_distilled",
]
