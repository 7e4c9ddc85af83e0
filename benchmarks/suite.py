r"""The ddjax side of `launch/benchmark.py`: sizes, benchmark cases, and the JAX timings.

Every benchmark runs twice, each side in its own process so that peak memory is that
side's alone: first this module (`python -m benchmarks.suite CASE ...`, the ddjax
computation), which also writes the inputs the reference needs (data, initial weights,
synthetic images) to `--workdir/inputs.npz` and prints one JSON line that names the
reference command; then that PyTorch reference in `.bench-venv`. The hyperparameters
come from one place, the ddjax config or `SIZES`, and travel to the reference in that
line, so both sides compute the same thing (same model, data, hyperparameters, float32).

Cases (`CASES`):
  distill_{dc,dm,mtt,bptt}  one distillation iteration (`distill_step`, jitted, state
                            donated, as the driver runs it) vs torch_refs.py dc / dm and
                            torch_metagrad.py (flat-parameter create_graph unroll)
  distill_{dsa,kip}         ddjax only (no PyTorch reference written)
  mtt_memory@S              MTT iteration at syn_steps S (10, 20, 40, 80), one process per point
  hvp                       one full-dataset Hessian-vector product vs PyHessian's batch loop
  hutchinson                Hutchinson probes (vmapped block) vs torch_trace.py's probe loop
  loo                       n + 1 leave-one-out retrains in one call vs a sequential loop
  pool                      a subset-trained model pool (sharded_vmap) vs a loop of models
  record                    protocol B recording test predictions after every iteration

Timing: `--warmup` calls first (the first compiles), then the median of `--repeats`.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib
import json
import os
import statistics
import sys
import time
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISTILL_METHODS = ("dc", "dm", "mtt", "bptt", "dsa", "kip")
REFERENCED = ("dc", "dm", "mtt", "bptt")   # methods with a PyTorch reference
MEMORY_STEPS = (10, 20, 40, 80)

# Per size: which distillation config, real or random data, and each benchmark's problem.
#   small   the quick (test) configs and tiny problems: the whole harness in minutes
#   mnist5k the mnist5k IPC-10 configs (ConvNet width 32, real mnist5k) and CPU-sized
#           curvature / LOO / pool / record problems
#   cifar   GPU: ConvNet-128, IPC 10, syn_steps 30, random CIFAR-shaped data
SIZES: dict[str, dict[str, Any]] = {
    "small": {
        "dataset": "mnist5k", "data": "real", "train_per_class": 20, "test_per_class": 10,
        "distill_arg": "dataset=mnist5k,ipc=2,quick", "distill_overrides": {},
        "mtt_memory": {"width": 8, "batch_syn": 10},
        "curvature": {"width": 8, "num_train": 200, "batch_size": 50, "probes": 4},
        "loo": {"width": 8, "ipc": 2, "num_steps": 20, "num_test": 100, "sequential_runs": 0,
                "max_repeats": 3, "eval_batch_size": 100},
        "pool": {"width": 8, "models": 4, "per_class": 5, "epochs": 2, "batch_size": 256,
                 "num_test": 100},
        "record": {"width": 8, "num_train": 200, "batch_size": 50, "epochs": 1, "num_test": 100},
    },
    "mnist5k": {
        "dataset": "mnist5k", "data": "real", "train_per_class": 0, "test_per_class": 0,
        "distill_arg": "dataset=mnist5k,ipc=10", "distill_overrides": {},
        # the MTT mnist5k config (width 32, batch_syn 20) at other syn_steps
        "mtt_memory": {"width": 32, "batch_syn": 20},
        # the 4,000 training images, PyHessian-style batches of 500
        "curvature": {"width": 32, "num_train": 0, "batch_size": 500, "probes": 2},
        # the paper's n + 1 = 101 retrains on 10 images per class, but width 8 and 100
        # steps (300 in the paper) to fit a shared 2-core CPU; the sequential loop is timed
        # on 5 retrains and extrapolated to 101
        # (evaluating 101 models on 1,000 test images at once took 14.7 GB: batches of 100)
        "loo": {"width": 8, "ipc": 10, "num_steps": 100, "num_test": 1000, "sequential_runs": 5,
                "max_repeats": 1, "eval_batch_size": 100},
        # E5's subset pool, scaled: 8 models on 10 images per class, 20 epochs
        "pool": {"width": 32, "models": 8, "per_class": 10, "epochs": 20, "batch_size": 256,
                 "num_test": 1000},
        # E5's early-stopped models: one epoch of protocol B, test predictions every iteration
        "record": {"width": 32, "num_train": 0, "batch_size": 256, "epochs": 1, "num_test": 1000},
    },
    "cifar": {
        "dataset": "cifar10", "data": "random", "train_per_class": 500, "test_per_class": 100,
        "distill_arg": "dataset=cifar10,ipc=10",
        # issue 6: ConvNet-128, IPC 10, syn_steps 30; student-step DSA off (the PyTorch
        # reference has none)
        "distill_overrides": {"width": 128, "mtt": {"syn_steps": 30, "dsa_strategy": "none"}},
        "mtt_memory": {"width": 128, "batch_syn": 100},
        "curvature": {"width": 128, "num_train": 0, "batch_size": 500, "probes": 8},
        "loo": {"width": 128, "ipc": 10, "num_steps": 300, "num_test": 1000,
                "sequential_runs": 10, "max_repeats": 3, "eval_batch_size": 100},
        "pool": {"width": 128, "models": 16, "per_class": 50, "epochs": 100, "batch_size": 256,
                 "num_test": 1000},
        "record": {"width": 128, "num_train": 0, "batch_size": 256, "epochs": 1, "num_test": 1000},
    },
}


def case_names(size: str = "small") -> list[str]:
  """Every case, in the order the harness runs them."""
  del size
  return ([f"distill_{m}" for m in DISTILL_METHODS] + [f"mtt_memory@{s}" for s in MEMORY_STEPS]
          + ["hvp", "hutchinson", "loo", "pool", "record"])


def expand(benchmarks: list[str]) -> list[str]:
  """Benchmark names (or groups 'distill', 'mtt_memory', 'all') -> case names."""
  out = []
  for name in benchmarks:
    if name == "all":
      out += case_names()
    elif name == "distill":
      out += [f"distill_{m}" for m in DISTILL_METHODS]
    elif name == "mtt_memory":
      out += [f"mtt_memory@{s}" for s in MEMORY_STEPS]
    elif name in case_names() or (name.startswith("mtt_memory@") and name[11:].isdigit()):
      out.append(name)
    else:
      raise ValueError(f"Unknown benchmark {name!r}; expected 'all', 'distill', 'mtt_memory', "
                       f"or one of {case_names()}.")
  return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------- helpers


def timed(fn: Callable[[], Any], warmup: int, repeats: int) -> dict:
  """Runs fn `warmup` times (the first compiles), then `repeats` timed calls."""
  t0 = time.perf_counter()
  for _ in range(warmup):
    fn()
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return {"median_s": statistics.median(times), "times_s": times, "warmup_s": first}


def _device_memory() -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return {"device_peak_mb": stats["peak_bytes_in_use"] / 2**20}
  return {}


def _load(size: dict, num_train: int = 0, num_test: int = 0, seed: int = 0):
  """(x_train, y_train, x_test, y_test) in model space, float32 NHWC.

  Real data (standardised) for small / mnist5k, random CIFAR-shaped data for cifar.
  num_train / num_test: the first n (0 = all the size's images).
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  if size["data"] == "random":
    rng = np.random.default_rng(seed)
    n, m = 10 * size["train_per_class"], 10 * size["test_per_class"]
    x, xt = (rng.standard_normal((k, 32, 32, 3), np.float32) for k in (n, m))
    y, yt = np.arange(n) % 10, np.arange(m) % 10
  else:
    import ml_collections  # pylint: disable=g-import-not-at-top
    from ddjax import classifier  # pylint: disable=g-import-not-at-top
    ds, _ = classifier.load_preprocessed(ml_collections.ConfigDict({
        "dataset": size["dataset"], "data_dir": None, "preprocess": "standardize", "seed": seed,
        "train_per_class": size["train_per_class"], "test_per_class": size["test_per_class"]}))
    x, y, xt, yt = ds.x_train, ds.y_train, ds.x_test, ds.y_test
  x, y = np.asarray(x, np.float32), np.asarray(y, np.int64)
  xt, yt = np.asarray(xt, np.float32), np.asarray(yt, np.int64)
  if num_train:
    x, y = x[:num_train], y[:num_train]
  if num_test:
    xt, yt = xt[:num_test], yt[:num_test]
  return x, y, xt, yt


def _convnet(width: int, num_classes: int = 10):
  from ddjax import models  # pylint: disable=g-import-not-at-top
  return models.get_model("convnet", num_classes, width=width)


def _torch_params(params, width: int) -> dict:
  """JAX ConvNet params -> {'param:<torch name>': array} (benchmarks/bench_trace.py layout)."""
  from benchmarks import bench_trace  # pylint: disable=g-import-not-at-top
  layout = bench_trace._torch_layout(params, width)  # pylint: disable=protected-access
  import numpy as np  # pylint: disable=g-import-not-at-top
  return {"param_names": np.asarray(list(layout)), **{f"param:{k}": v for k, v in layout.items()}}


def _reference(script: str, *args: str, out: str | None = None) -> dict:
  return {"script": script, "args": list(args), **({"out": out} if out else {})}


# ----------------------------------------------------------------------------- distillation


def distill_config(method: str, size: dict, syn_steps: int | None = None):
  """The method's config at this size (small: quick; mnist5k: the mnist5k IPC-10 config)."""
  config = importlib.import_module(f"configs.distill.{method}").get_config(size["distill_arg"])
  overrides = copy.deepcopy(size["distill_overrides"])
  if "width" in overrides:
    config.model_kwargs.width = overrides.pop("width")
  if method in overrides:
    config[method].update(overrides[method])
  if method == "bptt":  # time the differentiated window (as benchmarks/bench_metagrad.py)
    hp = config.bptt
    hp.update(inner_steps=hp.window or hp.inner_steps, window=0)
  if syn_steps is not None:
    config.mtt.syn_steps = syn_steps
  return config


def _real_for(config, size: dict):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ddjax.distill import base  # pylint: disable=g-import-not-at-top
  x, y, _, _ = _load(size)
  return x, y, base.make_real_data(jnp.asarray(x), jnp.asarray(y, np.int32), 10)


def _fake_experts(config, model, key, image_shape):
  """MTT expert trajectories with the right shapes (timing does not depend on them)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax.flatten_util import ravel_pytree  # pylint: disable=g-import-not-at-top
  from ddjax import models  # pylint: disable=g-import-not-at-top
  from ddjax.distill import mtt  # pylint: disable=g-import-not-at-top
  flat = ravel_pytree(models.init_variables(model, key, (1,) + tuple(image_shape))["params"])[0]
  snaps = config.mtt.max_start_epoch + config.mtt.expert_epochs
  return mtt.ExpertTrajectories(
      params=flat + 0.01 * jnp.arange(snaps)[None, :, None] * jnp.ones((2, 1, flat.size)))


def distill_case(method: str, size: dict, args, syn_steps: int | None = None) -> dict:
  """One distillation iteration of `method`, as the driver runs it."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ddjax import models  # pylint: disable=g-import-not-at-top
  from ddjax.distill import get_method  # pylint: disable=g-import-not-at-top

  config = distill_config(method, size, syn_steps)
  x, y, real = _real_for(config, size)
  module = get_method(method)
  key = jax.random.PRNGKey(0)
  aux = None
  if method == "mtt":
    model = models.get_model(config.model, 10, **config.model_kwargs)
    aux = _fake_experts(config, model, key, x.shape[1:])
  state = module.init_state(config, key, real, aux)
  init_images, labels = np.asarray(state.images), np.asarray(state.labels)
  step = jax.jit(functools.partial(module.distill_step, config), donate_argnums=(0,))
  t0 = time.perf_counter()
  compiled = step.lower(state, key, real, aux).compile()
  compile_s = time.perf_counter() - t0
  analysis = compiled.memory_analysis()
  holder = {"state": state, "i": 0}

  def call():
    holder["i"] += 1
    holder["state"], metrics = compiled(holder["state"], jax.random.PRNGKey(holder["i"]), real, aux)
    jax.block_until_ready(holder["state"].images)
    holder["metrics"] = metrics

  result = timed(call, args.warmup, args.repeats)
  hp = config[method]
  width = int(config.model_kwargs.width)
  h, w, c = x.shape[1:]
  result.update(compile_s=compile_s, loss=float(holder["metrics"]["loss"]), width=width,
                ipc=int(config.ipc),
                xla_temp_mb=getattr(analysis, "temp_size_in_bytes", 0) / 2**20 if analysis else None,
                **_device_memory())
  shape_args = [f"--channels={c}", f"--image_size={h}", "--num_classes=10"]
  n_syn = 10 * int(config.ipc)
  if method in ("dc", "dsa"):
    result["hparams"] = {k: hp[k] for k in ("outer_loop", "inner_loop", "batch_real", "batch_train",
                                            "lr_img", "momentum_img", "lr_net", "net_momentum",
                                            "dis_metric", "dsa_strategy")}
  elif method == "dm":
    result["hparams"] = {k: hp[k] for k in ("batch_real", "lr_img", "momentum_img",
                                            "dsa_strategy", "align_corners")}
  elif method == "mtt":
    result["hparams"] = {"syn_steps": hp.syn_steps, "batch_syn": hp.batch_syn or n_syn}
  elif method == "bptt":
    result["hparams"] = {"steps": hp.inner_steps,
                         "batch": 10 * hp.batch_per_class if hp.batch_per_class else n_syn,
                         "real": 10 * hp.real_per_class}
  if method in ("dc", "dm"):
    np.savez(os.path.join(args.workdir, "inputs.npz"), x=x, y=y, images=init_images,
             labels=labels.astype(np.int64))
    result["reference"] = _reference("torch_refs.py", method, f"--width={width}",
                                     f"--hparams={json.dumps(result['hparams'])}")
  elif method == "mtt":
    result["reference"] = _reference(
        "torch_metagrad.py", "--method=mtt", f"--width={width}", f"--num_images={n_syn}",
        f"--steps={hp.syn_steps}", f"--batch={hp.batch_syn or n_syn}", *shape_args)
  elif method == "bptt":
    r = result["hparams"]
    result["reference"] = _reference(
        "torch_metagrad.py", "--method=bptt", f"--width={width}", f"--num_images={n_syn}",
        f"--steps={r['steps']}", f"--batch={r['batch']}", f"--real={r['real']}", *shape_args)
  return result


# ----------------------------------------------------------------------------- curvature


def curvature_case(kind: str, size: dict, args) -> dict:
  """One full-dataset HVP ('hvp') or Hutchinson probes ('hutchinson') at initialisation."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ddjax import curvature, models  # pylint: disable=g-import-not-at-top

  spec = size["curvature"]
  x, y, _, _ = _load(size, num_train=spec["num_train"])
  model = _convnet(spec["width"])
  variables = models.init_variables(model, jax.random.PRNGKey(0), x.shape)
  params = variables["params"]
  op = curvature.hessian_operator(model, variables, x, y, batch_size=spec["batch_size"])
  leaves, treedef = jax.tree_util.tree_flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(7), len(leaves))
  probe = jax.tree_util.tree_unflatten(
      treedef, [jax.random.rademacher(k, l.shape, l.dtype) for k, l in zip(keys, leaves)])
  vhv = jax.jit(lambda o, v: sum(jnp.vdot(a, b) for a, b in zip(
      jax.tree_util.tree_leaves(v), jax.tree_util.tree_leaves(o(v)))))
  blob = {"x": x, "y": y, "width": np.asarray(spec["width"]), **_torch_params(params, spec["width"])}
  if kind == "hvp":
    from benchmarks import bench_trace  # pylint: disable=g-import-not-at-top
    layout = bench_trace._torch_layout(probe, spec["width"])  # pylint: disable=protected-access
    blob.update({f"probe:{k}": v for k, v in layout.items()})
    product = jax.jit(lambda o, v: o(v))
    result = timed(lambda: jax.block_until_ready(product(op, probe)), args.warmup, args.repeats)
    result["check_vhv"] = float(vhv(op, probe))
    reference = _reference("torch_refs.py", "hvp", f"--batch_size={spec['batch_size']}")
  else:
    probes = spec["probes"]
    counter = {"i": 0}

    def call():
      counter["i"] += 1
      jax.block_until_ready(curvature.hutchinson_samples(
          op, jax.random.PRNGKey(counter["i"]), max_probes=probes, tol=None, probe_batch=probes))

    result = timed(call, args.warmup, args.repeats)
    result["block_median_s"] = result["median_s"]
    result["median_s"] /= probes
    result["unit"] = f"s per probe ({probes} probes vmapped per call)"
    out = os.path.join(args.workdir, "torch.json")
    reference = _reference("torch_trace.py", f"--batch_size={spec['batch_size']}",
                           f"--probes_per_repeat={probes}", out=out)
  np.savez(os.path.join(args.workdir, "inputs.npz"), **blob)
  result.update(num_params=op.size, num_examples=int(x.shape[0]), reference=reference,
                **_device_memory())
  return result


# ----------------------------------------------------------------------------- LOO


def loo_case(size: dict, args) -> dict:
  """n + 1 protocol-A retrains (`influence.loo_retrain`), one jitted call."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ddjax import data, influence, models  # pylint: disable=g-import-not-at-top

  spec = size["loo"]
  x_all, y_all, xt, yt = _load(size, num_test=spec["num_test"])
  idx = data.class_balanced_indices(jax.random.PRNGKey(0), y_all, spec["ipc"], 10)
  x, y = x_all[idx], y_all[idx]
  model = _convnet(spec["width"])
  variables = models.init_variables(model, jax.random.PRNGKey(0), x.shape)
  hp = {"num_steps": spec["num_steps"], "learning_rate": 0.01, "momentum": 0.9,
        "eval_batch_size": spec["eval_batch_size"]}
  fn = jax.jit(lambda v, a, b, c, d: influence.loo_retrain(model, v, a, b, c, d, **hp)[1])
  t0 = time.perf_counter()
  compiled = fn.lower(variables, x, y.astype(np.int32), xt, yt.astype(np.int32)).compile()
  compile_s = time.perf_counter() - t0
  holder = {}

  def call():
    holder["losses"] = np.asarray(jax.block_until_ready(
        compiled(variables, x, y.astype(np.int32), xt, yt.astype(np.int32))))

  # The warm-up is the compilation (done above): a whole batched run is the expensive part.
  result = timed(call, 0, max(1, min(args.repeats, spec["max_repeats"])))
  result["warmup_s"] = compile_s
  n = x.shape[0]
  runs = n + 1 if spec["sequential_runs"] <= 0 else min(spec["sequential_runs"], n + 1)
  np.savez(os.path.join(args.workdir, "inputs.npz"), x=x, y=y, x_test=xt, y_test=yt,
           width=np.asarray(spec["width"]), losses=holder["losses"],
           **_torch_params(variables["params"], spec["width"]))
  result.update(runs=n + 1, num_steps=spec["num_steps"], per_retrain_s=result["median_s"] / (n + 1),
                reference=_reference("torch_refs.py", "loo", f"--num_steps={spec['num_steps']}",
                                     f"--runs={runs}"), **_device_memory())
  return result


# ----------------------------------------------------------------------------- pools


def pool_case(size: dict, args) -> dict:
  """A subset-trained pool (E5): each model trains protocol B on its own class-balanced
  subset, then predicts the test set; all models are one `parallel.sharded_vmap`."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ddjax import data, models, parallel, train  # pylint: disable=g-import-not-at-top

  spec = size["pool"]
  x_all, y_all, xt, yt = _load(size, num_test=spec["num_test"])
  model = _convnet(spec["width"])
  tx = train.sgd_momentum(0.01, 0.9)
  num_models, per_class = spec["models"], spec["per_class"]
  subsets = np.stack([data.class_balanced_indices(jax.random.PRNGKey(100 + m), y_all, per_class, 10)
                      for m in range(num_models)])
  init_keys = jax.random.split(jax.random.PRNGKey(1), num_models)
  inits = jax.vmap(lambda k: models.init_variables(model, k, x_all.shape)["params"])(init_keys)
  x_dev, y_dev = jnp.asarray(x_all), jnp.asarray(y_all, jnp.int32)
  xt_dev, yt_dev = jnp.asarray(xt), jnp.asarray(yt, jnp.int32)
  batch = min(spec["batch_size"], subsets.shape[1])

  def fit(params, subset, key):
    state = train.create_train_state({"params": params}, tx)
    state, _ = train.train_minibatch(model, tx, state, x_dev[subset], y_dev[subset], key,
                                     num_epochs=spec["epochs"], batch_size=batch)
    # Test batches of 250: every model of the pool evaluates at once.
    ev = train.evaluate(model, state.variables, xt_dev, yt_dev, batch_size=250)
    return ev["predictions"], ev["accuracy"]

  pool = parallel.sharded_vmap(fit)
  train_keys = jax.random.split(jax.random.PRNGKey(2), num_models)
  holder = {}

  def call():
    holder["out"] = jax.block_until_ready(pool(inits, jnp.asarray(subsets), train_keys))

  result = timed(call, args.warmup, args.repeats)
  accs = np.asarray(holder["out"][1])
  torch_inits = [_torch_params(jax.tree_util.tree_map(lambda a: a[m], inits), spec["width"])
                 for m in range(num_models)]
  blob = {"x": x_all, "y": y_all, "x_test": xt, "y_test": yt, "subsets": subsets,
          "width": np.asarray(spec["width"]), "param_names": torch_inits[0]["param_names"]}
  for name in torch_inits[0]:
    if name != "param_names":
      blob[name] = np.stack([t[name] for t in torch_inits])
  np.savez(os.path.join(args.workdir, "inputs.npz"), **blob)
  result.update(models=num_models, models_per_s=num_models / result["median_s"],
                mean_test_accuracy=float(accs.mean()), devices=len(jax.devices()),
                reference=_reference("torch_refs.py", "pool", f"--epochs={spec['epochs']}",
                                     f"--batch_size={batch}"), **_device_memory())
  return result


def record_case(size: dict, args) -> dict:
  """Protocol B for `epochs` epochs with the test predictions recorded after every
  iteration (`train.make_eval_recorder` as the scan's record_fn)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from ddjax import models, train  # pylint: disable=g-import-not-at-top

  spec = size["record"]
  x, y, xt, yt = _load(size, num_train=spec["num_train"], num_test=spec["num_test"])
  model = _convnet(spec["width"])
  tx = train.sgd_momentum(0.01, 0.9)
  variables = models.init_variables(model, jax.random.PRNGKey(0), x.shape)
  recorder = train.make_eval_recorder(model, jnp.asarray(xt), jnp.asarray(yt, jnp.int32),
                                      predictions=True)

  @jax.jit
  def run(variables, key):
    state = train.create_train_state(variables, tx)
    _, history = train.train_minibatch(model, tx, state, jnp.asarray(x), jnp.asarray(y, jnp.int32),
                                       key, num_epochs=spec["epochs"], batch_size=spec["batch_size"],
                                       record_fn=recorder)
    return history["record"]

  holder = {}

  def call():
    holder["record"] = jax.block_until_ready(run(variables, jax.random.PRNGKey(1)))

  result = timed(call, args.warmup, args.repeats)
  preds = np.asarray(holder["record"]["predictions"])
  np.savez(os.path.join(args.workdir, "inputs.npz"), x=x, y=y, x_test=xt, y_test=yt,
           width=np.asarray(spec["width"]), **_torch_params(variables["params"], spec["width"]))
  result.update(iterations=int(preds.shape[0]), num_test=int(preds.shape[1]),
                final_accuracy=float(holder["record"]["accuracy"][-1]),
                reference=_reference("torch_refs.py", "record", f"--epochs={spec['epochs']}",
                                     f"--batch_size={spec['batch_size']}"), **_device_memory())
  return result


# ----------------------------------------------------------------------------- entry point


def run_case(case: str, size_name: str, args) -> dict:
  size = SIZES[size_name]
  if case.startswith("distill_"):
    result = distill_case(case[len("distill_"):], size, args)
    if case[len("distill_"):] not in REFERENCED:
      result.pop("reference", None)
      result["reference_unavailable"] = "ddjax only: no PyTorch reference written"
    return result
  if case.startswith("mtt_memory@"):
    steps = int(case.split("@")[1])
    mem = size["mtt_memory"]
    overrides = copy.deepcopy(size)
    overrides["distill_overrides"] = {**size["distill_overrides"], "width": mem["width"],
                                      "mtt": {**size["distill_overrides"].get("mtt", {}),
                                              "batch_syn": mem["batch_syn"]}}
    # Memory: one warm-up iteration and one timed one are enough.
    args = argparse.Namespace(**{**vars(args), "warmup": 1, "repeats": 1})
    return distill_case("mtt", overrides, args, syn_steps=steps)
  if case in ("hvp", "hutchinson"):
    return curvature_case(case, size, args)
  return {"loo": loo_case, "pool": pool_case, "record": record_case}[case](size, args)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("case", help=f"one of {case_names()}")
  parser.add_argument("--size", default="small", choices=sorted(SIZES))
  parser.add_argument("--workdir", required=True, help="where inputs.npz for the reference goes")
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args(argv)
  os.makedirs(args.workdir, exist_ok=True)
  result = run_case(args.case, args.size, args)
  import jax  # pylint: disable=g-import-not-at-top
  result.update(platform=jax.devices()[0].platform, num_devices=jax.device_count(),
                jax=jax.__version__)
  sys.stdout.flush()
  print(json.dumps(result))


if __name__ == "__main__":
  main()
