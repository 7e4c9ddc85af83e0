"""Learned (soft) labels that stay class-sorted, ipc per class, by argmax.

The synthetic set is class-sorted: row i belongs to class i // ipc. A method that
learns labels may move them freely except for one constraint, which the distilled-set
file checks: row i's argmax must stay its class. `keep_class_argmax` is the projection
applied after every label update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["ARGMAX_MARGIN", "keep_class_argmax", "row_classes"]

ARGMAX_MARGIN = 1e-3


def row_classes(num_rows: int, num_classes: int) -> jax.Array:
  """The class of every row of a class-sorted set of `num_rows` rows: [num_rows] int32.

  Args:
    num_rows: the set's size, a multiple of num_classes.
    num_classes: the class count.

  Returns:
    [num_rows] int32: row i is of class i // (num_rows // num_classes).

  Raises:
    ValueError: num_rows is not a multiple of num_classes.
  """
  if num_rows % num_classes:
    raise ValueError(f"A class-sorted synthetic set needs the same number of rows per class; "
                     f"{num_rows} rows do not split into {num_classes} classes.")
  return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), num_rows // num_classes)


def keep_class_argmax(labels: jax.Array, margin: float = ARGMAX_MARGIN) -> jax.Array:
  """Raises each row's own-class entry to at least (best other entry + margin).

  Rows whose own class already leads by the margin are unchanged.

  Args:
    labels: [N, C] float, class-sorted (row i of class i // (N // C)).
    margin: the lead the own class must have.

  Returns:
    The projected labels [N, C].
  """
  num_rows, num_classes = labels.shape
  own = jax.nn.one_hot(row_classes(num_rows, num_classes), num_classes, dtype=bool)
  best_other = jnp.max(jnp.where(own, -jnp.inf, labels), axis=-1, keepdims=True)
  raised = jnp.maximum(labels, best_other + margin)
  return jnp.where(own, raised, labels)
