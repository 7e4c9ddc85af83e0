"""The shipped distilled sets: every one loads and validates, the manifest matches the files,
a damaged file is refused, and install writes what load_pretrained reads."""

import json
import os
import shutil

import numpy as np
import pytest

from configs import pretrained as pretrained_config
from ddjax import data, distill, errors, integrity
from ddjax.distill import pretrained, synset

SHIPPED = pretrained.read_manifest()["entries"]


def test_shipped_directory_is_versioned_and_complete():
  manifest_path = os.path.join(pretrained.set_dir(), pretrained.MANIFEST)
  assert os.path.exists(manifest_path), "no shipped manifest"
  manifest = pretrained.read_manifest()
  assert manifest["version"] == pretrained.VERSION
  assert SHIPPED, "the manifest lists no set"
  on_disk = set()
  for folder, _, files in os.walk(pretrained.set_dir()):
    for name in files:
      if name.endswith(".npz"):
        on_disk.add(os.path.relpath(os.path.join(folder, name), pretrained.set_dir()))
  assert on_disk == {record["file"] for record in SHIPPED.values()}, "files without an entry"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_set_loads_and_matches_its_manifest(name):
  record = SHIPPED[name]
  path = os.path.join(pretrained.set_dir(), record["file"])
  assert integrity.file_sha256(path) == record["sha256"]
  dset = distill.load_pretrained(record["dataset"], record["method"], record["ipc"])
  assert list(dset.images.shape) == record["shape"]
  assert dset.images.shape[0] == record["ipc"] * record["num_classes"]
  assert dset.dataset == record["dataset"] and dset.ipc == record["ipc"]
  # The provenance and evidence the manifest promises.
  for field in ("command", "config", "commit", "iterations", "wall_seconds", "cpu_seconds",
                "protocol_a_mean", "protocol_a_std", "init_correlation"):
    assert record.get(field) is not None, f"{name}: manifest lacks {field}"
  assert len(record["protocol_a_all"]) == 5
  assert record["command"].startswith("python -m launch.pretrained --config=configs/pretrained.py:")
  if not record["method"].startswith("random"):
    assert record["stop_reason"] in ("plateau", "cap")
    its = [h["iteration"] for h in record["eval_history"]]
    assert its[0] == 0 and its[-1] == record["iterations"] and its == sorted(its)
    for figure in ("progress_figure", "grid_figure"):
      assert os.path.exists(os.path.join(pretrained.set_dir(), record[figure]))


def test_manifest_commands_rebuild_the_recorded_configs():
  """Each entry's command names a config that still resolves to the recorded computation."""
  for name, record in SHIPPED.items():
    arg = record["command"].split("configs/pretrained.py:")[1]
    config = pretrained_config.get_config(arg).to_dict()
    recorded = record["config"]
    for key in ("method", "dataset", "ipc", "seed", "init", "preprocess", "model_kwargs"):
      assert config[key] == recorded[key], (name, key)
    if config["method"] in config:  # the method's own hyperparameters (random has none)
      assert config[config["method"]] == recorded[recorded["method"]], name


def _toy_set():
  labels = np.repeat(np.arange(3), 2).astype(np.int32)
  return synset.DistilledSet(
      images=np.random.default_rng(0).normal(size=(6, 4, 4, 1)).astype(np.float32),
      labels=labels, method="bptt", dataset="toy", ipc=2, num_classes=3,
      preprocessor=data.Preprocessor("standardize", mean=np.zeros(1, np.float32),
                                     std=np.ones(1, np.float32)))


def test_install_round_trip_and_refusals(tmp_path):
  run = synset.save_distilled(str(tmp_path / "run" / "distilled.npz"), _toy_set())
  directory = str(tmp_path / "sets" / "v9")
  entry = pretrained.install(run, {"command": "c", "protocol_a_mean": 0.5},
                             entry_method="bptt_full", directory=directory)
  assert entry["file"] == "toy/bptt_full_ipc2.npz" and entry["set_method"] == "bptt"
  assert pretrained.available(directory) == [("toy", "bptt_full", 2)]
  dset = pretrained.load_pretrained("toy", "bptt_full", 2, directory=directory)
  np.testing.assert_array_equal(dset.images, _toy_set().images)
  assert pretrained.read_manifest(directory)["version"] == "v9"

  with pytest.raises(synset.DistilledSetError, match=r"No shipped distilled set 'toy/dm_ipc2'.*"
                                                     r"shipped: toy/bptt_full_ipc2"):
    pretrained.load_pretrained("toy", "dm", 2, directory=directory)

  # A file whose bytes changed (here: another valid set) is refused by its sha256.
  path = os.path.join(directory, entry["file"])
  before = open(path, "rb").read()
  other = _toy_set()
  synset.save_distilled(path, synset.DistilledSet(**{**other.__dict__,
                                                      "images": other.images + 1.0}))
  with pytest.raises(synset.DistilledSetError, match="does not match the manifest"):
    pretrained.load_pretrained("toy", "bptt_full", 2, directory=directory)
  open(path, "wb").write(before)
  pretrained.load_pretrained("toy", "bptt_full", 2, directory=directory)

  os.remove(path)
  with pytest.raises(synset.DistilledSetError, match="is missing"):
    pretrained.load_pretrained("toy", "bptt_full", 2, directory=directory)


def test_corrupt_manifest_is_one_line_error(tmp_path):
  (tmp_path / pretrained.MANIFEST).write_text("{not json")
  with pytest.raises(synset.DistilledSetError, match="not valid JSON"):
    pretrained.available(str(tmp_path))


def test_pretrained_config_entries():
  for method in pretrained_config.METHODS:
    config = pretrained_config.get_config(f"dataset=mnist5k,method={method},ipc=10")
    assert config.entry == method
    if not method.startswith("random"):
      assert config.eval.plateau_gain == 0.005 and config.eval.every > 0
  full = pretrained_config.get_config("method=bptt_full")
  assert full.bptt.window == 0 and full.bptt.optimizer == "sgd"
  assert pretrained_config.get_config("method=bptt").bptt.window > 0
  assert pretrained_config.get_config("method=random_independent").seed == 1
  with pytest.raises(errors.ConfigError, match="Unknown pretrained method"):
    pretrained_config.get_config("method=nope")


def test_summary_table_has_a_row_per_entry():
  table = pretrained.summary_table().splitlines()
  assert len(table) == 2 + len(SHIPPED)
  for name, record in SHIPPED.items():
    row = next(line for line in table if line.startswith(f"| {name} |"))
    assert f"{record['protocol_a_mean']:.3f} ± {record['protocol_a_std']:.3f}" in row


def test_every_shipped_file_is_package_data():
  """`pip install` (not only `-e`) carries the sets: pyproject's package-data globs for
  ddjax.distill match every file of the shipped directory."""
  import glob  # pylint: disable=g-import-not-at-top
  import tomllib  # pylint: disable=g-import-not-at-top
  root = os.path.join(os.path.dirname(__file__), "..")
  with open(os.path.join(root, "pyproject.toml"), "rb") as f:
    patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["ddjax.distill"]
  package_dir = os.path.join(root, "ddjax", "distill")
  covered = {os.path.normpath(p) for pattern in patterns
             for p in glob.glob(os.path.join(package_dir, pattern))}
  shipped = {os.path.normpath(os.path.join(d, name))
             for d, _, names in os.walk(os.path.join(package_dir, "pretrained_sets"))
             for name in names}
  assert shipped and shipped <= covered, sorted(shipped - covered)
