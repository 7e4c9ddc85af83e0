r"""First-order CPU training time for each conv implementation, side by side.

    .venv/bin/python -m benchmarks.bench_train_conv --width=32 --impls=im2col,hybrid

Two jitted computations per implementation, on random MNIST-sized data: one protocol-B
epoch (`train.train_epoch`, 4 minibatches of 256 in a `lax.scan`) and 50 protocol-A
full-batch steps on 100 images (`train.train_full_batch`). Rows alternate between the
implementations for --rounds rounds (so drift in this VM's speed hits all of them);
each cell is the mean of 2 timed calls after a compiling one.
"""

from __future__ import annotations

import functools
import time

from absl import app, flags

_WIDTH = flags.DEFINE_integer("width", 32, "ConvNet width.")
_IMPLS = flags.DEFINE_list("impls", ["im2col", "hybrid"], "conv_impl values to compare.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternating rounds.")


def _timed(fn, *args, calls: int = 2) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))
  t0 = time.perf_counter()
  for _ in range(calls):
    jax.block_until_ready(fn(*args))
  return (time.perf_counter() - t0) / calls


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  from ddjax import models, train
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (1024, 28, 28, 1))
  y = jnp.arange(1024) % 10
  print(f"ConvNet width {_WIDTH.value}, JAX {jax.__version__} on {jax.default_backend()}")
  print(f"{'impl':>8} {'epoch 4x256 (s)':>16} {'protocol A 50x100 (s)':>22}")
  for _ in range(_ROUNDS.value):
    for impl in _IMPLS.value:
      model = models.get_model("convnet", 10, width=_WIDTH.value, conv_impl=impl)
      variables = models.init_variables(model, key, (1, 28, 28, 1))
      tx = train.sgd_momentum(0.01, 0.9)
      epoch = jax.jit(functools.partial(train.train_epoch, model, tx, batch_size=256))
      full = jax.jit(functools.partial(train.train_full_batch, model, tx, num_steps=50))
      t_epoch = _timed(epoch, train.create_train_state(variables, tx), x, y, key)
      t_full = _timed(full, variables, x[:100], y[:100])
      print(f"{impl:>8} {t_epoch:16.3f} {t_full:22.3f}", flush=True)


if __name__ == "__main__":
  app.run(main)
