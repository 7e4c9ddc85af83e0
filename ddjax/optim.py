"""The one optimiser factory of ddjax (as big_vision's `optax.py:make`).

    tx = optim.make("sgd", 0.01, momentum=0.9, weight_decay=5e-4)
    tx = optim.make("adam", schedule, clip_norm=1.0)

Every optimiser ddjax builds, for networks (protocols A/B, experts, classifiers, the
analyses' pools) and for distilled images (DC, DM, MTT, BPTT, KIP), comes from `make`, so
one name means one update rule everywhere.
"""

from __future__ import annotations

import optax

from ddjax.errors import ConfigError

__all__ = ["OPTIMIZERS", "make"]

OPTIMIZERS = ("sgd", "adam")


def make(name: str, learning_rate: float | optax.Schedule, *, momentum: float = 0.0,
         weight_decay: float = 0.0, clip_norm: float = 0.0) -> optax.GradientTransformation:
  """An optax optimiser by name, with PyTorch's conventions.

  Args:
    name: "sgd" (`torch.optim.SGD`: heavy-ball momentum, no dampening) or "adam".
    learning_rate: a float or an optax schedule.
    momentum: SGD's momentum (0 = plain SGD); ignored by Adam.
    weight_decay: L2 decay added to the gradient before the update, as PyTorch's
      `weight_decay` argument of SGD and Adam (not AdamW's decoupled decay).
    clip_norm: if > 0, gradients are first clipped to this global norm.

  Returns:
    The optax GradientTransformation.

  Raises:
    ConfigError: for an unknown name.
  """
  if name == "sgd":
    tx = optax.sgd(learning_rate, momentum=momentum or None)
  elif name == "adam":
    tx = optax.adam(learning_rate)
  else:
    raise ConfigError(f"Unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZERS)}.")
  if weight_decay:
    tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
  if clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(clip_norm), tx)
  return tx
