"""Q3 analyses (the paper's section 5): exact LOO influence (ddjax.analysis.influence, on
ddjax.analysis.loo), influence functions against it (influence_approx), and the coherence
permutation tests (coherence).

Tiny: two 20-image "distilled" sets made from real mnist5k images (2 per class; one
perturbed and labelled "dm", one plain "random" control), a one-block width-8 ConvNet, 20
protocol-A steps, 100 test images. The three analyses run once per module and the tests read them.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.analysis import common as config_common
from ddjax import analysis, data, influence, models
from ddjax.analysis import coherence, common, loo, stats
from ddjax.analysis import influence as influence_analysis
from ddjax.analysis import influence_approx
from ddjax.distill import synset


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  root = tmp_path_factory.mktemp("semantics")
  ds = data.load_dataset("mnist5k")
  pre = data.fit_preprocessor("standardize", ds.x_train, ds.name)
  idx = data.class_balanced_indices(jax.random.PRNGKey(7), ds.y_train, 2, 10)
  x = np.asarray(pre.apply(ds.x_train[idx]), np.float32)
  y = ds.y_train[idx].astype(np.int32)
  noise = np.random.default_rng(0).normal(0, 0.3, x.shape).astype(np.float32)
  paths = {}
  for name, images in (("dm", x + noise), ("random", x)):
    paths[name] = synset.save_distilled(str(root / name / "distilled.npz"), synset.DistilledSet(
        images=images, labels=y, method=name, dataset="mnist5k", ipc=2, num_classes=10,
        preprocessor=pre))
  config = config_common.base_config("mnist5k", "tiny")
  for name in ("influence", "influence_approx", "coherence"):
    config_common.add_section(config, name)
  config.distilled = ",".join(f"{k}={v}" for k, v in paths.items())
  config.cache_dir = str(root / "real_models")
  config.influence.points_per_class = 0      # every image left out: 21 runs
  config.influence_approx.sets = "dm"
  # One conv block (instead of three) keeps the many compilations (LOO scan, CG, LiSSA,
  # Lanczos, real-model training) short; nothing here depends on the depth.
  config.model_kwargs.depth = 1
  config.real_model.model_kwargs.depth = 1
  workdir = str(root / "work")
  return {"config": config, "workdir": workdir, "root": root}


@pytest.fixture(scope="module")
def influence_results(env):
  return influence_analysis.run(env["config"], env["workdir"])


@pytest.fixture(scope="module")
def approx_results(env, influence_results):
  del influence_results
  return influence_approx.run(env["config"], env["workdir"])


@pytest.fixture(scope="module")
def coherence_results(env, influence_results):
  del influence_results
  return coherence.run(env["config"], env["workdir"])


def _saved(env, name):
  with np.load(os.path.join(env["workdir"], f"influence_{name}.npz")) as f:
    return {k: f[k] for k in f.files}


# ----------------------------------------------------------------------------- influence


def test_run_influence_equals_direct_loo_influence(env, influence_results):
  config = env["config"]
  adata = common.load_analysis_data(config)
  dset, real = adata.distilled["dm"], adata.real
  model, _ = loo.loo_model(config, real.num_classes)
  variables = models.init_variables(
      model, jax.random.fold_in(jax.random.PRNGKey(config.seed), loo.INIT),
      dset.images.shape)
  test_idx = loo.test_pool_indices(config, real)
  direct = influence.loo_influence(model, variables, dset.images, dset.labels,
                                   real.x_test[test_idx], real.y_test[test_idx],
                                   num_steps=config.protocol_a.steps,
                                   learning_rate=config.protocol_a.learning_rate,
                                   momentum=config.protocol_a.momentum)
  saved = _saved(env, "dm")
  assert saved["influence"].shape == (20, 100)
  np.testing.assert_allclose(saved["influence"], direct.influence, rtol=1e-5, atol=1e-7)
  # The sign convention: loss without image i minus loss with every image.
  np.testing.assert_allclose(saved["influence"], saved["loss_without"] - saved["loss_all"],
                             rtol=1e-12, atol=0)
  assert np.abs(saved["influence"]).max() > 1e-4  # the retrains really differ
  assert influence_results["sets"]["dm"]["loo_runs"] == 21
  # The hard-example split rests on the saved all-points model: its predictions agree
  # with the saved accuracy, and misclassified test images carry the larger losses.
  correct = influence_analysis.all_points_correct(config, real, saved)
  assert correct.mean() == pytest.approx(float(saved["accuracy_all"]), abs=1e-6)
  entry = influence_results["sets"]["dm"]
  assert entry["purity_correct"]["num_test"] == int(correct.sum())
  assert entry["hard_examples"]["pool_fraction_misclassified"] == pytest.approx(
      1 - correct.mean())
  if 0 < correct.sum() < correct.size:
    assert saved["loss_all"][~correct].mean() > saved["loss_all"][correct].mean()


def test_row_subset_equals_rows_of_full_loo():
  model = models.get_model("convnet", 3, width=2, depth=1)
  key = jax.random.PRNGKey(1)
  x = jax.random.normal(key, (6, 4, 4, 1))
  y = jnp.arange(6) % 3
  x_test = jax.random.normal(jax.random.fold_in(key, 1), (5, 4, 4, 1))
  y_test = jnp.arange(5) % 3
  variables = models.init_variables(model, key, x.shape)
  kw = dict(num_steps=10, learning_rate=0.05)
  full = loo.leave_one_out(model, variables, x, y, x_test, y_test, np.arange(6), **kw)
  part = loo.leave_one_out(model, variables, x, y, x_test, y_test, np.array([1, 4]), **kw)
  np.testing.assert_allclose(part.influence, full.influence[[1, 4]], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(part.loss_all, full.loss_all, rtol=1e-6)


def test_saved_npz_round_trips_into_json(env, influence_results):
  saved = _saved(env, "dm")
  entry = influence_results["sets"]["dm"]
  np.testing.assert_array_equal(saved["rows"], np.arange(20))
  np.testing.assert_array_equal(entry["row_labels"], np.repeat(np.arange(10), 2))
  np.testing.assert_array_equal(saved["test_labels"], np.repeat(np.arange(10), 10))
  sig = json.loads(str(saved["signature"]))
  assert sig["set"] == "dm" and sig["steps"] == env["config"].protocol_a.steps
  # JSON numbers are recomputed exactly from the saved matrix.
  k = influence_results["top_k"]
  purity = loo.class_purity(saved["influence"], saved["row_labels"], saved["test_labels"], k)
  np.testing.assert_allclose(entry["purity"]["per_image"], purity)
  assert entry["purity"]["mean"] == pytest.approx(purity.mean())
  assert entry["magnitude"]["mean_abs"] == pytest.approx(np.abs(saved["influence"]).mean())
  assert influence_results["analysis"] == "influence"
  for fig in influence_results["figures"]:
    assert os.path.getsize(os.path.join(env["workdir"], fig)) > 1000
  assert "influence_grid_dm.png" in influence_results["figures"]
  assert influence_results["sets"]["random"]["control"] is True
  assert influence_results["learned_sets"] == ["dm"]


def test_top_helped_ordering_follows_the_sign(env, influence_results):
  saved = _saved(env, "dm")
  k = influence_results["top_k"]
  top = np.asarray(influence_results["sets"]["dm"]["top_test_indices"])
  for row, got in zip(saved["influence"], top):
    expected = np.argsort(-row, kind="stable")[:k]  # largest I = most helped
    np.testing.assert_array_equal(got, saved["test_indices"][expected])
    chosen = row[expected]
    assert np.all(np.diff(chosen) <= 0)
    assert chosen[-1] >= np.delete(row, expected).max()


def test_purity_on_a_constructed_matrix():
  # Row 0 helps test images 0..2 (class 0), row 1 helps 3 (class 1) then 0, 1 (class 0).
  test_labels = np.array([0, 0, 0, 1, 1, 2])
  matrix = np.array([[5.0, 4.0, 3.0, 0.0, -1.0, 0.5],
                     [2.0, 1.5, -3.0, 9.0, 0.1, 0.0]])
  np.testing.assert_array_equal(loo.top_helped(matrix, 3), [[0, 1, 2], [3, 0, 1]])
  np.testing.assert_allclose(loo.class_purity(matrix, [0, 1], test_labels, 3), [1.0, 1 / 3])
  np.testing.assert_allclose(influence_analysis.majority_purity(matrix, test_labels, 3),
                             [1.0, 2 / 3])
  st = influence_analysis.influence_statistics(matrix, [0, 1], test_labels, 2)
  assert st["purity"]["per_image"].tolist() == [1.0, 0.5]
  assert st["purity"]["chance"] == pytest.approx((3 / 6 + 2 / 6) / 2)
  assert st["magnitude"]["mean_same_class"] == pytest.approx((4.0 + 4.55) / 2)
  # Column z-scores over two rows are +-1 (+1 for the larger): row 0 [1, 1, 1, -1, -1, 1]
  # -> top-2 tests 0, 1 (class 0); row 1 [-1, -1, -1, 1, 1, -1] -> tests 3, 4 (class 1).
  np.testing.assert_allclose(st["purity_standardized"]["per_image"], [1.0, 1.0])
  loss_all = np.array([0.1, 0.2, 0.3, 4.0, 0.5, 0.6])
  st = influence_analysis.influence_statistics(matrix, [0, 1], test_labels, 2, loss_all)
  assert st["hard_examples"]["topk_mean_loss_all"] == pytest.approx((0.1 + 0.2 + 4.0 + 0.1) / 4)
  with pytest.raises(ValueError, match="at least k"):
    loo.top_helped(matrix, 7)


def test_purity_among_correct_test_images_removes_the_hard_example_pull():
  # Test image 3 (class 1) is hard (misclassified) and every row's largest entry: it takes
  # a top-2 slot of both class-0 rows. Among correctly classified test images only, each
  # row's top 2 are its own class.
  test_labels = np.array([0, 0, 0, 1, 1, 2])
  correct = np.array([True, True, True, False, True, True])
  matrix = np.array([[5.0, 1.0, 0.5, 9.0, 0.0, 0.2],
                     [0.3, 4.0, 3.0, 8.0, -1.0, 0.1]])
  st = influence_analysis.influence_statistics(matrix, [0, 0], test_labels, 2,
                                               np.array([0.1, 0.2, 0.3, 4.0, 0.5, 0.6]), correct)
  np.testing.assert_allclose(st["purity"]["per_image"], [0.5, 0.5])
  np.testing.assert_allclose(st["purity_correct"]["per_image"], [1.0, 1.0])
  assert st["purity_correct"]["num_test"] == 5
  assert st["purity_correct"]["chance"] == pytest.approx(3 / 5)
  assert st["hard_examples"]["topk_fraction_misclassified"] == pytest.approx(0.5)
  assert st["hard_examples"]["pool_fraction_misclassified"] == pytest.approx(1 / 6)
  # The restriction is exactly purity on the kept columns.
  direct = loo.class_purity(matrix[:, correct], [0, 0], test_labels[correct], 2)
  np.testing.assert_array_equal(st["purity_correct"]["per_image"], direct)
  # Fewer correct test images than k: no purity, only the count.
  assert influence_analysis.correct_subset_purity(matrix, [0, 0], test_labels,
                                                  np.eye(6, dtype=bool)[0], 2) == {"num_test": 1}


def test_resume_skips_recomputation_and_reruns_on_changed_settings(env, influence_results,
                                                                   monkeypatch):
  def boom(*args, **kwargs):
    raise AssertionError("leave-one-out recomputed")

  monkeypatch.setattr(influence, "loo_influence", boom)
  monkeypatch.setattr(influence, "loo_retrain", boom)
  again = influence_analysis.run(env["config"], env["workdir"])
  assert all(s["resumed"] for s in again["sets"].values())
  assert again["sets"]["dm"]["purity"] == influence_results["sets"]["dm"]["purity"]
  changed = env["config"].copy_and_resolve_references()
  changed.protocol_a.steps += 1
  with pytest.raises(AssertionError, match="recomputed"):
    influence_analysis.run(changed, env["workdir"])


def test_set_selection_keeps_the_control(env):
  from types import SimpleNamespace  # pylint: disable=g-import-not-at-top
  distilled = {n: SimpleNamespace(method=n) for n in ("random", "mtt", "dm", "bptt", "kip")}
  config = env["config"].copy_and_resolve_references()
  assert loo.influence_sets(config, distilled) == ["bptt", "dm", "mtt", "kip", "random"]
  config.influence.max_sets = 2
  assert loo.influence_sets(config, distilled) == ["bptt", "dm", "random"]
  config.influence.sets = "kip,random,mtt"
  assert loo.influence_sets(config, distilled) == ["mtt", "kip", "random"]


def test_unknown_set_is_refused(env):
  config = env["config"].copy_and_resolve_references()
  config.influence.sets = "dm,nope"
  with pytest.raises(synset.DistilledSetError, match="nope"):
    influence_analysis.run(config, str(env["root"] / "other"))


# ----------------------------------------------------------------------------- statistics


def test_benjamini_hochberg_matches_hand_computation():
  p = np.array([0.01, 0.04, 0.03, 0.005, 0.2])
  # Sorted: 0.005, 0.01, 0.03, 0.04, 0.2; p*m/rank = 0.025, 0.025, 0.05, 0.05, 0.2;
  # running minimum from the top: 0.025, 0.025, 0.05, 0.05, 0.2.
  reject, q = stats.benjamini_hochberg(p, 0.05)
  np.testing.assert_allclose(q, [0.025, 0.05, 0.05, 0.025, 0.2])
  np.testing.assert_array_equal(reject, [True, True, True, True, False])
  reject, _ = stats.benjamini_hochberg(p, 0.03)
  np.testing.assert_array_equal(reject, [True, False, False, True, False])
  # A later, smaller scaled value lowers the q of earlier ones (step-up, not step-down).
  _, q = stats.benjamini_hochberg([0.04, 0.05], 0.05)
  np.testing.assert_allclose(q, [0.05, 0.05])


def test_permutation_pvalues_null_and_constructed():
  rng = np.random.default_rng(0)
  num_classes, per_class, k = 4, 25, 5
  pool_labels = np.repeat(np.arange(num_classes), per_class)
  n = pool_labels.size
  rows = 40
  row_labels = np.arange(rows) % num_classes
  features = rng.normal(size=(n, 16)).astype(np.float32)
  # Under the null (random influence, random features) p-values are about uniform.
  null = coherence.coherence_tests(jax.random.PRNGKey(0), rng.normal(size=(rows, n)),
                                   row_labels, pool_labels, features, k=k, num_draws=300)
  for stat in ("purity", "cosine", "cosine_matched", "cosine_any"):
    p = null[stat]["pvalue"]
    assert 0.3 < p.mean() < 0.7, (stat, p.mean())
    assert null[stat]["fraction_significant"] <= 0.15
    assert null[stat]["set_pvalue"] > 0.05
    assert null[stat]["fraction_significant_bh"] <= 0.05
  # Constructed: each row's top-k are k images of its class with nearly identical features.
  matrix = rng.normal(size=(rows, n)) * 0.01
  feats = features.copy()
  for i, c in enumerate(row_labels):
    members = np.flatnonzero(pool_labels == c)[:k]
    matrix[i, members] = 10.0 + np.arange(k)
  for c in range(num_classes):
    members = np.flatnonzero(pool_labels == c)[:k]
    feats[members] = rng.normal(size=16) + 0.01 * rng.normal(size=(k, 16))
  got = coherence.coherence_tests(jax.random.PRNGKey(1), matrix, row_labels, pool_labels, feats,
                                  k=k, num_draws=300)
  floor = 1 / 301
  np.testing.assert_allclose(got["purity"]["observed"], 1.0)
  # All k of one class happens by chance with probability C(25,5)/C(100,5) ~ 7e-4.
  assert np.all(got["purity"]["pvalue"] <= 4 * floor)
  assert got["purity"]["fraction_significant_bh"] == 1.0
  np.testing.assert_allclose(got["cosine"]["pvalue"], floor)
  np.testing.assert_allclose(got["cosine_matched"]["pvalue"], floor)  # pure: matched = same class
  assert got["cosine"]["fraction_significant_bh"] == 1.0
  assert got["cosine"]["set_pvalue"] == pytest.approx(floor)
  assert np.all(got["cosine"]["observed"] > 0.99)
  assert np.all(got["purity"]["hypergeometric_pvalue"] < 1e-3)
  # Features that only encode the class, and top-k of mixed classes: against random same-class
  # sets the top-k is *less* coherent, against random pool sets more, and against sets of
  # the same class composition indistinguishable (the matched null keeps the composition).
  class_feats = np.eye(16, dtype=np.float32)[pool_labels] + 0.1 * rng.normal(size=(n, 16))
  mixed = rng.normal(size=(rows, n)) * 0.01
  for i in range(rows):
    picks = np.append(rng.choice(np.flatnonzero(pool_labels == 0), 4, replace=False),
                      rng.choice(np.flatnonzero(pool_labels == 1)))
    mixed[i, picks] = 10.0 + np.arange(k)
  got = coherence.coherence_tests(jax.random.PRNGKey(2), mixed, np.zeros(rows, int), pool_labels,
                                  class_feats, k=k, num_draws=300)
  assert got["cosine"]["pvalue"].mean() > 0.8 and got["cosine"]["set_pvalue"] > 0.5
  assert got["cosine_any"]["set_pvalue"] < 0.01 and got["cosine_any"]["pvalue"].mean() < 0.2
  assert got["cosine_matched"]["set_pvalue"] > 0.05
  assert 0.2 < got["cosine_matched"]["pvalue"].mean() < 0.8
  with pytest.raises(ValueError, match="fewer than k"):
    coherence.coherence_tests(jax.random.PRNGKey(1), matrix, row_labels, pool_labels, feats,
                              k=per_class + 1, num_draws=10)


# ----------------------------------------------------------------------------- the other two


def test_influence_approx_compares_each_method(env, approx_results):
  methods = approx_results["methods"]
  assert set(methods) == {"cg", "lissa", "arnoldi", "identity"}
  assert approx_results["set_order"] == ["dm"]
  entry = approx_results["sets"]["dm"]
  assert set(entry["methods"]) == set(methods)
  assert entry["spectrum"]["lambda_min"] <= entry["spectrum"]["lambda_max"]
  assert entry["damping"] >= env["config"].influence_approx.damping
  # The matrices come back from the cache (no recomputation), as the JSON saw them.
  config = env["config"]
  adata = common.load_analysis_data(config)
  dset, real = adata.distilled["dm"], adata.real
  res = loo.exact_influence(config, env["workdir"], "dm", dset, real)
  cached = influence_approx.approx_influence(config, env["workdir"], "dm", dset, real, res)
  assert res["resumed"] and cached["resumed"]
  assert cached["meta"]["damping"] == entry["damping"]
  saved = cached["matrices"]
  exact = _saved(env, "dm")["influence"]
  np.testing.assert_array_equal(res["influence"], exact)
  for m, info in entry["methods"].items():
    if "error" in info:  # a failed solve is reported, not hidden
      assert isinstance(info["error"], str) and m != "identity"
      continue
    for stat in ("pearson", "spearman", "pearson_row_mean", "spearman_row_mean"):
      assert -1.0 <= info[stat] <= 1.0
    assert 0.0 <= info["topk_overlap"] <= 1.0
    assert info["seconds"] > 0
    cmp = influence.compare_influence(saved[m], exact, k=approx_results["top_k"])
    assert info["spearman"] == pytest.approx(cmp["spearman"])
  assert "pearson" in entry["methods"]["identity"]
  assert os.path.exists(os.path.join(env["workdir"], "influence_approx.png"))


def test_coherence_results(env, coherence_results):
  sec = env["config"].coherence
  assert coherence_results["set_order"] == ["dm", "random"]
  for name, entry in coherence_results["sets"].items():
    assert len(entry["top_test_indices"]) == 20
    for stat in coherence.COHERENCE_STATS:
      p = np.asarray(entry[stat]["pvalue"])
      assert p.shape == (20,) and np.all(p >= 1 / (sec.num_draws + 1)) and np.all(p <= 1)
      reject, _ = stats.benjamini_hochberg(p, sec.alpha)
      assert entry[stat]["fraction_significant_bh"] == pytest.approx(reject.mean())
      assert entry[stat]["fraction_significant_bh"] <= entry[stat]["fraction_significant"]
  assert os.path.exists(os.path.join(env["workdir"], "coherence.png"))


def test_claims(influence_results, approx_results, coherence_results):
  q3 = ["influence", "influence_approx", "coherence"]
  rows, problems = analysis.claim_rows({"influence": influence_results,
                                        "influence_approx": approx_results,
                                        "coherence": coherence_results}, q3)
  assert not problems
  assert [r["analysis"] for r in rows] == q3
  for r in rows:
    assert r["question"] == "Q3" and isinstance(r["reproduced"], bool)
    assert r["criterion"] and r["measured"] and r["paper"]
  assert analysis.claim_rows({}, q3) == ([], [])
  # Each module's rows come from its own JSON alone.
  assert influence_analysis.claims(influence_results) == rows[:1]
  assert influence_approx.claims(approx_results) == rows[1:2]
  assert coherence.claims(coherence_results) == rows[2:]
  assert analysis.sections(q3) == {"Q3": q3}


def test_q3_analyses_are_registered(env):
  assert [n for n in analysis.names() if analysis.question_of(n) == "Q3"] == [
      "influence", "influence_approx", "coherence"]
  for name in ("influence", "influence_approx", "coherence"):
    module = analysis.load(name)
    sized = config_common.add_section(config_common.base_config("mnist5k", "paper"), name)
    assert list(sized[name]) == list(module.default_config())  # sizes change values only
    assert env["config"][name].to_dict().keys() == module.default_config().to_dict().keys()
    assert callable(module.run) and callable(module.claims)
