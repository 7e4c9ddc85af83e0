"""Seconds per distillation iteration at ConvNet width 32 vs 128, side by side in one process.

    python -m benchmarks.bench_distill_width

Uses the shipped sets' configs (configs/pretrained.py, mnist5k): DM, BPTT and KIP at IPC 10
and DC at IPC 1, 3 timed iterations after compilation each, then protocol A (1 seed, 100
images) at both widths. BUILD_NOTES.md ("Width: 32, measured") has the numbers.
"""

import functools
import time

import jax
import numpy as np

from configs import pretrained as pretrained_config
from ddjax.distill import base, driver, get_method

ROWS = (("dm", 10), ("bptt", 10), ("kip", 10), ("dc", 1))
WIDTHS = (32, 128)


def seconds_per_iteration(method_name: str, ipc: int, width: int, repeats: int = 3) -> float:
  config = pretrained_config.get_config(f"dataset=mnist5k,method={method_name},ipc={ipc}")
  config.model_kwargs.width = width
  method = get_method(config.method)
  ds, _ = driver.load_data(config)
  real = base.make_real_data(ds.x_train, ds.y_train, ds.num_classes)
  aux = method.load_aux(config) if hasattr(method, "load_aux") else None
  keys = driver.prng_keys(config)
  state = method.init_state(config, keys["init"], real, aux)
  step = jax.jit(functools.partial(method.distill_step, config), donate_argnums=(0,))
  state, _ = step(state, keys["step"], real, aux)  # compilation
  jax.block_until_ready(state.images)
  start = time.time()
  for i in range(repeats):
    state, _ = step(state, jax.random.fold_in(keys["step"], i + 1), real, aux)
  jax.block_until_ready(state.images)
  return (time.time() - start) / repeats


def protocol_a_seconds(width: int) -> float:
  config = pretrained_config.get_config("dataset=mnist5k,method=random,ipc=10")
  config.eval.model_kwargs.width = width
  config.eval.num_seeds = 1
  ds, _ = driver.load_data(config)
  evaluator = driver.Evaluator(config, ds.num_classes, ds.x_test, ds.y_test)
  x, y = ds.x_train[:100].astype(np.float32), np.repeat(np.arange(10), 10)
  evaluator(jax.random.PRNGKey(0), x, y)  # compilation
  start = time.time()
  evaluator(jax.random.PRNGKey(1), x, y)
  return time.time() - start


def main():
  for method_name, ipc in ROWS:
    times = [seconds_per_iteration(method_name, ipc, w) for w in WIDTHS]
    print(f"{method_name} IPC {ipc}: " + ", ".join(f"width {w} {t:.2f} s/it" for w, t in
                                                    zip(WIDTHS, times))
          + f", ratio {times[1] / times[0]:.1f}", flush=True)
  times = [protocol_a_seconds(w) for w in WIDTHS]
  print(f"protocol A (1 seed, 100 images): width 32 {times[0]:.1f} s, width 128 {times[1]:.1f} s",
        flush=True)


if __name__ == "__main__":
  main()
