"""The mixing and sensitivity analyses (the paper's section 3) and their shared library
(ddjax.analysis.training_setup): additions, training setups, the run cache, JSON and claims."""

import glob
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs.analysis import common as analysis_config
from ddjax import analysis, classifier, models, train
from ddjax.analysis import common, mixing, report, sensitivity
from ddjax.analysis import training_setup as ts
from ddjax.distill import synset

IPC = 2


def _config(distilled: str, **mixing_fields):
  config = analysis_config.base_config("mnist5k", "tiny")
  analysis_config.add_section(config, "mixing")
  analysis_config.add_section(config, "sensitivity")
  config.distilled = distilled
  config.protocol_a.steps = 10
  config.model_kwargs.depth = 1  # compile time dominates these tests (depth 3: ~2.5x)
  config.mixing.additions = "0,2"
  config.sensitivity.variants = "standard,adam,minibatch"
  config.sensitivity.minibatch_size = 5
  config.cache_dir = ""
  for k, v in mixing_fields.items():
    config.mixing[k] = v
  return config


@pytest.fixture(scope="module")
def sets_dir(tmp_path_factory):
  """Tiny distilled sets in the tiny config's model space: random (baseline), a perturbed
  real subset (hard labels) and a soft-labelled one (learned-label style)."""
  root = tmp_path_factory.mktemp("sets")
  config = _config("")
  real, pre = classifier.load_preprocessed(common.real_data_config(config))
  key = jax.random.PRNGKey(42)
  idx = np.concatenate([np.flatnonzero(real.y_train == c)[-IPC:] for c in range(10)])
  x, y = real.x_train[idx], real.y_train[idx].astype(np.int32)
  noise = 0.3 * np.asarray(jax.random.normal(key, x.shape), np.float32)
  soft = np.eye(10, dtype=np.float32)[y] * 0.8 + 0.02
  for name, images, labels in (("random", x, y), ("pert", x + noise, y),
                               ("soft", x - noise, soft)):
    synset.save_distilled(str(root / name / "distilled.npz"), synset.DistilledSet(
        images=images, labels=labels, method=name, dataset="mnist5k", ipc=IPC,
        num_classes=10, preprocessor=pre))
  return str(root)


# ----------------------------------------------------------------------------- pieces


def test_addition_indices_nested_balanced_seeded():
  labels = np.repeat(np.arange(10), 30)
  key = jax.random.PRNGKey(1)
  idx = ts.addition_indices(key, labels, [0, 2, 10], 10)
  assert idx[0].size == 0
  for k in (2, 10):
    np.testing.assert_array_equal(np.bincount(labels[idx[k]], minlength=10), np.full(10, k))
    assert len(set(idx[k].tolist())) == idx[k].size  # distinct images
  assert set(idx[2].tolist()) <= set(idx[10].tolist())
  # Per class, the 2 are the first 2 of the 10 (the paper's shuffle-then-take-first-k).
  np.testing.assert_array_equal(idx[10].reshape(10, 10)[:, :2].ravel(), idx[2])
  again = ts.addition_indices(key, labels, [2, 10], 10)
  np.testing.assert_array_equal(again[10], idx[10])
  other = ts.addition_indices(jax.random.PRNGKey(2), labels, [10], 10)
  assert not np.array_equal(other[10], idx[10])
  with pytest.raises(ValueError, match="cannot sample"):
    ts.addition_indices(key, labels, [31], 10)


def test_mix_gives_real_images_one_hot_labels_when_soft():
  x = np.zeros((4, 2, 2, 1), np.float32)
  soft = np.full((4, 3), 0.2, np.float32)
  xm, ym = ts.mix(x, soft, np.ones((2, 2, 2, 1)), np.array([2, 0]), 3)
  assert xm.shape == (6, 2, 2, 1) and ym.shape == (6, 3)
  np.testing.assert_array_equal(ym[4:], [[0, 0, 1], [1, 0, 0]])
  xm, ym = ts.mix(x, np.array([0, 1, 2, 0], np.int32), np.ones((2, 2, 2, 1)), np.array([2, 0]), 3)
  assert ym.dtype == np.int32 and ym.tolist() == [0, 1, 2, 0, 2, 0]


def test_parse_variant_fields_and_errors():
  std = ts.TrainingSetup(name="standard", model="convnet",
                         model_kwargs=(("norm", "instancenorm"), ("width", 32)),
                         learning_rate=0.01, momentum=0.9, num_steps=300)
  parse = lambda n: ts.parse_variant(n, std, adam_lr=1e-3, minibatch_size=10,
                                     augment_strategy="color_crop")
  assert parse("standard") == std
  assert parse("adam").optimizer == "adam" and parse("adam").learning_rate == 1e-3
  assert parse("lr_x0.1").learning_rate == pytest.approx(0.001)
  assert parse("lr_x10").learning_rate == pytest.approx(0.1)
  assert parse("steps_1000").num_steps == 1000
  assert parse("minibatch").batch_size == 10 and parse("minibatch_32").batch_size == 32
  assert parse("minibatch").steps_run(100) == 300 and parse("minibatch_32").steps_run(100) == 300
  assert parse("minibatch_30").steps_run(100) == 300   # 4 steps/epoch -> 75 epochs
  assert parse("minibatch_8").steps_run(100) == 312  # whole epochs: 13 per epoch x 24
  assert parse("augment").augment == "color_crop"
  assert parse("wd_5e-4").weight_decay == pytest.approx(5e-4)
  assert dict(parse("norm_batchnorm").model_kwargs)["norm"] == "batchnorm"
  tiny = parse("arch_convnet_tiny")
  assert tiny.model == "convnet_tiny" and "width" not in dict(tiny.model_kwargs)
  assert parse("arch_ResNet-18").model == "resnet18"
  for bad, match in (("sgd", "Unknown training-setup variant 'sgd'"),
                     ("lr_xfast", "not a valid number"), ("steps_-5", "not a valid|positive"),
                     ("steps_0", "positive"), ("norm_groupnorm", "unknown norm"),
                     ("arch_lenet", "Unknown model"), ("", "non-empty")):
    with pytest.raises(ValueError, match=match):
      parse(bad)
  assert ts.default_augment_strategy("mnist5k") == "color_crop_cutout_scale_rotate"
  assert "flip" in ts.default_augment_strategy("cifar10")


def test_unknown_variant_fails_before_any_work(tmp_path):
  config = _config("/nonexistent")  # the name is checked before any data is read
  config.sensitivity.variants = "standard,adamw"
  with pytest.raises(ValueError, match="Unknown training-setup variant 'adamw'"):
    sensitivity.run(config, str(tmp_path))


def test_vmapped_seeds_equal_python_loop():
  """The augment + minibatch path uses both init and train keys: vmap == per-seed loop."""
  model_kwargs = (("conv_impl", "im2col"), ("depth", 1), ("width", 4))
  setup = ts.TrainingSetup(name="augment", model="convnet", model_kwargs=model_kwargs,
                           num_steps=6, batch_size=8, augment="cutout")
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (16, 12, 12, 1))
  y = jnp.arange(16) % 4
  keys = ts.seed_keys(3, 3)
  acc, finite = ts.setup_accuracies(setup, keys, x, y, x, y, 4)
  one = jax.jit(ts.seed_run_fn(setup, 4))
  loop = np.array([float(one(k, x, y, x, y)[0]) for k in keys])
  np.testing.assert_allclose(acc, loop, atol=1e-6)
  assert finite.all() and acc.shape == (3,)


def test_make_optimizer_is_the_old_rule_through_optim_make():
  """SGD (momentum, decay) and Adam (decay added to the gradient first) update exactly as
  the pre-factory rules did."""
  params = {"w": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.arange(3.0)}
  grads = [jax.tree_util.tree_map(lambda p, i=i: jnp.sin(p * (i + 1)) + 0.1, params)
           for i in range(4)]
  base = ts.TrainingSetup(name="s", model="convnet", model_kwargs=())
  for setup, reference in (
      (base, optax.sgd(0.01, momentum=0.9)),
      (ts.parse_variant("wd_5e-4", base),
       optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.01, momentum=0.9))),
      (ts.parse_variant("adam", base), optax.adam(1e-3)),
      (ts.TrainingSetup(name="a", model="convnet", model_kwargs=(), optimizer="adam",
                        learning_rate=1e-3, momentum=0.0, weight_decay=1e-2),
       optax.chain(optax.add_decayed_weights(1e-2), optax.adam(1e-3)))):
    tx = ts.make_optimizer(setup)
    p_new, s_new = params, tx.init(params)
    p_ref, s_ref = params, reference.init(params)
    for g in grads:
      u_new, s_new = tx.update(g, s_new, p_new)
      u_ref, s_ref = reference.update(g, s_ref, p_ref)
      p_new, p_ref = optax.apply_updates(p_new, u_new), optax.apply_updates(p_ref, u_ref)
    for a, b in zip(jax.tree_util.tree_leaves(p_new), jax.tree_util.tree_leaves(p_ref)):
      np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match="Unknown optimizer"):
    ts.make_optimizer(ts.TrainingSetup(name="x", model="convnet", model_kwargs=(),
                                       optimizer="rmsprop"))


def test_registry_lists_the_analyses_not_the_library():
  names = analysis.names()
  assert "training_setup" not in names
  assert names.index("mixing") < names.index("sensitivity")
  assert analysis.question_of("mixing") == analysis.question_of("sensitivity") == "Q1"
  assert (mixing.POSITION, sensitivity.POSITION) == (4, 5)
  assert mixing.default_config().additions == "0,2,10,50,250"
  assert "standard" in sensitivity.default_config().variants


# ----------------------------------------------------------------------------- analyses


def _check_entry(entry, n):
  assert len(entry["accuracy"]) == n and entry["n"] == n
  for field in ("mean", "std"):
    assert 0.0 <= entry[field] <= 1.0
  assert entry["ci_low"] <= entry["mean"] <= entry["ci_high"]
  assert np.all((np.asarray(entry["accuracy"]) >= 0) & (np.asarray(entry["accuracy"]) <= 1))


def test_mixing_json_equals_protocol_a_and_resumes(sets_dir, tmp_path, monkeypatch):
  config = _config(sets_dir)
  workdir = str(tmp_path / "mix")
  results = mixing.run(config, workdir)
  with open(os.path.join(workdir, "mixing.json")) as f:
    assert json.load(f)["sets"].keys() == results["sets"].keys()
  assert results["analysis"] == "mixing" and results["paper_counterpart"]
  assert results["figures"] == ["mixing.png"]
  assert os.path.getsize(os.path.join(workdir, "mixing.png")) > 0
  assert results["additions"] == [0, 2] and results["num_seeds"] == 2
  assert results["baseline"] == "random" and results["baseline_source"] == "given"
  assert list(results["sets"]) == ["pert", "soft", "random"]  # baseline last
  assert results["sets"]["soft"]["soft_labels"] and not results["sets"]["pert"]["soft_labels"]
  assert results["sets"]["random"]["is_baseline"]
  for entry in results["sets"].values():
    for k in (0, 2):
      e = entry["additions"][str(k)]
      _check_entry(e, 2)
      assert e["num_images"] == 10 * IPC + 10 * k
    assert entry["additions"]["0"]["gain_vs_0"]["mean"] == 0.0
  # +0 is exactly protocol A on the distilled set alone, with the same seeds.
  data_ = common.load_analysis_data(config)
  for name in ("pert", "soft"):
    dset = data_.distilled[name]
    model = models.get_model(config.model, 10, **dict(config.model_kwargs))
    direct = train.protocol_a_accuracy(
        model, ts.seed_keys(config.seed, 2), jnp.asarray(dset.images), jnp.asarray(dset.labels),
        jnp.asarray(data_.real.x_test), jnp.asarray(data_.real.y_test), num_steps=10)
    np.testing.assert_allclose(results["sets"][name]["additions"]["0"]["accuracy"],
                               np.asarray(direct), atol=1e-6)
  # Re-running resumes from the cached runs: nothing is retrained, results are identical.
  monkeypatch.setattr(ts, "setup_accuracies", lambda *a, **k: pytest.fail("retrained"))
  again = mixing.run(config, workdir)
  for name in results["sets"]:
    assert again["sets"][name] == results["sets"][name]
  rows = mixing.claims(results)
  assert len(rows) == 2 and all(isinstance(r["reproduced"], bool) for r in rows)
  assert all(r["question"] == "Q1" and r["analysis"] == "mixing" for r in rows)
  # One cache entry (npz, in the analyses' cache) per run; no JSON-dict cache any more.
  entries = glob.glob(os.path.join(workdir, "cache", "training_setup_standard-*.npz"))
  assert len(entries) == 3 * 2  # 3 sets x 2 additions
  assert not os.path.exists(os.path.join(workdir, "training_setup_runs.json"))
  # Sensitivity's `standard` run of a set IS mixing's +0 run (same steps and seeds): read
  # back from the same entry, not trained again (setup_accuracies still fails).
  config.sensitivity.variants = "standard"
  sens = sensitivity.run(config, workdir)
  for name in results["sets"]:
    assert (sens["sets"][name]["variants"]["standard"]["accuracy"]
            == results["sets"][name]["additions"]["0"]["accuracy"])
  assert len(glob.glob(os.path.join(workdir, "cache", "*.npz"))) == len(entries)


def test_sensitivity_json_with_drawn_baseline(sets_dir, tmp_path):
  config = _config(f"pert={sets_dir}/pert/distilled.npz")  # no 'random': the baseline is drawn
  results = sensitivity.run(config, str(tmp_path))
  assert results["analysis"] == "sensitivity" and results["figures"] == ["sensitivity.png"]
  assert os.path.getsize(tmp_path / "sensitivity.png") > 0
  assert results["baseline_source"] == "drawn" and list(results["sets"]) == ["pert", "random"]
  assert set(results["variants"]) == {"standard", "adam", "minibatch"}
  assert results["variants"]["minibatch"]["batch_size"] == 5
  assert results["variants"]["minibatch"]["steps_run"]["pert"] == 12  # 4 per epoch, 3 epochs
  for entry in results["sets"].values():
    for v in results["variants"]:
      e = entry["variants"][v]
      _check_entry(e, 2)
      assert e["finite_fraction"] == 1.0
    std = entry["variants"]["standard"]
    assert std["relative_to_standard"] == pytest.approx(1.0)
    assert std["drop"]["mean"] == 0.0
    adam = entry["variants"]["adam"]
    np.testing.assert_allclose(adam["drop"]["mean"], std["mean"] - adam["mean"], atol=1e-9)
  # Excess drop = the set's drop minus the baseline's drop; zero for the baseline itself.
  base = results["sets"]["random"]["variants"]["adam"]
  assert base["excess_drop"]["mean"] == pytest.approx(0.0, abs=1e-12)
  pert = results["sets"]["pert"]["variants"]["adam"]
  assert pert["excess_drop"]["mean"] == pytest.approx(pert["drop"]["mean"] - base["drop"]["mean"])
  assert results["summary"]["adam"]["num_sets"] == 1
  # Standard == protocol A on the same seeds (the same function underlies mixing's +0).
  data_ = common.load_analysis_data(config)
  model = models.get_model(config.model, 10, **dict(config.model_kwargs))
  direct = train.protocol_a_accuracy(
      model, ts.seed_keys(config.seed, 2), jnp.asarray(data_.distilled["pert"].images),
      jnp.asarray(data_.distilled["pert"].labels), jnp.asarray(data_.real.x_test),
      jnp.asarray(data_.real.y_test), num_steps=10)
  np.testing.assert_allclose(results["sets"]["pert"]["variants"]["standard"]["accuracy"],
                             np.asarray(direct), atol=1e-6)
  (row,) = sensitivity.claims(results)
  assert row["analysis"] == "sensitivity" and isinstance(row["reproduced"], bool)


# ----------------------------------------------------------------------------- claims


def _fake_mixing(base_gain, gains, top=None):
  def entry(gain, baseline=False):
    adds = {"0": {"mean": 0.5, "gain_vs_0": {"mean": 0.0}},
            "10": {"mean": 0.5 + gain, "gain_vs_0": {"mean": gain}}}
    if top is not None:
      adds["250"] = {"mean": top + (0.0 if baseline else gain), "gain_vs_0": {"mean": 0.0}}
    return {"is_baseline": baseline, "additions": adds}
  sets = {f"s{i}": entry(g) for i, g in enumerate(gains)}
  sets["random"] = entry(base_gain, True)
  return {"additions": [0, 10] + ([250] if top is not None else []), "baseline": "random",
          "sets": sets}


def test_claims_criteria():
  rows = mixing.claims(_fake_mixing(0.05, [-0.02, -0.08, 0.01]))
  assert [r["reproduced"] for r in rows] == [True, True]
  rows = mixing.claims(_fake_mixing(0.05, [0.06, -0.08, -0.01]))
  assert [r["reproduced"] for r in rows] == [False, True]   # one set gains more than baseline
  rows = mixing.claims(_fake_mixing(-0.01, [-0.02, -0.03]))
  assert [r["reproduced"] for r in rows] == [True, False]   # baseline must rise
  rows = mixing.claims(_fake_mixing(0.05, [-0.01, -0.02], top=0.6))
  assert len(rows) == 3 and rows[2]["reproduced"]           # spread 0.02 at +250
  summary = {"adam": {"mean_excess_drop": 0.1, "baseline_drop": 0.0, "mean_distilled_drop": 0.1,
                      "num_sets_dropping_more": 2, "num_sets": 2},
             "lr_x10": {"mean_excess_drop": -0.02, "baseline_drop": 0.1,
                        "mean_distilled_drop": 0.08, "num_sets_dropping_more": 0, "num_sets": 2}}
  (row,) = sensitivity.claims({"summary": summary})
  assert not row["reproduced"]                              # 1 of 2 variants is not a majority
  summary["steps_100"] = dict(summary["adam"])
  (row,) = sensitivity.claims({"summary": summary})
  assert row["reproduced"] and "criterion" in row
  assert mixing.claims({}) == [] and sensitivity.claims({}) == []
  for r in rows + [row]:
    report.validate_claim(r)  # the report's contract for a claim row
