r"""One DC / DSA / DM iteration (`distill_step`) at the mnist5k IPC-10 config sizes.

    .venv/bin/python -m benchmarks.bench_gm_dm
    .venv/bin/python -m benchmarks.bench_gm_dm --methods=dm --width=128 --repeats=5

Builds each method's config (configs/distill/{dc,dsa,dm}.py:dataset=mnist5k,ipc=10, so
DC/DSA: 10 outer loops of per-class gradient matching on 32 real images per class plus
5 inner training steps; DM: one per-class mean-embedding match on 64 real images per
class), with the ConvNet at --width, and times the jitted step exactly as the driver
runs it (state donated): the first call (compilation included), then the median of
--repeats calls. Each method runs in its own process so compilation caches do not mix.
Prints one line per method and a JSON summary.
"""

from __future__ import annotations

import functools
import json
import statistics
import subprocess
import sys
import time

from absl import app, flags

_METHODS = flags.DEFINE_list("methods", ["dc", "dsa", "dm"], "Methods to time.")
_WIDTH = flags.DEFINE_integer("width", 32, "ConvNet width (the mnist5k configs use 32).")
_IPC = flags.DEFINE_integer("ipc", 10, "Images per class.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed iterations (median reported).")
_TIMEOUT = flags.DEFINE_integer("timeout", 1200, "Seconds per method.")
_CASE = flags.DEFINE_string("case", None, "Internal: time one method in this process.")


def _time_case(method: str, width: int, ipc: int, repeats: int) -> dict:
  import importlib  # pylint: disable=g-import-not-at-top
  import jax
  from ddjax.distill import base, driver, get_method

  config = importlib.import_module(f"configs.distill.{method}").get_config(
      f"dataset=mnist5k,ipc={ipc}")
  config.model_kwargs.width = width
  ds, _ = driver.load_data(config)
  real = base.make_real_data(ds.x_train, ds.y_train, ds.num_classes)
  module = get_method(method)
  state = module.init_state(config, driver.prng_keys(config)["init"], real)
  step = jax.jit(functools.partial(module.distill_step, config), donate_argnums=(0,))
  t = time.perf_counter()
  state, _ = step(state, driver.iteration_key(config, 0), real)
  jax.block_until_ready(state.images)
  first = time.perf_counter() - t
  times = []
  for i in range(repeats):
    t = time.perf_counter()
    state, metrics = step(state, driver.iteration_key(config, i + 1), real)
    jax.block_until_ready(state.images)
    times.append(time.perf_counter() - t)
  return {"method": method, "width": width, "ipc": ipc, "first_s": first,
          "median_s": statistics.median(times), "times_s": times,
          "loss": float(metrics["loss"])}


def main(argv):
  del argv
  if _CASE.value:
    print(json.dumps(_time_case(_CASE.value, _WIDTH.value, _IPC.value, _REPEATS.value)))
    return
  results = []
  for method in _METHODS.value:
    cmd = [sys.executable, "-m", "benchmarks.bench_gm_dm", f"--case={method}",
           f"--width={_WIDTH.value}", f"--ipc={_IPC.value}", f"--repeats={_REPEATS.value}"]
    try:
      run = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT.value)
    except subprocess.TimeoutExpired:
      print(f"{method}: timed out after {_TIMEOUT.value} s")
      continue
    if run.returncode != 0:
      print(f"{method}: failed\n{run.stderr[-2000:]}")
      continue
    r = json.loads(run.stdout.strip().splitlines()[-1])
    results.append(r)
    print(f"{method:4s} width {r['width']:3d} ipc {r['ipc']}: first call {r['first_s']:6.1f} s, "
          f"then {r['median_s']:6.2f} s per iteration (median of {len(r['times_s'])})")
  print(json.dumps(results))


if __name__ == "__main__":
  app.run(main)
