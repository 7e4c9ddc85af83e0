r"""Full-train-set Hessian trace (E7): ddjax (JAX) vs PyHessian-style PyTorch, side by side.

    .venv/bin/python -m benchmarks.bench_trace --json_out=/tmp/bench_trace.json

The problem: the demo ConvNet (width 128, instance norm; 317,706 parameters on
28x28x1) at its initialisation, the Hessian of the mean cross-entropy over the
4,000 mnist5k training images (standardised), float32, CPU.

* JAX: `curvature.hessian_operator(..., batch_size=500)` (a lax.scan over 8 batches,
  forward-over-reverse HVPs) and `curvature.hutchinson_samples` (probes in a jitted
  loop), `--probes_per_repeat` probes per timed call.
* PyTorch (`benchmarks/torch_trace.py`, run with --torch_python): PyHessian's
  dataloader loop, `torch.autograd.grad(..., create_graph=True)` then the gradient
  of grad . v, per batch and per probe; torch.set_num_threads(--threads).

Both sides use the same weights (the JAX initialisation, copied into the PyTorch
model) and, for `--check`, the same probe vector, whose v^T H v must agree: the
two benchmarks compute the same quantity. Reported: warm-up (includes JAX's
compile), the median time per probe over --repeats, and the ratio.
`--tol_run` also runs the full PyHessian stopping rule (tol 1e-3, <= 100 probes)
in JAX once and reports its probe count and time.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_enum("framework", "both", ["both", "jax", "torch"], "Which side(s) to run.")
flags.DEFINE_integer("width", 128, "ConvNet width (the demo ConvNet is 128).")
flags.DEFINE_integer("num_train", 0, "Training images (0 = all 4,000).")
flags.DEFINE_integer("batch_size", 500, "Batch size of the dataset-averaged HVP.")
flags.DEFINE_integer("probes_per_repeat", 1, "Probes per timed repeat.")
flags.DEFINE_integer("repeats", 3, "Timed repeats (median).")
flags.DEFINE_integer("warmup", 1, "Warm-up repeats (JAX: compiles).")
flags.DEFINE_integer("threads", 2, "PyTorch intra-op threads (XLA uses every core: 2 here).")
flags.DEFINE_string("torch_python", ".bench-venv/bin/python", "Python with PyTorch.")
flags.DEFINE_bool("check", True, "Cross-check v^T H v of one shared probe between frameworks.")
flags.DEFINE_bool("tol_run", False, "Also run PyHessian's full stopping rule in JAX.")
flags.DEFINE_string("precision", None, "Matmul precision inside the JAX HVP (None = default).")
flags.DEFINE_string("json_out", "", "Write the results here as JSON.")
FLAGS = flags.FLAGS


def _torch_layout(tree, width: int, depth: int = 3) -> dict:
  """JAX ConvNet params (or a params-shaped probe) -> PyTorch nn.Sequential names/layouts."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = {}
  for d in range(depth):
    conv, norm = tree[f"convs_{d}"], tree[f"norms_{d}"]["GroupNorm_0"]
    out[f"{4 * d}.weight"] = np.asarray(conv["kernel"]).transpose(3, 2, 0, 1)  # HWIO -> OIHW
    out[f"{4 * d}.bias"] = np.asarray(conv["bias"])
    out[f"{4 * d + 1}.weight"] = np.asarray(norm["scale"])
    out[f"{4 * d + 1}.bias"] = np.asarray(norm["bias"])
  kernel = np.asarray(tree["head"]["kernel"])  # [H*W*C, K], NHWC flatten order
  k = kernel.shape[1]
  side = int(round((kernel.shape[0] // width) ** 0.5))
  out[f"{4 * depth + 1}.weight"] = kernel.reshape(side, side, width, k).transpose(3, 2, 0, 1).reshape(k, -1)
  out[f"{4 * depth + 1}.bias"] = np.asarray(tree["head"]["bias"])
  return {name: np.ascontiguousarray(a, np.float32) for name, a in out.items()}


def _run_jax(model, variables, x, y, probe):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ddjax import curvature  # pylint: disable=g-import-not-at-top

  op = curvature.hessian_operator(model, variables, x, y, batch_size=FLAGS.batch_size,
                                  precision=FLAGS.precision)
  key = jax.random.PRNGKey(0)
  run = lambda k: jax.block_until_ready(curvature.hutchinson_samples(
      op, k, max_probes=FLAGS.probes_per_repeat, tol=None))
  result = {"jax": jax.__version__, "platform": jax.devices()[0].platform,
            "num_params": op.size, "num_examples": int(x.shape[0]),
            "batch_size": FLAGS.batch_size}
  if probe is not None:
    vhv = jax.jit(lambda o, v: sum(jnp.vdot(a, b) for a, b in zip(
        jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(o(v)))))
    result["check_vhv"] = float(vhv(op, probe))
  t0 = time.perf_counter()
  for i in range(FLAGS.warmup):
    run(jax.random.fold_in(key, 1000 + i))
  result["warmup_s"] = time.perf_counter() - t0
  times, samples = [], []
  for r in range(FLAGS.repeats):
    t0 = time.perf_counter()
    s, _ = run(jax.random.fold_in(key, r))
    times.append(time.perf_counter() - t0)
    samples += [float(v) for v in s[:FLAGS.probes_per_repeat]]
  result.update(repeat_s=times, samples=samples,
                per_probe_s=statistics.median(times) / FLAGS.probes_per_repeat)
  if FLAGS.tol_run:
    t0 = time.perf_counter()
    est = curvature.hutchinson_trace(op, jax.random.PRNGKey(1))
    result["tol_run"] = {"time_s": time.perf_counter() - t0, **est.to_dict()}
  return result


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ddjax import data, models  # pylint: disable=g-import-not-at-top

  ds = data.load_dataset("mnist5k")
  pre = data.fit_preprocessor("standardize", ds.x_train, ds.name)
  n = FLAGS.num_train or ds.x_train.shape[0]
  x, y = np.asarray(pre.apply(ds.x_train[:n]), np.float32), ds.y_train[:n]
  model = models.get_model("convnet", ds.num_classes, width=FLAGS.width)
  variables = models.init_variables(model, jax.random.PRNGKey(0), x.shape)
  params = variables["params"]
  probe = None
  if FLAGS.check:
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
    probe = jax.tree_util.tree_unflatten(
        treedef, [jax.random.rademacher(k, l.shape, l.dtype) for k, l in zip(keys, leaves)])
  print(f"ConvNet width {FLAGS.width}, {n} mnist5k images, batch {FLAGS.batch_size}, "
        f"load avg {os.getloadavg()}", flush=True)

  results = {"problem": {"width": FLAGS.width, "num_train": n, "batch_size": FLAGS.batch_size,
                         "probes_per_repeat": FLAGS.probes_per_repeat, "repeats": FLAGS.repeats,
                         "precision": FLAGS.precision, "loadavg_start": os.getloadavg()}}
  if FLAGS.framework in ("both", "jax"):
    results["jax"] = _run_jax(model, variables, x, y, probe)
    print(f"jax: {json.dumps({k: v for k, v in results['jax'].items() if k != 'samples'})}",
          flush=True)
  if FLAGS.framework in ("both", "torch"):
    with tempfile.TemporaryDirectory() as tmp:
      blob = {"x": x, "y": y.astype(np.int64), "width": np.asarray(FLAGS.width)}
      torch_params = _torch_layout(params, FLAGS.width)
      blob["param_names"] = np.asarray(list(torch_params))
      blob.update({f"param:{k}": v for k, v in torch_params.items()})
      if probe is not None:
        blob.update({f"probe:{k}": v for k, v in _torch_layout(probe, FLAGS.width).items()})
      np.savez(os.path.join(tmp, "data.npz"), **blob)
      out = os.path.join(tmp, "torch.json")
      cmd = [FLAGS.torch_python, os.path.join(os.path.dirname(__file__), "torch_trace.py"),
             f"--data={tmp}/data.npz", f"--out={out}", f"--batch_size={FLAGS.batch_size}",
             f"--probes_per_repeat={FLAGS.probes_per_repeat}", f"--repeats={FLAGS.repeats}",
             f"--warmup={FLAGS.warmup}", f"--threads={FLAGS.threads}"]
      subprocess.run(cmd, check=True, stdout=sys.stdout, stderr=sys.stderr)
      with open(out) as f:
        results["torch"] = json.load(f)
    print(f"torch: {json.dumps({k: v for k, v in results['torch'].items() if k != 'samples'})}",
          flush=True)
  results["problem"]["loadavg_end"] = os.getloadavg()

  print("\n| Hessian trace, per probe | warm-up (s) | median per probe (s) |")
  print("|---|---|---|")
  for side in ("jax", "torch"):
    if side in results:
      r = results[side]
      print(f"| {side} | {r['warmup_s']:.1f} | {r['per_probe_s']:.2f} |")
  if "jax" in results and "torch" in results:
    ratio = results["torch"]["per_probe_s"] / results["jax"]["per_probe_s"]
    results["ratio_torch_over_jax"] = ratio
    print(f"ratio torch / jax per probe: {ratio:.2f}x")
    if FLAGS.check:
      a, b = results["jax"]["check_vhv"], results["torch"]["check_vhv"]
      results["check_relative_difference"] = abs(a - b) / abs(b)
      print(f"same probe, v^T H v: jax {a:.6g}, torch {b:.6g} (relative difference "
            f"{abs(a - b) / abs(b):.1e})")
  if "tol_run" in results.get("jax", {}):
    t = results["jax"]["tol_run"]
    print(f"PyHessian rule (tol 1e-3, <= 100 probes) in JAX: trace {t['trace']:.6g} +- "
          f"{t['stderr']:.2g} from {t['num_probes']} probes in {t['time_s']:.1f}s")
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(results, f, indent=2)
    print(f"wrote {FLAGS.json_out}")


if __name__ == "__main__":
  app.run(main)
