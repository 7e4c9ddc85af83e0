"""launch/train.py end to end on a tiny config: train, resume, clear errors."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _run(*flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", "launch.train", "--config=configs/train.py:quick",
                         "--config.progress=False", *flags], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def _metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_train_resume_and_errors(tmp_path):
  workdir = str(tmp_path / "run")
  first = _run(f"--workdir={workdir}")
  assert first.returncode == 0, first.stderr[-3000:]
  assert "test_accuracy=" in first.stdout
  results = json.load(open(os.path.join(workdir, "results.json")))
  assert results["epochs"] == 2 and 0.0 <= results["test_accuracy"] <= 1.0
  assert json.load(open(os.path.join(workdir, "config.json")))["dataset"] == "mnist5k"
  assert [m["epoch"] for m in _metrics(workdir)] == [1, 2]
  # The binary compiles through the cache the tests share (conftest.py sets it).
  assert f"compilation cache: {os.environ['JAX_COMPILATION_CACHE_DIR']}" in first.stderr

  # Same workdir, more epochs: resumes at epoch 2 instead of starting over.
  second = _run(f"--workdir={workdir}", "--config.num_epochs=3")
  assert second.returncode == 0, second.stderr[-3000:]
  assert "Resumed from checkpoint at epoch 2" in second.stderr  # logged
  records = _metrics(workdir)
  assert [m["epoch"] for m in records] == [1, 2, 3]
  assert records[-1]["step"] > records[1]["step"]

  # A different model in the same workdir: a clear refusal naming the field, and nothing
  # overwritten (tests/test_faults.py checks every file by hash).
  before = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  clash = _run(f"--workdir={workdir}", "--config.model_kwargs.width=16")
  assert clash.returncode != 0
  assert "error: WorkdirConfigMismatch" in clash.stderr
  assert "model_kwargs.width: 8 -> 16" in clash.stderr
  assert "Traceback" not in clash.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == before
  assert json.load(open(os.path.join(workdir, "config.json")))["model_kwargs"]["width"] == 8

  # Unknown dataset: a one-line error, not a stack trace.
  bad = _run(f"--workdir={tmp_path / 'bad'}", "--config.dataset=not_a_dataset")
  assert bad.returncode != 0
  assert "error: DatasetError: Unknown dataset 'not_a_dataset'" in bad.stderr
  assert "Traceback" not in bad.stderr


CACHE_PROBE = """
import sys, jax, jax.numpy as jnp
from launch import common
path = common.enable_compilation_cache(sys.argv[1])
jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).block_until_ready()
print(path)
"""


def _cache_probe(root, **env):
  base = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  out = subprocess.run([sys.executable, "-c", CACHE_PROBE, root], cwd=ROOT, timeout=300,
                       env={**base, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", **env},
                       capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout.split()[-1]


def test_compilation_cache_goes_under_its_root_unless_off_or_set_by_the_environment(tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  root = tmp_path / "root"
  used = _cache_probe(str(root))
  assert used == str(root / f"jax{jax.__version__}-cpu") and os.listdir(used)  # an entry
  assert _cache_probe("") == "None"
  assert _cache_probe(str(tmp_path / "unused"), JAX_COMPILATION_CACHE_DIR=str(tmp_path / "env")) \
      == str(tmp_path / "env")
  assert os.listdir(tmp_path / "env") and not (tmp_path / "unused").exists()
  assert _cache_probe(str(tmp_path / "unused"), JAX_COMPILATION_CACHE_DIR="") == "None"
  assert not (tmp_path / "unused").exists()


def test_run_reporting_errors_names_ddjax_errors_and_keeps_library_traces():
  import jax.numpy as jnp
  from ddjax import models
  from launch import common
  with pytest.raises(SystemExit, match="error: ConfigError: Unknown model"):
    common.run_reporting_errors(models.get_model, "not_a_model", 10)
  # A shape bug inside JAX is not a user error: its own exception and trace survive.
  with pytest.raises(TypeError):
    common.run_reporting_errors(lambda: jnp.ones(3) @ jnp.ones((4, 2)))
  with pytest.raises(ValueError, match="equal division"):  # raised inside JAX, not by ddjax
    common.run_reporting_errors(lambda: jnp.split(jnp.ones(3), 2))


def test_metric_writer_writes_strict_json_for_non_finite_arrays(tmp_path):
  import json
  import numpy as np
  from ddjax import workdir
  writer = workdir.MetricWriter(str(tmp_path))
  writer.write(1, loss=float("nan"), per_seed=np.array([0.5, np.nan, np.inf]), grid=np.ones((2, 2)))
  line = open(writer.path).read().strip()
  record = json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))
  assert record["loss"] == "nan" and record["per_seed"] == [0.5, "nan", "inf"]
  assert record["grid"] == [[1.0, 1.0], [1.0, 1.0]]
