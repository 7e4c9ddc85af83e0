r"""Leave-one-out influence (E8): one batched call vs a sequential loop of retrains.

    .venv/bin/python -m benchmarks.bench_loo --width=16 --sequential_runs=10 \
        --json_out=/tmp/bench_loo.json

The problem is the paper's: 100 support images (10 per class; real mnist5k images,
class-balanced and seeded, unless --support names a distilled-set .npz), protocol A
(300 full-batch steps of SGD 0.01, momentum 0.9) from one fixed initialisation, run
n + 1 = 101 times, once without each image and once with all, then per-example
losses on the 1,000 mnist5k test images.

* batched: `influence.loo_influence`, all runs in one jitted call (vmap over weight
  masks; --chunk_size runs at a time). Compile time is measured separately (AOT).
* sequential: one jitted retrain on the actual 99-image set, called in a Python
  loop (the paper's notebook). --sequential_runs=k times only the first k runs and
  extrapolates the loop to n + 1 runs from their mean.
* --approximations: influence-function estimates at the all-images model, each
  timed and compared with the exact LOO matrix (Pearson, Spearman, top-9 overlap).

Prints one table: warm-up (compile) and median run time of each side, and the ratio.
"""

from __future__ import annotations

import json
import os
import statistics
import time

from absl import app, flags

flags.DEFINE_string("model", "convnet", "Model name (ddjax.models).")
flags.DEFINE_integer("width", 128, "ConvNet width (the demo ConvNet is 128).")
flags.DEFINE_integer("ipc", 10, "Support images per class (real mnist5k images).")
flags.DEFINE_string("support", "", "Optional distilled-set .npz to use as the support set.")
flags.DEFINE_integer("num_steps", 300, "Protocol-A steps per retrain.")
flags.DEFINE_float("learning_rate", 0.01, "Protocol-A learning rate.")
flags.DEFINE_float("momentum", 0.9, "Protocol-A momentum.")
flags.DEFINE_integer("chunk_size", 0, "Runs vmapped at a time in the batched call (0 = all).")
flags.DEFINE_integer("sequential_runs", -1, "Sequential retrains to time (-1 = all n + 1).")
flags.DEFINE_integer("repeats", 1, "Timed repeats of the batched call (median).")
flags.DEFINE_integer("num_test", 0, "Test images (0 = all 1,000).")
flags.DEFINE_list("approximations", ["arnoldi", "identity"],
                  "Influence-function methods to compare with exact LOO "
                  "(cg, lissa, arnoldi, direct, identity; empty for none).")
flags.DEFINE_string("curvature", "ggn", "Curvature for the approximations: hessian or ggn.")
flags.DEFINE_float("damping", 0.01, "Absolute damping of the approximations.")
flags.DEFINE_integer("cg_maxiter", 30, "CG iterations.")
flags.DEFINE_integer("lissa_depth", 200, "LiSSA depth.")
flags.DEFINE_integer("arnoldi_rank", 20, "Eigenpairs kept by the Arnoldi method.")
flags.DEFINE_integer("arnoldi_iters", 60, "Lanczos steps of the Arnoldi method.")
flags.DEFINE_integer("seed", 0, "Seed of the initialisation and of the support sample.")
flags.DEFINE_string("json_out", "", "Write the results here as JSON.")
flags.DEFINE_string("loo_cache", "", "An .npz for the exact LOO matrix: written after the timed "
                    "runs; if it exists, the timing is skipped and only the approximations run.")
flags.DEFINE_integer("precision_check_runs", 0,
                     "Retrain this many LOO rows separately in float32 and float64 and compare "
                     "them with the batched float32 matrix (how much of LOO is rounding noise).")
FLAGS = flags.FLAGS


def _load(seed: int):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ddjax import data, distill  # pylint: disable=g-import-not-at-top
  ds = data.load_dataset("mnist5k")
  pre = data.fit_preprocessor("standardize", ds.x_train, ds.name)
  x_test, y_test = np.asarray(pre.apply(ds.x_test)), ds.y_test
  if FLAGS.num_test:
    x_test, y_test = x_test[:FLAGS.num_test], y_test[:FLAGS.num_test]
  if FLAGS.support:
    dset = distill.load_distilled(FLAGS.support, ds.num_classes, ds.image_shape)
    return dset.images, dset.labels, x_test, y_test, f"distilled:{FLAGS.support}"
  idx = data.class_balanced_indices(jax.random.PRNGKey(seed), ds.y_train, FLAGS.ipc, ds.num_classes)
  return (np.asarray(pre.apply(ds.x_train[idx])), ds.y_train[idx], x_test, y_test,
          f"mnist5k real, {FLAGS.ipc}/class, seed {seed}")


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ddjax import influence, models, train  # pylint: disable=g-import-not-at-top

  x, y, x_test, y_test, support = _load(FLAGS.seed)
  n = x.shape[0]
  model = models.get_model(FLAGS.model, 10, width=FLAGS.width) if FLAGS.model.startswith(
      "convnet") else models.get_model(FLAGS.model, 10)
  variables = models.init_variables(model, jax.random.PRNGKey(FLAGS.seed), x.shape)
  num_params = models.count_params(variables["params"])
  x, y, x_test, y_test = map(jnp.asarray, (x, y, x_test, y_test))
  hp = dict(num_steps=FLAGS.num_steps, learning_rate=FLAGS.learning_rate, momentum=FLAGS.momentum)
  print(f"{FLAGS.model} width {FLAGS.width} ({num_params:,} params); support: {support} "
        f"(n={n}); {n + 1} retrains x {FLAGS.num_steps} steps; {x_test.shape[0]} test images; "
        f"JAX {jax.__version__} on {jax.devices()[0].platform}, load avg {os.getloadavg()}",
        flush=True)

  result = {
      "problem": {"model": FLAGS.model, "width": FLAGS.width, "num_params": num_params,
                  "support": support, "n": int(n), "num_steps": FLAGS.num_steps,
                  "num_test": int(x_test.shape[0]), "chunk_size": FLAGS.chunk_size,
                  "jax": jax.__version__, "platform": jax.devices()[0].platform,
                  "loadavg": os.getloadavg()},
      "approximations": {},
  }
  if FLAGS.loo_cache and os.path.exists(FLAGS.loo_cache):
    with np.load(FLAGS.loo_cache) as f:
      exact = f["influence"]
    if exact.shape != (n, x_test.shape[0]):
      raise ValueError(f"{FLAGS.loo_cache} holds a {exact.shape} matrix; this problem is "
                       f"{(n, x_test.shape[0])}.")
    print(f"exact LOO read from {FLAGS.loo_cache}; timing skipped", flush=True)
  else:
    exact = _time_loo(model, variables, x, y, x_test, y_test, hp, result)
    if FLAGS.loo_cache:
      np.savez(FLAGS.loo_cache, influence=exact)
  _approximations(model, variables, x, y, x_test, y_test, exact, result)
  if FLAGS.precision_check_runs:
    _precision_check(model, variables, x, y, x_test, y_test, exact, result)
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(result, f, indent=2)
    print(f"wrote {FLAGS.json_out}")


def _time_loo(model, variables, x, y, x_test, y_test, hp, result):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ddjax import influence, train  # pylint: disable=g-import-not-at-top
  n = x.shape[0]

  # --- batched: one call
  chunk = FLAGS.chunk_size or None
  batched_fn = jax.jit(lambda v, a, b, c, d: influence.loo_retrain(
      model, v, a, b, c, d, chunk_size=chunk, **hp)[1:])
  t0 = time.perf_counter()
  compiled = batched_fn.lower(variables, x, y, x_test, y_test).compile()
  batched_compile = time.perf_counter() - t0
  times = []
  for _ in range(FLAGS.repeats):
    t0 = time.perf_counter()
    losses, _ = jax.block_until_ready(compiled(variables, x, y, x_test, y_test))
    times.append(time.perf_counter() - t0)
  batched_time = statistics.median(times)
  losses = np.asarray(losses, np.float64)
  exact = losses[:-1] - losses[-1]
  print(f"batched: compile {batched_compile:.1f}s, run {batched_time:.1f}s "
        f"({batched_time / (n + 1):.2f}s per retrain)", flush=True)

  # --- sequential: a Python loop of separate retrains on the reduced sets
  tx = train.sgd_momentum(FLAGS.learning_rate, FLAGS.momentum)

  def retrain(xs, ys):
    final, _ = train.train_full_batch(model, tx, variables, xs, ys, num_steps=FLAGS.num_steps)
    return train.evaluate(model, final, x_test, y_test)["per_example_loss"]

  seq_fn = jax.jit(retrain)
  runs = list(range(n + 1)) if FLAGS.sequential_runs < 0 else (
      list(range(min(FLAGS.sequential_runs, n))) + [n])
  t0 = time.perf_counter()
  seq_compiled = {m: seq_fn.lower(x[:m], y[:m]).compile() for m in sorted({n - 1, n})}
  seq_compile = time.perf_counter() - t0
  seq_times, seq_losses = [], {}
  for i in runs:
    xs, ys = (x, y) if i == n else (jnp.delete(x, i, 0), jnp.delete(y, i, 0))
    t0 = time.perf_counter()
    seq_losses[i] = np.asarray(jax.block_until_ready(seq_compiled[xs.shape[0]](xs, ys)))
    seq_times.append(time.perf_counter() - t0)
  per_run = statistics.median(seq_times)
  seq_total = float(np.sum(seq_times)) if len(runs) == n + 1 else per_run * (n + 1)
  diff = max(float(np.abs((seq_losses[i] - seq_losses[n]) - exact[i]).max()) for i in runs if i < n)
  print(f"sequential: compile {seq_compile:.1f}s, {len(runs)} runs timed, median "
        f"{per_run:.2f}s per retrain, loop of {n + 1}: {seq_total:.1f}s"
        f"{'' if len(runs) == n + 1 else ' (extrapolated)'}; max |I_batched - I_seq| = {diff:.2e}",
        flush=True)

  result.update({
      "batched": {"compile_s": batched_compile, "run_s": batched_time, "runs_s": times},
      "sequential": {"compile_s": seq_compile, "per_retrain_median_s": per_run,
                     "timed_runs": len(runs), "loop_total_s": seq_total,
                     "extrapolated": len(runs) != n + 1},
      "ratio_sequential_over_batched": seq_total / batched_time,
      "max_abs_diff_batched_vs_sequential": diff,
      "influence_stats": {"mean_abs": float(np.abs(exact).mean()), "max": float(exact.max()),
                          "min": float(exact.min())},
  })
  print(f"\n| LOO, {n + 1} retrains | compile (s) | run (s) | per retrain (s) |")
  print("|---|---|---|---|")
  print(f"| batched (one call) | {batched_compile:.1f} | {batched_time:.1f} | "
        f"{batched_time / (n + 1):.2f} |")
  print(f"| sequential loop{' (extrap.)' if len(runs) != n + 1 else ''} | {seq_compile:.1f} | "
        f"{seq_total:.1f} | {per_run:.2f} |")
  print(f"ratio sequential / batched: {seq_total / batched_time:.2f}x\n", flush=True)
  return exact


def _approximations(model, variables, x, y, x_test, y_test, exact, result):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ddjax import influence, train  # pylint: disable=g-import-not-at-top
  tx = train.sgd_momentum(FLAGS.learning_rate, FLAGS.momentum)
  # --- influence-function approximations against exact LOO
  methods = [m for m in FLAGS.approximations if m]
  if methods:
    final_fn = jax.jit(lambda v: train.train_full_batch(model, tx, v, x, y,
                                                        num_steps=FLAGS.num_steps)[0])
    trained = final_fn(variables)
  for method in methods:
    t0 = time.perf_counter()
    approx = influence.influence_functions(
        model, trained, x, y, x_test, y_test, method=method, curvature_kind=FLAGS.curvature,
        damping=FLAGS.damping, key=jax.random.PRNGKey(FLAGS.seed), cg_maxiter=FLAGS.cg_maxiter,
        lissa_depth=FLAGS.lissa_depth, arnoldi_rank=FLAGS.arnoldi_rank,
        arnoldi_iters=FLAGS.arnoldi_iters, batch_size=None)
    elapsed = time.perf_counter() - t0
    scores = influence.compare_influence(approx.influence, exact, k=9)
    info = {}
    for k, v in approx.info.items():  # long per-example lists -> median and max
      if isinstance(v, list) and len(v) > 25:
        info[f"{k}_median"], info[f"{k}_max"] = float(np.median(v)), float(np.max(v))
      else:
        info[k] = v
    result["approximations"][method] = {"time_s": elapsed, **scores, "info": info}
    print(f"approximation {method:8s} ({FLAGS.curvature}, damping {FLAGS.damping}): "
          f"{elapsed:6.1f}s  pearson {scores['pearson']:+.3f}  spearman "
          f"{scores['spearman']:+.3f}  top9 {scores['top9_overlap']:.3f}  {info}", flush=True)


def _precision_check(model, variables, x, y, x_test, y_test, exact, result):
  """Separate retrains of the first k LOO rows in float32 and float64 vs the batched rows."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ddjax import influence, train  # pylint: disable=g-import-not-at-top
  n, k = x.shape[0], FLAGS.precision_check_runs
  tx = train.sgd_momentum(FLAGS.learning_rate, FLAGS.momentum)
  jax.config.update("jax_enable_x64", True)
  rows = {}
  for dtype in (jnp.float32, jnp.float64):
    cast = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), t)
    v0, xt = cast(variables), jnp.asarray(x_test, dtype)
    fit = jax.jit(lambda xs, ys: train.evaluate(model, train.train_full_batch(
        model, tx, v0, xs, ys, num_steps=FLAGS.num_steps)[0], xt, y_test)["per_example_loss"])
    xd = jnp.asarray(x, dtype)
    loss_all = np.asarray(fit(xd, y), np.float64)
    rows[dtype.dtype.name] = np.stack([
        np.asarray(fit(jnp.delete(xd, i, 0), jnp.delete(y, i, 0)), np.float64) - loss_all
        for i in range(k)])
  jax.config.update("jax_enable_x64", False)
  ref = rows["float64"]
  check = {"rows": k, "mean_abs_influence_float64": float(np.abs(ref).mean())}
  for name, got in (("batched_float32", exact[:k]), ("sequential_float32", rows["float32"])):
    check[name] = {"mean_abs_error": float(np.abs(got - ref).mean()),
                   "max_abs_error": float(np.abs(got - ref).max()),
                   **influence.compare_influence(got, ref, k=9)}
  result["precision_check"] = check
  print(f"precision check on {k} rows (reference: separate float64 retrains): {check}", flush=True)


if __name__ == "__main__":
  app.run(main)
