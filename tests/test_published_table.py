"""The published Fashion-MNIST table: configs/published.py and benchmarks/published_table.py."""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from benchmarks import published_table as pt
from configs import published as pub
from configs.distill import dc as dc_config
from ddjax import classifier, models, train
from ddjax import experts as experts_lib
from ddjax.data import idx
from ddjax.distill import driver, synset
from files import tree_bytes  # tests/files.py

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def write_tiny_fashion(directory, train_per_class=25, test_per_class=10):
  """Class-template images with noise, as the four gzipped idx files."""
  rng = np.random.default_rng(0)
  templates = rng.integers(0, 256, (10, 28, 28))
  for split, n in (("train", train_per_class), ("test", test_per_class)):
    labels = np.repeat(np.arange(10), n)
    rng.shuffle(labels)
    images = np.clip(0.6 * templates[labels] + rng.integers(0, 100, (len(labels), 28, 28)), 0, 255)
    images_stem, labels_stem = idx.FILES[split]
    idx.write_idx(os.path.join(directory, images_stem + ".gz"), images.astype(np.uint8))
    idx.write_idx(os.path.join(directory, labels_stem + ".gz"), labels.astype(np.uint8))
  return str(directory)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
  return write_tiny_fashion(tmp_path_factory.mktemp("fashion"))


def run_table(workdir, data_dir, *flags):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-m", "benchmarks.published_table", f"--workdir={workdir}",
                         "--size=tiny", f"--data_dir={data_dir}", "--budget_seconds=3600", *flags],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "table.json")) as f:
    return proc.stdout, json.load(f)


def chunk_log(workdir, row):
  with open(os.path.join(workdir, row, pt.CHUNKS_FILE)) as f:
    return [json.loads(line) for line in f]


# ----------------------------------------------------------------------------- arithmetic


def test_difference_in_published_stds():
  dc10 = pub.published("dc", 10)                      # 82.3 +- 0.4
  assert pub.std_difference(83.1, dc10) == pytest.approx(2.0)
  assert pub.std_difference(81.9, dc10) == pytest.approx(-1.0)
  assert pub.std_difference(80.0, pub.published("kip", 10)) is None     # no published std
  assert pub.std_difference(80.0, pub.published("dm", 10)) is None      # no published row
  record = pt.row_record(pt.Row("dc", 10), {"dc_mean": 0.831, "dc_std": 0.002,
                                             "dc_all": [0.829, 0.833]}, "measured", "published")
  assert record["ddjax_mean"] == pytest.approx(83.1) and record["ddjax_std"] == pytest.approx(0.2)
  assert record["difference_in_published_std"] == pytest.approx(2.0)
  pending = pt.row_record(pt.Row("dm", 1), None, "not started", "published")
  table = pt.format_table([record, pending], "cmd")
  assert "| dc | 10 | 83.1 ± 0.2 | 82.3 ± 0.4 | +2.0 |" in table
  assert "| dm | 1 | — | — | — |" in table and "not started" in table


def test_chunks_are_what_fits_in_whole_checkpoint_intervals():
  assert pt.chunk_iterations(1000, 50, None) == 50       # never measured: one interval
  assert pt.chunk_iterations(1000, 50, 237) == 200       # rounded down to the interval
  assert pt.chunk_iterations(1000, 50, 5000) == 1000     # all of it
  assert pt.chunk_iterations(7, 50, 100) == 7            # the rest, whatever its size
  assert pt.chunk_iterations(1000, 50, 30) == 0          # not one interval fits
  assert pt.chunk_iterations(1000, 50, 5000, cap=1) == 1
  assert pt.chunk_iterations(0, 50, None) == 0           # nothing left: finalise only


def test_budget_starts_unmeasured_units_only_in_its_first_half():
  budget = pt.Budget(100.0, start=time.time() - 39.5)    # 60.5 s left (less a few ms)
  assert budget.fits(None) and budget.fits(48) and not budget.fits(49)   # x 1.25: 60, 61.25
  late = pt.Budget(100.0, start=time.time() - 59.5)      # 40.5 s left: under half the budget
  assert not late.fits(None) and late.fits(10)
  assert late.fit_count(2.0, 6.0) == 13                  # floor((40.5 / 1.25 - 6) / 2)
  assert late.fit_count(None, 6.0) is None
  counted = pt.Budget(100.0, max_units=1)
  counted.units = 1
  assert not counted.fits(1.0)


def test_rows_baselines_first_and_mtt_last():
  rows = pt.plan_rows(["mtt", "dc", "whole", "random"], [1, 10])
  assert [r.name for r in rows] == ["random_ipc1", "random_ipc10", "whole", "dc_ipc1", "mtt_ipc1",
                                    "dc_ipc10", "mtt_ipc10"]
  with pytest.raises(ValueError, match="Unknown methods"):
    pt.plan_rows(["frepo"], [1])


# ----------------------------------------------------------------------------- the configs


@pytest.mark.parametrize("method", sorted(pub.METHODS))
@pytest.mark.parametrize("ipc", pub.TABLE_IPCS)
def test_published_configs_use_the_published_evaluation(method, ipc):
  config = pub.get_config(f"method={method},ipc={ipc}")
  assert config.dataset == "fashion_mnist" and config.method == method and config.ipc == ipc
  assert config.eval.dc_protocol and config.eval.num_seeds == pub.EVAL_NETWORKS
  assert config.eval.model == "convnet" and config.eval.model_kwargs.width == 128
  assert config.model_kwargs.width == 128 and config.preprocess == "standardize"
  augmented = method in ("dsa", "dm", "mtt")
  # DC's get_daparam augments MNIST only: Fashion-MNIST DC rows train 300 epochs plain;
  # DSA-family evaluation trains 1000 epochs with DSA, which keeps flip for Fashion-MNIST.
  assert config.eval.dc_augment == (dc_config.DSA_STRATEGY if augmented else "none")
  assert config.eval.dc_epochs == (1000 if augmented else 300)
  row = pub.published(method, ipc)
  assert row.source and (row.std is None or row.std > 0)
  assert row.mean is None or 0 < row.mean < 100


def test_published_numbers_match_the_dc_readme():
  # VICO-UoE/DatasetCondensation readme.md, FashionMNIST columns of Tables 1 (DC) and 2 (DSA).
  assert [pub.published("dc", n).mean for n in (1, 10, 50)] == [70.5, 82.3, 83.6]
  assert [pub.published("dsa", n).mean for n in (1, 10, 50)] == [70.6, 84.6, 88.7]


def test_experts_cover_every_snapshot_mtt_reads():
  experts = pub.get_config("method=experts")
  assert experts.dataset == "fashion_mnist" and experts.weight_decay == 0.0
  for ipc in pub.TABLE_IPCS:
    hp = pub.get_config(f"method=mtt,ipc={ipc}").mtt
    # MTT reads snapshots 0 .. max_start_epoch - 1 + expert_epochs; experts save num_epochs + 1.
    assert experts.num_epochs + 1 >= hp.max_start_epoch + hp.expert_epochs
  tiny_experts, tiny_mtt = pub.get_config("method=experts,size=tiny"), pub.get_config(
      "method=mtt,ipc=1,size=tiny")
  assert tiny_experts.model_kwargs.width == tiny_mtt.model_kwargs.width
  assert tiny_experts.train_per_class == tiny_mtt.train_per_class


# ----------------------------------------------------------------------------- whole dataset


def test_whole_dataset_training_resumes_to_the_dc_protocol_result(tiny_data, tmp_path):
  config = pub.get_config("method=whole,size=tiny")
  config.data_dir = tiny_data
  config.progress = False
  row_dir = str(tmp_path / "whole")
  assert pt.train_whole(config, row_dir, lambda first: True, max_epochs=1) is None  # 1 of 3 epochs
  out = pt.train_whole(config, row_dir, lambda first: True)
  assert [c["end"] for c in chunk_log(str(tmp_path), "whole")] == [1, 2, 3]
  # The same networks, shuffles and optimiser as the DC protocol in one call.
  ds, _ = classifier.load_preprocessed(config)
  model = models.get_model(config.model, ds.num_classes, **config.model_kwargs)
  keys = jax.random.split(jax.random.PRNGKey(config.seed), config.num_seeds)
  x, y, x_test, y_test = map(jax.numpy.asarray, (ds.x_train, ds.y_train, ds.x_test, ds.y_test))
  expected = train.evaluate_dc_protocol(model, keys, x, y, x_test, y_test,
                                        num_epochs=config.num_epochs, batch_size=config.batch_size,
                                        learning_rate=config.learning_rate)
  # at most one of the 100 test images may flip under a different float summation order
  np.testing.assert_allclose(out["dc_all"], np.asarray(expected), atol=0.0101)
  assert out["epochs"] == 3 and out["num_train"] == 250


# ----------------------------------------------------------------------------- the script


def test_one_unit_of_the_whole_row_trains_one_epoch(tiny_data, tmp_path):
  workdir = str(tmp_path / "table")
  out, table = run_table(workdir, tiny_data, "--methods=whole", "--max_units=1",
                         "--max_chunk_iterations=1")
  assert "stop before the next whole-dataset epoch" in out
  assert [c["end"] for c in chunk_log(workdir, "whole")] == [1]
  assert "s_per_epoch" in json.load(open(os.path.join(workdir, "timing.json")))["whole"]


def test_a_stopped_row_resumes_from_its_checkpoint_here_or_from_the_evidence_copy(
    tiny_data, tmp_path):
  workdir, docs = str(tmp_path / "table"), str(tmp_path / "docs")
  os.makedirs(os.path.join(docs, "controls", "random_dsa_protocol"))
  with open(os.path.join(docs, "controls", "random_dsa_protocol", "results.json"), "w") as f:
    f.write("{}")
  with open(os.path.join(docs, pt.TIMING_FILE), "w") as f:
    json.dump({"whole": {"s_per_epoch": 1.0}}, f)
  out, table = run_table(workdir, tiny_data, "--methods=dc", "--ipcs=1", "--max_units=1",
                         "--max_chunk_iterations=1", f"--export_dir={docs}")
  assert "stop before dc_ipc1 iterations 1..2" in out
  assert table["rows"][0]["status"] == "running: 1/2 iterations" and table["stopped_before"]
  # The evidence copy: the row with its latest checkpoint, the table of all 15 rows, the
  # workdir's timings over the copy's others; the controls are left as they were.
  assert "evidence of 1 rows copied" in out
  copied = tree_bytes(os.path.join(docs, "dc_ipc1"))
  assert "checkpoints/1/" in "".join(copied) and driver.DISTILLED_FILE in copied
  with open(os.path.join(docs, "table.json")) as f:
    rows = {r["row"]: r["status"] for r in json.load(f)["rows"]}
  assert len(rows) == 15 and rows["dc_ipc1"] == "running: 1/2 iterations"
  assert rows["random_ipc1"] == "not started"
  with open(os.path.join(docs, pt.TIMING_FILE)) as f:
    timing = json.load(f)
  assert timing["whole"] == {"s_per_epoch": 1.0} and "s_per_iteration" in timing["dc_ipc1:distill"]
  # A fresh machine: a workdir seeded from the copy (make published-table-seed) finishes
  # the row from that checkpoint.
  fresh = str(tmp_path / "fresh")
  subprocess.run(["cp", "-rn", f"{docs}/.", f"{fresh}/"], check=True)
  out, table = run_table(fresh, tiny_data, "--methods=dc", "--ipcs=1", f"--export_dir={docs}")
  assert [(c["start"], c["end"]) for c in chunk_log(fresh, "dc_ipc1")] == [(0, 1), (1, 2)]
  assert table["rows"][0]["status"] == "measured" and table["stopped_before"] is None
  assert not any(p.startswith("checkpoints") for p in tree_bytes(os.path.join(docs, "dc_ipc1")))
  assert os.path.exists(os.path.join(docs, "controls", "random_dsa_protocol", "results.json"))
  assert not [n for n in os.listdir(docs) if n.startswith(".")]
  # Each chunk's closing evaluation is a one-network progress point; the published
  # protocol, over all the evaluation networks, runs once, in the evaluation unit.
  with open(os.path.join(fresh, "dc_ipc1", driver.RESULTS_FILE)) as f:
    assert len(json.load(f)["protocol_a_all"]) == 1
  with open(os.path.join(fresh, "dc_ipc1", pt.ROW_FILE)) as f:
    row = json.load(f)
  assert len(row["protocol_a_all"]) == len(row["dc_all"]) == pub.distill_config(
      "dc", 1, "tiny").eval.num_seeds > 1
  # Distilled in two invocations on two "machines" = distilled in one: the driver's keys
  # are fold_in(key, i).
  config = pub.distill_config("dc", 1, "tiny")
  config.data_dir, config.progress, config.eval.dc_protocol = tiny_data, False, False
  straight = driver.run_distillation(config, str(tmp_path / "straight"))
  chunked = synset.load_distilled(os.path.join(docs, "dc_ipc1", driver.DISTILLED_FILE))
  np.testing.assert_allclose(chunked.images, synset.load_distilled(straight["distilled"]).images,
                             rtol=1e-5, atol=1e-6)
  # An export from a workdir that lacks a row the copy has measured is refused, in one
  # line, and the copy is left byte-identical.
  before = tree_bytes(docs)
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-m", "benchmarks.published_table",
                         f"--workdir={tmp_path / 'other'}", "--size=tiny", "--report_only",
                         f"--export_dir={docs}"], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode != 0 and "Traceback" not in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("error: WorkdirError: ")
  assert "lacks (dc_ipc1)" in proc.stderr
  assert tree_bytes(docs) == before


def test_a_swap_stopped_between_its_renames_is_completed_not_lost(tmp_path):
  final, partial = tmp_path / "dc_ipc1", tmp_path / ".dc_ipc1.partial"
  old = tmp_path / ".dc_ipc1.old"
  # An export stopped after moving the copy aside and before moving the new row in; the
  # next one fails too (its partial row is missing): the copy must survive both.
  old.mkdir()
  (old / "row.json").write_text("the copy")
  with pytest.raises(FileNotFoundError):
    pt._swap_in(str(partial), str(final))
  assert [p.read_text() for p in tmp_path.glob("*/row.json")] == ["the copy"]
  # A whole swap then replaces it and leaves nothing beside the row.
  partial.mkdir()
  (partial / "row.json").write_text("new")
  pt._swap_in(str(partial), str(final))
  assert (final / "row.json").read_text() == "new" and os.listdir(tmp_path) == ["dc_ipc1"]


def test_reduction_is_named_only_for_what_was_cut():
  record = {"method": "dc", "iterations": 200, "dc_all": [0.7] * 5, "stop_reason": "iterations"}
  assert pt.describe_reduction(record, 1000, 20) == "200 of 1,000 iterations; 5 networks"
  assert pt.describe_reduction({**record, "dc_all": [0.7] * 20}, 1000, 20) == (
      "200 of 1,000 iterations")
  # A plateau stop before the cap is the method's own stop, not a cut.
  assert pt.describe_reduction({**record, "stop_reason": "plateau", "dc_all": [0.7] * 20},
                               1000, 20) is None
  assert pt.describe_reduction({"method": "random", "iterations": 0, "dc_all": [0.5] * 5},
                               0, 20) == "5 networks"
  assert pt.describe_reduction({"method": "whole", "dc_all": [0.9] * 3}, None, 20) is None
  mtt = {"method": "mtt", "iterations": 50, "dc_all": [0.6] * 5, "num_experts": 2}
  assert pt.describe_reduction(mtt, 5000, 20, 100) == (
      "50 of 5,000 iterations; 2 of 100 experts; 5 networks")
  assert pt.describe_reduction({**mtt, "iterations": 5000, "dc_all": [0.6] * 20,
                                "num_experts": 100}, 5000, 20, 100) is None


def test_reduction_cuts_the_config_and_rejects_negative_counts():
  config = pub.distill_config("dm", 1)
  pt.Reduction(max_iterations=200, eval_networks=5).apply(config)
  assert config.num_iterations == 200 and config.eval.num_seeds == 5
  config = pub.distill_config("dc", 1)
  pt.Reduction(max_iterations=10 ** 6).apply(config)          # never raises the count
  assert config.num_iterations == pub.distill_config("dc", 1).num_iterations
  assert config.eval.num_seeds == pub.EVAL_NETWORKS
  with pytest.raises(ValueError, match="--max_iterations, --eval_networks and --max_experts "
                     "must be >= 0"):
    pt.Reduction(eval_networks=-1)
  with pytest.raises(ValueError, match="must be >= 0"):
    pt.Reduction(max_experts=-1)
  # --max_experts cuts the buffer and the MTT row that reads it, never raises either.
  experts, mtt = pub.experts_config_for(), pub.distill_config("mtt", 1)
  pt.Reduction(max_experts=4).apply_experts(experts, mtt)
  assert (experts.num_experts, experts.experts_per_batch, mtt.mtt.num_experts) == (4, 4, 4)
  experts, mtt = pub.experts_config_for(), pub.distill_config("mtt", 1)
  pt.Reduction(max_experts=10 ** 6).apply_experts(experts, mtt)
  assert experts.num_experts == pub.experts_config_for().num_experts
  experts, mtt = pub.experts_config_for(), pub.distill_config("mtt", 1)
  pt.Reduction(max_iterations=5).apply_experts(experts, mtt)     # no expert cut: untouched
  assert experts.num_experts == pub.experts_config_for().num_experts
  assert mtt.mtt.num_experts == 0


def test_a_reduced_row_is_named_kept_and_continued(tiny_data, tmp_path):
  workdir = str(tmp_path / "table")
  networks = pub.distill_config("dc", 1, "tiny").eval.num_seeds
  out, table = run_table(workdir, tiny_data, "--methods=dc", "--ipcs=1", "--max_iterations=1",
                         "--eval_networks=1")
  row = table["rows"][0]
  assert row["reduction"] == "1 of 2 iterations; 1 network"
  assert row["status"] == "measured, reduced: 1 of 2 iterations; 1 network"
  assert row["num_networks"] == 1 and "--max_iterations=1 --eval_networks=1" in table["command"]
  row_path = os.path.join(workdir, "dc_ipc1", pt.ROW_FILE)
  with open(row_path, "rb") as f:
    reduced = f.read()
  # --report_only runs nothing, so the row's files stay as they are.
  out, table = run_table(workdir, tiny_data, "--methods=dc", "--ipcs=1", "--report_only")
  assert "continuing" not in out and table["rows"][0]["reduction"] == row["reduction"]
  with open(row_path, "rb") as f:
    assert f.read() == reduced
  # The same reduction again: finished, nothing re-runs.
  out, _ = run_table(workdir, tiny_data, "--methods=dc", "--ipcs=1", "--max_iterations=1",
                     "--eval_networks=1")
  assert "skip dc_ipc1: finished" in out
  # A run that stops before evaluating leaves the reduced row in the table.
  out, table = run_table(workdir, tiny_data, "--methods=dc", "--ipcs=1", "--max_units=1")
  assert "continuing a reduced row" in out and table["stopped_before"] == "dc_ipc1 evaluation"
  assert table["rows"][0]["reduction"] == "1 of 2 iterations; 1 network"
  # At published settings the row continues from its checkpoint; the reduced record stays.
  out, table = run_table(workdir, tiny_data, "--methods=dc", "--ipcs=1")
  assert "the reduced row is kept as row.reduced_1it_1nets.json" in out
  with open(os.path.join(workdir, "dc_ipc1", "row.reduced_1it_1nets.json"), "rb") as f:
    assert f.read() == reduced
  assert [(c["start"], c["end"]) for c in chunk_log(workdir, "dc_ipc1")
          if c["kind"] == "distill"] == [(0, 1), (1, 2)]
  row = table["rows"][0]
  assert row["status"] == "measured" and row["reduction"] is None
  assert row["num_networks"] == networks


def test_a_reduced_mtt_row_is_distilled_again_from_more_experts(tiny_data, tmp_path):
  workdir = str(tmp_path / "table")
  total = pub.experts_config_for("tiny").num_experts
  assert total > 1
  out, table = run_table(workdir, tiny_data, "--methods=mtt", "--ipcs=1", "--max_experts=1",
                         "--eval_networks=1")
  row = table["rows"][0]
  assert row["reduction"] == f"1 of {total} experts; 1 network" and "--max_experts=1" in table[
      "command"]
  experts_dir = os.path.join(workdir, "experts")
  assert [c["end"] for c in chunk_log(workdir, "experts")] == [1]
  assert os.path.exists(experts_lib.expert_path(experts_dir, 0))
  assert not os.path.exists(experts_lib.expert_path(experts_dir, 1))
  with open(experts_lib.expert_path(experts_dir, 0), "rb") as f:
    expert0 = f.read()
  row_dir = os.path.join(workdir, "mtt_ipc1")
  with open(os.path.join(row_dir, pt.ROW_FILE), "rb") as f:
    reduced = f.read()
  assert json.loads(reduced)["num_experts"] == 1
  out, _ = run_table(workdir, tiny_data, "--methods=mtt", "--ipcs=1", "--max_experts=1",
                     "--eval_networks=1")
  assert "skip mtt_ipc1: finished" in out
  # With every expert, the buffer grows (expert 0 is not retrained) and MTT distils again
  # from the start; the row of one expert is kept whole.
  out, table = run_table(workdir, tiny_data, "--methods=mtt", "--ipcs=1")
  assert "kept as mtt_ipc1.reduced_1experts; distilling again from the start" in out
  assert "continuing" not in out
  with open(os.path.join(row_dir + ".reduced_1experts", pt.ROW_FILE), "rb") as f:
    assert f.read() == reduced
  with open(experts_lib.expert_path(experts_dir, 0), "rb") as f:
    assert f.read() == expert0
  assert chunk_log(workdir, "experts")[-1]["end"] == total
  # Distilled afresh: the old row's config (1 expert) would have been refused, not resumed.
  assert [(c["start"], c["end"]) for c in chunk_log(workdir, "mtt_ipc1")
          if c["kind"] == "distill"] == [(0, pub.distill_config("mtt", 1, "tiny").num_iterations)]
  row = table["rows"][0]
  assert row["status"] == "measured" and row["reduction"] is None
  with open(os.path.join(row_dir, pt.ROW_FILE)) as f:
    assert json.load(f)["num_experts"] == total


@pytest.mark.slow
def test_every_row_end_to_end_and_a_second_run_recomputes_nothing(tiny_data, tmp_path):
  workdir = str(tmp_path / "table")
  out, table = run_table(workdir, tiny_data)
  rows = pt.plan_rows(pt.DEFAULT_METHODS, pub.TABLE_IPCS)
  assert [r["row"] for r in table["rows"]] == [r.name for r in rows]
  assert len(rows) == 2 + 1 + 6 * 2                       # random x2, whole, 6 methods x 2 IPCs
  for record in table["rows"]:
    assert record["status"] == "measured", record
    assert 0.0 <= record["ddjax_mean"] <= 100.0 and record["ddjax_std"] >= 0.0
  with open(os.path.join(workdir, "table.md")) as f:
    text = f.read()
  assert all(f"| {r['method']} | {r['ipc']} |" in text for r in table["rows"])
  dc1 = next(r for r in table["rows"] if r["row"] == "dc_ipc1")
  assert dc1["difference_in_published_std"] == pytest.approx((dc1["ddjax_mean"] - 70.5) / 0.6)
  experts = chunk_log(workdir, "experts")
  assert experts[-1]["end"] == pub.get_config("method=experts,size=tiny").num_experts

  def snapshot():
    out = {}
    for row in rows:
      for name in (pt.ROW_FILE, pt.CHUNKS_FILE):
        path = os.path.join(workdir, row.name, name)
        with open(path) as f:
          out[path] = (os.path.getmtime(path), f.read())
    return out

  before = snapshot()
  out, again = run_table(workdir, tiny_data)
  assert snapshot() == before                             # no row re-ran, no chunk was added
  assert out.count("skip ") == len(rows) and "iterations" not in out
  assert again["rows"] == table["rows"]
