"""The distillation driver: end to end, resume, the divergence guard, the distilled-set file,
and launch/distill.py as a subprocess."""

import functools
import importlib
import json
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from configs.distill import dm as dm_config
from configs.distill import random as random_config
from ddjax import checkpoint, data, distill, errors
from ddjax.distill import base, dm, driver, random_real, synset

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _tiny(config):
  """Shrinks a quick config further: a depth-1, width-4 ConvNet, 5 test images per class."""
  for kwargs in (config.model_kwargs, config.eval.model_kwargs):
    kwargs.width, kwargs.depth = 4, 1
  config.eval.test_per_class = 5
  config.eval.protocol_a_steps = 3
  config.eval.dc_epochs = 1
  config.progress = False
  return config


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------- method configs


@pytest.mark.parametrize("method", ["bptt", "dc", "dsa", "dm", "mtt", "kip"])
def test_a_config_without_its_method_section_fails_in_one_line(method):
  module = importlib.import_module(f"configs.distill.{method}")
  config = module.get_config()
  assert distill.get_method(method).hparams(config) is config[method]
  with config.unlocked():
    del config[method]
  with pytest.raises(errors.ConfigError) as raised:
    distill.get_method(method).hparams(config)
  assert str(raised.value) == (f"Config for method {method!r} lacks its hyperparameters "
                               f"(config.{method}); build it with configs/distill/{method}.py.")
  net = base.make_model(module.get_config(), 10)
  assert type(net).__name__ == "ConvNet" and net.num_classes == 10


# ----------------------------------------------------------------------------- distilled-set file


def _valid_set(**overrides):
  labels = np.repeat(np.arange(3), 2).astype(np.int32)
  fields = dict(images=np.random.default_rng(0).normal(size=(6, 4, 4, 1)).astype(np.float32),
                labels=labels, method="dm", dataset="toy", ipc=2, num_classes=3,
                preprocessor=data.Preprocessor("standardize", mean=np.zeros(1, np.float32),
                                               std=np.ones(1, np.float32)))
  fields.update(overrides)
  return synset.DistilledSet(**fields)


def _write_raw(path, dset, drop=(), **replace):
  """Writes a distilled-set file bypassing save-time validation (to fake bad files)."""
  meta = {"method": dset.method, "dataset": dset.dataset, "ipc": dset.ipc,
          "num_classes": dset.num_classes, "learned_lr": dset.learned_lr, "config": {}}
  arrays = dict(images=dset.images, labels=dset.labels, metadata=np.asarray(json.dumps(meta)),
                **dset.preprocessor.to_arrays())
  arrays.update(replace)
  np.savez(path, **{k: v for k, v in arrays.items() if k not in drop})
  return path


def test_distilled_file_round_trip_and_rejections(tmp_path):
  good = _valid_set()
  path = synset.save_distilled(str(tmp_path / "good.npz"), good)
  loaded = synset.load_distilled(path, num_classes=3, image_shape=(4, 4, 1))
  np.testing.assert_array_equal(loaded.images, good.images)
  assert loaded.method == "dm" and loaded.ipc == 2

  nan_images = good.images.copy()
  nan_images[1, 0, 0, 0] = np.nan
  cases = {
      "NaN": (dict(images=nan_images), "NaN or infinite"),
      "shape": (dict(images=good.images[:, :, :, 0]), r"must be \[N, H, W, C\]"),
      "label count": (dict(labels=good.labels[:5]), "labels must be"),
      "class count": (dict(labels=np.array([0, 0, 1, 1, 1, 2], np.int32)), "per-class counts"),
      "label range": (dict(labels=np.array([0, 0, 1, 1, 3, 3], np.int32)), "outside"),
      "unsorted": (dict(labels=np.array([1, 1, 0, 0, 2, 2], np.int32)), "not sorted"),
  }
  for name, (replace, message) in cases.items():
    bad = _write_raw(str(tmp_path / f"bad_{name}.npz"), good, **replace)
    with pytest.raises(synset.DistilledSetError, match=message):
      synset.load_distilled(bad)
    # save_distilled refuses the same content.
    with pytest.raises(synset.DistilledSetError):
      synset.save_distilled(str(tmp_path / f"save_{name}.npz"), _valid_set(**replace))
  for key in ("images", "labels", "metadata", "preprocess_kind"):
    bad = _write_raw(str(tmp_path / f"missing_{key}.npz"), good, drop=(key,))
    with pytest.raises(synset.DistilledSetError, match=f"missing.*{key}"):
      synset.load_distilled(bad)
  with pytest.raises(synset.DistilledSetError, match="has 3 classes; the dataset has 10"):
    synset.load_distilled(path, num_classes=10)
  with pytest.raises(synset.DistilledSetError, match="the dataset's are"):
    synset.load_distilled(path, image_shape=(28, 28, 1))
  with pytest.raises(synset.DistilledSetError, match="not found"):
    synset.load_distilled(str(tmp_path / "absent.npz"))
  (tmp_path / "junk.npz").write_bytes(b"not a zip file")
  with pytest.raises(synset.DistilledSetError, match="not a readable"):
    synset.load_distilled(str(tmp_path / "junk.npz"))


# ----------------------------------------------------------------------------- divergence guard


@pytest.mark.parametrize("log_every,caught_at", [(1, 3), (5, 4)])
def test_divergence_guard_keeps_last_good_checkpoint(tmp_path, monkeypatch, log_every, caught_at):
  """NaN images from iteration 3 on: caught at the next log or checkpoint, whichever comes
  first; the checkpoint of iteration 2 stays the latest, and nothing else is written."""
  original = random_real.distill_step

  def poisoned(config, state, key, real, aux=None):
    state, metrics = original(config, state, key, real, aux)
    return state.replace(images=jnp.where(state.step >= 3, jnp.nan, state.images)), metrics

  monkeypatch.setattr(random_real, "distill_step", poisoned)
  config = _tiny(random_config.get_config("quick,ipc=2"))
  config.num_iterations = 6
  config.log_every = log_every
  config.checkpoint_every = 2
  workdir = str(tmp_path / "run")
  with pytest.raises(base.DistillationDiverged,
                     match=rf"iteration {caught_at}.*synthetic images contain NaN.*"
                           r"last good checkpoint \(iteration 2\) is kept"):
    driver.run_distillation(config, workdir)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  assert ckpt.all_steps() == [2]
  template = random_real.init_state(config, jax.random.PRNGKey(0), _real_data(config))
  state, meta = ckpt.restore(template)
  ckpt.close()
  assert int(state.step) == 2 and meta["iteration"] == 2
  assert np.all(np.isfinite(state.images))
  assert not os.path.exists(os.path.join(workdir, driver.DISTILLED_FILE))
  assert not os.path.exists(os.path.join(workdir, driver.RESULTS_FILE))


def _real_data(config):
  ds, _ = driver.load_data(config)
  return base.make_real_data(ds.x_train, ds.y_train, ds.num_classes)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_driver_end_to_end_with_resume(tmp_path, caplog):
  config = _tiny(dm_config.get_config("quick,ipc=2"))
  config.dm.dsa_strategy = "crop_scale"  # fewer families: a shorter compile
  config.eval.every = 1
  config.eval.dc_augment = "flip"
  workdir = str(tmp_path / "dm")
  first = driver.run_distillation(config, workdir)
  assert first["iterations"] == 2 and 0.0 <= first["protocol_a_mean"] <= 1.0
  assert len(first["protocol_a_all"]) == 2 and 0.0 <= first["dc_mean"] <= 1.0
  records = _metrics(workdir)
  assert [r["step"] for r in records if "loss" in r] == [1, 2]
  # Periodic evaluation starts at iteration 0 (the initialisation: the curve's first point).
  assert [r["step"] for r in records if "eval_protocol_a_mean" in r] == [0, 1, 2]

  # Resume with one more iteration: continues from the checkpoint at 2 ...
  config.num_iterations = 3
  with caplog.at_level(logging.INFO):
    second = driver.run_distillation(config, workdir)
  assert "Resumed from checkpoint at iteration 2" in caplog.text
  assert [r["step"] for r in _metrics(workdir) if "loss" in r] == [1, 2, 3]
  # ... and ends exactly where an uninterrupted 3-iteration run does.
  real = _real_data(config)
  state = dm.init_state(config, driver.prng_keys(config)["init"], real)
  step = jax.jit(functools.partial(dm.distill_step, config))
  for i in range(3):
    state, _ = step(state, driver.iteration_key(config, i), real)
  dset = synset.load_distilled(os.path.join(workdir, driver.DISTILLED_FILE), num_classes=10,
                               image_shape=(28, 28, 1))
  np.testing.assert_allclose(dset.images, state.images, rtol=1e-5, atol=1e-6)
  assert dset.method == "dm" and dset.ipc == 2 and dset.preprocessor.kind == "standardize"
  assert dset.config["dm"]["lr_img"] == config.dm.lr_img and dset.learned_lr is None
  results = json.load(open(os.path.join(workdir, driver.RESULTS_FILE)))
  assert results["iterations"] == 3 and results["protocol_a_mean"] == second["protocol_a_mean"]
  assert results["distill_seconds"] > 0
  grid = Image.open(os.path.join(workdir, driver.GRID_FILE))
  assert grid.size == (2 * 29 + 1, 10 * 29 + 1)  # one row per class, ipc columns

  # Another config in the same workdir: refused, checkpoints untouched.
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  config.ipc = 3
  with pytest.raises(errors.WorkdirConfigMismatch, match=r"ipc: 2 -> 3"):
    driver.run_distillation(config, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before


def _launch(config, *flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "launch.distill", f"--config={config}",
                         "--config.progress=False", *flags], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_launch_distill_subprocess(tmp_path):
  workdir = str(tmp_path / "dm")
  tiny = ["--config.model_kwargs.depth=1", "--config.eval.model_kwargs.depth=1",
          "--config.eval.test_per_class=5", "--config.eval.dc_protocol=False",
          "--config.dm.dsa_strategy=flip", "--config.num_iterations=1"]
  run = _launch("configs/distill/dm.py:quick,ipc=1", f"--workdir={workdir}", *tiny)
  assert run.returncode == 0, run.stderr[-3000:]
  assert "protocol_a=" in run.stdout and "(dm on mnist5k, ipc 1, 1 iterations" in run.stdout
  for name in (driver.DISTILLED_FILE, driver.RESULTS_FILE, driver.GRID_FILE, "config.json"):
    assert os.path.exists(os.path.join(workdir, name)), name
  assert synset.load_distilled(os.path.join(workdir, driver.DISTILLED_FILE)).method == "dm"

  # A user error is one line, not a stack trace.
  bad = _launch("configs/distill/dm.py:quick", f"--workdir={tmp_path / 'bad'}",
                "--config.dataset=not_a_dataset")
  assert bad.returncode != 0
  assert "error: DatasetError: Unknown dataset 'not_a_dataset'" in bad.stderr
  assert "Traceback" not in bad.stderr
