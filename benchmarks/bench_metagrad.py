r"""One MTT / BPTT meta-gradient iteration: ddjax (JAX) vs PyTorch on the CPU, side by side.

    .venv/bin/python -m benchmarks.bench_metagrad                      # width 128, both methods
    .venv/bin/python -m benchmarks.bench_metagrad --width=32 --methods=mtt

The sizes are the mnist5k IPC-10 configs' (configs/distill/{mtt,bptt}.py): 100 synthetic
28x28x1 images; MTT 12 student steps on batches of 20 with a learned lr; BPTT the
20-step differentiated window (momentum SGD on batches of 2 per class from a fresh
init; the untracked RaT-BPTT prefix is first-order training and is left out), outer
loss on 320 real images, Adam. The network is the DC ConvNet (instance norm) at --width (128 by default, as
issue 3 asks; the mnist5k configs themselves use 32), float32.

JAX side: the real `distill_step` of ddjax.distill.{mtt,bptt}, jitted with the state
donated, exactly as the driver runs it; variants: `remat` (the default: jax.checkpoint per
inner step), `noremat`, `dots` (remat that keeps matmul outputs). PyTorch side
(benchmarks/torch_metagrad.py in .bench-venv, torch.set_num_threads(2)): a flat-parameter
unroll with create_graph=True in the MTT reference style. Each case runs in its own
process: one warm-up iteration (compilation for JAX), then the median of --repeats.
Cases alternate JAX / torch so that load from other processes hits both alike.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

_METHODS = flags.DEFINE_list("methods", ["mtt", "bptt"], "mtt and/or bptt.")
_WIDTH = flags.DEFINE_integer("width", 128, "ConvNet width.")
_VARIANTS = flags.DEFINE_list("variants", ["remat", "noremat"], "JAX variants: remat, noremat, dots.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed iterations (median reported).")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "Alternating JAX/torch rounds (median over rounds).")
_TIMEOUT = flags.DEFINE_integer("timeout", 1200, "Seconds per case.")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", ".bench-venv/bin/python", "Python with torch.")
_CASE = flags.DEFINE_string("case", None, "Internal: 'method:variant', run in this process.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sizes(method: str) -> dict:
  """The mnist5k IPC-10 config's sizes for `method`."""
  if method == "mtt":
    from configs.distill import mtt as cfg  # pylint: disable=g-import-not-at-top
    hp = cfg.get_config("dataset=mnist5k,ipc=10").mtt
    return {"steps": hp.syn_steps, "batch": hp.batch_syn or 100, "real": 0}
  from configs.distill import bptt as cfg  # pylint: disable=g-import-not-at-top
  hp = cfg.get_config("dataset=mnist5k,ipc=10").bptt
  # The differentiated window only: RaT-BPTT's untracked prefix is first-order training.
  return {"steps": hp.window or hp.inner_steps,
          "batch": 10 * hp.batch_per_class if hp.batch_per_class else 100,
          "real": 10 * hp.real_per_class}


def _jax_case(method: str, variant: str, width: int, repeats: int) -> dict:
  from benchmarks import profile_metagrad  # pylint: disable=g-import-not-at-top
  remat = {"remat": "nothing", "noremat": "off", "dots": "dots"}[variant]
  step, state, real, aux = profile_metagrad.make_step(method, width, remat=remat)
  return profile_metagrad.time_step(step, state, real, aux, repeats)[0]


def _run(cmd: list[str]) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  try:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=_TIMEOUT.value)
  except subprocess.TimeoutExpired:
    return {"error": f"did not finish in {_TIMEOUT.value} s"}
  if proc.returncode != 0:
    return {"error": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _torch_cmd(method: str) -> list[str] | None:
  python = os.path.join(ROOT, _TORCH_PYTHON.value)
  if not os.path.exists(python):
    return None
  s = sizes(method)
  return [python, os.path.join(ROOT, "benchmarks", "torch_metagrad.py"), f"--method={method}",
          f"--width={_WIDTH.value}", f"--steps={s['steps']}", f"--batch={s['batch']}",
          f"--real={s['real']}", f"--repeats={_REPEATS.value}", "--threads=2"]


def main(argv):
  del argv
  if _CASE.value:
    method, variant = _CASE.value.split(":")
    print(json.dumps(_jax_case(method, variant, _WIDTH.value, _REPEATS.value)))
    return
  print(f"One meta-gradient iteration, ConvNet width {_WIDTH.value}, 100 synthetic 28x28x1 "
        f"images, CPU (2 torch threads); median of {_REPEATS.value} after a warm-up, "
        f"median over {_ROUNDS.value} alternating round(s).")
  print(f"{'method':>6} {'steps':>5} {'batch':>5} {'impl':>12} {'seconds':>9} {'vs torch':>9}")
  for method in _METHODS.value:
    s = sizes(method)
    results: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    for _ in range(_ROUNDS.value):
      cases = [(f"jax-{v}", [sys.executable, "-m", "benchmarks.bench_metagrad",
                             f"--case={method}:{v}", f"--width={_WIDTH.value}",
                             f"--repeats={_REPEATS.value}"]) for v in _VARIANTS.value]
      torch_cmd = _torch_cmd(method)
      cases.append(("torch", torch_cmd))
      for name, cmd in cases:
        r = _run(cmd) if cmd else {"error": f"no {_TORCH_PYTHON.value} (make bench-setup)"}
        if "error" in r:
          errors[name] = r["error"]
        else:
          results.setdefault(name, []).append(r["median_s"])
    torch_s = statistics.median(results["torch"]) if "torch" in results else None
    for name in [f"jax-{v}" for v in _VARIANTS.value] + ["torch"]:
      if name in errors and name not in results:
        print(f"{method:>6} {s['steps']:>5} {s['batch']:>5} {name:>12} error: {errors[name]}")
        continue
      t = statistics.median(results[name])
      ratio = f"{t / torch_s:.2f}" if torch_s else "-"
      print(f"{method:>6} {s['steps']:>5} {s['batch']:>5} {name:>12} {t:>9.3f} {ratio:>9}")


if __name__ == "__main__":
  app.run(main)
