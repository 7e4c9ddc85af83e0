"""The one-command reproduction (launch/reproduce.py): configs, the report writer, and a
tiny end-to-end run with resume.

The end-to-end test distils three sets (random, dm, and mtt with its experts stage) at
size=tiny and runs one analysis per claim module; the report writer is tested in full on
fabricated, schema-valid results (every analysis at tiny size would take minutes here).
"""

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from configs import reproduce as reproduce_config
from ddjax import data, experts
from ddjax.analysis import report, reproduce
from ddjax.distill import driver

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def _config(**overrides):
  config = reproduce_config.get_config("dataset=mnist5k,size=tiny")
  for k, v in overrides.items():
    config[k] = v
  return config


# ----------------------------------------------------------------------------- configs


def test_paper_config_uses_the_papers_settings():
  config = reproduce_config.get_config("dataset=cifar10,size=paper")
  assert config.ipc == 10 and config.methods.split(",") == ["random", "dc", "dm", "mtt", "bptt",
                                                            "kip"]
  for method in reproduce.method_names(config):
    cfg = config.distill[method]
    assert (cfg.dataset, cfg.ipc, cfg.model) == ("cifar10", 10, "convnet")
    assert cfg.model_kwargs.width == 128 and cfg.preprocess == "standardize"  # no ZCA (paper)
    assert cfg.eval.protocol_a_steps == 300 and cfg.eval.protocol_a_lr == 0.01
    assert cfg.eval.protocol_a_momentum == 0.9 and cfg.eval.num_seeds == 5
  assert config.distill.mtt.num_iterations == 5000 and config.distill.dm.num_iterations == 20000
  assert config.analysis.model_kwargs.width == 128 and config.analysis.protocol_a.steps == 300
  assert config.experts.num_experts == 100 and config.experts.num_epochs == 50
  reproduce.check_experts_match(config)  # MTT can read the experts this config trains


def test_demo_config_cuts_and_shared_fields():
  config = reproduce_config.get_config("dataset=mnist5k,size=demo")
  reproduce.check_experts_match(config)
  for method in reproduce.method_names(config):
    cfg = config.distill[method]
    assert cfg.eval.every == 0 and cfg.eval.num_seeds == 1 and not cfg.eval.dc_protocol
    assert cfg.eval.protocol_a_steps == 300  # protocol A itself is not cut
  full = {m: reproduce_config.METHOD_CONFIGS[m].get_config("dataset=mnist5k,ipc=10")
          for m in ("dc", "dm", "mtt", "bptt", "kip")}
  for method, cfg in full.items():  # fewer outer iterations, same per-iteration settings
    assert 0 < config.distill[method].num_iterations < cfg.num_iterations
    assert config.distill[method][method].to_dict().keys() == cfg[method].to_dict().keys()
  assert config.distill.dm.dm.lr_img == full["dm"].dm.lr_img
  # seed, data_dir and progress are one field for every stage
  config.seed = 7
  config.data_dir = "/data"
  assert config.experts.seed == config.analysis.seed == config.distill.kip.seed == 7
  assert config.distill.mtt.data_dir == config.analysis.data_dir == "/data"


def _flat(cfg, prefix=""):
  out = {}
  for k, v in cfg.items():
    out.update(_flat(v, f"{prefix}{k}.") if hasattr(v, "items") else {prefix + k: v})
  return out


# What fashion_mnist may set differently from mnist5k at sizes tiny and demo: its name, its
# class-balanced subset (mnist5k is that size already) and DSA's flip (digits drop it).
FASHION_OWN_FIELDS = ("dataset", "train_per_class", "test_per_class", "dsa_strategy",
                      "dc_augment")


@pytest.mark.parametrize("size", ["tiny", "demo"])
def test_fashion_mnist_at_cpu_sizes_takes_the_mnist5k_settings(size):
  fashion = reproduce_config.get_config(f"dataset=fashion_mnist,size={size}")
  mnist5k = reproduce_config.get_config(f"dataset=mnist5k,size={size}")
  reproduce.check_experts_match(fashion)
  f, m = _flat(fashion), _flat(mnist5k)
  assert f.keys() == m.keys()
  differ = {k for k in f if f[k] != m[k]}
  assert differ and all(k.rsplit(".", 1)[-1] in FASHION_OWN_FIELDS for k in differ), differ
  assert fashion.distill.dm.dm.dsa_strategy == "color_crop_cutout_flip_scale_rotate"
  widths = {k: v for k, v in f.items() if k.endswith("model_kwargs.width")}
  # KIP distils through the NTK: its unused `model_kwargs` is the base config's (as mnist5k's).
  widths.pop("distill.kip.model_kwargs.width")
  assert set(widths.values()) == ({32} if size == "demo" else {4, 8}), widths
  stages = [fashion.experts, *fashion.distill.values()]
  if size == "demo":
    assert fashion.sets == "shipped"      # none ships: every method is distilled
    assert not any(reproduce.shipped_entry(fashion, m) for m in reproduce.method_names(fashion))
    assert {k: fashion.distill[k].num_iterations for k in ("random", "dc", "dm", "mtt", "bptt",
                                                            "kip")} == dict(
        random=0, dc=3, dm=80, mtt=40, bptt=12, kip=25)
    assert (fashion.experts.num_experts, fashion.experts.num_epochs) == (3, 5)
    for cfg in stages:                    # 4,000 train and 1,000 test images everywhere
      test = cfg.get("test_per_class", cfg.get("eval", {}).get("test_per_class"))
      assert (cfg.train_per_class, test) == (400, 100), cfg
    assert (fashion.analysis.train_per_class, fashion.analysis.test_per_class) == (400, 100)
  else:                                   # the quick presets' subsets, as mnist5k's
    assert all(0 < cfg.train_per_class <= 20 for cfg in stages)
    assert (fashion.analysis.train_per_class, fashion.analysis.test_per_class) == (20, 10)


def test_fashion_mnist_elsewhere_keeps_its_published_settings():
  from configs import published  # pylint: disable=g-import-not-at-top
  paper = reproduce_config.get_config("dataset=fashion_mnist,size=paper")
  for method in reproduce.method_names(paper):
    cfg = paper.distill[method]
    assert cfg.model_kwargs.width == cfg.eval.model_kwargs.width == 128, method
    assert cfg.train_per_class == 0 and cfg.eval.test_per_class == 0
    own = reproduce_config.METHOD_CONFIGS[method].get_config("dataset=fashion_mnist")
    assert cfg.num_iterations == own.num_iterations
    if method in ("dc", "dm", "mtt", "kip"):   # the rows configs/published.py evaluates
      assert cfg[method] == published.distill_config(method, 10)[method], method
  assert paper.experts.model_kwargs.width == 128 and paper.experts.train_per_class == 0
  assert paper.analysis.model_kwargs.width == 128 and paper.analysis.train_per_class == 0
  # The method configs themselves are CPU-sized only when asked (`cpu`), and only for the
  # datasets those settings were made for.
  dm = reproduce_config.METHOD_CONFIGS["dm"]
  assert dm.get_config("dataset=fashion_mnist").model_kwargs.width == 128
  asked = dm.get_config("dataset=fashion_mnist,cpu")
  assert (asked.model_kwargs.width, asked.num_iterations, asked.train_per_class) == (32, 300, 400)
  with pytest.raises(ValueError, match="28x28x1"):
    dm.get_config("dataset=cifar10,cpu")


def test_fashion_mnist_demo_distils_every_method_and_says_so(tmp_path, monkeypatch, caplog):
  ran = {}
  monkeypatch.setattr(driver, "run_distillation",
                      lambda cfg, d: ran.setdefault(os.path.basename(d), cfg))
  config = reproduce_config.get_config("dataset=fashion_mnist,size=demo")
  config.methods = "random,dm"
  with caplog.at_level("WARNING"):
    reproduce.distill_stage(config, str(tmp_path), ["random", "dm"],
                            reproduce.Timer(verbose=False))
  assert sorted(ran) == ["dm", "random"]
  assert ran["dm"].num_iterations == 80 and ran["dm"].train_per_class == 400
  assert ("No shipped fashion_mnist set at IPC 10 for random, dm (ddjax ships sets for "
          "mnist5k): distilling them here with config.distill (outer iterations: random 0, "
          "dm 80).") in caplog.text


def test_bad_configs_fail_before_any_work(tmp_path):
  with pytest.raises(reproduce.ReproductionConfigError, match="no config.distill section"):
    reproduce.run_reproduction(_config(methods="dm,nope"), str(tmp_path / "a"))
  with pytest.raises(reproduce.ReproductionConfigError, match="unknown analyses"):
    reproduce.run_reproduction(_config(analyses="pixels,nope"), str(tmp_path / "b"))
  config = _config()
  config.experts.num_epochs = 1
  with pytest.raises(reproduce.ReproductionConfigError, match="expert epochs"):
    reproduce.run_reproduction(config, str(tmp_path / "c"))
  with pytest.raises(ValueError, match="Unknown size"):
    reproduce_config.get_config("size=huge")
  assert not any(os.path.exists(tmp_path / d) for d in "abc")


def test_missing_dataset_stops_with_its_message_and_writes_nothing(tmp_path):
  config = _config()
  config.unlock()
  for sub in [config, config.experts, config.analysis, *config.distill.values()]:
    sub.dataset = "npz:" + str(tmp_path / "absent.npz")
  with pytest.raises(data.DatasetError, match="absent.npz"):
    reproduce.run_reproduction(config, str(tmp_path / "w"), verbose=False)
  assert not os.path.exists(tmp_path / "w")


# ----------------------------------------------------------------------------- the report


# Two analyses of a package of one's own (the registry's dotted names): their claim rows,
# one of them malformed, and a third whose claims raise.
FAKE_ANALYSES = {
    "pixels": textwrap.dedent('''
        QUESTION = "Q1"
        def run(config, workdir):
          raise NotImplementedError
        def claims(result):
          frac = result["frac_outside"]
          return [{"question": "Q1", "analysis": "pixels", "claim": "Pixels | leave [0, 1].",
                   "criterion": "frac_outside >= 0.01", "paper": "DM up to 1.5",
                   "measured": f"{frac:.2f}", "reproduced": frac >= 0.01}]
        '''),
    "agreement": textwrap.dedent('''
        QUESTION = "Q2"
        def run(config, workdir):
          raise NotImplementedError
        def claims(result):
          gap = result["gap"]
          return [{"question": "Q2", "analysis": "agreement", "claim": "Early > subset.",
                   "paper": "all four", "measured": f"{gap:+.2f}", "reproduced": gap > 0},
                  {"question": "Q2", "analysis": "agreement", "claim": "malformed"}]
        '''),
    "broken": textwrap.dedent('''
        QUESTION = "Q3"
        def run(config, workdir):
          raise NotImplementedError
        def claims(result):
          raise KeyError("needed")
        '''),
}


def _fabricated_workdir(tmp_path):
  """A workdir with two analyses' JSON + PNGs and two distilled sets' results."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "w"
  (workdir / "analysis").mkdir(parents=True)
  png = lambda p: Image.fromarray(np.zeros((4, 4), np.uint8)).save(p)
  png(workdir / "analysis" / "pixels.png")
  png(workdir / "analysis" / "agreement_kde.png")
  results = {
      "pixels": {"analysis": "pixels", "paper_counterpart": "Fig. 3 left",
                 "figures": ["pixels.png"], "seeds": [0], "frac_outside": 0.2},
      "agreement": {"analysis": "agreement", "paper_counterpart": "Fig. 4",
                    "figures": ["agreement_kde.png", "gone.png"], "seeds": [0, 1],
                    "gap": -0.03}}
  for name, res in results.items():
    (workdir / "analysis" / f"{name}.json").write_text(json.dumps(res))
  distilled = {}
  for method, acc in (("random", 0.88), ("dm", 0.92)):
    d = workdir / "distill" / method
    d.mkdir(parents=True)
    png(d / "synthetic.png")
    distilled[method] = {"method": method, "dataset": "mnist5k", "ipc": 10, "iterations": 80,
                         "distill_seconds": 12.0, "protocol_a_mean": acc, "protocol_a_std": 0.01,
                         "protocol_a_all": [acc - 0.01, acc + 0.01], "learned_lr": None,
                         "grid": str(d / "synthetic.png")}
    (d / "results.json").write_text(json.dumps(distilled[method]))
  return str(workdir), results, distilled


def test_report_on_fabricated_results(tmp_path, monkeypatch):
  from ddjax import analysis  # pylint: disable=g-import-not-at-top
  (tmp_path / "fake_analyses").mkdir()
  (tmp_path / "fake_analyses" / "__init__.py").write_text("")
  for name, text in FAKE_ANALYSES.items():
    (tmp_path / "fake_analyses" / f"{name}.py").write_text(text)
  monkeypatch.syspath_prepend(str(tmp_path))
  workdir, results, distilled = _fabricated_workdir(tmp_path)
  timings = [{"stage": "distill", "name": "dm", "status": "ran", "wall_s": 61.0, "cpu_s": 90.0,
              "load_start": 1.0, "load_end": 2.0, "note": ""},
             {"stage": "analysis", "name": "pixels", "status": "skipped", "wall_s": 0.0,
              "cpu_s": 0.0, "note": "pixels.json present", "earlier_wall_s": 5.0,
              "earlier_cpu_s": 4.0}]
  names = ["fake_analyses.pixels", "fake_analyses.agreement", "fake_analyses.broken",
           "no_such_analysis"]
  claims, problems = analysis.claim_rows(
      {**results, "broken": {"x": 1}, "no_such_analysis": {"x": 1}}, names)
  out = report.write_report(workdir, results=results, distilled=distilled, timings=timings,
                            claims=claims, claim_problems=problems,
                            sections=analysis.sections(names[:3]),
                            failures=[{"stage": "analysis", "name": "mixing", "note": "Boom"}],
                            expected=["pixels", "agreement", "mixing"])
  text = open(out["path"]).read()

  # One table line per valid row, in order, verdicts computed from the results.
  rows = [line for line in text.splitlines() if re.match(r"\| \d+ \| Q\d \|", line)]
  assert len(rows) == len(out["claims"]) == 2
  assert rows[0].endswith("| yes |") and rows[1].endswith("| no |")
  assert "Pixels \\| leave [0, 1]." in rows[0]        # a pipe cannot break the table
  assert "**Claims reproduced: 1 of 2** (Q1 1/1, Q2 0/1, Q3 0/0)" in text
  assert out["counts"]["all"] == (1, 2)
  # Problems: the malformed row, the raising claims, the unknown analysis, the
  # listed-but-missing figure, the failure.
  assert any("malformed row" in p and "lacks" in p for p in out["claim_problems"])
  assert any("fake_analyses.broken.claims` failed: KeyError" in p for p in out["claim_problems"])
  assert any("no_such_analysis" in p for p in out["claim_problems"])
  assert out["missing_figures"] == ["analysis/gone.png"]
  assert "analysis `mixing` failed: Boom" in text and "**Incomplete:**" in text
  # Every image link resolves, relative to report.md.
  links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
  assert {"analysis/pixels.png", "analysis/agreement_kde.png", "distill/dm/synthetic.png",
          "distill/random/synthetic.png"} <= set(links)
  assert all(os.path.exists(os.path.join(workdir, link)) for link in links)
  # Sections per question with their counterparts; the accuracy table; timings.
  assert "## Q1: Can distilled data substitute" in text and "Fig. 4" in text
  assert re.search(r"\| dm \| DM \| 80 \| 12 \| 0\.920 ± 0\.010 \(2 seeds\)", text)
  assert "| distill | dm | ran | 61.0 | 90.0 |" in text and "(5 earlier)" in text
  saved = json.load(open(os.path.join(workdir, report.CLAIMS_FILE)))
  assert saved["counts"]["all"] == [1, 2] and len(saved["claims"]) == 2

  # The same report, rebuilt from the workdir's files alone (the analysis tour's path),
  # with the header and set order of the reproduction's config.json.
  loaded_results, loaded_distilled = reproduce.load_workdir(workdir)
  assert loaded_results == results and loaded_distilled == distilled
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump({"dataset": "mnist5k", "ipc": 10, "size": "demo", "seed": 3, "methods": "dm,random",
               "analyses": "all", "distill": {}}, f)
  monkeypatch.setattr(analysis, "claim_rows", lambda results, names=None: ([], []))
  rebuilt = open(reproduce.report_from_workdir(workdir)["path"]).read()
  assert "size: **demo**, seed: **3**, methods: **dm, random**" in rebuilt
  assert rebuilt.index("| dm | DM |") < rebuilt.index("| random | random real subset |")


def test_validate_claim_rejects_non_bool_verdicts():
  row = {"question": "Q1", "analysis": "a", "claim": "c", "paper": "p", "measured": "m"}
  assert report.validate_claim({**row, "reproduced": np.bool_(True)})["reproduced"] is True
  for bad in (None, "yes", 1):
    with pytest.raises(ValueError, match="expected True or False"):
      report.validate_claim({**row, "reproduced": bad})
  with pytest.raises(ValueError, match="question"):
    report.validate_claim({**row, "question": "Q4", "reproduced": True})


def test_both_timing_tables_show_the_same_cells_and_totals():
  rows = [{"stage": "distill", "name": "dm", "status": "ran", "wall_s": 12.34, "cpu_s": 20.0,
           "load_start": 1.0, "load_end": 2.5, "note": "x"},
          {"stage": "distill", "name": "mtt", "status": "skipped", "earlier_wall_s": 100.0,
           "earlier_cpu_s": 150.0},
          {"stage": "analysis", "name": "pixels", "status": "skipped"},
          {"stage": "analysis", "name": "loo", "status": "ran", "wall_s": 1.0, "cpu_s": 1.5,
           "load_start": None, "load_end": 2.0}]
  table = report.timings_table(rows).splitlines()
  assert table[2] == "| distill | dm | ran | 12.3 | 20.0 | 1.0 → 2.5 | x |"
  assert table[3] == "| distill | mtt | skipped | (100 earlier) | (150 earlier) |  |  |"
  assert table[4] == "| analysis | pixels | skipped | - | - |  |  |"
  assert table[5] == "| analysis | loo | ran | 1.0 | 1.5 |  |  |"
  assert table[6] == "| **total** | this run |  | 13.3 | 21.5 |  |  |"  # skipped ones count 0
  text = reproduce.format_timings(rows).splitlines()
  assert text[1].split() == ["distill", "dm", "ran", "12.3", "20.0", "1.0-2.5"]
  assert text[2].split() == ["distill", "mtt", "skipped", "(100)", "(150)"]
  assert text[3].split() == ["analysis", "pixels", "skipped", "-", "-"]
  assert text[-1].split() == ["total", "(this", "run)", "13.3", "21.5"]


# ----------------------------------------------------------------------------- end to end


# One cheap analysis per question, two for Q1.
TINY_ANALYSES = "pixels,mixing,recognition_over_training,influence"


@pytest.mark.slow
def test_tiny_reproduction_end_to_end_and_resume(tmp_path, monkeypatch):
  from ddjax import analysis  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "repro")
  config = _config(methods="random,dm,mtt", analyses=TINY_ANALYSES)
  summary = reproduce.run_reproduction(config, workdir, verbose=False)

  # Every stage ran and left its outputs.
  ran = {(r["stage"], r["name"]) for r in summary["timings"] if r["status"] == "ran"}
  assert {("experts", "mtt experts"), ("distill", "random"), ("distill", "dm"),
          ("distill", "mtt"), ("report", "report.md")} <= ran
  assert len(experts.completed_experts(os.path.join(workdir, "experts"), 2)) == 2
  for method in ("random", "dm", "mtt"):
    res = summary["distill"][method]
    assert 0.0 <= res["protocol_a_mean"] <= 1.0 and res["method"] == method
  assert sorted(summary["analysis"]) == sorted(TINY_ANALYSES.split(","))
  assert not summary["failures"]

  # The claim table holds exactly the rows the modules compute from these results.
  expected_rows, problems = analysis.claim_rows(summary["analysis"], TINY_ANALYSES.split(","))
  assert not problems
  assert len(expected_rows) >= 4  # at least one per analysis
  text = open(os.path.join(workdir, "report.md")).read()
  table = [line for line in text.splitlines() if re.match(r"\| \d+ \| Q\d \|", line)]
  assert len(table) == len(expected_rows) == len(summary["claims"])
  for line, row in zip(table, expected_rows):
    assert f"| {row['analysis']} |" in line
    assert line.endswith("| yes |" if row["reproduced"] else "| no |")
  done = sum(bool(r["reproduced"]) for r in expected_rows)
  assert f"**Claims reproduced: {done} of {len(expected_rows)}**" in text
  links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
  figures = [f for res in summary["analysis"].values() for f in res["figures"]]
  assert figures and all(f"analysis/{f}" in links for f in figures)
  assert all(os.path.exists(os.path.join(workdir, link)) and link.endswith(".png")
             for link in links)
  assert "## Stage timings" in text and "| distill | dm | ran |" in text

  # Resume: nothing is recomputed; the report is rewritten with the earlier times.
  def refuse(*args, **kwargs):
    raise AssertionError("a finished stage ran again")
  monkeypatch.setattr(driver, "run_distillation", refuse)
  monkeypatch.setattr(experts, "train_experts", refuse)
  monkeypatch.setattr(analysis, "get_analysis", refuse)
  again = reproduce.run_reproduction(config, workdir, verbose=False)
  statuses = {(r["stage"], r["name"]): r["status"] for r in again["timings"]}
  assert statuses.pop(("report", "report.md")) == "ran"
  assert set(statuses.values()) == {"skipped"}
  assert all("earlier_wall_s" in r for r in again["timings"]
             if r["status"] == "skipped" and r["stage"] in ("distill", "analysis"))
  assert len(again["claims"]) == len(expected_rows)
  assert len(reproduce.read_timings(workdir)) == 2

  # Changed inputs (here the analysis seed) rerun the analysis, not the distillation.
  monkeypatch.undo()
  monkeypatch.setattr(driver, "run_distillation", refuse)
  config.analyses = "pixels"
  config.seed = 1
  third = reproduce.run_reproduction(config, workdir, verbose=False)
  statuses = {(r["stage"], r["name"]): r["status"] for r in third["timings"]}
  assert statuses[("analysis", "pixels")] == "ran" and statuses[("distill", "dm")] == "skipped"
  assert json.load(open(os.path.join(workdir, "analysis", "pixels.json")))["seeds"][0] == 1


def _fashion_idx_dir(directory, train_per_class=25, test_per_class=12):
  """Small Fashion-MNIST idx files (ddjax/data/idx.py; as tests/test_fashion_mnist.py), so
  the test needs neither Debian's package nor TFDS: a class-dependent blob plus noise."""
  from ddjax.data import idx  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  os.makedirs(directory, exist_ok=True)
  for split, per_class in (("train", train_per_class), ("test", test_per_class)):
    labels = np.tile(np.arange(10), per_class).astype(np.uint8)
    rows, cols = np.mgrid[:28, :28]
    centres = [(6 + 2 * c, 20 - c) for c in labels]
    images = np.stack([200 * np.exp(-((rows - r) ** 2 + (cols - c) ** 2) / 30.0)
                       for r, c in centres]) + rng.integers(0, 50, (len(labels), 28, 28))
    images_stem, labels_stem = idx.FILES[split]
    idx.write_idx(os.path.join(directory, images_stem), images.clip(0, 255).astype(np.uint8))
    idx.write_idx(os.path.join(directory, labels_stem + ".gz"), labels)
  return str(directory)


@pytest.mark.slow
def test_tiny_fashion_mnist_reproduction_end_to_end(tmp_path, monkeypatch):
  """The fashion_mnist path (its configs, the idx loader through data_dir, experts, MTT)
  on small idx files: every stage runs and reads fashion_mnist."""
  from ddjax.data import idx  # pylint: disable=g-import-not-at-top
  def no_fallback(*args, **kwargs):
    raise AssertionError("config.data_dir was not used")
  monkeypatch.setattr(idx, "DEBIAN_DIR", str(tmp_path / "no-debian"))  # as on CI
  monkeypatch.setattr(idx, "load_tfds", no_fallback)
  config = reproduce_config.get_config("dataset=fashion_mnist,size=tiny")
  config.data_dir = _fashion_idx_dir(tmp_path / "idx")
  config.methods = "random,dm,mtt"
  config.analyses = "pixels,mixing"
  summary = reproduce.run_reproduction(config, str(tmp_path / "repro"), verbose=False)
  assert not summary["failures"]
  assert sorted(summary["analysis"]) == ["mixing", "pixels"]
  for method in ("random", "dm", "mtt"):
    res = summary["distill"][method]
    assert res["dataset"] == "fashion_mnist" and 0.0 <= res["protocol_a_mean"] <= 1.0
  spec = experts.read_spec(os.path.join(str(tmp_path / "repro"), "experts"))
  assert spec["dataset"] == "fashion_mnist" and spec["train_per_class"] == 16


def test_launcher_reports_config_errors_in_one_line(tmp_path):
  proc = subprocess.run(
      [sys.executable, "-m", "launch.reproduce", "--config=configs/reproduce.py:size=tiny",
       "--config.methods=dm,nope", f"--workdir={tmp_path / 'w'}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode != 0
  assert "error: ReproductionConfigError: config.methods names ['nope']" in proc.stderr
  assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- shipped sets


def test_demo_and_full_analyse_the_shipped_sets():
  for size in ("demo", "full"):
    config = reproduce_config.get_config(f"dataset=mnist5k,size={size}")
    assert config.sets == "shipped" and reproduce.uses_shipped_sets(config)
  for size in ("tiny", "paper"):
    assert reproduce_config.get_config(f"size={size}").sets == "distil"
  config = reproduce_config.get_config("size=demo")
  config.sets = "nope"
  with pytest.raises(reproduce.ReproductionConfigError, match="config.sets"):
    reproduce.uses_shipped_sets(config)


def test_full_size_has_the_faithful_settings_on_the_tiny_tested_fields():
  """`full` sets values, never new fields: every field it sets is one the analyses read at
  size=tiny (the end-to-end test above), so the full run exercises tested code paths."""
  full = reproduce_config.get_config("dataset=mnist5k,size=full")
  tiny = reproduce_config.get_config("dataset=mnist5k,size=tiny")

  def keys(cfg, prefix=""):
    out = set()
    for k, v in cfg.items():
      out |= keys(v, f"{prefix}{k}.") if hasattr(v, "items") else {prefix + k}
    return out

  assert keys(full.analysis) == keys(tiny.analysis)
  a = full.analysis
  assert a.model_kwargs.width == 32 and a.protocol_a.steps == 300 and a.protocol_a.num_seeds == 5
  # Pools in chunks of 4 models (30 at once did not fit 24 GB); tiny runs the chunked path.
  assert a.member_chunk == 4 and 0 < tiny.analysis.member_chunk < 4
  # Mixing: the paper's additions and steps, an independent random baseline.
  assert a.mixing.additions == "0,2,10,50,250" and a.mixing.steps == 0
  assert a.mixing.baseline == "random_independent"
  assert "random_independent" in full.methods.split(",")
  assert full.distill.random_independent.seed == full.distill.random.seed + 1
  # Agreement: >= 100 subset models over the paper's 0.5-5 % range, >= 30 early-stopped runs.
  agr = a.agreement
  assert len(agr.subset_fractions) * agr.models_per_fraction >= 100
  assert min(agr.subset_fractions) == 0.005 and max(agr.subset_fractions) == 0.05
  assert agr.early_seeds >= 30 and agr.match_tolerance == 0.01
  # Curvature: all 300 states, PyHessian's rule on the full train split.
  cur = a.curvature_over_training
  assert (cur.num_steps, cur.stride, cur.num_probes, cur.train_subset) == (300, 1, 0, 0)
  # Influence: every image, every test image, the distillation's width.
  inf = a.influence
  assert (inf.points_per_class, inf.test_per_class, inf.width, inf.max_sets) == (0, 0, 0, 0)


def test_shipped_set_is_copied_in_not_distilled(tmp_path, monkeypatch):
  from ddjax.distill import pretrained  # pylint: disable=g-import-not-at-top
  if ("mnist5k", "random", 10) not in pretrained.available():
    pytest.fail("the shipped random IPC-10 set is missing")
  def refuse(*args, **kwargs):
    raise AssertionError("a shipped set was distilled")
  monkeypatch.setattr(driver, "run_distillation", refuse)
  config = _config(methods="random", analyses="pixels")
  config.sets = "shipped"
  workdir = str(tmp_path / "repro")
  summary = reproduce.run_reproduction(config, workdir, verbose=False)
  res = summary["distill"]["random"]
  record = pretrained.read_manifest()["entries"]["mnist5k/random_ipc10"]
  assert res["source"] == "shipped" and res["sha256"] == record["sha256"]
  assert res["protocol_a_mean"] == record["protocol_a_mean"]
  shipped = pretrained.load_pretrained("mnist5k", "random", 10)
  copied = np.load(os.path.join(workdir, "distill", "random", driver.DISTILLED_FILE))
  np.testing.assert_array_equal(copied["images"], shipped.images)
  assert "pixels" in summary["analysis"] and not summary["failures"]
