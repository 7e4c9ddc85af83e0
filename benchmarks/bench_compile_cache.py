r"""What JAX's persistent compilation cache saves a new process (`--compilation_cache_dir`).

    .venv/bin/python -m benchmarks.bench_compile_cache

The program: the gradient, with respect to the images, of a gradient-matching-style loss
(the squared norm of the parameter gradient) of a ConvNet (width 16, depth 3, instance
norm) on 8 images of 28x28x1: a double-backward convolution, the kind of program
distillation compiles. Each measurement is a fresh Python process timing the first call
(trace, compile or load from the cache, run). Reported: no cache, an empty cache (the
compile plus the write), and the cache that run left (the load), each `--repeats` times
with a fresh cache directory per repeat; the median of each and the cold / warm ratio.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

from absl import app, flags

_REPEATS = flags.DEFINE_integer("repeats", 3, "Fresh cache directories (each: one cold, one "
                                "warm process).")

FIRST_CALL = r"""
import json, time
import jax, jax.numpy as jnp
from ddjax import models
model = models.get_model("convnet", 10, width=16, depth=3)
params = models.init_variables(model, jax.random.PRNGKey(0), (8, 28, 28, 1))["params"]
def matching_loss(images, params):
  grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, images) ** 2))(params)
  return sum(jnp.sum(g ** 2) for g in jax.tree_util.tree_leaves(grads))
step = jax.jit(jax.grad(matching_loss))
start = time.perf_counter()
jax.block_until_ready(step(jnp.ones((8, 28, 28, 1)), params))
print(json.dumps({"first_call_s": time.perf_counter() - start}))
"""


def first_call_seconds(cache_dir: str | None) -> float:
  """A fresh process's first call of the program, with the cache at `cache_dir` (None: off).

  Args:
    cache_dir: the compilation cache directory, or None for no cache.

  Returns:
    Seconds from the call to its result.
  """
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
  if cache_dir is not None:
    env["JAX_COMPILATION_CACHE_DIR"] = cache_dir
  out = subprocess.run([sys.executable, "-c", FIRST_CALL], env=env, capture_output=True,
                       text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])["first_call_s"]


def main(argv):
  del argv
  off, cold, warm = [], [], []
  for _ in range(_REPEATS.value):
    with tempfile.TemporaryDirectory(prefix="ddjax_cache_bench_") as cache_dir:
      off.append(first_call_seconds(None))
      cold.append(first_call_seconds(cache_dir))
      warm.append(first_call_seconds(cache_dir))
  off_s, cold_s, warm_s = (statistics.median(v) for v in (off, cold, warm))
  print(json.dumps({"no_cache_s": off_s, "empty_cache_s": cold_s, "warm_cache_s": warm_s,
                    "cold_over_warm": cold_s / warm_s, "runs": {"off": off, "cold": cold,
                                                                "warm": warm}}, indent=2))


if __name__ == "__main__":
  app.run(main)
