"""The pixels analysis (the paper's Fig. 3 left) on tiny mnist5k and hand-made sets."""

import copy

import numpy as np
import pytest

from ddjax import data
from ddjax.analysis import common, pixels
from ddjax.distill import synset

import q1_sets  # tests/q1_sets.py


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  env = q1_sets.make_env(tmp_path_factory, "pixels")
  env["result"] = pixels.run(env["config"], env["workdir"])
  return env


def test_pixels_out_of_range_fraction_is_exact(env):
  res = env["result"]
  assert res["analysis"] == "pixels" and res["invert_exact"] is True
  assert res["set_order"] == ["outside", "shuffled", "random"]  # learned sets first, random last
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
  again = pixels.run(env["config"], env["workdir"])
  assert again == res == common.read_results(env["workdir"], "pixels")


def test_pixel_statistics_tolerance():
  px = np.array([[-1e-7, 0.0, 1.0, 1.0 + 1e-7, 1.02, -0.2, 0.5, 2.0]], np.float32)[..., None, None]
  s = pixels.pixel_statistics(px, round_off=1e-5, tolerance=0.05)
  assert s["frac_below_0"] == pytest.approx(1 / 8) and s["frac_above_1"] == pytest.approx(2 / 8)
  assert s["frac_outside_tol"] == pytest.approx(2 / 8)
  with pytest.raises(ValueError, match="at least one pixel"):
    pixels.pixel_statistics(np.zeros((0, 2, 2, 1)))


def test_claims_follow_their_criteria(env):
  res = env["result"]
  rows = pixels.claims(res)
  assert len(rows) == 1 and rows[0]["analysis"] == "pixels"
  assert set(rows[0]) >= {"question", "analysis", "claim", "paper", "measured", "reproduced",
                          "criterion"}
  assert rows[0]["question"] == "Q1" and isinstance(rows[0]["reproduced"], bool)
  assert rows[0]["reproduced"] is False  # the shuffled set has real pixels
  # Keep only the constructed out-of-range set as the learned one: reproduced.
  only_outside = copy.deepcopy(res)
  del only_outside["sets"]["shuffled"]
  only_outside["set_order"].remove("shuffled")
  assert pixels.claims(only_outside)[0]["reproduced"] is True


def test_learned_names_follow_the_jsons_set_order():
  sets = {"random": {"learned": False}, "mtt": {"learned": True}, "dm": {"learned": True}}
  assert common.learned_names({"sets": sets, "set_order": ["dm", "mtt", "random"]}) == [
      "dm", "mtt"]
  assert common.learned_names({"sets": sets}) == ["mtt", "dm"]  # no set_order: as in `sets`
  assert common.learned_names({}) == []


def test_wrong_distilled_sets_raise(env, tmp_path):
  bad_shape = q1_sets.save(str(tmp_path / "c" / "distilled.npz"), np.zeros((10, 32, 32, 3)),
                           np.arange(10), data.fit_preprocessor("none", np.zeros((1, 32, 32, 3))),
                           "dm", 1)
  config = q1_sets.tiny_config(f"c={bad_shape}", env["config"].cache_dir)
  with pytest.raises(synset.DistilledSetError, match="shape"):
    pixels.run(config, str(tmp_path / "w"))
