"""Q2 analyses (ddjax.analysis.information): E5 agreement, E6 recognition over training,
E7 curvature over training.

Tiny: mnist5k at 20 train / 10 test images per class, ConvNet width 8 depth 2, two distilled sets
of 2 images per class (real images plus noise, one called "dm", one the random baseline),
and a width-2 ConvNet on 4x4 inputs for the exact-Hessian check. The three analyses run
once (module fixture); the unit tests reuse their compiled programs where shapes allow.
"""

import json
import os

import jax
import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from configs.analysis import common as analysis_config
from configs.analysis import information as information_config
from ddjax import classifier, curvature, data, models, train
from ddjax.analysis import common, information
from ddjax.distill import synset

IPC = 2


def _tiny_config(distilled: str) -> ml_collections.ConfigDict:
  config = analysis_config.base_config("mnist5k", "tiny")
  information_config.add_sections(config)
  config.distilled = distilled
  # Depth 2 (of 3): a quarter less compile time for the seven compiled training programs.
  config.model_kwargs.depth = 2
  config.real_model.model_kwargs.depth = 2
  config.agreement.subset_fractions = [0.1]   # one subset size (2 per class): one compile
  # The real-data trace on 20 images, the size of each distilled set: one compiled HVP.
  config.curvature_over_training.train_subset = 10 * IPC
  config.curvature_over_training.hvp_batch_size = 10 * IPC
  return config


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("information")
  config = _tiny_config("")
  real, pre = classifier.load_preprocessed(common.real_data_config(config))
  rng = np.random.default_rng(0)
  paths = []
  for i, (name, method) in enumerate((("dm", "dm"), ("random", "random"))):
    idx = data.class_balanced_indices(jax.random.PRNGKey(10 + i), real.y_train, IPC, 10)
    images = real.x_train[idx] + (0.3 * rng.standard_normal(real.x_train[idx].shape)
                                  if method != "random" else 0.0)
    dset = synset.DistilledSet(images=np.asarray(images, np.float32),
                               labels=real.y_train[idx].astype(np.int32), method=method,
                               dataset=real.name, ipc=IPC, num_classes=10, preprocessor=pre)
    paths.append(f"{name}={synset.save_distilled(str(root / name / 'distilled.npz'), dset)}")
  config = _tiny_config(",".join(paths))
  workdir = str(root / "work")
  results = {
      "agreement": information.run_agreement(config, workdir),
      "recognition_over_training": information.run_recognition_over_training(config, workdir),
      "curvature_over_training": information.run_curvature_over_training(config, workdir),
  }
  adata = common.load_analysis_data(config)
  return {"config": config, "workdir": workdir, "results": results, "adata": adata}


def _pool_model(config, num_classes=10):
  return models.get_model(config.model, num_classes, **config.model_kwargs.to_dict())


# ----------------------------------------------------------------------------- E5


def test_subsets_are_class_balanced_fractions():
  labels = np.repeat(np.arange(4), 50)
  for fraction, per_class in ((0.1, 5), (0.05, 2), (0.001, 1), (1.0, 50)):
    idx = information.subset_indices(jax.random.PRNGKey(0), labels, fraction, 4)
    assert len(np.unique(idx)) == idx.size == 4 * per_class
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=4), [per_class] * 4)
  a = information.subset_indices(jax.random.PRNGKey(1), labels, 0.1, 4)
  b = information.subset_indices(jax.random.PRNGKey(2), labels, 0.1, 4)
  assert set(a.tolist()) != set(b.tolist())   # seeded: different keys, different subsets
  with pytest.raises(ValueError, match="fraction"):
    information.subset_indices(jax.random.PRNGKey(0), labels, 0.0, 4)


def test_vmapped_subset_pool_equals_loop_of_single_trainings(setup):
  config, real = setup["config"], setup["adata"].real
  model = _pool_model(config)
  keys = information._stack_keys(jax.random.PRNGKey(3), range(2))
  idx = np.stack([information.subset_indices(jax.random.PRNGKey(20 + i), real.y_train, 0.1, 10)
                  for i in range(2)])
  kwargs = dict(num_epochs=config.agreement.subset_epochs, batch_size=config.real_model.batch_size)
  preds, accs = information.subset_pool(model, keys, idx, real.x_train, real.y_train,
                                        real.x_test, real.y_test, **kwargs)
  assert preds.shape == (2, real.x_test.shape[0]) and accs.shape == (2,)
  for i in range(2):
    p, a = information.fit_subset_model(model, keys[i], idx[i], real.x_train, real.y_train,
                                        real.x_test, real.y_test, **kwargs)
    assert np.mean(np.asarray(p) == np.asarray(preds[i])) >= 0.99
    np.testing.assert_allclose(float(a), float(accs[i]), atol=0.011)
    np.testing.assert_allclose(float(accs[i]), np.mean(np.asarray(preds[i]) == real.y_test))


def test_early_stopped_pool_records_every_iteration(setup):
  config, real = setup["config"], setup["adata"].real
  model = _pool_model(config)
  sec = config.agreement
  out = information.early_stopped_pool(
      model, information._stack_keys(jax.random.PRNGKey(4), range(sec.early_seeds)),
      real.x_train, real.y_train, real.x_test, real.y_test, num_epochs=sec.early_epochs,
      batch_size=config.real_model.batch_size)
  steps = sec.early_epochs * train.steps_per_epoch(real.x_train.shape[0],
                                                   config.real_model.batch_size)
  assert out["predictions"].shape == (sec.early_seeds, steps, real.x_test.shape[0])
  assert out["accuracy"].shape == (sec.early_seeds, steps)
  for s in range(sec.early_seeds):
    variables = jax.tree_util.tree_map(lambda a: a[s], out["variables"])
    final = train.evaluate(model, variables, jnp.asarray(real.x_test), jnp.asarray(real.y_test))
    np.testing.assert_array_equal(np.asarray(out["predictions"][s, -1]), final["predictions"])
    np.testing.assert_allclose(float(out["accuracy"][s, -1]), float(final["accuracy"]))


def test_agreement_and_matching_known_answers():
  preds = np.array([[0, 1, 2, 3], [0, 1, 2, 0]])
  np.testing.assert_array_equal(information.agreement(preds, preds), [1.0, 1.0])
  np.testing.assert_allclose(information.agreement(preds[1], preds[0]), 0.75)
  np.testing.assert_array_equal(
      information.match_subset_models([0.50, 0.58, 0.60, 0.62, 0.70], 0.60, 0.02), [1, 2, 3])
  acc = np.array([[0.1, 0.4, 0.55, 0.7], [0.2, 0.3, 0.35, 0.45], [0.5, 0.61, 0.62, 0.9]])
  np.testing.assert_array_equal(information.match_early_stopped(acc, 0.6, 0.06), [2, -1, 1])


def test_compare_agreement_known_answers():
  early, subset = np.array([0.60, 0.62, 0.64]), np.array([0.50, 0.52, 0.54])
  out = information.compare_agreement(early, subset)
  assert out["available"]
  np.testing.assert_allclose(out["mean_difference"], 0.1)
  se = np.sqrt(0.02 ** 2 / 3 * 2)        # both sample variances 0.0004
  half = 2.7764451051977987 * se         # t_{0.975, df=4} (equal variances, n=3+3)
  np.testing.assert_allclose([out["ci_low"], out["ci_high"]], [0.1 - half, 0.1 + half], rtol=1e-6)
  assert out["rank_biserial"] == 1.0 and out["mann_whitney_p"] < 0.11 and out["welch_p"] < 0.01
  np.testing.assert_allclose(out["cohens_d"], 5.0)
  missing = information.compare_agreement([0.5], subset)
  assert not missing["available"] and "early-stopped 1" in missing["reason"]


def test_agreement_json(setup):
  res, workdir = setup["results"]["agreement"], setup["workdir"]
  config = setup["config"]
  assert res["analysis"] == "agreement" and res["paper_counterpart"].startswith("Fig. 4")
  assert res["figures"] == ["agreement.png"]
  assert os.path.getsize(os.path.join(workdir, "agreement.png")) > 1000
  with open(os.path.join(workdir, "agreement.json")) as f:
    assert json.load(f)["sets"].keys() == res["sets"].keys()
  assert res["config"]["match_tolerance"] == 1.0 and res["seeds"]["config_seed"] == 0
  assert list(res["sets"]) == ["dm", "random"]          # learned first, baseline last
  pool = config.agreement.models_per_fraction
  for name, entry in res["sets"].items():
    assert entry["learned"] == (name == "dm")
    acc = entry["distilled_accuracy"]["per_seed"]
    assert len(acc) == config.agreement.num_distilled_seeds and 0 <= acc[0] <= 1
    # Tolerance 1.0: every pool member matches.
    assert entry["subset"]["num_matched"] == [pool]
    assert entry["early_stopped"]["num_matched"] == [config.agreement.early_seeds]
    values = entry["subset"]["agreement"] + entry["early_stopped"]["agreement"]
    assert all(0 <= v <= 1 for v in values)
    steps = res["pools"]["early_stopped"]["iterations"]
    assert all(1 <= it <= steps for it in entry["early_stopped"]["iterations"])
    assert entry["test"]["available"] and entry["test"]["n_subset"] == pool
    np.testing.assert_allclose(entry["test"]["mean_difference"],
                               np.mean(entry["early_stopped"]["agreement"]) -
                               np.mean(entry["subset"]["agreement"]))
  # Re-running resumes from the cache: the same numbers.
  again = information.run_agreement(config, workdir)
  assert again["sets"]["dm"]["subset"]["agreement"] == res["sets"]["dm"]["subset"]["agreement"]
  assert os.listdir(os.path.join(workdir, information.CACHE_DIR))


def test_agreement_reports_no_match_instead_of_crashing(setup):
  config = setup["config"].copy_and_resolve_references()
  config.agreement.match_tolerance = 0.0
  res = information.run_agreement(config, setup["workdir"])   # pools come from the cache
  entry = res["sets"]["dm"]
  if not entry["subset"]["agreement"] or not entry["early_stopped"]["agreement"]:
    assert "note" in entry and not entry["test"]["available"]
  assert len(entry["subset"]["agreement"]) == sum(entry["subset"]["num_matched"])
  assert len(entry["early_stopped"]["agreement"]) == sum(entry["early_stopped"]["num_matched"])


def test_agreement_config_errors(setup):
  config = setup["config"].copy_and_resolve_references()
  config.agreement.subset_fractions = [0.0]
  with pytest.raises(ValueError, match="subset_fractions"):
    information.run_agreement(config, setup["workdir"])
  config = setup["config"].copy_and_resolve_references()
  config.distilled = ""
  with pytest.raises(synset.DistilledSetError, match="No distilled sets"):
    information.run_agreement(config, setup["workdir"])
  config = analysis_config.base_config("mnist5k", "tiny")
  with pytest.raises(ValueError, match="add_sections"):
    information.run_curvature_over_training(config, setup["workdir"])


# ----------------------------------------------------------------------------- E6


def test_group_recorder_last_iteration_equals_direct_evaluate(setup):
  config, adata = setup["config"], setup["adata"]
  real, sets = adata.real, [adata.distilled["dm"], adata.distilled["random"]]
  rm, sec = config.real_model, config.recognition_over_training
  model = models.get_model(rm.model, 10, **rm.model_kwargs.to_dict())
  # The evaluation array of run_recognition_over_training (its compiled program is reused).
  parts = [(real.x_test, real.y_test)] + [(d.images, d.hard_labels) for d in sets]
  x_eval = np.concatenate([p[0] for p in parts])
  y_eval = np.concatenate([p[1] for p in parts]).astype(np.int32)
  groups = np.concatenate([np.full(len(p[1]), g, np.int32) for g, p in enumerate(parts)])
  out = information.recognition_curves(
      model, information._stack_keys(jax.random.PRNGKey(5), range(sec.num_seeds)), real.x_train,
      real.y_train, x_eval, y_eval, groups, 3, num_epochs=sec.epochs, batch_size=rm.batch_size,
      eval_batch_size=sec.eval_batch_size)
  steps = sec.epochs * train.steps_per_epoch(real.x_train.shape[0], rm.batch_size)
  assert out["accuracy"].shape == out["loss"].shape == (sec.num_seeds, steps, 3)
  evaluate = jax.jit(lambda v, x, y: train.evaluate(model, v, x, y))
  for s in range(sec.num_seeds):
    variables = jax.tree_util.tree_map(lambda a: a[s], out["variables"])
    for g, (x, y) in enumerate(parts):
      direct = evaluate(variables, jnp.asarray(x), jnp.asarray(y))
      np.testing.assert_allclose(float(out["accuracy"][s, -1, g]), float(direct["accuracy"]),
                                 atol=1e-6)
      np.testing.assert_allclose(float(out["loss"][s, -1, g]), float(direct["loss"]), rtol=1e-4)
  with pytest.raises(ValueError, match="groups"):
    information.recognition_curves(model, information._stack_keys(jax.random.PRNGKey(5), range(1)),
                                   real.x_train, real.y_train, x_eval, y_eval, groups, 4,
                                   num_epochs=1)


def test_first_iteration_reaching():
  curve = [0.1, 0.5, 0.4, 0.9, 0.95]
  assert information.first_iteration_reaching(curve, 0.5) == 2
  assert information.first_iteration_reaching(curve, 0.91) == 5
  assert information.first_iteration_reaching(curve, 0.99) is None
  assert information._first_for_good([True, False, True, True]) == 3
  assert information._first_for_good([True, True]) == 1
  assert information._first_for_good([True, False]) is None


def test_recognition_json(setup):
  res, config = setup["results"]["recognition_over_training"], setup["config"]
  real = setup["adata"].real
  steps = config.recognition_over_training.epochs * train.steps_per_epoch(
      real.x_train.shape[0], config.real_model.batch_size)
  assert res["analysis"] == "recognition_over_training"
  assert res["paper_counterpart"].startswith("Fig. 5")
  assert os.path.exists(os.path.join(setup["workdir"], res["figures"][0]))
  assert res["real_training"]["iterations"] == steps
  assert res["seeds"]["num_seeds"] == config.recognition_over_training.num_seeds
  assert len(res["test"]["mean_accuracy_curve"]) == steps
  final_test = res["test"]["final_accuracy"]["mean"]
  np.testing.assert_allclose(res["level"]["accuracy"], 0.95 * final_test)
  for name in ("dm", "random"):
    entry = res["sets"][name]
    curve = np.asarray(entry["mean_accuracy_curve"])
    assert curve.shape == (steps,) and np.all((curve >= 0) & (curve <= 1))
    t = entry["iteration_reaching_level"]
    assert t is None or curve[t - 1] >= res["level"]["accuracy"] - 1e-9
    np.testing.assert_allclose(entry["gap_vs_test_second_half"]["mean"],
                               np.mean(curve[steps // 2:] -
                                       np.asarray(res["test"]["mean_accuracy_curve"])[steps // 2:]))


# ----------------------------------------------------------------------------- E7


def test_ema_matches_hand_loop():
  values = np.array([3.0, 1.0, 4.0, 1.0, 5.0, 9.0])
  expected, s = [], values[0]
  for v in values:
    s = 0.9 * s + 0.1 * v
    expected.append(s)
  np.testing.assert_allclose(information.ema(values, 0.9), expected)
  assert information.ema(values, 0.9)[0] == values[0]
  np.testing.assert_allclose(information.ema(values, 0.0), values)


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
  keys = information._stack_keys(jax.random.PRNGKey(0), range(1))
  traj = information.parameter_trajectories(model, keys, x, y, num_steps=5, batch_size=8)
  assert jax.tree_util.tree_leaves(traj["params"])[0].shape[:2] == (1, 6)
  # State 0 is the init; state 3 the model after one epoch (3 steps of 8).
  init_key, train_key = jax.random.split(keys[0])
  init = models.init_variables(model, init_key, x.shape)
  _assert_trees_close(information.state_at(traj, 0, 0)["params"], init["params"])
  tx = train.sgd_momentum(0.01, 0.9)
  one_epoch, _ = train.train_minibatch(model, tx, train.create_train_state(init, tx), x, y,
                                       train_key, num_epochs=1, batch_size=8)
  _assert_trees_close(information.state_at(traj, 0, 3)["params"], one_epoch.params)
  # The trace at a recorded state is ddjax.curvature's Hutchinson with the same key.
  state5 = information.state_at(traj, 0, 5)
  key = jax.random.PRNGKey(7)
  est = information.trace_at(model, state5, x, y, key, num_probes=4, batch_size=8)
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
  est = information.trace_at(model, variables, x, y, jax.random.PRNGKey(0), num_probes=200,
                             batch_size=8)
  assert est.num_probes == 200 and est.stderr > 0
  assert abs(est.trace - exact) <= 3 * est.stderr, (est.trace, exact, est.stderr)
  # SLQ with as many Lanczos steps as parameters: the top node is the top eigenvalue.
  dens = information.spectrum_at(model, variables, x, y, jax.random.PRNGKey(1), num_probes=1,
                                 num_iters=flat.size, batch_size=8)
  eig = np.linalg.eigvalsh(hessian)
  np.testing.assert_allclose(dens.nodes.max(), eig.max(), rtol=1e-3)


def test_curvature_json(setup):
  res, config = setup["results"]["curvature_over_training"], setup["config"]
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
    np.testing.assert_allclose(entry["ema_mean"],
                               information.ema(raw[0], sec.ema_decay ** sec.stride))
    assert entry["peak"]["value"] == pytest.approx(max(entry["ema_mean"]))
  spectrum = res["spectra"][str(sec.spectrum_iterations[0])]
  for name, entry in spectrum.items():
    assert entry["top_eigenvalue"] == pytest.approx(np.max(entry["nodes"]))
    np.testing.assert_allclose(np.sum(entry["weights"], axis=1), 1.0, rtol=1e-4)
    assert entry["dim"] == res["num_params"]


def test_curvature_trace_equals_direct_call_at_recorded_state(setup):
  """One cached trace of the run is recomputed from a re-recorded trajectory."""
  config, adata, res = setup["config"], setup["adata"], setup["results"]["curvature_over_training"]
  sec, rm = config.curvature_over_training, config.real_model
  model = models.get_model(rm.model, 10, **rm.model_kwargs.to_dict())
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), information._E7)
  traj = information.parameter_trajectories(
      model, information._stack_keys(jax.random.fold_in(key, 2), range(1)), adata.real.x_train,
      adata.real.y_train, num_steps=sec.num_steps, batch_size=rm.batch_size)
  t = res["iterations"][-1]
  dm = adata.distilled["dm"]
  variables = information.state_at(traj, 0, t)
  probe_key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, 3), 0), t)
  op = curvature.hessian_operator(model, variables, jnp.asarray(dm.images), jnp.asarray(dm.labels),
                                  batch_size=sec.hvp_batch_size)
  direct = curvature.hutchinson_trace(op, probe_key, num_probes=sec.num_probes)
  assert res["series"]["dm"]["raw"][0][-1] == pytest.approx(direct.trace, rel=1e-4, abs=1e-4)


# ----------------------------------------------------------------------------- claims


def test_claims_rows_follow_the_criteria(setup):
  rows = information.claims(setup["results"])
  assert {r["analysis"] for r in rows} == {"agreement", "recognition_over_training",
                                          "curvature_over_training"}
  for r in rows:
    assert r["question"] == "Q2" and isinstance(r["reproduced"], bool)
    assert r["claim"] and r["paper"] and r["measured"] and r["criterion"]
  assert information.claims({}) == []
  # Hand-made results: the criterion decides, not the text.
  def agreement_result(diff, p):
    test = {"available": True, "mean_difference": diff, "ci_low": diff - 0.01,
            "ci_high": diff + 0.01, "mann_whitney_p": p, "n_early": 5, "n_subset": 5}
    entry = {"learned": True, "test": test, "early_stopped": {"summary": {"mean": 0.6 + diff}},
             "subset": {"summary": {"mean": 0.6}}}
    return {"agreement": {"match_tolerance": 0.01, "sets": {"dm": entry}}}
  assert information.claims(agreement_result(0.05, 0.01))[0]["reproduced"]
  assert not information.claims(agreement_result(0.05, 0.2))[0]["reproduced"]
  assert not information.claims(agreement_result(-0.05, 0.01))[0]["reproduced"]

  def curvature_result(peak, end):
    def series(p, e, learned, method):
      return {"peak": {"value": p, "iteration": 10}, "end": e, "end_over_peak": e / p,
              "learned": learned, "method": method, "first_iteration_below_real_after_peak": None}
    return {"curvature_over_training": {"series": {
        "real": series(100.0, 80.0, False, "real"), "mtt": series(peak, end, True, "mtt")}}}
  rows = information.claims(curvature_result(200.0, 20.0))
  assert [r["reproduced"] for r in rows] == [True, True]
  rows = information.claims(curvature_result(90.0, 20.0))
  assert [r["reproduced"] for r in rows] == [False, True]
  rows = information.claims(curvature_result(200.0, 190.0))
  assert [r["reproduced"] for r in rows] == [False, False]


def test_config_sections_for_every_size():
  for size in ("tiny", "demo", "paper"):
    config = information_config.add_sections(analysis_config.base_config("mnist5k", size))
    for name in ("agreement", "recognition_over_training", "curvature_over_training"):
      assert name in config
  paper = information_config.add_sections(analysis_config.base_config("cifar10", "paper"))
  assert len(paper.agreement.subset_fractions) * paper.agreement.models_per_fraction == 520
  assert paper.agreement.early_seeds == 30 and paper.agreement.subset_epochs == 100
  assert paper.curvature_over_training.num_steps == 300
  assert paper.curvature_over_training.num_probes == 0       # PyHessian's rule
  assert paper.curvature_over_training.tol == 1e-3 and paper.curvature_over_training.stride == 1
