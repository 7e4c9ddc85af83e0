r"""Where a CPU meta-gradient iteration spends its time: ablations and an XLA kernel profile.

    XLA_FLAGS=--xla_cpu_multi_thread_eigen=false .venv/bin/python -m benchmarks.profile_metagrad \
        --method=bptt --ablations=base,remat=off,remat=dots,norm=none,conv=xla --profile

The step is the real jitted `distill_step` of the mnist5k IPC-10 config (ConvNet width 32;
BPTT: its 20-step differentiated window, as benchmarks/bench_metagrad.py), on random
stand-in data (timing does not depend on the values). Each ablation overrides one thing:
`remat=off|nothing|dots|everything`, `norm=<ddjax.models.layers.NORMS>`,
`conv=im2col|hybrid|xla`, or several joined by `+`; `base` is the config as it is. Prints the
median of --repeats iterations after one compiling call, per ablation, in one process
(so they share the machine's load). --profile traces `base` with `jax.profiler` and sums
XLA:CPU's per-kernel events by fusion kind (needs TensorFlow's xplane proto, which
tensorflow-cpu from requirements.txt ships).
"""

from __future__ import annotations

import collections
import functools
import glob
import statistics
import tempfile
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Defined only when run as a program, so that tests can import the helpers."""
  flags.DEFINE_enum("method", "bptt", ["bptt", "mtt"], "Meta-gradient method.")
  flags.DEFINE_integer("width", 32, "ConvNet width (the mnist5k configs: 32).")
  flags.DEFINE_list("ablations", ["base", "remat=off", "norm=none"],
                    "Variants to time (see the module docstring).")
  flags.DEFINE_integer("repeats", 3, "Timed iterations per variant (median).")
  flags.DEFINE_bool("profile", False, "Also print the kernel profile of `base`.")
  flags.DEFINE_integer("top", 12, "Fusions listed individually in the profile.")


def parse_ablation(spec: str) -> dict[str, str]:
  """'remat=off+norm=none' -> {'remat': 'off', 'norm': 'none'}; 'base' -> {}."""
  if spec == "base":
    return {}
  out = {}
  for part in spec.split("+"):
    key, sep, value = part.partition("=")
    if not sep or key not in ("remat", "norm", "conv"):
      raise ValueError(f"Bad ablation {part!r}: expected remat=..., norm=... or conv=...")
    out[key] = value
  return out


def make_step(method: str, width: int, remat: str | None = None, norm: str | None = None,
              conv: str | None = None):
  """(jitted step, state, real, aux) for the mnist5k IPC-10 config with the overrides."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  from jax.flatten_util import ravel_pytree
  from ddjax import models
  from ddjax.distill import base, get_method
  from configs.distill import bptt as bptt_cfg, mtt as mtt_cfg

  config = (mtt_cfg if method == "mtt" else bptt_cfg).get_config("dataset=mnist5k,ipc=10")
  config.model_kwargs.width = width
  if norm is not None:
    config.model_kwargs.norm = norm
  if conv is not None:
    config.model_kwargs.conv_impl = conv
  hp = config[method]
  if method == "bptt":  # the differentiated window, as benchmarks/bench_metagrad.py
    hp.update(inner_steps=hp.window or hp.inner_steps, window=0)
  if remat is not None:
    hp.remat = remat != "off"
    hp.remat_policy = "nothing" if remat == "off" else remat
  key = jax.random.PRNGKey(0)
  per_class = max(hp.get("real_per_class", 0), config.ipc)
  y = jnp.repeat(jnp.arange(10), per_class)
  real = base.make_real_data(jax.random.normal(key, (len(y), 28, 28, 1)), y, 10)
  module = get_method(method)
  aux = None
  if method == "mtt":
    model = models.get_model(config.model, 10, **config.model_kwargs)
    flat = ravel_pytree(models.init_variables(model, key, (1, 28, 28, 1))["params"])[0]
    snaps = hp.max_start_epoch + hp.expert_epochs
    aux = module.ExpertTrajectories(
        params=flat + 0.01 * jnp.arange(snaps)[None, :, None] * jnp.ones((2, 1, flat.size)))
  state = module.init_state(config, key, real, aux)
  step = jax.jit(functools.partial(module.distill_step, config), donate_argnums=(0,))
  return step, state, real, aux


def time_step(step, state, real, aux, repeats: int) -> tuple[dict, object]:
  """({median_s, times_s, first_s (compilation included)}, the state after the last call)."""
  import jax  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  state, _ = step(state, jax.random.PRNGKey(1), real, aux)
  jax.block_until_ready(state.images)
  first = time.perf_counter() - t0
  times = []
  for i in range(repeats):
    t0 = time.perf_counter()
    state, _ = step(state, jax.random.PRNGKey(i + 2), real, aux)
    jax.block_until_ready(state.images)
    times.append(time.perf_counter() - t0)
  return {"median_s": statistics.median(times), "times_s": times, "first_s": first}, state


def kernel_profile(step, state, real, aux, repeats: int) -> tuple[collections.Counter, int]:
  """Seconds per XLA:CPU kernel name over `repeats` traced iterations."""
  import jax  # pylint: disable=g-import-not-at-top
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as logdir:
    with jax.profiler.trace(logdir):
      for i in range(repeats):
        state, _ = step(state, jax.random.PRNGKey(100 + i), real, aux)
      jax.block_until_ready(state.images)
    space = xplane_pb2.XSpace()
    with open(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)[0], "rb") as f:
      space.ParseFromString(f.read())
  seconds = collections.Counter()
  for plane in space.planes:
    names = {k: v.name for k, v in plane.event_metadata.items()}
    for line in plane.lines:
      if line.name == "python" or "Eigen" not in line.name:
        continue  # kernels run on XLA's Eigen threads; the rest is Python and dispatch
      for event in line.events:
        name = names.get(event.metadata_id, "?")
        if not name.startswith(("ThunkExecutor", "call.", "TaskDispatcher")):
          seconds[name.removesuffix(".clone")] += event.duration_ps / 1e12
  return seconds, repeats


def fusion_kind(name: str) -> str:
  return name.split(".")[0]


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  print(f"{FLAGS.method} meta-gradient iteration, ConvNet width {FLAGS.width}, mnist5k IPC-10 "
        f"config, JAX {jax.__version__} on {jax.default_backend()}; median of {FLAGS.repeats}")
  base_step = None
  for spec in FLAGS.ablations:
    step, state, real, aux = make_step(FLAGS.method, FLAGS.width, **parse_ablation(spec))
    timing, state = time_step(step, state, real, aux, FLAGS.repeats)
    print(f"  {spec:28s} {timing['median_s']:8.3f} s", flush=True)
    if spec == "base":
      base_step = (step, state, real, aux)
  if FLAGS.profile:
    if base_step is None:
      step, state, real, aux = make_step(FLAGS.method, FLAGS.width)
      _, state = time_step(step, state, real, aux, 1)
      base_step = (step, state, real, aux)
    seconds, n = kernel_profile(*base_step, FLAGS.repeats)
    total = sum(seconds.values())
    print(f"XLA kernels of `base`: {total / n:.3f} s per iteration")
    kinds = collections.Counter()
    for name, s in seconds.items():
      kinds[fusion_kind(name)] += s
    for kind, s in kinds.most_common():
      if s / total >= 0.01:
        print(f"  {kind:28s} {s / n:8.3f} s  {100 * s / total:5.1f} %")
    print(f"largest {FLAGS.top} kernels:")
    for name, s in seconds.most_common(FLAGS.top):
      print(f"  {name:28s} {s / n:8.4f} s  {100 * s / total:5.1f} %")


if __name__ == "__main__":
  define_flags()
  app.run(main)
