"""Sharded paths on 8 forced CPU devices give the single-device results.

One subprocess (XLA_FLAGS=--xla_force_host_platform_device_count=8) runs every sharded
path next to its single-device counterpart (`mesh=None` or `auto_sharding(False)`, which
run on one device) and reports the largest differences; this process checks them. The
other tests run on this process's single device (the hooks must be no-ops there).
"""

import json
import os
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax import curvature, influence, models, parallel, train

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

EIGHT_DEVICE_SCRIPT = textwrap.dedent("""
    import functools, json
    import jax, jax.numpy as jnp, numpy as np
    from ddjax import curvature, experts, influence, models, parallel, train
    from ddjax.distill import base, dm, gm
    from configs.distill import dc as dc_cfg, dm as dm_cfg

    assert jax.device_count() == 8, jax.devices()
    mesh = parallel.member_mesh()

    def diff(a, b):
      return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64))))
                 for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))

    out = {}
    model = models.get_model("convnet", 3, width=4, depth=1)
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 8, 8, 1))
    y = jnp.arange(16) % 3
    xt = jax.random.normal(jax.random.PRNGKey(2), (6, 8, 8, 1))
    yt = jnp.arange(6) % 3
    tx = train.sgd_momentum(0.05, 0.9)
    v0 = models.init_variables(model, jax.random.PRNGKey(3), x.shape)

    # Expert trajectories: a vmapped group of 8 experts, split over the devices.
    init_keys, train_keys = experts.expert_keys(0, range(8))
    _, placed = experts.place_group(experts.init_states(model, tx, init_keys, x.shape[1:]),
                                    train_keys)
    got = experts.train_group(model, tx, x, y, xt, yt, init_keys, train_keys, 2, batch_size=8)
    with parallel.auto_sharding(False):
      ref = experts.train_group(model, tx, x, y, xt, yt, init_keys, train_keys, 2, batch_size=8)
    out["experts"] = {"diff": diff(got, ref), "devices": len(placed.sharding.device_set),
                      "shape": list(got[0].shape)}

    # LOO retrains: 11 runs in chunks of 4 (rounded to 8 and padded to 16), and unchunked.
    xs, ys = x[:10], y[:10]
    ref = influence.loo_retrain(model, v0, xs, ys, xt, yt, num_steps=4, mesh=None)
    chunked = influence.loo_retrain(model, v0, xs, ys, xt, yt, num_steps=4, chunk_size=4)
    whole = influence.loo_retrain(model, v0, xs, ys, xt, yt, num_steps=4)
    out["loo"] = {"diff": max(diff(chunked, ref), diff(whole, ref)),
                  "devices": len(whole[1].sharding.device_set), "shape": list(whole[1].shape)}

    # A full-dataset HVP: 16 examples in batches of 3 = 6 batches, padded to 8.
    probe = jax.tree_util.tree_map(jnp.ones_like, v0["params"])
    apply = jax.jit(lambda o, v: o(v))
    a = apply(curvature.hessian_operator(model, v0, x, y, batch_size=3, mesh=mesh), probe)
    b = apply(curvature.hessian_operator(model, v0, x, y, batch_size=3), probe)
    scale = max(float(np.max(np.abs(np.asarray(l)))) for l in jax.tree_util.tree_leaves(b))
    out["hvp"] = {"relative_diff": diff(a, b) / scale, "scale": scale}

    # Hutchinson probes: blocks of 3 rounded up to 8; fixed count and PyHessian's rule.
    op = curvature.hessian_operator(model, v0, x, y, batch_size=8)
    key = jax.random.PRNGKey(5)
    a = curvature.hutchinson_trace(op, key, num_probes=12, probe_batch=3, mesh=mesh)
    b = curvature.hutchinson_trace(op, key, num_probes=12, probe_batch=3)
    c = curvature.hutchinson_trace(op, key, max_probes=20, tol=0.05, mesh=mesh)
    d = curvature.hutchinson_trace(op, key, max_probes=20, tol=0.05)
    out["hutchinson"] = {"relative_diff": float(np.max(np.abs(a.samples - b.samples)))
                                          / abs(b.trace),
                         "counts": [a.num_probes, b.num_probes, c.num_probes, d.num_probes],
                         "tol_relative_diff": abs(c.trace - d.trace) / abs(d.trace)}

    # Data-parallel DM and DC steps: each class's 8 real images split over the devices.
    real = base.make_real_data(jax.random.normal(jax.random.PRNGKey(6), (30, 8, 8, 1)),
                               jnp.arange(30) % 3, 3)

    def constraint_specs(jaxpr):
      # Every sharding constraint's PartitionSpec, through the jaxpr API and into nested
      # jaxprs (jit, scan, cond, custom_vjp), whatever text the partitioner would print.
      specs = []
      for eqn in jaxpr.eqns:
        if eqn.primitive.name == "sharding_constraint":
          specs.append(tuple(eqn.params["sharding"].spec))
        todo = list(eqn.params.values())
        while todo:
          v = todo.pop()
          if isinstance(v, (tuple, list)):
            todo.extend(v)
          elif hasattr(v, "eqns"):
            specs += constraint_specs(v)
          elif hasattr(v, "jaxpr") and hasattr(v.jaxpr, "eqns"):
            specs += constraint_specs(v.jaxpr)
      return specs

    def distill_step(module, config):
      config.model_kwargs.update(width=4, depth=1)
      state = module.init_state(config, jax.random.PRNGKey(7), real)
      step = jax.jit(functools.partial(module.distill_step, config))
      specs = constraint_specs(jax.make_jaxpr(step)(state, jax.random.PRNGKey(8), real).jaxpr)
      new, metrics = step(state, jax.random.PRNGKey(8), real)
      # Each class's real batch (axis 1 of [classes, n, ...]) split over the member axis.
      split_per_class = any(s[:2] == (None, parallel.MEMBER_AXIS) for s in specs)
      return new.images, float(metrics["loss"]), split_per_class

    dm_config = dm_cfg.get_config("dataset=mnist5k,ipc=2,quick")
    dm_config.dm.dsa_strategy = "color"
    dc_config = dc_cfg.get_config("dataset=mnist5k,ipc=2,quick")
    for name, module, config in (("dm", dm, dm_config), ("dc", gm, dc_config)):
      got, loss, sharded = distill_step(module, config)
      with parallel.auto_sharding(False):
        ref, ref_loss, ref_sharded = distill_step(module, config)
      out[name] = {"diff": diff(got, ref), "loss": [loss, ref_loss],
                   "sharded": sharded, "reference_sharded": ref_sharded}

    # A subset-model pool: protocol B on each member's own subset, via sharded_vmap.
    subsets = jnp.stack([jax.random.permutation(jax.random.PRNGKey(10 + i), 16)[:9]
                         for i in range(5)])

    def fit(key, subset):
      state = train.create_train_state(models.init_variables(model, key, x.shape), tx)
      state, _ = train.train_minibatch(model, tx, state, x[subset], y[subset], key,
                                       num_epochs=2, batch_size=4)
      return train.evaluate(model, state.variables, xt, yt)["per_example_loss"]

    keys = jax.random.split(jax.random.PRNGKey(9), 5)          # 5 members on 8 devices: padded
    got = parallel.sharded_vmap(fit)(keys, subsets)
    ref = jax.jit(jax.vmap(fit))(keys, subsets)
    total = parallel.sharded_sum(lambda v, w: w * jnp.sin(v), in_axes=(0, 0))(
        jnp.arange(11.0), jnp.linspace(0, 1, 11))
    expected = float(jnp.sum(jnp.linspace(0, 1, 11) * jnp.sin(jnp.arange(11.0))))
    # In chunks of 3 members (rounded up to 8 on 8 devices): one call, same result; in
    # chunks of 9 after 13 members: two calls, the second padded.
    chunked = parallel.sharded_vmap(fit, chunk_size=3)(keys, subsets)
    keys13 = jax.random.split(jax.random.PRNGKey(11), 13)
    subsets13 = jnp.concatenate([subsets, subsets, subsets[:3]])
    chunked13 = parallel.sharded_vmap(fit, chunk_size=9)(keys13, subsets13)
    ref13 = jax.jit(jax.vmap(fit))(keys13, subsets13)
    out["pool"] = {"diff": diff(got, ref), "shape": list(got.shape),
                   "sum_diff": abs(float(total) - expected), "chunked_diff": diff(chunked, ref),
                   "chunked13_diff": diff(chunked13, ref13),
                   "chunked13_shape": list(chunked13.shape)}
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def eight_device_results():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  proc = subprocess.run([sys.executable, "-c", EIGHT_DEVICE_SCRIPT], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_every_sharded_path_matches_one_device_on_8_cpu_devices(eight_device_results):
  r = eight_device_results
  # Experts: 8 trajectories of 3 snapshots each, the group spread over all 8 devices.
  assert r["experts"]["devices"] == 8 and r["experts"]["shape"][:2] == [8, 3]
  assert r["experts"]["diff"] <= 1e-5
  # LOO: 11 runs (padding trimmed), sharded output, identical losses and accuracies.
  assert r["loo"]["shape"] == [11, 6] and r["loo"]["devices"] == 8
  assert r["loo"]["diff"] <= 1e-5
  # HVP over padded, device-split batches: the single-scan product up to float rounding.
  assert r["hvp"]["scale"] > 0 and r["hvp"]["relative_diff"] <= 1e-5
  # Hutchinson: the same probes, hence the same samples and the same stopping count.
  assert r["hutchinson"]["counts"][:2] == [12, 12]
  assert r["hutchinson"]["counts"][2] == r["hutchinson"]["counts"][3] < 20
  assert r["hutchinson"]["relative_diff"] <= 1e-5
  assert r["hutchinson"]["tol_relative_diff"] <= 1e-5
  # DM, DC: the sharding annotation is in the step only with sharding on; same images, loss.
  for method in ("dm", "dc"):
    assert r[method]["sharded"] and not r[method]["reference_sharded"]
    assert r[method]["diff"] <= 1e-5
    np.testing.assert_allclose(*r[method]["loss"], rtol=1e-5)
  # Pool: 5 members on 8 devices (padded and trimmed); sharded_sum masks the padding.
  assert r["pool"]["shape"] == [5, 6] and r["pool"]["diff"] <= 1e-5
  assert r["pool"]["sum_diff"] <= 1e-5
  assert r["pool"]["chunked_diff"] <= 1e-5 and r["pool"]["chunked13_diff"] <= 1e-5
  assert r["pool"]["chunked13_shape"] == [13, 6]


def test_sharded_vmap_single_device_and_errors():
  f = parallel.sharded_vmap(lambda a, b: a * b, in_axes=(0, None))
  np.testing.assert_allclose(f(jnp.arange(3.0), 2.0), [0.0, 2.0, 4.0])
  with pytest.raises(ValueError, match="disagree on the member count"):
    parallel.sharded_vmap(lambda a, b: a + b)(jnp.arange(3.0), jnp.arange(4.0))
  with pytest.raises(ValueError, match="leading axes only"):
    parallel.sharded_vmap(lambda a: a, in_axes=(1,))(jnp.ones((2, 3)))
  total = parallel.sharded_sum(lambda a: a ** 2)(jnp.arange(4.0))
  np.testing.assert_allclose(total, 14.0)


def test_sharded_vmap_in_chunks_equals_one_call():
  def member(w, x):  # a pytree out, a replicated argument
    h = jnp.tanh(x @ w)
    return {"h": h, "norm": jnp.sum(h ** 2)}

  ws = jax.random.normal(jax.random.PRNGKey(0), (7, 4, 3))
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 4))
  whole = parallel.sharded_vmap(member, in_axes=(0, None))(ws, x)
  for chunk in (1, 3, 7, 50):          # 3: two full chunks and a padded one
    got = parallel.sharded_vmap(member, in_axes=(0, None), chunk_size=chunk)(ws, x)
    assert got["h"].shape == (7, 5, 3) and got["norm"].shape == (7,)
    np.testing.assert_allclose(got["h"], whole["h"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got["norm"], whole["norm"], rtol=1e-6)
  with pytest.raises(ValueError, match="chunk_size must be >= 0"):
    parallel.sharded_vmap(member, chunk_size=-1)


def test_members_per_call_sets_the_default_chunk_and_the_analyses_use_it(monkeypatch):
  import ml_collections  # pylint: disable=g-import-not-at-top
  from ddjax import analysis  # pylint: disable=g-import-not-at-top
  calls = []  # the member count of each compiled call
  compiled_vmap = parallel._jitted_vmap

  def recording(fn, axes):
    compiled = compiled_vmap(fn, axes)
    return lambda *args: (calls.append(args[0].shape[0]), compiled(*args))[1]

  monkeypatch.setattr(parallel, "_jitted_vmap", recording)
  ws = jnp.arange(5.0)
  with parallel.members_per_call(2):
    np.testing.assert_allclose(parallel.sharded_vmap(lambda w: w * 2)(ws), 2 * ws)
    assert calls == [2, 2, 2]                       # 2 + 2 + (1 padded to 2)
    np.testing.assert_allclose(parallel.sharded_vmap(lambda w: w * 2, chunk_size=0)(ws), 2 * ws)
  assert calls == [2, 2, 2, 5]
  with pytest.raises(ValueError, match="must be >= 0"):
    with parallel.members_per_call(-1):
      pass

  # A one-function analysis (the contract of ddjax/analysis/__init__.py), found by name.
  probe = types.ModuleType("ddjax.analysis.probe")
  probe.QUESTION, probe.run = "Q1", _record_chunk
  monkeypatch.setitem(sys.modules, "ddjax.analysis.probe", probe)
  _SEEN.clear()
  run = analysis.get_analysis("probe")
  run(ml_collections.ConfigDict({"member_chunk": 3}), "/nonexistent")
  run(ml_collections.ConfigDict({}), "/nonexistent")
  assert _SEEN == [3, 0] and parallel._MEMBERS_PER_CALL[0] == 0
  with pytest.raises(analysis.ConfigError, match="member_chunk"):
    run(ml_collections.ConfigDict({"member_chunk": -2}), "/nonexistent")


_SEEN: list = []


def _record_chunk(config, workdir):
  del config, workdir
  _SEEN.append(parallel._MEMBERS_PER_CALL[0])
  return {}


def test_helpers_on_one_device():
  assert jax.device_count() == 1
  # "auto" means no mesh on one device, and the hooks hand their inputs back unchanged.
  assert parallel.auto_mesh() is None and parallel.resolve_mesh("auto") is None
  assert parallel.resolve_mesh(parallel.member_mesh()) is None  # a 1-device mesh: unsharded
  x = jnp.arange(12.0).reshape(4, 3)
  assert parallel.shard_axis(x, 0) is x
  with pytest.raises(ValueError, match="mesh must be"):
    parallel.resolve_mesh("everything")
  with pytest.raises(ValueError, match="mesh must be"):
    influence.loo_retrain(models.get_model("convnet", 2, width=2, depth=1), {"params": {}},
                          jnp.zeros((3, 4, 4, 1)), jnp.arange(3) % 2, jnp.zeros((2, 4, 4, 1)),
                          jnp.arange(2), num_steps=1, mesh="everything")
  assert parallel.round_up(11, 8) == 16 and parallel.round_up(16, 8) == 16
  padded = parallel.pad_members({"a": jnp.arange(5.0), "b": jnp.ones((5, 2))}, 4)
  np.testing.assert_allclose(padded["a"], [0, 1, 2, 3, 4, 4, 4, 4])
  assert padded["b"].shape == (8, 2)
  # sharded_scan_sum on a 1-device mesh: the plain sum; refuses an uneven split.
  mesh = parallel.member_mesh()
  total = jax.jit(lambda v: parallel.sharded_scan_sum(lambda a: {"s": a ** 2}, v, mesh))(
      jnp.arange(5.0))
  np.testing.assert_allclose(total["s"], 30.0)
  with pytest.raises(ValueError, match="do not split"):
    parallel.sharded_scan_sum(lambda a: a, jnp.arange(3.0), jax.sharding.Mesh(
        np.asarray(jax.devices() * 2), (parallel.MEMBER_AXIS,)))


def test_hooks_keep_single_device_results():
  """mesh="auto" (the default) is exactly mesh=None on one device."""
  model = models.get_model("convnet", 2, width=2, depth=1)
  x = jax.random.normal(jax.random.PRNGKey(0), (6, 4, 4, 1))
  y = jnp.arange(6) % 2
  v0 = models.init_variables(model, jax.random.PRNGKey(1), x.shape)
  a = influence.loo_retrain(model, v0, x[:4], y[:4], x, y, num_steps=2)[1]
  b = influence.loo_retrain(model, v0, x[:4], y[:4], x, y, num_steps=2, mesh=None)[1]
  np.testing.assert_array_equal(a, b)
  op = curvature.hessian_operator(model, v0, x, y, batch_size=4, mesh="auto")
  plain = curvature.hessian_operator(model, v0, x, y, batch_size=4)
  assert op.args["batches"].x.shape == plain.args["batches"].x.shape  # no padding
  probe = jax.tree_util.tree_map(jnp.ones_like, v0["params"])
  for got, want in zip(jax.tree_util.tree_leaves(op(probe)), jax.tree_util.tree_leaves(plain(probe))):
    np.testing.assert_array_equal(got, want)


MULTIHOST_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU cross-process
    from absl import app
    from launch import common

    def main(argv):
      common.setup()  # --multihost: jax.distributed.initialize from the JAX_* variables
      import jax.numpy as jnp, numpy as np
      from jax.experimental import multihost_utils
      from ddjax import parallel
      pool = parallel.sharded_vmap(lambda a, b: jnp.sin(a) * b, in_axes=(0, None))
      out = multihost_utils.process_allgather(pool(np.arange(5.0, dtype=np.float32), 2.0),
                                              tiled=True)
      print("RESULT", jax.process_index(), jax.process_count(), jax.device_count(),
            parallel.auto_mesh() is None, json.dumps(np.asarray(out, float).tolist()))

    app.run(main, argv=[sys.argv[0], "--multihost"])
""")


@pytest.mark.slow
def test_multihost_flag_joins_two_processes_and_shards_a_pool():
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = []
  for rank in range(2):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, JAX_NUM_PROCESSES="2",
               JAX_PROCESS_ID=str(rank), JAX_COORDINATOR_ADDRESS=f"localhost:{port}")
    env.pop("XLA_FLAGS", None)
    procs.append(subprocess.Popen([sys.executable, "-c", MULTIHOST_SCRIPT], cwd=ROOT, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  outputs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  expected = list(2.0 * np.sin(np.arange(5.0)))
  for rank, (out, _) in enumerate(outputs):
    line = next(l for l in out.splitlines() if l.startswith("RESULT"))
    fields = line.split(" ", 5)
    # process index, 2 processes, 2 global devices, "auto" off in multi-process runs
    assert fields[1:5] == [str(rank), "2", "2", "True"]
    np.testing.assert_allclose(json.loads(fields[5]), expected, rtol=1e-6)
