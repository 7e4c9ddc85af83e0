"""The recognition analysis (the paper's Fig. 2 left) on tiny mnist5k and hand-made sets."""

import copy
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.analysis import common as analysis_common
from ddjax import models, train
from ddjax.analysis import common, recognition
from ddjax.distill import synset

import q1_sets  # tests/q1_sets.py


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  env = q1_sets.make_env(tmp_path_factory, "recognition")
  env["result"] = recognition.run(env["config"], env["workdir"])
  return env


def test_recognition_matches_direct_evaluation(env):
  res, config = env["result"], env["config"]
  assert res["analysis"] == "recognition" and res["paper_counterpart"].startswith("Fig. 2 left")
  assert res["seeds"] == {"convnet": [0, 1]}
  assert res["set_order"] == ["outside", "shuffled", "random"]  # learned sets first, random last
  assert res["chance"] == pytest.approx(0.1)
  adata = common.load_analysis_data(config)
  evaluate = jax.jit(train.evaluate, static_argnums=0)  # the library's evaluate, compiled once
  for i, seed in enumerate(res["seeds"]["convnet"]):
    model, variables = common.real_model_from_config(config, env["real"], env["workdir"], seed=seed)
    test_acc = evaluate(model, variables, jnp.asarray(env["real"].x_test),
                              jnp.asarray(env["real"].y_test))["accuracy"]
    assert res["models"]["convnet"]["test_accuracy"]["per_seed"][i] == pytest.approx(
        float(test_acc), abs=1e-6)
    for name, dset in adata.distilled.items():
      direct = float(evaluate(model, variables, jnp.asarray(dset.images),
                                    jnp.asarray(dset.hard_labels))["accuracy"])
      got = res["accuracy"][name]["convnet"]["per_seed"][i]
      assert 0.0 <= got <= 1.0
      assert got == pytest.approx(direct, abs=1e-6)
  entry = res["accuracy"]["random"]["convnet"]
  assert entry["mean"] == pytest.approx(np.mean(entry["per_seed"]))
  assert entry["ci_low"] <= entry["mean"] <= entry["ci_high"] and entry["n"] == 2
  assert 0.0 <= entry["p_above_chance"] <= 1.0
  # Correct labels beat deliberately wrong ones.
  assert entry["mean"] > res["accuracy"]["shuffled"]["convnet"]["mean"]
  assert common.read_results(env["workdir"], "recognition") == res
  assert res["figures"] == ["recognition.png"]
  assert os.path.getsize(os.path.join(env["workdir"], "recognition.png")) > 1000


def test_claims_follow_their_criteria(env):
  res = env["result"]
  rows = recognition.claims(res)
  assert rows and {r["analysis"] for r in rows} == {"recognition"}
  for r in rows:
    assert set(r) >= {"question", "analysis", "claim", "paper", "measured", "reproduced", "criterion"}
    assert r["question"] == "Q1" and isinstance(r["reproduced"], bool)
  # The wrongly-labelled set is "learned" here and sits at chance: not reproduced.
  assert rows[-1]["reproduced"] is False
  # Method-specific rows: relabel the real subset as TM and the mislabelled set as DM.
  r = copy.deepcopy(res)
  del r["sets"]["outside"]
  r["set_order"].remove("outside")
  r["sets"]["random"].update(method="mtt", learned=True)
  r["sets"]["shuffled"]["method"] = "dm"
  traj = next(row for row in recognition.claims(r)
              if row["claim"].startswith("Trajectory-matching"))
  assert traj["reproduced"] is True and "p=" in traj["measured"]


def test_wrong_distilled_sets_raise(env, tmp_path):
  other = synset.DistilledSet(images=np.zeros((10, 28, 28, 1), np.float32),
                              labels=np.arange(10, dtype=np.int32), method="dm",
                              dataset="fashion_mnist", ipc=1, num_classes=10,
                              preprocessor=env["pre"])
  path = synset.save_distilled(str(tmp_path / "f" / "distilled.npz"), other)
  config = q1_sets.tiny_config(f"f={path}", env["config"].cache_dir)
  with pytest.raises(synset.DistilledSetError, match="fashion_mnist"):
    recognition.run(config, str(tmp_path / "w"))
  config = q1_sets.tiny_config(env["config"].distilled, env["config"].cache_dir)
  config.recognition.models = "convnet,lenet"
  with pytest.raises(ValueError, match="Unknown model 'lenet'"):
    recognition.run(config, str(tmp_path / "w"))


def test_config_sizes_and_paper_models_fit_mnist():
  for size in ("tiny", "demo", "paper"):
    config = analysis_common.add_section(analysis_common.base_config("mnist5k", size),
                                         "recognition")
    assert set(config.recognition.models.split(",")) <= set(config.recognition.epochs)
  paper = analysis_common.add_section(analysis_common.base_config("cifar10", "paper"),
                                      "recognition")
  assert paper.recognition.models.split(",") == [
      "convnet", "convnet_tiny", "resnet18", "resnet34", "alexnet", "vgg11"]
  assert paper.recognition.epochs.convnet == 40 and paper.recognition.epochs.convnet_tiny == 20
  assert paper.recognition.to_dict() == recognition.default_config().to_dict()
  # Every architecture of the paper's Fig. 2 (left) builds on 28x28x1 digits and yields
  # features and 10 logits (shape-only trace: no compile).
  x = jnp.zeros((2, 28, 28, 1))
  for name in paper.recognition.models.split(","):
    model = models.get_model(name, 10)
    variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), x.shape))
    logits = jax.eval_shape(lambda v: model.apply(v, x), variables)
    feats = jax.eval_shape(lambda v: model.apply(v, x, method="embed"), variables)
    assert logits.shape == (2, 10) and feats.ndim == 2 and feats.shape[0] == 2, name
