r"""MTT peak memory against syn_steps, with and without per-step rematerialisation.

    .venv/bin/python -m benchmarks.bench_mtt_memory
    .venv/bin/python -m benchmarks.bench_mtt_memory --syn_steps=10,20,40 --width=32 --batch_syn=100

Each setting runs in its own process: it builds the MTT state (100 synthetic 28x28x1
images, ConvNet at --width, fake expert trajectories), runs two jitted `distill_step`s,
and reports
  * peak RSS: the process's maximum resident set size (getrusage), which also counts
    Python, jax and XLA's compiler;
  * RSS growth: peak RSS minus the RSS just before the first step;
  * XLA temp: the compiled step's temporary buffers (`memory_analysis()`), the memory the
    computation itself needs, without the compiler or the runtime.
With remat (the default) the step stores one parameter vector per student step and
recomputes one step's activations at a time, so memory should grow by about P floats per
step; without remat it grows by a whole step's activations (and their derivatives).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

from absl import app, flags

_STEPS = flags.DEFINE_list("syn_steps", ["10", "20", "40"], "Student steps per iteration.")
_WIDTH = flags.DEFINE_integer("width", 32, "ConvNet width.")
_BATCH = flags.DEFINE_integer("batch_syn", 100, "Synthetic images per student step.")
_VARIANTS = flags.DEFINE_list("variants", ["remat", "noremat"], "remat and/or noremat.")
_TIMEOUT = flags.DEFINE_integer("timeout", 1800, "Seconds per case.")
_CASE = flags.DEFINE_string("case", None, "Internal: 'steps:variant', run in this process.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_mb() -> float:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _case(steps: int, variant: str) -> dict:
  import functools  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from jax.flatten_util import ravel_pytree
  from configs.distill import mtt as mtt_cfg
  from ddjax import models
  from ddjax.distill import base, mtt

  config = mtt_cfg.get_config("dataset=mnist5k,ipc=10")
  config.model_kwargs.width = _WIDTH.value
  config.mtt.update(syn_steps=steps, batch_syn=_BATCH.value, remat=variant == "remat")
  key = jax.random.PRNGKey(0)
  y = jnp.repeat(jnp.arange(10), 10)
  real = base.make_real_data(jax.random.normal(key, (100, 28, 28, 1)), y, 10)
  model = models.get_model(config.model, 10, **config.model_kwargs)
  flat = ravel_pytree(models.init_variables(model, key, (1, 28, 28, 1))["params"])[0]
  snaps = config.mtt.max_start_epoch + config.mtt.expert_epochs
  aux = mtt.ExpertTrajectories(params=flat + 0.01 * jnp.arange(snaps)[None, :, None]
                               * jnp.ones((1, 1, flat.size)))
  state = mtt.init_state(config, key, real, aux)
  step = jax.jit(functools.partial(mtt.distill_step, config), donate_argnums=(0,))
  compiled = step.lower(state, key, real, aux).compile()
  analysis = compiled.memory_analysis()
  temp_mb = getattr(analysis, "temp_size_in_bytes", 0) / 2**20 if analysis is not None else None
  before = _rss_mb()
  for i in range(2):
    state, metrics = compiled(state, jax.random.PRNGKey(i), real, aux)
    jax.block_until_ready(state.images)
  return {"peak_rss_mb": _peak_rss_mb(), "rss_growth_mb": _peak_rss_mb() - before,
          "xla_temp_mb": temp_mb, "num_params": int(flat.size), "loss": float(metrics["loss"])}


def main(argv):
  del argv
  if _CASE.value:
    steps, variant = _CASE.value.split(":")
    print(json.dumps(_case(int(steps), variant)))
    return
  print(f"MTT distill_step, ConvNet width {_WIDTH.value}, batch_syn {_BATCH.value}, "
        "100 synthetic 28x28x1 images, CPU; one process per row")
  print(f"{'syn_steps':>9} {'variant':>8} {'peak RSS MB':>12} {'RSS growth MB':>14} "
        f"{'XLA temp MB':>12}")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  for variant in _VARIANTS.value:
    for steps in _STEPS.value:
      cmd = [sys.executable, "-m", "benchmarks.bench_mtt_memory", f"--case={steps}:{variant}",
             f"--width={_WIDTH.value}", f"--batch_syn={_BATCH.value}"]
      try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=_TIMEOUT.value)
        ok = proc.returncode == 0
        r = json.loads(proc.stdout.strip().splitlines()[-1]) if ok else None
        err = None if ok else (proc.stderr.strip().splitlines() or ["failed"])[-1]
      except subprocess.TimeoutExpired:
        r, err = None, f"did not finish in {_TIMEOUT.value} s"
      if r is None:
        print(f"{steps:>9} {variant:>8} error: {err}")
        continue
      temp = f"{r['xla_temp_mb']:.0f}" if r["xla_temp_mb"] is not None else "-"
      print(f"{steps:>9} {variant:>8} {r['peak_rss_mb']:>12.0f} {r['rss_growth_mb']:>14.0f} "
            f"{temp:>12}", flush=True)


if __name__ == "__main__":
  app.run(main)
