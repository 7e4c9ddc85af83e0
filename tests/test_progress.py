"""Distilling to a plateau: the plateau test, image drift, the driver's early stop, its
resume, and the progress figure."""

import json
import os

import numpy as np
import pytest

from configs.distill import common as distill_common
from configs.distill import dm as dm_config
from ddjax.distill import driver, progress, synset


def _history(accuracies, every=2):
  return [{"iteration": i * every, "protocol_a_mean": a, "protocol_a_std": 0.0}
          for i, a in enumerate(accuracies)]


# ----------------------------------------------------------------------------- plateau test


def test_plateau_check_measures_the_last_quarter():
  # Evaluations at 0, 2, ..., 16. At 16 the reference is the last one at or before 12.
  hist = _history([0.1, 0.5, 0.7, 0.80, 0.85, 0.88, 0.900, 0.902, 0.904])
  check = progress.plateau_check(hist, min_gain=0.005)
  assert check["iteration"] == 16 and check["reference_iteration"] == 12
  assert check["gain"] == pytest.approx(0.904 - 0.900)
  assert check["reached"]
  # A larger gain over the same span is no plateau; a smaller threshold neither.
  assert not progress.plateau_check(hist, min_gain=0.003)["reached"]
  assert not progress.plateau_check(hist[:-2], min_gain=0.005)["reached"]  # 0.88 -> 0.90 at 12
  # The fraction moves the reference: the last half of 16 starts at 8.
  half = progress.plateau_check(hist, min_gain=0.005, fraction=0.5)
  assert half["reference_iteration"] == 8 and not half["reached"]


def test_plateau_check_guards():
  hist = _history([0.5, 0.5, 0.5, 0.5])
  assert not progress.plateau_check(hist, min_gain=0.0)["reached"]       # test off
  assert not progress.plateau_check(hist, 0.005, min_iterations=8)["reached"]
  assert progress.plateau_check(hist, 0.005, min_iterations=6)["reached"]
  assert not progress.plateau_check(hist[:1], 0.005)["reached"]           # nothing to compare
  assert progress.plateau_check([], 0.005) == {"reached": False, "gain": None, "iteration": None,
                                               "reference_iteration": None}
  with pytest.raises(ValueError, match="fraction"):
    progress.plateau_check(hist, 0.005, fraction=1.0)


def test_image_correlation():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(5, 6, 6, 1))
  np.testing.assert_allclose(progress.image_correlation(x, x), 1.0)
  # Invariant to a per-image affine map (so pixel space and standardised space agree).
  np.testing.assert_allclose(progress.image_correlation(3.0 * x + 2.0, x), 1.0)
  np.testing.assert_allclose(progress.image_correlation(-x, x), -1.0)
  y = rng.normal(size=x.shape)
  naive = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(x, y)]
  np.testing.assert_allclose(progress.image_correlation(x, y), naive, rtol=1e-12)
  assert progress.image_correlation(np.zeros_like(x), x).tolist() == [0.0] * 5
  with pytest.raises(ValueError, match="one shape"):
    progress.image_correlation(x, x[:3])


def test_pick_iterations():
  assert progress.pick_iterations([0, 5, 10]) == [0, 5, 10]
  picked = progress.pick_iterations(range(0, 1001, 50), 5)
  assert picked[0] == 0 and picked[-1] == 1000 and len(picked) == 5


# ----------------------------------------------------------------------------- the driver


def _plateau_config(cap=40):
  config = dm_config.get_config("quick,ipc=2")
  for kwargs in (config.model_kwargs, config.eval.model_kwargs):
    kwargs.width, kwargs.depth = 4, 1
  config.dm.dsa_strategy = "none"
  config.eval.test_per_class = 5
  config.eval.dc_protocol = False
  config.progress = False
  distill_common.converge(config, cap=cap, every=2)
  config.eval.plateau_gain = 0.01
  return config


# Accuracy by evaluation index: rises, then flattens. Evaluations at iterations 0, 2, ...;
# at iteration 16 (index 8) the gain since iteration 12 (index 6) is 0.003 < 0.01.
SCHEDULE = [0.1, 0.4, 0.6, 0.7, 0.76, 0.79, 0.800, 0.802, 0.803, 0.9, 0.9, 0.9]


class _ScriptedEvaluator:
  """Stands in for driver.Evaluator: returns SCHEDULE[k] at the k-th call."""

  def __init__(self, start=0, fail_at=None):
    self.calls, self.fail_at = start, fail_at

  def __call__(self, key, images, labels, dc_lr=None):
    if self.calls == self.fail_at:
      raise KeyboardInterrupt("killed during evaluation")
    acc = SCHEDULE[self.calls]
    self.calls += 1
    return {"protocol_a_mean": acc, "protocol_a_std": 0.01, "protocol_a_all": [acc]}


def _patch(monkeypatch, scripted):
  monkeypatch.setattr(driver, "Evaluator", lambda *a, **k: scripted)


def test_driver_stops_at_the_plateau_and_resumes_identically(tmp_path, monkeypatch):
  config = _plateau_config()
  _patch(monkeypatch, _ScriptedEvaluator())
  full = driver.run_distillation(config, str(tmp_path / "full"))
  assert full["stop_reason"] == "plateau" and full["iterations"] == 16
  assert [h["iteration"] for h in full["eval_history"]] == list(range(0, 17, 2))
  assert full["plateau"]["reference_iteration"] == 12
  assert full["eval_history"][0]["init_correlation"] == 1.0
  assert full["eval_history"][-1]["init_correlation"] < 1.0   # DM moved the images
  assert full["init_correlation"] == full["eval_history"][-1]["init_correlation"]
  assert os.path.exists(full["progress"])
  snapshots = progress.load_snapshots(str(tmp_path / "full"))
  assert sorted(snapshots) == list(range(0, 17, 2))

  # Killed during the evaluation at iteration 8 (the 5th call), then re-run: the same
  # history, stop and images as the uninterrupted run.
  workdir = str(tmp_path / "killed")
  _patch(monkeypatch, _ScriptedEvaluator(fail_at=4))
  with pytest.raises(KeyboardInterrupt):
    driver.run_distillation(config, workdir)
  _patch(monkeypatch, _ScriptedEvaluator(start=4))
  resumed = driver.run_distillation(config, workdir)
  assert resumed["eval_history"] == full["eval_history"]
  assert resumed["iterations"] == 16 and resumed["stop_reason"] == "plateau"
  a = synset.load_distilled(full["distilled"])
  b = synset.load_distilled(resumed["distilled"])
  np.testing.assert_array_equal(a.images, b.images)

  # A finished run re-run does not go on: the plateau test is re-applied, nothing trains.
  _patch(monkeypatch, _ScriptedEvaluator(start=8))
  again = driver.run_distillation(config, workdir)
  assert again["iterations"] == 16 and again["stop_reason"] == "plateau"
  with open(os.path.join(workdir, driver.RESULTS_FILE)) as f:
    assert json.load(f)["eval_history"] == full["eval_history"]


def test_driver_reports_the_cap_when_no_plateau(tmp_path, monkeypatch):
  config = _plateau_config(cap=6)
  _patch(monkeypatch, _ScriptedEvaluator())
  result = driver.run_distillation(config, str(tmp_path / "run"))
  assert result["stop_reason"] == "cap" and result["iterations"] == 6
  assert [h["iteration"] for h in result["eval_history"]] == [0, 2, 4, 6]
  assert result["plateau"]["reached"] is False
