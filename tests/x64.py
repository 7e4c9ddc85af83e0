"""float64 inside a `with` block, on every jax the tests run on.

`jax.experimental.enable_x64` is gone from current jax, and `jax.enable_x64` (jax >= 0.6)
is a config object whose truth value raises, so the tests flip the config flag itself.
"""

import contextlib

import jax
import jax.numpy as jnp


@contextlib.contextmanager
def enable_x64(on: bool = True):
  """Sets `jax_enable_x64` to `on` inside the block and restores it after."""
  previous = jnp.zeros(()).dtype == jnp.float64  # x64 was on before the block
  jax.config.update("jax_enable_x64", on)
  try:
    yield
  finally:
    jax.config.update("jax_enable_x64", previous)
