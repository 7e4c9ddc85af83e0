"""The embedding analysis (the paper's Fig. 2 right) on tiny mnist5k and hand-made sets."""

import copy
import glob
import os

import numpy as np
import pytest

from configs.analysis import common as analysis_common
from ddjax import analysis, models
from ddjax.analysis import common, embedding
from ddjax.distill import synset

import q1_sets  # tests/q1_sets.py


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  env = q1_sets.make_env(tmp_path_factory, "embedding")
  env["result"] = embedding.run(env["config"], env["workdir"])
  return env


def test_knn_class_agreement_known_answer():
  pool = np.array([[0, 0], [0, 1], [1, 0], [10, 10], [10, 11], [11, 10]], np.float32)
  pool_labels = np.array([0, 0, 0, 1, 1, 1])
  queries = np.array([[0.1, 0.1], [10.2, 10.1], [9.0, 9.0]], np.float32)
  out = embedding.knn_class_agreement(queries, np.array([0, 0, 1]), pool, pool_labels, k=3,
                                      num_classes=2)
  np.testing.assert_array_equal(out["majority"], [1.0, 0.0, 1.0])
  np.testing.assert_allclose(out["same_fraction"], [1.0, 0.0, 1.0])
  np.testing.assert_allclose(out["nn_distance"], [np.sqrt(0.02), np.sqrt(0.05), np.sqrt(2.0)],
                             rtol=1e-4)
  # Leave-one-out: a pool point is not its own neighbour.
  dist, idx = embedding.nearest_neighbours(pool, pool, 1, exclude=np.arange(6))
  np.testing.assert_array_equal(idx[:, 0], [1, 0, 0, 4, 3, 3])
  np.testing.assert_allclose(dist[:, 0], 1.0, rtol=1e-5)
  # Ties: two votes each among k=4 -> the class of the nearer neighbours wins.
  tie = embedding.knn_class_agreement(np.array([[5.0, 4.0]], np.float32), np.array([1]),
                                      np.array([[5, 5], [5, 2], [5, 6], [5, 1]], np.float32),
                                      np.array([1, 0, 1, 0]), k=4, num_classes=2)
  assert tie["majority"][0] == 1.0 and tie["same_fraction"][0] == 0.5
  with pytest.raises(ValueError, match="nearest neighbours"):
    embedding.nearest_neighbours(queries, pool, 7)


def test_embedding_separates_real_from_shuffled(env):
  res = env["result"]
  assert res["analysis"] == "embedding" and res["paper_counterpart"].startswith("Fig. 2 right")
  assert res["model"] == "convnet" and res["seeds"] == [0, 1] and res["k"] == 3
  assert res["feature_dim"] == 8 * 4 * 4  # width-8 ConvNet, 4x4 maps after three pools
  assert res["random_baseline"] == "random"
  assert res["set_order"] == ["outside", "shuffled", "random"]  # learned sets first, random last
  real_subset, shuffled = res["sets"]["random"], res["sets"]["shuffled"]
  # Real train images sit among same-class real test points; wrongly labelled ones do not.
  assert real_subset["knn_majority_agreement"]["mean"] >= 0.5
  assert shuffled["knn_majority_agreement"]["mean"] <= 0.2
  assert real_subset["knn_same_class_fraction"]["mean"] > 2 * shuffled["knn_same_class_fraction"]["mean"]
  # Same images, so the same distances to real points.
  assert real_subset["nn_distance_ratio"]["mean"] == pytest.approx(
      shuffled["nn_distance_ratio"]["mean"], rel=1e-5)
  held_out = res["real_heldout"]
  assert held_out["nn_distance_ratio"]["mean"] == pytest.approx(1.0)
  assert held_out["inlier_fraction"]["mean"] >= 0.95
  assert held_out["knn_majority_agreement"]["mean"] >= 0.5
  lo, hi = real_subset["knn_majority_binomial_ci95"]
  assert lo <= real_subset["knn_majority_agreement"]["mean"] <= hi
  assert res["projection"]["num_points"] == 100 + 100 + 100 + 20
  assert res["projection"]["fit_on"] == "real"
  assert len(real_subset["per_point"]["same_fraction"]) == 100
  assert np.mean(real_subset["per_point"]["same_fraction"]) == pytest.approx(
      real_subset["knn_same_class_fraction"]["mean"])
  assert common.read_results(env["workdir"], "embedding") == res
  assert os.path.exists(os.path.join(env["workdir"], "embedding.png"))
  # The projection is an entry of the analyses' one cache, so a re-run reuses it.
  entries = glob.glob(os.path.join(env["config"].cache_dir, "embedding_projection-*.npz"))
  assert len(entries) == 1
  assert embedding.run(env["config"], env["workdir"]) == res
  assert glob.glob(os.path.join(env["config"].cache_dir, "embedding_projection-*.npz")) == entries


def test_claims_follow_their_criteria(env):
  res = env["result"]
  rows = embedding.claims(res)
  assert rows and {r["analysis"] for r in rows} == {"embedding"}
  for r in rows:
    assert set(r) >= {"question", "analysis", "claim", "paper", "measured", "reproduced", "criterion"}
    assert r["question"] == "Q1" and isinstance(r["reproduced"], bool)
  assert rows[-1]["reproduced"] is False
  # Treat the real subset as a learned set: kNN agreement passes.
  emb = copy.deepcopy(res)
  for name in ("shuffled", "outside"):
    del emb["sets"][name]
    emb["set_order"].remove(name)
  emb["sets"]["random"]["learned"] = True
  assert embedding.claims(emb)[0]["reproduced"] is True
  # No results, no rows.
  assert analysis.claim_rows({}, ["recognition", "embedding", "pixels"]) == ([], [])
  # Method-specific rows: relabel the real subset as TM and the mislabelled set as DM.
  r = copy.deepcopy(res)
  del r["sets"]["outside"]
  r["set_order"].remove("outside")
  r["sets"]["random"].update(method="mtt", learned=True)
  r["sets"]["shuffled"]["method"] = "dm"
  boundary = next(row for row in embedding.claims(r) if row["claim"].startswith("DM points"))
  assert boundary["reproduced"] is True


def test_no_distilled_sets_raise(env, tmp_path):
  config = q1_sets.tiny_config("", env["config"].cache_dir)
  with pytest.raises(synset.DistilledSetError, match="No distilled sets"):
    embedding.run(config, str(tmp_path / "w"))


def test_config_sizes():
  for size in ("tiny", "demo", "paper"):
    config = analysis_common.add_section(analysis_common.base_config("mnist5k", size),
                                         "embedding")
    assert models.canonical_model_name(config.embedding.model)
  paper = analysis_common.add_section(analysis_common.base_config("cifar10", "paper"),
                                      "embedding")
  assert paper.embedding.model == "resnet18" and paper.embedding.umap_n_neighbors == 5
  assert paper.embedding.to_dict() == embedding.default_config().to_dict()
