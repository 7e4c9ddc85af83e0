"""Fault injection (issue 14): corrupt checkpoints, kill -9 mid-save, two runs on one
workdir, a changed config, bad input. Each fault ends in the exact one-line error or
recovers as documented, and every file saved before it is byte-identical afterwards
(compared by sha256)."""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import train as train_config
from configs.distill import random as random_config
from ddjax import (checkpoint, classifier, data, errors, experts, integrity, models, train,
                   validation)
from ddjax import workdir as workdir_lib
from ddjax.distill import driver, synset
from launch import common

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
HOST = socket.gethostname()
# launch.train at its smallest: a depth-1, width-4 ConvNet on 5 train / 3 test images per
# class of mnist5k, 2 epochs of one batch (one checkpoint per epoch).
TINY_TRAIN = ["--config=configs/train.py:quick", "--config.progress=False",
              "--config.model_kwargs.depth=1", "--config.model_kwargs.width=4",
              "--config.train_per_class=5", "--config.test_per_class=3"]


def _hashes(directory):
  """{relative path: sha256} of every file under `directory`."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      out[os.path.relpath(path, directory)] = integrity.file_sha256(path)
  return out


def _flip(path, count=16, seed=0):
  """XORs `count` bytes in the middle of a file with non-zero values."""
  raw = bytearray(open(path, "rb").read())
  rng = np.random.default_rng(seed)
  start = max(0, len(raw) // 2 - count // 2)
  for i in range(start, min(len(raw), start + count)):
    raw[i] ^= int(rng.integers(1, 256))
  with open(path, "wb") as f:
    f.write(bytes(raw))


def _largest_data_file(step_dir):
  """The file of a checkpoint holding its array data: orbax's largest data chunk (small
  arrays are stored inside the tree nodes, which tensorstore protects with a CRC)."""
  data_dir = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
  return max((os.path.join(data_dir, n) for n in os.listdir(data_dir)), key=os.path.getsize)


def _env():
  return dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")


def _launch(module, *flags, script=None, **kwargs):
  cmd = [sys.executable, script] if script else [sys.executable, "-m", module]
  return subprocess.run(cmd + list(flags), cwd=ROOT, env=_env(), capture_output=True, text=True,
                        timeout=600, **kwargs)


def _error_line(proc):
  """The one-line error a failed binary ends with (and no stack trace before it)."""
  assert proc.returncode != 0, proc.stdout[-2000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  return proc.stderr.strip().splitlines()[-1]


def _results(workdir):
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)


def _tiny_state(width=4):
  model = models.get_model("convnet", 3, width=width, depth=1)
  variables = models.init_variables(model, jax.random.PRNGKey(0), (1, 8, 8, 1))
  return train.create_train_state(variables, train.sgd_momentum(0.01, 0.9))


def _assert_trees_equal(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
  """An uninterrupted launch.train run: its workdir, results and file hashes."""
  workdir = str(tmp_path_factory.mktemp("baseline") / "run")
  proc = _launch("launch.train", *TINY_TRAIN, f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
  return {"workdir": workdir, "results": _results(workdir), "hashes": _hashes(workdir)}


def _copy(baseline, tmp_path, name="run"):
  workdir = str(tmp_path / name)
  shutil.copytree(baseline["workdir"], workdir)
  return workdir


# ----------------------------------------------------------------------------- checkpoints


def test_bytes_flipped_in_each_checkpoint_file(tmp_path):
  """Every file of the newest checkpoint, damaged in turn: restoring it raises a corrupt
  CheckpointError naming it (or, for a file restore never reads, gives back exactly the
  saved state); nothing is modified; restore mode 'previous' falls back to the intact
  step 1 and moves the damaged step aside byte for byte."""
  states = {1: _tiny_state(width=16), 2: _tiny_state(width=16)}
  states[2] = states[2].replace(step=jnp.asarray(2, jnp.int32),
                                params=jax.tree_util.tree_map(lambda p: p + 1.0, states[2].params))
  clean = str(tmp_path / "clean")
  with checkpoint.Checkpointer(clean, max_to_keep=2) as ckpt:
    for step, state in states.items():
      ckpt.save(step, state, meta={"epoch": step})
  files = sorted(_hashes(os.path.join(clean, "2")))
  assert any(f.startswith("state/ocdbt.process_0/d/") for f in files)  # the array data
  outcomes = {}
  for n, rel in enumerate(files):
    directory = str(tmp_path / f"flip{n}")
    shutil.copytree(clean, directory)
    _flip(os.path.join(directory, "2", rel))
    damaged = _hashes(directory)
    where = os.path.join(directory, "2")
    with checkpoint.Checkpointer(directory, max_to_keep=2) as ckpt:
      try:
        restored, meta = ckpt.restore(_tiny_state(width=16), 2)
      except checkpoint.CheckpointError as e:
        assert e.corrupt and str(e).startswith(f"Checkpoint {where} ")
        assert "re-run with --restore=previous" in str(e) and "\n" not in str(e)
        outcomes[rel] = "checksum" if "failed its checksum" in str(e) else "unreadable"
      else:  # a file restore does not read (orbax's superseded tree nodes, its metadata log)
        _assert_trees_equal(restored, states[2])
        assert meta == {"epoch": 2}
        outcomes[rel] = "unused"
      assert _hashes(directory) == damaged  # nothing touched by a failed or good restore

      state, meta, step = ckpt.restore_or(_tiny_state(width=16), mode="previous")
    if outcomes[rel] == "unused":
      assert step == 2
      continue
    assert step == 1 and meta == {"epoch": 1}
    _assert_trees_equal(state, states[1])
    moved = os.path.join(directory + ".corrupt", "2")
    assert {k: v for k, v in _hashes(moved).items()} == {
        k[2:]: v for k, v in damaged.items() if k.startswith("2/")}
    assert sorted(os.listdir(directory)) == ["1"]
  # The array data itself is only protected by the checksum.
  data_files = [f for f in files if f.startswith("state/ocdbt.process_0/d/")]
  assert any(outcomes[f] == "checksum" for f in data_files), outcomes
  assert outcomes["meta/metadata"] != "unused" and outcomes["state/_METADATA"] != "unused"


def test_restore_previous_fails_when_no_checkpoint_is_intact(tmp_path):
  directory = str(tmp_path / "c")
  with checkpoint.Checkpointer(directory) as ckpt:
    for step in (1, 2):
      ckpt.save(step, _tiny_state(width=16), meta={"epoch": step})
  for step in (1, 2):
    _flip(_largest_data_file(os.path.join(directory, str(step))))
  before = _hashes(directory)
  with checkpoint.Checkpointer(directory) as ckpt:
    with pytest.raises(checkpoint.CheckpointError,
                       match=rf"^No intact checkpoint in {directory}: every one \(steps \[1, 2\]\) "
                             "failed verification, and they were left untouched"):
      ckpt.restore_or(_tiny_state(width=16), mode="previous")
  assert _hashes(directory) == before and not os.path.exists(directory + ".corrupt")


def test_restore_previous_does_not_skip_an_incompatible_checkpoint(tmp_path):
  directory = str(tmp_path / "c")
  with checkpoint.Checkpointer(directory) as ckpt:
    ckpt.save(1, _tiny_state(width=4))
    with pytest.raises(checkpoint.CheckpointError, match="incompatible.*another config") as info:
      ckpt.restore_or(_tiny_state(width=8), mode="previous")
  assert not info.value.corrupt
  with pytest.raises(errors.ConfigError, match="Unknown restore mode 'newest'"):
    checkpoint.check_restore_mode("newest")


def test_train_binary_corrupt_checkpoint_then_restore_previous(baseline, tmp_path):
  """Issue 14.1: 16 bytes flipped in the array data of the latest checkpoint."""
  workdir = _copy(baseline, tmp_path)
  _flip(_largest_data_file(os.path.join(workdir, "checkpoints", "2")))
  before = _hashes(workdir)

  line = _error_line(_launch("launch.train", *TINY_TRAIN, f"--workdir={workdir}"))
  assert line.startswith(f"error: CheckpointError: Checkpoint {workdir}/checkpoints/2 (step 2) "
                         "failed its checksum: its content changed after it was saved")
  assert line.endswith("re-run with --restore=previous to resume from the newest intact "
                       "checkpoint, or use a new workdir.")
  assert _hashes(workdir) == before  # results.json included: never written from a bad state

  again = _launch("launch.train", *TINY_TRAIN, f"--workdir={workdir}", "--restore=previous")
  assert again.returncode == 0, again.stderr[-3000:]
  assert "Resumed from checkpoint at epoch 1" in again.stderr  # logged
  assert _results(workdir) == baseline["results"]  # the uninterrupted run's numbers
  moved = _hashes(os.path.join(workdir, "checkpoints.corrupt", "2"))
  assert moved == {k[len("checkpoints/2/"):]: v for k, v in before.items()
                   if k.startswith("checkpoints/2/")}
  after = _hashes(workdir)
  for rel in ("config.json",) + tuple(k for k in before if k.startswith("checkpoints/1/")):
    assert after[rel] == before[rel], rel


_KILL_AT_SAVE = """
import os, runpy, signal, sys
from orbax.checkpoint._src.path import atomicity
original = atomicity.AtomicRenameTemporaryPath.finalize

async def finalize(self, *args, **kwargs):  # the step's files are written, not yet committed
  if self._final_path.name == os.environ["KILL_AT_STEP"]:
    os.kill(os.getpid(), signal.SIGKILL)
  return await original(self, *args, **kwargs)

atomicity.AtomicRenameTemporaryPath.finalize = finalize
sys.argv = ["launch.train"] + sys.argv[1:]
runpy.run_module("launch.train", run_name="__main__")
"""


def test_train_binary_kill9_mid_save_then_rerun(baseline, tmp_path):
  workdir = str(tmp_path / "run")
  script = tmp_path / "kill_at_save.py"
  script.write_text(_KILL_AT_SAVE)
  env = dict(_env(), KILL_AT_STEP="2")
  # `python -c` puts the working directory (the repository root) first on the import path,
  # so the script finds `launch` as `python -m launch.train` would.
  killed = subprocess.run([sys.executable, "-c", script.read_text(), *TINY_TRAIN,
                           f"--workdir={workdir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  names = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  assert names[0] == "1" and names[1].startswith("2.orbax-checkpoint-tmp")
  with open(os.path.join(workdir, workdir_lib.LOCK_FILE)) as f:
    assert json.load(f)["host"] == HOST  # left behind by the killed process
  before = _hashes(workdir)

  rerun = _launch("launch.train", *TINY_TRAIN, f"--workdir={workdir}")
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert f"Took over the lock on {workdir} left by pid" in rerun.stderr
  assert "which is no longer running" in rerun.stderr
  assert "Resumed from checkpoint at epoch 1" in rerun.stderr
  assert _results(workdir) == baseline["results"]
  after = _hashes(workdir)
  kept = [rel for rel in before if rel == "config.json" or rel.startswith("checkpoints/1/")]
  assert len(kept) > 5 and all(after[rel] == before[rel] for rel in kept)
  # orbax's uncommitted step 2 was never a checkpoint: the rerun wrote step 2 in its place.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE))


# ----------------------------------------------------------------------------- the lock


def test_second_process_fails_at_once_naming_the_holder(baseline, tmp_path):
  """Issue 14.3 with two real processes: the first is paused (SIGSTOP) while it holds
  the workdir, the second fails in one line naming it, the first then finishes alone."""
  workdir = _copy(baseline, tmp_path)
  first = subprocess.Popen([sys.executable, "-m", "launch.train", *TINY_TRAIN,
                            "--config.num_epochs=4", f"--workdir={workdir}"],
                           cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  lock = os.path.join(workdir, workdir_lib.LOCK_FILE)
  deadline = time.time() + 300
  while True:
    try:
      with open(lock) as f:
        if json.load(f)["pid"] == first.pid:
          break
    except (OSError, ValueError):
      pass
    assert first.poll() is None and time.time() < deadline, "the first run never took the lock"
    time.sleep(0.05)
  os.kill(first.pid, signal.SIGSTOP)
  try:
    second = _launch("launch.train", *TINY_TRAIN, "--config.num_epochs=4", f"--workdir={workdir}")
  finally:
    os.kill(first.pid, signal.SIGCONT)
  out, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-3000:]
  line = _error_line(second)
  assert line.startswith(f"error: WorkdirLocked: {workdir} is in use by pid {first.pid} on host "
                         f"{HOST} (since ")
  assert line.endswith("wait for it to finish or use another --workdir.")
  epochs = [r["epoch"] for r in workdir_lib.read_metrics(workdir)]
  assert epochs == [1, 2, 3, 4]  # one writer: no duplicated or interleaved rows
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "4"]


def test_lock_in_process_stale_and_foreign(tmp_path, caplog):
  workdir = str(tmp_path / "w")
  with workdir_lib.WorkdirLock(workdir):
    with pytest.raises(errors.WorkdirLocked, match=rf"^{workdir} is in use by pid {os.getpid()} "
                                                    rf"on host {HOST} \(since "):
      workdir_lib.WorkdirLock(workdir).acquire()
  assert os.listdir(workdir) == []  # released and removed

  # A process killed while holding it: the file stays, the flock goes with the process.
  subprocess.run([sys.executable, "-c",
                  "import os, signal; from ddjax import workdir; "
                  f"workdir.WorkdirLock({workdir!r}).acquire(); os.kill(os.getpid(), signal.SIGKILL)"],
                 cwd=ROOT, env=_env(), timeout=120)
  with open(os.path.join(workdir, ".lock")) as f:
    dead = json.load(f)["pid"]
  with caplog.at_level(logging.WARNING):
    with workdir_lib.WorkdirLock(workdir):
      with open(os.path.join(workdir, ".lock")) as f:
        assert json.load(f)["pid"] == os.getpid()
  assert f"left by pid {dead} on {HOST}" in caplog.text and "is no longer running" in caplog.text

  # One left on another host cannot be checked from here: refused, and kept.
  path = os.path.join(workdir, ".lock")
  with open(path, "w") as f:
    json.dump({"pid": 4242, "host": "elsewhere", "started": "2024-01-01T00:00:00+00:00"}, f)
  before = _hashes(workdir)
  with pytest.raises(errors.WorkdirLocked,
                     match=rf"locked by pid 4242 on host elsewhere .*cannot be checked from host "
                           rf"{HOST}; if that job is no longer running, delete {path} and re-run"):
    workdir_lib.WorkdirLock(workdir).acquire()
  assert _hashes(workdir) == before


def test_only_process_zero_writes(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lib, "is_primary", lambda: False)
  workdir = str(tmp_path / "w")
  config = ml_collections.ConfigDict({"seed": 0})
  with workdir_lib.open_workdir(workdir, config) as run:
    run.start()
    workdir_lib.MetricWriter(workdir).write(1, loss=0.5)
    workdir_lib.write_json(os.path.join(workdir, "results.json"), {"a": 1})
  workdir_lib.prepare_workdir(workdir, config)
  assert not os.path.exists(workdir)


# ----------------------------------------------------------------------------- config identity


def _saved_run(tmp_path, config, name="w"):
  """A workdir holding `config` and a saved output (what binds it to the config)."""
  workdir = str(tmp_path / name)
  with workdir_lib.open_workdir(workdir, config) as run:
    run.start()
    workdir_lib.MetricWriter(workdir).write(1, loss=1.0)
  return workdir


def test_changed_computation_is_refused_naming_the_fields(tmp_path):
  config = train_config.get_config("quick")
  workdir = _saved_run(tmp_path, config)
  before = _hashes(workdir)
  other = train_config.get_config("quick")
  other.dataset = "npz:/data/other.npz"
  other.model_kwargs.width = 16
  ignore = classifier.resumable_fields(other)
  with pytest.raises(errors.WorkdirConfigMismatch) as info:
    with workdir_lib.open_workdir(workdir, other, ignore=ignore):
      pass
  assert str(info.value) == (
      f"{workdir} holds a run of another config (2 fields differ, saved -> now: dataset: "
      "'mnist5k' -> 'npz:/data/other.npz'; model_kwargs.width: 8 -> 16). Re-run with the "
      f"config in {workdir}/config.json, use a new --workdir, or pass --overwrite to move the "
      f"old run to {workdir}/previous/ and start over.")
  assert _hashes(workdir) == before

  # Fields that do not change the computation may change; config.json takes the new
  # values and the old text goes to the history.
  resumed = train_config.get_config("quick")
  resumed.num_epochs, resumed.eval_every_epochs, resumed.progress = 5, 2, False
  with workdir_lib.open_workdir(workdir, resumed, ignore=classifier.resumable_fields(resumed)) as run:
    run.start()
  assert json.load(open(os.path.join(workdir, "config.json")))["num_epochs"] == 5
  history = [json.loads(line) for line in open(os.path.join(workdir, "config_history.jsonl"))]
  assert [h["config"]["num_epochs"] for h in history] == [2]
  assert _hashes(workdir)["metrics.jsonl"] == before["metrics.jsonl"]

  # Under a schedule that depends on the total step count, more epochs is another run.
  cosine = train_config.get_config("quick")
  cosine.schedule = "cosine"
  cosine_dir = _saved_run(tmp_path, cosine, "cosine")
  cosine.num_epochs = 3
  with pytest.raises(errors.WorkdirConfigMismatch, match=r"num_epochs: 2 -> 3\)"):
    workdir_lib.check_config(cosine_dir, cosine, classifier.resumable_fields(cosine))


def test_distillation_resumes_with_a_larger_cap_and_new_eval_settings(tmp_path):
  config = random_config.get_config("quick,ipc=2")
  workdir = _saved_run(tmp_path, config)
  later = random_config.get_config("quick,ipc=2")
  later.num_iterations, later.eval.every, later.eval.num_seeds, later.log_every = 500, 7, 9, 3
  assert workdir_lib.check_config(workdir, later, driver.RESUMABLE_FIELDS)
  later.ipc = 3
  with pytest.raises(errors.WorkdirConfigMismatch, match=r"\(1 field differs, saved -> now: "
                                                           r"ipc: 2 -> 3\)"):
    workdir_lib.check_config(workdir, later, driver.RESUMABLE_FIELDS)


def test_overwrite_moves_the_old_run_aside(baseline, tmp_path):
  """Issue 14.2 with the binary: another dataset of the same shapes is refused before
  anything is loaded; --overwrite moves the old run to previous/1/, byte for byte."""
  workdir = _copy(baseline, tmp_path)
  npz = tmp_path / "other.npz"
  rng = np.random.default_rng(0)
  np.savez(npz, x_train=rng.integers(0, 256, (50, 28, 28, 1), dtype=np.uint8),
           y_train=np.arange(50) % 10, x_test=rng.integers(0, 256, (30, 28, 28, 1), dtype=np.uint8),
           y_test=np.arange(30) % 10)
  before = _hashes(workdir)
  line = _error_line(_launch("launch.train", *TINY_TRAIN, f"--config.dataset=npz:{npz}",
                             f"--workdir={workdir}"))
  assert line.startswith(f"error: WorkdirConfigMismatch: {workdir} holds a run of another config "
                         "(1 field differs, saved -> now: dataset: 'mnist5k' -> 'npz:")
  assert "pass --overwrite to move the old run" in line
  assert _hashes(workdir) == before

  fresh = _launch("launch.train", *TINY_TRAIN, f"--config.dataset=npz:{npz}", "--overwrite",
                  f"--workdir={workdir}")
  assert fresh.returncode == 0, fresh.stderr[-3000:]
  assert "Resumed" not in fresh.stderr
  assert _results(workdir)["dataset"] == f"npz:{npz}"
  assert _hashes(os.path.join(workdir, "previous", "1")) == before


def test_failed_validation_touches_nothing(tmp_path):
  """Bad data with --overwrite in a workdir holding a run: nothing is moved or rewritten;
  in a new workdir, no directory is left behind."""
  config = train_config.get_config("quick")
  workdir = _saved_run(tmp_path, config)
  before = _hashes(workdir)
  bad = tmp_path / "empty_test.npz"
  np.savez(bad, x_train=np.zeros((6, 28, 28, 1), np.uint8), y_train=np.arange(6) % 3,
           x_test=np.zeros((0, 28, 28, 1), np.uint8), y_test=np.zeros((0,), np.int64))
  config.dataset = f"npz:{bad}"
  config.train_per_class = config.test_per_class = 0
  message = rf"^npz:{bad}: x_test is empty \(0 images\); both splits need images\.$"
  with pytest.raises(data.DatasetError, match=message):
    classifier.train_and_evaluate(config, workdir, overwrite=True)
  assert _hashes(workdir) == before
  with pytest.raises(data.DatasetError, match=message):
    classifier.train_and_evaluate(config, str(tmp_path / "new"))
  assert not os.path.exists(tmp_path / "new")


# ----------------------------------------------------------------------------- config values


@pytest.mark.parametrize("field,value,message", [
    ("ipc", -1, "config.ipc must be an integer >= 1, got -1."),
    ("ipc", 0, "config.ipc must be an integer >= 1, got 0."),
    ("num_iterations", -5, "config.num_iterations must be an integer >= 0, got -5."),
    ("eval.num_seeds", 0, "config.eval.num_seeds must be an integer >= 1, got 0."),
    ("eval.protocol_a_lr", -0.1, "config.eval.protocol_a_lr must be a finite number > 0, got -0.1."),
    ("keep_checkpoints", 0,
     "config.keep_checkpoints must be an integer >= 1 (or None for no limit), got 0."),
])
def test_bad_distillation_config_values(tmp_path, field, value, message):
  config = random_config.get_config("quick,ipc=2")
  section, _, name = field.rpartition(".")
  (config[section] if section else config)[name] = value
  workdir = str(tmp_path / "w")
  with pytest.raises(errors.ConfigError) as info:
    driver.run_distillation(config, workdir)
  assert str(info.value) == message
  assert not os.path.exists(workdir)
  with pytest.raises(SystemExit) as exit_info:  # what the binaries print
    common.run_reporting_errors(validation.check_config, config)
  assert str(exit_info.value) == f"error: ConfigError: {message}"


def test_bad_training_config_values():
  config = train_config.get_config("quick")
  for field, value, message in [
      ("batch_size", 0, "config.batch_size must be an integer >= 1, got 0."),
      ("eval_every_epochs", 0, "config.eval_every_epochs must be an integer >= 1, got 0."),
      ("learning_rate", float("nan"), "config.learning_rate must be a finite number > 0, got nan."),
      ("momentum", -0.9, "config.momentum must be a finite number >= 0, got -0.9.")]:
    bad = train_config.get_config("quick")
    bad[field] = value
    with pytest.raises(errors.ConfigError) as info:
      validation.check_config(bad)
    assert str(info.value) == message
  validation.check_config(config)  # the shipped config passes


def test_distill_binary_bad_ipc(tmp_path):
  workdir = tmp_path / "w"
  line = _error_line(_launch("launch.distill", "--config=configs/distill/random.py:quick",
                             "--config.ipc=-1", f"--workdir={workdir}"))
  assert line == "error: ConfigError: config.ipc must be an integer >= 1, got -1."
  assert not workdir.exists()


def test_config_typo_is_one_line_naming_the_suggestion(tmp_path):
  workdir = tmp_path / "w"
  line = _error_line(_launch("launch.train", "--config=configs/train.py:quick",
                             "--config.learnin_rate=0.1", f"--workdir={workdir}"))
  assert line == ("error: ConfigError: --config.learnin_rate: the config has no field "
                  "'learnin_rate'; did you mean 'learning_rate'?")
  assert not workdir.exists()
  argv = ["prog", f"--config={ROOT}/configs/train.py:quick"]
  assert common._unknown_override(argv + ["--config.model_kwargs.widht=8"]) == (
      "--config.model_kwargs.widht: config.model_kwargs has no field 'widht'; did you mean "
      "'model_kwargs.width'?")
  assert common._unknown_override(argv + ["--config.learning_rate.x=1"]) == (
      "--config.learning_rate.x: config.learning_rate is a float, not a group of fields.")
  assert common._unknown_override(argv + ["--config.learning_rate=1"]) is None


def test_bad_config_argument_is_one_line(tmp_path):
  line = _error_line(_launch("launch.train", "--config=configs/train.py:modle=x",
                             f"--workdir={tmp_path / 'w'}"))
  assert line == ("error: ConfigError: Unknown config argument 'modle'; expected one of "
                  "['dataset', 'epochs', 'model', 'quick'].")


def test_only_ddjax_errors_become_one_line():
  with pytest.raises(SystemExit, match="^error: ConfigError: Unknown model 'nope'"):
    common.run_reporting_errors(models.get_model, "nope", 10)
  with pytest.raises(ValueError, match="equal division"):  # raised inside JAX: a bug
    common.run_reporting_errors(lambda: jnp.split(jnp.ones(3), 2))
  for cls in (data.DatasetError, checkpoint.CheckpointError, synset.DistilledSetError,
              classifier.TrainingDiverged, errors.WorkdirLocked, errors.WorkdirConfigMismatch,
              experts.ExpertBufferError, experts.ExpertsDiverged):
    assert issubclass(cls, errors.DdjaxError), cls


# ----------------------------------------------------------------------------- bad data


def _npz(tmp_path, name="d.npz", n=(6, 3), classes=3, shape=(8, 8, 1), **changes):
  rng = np.random.default_rng(0)
  arrays = dict(x_train=rng.integers(0, 256, (n[0],) + shape, dtype=np.uint8),
                y_train=np.arange(n[0]) % classes,
                x_test=rng.integers(0, 256, (n[1],) + shape, dtype=np.uint8),
                y_test=np.arange(n[1]) % classes)
  arrays.update(changes)
  path = tmp_path / name
  np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
  return f"npz:{path}"


@pytest.mark.parametrize("changes,message", [
    (dict(x_test=np.zeros((0, 8, 8, 1), np.uint8), y_test=np.zeros((0,), np.int64)),
     "x_test is empty (0 images); both splits need images."),
    (dict(y_test=np.array([0, 1, 3])),  # a label equal to the class count, no num_classes
     "the splits disagree on the class count: y_train's labels imply 3 classes, y_test's 4. "
     "Fix the labels, or declare num_classes (an npz's num_classes entry) if a split lacks the "
     "top classes."),
    (dict(y_train=np.array([0, 1, 2, 0, 1, 3])),
     "the splits disagree on the class count: y_train's labels imply 4 classes, y_test's 3."),
    (dict(y_train=np.array([0, 2, 3, 0, 2, 3]), y_test=np.array([0, 1, 3])),  # 1: test only
     "class 1 of 4 has no training images; every class needs some (fix the labels, or the "
     "declared num_classes)."),
    (dict(num_classes=np.array(5)),  # classes 3 and 4 in neither split
     "classes [3, 4] of 5 have no training images; every class needs some"),
    (dict(num_classes=np.array(2)), "y_train has labels outside [0, 2): min 0, max 2."),
    (dict(num_classes=np.array([3, 3])), "num_classes must be one integer >= 2, got array"),
    (dict(x_train=np.full((6, 8, 8, 1), 200.0, np.float32)),
     "x_train holds float values in [200, 200]; float images must be in [0, 1] (divide 0-255 "
     "pixels by 255, or store uint8)."),
    (dict(x_test=np.full((3, 8, 8, 1), 1000, np.int16)),
     "x_test holds int16 values in [1000, 1000]; integer images must be 8-bit pixels in [0, 255]."),
])
def test_bad_dataset_is_refused_naming_the_problem(tmp_path, changes, message):
  name = _npz(tmp_path, **changes)
  with pytest.raises(data.DatasetError) as info:
    data.load_dataset(name)
  assert str(info.value).startswith(f"{name}: {message}")


def test_float16_images_are_converted_with_a_warning(tmp_path, caplog):
  x = np.random.default_rng(0).uniform(0, 1, (6, 8, 8, 1)).astype(np.float16)
  with caplog.at_level(logging.WARNING):
    ds = data.load_dataset(_npz(tmp_path, x_train=x))
  assert ds.x_train.dtype == np.float32
  np.testing.assert_array_equal(ds.x_train, x.astype(np.float32))
  assert "x_train is float16; converted to float32 (exactly)" in caplog.text
  # Within the tolerance of [0, 1]: clipped, not refused.
  ds = data.load_dataset(_npz(tmp_path, "t.npz", x_test=np.full((3, 8, 8, 1), 1.0005, np.float32)))
  assert ds.x_test.max() == 1.0


# ----------------------------------------------------------------------------- saved artifacts


def _distilled(tmp_path):
  dset = synset.DistilledSet(
      images=np.random.default_rng(0).normal(size=(6, 8, 8, 1)).astype(np.float32),
      labels=np.repeat(np.arange(3), 2).astype(np.int32), method="dm", dataset="toy", ipc=2,
      num_classes=3, preprocessor=data.Preprocessor("standardize", mean=np.zeros(1, np.float32),
                                                    std=np.ones(1, np.float32)))
  return dset, synset.save_distilled(str(tmp_path / "distilled.npz"), dset)


def test_distilled_set_checksum(tmp_path):
  dset, path = _distilled(tmp_path)
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  assert json.loads(str(arrays["metadata"]))["checksum"].startswith("sha256:")
  # Re-written with other images but the old metadata (what an edit by hand does).
  edited = dict(arrays, images=arrays["images"] + 1e-3)
  np.savez(tmp_path / "edited.npz", **edited)
  with pytest.raises(synset.DistilledSetError,
                     match=rf"^{tmp_path}/edited.npz failed its checksum: its arrays or metadata "
                           "changed after it was saved"):
    synset.load_distilled(str(tmp_path / "edited.npz"))
  # Bytes flipped in the file: caught (by the zip CRC or the checksum), file untouched.
  shutil.copy(path, tmp_path / "flipped.npz")
  _flip(str(tmp_path / "flipped.npz"), count=16)
  before = _hashes(str(tmp_path))
  with pytest.raises(synset.DistilledSetError, match="flipped.npz"):
    synset.load_distilled(str(tmp_path / "flipped.npz"))
  assert _hashes(str(tmp_path)) == before


def test_float16_distilled_set_is_converted(tmp_path, caplog):
  """Issue 14.5: a float16 distilled.npz loads as float32, with a warning naming the dtype,
  so launch.curvature sees float32 data (not non-finite parameters)."""
  from ddjax.curvature import analysis  # pylint: disable=g-import-not-at-top
  dset, path = _distilled(tmp_path)
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  meta = json.loads(str(arrays["metadata"]))
  del meta["checksum"]  # a hand-made file
  half = dict(arrays, images=arrays["images"].astype(np.float16),
              metadata=np.asarray(json.dumps(meta)))
  np.savez(tmp_path / "half.npz", **half)
  with caplog.at_level(logging.WARNING):
    loaded = synset.load_distilled(str(tmp_path / "half.npz"))
  assert loaded.images.dtype == np.float32
  np.testing.assert_array_equal(loaded.images, half["images"].astype(np.float32))
  assert "images are float16; converted to float32 (exactly)" in caplog.text
  ds = data.ImageDataset("toy", np.zeros((3, 8, 8, 1), np.float32), np.arange(3),
                         np.zeros((3, 8, 8, 1), np.float32), np.arange(3), 3)
  config = ml_collections.ConfigDict({"data": f"distilled:{tmp_path}/half.npz", "num_examples": 0,
                                      "seed": 0})
  x, _ = analysis._select_data(config, ds, dset.preprocessor)
  assert x.dtype == jnp.float32


def test_expert_file_checksum(tmp_path):
  path = str(tmp_path / "expert_00000.npz")
  experts._save_npz_atomic(path, trajectory=np.ones((3, 5), np.float32),
                           test_accuracy=np.zeros(3, np.float32))
  assert sorted(experts._load_npz_verified(path)) == ["test_accuracy", "trajectory"]
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  arrays["trajectory"] = arrays["trajectory"] * 2
  np.savez(path, **arrays)
  with pytest.raises(experts.ExpertBufferError,
                     match=rf"^{path} failed its checksum: its content changed after it was saved"):
    experts._load_npz_verified(path)
