"""The curvature_over_training analysis (ddjax.analysis.curvature_over_training, the
paper's Fig. 6) and the parameter trajectories (ddjax.analysis.pools), on the tiny setup
of tests/q2_sets.py and a width-2 network on 4x4 inputs for the exact-Hessian check. The
analysis runs once (module fixture).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from configs.analysis import common as analysis_config
from ddjax import curvature, models, train
from ddjax.analysis import curvature_over_training as cot
from ddjax.analysis import pools
from ddjax.errors import ConfigError
import q2_sets  # tests/q2_sets.py

IPC = q2_sets.IPC


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  config, workdir, adata = q2_sets.make_setup(tmp_path_factory.mktemp("curvature"))
  return {"config": config, "workdir": workdir, "adata": adata,
          "result": cot.run(config, workdir)}


def test_ema_matches_hand_loop():
  values = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0])
  expected, s = [], values[0]
  for v in values:
    s = 0.9 * s + 0.1 * v
    expected.append(s)
  np.testing.assert_allclose(cot.ema(values, 0.9), expected)
  assert cot.ema(values, 0.9)[0] == values[0]
  np.testing.assert_allclose(cot.ema(values, 0.0), values)


class TinyMLP(nn.Module):
  """16 -> 5 (tanh) -> 3 on 4x4x1 images: 103 parameters, a dense Hessian is cheap."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    del train
    h = jnp.tanh(nn.Dense(5)(x.reshape((x.shape[0], -1))))
    return nn.Dense(3)(h)


def _tiny_problem():
  x = jax.random.normal(jax.random.PRNGKey(1), (24, 4, 4, 1))
  return TinyMLP(), x, jnp.arange(24) % 3


def _assert_trees_close(a, b):
  jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a, b)


def test_trajectory_and_trace_at_a_recorded_state():
  model, x, y = _tiny_problem()
  keys = pools.stack_keys(jax.random.PRNGKey(0), range(1))
  traj = pools.parameter_trajectories(model, keys, x, y, num_steps=5, batch_size=8)
  assert jax.tree_util.tree_leaves(traj["params"])[0].shape[:2] == (1, 6)
  # State 0 is the init; state 3 the model after one epoch (3 steps of 8).
  init_key, train_key = jax.random.split(keys[0])
  init = models.init_variables(model, init_key, x.shape)
  _assert_trees_close(pools.state_at(traj, 0, 0)["params"], init["params"])
  tx = train.sgd_momentum(0.01, 0.9)
  one_epoch, _ = train.train_minibatch(model, tx, train.create_train_state(init, tx), x, y,
                                       train_key, num_epochs=1, batch_size=8)
  _assert_trees_close(pools.state_at(traj, 0, 3)["params"], one_epoch.params)
  # The trace at a recorded state is ddjax.curvature's Hutchinson with the same key.
  state5 = pools.state_at(traj, 0, 5)
  key = jax.random.PRNGKey(7)
  est = cot.trace_at(model, state5, x, y, key, num_probes=4, batch_size=8)
  direct = curvature.hutchinson_trace(curvature.hessian_operator(model, state5, x, y, batch_size=8),
                                      key, num_probes=4)
  np.testing.assert_allclose(est.samples, direct.samples, rtol=1e-6)
  assert est.trace == pytest.approx(direct.trace)


def test_trace_and_spectrum_against_dense_hessian():
  model, x, y = _tiny_problem()
  variables = models.init_variables(model, jax.random.PRNGKey(2), x.shape)
  flat, unravel = ravel_pytree(variables["params"])

  def loss(p):
    return train.cross_entropy(model.apply({"params": unravel(p)}, x), y)

  hessian = np.asarray(jax.hessian(loss)(flat), np.float64)
  exact = float(np.trace(hessian))
  est = cot.trace_at(model, variables, x, y, jax.random.PRNGKey(0), num_probes=200, batch_size=8)
  assert est.num_probes == 200 and est.stderr > 0
  assert abs(est.trace - exact) <= 3 * est.stderr, (est.trace, exact, est.stderr)
  # SLQ with as many Lanczos steps as parameters: the top node is the top eigenvalue.
  dens = cot.spectrum_at(model, variables, x, y, jax.random.PRNGKey(1), num_probes=1,
                         num_iters=flat.size, batch_size=8)
  eig = np.linalg.eigvalsh(hessian)
  np.testing.assert_allclose(dens.nodes.max(), eig.max(), rtol=1e-3)


def test_curvature_json(setup):
  res, config = setup["result"], setup["config"]
  sec = config.curvature_over_training
  assert res["analysis"] == "curvature_over_training"
  assert res["paper_counterpart"].startswith("Fig. 6")
  assert res["figures"] == ["curvature_trace.png", "curvature_density.png"]
  assert res["iterations"] == list(range(0, sec.num_steps + 1, sec.stride))
  assert res["real_trace_data"] == {"num_images": 10 * IPC, "full_train_set": False}
  assert set(res["series"]) == {"real", "dm", "random"}
  assert res["ema_decay_per_traced_state"] == pytest.approx(0.9 ** sec.stride)
  for name, entry in res["series"].items():
    raw = np.asarray(entry["raw"])
    assert raw.shape == (sec.num_seeds, len(res["iterations"])) and np.all(np.isfinite(raw))
    assert np.all(np.asarray(entry["num_probes"]) == sec.num_probes)
    np.testing.assert_allclose(entry["ema_mean"], cot.ema(raw[0], sec.ema_decay ** sec.stride))
    assert entry["peak"]["value"] == pytest.approx(max(entry["ema_mean"]))
  spectrum = res["spectra"][str(sec.spectrum_iterations[0])]
  for name, entry in spectrum.items():
    assert entry["top_eigenvalue"] == pytest.approx(np.max(entry["nodes"]))
    np.testing.assert_allclose(np.sum(entry["weights"], axis=1), 1.0, rtol=1e-4)
    assert entry["dim"] == res["num_params"]
  # Re-running reads every trace and spectrum from the cache: the same JSON.
  assert cot.run(config, setup["workdir"]) == res


def test_curvature_trace_equals_direct_call_at_recorded_state(setup):
  """One cached trace of the run is recomputed from a re-recorded trajectory."""
  config, adata, res = setup["config"], setup["adata"], setup["result"]
  sec, rm = config.curvature_over_training, config.real_model
  model = models.get_model(rm.model, 10, **rm.model_kwargs.to_dict())
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), pools.CURVATURE_STREAM)
  traj = pools.parameter_trajectories(
      model, pools.stack_keys(jax.random.fold_in(key, 2), range(1)), adata.real.x_train,
      adata.real.y_train, num_steps=sec.num_steps, batch_size=rm.batch_size)
  t = res["iterations"][-1]
  dm = adata.distilled["dm"]
  variables = pools.state_at(traj, 0, t)
  probe_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, 3), 0), t)
  op = curvature.hessian_operator(model, variables, jnp.asarray(dm.images), jnp.asarray(dm.labels),
                                  batch_size=sec.hvp_batch_size)
  direct = curvature.hutchinson_trace(op, probe_key, num_probes=sec.num_probes)
  assert res["series"]["dm"]["raw"][0][-1] == pytest.approx(direct.trace, rel=1e-4, abs=1e-4)


def test_curvature_config_errors(setup):
  config = analysis_config.base_config("mnist5k", "tiny")
  with pytest.raises(ConfigError, match="no 'curvature_over_training' section"):
    cot.run(config, setup["workdir"])
  config = setup["config"].copy_and_resolve_references()
  config.curvature_over_training.ema_decay = 1.0
  with pytest.raises(ConfigError, match="ema_decay"):
    cot.run(config, setup["workdir"])


def test_claims_rows_follow_the_criteria(setup):
  rows = cot.claims(setup["result"])
  assert {r["analysis"] for r in rows} == {"curvature_over_training"}
  for r in rows:
    assert r["question"] == "Q2" and isinstance(r["reproduced"], bool)
    assert r["claim"] and r["paper"] and r["measured"] and r["criterion"]
  assert cot.claims({}) == []
  # Hand-made results: the criterion decides, not the text.
  def result(peak, end):
    def series(p, e, learned, method):
      return {"peak": {"value": p, "iteration": 10}, "end": e, "end_over_peak": e / p,
              "learned": learned, "method": method, "first_iteration_below_real_after_peak": None}
    return {"series": {"real": series(100.0, 80.0, False, "real"),
                       "mtt": series(peak, end, True, "mtt")}}
  assert [r["reproduced"] for r in cot.claims(result(200.0, 20.0))] == [True, True]
  assert [r["reproduced"] for r in cot.claims(result(90.0, 20.0))] == [False, True]
  assert [r["reproduced"] for r in cot.claims(result(200.0, 190.0))] == [False, False]


def test_config_sections_for_every_size():
  for size in ("tiny", "demo", "full", "paper"):
    config = analysis_config.add_section(analysis_config.base_config("mnist5k", size),
                                         "curvature_over_training")
    assert "curvature_over_training" in config
  paper = analysis_config.add_section(analysis_config.base_config("cifar10", "paper"),
                                      "curvature_over_training")
  assert paper.curvature_over_training.num_steps == 300
  assert paper.curvature_over_training.num_probes == 0       # PyHessian's rule
  assert paper.curvature_over_training.tol == 1e-3 and paper.curvature_over_training.stride == 1
  assert cot.default_config().to_dict() == paper.curvature_over_training.to_dict()
