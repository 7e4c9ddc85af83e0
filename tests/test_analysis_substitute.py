"""Q1 part 1 analyses (recognition, embedding, pixels) on tiny mnist5k and hand-made sets."""

import copy
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.analysis import common as analysis_common
from configs.analysis import substitute as substitute_config
from ddjax import data, models, train
from ddjax.analysis import common, substitute
from ddjax.distill import synset

IPC = 10  # images per class of the real-subset and shuffled sets (tiny: 20 train per class)
# The "outside" set: per image, these pixel values in [0, 1] scale, in these counts (of 784).
OUTSIDE_VALUES = ((-0.5, 78), (1.5, 39), (0.0, 300), (1.0, 100), (0.5, 267))


def _tiny_config(distilled: str, cache_dir: str):
  config = analysis_common.base_config("mnist5k", "tiny")
  substitute_config.add_sections(config)
  config.recognition.models = "convnet"   # one compiled training function keeps this fast
  config.distilled = distilled
  config.cache_dir = cache_dir
  return config


def _save(path, images, labels, pre, method, ipc):
  return synset.save_distilled(path, synset.DistilledSet(
      images=np.asarray(images, np.float32), labels=np.asarray(labels, np.int32), method=method,
      dataset="mnist5k", ipc=ipc, num_classes=10, preprocessor=pre))


def _outside_images(n: int) -> np.ndarray:
  """n images with exactly the pixel values of OUTSIDE_VALUES (the last image is in range)."""
  row = np.concatenate([np.full(count, v, np.float32) for v, count in OUTSIDE_VALUES])
  assert row.size == 28 * 28
  images = np.tile(row, (n, 1))
  images[-1] = np.clip(images[-1], 0.0, 1.0)
  return images.reshape(n, 28, 28, 1)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("substitute")
  probe = _tiny_config("", str(root / "cache"))
  adata = common.load_analysis_data(probe, require_distilled=False)
  real, pre = adata.real, adata.preprocessor
  idx = data.class_balanced_indices(jax.random.PRNGKey(7), real.y_train, IPC, 10)
  x_sub, y_sub = real.x_train[idx], real.y_train[idx]
  sets = root / "sets"
  _save(str(sets / "random" / "distilled.npz"), x_sub, y_sub, pre, "random", IPC)
  # Every image moved to the next class's label block: labels are all wrong.
  _save(str(sets / "shuffled" / "distilled.npz"), np.roll(x_sub, IPC, axis=0), y_sub, pre,
        "shuffled", IPC)
  outside = _outside_images(20)
  _save(str(sets / "outside" / "distilled.npz"), pre.apply(outside), np.repeat(np.arange(10), 2),
        pre, "constructed", 2)
  config = _tiny_config(str(sets), str(root / "cache"))
  workdir = str(root / "work")
  results = {"recognition": substitute.run_recognition(config, workdir),
             "embedding": substitute.run_embedding(config, workdir),
             "pixels": substitute.run_pixels(config, workdir)}
  return dict(config=config, workdir=workdir, real=real, pre=pre, results=results, root=root,
              outside=outside)


def test_recognition_matches_direct_evaluation(env):
  res, config = env["results"]["recognition"], env["config"]
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


def test_knn_class_agreement_known_answer():
  pool = np.array([[0, 0], [0, 1], [1, 0], [10, 10], [10, 11], [11, 10]], np.float32)
  pool_labels = np.array([0, 0, 0, 1, 1, 1])
  queries = np.array([[0.1, 0.1], [10.2, 10.1], [9.0, 9.0]], np.float32)
  out = substitute.knn_class_agreement(queries, np.array([0, 0, 1]), pool, pool_labels, k=3,
                                       num_classes=2)
  np.testing.assert_array_equal(out["majority"], [1.0, 0.0, 1.0])
  np.testing.assert_allclose(out["same_fraction"], [1.0, 0.0, 1.0])
  np.testing.assert_allclose(out["nn_distance"], [np.sqrt(0.02), np.sqrt(0.05), np.sqrt(2.0)],
                             rtol=1e-4)
  # Leave-one-out: a pool point is not its own neighbour.
  dist, idx = substitute.nearest_neighbours(pool, pool, 1, exclude=np.arange(6))
  np.testing.assert_array_equal(idx[:, 0], [1, 0, 0, 4, 3, 3])
  np.testing.assert_allclose(dist[:, 0], 1.0, rtol=1e-5)
  # Ties: two votes each among k=4 -> the class of the nearer neighbours wins.
  tie = substitute.knn_class_agreement(np.array([[5.0, 4.0]], np.float32), np.array([1]),
                                       np.array([[5, 5], [5, 2], [5, 6], [5, 1]], np.float32),
                                       np.array([1, 0, 1, 0]), k=4, num_classes=2)
  assert tie["majority"][0] == 1.0 and tie["same_fraction"][0] == 0.5
  with pytest.raises(ValueError, match="nearest neighbours"):
    substitute.nearest_neighbours(queries, pool, 7)


def test_embedding_separates_real_from_shuffled(env):
  res = env["results"]["embedding"]
  assert res["analysis"] == "embedding" and res["paper_counterpart"].startswith("Fig. 2 right")
  assert res["model"] == "convnet" and res["seeds"] == [0, 1] and res["k"] == 3
  assert res["feature_dim"] == 8 * 4 * 4  # width-8 ConvNet, 4x4 maps after three pools
  assert res["random_baseline"] == "random"
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


def test_pixels_out_of_range_fraction_is_exact(env):
  res = env["results"]["pixels"]
  assert res["analysis"] == "pixels" and res["invert_exact"] is True
  out = res["sets"]["outside"]
  n_img = 20
  below = 78 * (n_img - 1) / (784 * n_img)   # the last image was clipped into range
  above = 39 * (n_img - 1) / (784 * n_img)
  assert out["frac_below_0"] == pytest.approx(below, abs=1e-12)
  assert out["frac_above_1"] == pytest.approx(above, abs=1e-12)
  assert out["frac_outside"] == pytest.approx(below + above, abs=1e-12)
  assert out["frac_outside_tol"] == pytest.approx(below + above, abs=1e-12)
  assert out["frac_images_with_outside"] == pytest.approx((n_img - 1) / n_img)
  assert out["min"] == pytest.approx(-0.5, abs=1e-5) and out["max"] == pytest.approx(1.5, abs=1e-5)
  assert out["mean"] == pytest.approx(env["outside"].mean(), abs=1e-5)
  # Real pixels (exact 0s and 1s after the normalise/invert round trip) stay inside.
  assert res["real"]["frac_outside"] == 0.0 and res["sets"]["random"]["frac_outside"] == 0.0
  assert res["real"]["min"] >= -1e-5 and res["real"]["max"] <= 1 + 1e-5
  assert res["sets"]["random"]["ks_statistic"] < out["ks_statistic"]
  assert res["sets"]["random"]["wasserstein1"] < out["wasserstein1"]
  # Seeded: a re-run gives the same numbers.
  again = substitute.run_pixels(env["config"], env["workdir"])
  assert again == res == common.read_results(env["workdir"], "pixels")


def test_pixel_statistics_tolerance():
  px = np.array([[-1e-7, 0.0, 1.0, 1.0 + 1e-7, 1.02, -0.2, 0.5, 2.0]], np.float32)[..., None, None]
  s = substitute.pixel_statistics(px, round_off=1e-5, tolerance=0.05)
  assert s["frac_below_0"] == pytest.approx(1 / 8) and s["frac_above_1"] == pytest.approx(2 / 8)
  assert s["frac_outside_tol"] == pytest.approx(2 / 8)
  with pytest.raises(ValueError, match="at least one pixel"):
    substitute.pixel_statistics(np.zeros((0, 2, 2, 1)))


def test_claims_follow_their_criteria(env):
  results = env["results"]
  rows = substitute.claims(results)
  assert {r["analysis"] for r in rows} == {"recognition", "embedding", "pixels"}
  for r in rows:
    assert set(r) >= {"question", "analysis", "claim", "paper", "measured", "reproduced", "criterion"}
    assert r["question"] == "Q1" and isinstance(r["reproduced"], bool)
  by = {r["analysis"]: r for r in rows}
  # The wrongly-labelled set is "learned" here and sits at chance: not reproduced.
  assert by["recognition"]["reproduced"] is False
  assert by["embedding"]["reproduced"] is False
  assert by["pixels"]["reproduced"] is False  # the shuffled set has real pixels
  # Keep only the constructed out-of-range set as the learned one: reproduced.
  pixels = copy.deepcopy(results["pixels"])
  del pixels["sets"]["shuffled"]
  pixels["set_order"].remove("shuffled")
  assert substitute.claims({"pixels": pixels})[0]["reproduced"] is True
  # Treat the real subset as a learned set: kNN agreement passes.
  emb = copy.deepcopy(results["embedding"])
  for name in ("shuffled", "outside"):
    del emb["sets"][name]
    emb["set_order"].remove(name)
  emb["sets"]["random"]["learned"] = True
  assert substitute.claims({"embedding": emb})[0]["reproduced"] is True
  assert substitute.claims({}) == []
  # Method-specific rows: relabel the real subset as TM and the mislabelled set as DM.
  relabelled = {}
  for name in ("recognition", "embedding"):
    r = copy.deepcopy(results[name])
    del r["sets"]["outside"]
    r["set_order"].remove("outside")
    r["sets"]["random"].update(method="mtt", learned=True)
    r["sets"]["shuffled"]["method"] = "dm"
    relabelled[name] = r
  rows = {r["claim"]: r for r in substitute.claims(relabelled)}
  traj = next(r for c, r in rows.items() if c.startswith("Trajectory-matching"))
  boundary = next(r for c, r in rows.items() if c.startswith("DM points"))
  assert traj["reproduced"] is True and "p=" in traj["measured"]
  assert boundary["reproduced"] is True


def test_wrong_distilled_sets_raise(env, tmp_path):
  pre = env["pre"]
  bad_shape = _save(str(tmp_path / "c" / "distilled.npz"), np.zeros((10, 32, 32, 3)),
                    np.arange(10), data.fit_preprocessor("none", np.zeros((1, 32, 32, 3))),
                    "dm", 1)
  config = _tiny_config(f"c={bad_shape}", env["config"].cache_dir)
  with pytest.raises(synset.DistilledSetError, match="shape"):
    substitute.run_pixels(config, str(tmp_path / "w"))
  other = synset.DistilledSet(images=np.zeros((10, 28, 28, 1), np.float32),
                              labels=np.arange(10, dtype=np.int32), method="dm",
                              dataset="fashion_mnist", ipc=1, num_classes=10, preprocessor=pre)
  path = synset.save_distilled(str(tmp_path / "f" / "distilled.npz"), other)
  config = _tiny_config(f"f={path}", env["config"].cache_dir)
  with pytest.raises(synset.DistilledSetError, match="fashion_mnist"):
    substitute.run_recognition(config, str(tmp_path / "w"))
  config = _tiny_config("", env["config"].cache_dir)
  with pytest.raises(synset.DistilledSetError, match="No distilled sets"):
    substitute.run_embedding(config, str(tmp_path / "w"))
  config = _tiny_config(env["config"].distilled, env["config"].cache_dir)
  config.recognition.models = "convnet,lenet"
  with pytest.raises(ValueError, match="Unknown model 'lenet'"):
    substitute.run_recognition(config, str(tmp_path / "w"))


def test_config_sizes_and_paper_models_fit_mnist():
  for size in ("tiny", "demo", "paper"):
    config = substitute_config.add_sections(analysis_common.base_config("mnist5k", size))
    assert set(config.recognition.models.split(",")) <= set(config.recognition.epochs)
    assert models.canonical_model_name(config.embedding.model)
  paper = substitute_config.add_sections(analysis_common.base_config("cifar10", "paper"))
  assert paper.recognition.models.split(",") == [
      "convnet", "convnet_tiny", "resnet18", "resnet34", "alexnet", "vgg11"]
  assert paper.recognition.epochs.convnet == 40 and paper.recognition.epochs.convnet_tiny == 20
  assert paper.embedding.model == "resnet18" and paper.embedding.umap_n_neighbors == 5
  # Every E1 architecture builds on 28x28x1 digits and yields features and 10 logits
  # (shape-only trace: no compile).
  x = jnp.zeros((2, 28, 28, 1))
  for name in paper.recognition.models.split(","):
    model = models.get_model(name, 10)
    variables = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0), x.shape))
    logits = jax.eval_shape(lambda v: model.apply(v, x), variables)
    feats = jax.eval_shape(lambda v: model.apply(v, x, method="embed"), variables)
    assert logits.shape == (2, 10) and feats.ndim == 2 and feats.shape[0] == 2, name
