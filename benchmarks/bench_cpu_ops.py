r"""The XLA:CPU kernel choices behind ddjax/models/cpu_ops.py, timed side by side.

    .venv/bin/python -m benchmarks.bench_cpu_ops

Two tables, each row at the activation shapes of the mnist5k ConvNet-32 meta-gradient
(batch 20; 32x32, 16x16 and 8x8 maps; and batch 100 for the DC/DM-sized batches):
  * per-sample spatial sums [N, H, W, C] -> [N, C] (instance-norm statistics): XLA's
    reduce (`x.sum((1, 2))`) vs `cpu_ops.spatial_sum` (a batched matmul);
  * the conv kernel gradient: im2col (concatenated patches, one matmul), nine per-tap
    matmuls, and the swapped-axes Eigen conv that `cpu_ops` uses from 8 input channels.
Each cell is the median over --repeats of one jitted call that runs the operation on 5
distinct inputs (so the per-call dispatch is amortised), divided by 5, in microseconds.
"""

from __future__ import annotations

import statistics
import time

from absl import app, flags

_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed calls per cell (median).")

SHAPES = [(20, 32, 1, 32), (20, 32, 32, 32), (20, 16, 32, 32), (20, 8, 32, 32),
          (100, 16, 32, 32)]  # (batch, spatial size, input channels, output channels)


def _time_us(fn, args, repeats: int, per_call: int) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times) / per_call * 1e6


def kernel_grad_variants():
  """name -> fn(x, g) computing dw for a 3x3, padding-1 conv."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ddjax.models import cpu_ops  # pylint: disable=g-import-not-at-top
  pads = ((1, 1), (1, 1))

  def per_tap(x, g):
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    n, h, w, cout = g.shape
    g2 = g.reshape(-1, cout)
    taps = [xp[:, i:i + h, j:j + w, :].reshape(-1, x.shape[-1]).T @ g2
            for i in range(3) for j in range(3)]
    return jnp.stack(taps).reshape(3, 3, x.shape[-1], cout)

  # pylint: disable=protected-access
  return {
      "im2col": lambda x, g: cpu_ops._kernel_grad_im2col(x, g, padding=pads, kernel_size=(3, 3)),
      "per-tap": per_tap,
      "eigen (swapped axes)": lambda x, g: cpu_ops._kernel_grad_swapped(x, g, padding=pads),
  }


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from ddjax.models import cpu_ops  # pylint: disable=g-import-not-at-top
  print(f"JAX {jax.__version__} on {jax.default_backend()}; microseconds per operation, "
        f"median of {_REPEATS.value}")
  copies = 5
  print("\nspatial sums [N, H, W, C] -> [N, C]")
  print(f"{'shape':>20} {'XLA reduce':>12} {'spatial_sum':>12} {'ratio':>7}")
  for n, size, c in sorted({(n, size, c) for n, size, _, c in SHAPES}, reverse=True):
    keys = jax.random.split(jax.random.PRNGKey(0), copies)
    xs = [jax.random.normal(k, (n, size, size, c)) for k in keys]
    reduce_us = _time_us(jax.jit(lambda xs: [x.sum((1, 2)) for x in xs]), (xs,),
                         _REPEATS.value, copies)
    matmul_us = _time_us(jax.jit(lambda xs: [cpu_ops.spatial_sum(x) for x in xs]), (xs,),
                         _REPEATS.value, copies)
    print(f"{str((n, size, size, c)):>20} {reduce_us:12.0f} {matmul_us:12.0f} "
          f"{matmul_us / reduce_us:7.2f}")
  print("\nconv kernel gradient (3x3, padding 1)")
  variants = kernel_grad_variants()
  print(f"{'(N, HW, Cin, Cout)':>20} " + " ".join(f"{name:>22}" for name in variants))
  for n, size, cin, cout in SHAPES:
    keys = jax.random.split(jax.random.PRNGKey(1), 2 * copies)
    xs = [jax.random.normal(k, (n, size, size, cin)) for k in keys[:copies]]
    gs = [jax.random.normal(k, (n, size, size, cout)) for k in keys[copies:]]
    cells = []
    for fn in variants.values():
      step = jax.jit(lambda xs, gs, fn=fn: [fn(x, g) for x, g in zip(xs, gs)])
      cells.append(_time_us(step, (xs, gs), _REPEATS.value, copies))
    print(f"{str((n, size, cin, cout)):>20} " + " ".join(f"{us:22.0f}" for us in cells))


if __name__ == "__main__":
  app.run(main)
