"""The side-by-side benchmark harness (launch/benchmark.py, benchmarks/suite.py)."""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import suite
from launch import benchmark

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
TORCH_PYTHON = os.path.join(ROOT, ".bench-venv", "bin", "python")


def _harness(tmp_path, *flags):
  out = tmp_path / "bench.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-m", "launch.benchmark", "--size=small", "--repeats=1",
                         "--warmup=1", f"--out={out}", *flags], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out) as f:
    return proc.stdout, json.load(f)


MEASURE_CHILDREN = """
import json, sys
from launch import benchmark
big = benchmark.run_child([sys.executable, "-c",
                           "import numpy as np; a = np.ones(400 * 2**20 // 8); print(a.sum())"], 120)
small = benchmark.run_child([sys.executable, "-c", "print(1)"], 120)
slow = benchmark.run_child([sys.executable, "-c", "import time; time.sleep(30)"], 1)
print(json.dumps([big, small, slow]))
"""


def test_child_peak_memory_and_timeout():
  # From a process as small as the harness (a child's peak starts at its parent's RSS).
  proc = subprocess.run([sys.executable, "-c", MEASURE_CHILDREN], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.returncode == 0, proc.stderr[-2000:]
  big, small, slow = json.loads(proc.stdout.strip().splitlines()[-1])
  assert big["returncode"] == 0 and small["returncode"] == 0, (big, small)
  # Each child's own maximum: 400 MiB of ones, a bare interpreter well under 200.
  assert big["peak_rss_mb"] >= 400 and small["peak_rss_mb"] < 200, (big, small)
  assert big["stdout"].strip() == str(float(400 * 2**20 // 8))
  assert slow["timed_out"] and slow["returncode"] != 0 and slow["wall_s"] < 25, slow


def test_case_names_and_errors():
  assert suite.expand(["mtt_memory"]) == [f"mtt_memory@{s}" for s in (10, 20, 40, 80)]
  assert suite.expand(["distill", "distill_dm"]) == [f"distill_{m}" for m in suite.DISTILL_METHODS]
  assert len(suite.expand(["all"])) == len(suite.case_names())
  with pytest.raises(ValueError, match="Unknown benchmark"):
    suite.expand(["distill_sgd"])
  for size in suite.SIZES.values():  # every size defines every problem
    assert {"mtt_memory", "curvature", "loo", "pool", "record"} <= set(size)


def test_table_and_memory_summary():
  rows = [
      {"benchmark": "mtt_memory@10", "ddjax": {"median_s": 1.0, "peak_rss_mb": 500.0,
                                               "xla_temp_mb": 10.0},
       "reference": {"median_s": 2.0, "peak_rss_mb": 400.0}, "ratio": 0.5, "note": ""},
      {"benchmark": "mtt_memory@80", "ddjax": {"median_s": 8.0, "peak_rss_mb": 600.0,
                                               "xla_temp_mb": 12.0},
       "reference": {"median_s": 16.0, "peak_rss_mb": 2400.0}, "ratio": 0.5, "note": ""},
      {"benchmark": "distill_kip", "ddjax": {"median_s": 3.0, "device_peak_mb": 100.0,
                                             "peak_rss_mb": 900.0},
       "reference_unavailable": "ddjax only"},
      {"benchmark": "loo", "ddjax_error": "exit 1: boom"},
  ]
  table = benchmark.format_table(rows).splitlines()
  assert table[2].split("|")[1:7] == [" mtt_memory@10 ", " 1.000 ", " 2.000 ", " 0.50 ", " 500 ",
                                      " 400 "]
  assert "reference unavailable (ddjax only)" in table[4] and " 100 " in table[4]  # device memory
  assert "error: exit 1: boom" in table[5]
  summary = benchmark.memory_summary(rows)
  assert summary["syn_steps"] == [10, 80]
  assert summary["ddjax_peak_ratio"] == pytest.approx(1.2)
  assert summary["ddjax_xla_temp_ratio"] == pytest.approx(1.2)
  assert summary["reference_peak_ratio"] == pytest.approx(6.0)


@pytest.mark.slow
def test_harness_without_torch_runs_the_ddjax_side(tmp_path):
  stdout, result = _harness(tmp_path, "--benchmarks=record", "--torch_python=/nonexistent/python")
  assert "reference unavailable" in stdout
  (row,) = result["results"]
  assert row["benchmark"] == "record" and "not found" in row["reference_unavailable"]
  ddjax = row["ddjax"]
  assert ddjax["median_s"] > 0 and ddjax["peak_rss_mb"] > 50
  # small: 200 training images in batches of 50, one epoch, 100 test predictions each
  assert ddjax["iterations"] == 4 and ddjax["num_test"] == 100
  assert 0.0 <= ddjax["final_accuracy"] <= 1.0
  assert result["size"] == "small" and result["torch"] is None


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(TORCH_PYTHON), reason="no .bench-venv (make bench-setup)")
def test_harness_reference_computes_the_same_hvp(tmp_path):
  stdout, result = _harness(tmp_path, "--benchmarks=hvp", "--threads=1")
  (row,) = result["results"]
  d, r = row["ddjax"], row["reference"]
  assert row["ratio"] == pytest.approx(d["median_s"] / r["median_s"])
  # The same weights, data and probe on both sides: the same v^T H v.
  assert abs(d["check_vhv"] - r["check_vhv"]) <= 1e-3 * abs(r["check_vhv"])
  assert r["threads"] == 1 and r["peak_rss_mb"] > 50
  assert "| hvp |" in stdout


def test_profile_metagrad_ablation_specs():
  from benchmarks import profile_metagrad
  assert profile_metagrad.parse_ablation("base") == {}
  assert profile_metagrad.parse_ablation("remat=off+norm=none") == {"remat": "off", "norm": "none"}
  assert profile_metagrad.fusion_kind("bitcast_select_fusion.3") == "bitcast_select_fusion"
  with pytest.raises(ValueError, match="Bad ablation 'width=8'"):
    profile_metagrad.parse_ablation("width=8")


def test_single_thread_mode_pins_children_to_one_core():
  assert benchmark.single_core(0) is None and benchmark.single_core(2) is None
  cpus = benchmark.single_core(1)
  assert cpus is not None and len(cpus) == 1
  child = benchmark.run_child(
      [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"], 60, cpus=cpus)
  assert child["returncode"] == 0, child["stderr"]
  assert child["stdout"].strip() == str(sorted(cpus))
