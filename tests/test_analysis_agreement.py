"""The agreement analysis (ddjax.analysis.agreement, the paper's Fig. 4) and its pools
(ddjax.analysis.pools), on the tiny setup of tests/q2_sets.py. The analysis runs once
(module fixture); the unit tests reuse its compiled programs where shapes allow.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.analysis import common as analysis_config
from ddjax import models, train
from ddjax.analysis import agreement, cache, pools
from ddjax.distill import synset
from ddjax.errors import ConfigError
import q2_sets  # tests/q2_sets.py


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  config, workdir, adata = q2_sets.make_setup(tmp_path_factory.mktemp("agreement"))
  return {"config": config, "workdir": workdir, "adata": adata,
          "result": agreement.run(config, workdir)}


def _pool_model(config, num_classes=10):
  return models.get_model(config.model, num_classes, **config.model_kwargs.to_dict())


def test_subsets_are_class_balanced_fractions():
  labels = np.repeat(np.arange(4), 50)
  for fraction, per_class in ((0.1, 5), (0.05, 2), (0.001, 1), (1.0, 50)):
    idx = pools.subset_indices(jax.random.PRNGKey(0), labels, fraction, 4)
    assert len(np.unique(idx)) == idx.size == 4 * per_class
    np.testing.assert_array_equal(np.bincount(labels[idx], minlength=4), [per_class] * 4)
  a = pools.subset_indices(jax.random.PRNGKey(1), labels, 0.1, 4)
  b = pools.subset_indices(jax.random.PRNGKey(2), labels, 0.1, 4)
  assert set(a.tolist()) != set(b.tolist())   # seeded: different keys, different subsets
  with pytest.raises(ValueError, match="fraction"):
    pools.subset_indices(jax.random.PRNGKey(0), labels, 0.0, 4)


def test_vmapped_subset_pool_equals_loop_of_single_trainings(setup):
  config, real = setup["config"], setup["adata"].real
  model = _pool_model(config)
  keys = pools.stack_keys(jax.random.PRNGKey(3), range(2))
  idx = np.stack([pools.subset_indices(jax.random.PRNGKey(20 + i), real.y_train, 0.1, 10)
                  for i in range(2)])
  kwargs = dict(num_epochs=config.agreement.subset_epochs, batch_size=config.real_model.batch_size)
  preds, accs = pools.subset_pool(model, keys, idx, real.x_train, real.y_train,
                                  real.x_test, real.y_test, **kwargs)
  assert preds.shape == (2, real.x_test.shape[0]) and accs.shape == (2,)
  for i in range(2):
    p, a = pools.fit_subset_model(model, keys[i], idx[i], real.x_train, real.y_train,
                                  real.x_test, real.y_test, **kwargs)
    assert np.mean(np.asarray(p) == np.asarray(preds[i])) >= 0.99
    np.testing.assert_allclose(float(a), float(accs[i]), atol=0.011)
    np.testing.assert_allclose(float(accs[i]), np.mean(np.asarray(preds[i]) == real.y_test))


def test_early_stopped_pool_records_every_iteration(setup):
  config, real = setup["config"], setup["adata"].real
  model = _pool_model(config)
  sec = config.agreement
  out = pools.early_stopped_pool(
      model, pools.stack_keys(jax.random.PRNGKey(4), range(sec.early_seeds)),
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
  np.testing.assert_array_equal(agreement.agreement(preds, preds), [1.0, 1.0])
  np.testing.assert_allclose(agreement.agreement(preds[1], preds[0]), 0.75)
  np.testing.assert_array_equal(
      agreement.match_subset_models([0.50, 0.58, 0.60, 0.62, 0.70], 0.60, 0.02), [1, 2, 3])
  acc = np.array([[0.1, 0.4, 0.55, 0.7], [0.2, 0.3, 0.35, 0.45], [0.5, 0.61, 0.62, 0.9]])
  np.testing.assert_array_equal(agreement.match_early_stopped(acc, 0.6, 0.06), [2, -1, 1])


def test_match_and_agree_known_answers():
  y_test = np.array([0, 1, 2, 3])
  dist_preds = np.array([[0, 1, 2, 0]])                       # wrong on the last image
  subset = (np.array([[0, 1, 2, 3], [0, 1, 0, 0], [3, 3, 3, 3]]), np.array([0.75, 0.5, 0.1]))
  early_acc = np.array([[0.25, 0.5, 0.75], [0.5, 0.6, 1.0]])
  early_preds = np.zeros((2, 3, 4), np.int64)
  early_preds[0, 1] = [0, 1, 2, 0]                            # run 0 matches at iteration 2
  early_preds[1, 0] = [0, 1, 0, 0]                            # run 1 matches at iteration 1
  out = agreement.match_and_agree(dist_preds, np.array([0.5]), y_test, subset,
                                  (early_preds, early_acc), 0.25)
  assert out["subset_counts"] == [2] and out["early_counts"] == [2]
  np.testing.assert_allclose(out["subset"], [0.75, 0.75])
  np.testing.assert_allclose(out["early"], [1.0, 0.75])
  assert out["early_iterations"] == [2, 1]
  assert out["matched_subset_accuracy"] == [0.75, 0.5]
  assert out["matched_early_accuracy"] == [0.5, 0.5]
  np.testing.assert_allclose(out["subset_errors"], [0.0, 1.0])
  np.testing.assert_allclose(out["early_errors"], [1.0, 1.0])
  # The paper's one iteration for every run: mean accuracies 0.375, 0.55, 0.875.
  assert out["paper_style"][0]["iteration"] == 2
  np.testing.assert_allclose(out["paper_style"][0]["mean_accuracy"], 0.55)


def test_compare_agreement_known_answers():
  early, subset = np.array([0.60, 0.62, 0.64]), np.array([0.50, 0.52, 0.54])
  out = agreement.compare_agreement(early, subset)
  assert out["available"]
  np.testing.assert_allclose(out["mean_difference"], 0.1)
  se = np.sqrt(0.02 ** 2 / 3 * 2)        # both sample variances 0.0004
  half = 2.7764451051977987 * se         # t_{0.975, df=4} (equal variances, n=3+3)
  np.testing.assert_allclose([out["ci_low"], out["ci_high"]], [0.1 - half, 0.1 + half], rtol=1e-6)
  np.testing.assert_allclose(out["welch_df"], 4.0)
  assert out["rank_biserial"] == 1.0 and out["mann_whitney_p"] < 0.11 and out["welch_p"] < 0.01
  np.testing.assert_allclose(out["cohens_d"], 5.0)
  missing = agreement.compare_agreement([0.5], subset)
  assert not missing["available"] and "early-stopped 1" in missing["reason"]
  # Both pools constant: the difference is exact, a zero-width interval.
  exact = agreement.compare_agreement([0.6, 0.6], [0.5, 0.5])
  assert exact["ci_low"] == exact["ci_high"] == exact["mean_difference"]
  assert exact["welch_t"] is None and exact["welch_p"] == 0.0 and exact["cohens_d"] is None


def test_agreement_json(setup):
  res, workdir = setup["result"], setup["workdir"]
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
  again = agreement.run(config, workdir)
  assert again["sets"]["dm"]["subset"]["agreement"] == res["sets"]["dm"]["subset"]["agreement"]
  assert again == res
  assert os.listdir(cache.cache_dir(config, workdir))


def test_agreement_reports_no_match_instead_of_crashing(setup):
  config = setup["config"].copy_and_resolve_references()
  config.agreement.match_tolerance = 0.0
  res = agreement.run(config, setup["workdir"])   # pools come from the cache
  entry = res["sets"]["dm"]
  if not entry["subset"]["agreement"] or not entry["early_stopped"]["agreement"]:
    assert "note" in entry and not entry["test"]["available"]
  assert len(entry["subset"]["agreement"]) == sum(entry["subset"]["num_matched"])
  assert len(entry["early_stopped"]["agreement"]) == sum(entry["early_stopped"]["num_matched"])


def test_agreement_config_errors(setup):
  config = setup["config"].copy_and_resolve_references()
  config.agreement.subset_fractions = [0.0]
  with pytest.raises(ValueError, match="subset_fractions"):
    agreement.run(config, setup["workdir"])
  config = setup["config"].copy_and_resolve_references()
  config.distilled = ""
  with pytest.raises(synset.DistilledSetError, match="No distilled sets"):
    agreement.run(config, setup["workdir"])
  config = analysis_config.base_config("mnist5k", "tiny")
  with pytest.raises(ConfigError, match="no 'agreement' section"):
    agreement.run(config, setup["workdir"])


def test_claims_rows_follow_the_criteria(setup):
  rows = agreement.claims(setup["result"])
  assert [r["analysis"] for r in rows] == ["agreement"]
  for r in rows:
    assert r["question"] == "Q2" and isinstance(r["reproduced"], bool)
    assert r["claim"] and r["paper"] and r["measured"] and r["criterion"]
  assert agreement.claims({}) == []
  # Hand-made results: the criterion decides, not the text.
  def result(diff, p):
    test = {"available": True, "mean_difference": diff, "ci_low": diff - 0.01,
            "ci_high": diff + 0.01, "mann_whitney_p": p, "n_early": 5, "n_subset": 5}
    entry = {"learned": True, "test": test, "early_stopped": {"summary": {"mean": 0.6 + diff}},
             "subset": {"summary": {"mean": 0.6}}}
    return {"match_tolerance": 0.01, "sets": {"dm": entry}}
  assert agreement.claims(result(0.05, 0.01))[0]["reproduced"]
  assert not agreement.claims(result(0.05, 0.2))[0]["reproduced"]
  assert not agreement.claims(result(-0.05, 0.01))[0]["reproduced"]


def test_config_sections_for_every_size():
  for size in ("tiny", "demo", "full", "paper"):
    config = analysis_config.add_section(analysis_config.base_config("mnist5k", size),
                                         "agreement")
    assert "agreement" in config
  paper = analysis_config.add_section(analysis_config.base_config("cifar10", "paper"),
                                      "agreement")
  assert len(paper.agreement.subset_fractions) * paper.agreement.models_per_fraction == 520
  assert paper.agreement.early_seeds == 30 and paper.agreement.subset_epochs == 100
  assert paper.agreement.num_distilled_seeds == paper.protocol_a.num_seeds
  assert agreement.default_config().to_dict() == paper.agreement.to_dict()
