"""The recognition_over_training analysis (ddjax.analysis.recognition_over_training, the
paper's Fig. 5), on the tiny setup of tests/q2_sets.py. The analysis runs once (module
fixture); the unit tests reuse its compiled program where shapes allow.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.analysis import common as analysis_config
from ddjax import models, train
from ddjax.analysis import pools
from ddjax.analysis import recognition_over_training as rot
import q2_sets  # tests/q2_sets.py


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  config, workdir, adata = q2_sets.make_setup(tmp_path_factory.mktemp("recognition"))
  return {"config": config, "workdir": workdir, "adata": adata,
          "result": rot.run(config, workdir)}


def test_group_recorder_last_iteration_equals_direct_evaluate(setup):
  config, adata = setup["config"], setup["adata"]
  real, sets = adata.real, [adata.distilled["dm"], adata.distilled["random"]]
  rm, sec = config.real_model, config.recognition_over_training
  model = models.get_model(rm.model, 10, **rm.model_kwargs.to_dict())
  # The evaluation array of the run (its compiled program is reused).
  parts = [(real.x_test, real.y_test)] + [(d.images, d.hard_labels) for d in sets]
  x_eval = np.concatenate([p[0] for p in parts])
  y_eval = np.concatenate([p[1] for p in parts]).astype(np.int32)
  groups = np.concatenate([np.full(len(p[1]), g, np.int32) for g, p in enumerate(parts)])
  out = rot.recognition_curves(
      model, pools.stack_keys(jax.random.PRNGKey(5), range(sec.num_seeds)), real.x_train,
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
    rot.recognition_curves(model, pools.stack_keys(jax.random.PRNGKey(5), range(1)),
                           real.x_train, real.y_train, x_eval, y_eval, groups, 4, num_epochs=1)


def test_first_iteration_reaching():
  curve = [0.1, 0.5, 0.4, 0.9, 0.95]
  assert rot.first_iteration_reaching(curve, 0.5) == 2
  assert rot.first_iteration_reaching(curve, 0.91) == 5
  assert rot.first_iteration_reaching(curve, 0.99) is None
  assert rot.first_for_good([True, False, True, True]) == 3
  assert rot.first_for_good([True, True]) == 1
  assert rot.first_for_good([True, False]) is None


def test_recognition_json(setup):
  res, config = setup["result"], setup["config"]
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
  # Re-running reads the curves from the cache: the same JSON.
  assert rot.run(config, setup["workdir"]) == res


def test_claims_rows_follow_the_criteria(setup):
  rows = rot.claims(setup["result"])
  assert [r["analysis"] for r in rows] == ["recognition_over_training"]
  for r in rows:
    assert r["question"] == "Q2" and isinstance(r["reproduced"], bool)
    assert r["claim"] and r["paper"] and r["measured"] and r["criterion"]
  assert rot.claims({}) == []


def test_config_sections_for_every_size():
  for size in ("tiny", "demo", "full", "paper"):
    config = analysis_config.add_section(analysis_config.base_config("mnist5k", size),
                                         "recognition_over_training")
    assert "recognition_over_training" in config
  paper = analysis_config.add_section(analysis_config.base_config("cifar10", "paper"),
                                      "recognition_over_training")
  assert rot.default_config().to_dict() == paper.recognition_over_training.to_dict()
  assert paper.recognition_over_training.epochs == 2
