"""The whole paper from scratch on one dataset: the job behind `launch/reproduce.py`.

    summary = run_reproduction(config, workdir)      # config: configs/reproduce.py

Stages, each resumable (a finished piece is skipped, never redone):

1. experts   MTT's expert trajectories (`ddjax.experts.train_experts`) into
             `<workdir>/experts`; only if MTT is among the methods and not yet distilled.
2. distill   every method of `config.methods` with `ddjax.distill.driver.run_distillation`
             into `<workdir>/distill/<method>/` (skipped when its distilled.npz and
             results.json exist; a partly done run resumes from its orbax checkpoint).
             With `config.sets = "shipped"` a method whose converged set ships with ddjax
             (`ddjax.distill.load_pretrained`) is copied in instead, verified against the
             manifest; a method with no shipped set at this dataset and IPC is distilled.
3. analysis  every analysis of `config.analyses` (`ddjax.analysis.names()`) on the
             distilled sets, into `<workdir>/analysis/` (skipped when `<name>.json` exists
             and its inputs, the sets' content and the analysis config, are unchanged).
4. report    `<workdir>/report.md` (`ddjax.analysis.report.write_report`), always rewritten.

Every stage's wall time, process CPU time and the machine's load average go to
`<workdir>/timings.json` (one record per run) and into the report, so a run on a shared
machine can be told apart from one on free cores.

With `config.keep_going` (the default) a failing method or analysis is recorded (its
traceback in `<name>.error.txt`), the rest still run, the report lists the failure and
`run_reproduction` raises `ReproductionIncomplete` after writing it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import traceback
from typing import Any, Callable

import ml_collections

from ddjax import analysis, data, errors, experts
from ddjax import workdir as workdir_lib
from ddjax.analysis import common, report
from ddjax.distill import driver

EXPERTS_DIR = "experts"
DISTILL_DIR = "distill"
ANALYSIS_DIR = "analysis"
TIMINGS_FILE = "timings.json"
INPUTS_FILE = "inputs.json"        # analysis name -> fingerprint of its inputs

__all__ = ["EXPERTS_DIR", "DISTILL_DIR", "ANALYSIS_DIR", "TIMINGS_FILE", "INPUTS_FILE",
           "ReproductionIncomplete", "ReproductionConfigError", "StageRecord", "Timer",
           "read_timings", "timing_summary", "format_timings", "method_names",
           "analysis_names", "method_config", "analysis_config", "check_experts_match",
           "check_dataset", "distilled_done", "uses_shipped_sets", "shipped_entry",
           "install_shipped", "experts_stage", "distill_stage", "analysis_fingerprint",
           "analysis_stage", "run_reproduction", "load_workdir", "report_from_workdir",
           "analysis_report"]


class ReproductionIncomplete(RuntimeError):
  """Some methods or analyses failed; the report was written without them."""


class ReproductionConfigError(errors.ConfigError):
  """The reproduction config is inconsistent (unknown method or analysis, experts that
  MTT could not use); raised before any work starts."""


# ----------------------------------------------------------------------------- timing


@dataclasses.dataclass
class StageRecord:
  """One timed piece of a run: a stage ('distill') and what it ran ('dm')."""
  stage: str
  name: str
  status: str = "ran"          # ran | skipped | failed
  wall_s: float = 0.0
  cpu_s: float = 0.0           # this process's CPU time (all threads)
  load_start: float | None = None
  load_end: float | None = None
  note: str = ""


def _load() -> float | None:
  try:
    return float(os.getloadavg()[0])
  except OSError:
    return None


class Timer:
  """Collects `StageRecord`s, logs them as they finish and, given a workdir, saves this
  run's records to `<workdir>/timings.json` after each one (a killed run keeps the times
  of the pieces it finished)."""

  def __init__(self, verbose: bool = True, workdir: str | None = None):
    self.records: list[StageRecord] = []
    self.verbose = verbose
    self.workdir = workdir
    self.started = time.time()
    self._earlier_runs = read_timings(workdir) if workdir else []

  def _add(self, record: StageRecord) -> None:
    self.records.append(record)
    self._log(record)
    self.save()

  def save(self) -> list[dict]:
    """Writes the earlier runs plus this one; returns them (oldest first)."""
    runs = self._earlier_runs + [{"started": self.started, "finished": time.time(),
                                  "records": [dataclasses.asdict(r) for r in self.records]}]
    if self.workdir and os.path.isdir(self.workdir):
      workdir_lib.write_json(os.path.join(self.workdir, TIMINGS_FILE), {"runs": runs})
    return runs

  def skip(self, stage: str, name: str, note: str) -> StageRecord:
    record = StageRecord(stage, name, "skipped", note=note)
    self._add(record)
    return record

  def run(self, stage: str, name: str, fn: Callable[[], Any], *, keep_going: bool) -> Any:
    """Runs fn() timed. A failure is recorded; re-raised unless keep_going (then None)."""
    record = StageRecord(stage, name, load_start=_load())
    wall, cpu = time.time(), time.process_time()
    if self.verbose:
      logging.info("[%s] %s ...", stage, name)
    try:
      return fn()
    except Exception as e:  # pylint: disable=broad-except
      record.status = "failed"
      record.note = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
      if not keep_going:
        raise
      logging.error("%s %s failed:\n%s", stage, name, traceback.format_exc())
      return None
    finally:
      record.wall_s = time.time() - wall
      record.cpu_s = time.process_time() - cpu
      record.load_end = _load()
      self._add(record)

  def _log(self, record: StageRecord) -> None:
    if self.verbose:
      what = (f"{record.wall_s:.1f} s (cpu {record.cpu_s:.1f} s)" if record.status != "skipped"
              else record.note)
      logging.info("[%s] %s: %s, %s", record.stage, record.name, record.status, what)

  def failures(self) -> list[StageRecord]:
    return [r for r in self.records if r.status == "failed"]


def read_timings(workdir: str) -> list[dict]:
  """All runs recorded in `<workdir>/timings.json`, oldest first.

  Args:
    workdir: a reproduction workdir.

  Returns:
    One dict per run, {"started", "finished" (epoch seconds), "records" (`StageRecord`s
    as dicts)}; [] when the file is missing or damaged.
  """
  path = os.path.join(workdir, TIMINGS_FILE)
  if not os.path.exists(path):
    return []
  try:
    with open(path) as f:
      return list(json.load(f).get("runs", []))
  except (OSError, json.JSONDecodeError, AttributeError):
    return []  # a damaged timings file only loses the history


def timing_summary(runs: list[dict]) -> list[dict]:
  """The latest run's records; a skipped piece shows the time it took when it last ran.

  Args:
    runs: `read_timings(...)` (or `Timer.save()`), oldest first.

  Returns:
    The last run's records as dicts (`StageRecord`'s fields); a skipped one also has
    "earlier_wall_s" and "earlier_cpu_s" from the last earlier run that ran it. [] for no
    runs.
  """
  if not runs:
    return []
  earlier: dict[tuple[str, str], dict] = {}
  for run in runs[:-1]:
    for r in run["records"]:
      if r["status"] == "ran":
        earlier[(r["stage"], r["name"])] = r
  out = []
  for r in runs[-1]["records"]:
    row = dict(r)
    if r["status"] == "skipped" and (r["stage"], r["name"]) in earlier:
      prev = earlier[(r["stage"], r["name"])]
      row["earlier_wall_s"], row["earlier_cpu_s"] = prev["wall_s"], prev["cpu_s"]
    out.append(row)
  return out


def format_timings(rows: list[dict]) -> str:
  """A plain-text table of `timing_summary` rows (printed at the end of a run).

  Args:
    rows: `timing_summary(...)`.

  Returns:
    Aligned lines: stage, name, status, wall and CPU seconds, load (the cells of
    `report.timing_cells`), then this run's total.
  """
  lines = [f"{'stage':<9} {'name':<26} {'status':<8} {'wall s':>8} {'cpu s':>8} {'load':>9}"]
  for r in rows:
    wall, cpu, load = report.timing_cells(r, earlier="", arrow="-")
    lines.append(f"{r['stage']:<9} {r['name']:<26} {r['status']:<8} {wall:>8} {cpu:>8} {load:>9}")
  total_wall, total_cpu = report.timing_totals(rows)
  lines.append(f"{'total':<9} {'(this run)':<26} {'':<8} {total_wall:>8.1f} {total_cpu:>8.1f}")
  return "\n".join(lines)


# ----------------------------------------------------------------------------- config


def method_names(config: ml_collections.ConfigDict) -> list[str]:
  """The methods of `config.methods`, checked.

  Args:
    config: a reproduction config (`methods`: comma-separated, each a key of `distill`).

  Returns:
    The method names, in the given order.

  Raises:
    ReproductionConfigError: a method without a `config.distill` section, or one listed
      twice.
  """
  names = [m.strip() for m in str(config.methods).split(",") if m.strip()]
  unknown = [m for m in names if m not in config.distill]
  if unknown:
    raise ReproductionConfigError(
        f"config.methods names {unknown}, which have no config.distill section; expected "
        f"some of {sorted(config.distill.keys())}.")
  if len(set(names)) != len(names):
    raise ReproductionConfigError(f"config.methods lists a method twice: {config.methods!r}.")
  return names


def analysis_names(config: ml_collections.ConfigDict) -> list[str]:
  """The analyses of `config.analyses` ("all" = `ddjax.analysis.names()`), checked.

  Args:
    config: a reproduction config (`analyses`: "all" or comma-separated names).

  Returns:
    The analysis names (plain or dotted), in the given (or report) order.

  Raises:
    ReproductionConfigError: naming the unknown analyses, before any work starts.
  """
  spec = str(config.analyses).strip()
  names = analysis.names() if spec == "all" else [
      n.strip() for n in spec.split(",") if n.strip()]
  unknown = []
  for name in names:
    try:
      analysis.load(name)
    except errors.ConfigError:
      unknown.append(name)
  if unknown:
    raise ReproductionConfigError(
        f"config.analyses names unknown analyses {unknown}; expected `all` or some of "
        f"{analysis.names()} (or dotted paths of analysis modules).")
  return names


def _unlocked_copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  out = copy.deepcopy(config)
  out.unlock()
  return out


def method_config(config: ml_collections.ConfigDict, method: str,
                  workdir: str) -> ml_collections.ConfigDict:
  """`config.distill[method]` ready to run: MTT reads the experts of this reproduction.

  Args:
    config: a reproduction config.
    method: a key of `config.distill`.
    workdir: the reproduction's directory.

  Returns:
    An unlocked copy of the method's section; for MTT without `mtt.buffer_dir`, that set
    to `<workdir>/experts`.
  """
  cfg = _unlocked_copy(config.distill[method])
  if method == "mtt" and not cfg.mtt.get("buffer_dir"):
    cfg.mtt.buffer_dir = os.path.join(workdir, EXPERTS_DIR)
  return cfg


def analysis_config(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """`config.analysis` reading this reproduction's distilled sets.

  Args:
    config: a reproduction config.
    workdir: the reproduction's directory.

  Returns:
    An unlocked copy of `config.analysis`; an empty `distilled` becomes
    `<workdir>/distill`.
  """
  cfg = _unlocked_copy(config.analysis)
  if not cfg.get("distilled"):
    cfg.distilled = os.path.join(workdir, DISTILL_DIR)
  return cfg


def check_experts_match(config: ml_collections.ConfigDict) -> None:
  """The experts config trains what MTT's config will load (else MTT refuses after the
  experts were trained, minutes later).

  Args:
    config: a reproduction config (`experts` and `distill.mtt`).

  Raises:
    ReproductionConfigError: listing every disagreement (dataset, preprocess, model,
      model kwargs, or fewer expert epochs than MTT's max_start_epoch + expert_epochs).
  """
  ex, mt = config.experts, config.distill.mtt
  problems = []
  for field in ("dataset", "preprocess", "model"):
    if ex[field] != mt[field]:
      problems.append(f"{field}: experts {ex[field]!r}, mtt {mt[field]!r}")
  if experts.param_kwargs(ex.model_kwargs) != experts.param_kwargs(mt.model_kwargs):
    problems.append(f"model_kwargs: experts {experts.param_kwargs(ex.model_kwargs)}, "
                    f"mtt {experts.param_kwargs(mt.model_kwargs)}")
  needed = int(mt.mtt.max_start_epoch) + int(mt.mtt.expert_epochs)
  if int(ex.num_epochs) < needed:
    problems.append(f"MTT needs max_start_epoch + expert_epochs = {needed} expert epochs, the "
                    f"experts train {ex.num_epochs}")
  if problems:
    raise ReproductionConfigError("config.experts and config.distill.mtt disagree: " +
                                  "; ".join(problems))


def check_dataset(config: ml_collections.ConfigDict) -> None:
  """Fails fast, with the data module's one-line instructions, when the dataset is absent
  (e.g. CIFAR-10 offline), before any stage starts.

  Args:
    config: a reproduction config (`dataset`, optionally `data_dir`).

  Raises:
    DatasetError: the dataset's name is unknown or it cannot be loaded.
  """
  data.load_dataset(config.dataset, data_dir=config.get("data_dir"))


# ----------------------------------------------------------------------------- stages


def distilled_done(method_dir: str) -> bool:
  """Whether a method's distillation finished: its distilled.npz and results.json exist.

  Args:
    method_dir: `<workdir>/distill/<method>`.

  Returns:
    True when both files are there.
  """
  return all(os.path.exists(os.path.join(method_dir, f))
             for f in (driver.DISTILLED_FILE, driver.RESULTS_FILE))


def uses_shipped_sets(config: ml_collections.ConfigDict) -> bool:
  """Whether the reproduction analyses ddjax's shipped sets instead of distilling.

  Args:
    config: a reproduction config (`sets`: "shipped" or "distil", the default).

  Returns:
    True for "shipped".

  Raises:
    ReproductionConfigError: for any other value of `config.sets`.
  """
  sets = config.get("sets", "distil")
  if sets not in ("shipped", "distil"):
    raise ReproductionConfigError(f"config.sets must be 'shipped' or 'distil', got {sets!r}.")
  return sets == "shipped"


def shipped_entry(config: ml_collections.ConfigDict, method: str) -> dict | None:
  """The manifest entry of the shipped set for `method` at this dataset and IPC, if any.

  Args:
    config: a reproduction config (`dataset`, `ipc`).
    method: the method's name.

  Returns:
    The entry's record from the shipped manifest, or None when none ships.

  Raises:
    DistilledSetError: the manifest is not valid JSON.
  """
  from ddjax.distill import pretrained  # pylint: disable=g-import-not-at-top
  name = pretrained.entry_name(config.dataset, method, int(config.ipc))
  return pretrained.read_manifest()["entries"].get(name)


def install_shipped(config: ml_collections.ConfigDict, method: str, method_dir: str) -> dict:
  """Copies a shipped set (verified against its manifest) into `method_dir` as a finished
  distillation: distilled.npz, synthetic.png, progress.png and a results.json built from
  the manifest entry (`source: shipped`). Returns the results.

  Args:
    config: a reproduction config (`dataset`, `ipc`).
    method: a method with a shipped set (`shipped_entry`).
    method_dir: `<workdir>/distill/<method>` (created).

  Returns:
    The results.json content written: the manifest's fields (accuracies, iterations,
    timings, sha256, ...) plus "source", "method", "eval_model", "eval_model_kwargs",
    "distilled" and "grid".

  Raises:
    DistilledSetError: no such shipped set, or one that fails its manifest's checks.
  """
  from ddjax.distill import pretrained, synset  # pylint: disable=g-import-not-at-top
  record = shipped_entry(config, method)
  dset = pretrained.load_pretrained(config.dataset, method, int(config.ipc))
  os.makedirs(method_dir, exist_ok=True)
  synset.save_distilled(os.path.join(method_dir, driver.DISTILLED_FILE), dset)
  base = pretrained.set_dir()
  for field, name in (("grid_figure", driver.GRID_FILE), ("progress_figure", driver.PROGRESS_FILE)):
    if record.get(field):
      shutil.copyfile(os.path.join(base, record[field]), os.path.join(method_dir, name))
  keep = ("method", "dataset", "ipc", "num_classes", "iterations", "stop_reason",
          "distill_seconds", "cpu_seconds", "learned_lr", "protocol_a_mean", "protocol_a_std",
          "protocol_a_all", "init_protocol_a_mean", "init_correlation", "plateau", "commit",
          "command", "sha256")
  results = {k: record.get(k) for k in keep}
  results.update(source="shipped", method=dset.method, eval_model="convnet",
                 eval_model_kwargs=record.get("evaluation", {}).get("model_kwargs", {}),
                 distilled=os.path.join(method_dir, driver.DISTILLED_FILE),
                 grid=os.path.join(method_dir, driver.GRID_FILE))
  workdir_lib.write_json(os.path.join(method_dir, driver.RESULTS_FILE), results)
  return results


def experts_stage(config, workdir: str, methods: list[str], timer: Timer) -> None:
  """Trains MTT's expert trajectories, unless MTT is not run, is done or has its experts.

  Args:
    config: a reproduction config (`experts`, `distill.mtt`, `sets`, `keep_going`).
    workdir: the reproduction's directory.
    methods: the methods to run (`method_names`).
    timer: records the stage's time, skip or failure.

  Raises:
    ReproductionConfigError: an invalid `config.sets`.
  """
  if uses_shipped_sets(config) and all(shipped_entry(config, m) for m in methods):
    timer.skip("experts", "mtt experts", "the shipped sets are analysed")
    return
  buffer_dir = method_config(config, "mtt", workdir).mtt.buffer_dir if "mtt" in methods else ""
  if "mtt" not in methods:
    timer.skip("experts", "mtt experts", "MTT not among the methods")
    return
  if distilled_done(os.path.join(workdir, DISTILL_DIR, "mtt")):
    timer.skip("experts", "mtt experts", "MTT already distilled")
    return
  num = int(config.experts.num_experts)
  if (os.path.exists(os.path.join(buffer_dir, experts.BUFFER_FILE))
      and len(experts.completed_experts(buffer_dir, num)) == num):
    timer.skip("experts", "mtt experts", f"{num} experts already in {buffer_dir}")
    return
  cfg = _unlocked_copy(config.experts)
  timer.run("experts", "mtt experts", lambda: experts.train_experts(cfg, buffer_dir),
            keep_going=bool(config.keep_going))


def distill_stage(config, workdir: str, methods: list[str], timer: Timer) -> dict[str, dict]:
  """Runs (or skips) every method; returns {method: results.json content} of finished ones.

  Args:
    config: a reproduction config (`distill`, `sets`, `dataset`, `ipc`, `keep_going`).
    workdir: the reproduction's directory; sets go to `<workdir>/distill/<method>/`.
    methods: the methods to run (`method_names`), in order.
    timer: records each method's time, skip or failure.

  Returns:
    {method: its results.json content}, for the methods finished now or before.

  Raises:
    ReproductionConfigError: an invalid `config.sets`.
  """
  results = {}
  if uses_shipped_sets(config):
    unshipped = [m for m in methods if not distilled_done(os.path.join(workdir, DISTILL_DIR, m))
                 and not shipped_entry(config, m)]
    if unshipped:
      from ddjax.distill import pretrained  # pylint: disable=g-import-not-at-top
      shipped = sorted({d for d, _, _ in pretrained.available()})
      logging.warning(
          "No shipped %s set at IPC %d for %s (ddjax ships sets for %s): distilling them "
          "here with config.distill (outer iterations: %s).", config.dataset, int(config.ipc),
          ", ".join(unshipped), ", ".join(shipped) or "no dataset",
          ", ".join(f"{m} {config.distill[m].num_iterations}" for m in unshipped))
  for method in methods:
    method_dir = os.path.join(workdir, DISTILL_DIR, method)
    if distilled_done(method_dir):
      timer.skip("distill", method, "distilled.npz present")
    elif uses_shipped_sets(config) and shipped_entry(config, method):
      timer.run("distill", method,
                lambda m=method, d=method_dir: install_shipped(config, m, d), keep_going=False)
    else:
      if method == "mtt" and any(r.stage == "experts" and r.status == "failed"
                                 for r in timer.records):
        timer.skip("distill", method, "no experts (their training failed)")
        continue
      cfg = method_config(config, method, workdir)
      timer.run("distill", method, lambda cfg=cfg, d=method_dir: driver.run_distillation(cfg, d),
                keep_going=bool(config.keep_going))
    path = os.path.join(method_dir, driver.RESULTS_FILE)
    if distilled_done(method_dir):
      with open(path) as f:
        results[method] = json.load(f)
  return results


def analysis_fingerprint(cfg: ml_collections.ConfigDict) -> str:
  """A digest of an analysis run's inputs: the content of every distilled set it reads and
  the analysis config (minus fields that do not change results). Stored next to the
  results, so a resumed reproduction reruns analyses whose inputs changed (a re-distilled
  or added set, a changed setting) instead of reporting stale numbers.

  Args:
    cfg: the analysis config (`analysis_config`), its `distilled` naming the sets.

  Returns:
    40 hex digits (SHA-1 of the sets' hashes and the config's JSON).

  Raises:
    DistilledSetError: a malformed `cfg.distilled`.
  """
  sets = {}
  for name, path in sorted(common.parse_distilled(cfg.get("distilled", "")).items()):
    with open(path, "rb") as f:
      sets[name] = hashlib.sha1(f.read()).hexdigest()
  fields = json.loads(cfg.to_json_best_effort(sort_keys=True))
  # member_chunk only bounds memory (models per vmapped call).
  for volatile in ("progress", "distilled", "cache_dir", "member_chunk"):
    fields.pop(volatile, None)
  text = json.dumps({"sets": sets, "config": fields}, sort_keys=True, default=str)
  return hashlib.sha1(text.encode()).hexdigest()


def _read_inputs(out_dir: str) -> dict[str, str]:
  path = os.path.join(out_dir, INPUTS_FILE)
  try:
    with open(path) as f:
      return dict(json.load(f))
  except (OSError, json.JSONDecodeError, TypeError, ValueError):
    return {}


def analysis_stage(config, workdir: str, names: list[str], timer: Timer) -> dict[str, dict]:
  """Runs (or skips) every analysis; returns {name: its JSON} for those that finished.

  An analysis is skipped when its JSON exists and its recorded inputs (`inputs.json`,
  `analysis_fingerprint`) are unchanged, or were not recorded (a JSON written by
  launch/analyze.py, say).

  Args:
    config: a reproduction config (`analysis`, `keep_going`).
    workdir: the reproduction's directory; results go to `<workdir>/analysis/`.
    names: the analyses to run (`analysis_names`), in order.
    timer: records each analysis's time, skip or failure.

  Returns:
    {analysis key: its JSON}, for the analyses finished now or before.
  """
  out_dir = os.path.join(workdir, ANALYSIS_DIR)
  cfg = analysis_config(config, workdir)
  distill_dir = os.path.join(workdir, DISTILL_DIR)
  have_sets = bool(cfg.distilled != distill_dir or (
      os.path.isdir(distill_dir) and any(distilled_done(os.path.join(distill_dir, m))
                                         for m in os.listdir(distill_dir))))
  if not names:
    return {}
  workdir_lib.prepare_workdir(out_dir, cfg)
  fingerprint = analysis_fingerprint(cfg) if have_sets else None
  inputs = _read_inputs(out_dir)
  results = {}
  for name in names:
    key = analysis.key_of(name)
    done = common.read_results(out_dir, key)
    if done is not None and inputs.get(name, fingerprint) == fingerprint:
      timer.skip("analysis", name, f"{key}.json present")
      results[key] = done
      continue
    if not have_sets:
      timer.skip("analysis", name, "no distilled set finished")
      continue
    if done is not None:
      logging.info("%s: the distilled sets or the config changed since %s.json; rerunning.",
                   name, key)

    def run(name=name, key=key):
      try:
        return analysis.get_analysis(name)(cfg, out_dir)
      except Exception:
        with open(os.path.join(out_dir, f"{key}.error.txt"), "w") as f:
          f.write(traceback.format_exc())
        raise

    if timer.run("analysis", name, run, keep_going=bool(config.keep_going)) is not None:
      results[key] = common.read_results(out_dir, key)
      inputs[name] = fingerprint
      workdir_lib.write_json(os.path.join(out_dir, INPUTS_FILE), inputs)
      error = os.path.join(out_dir, f"{key}.error.txt")
      if os.path.exists(error):
        os.remove(error)  # an earlier failure, fixed now
  return results


def run_reproduction(config: ml_collections.ConfigDict, workdir: str, *,
                     verbose: bool = True) -> dict[str, Any]:
  """Runs every stage into `workdir` (resuming), writes the report; returns a summary.

  Args:
    config: a reproduction config (configs/reproduce.py).
    workdir: the reproduction's directory (resumed when it exists).
    verbose: log each stage and, at the end, the timing table.

  Returns:
    {'report' (its path), 'distill' (method -> results), 'analysis' (name -> results),
    'claims', 'timings' (this run's records), 'failures'}.

  Raises:
    ReproductionConfigError: an inconsistent config, before any work starts.
    DatasetError: the dataset is absent, before anything is written.
    ReproductionIncomplete: after the report, if anything failed.
  """
  methods = method_names(config)
  names = analysis_names(config)
  if "mtt" in methods:
    check_experts_match(config)
  timer = Timer(verbose, workdir)
  needs_work = (any(not distilled_done(os.path.join(workdir, DISTILL_DIR, m)) for m in methods)
                or any(not os.path.exists(os.path.join(workdir, ANALYSIS_DIR,
                                                        f"{analysis.key_of(n)}.json"))
                       for n in names))
  if needs_work:  # before anything is written: a missing dataset leaves no workdir behind
    timer.run("setup", f"dataset {config.dataset}", lambda: check_dataset(config),
              keep_going=False)
  workdir_lib.prepare_workdir(workdir, config)

  experts_stage(config, workdir, methods, timer)
  distilled = distill_stage(config, workdir, methods, timer)
  results = analysis_stage(config, workdir, names, timer)

  def write():  # (the report cannot contain its own duration; timings.json does)
    claims, problems = analysis.claim_rows(results, names)
    return report.write_report(
        workdir, config=config, results=results, claims=claims, claim_problems=problems,
        sections=analysis.sections(names), distilled=distilled,
        timings=timing_summary(timer.save()),
        failures=[dataclasses.asdict(r) for r in timer.failures()],
        analysis_dir=os.path.join(workdir, ANALYSIS_DIR),
        expected=[analysis.key_of(n) for n in names])

  out = timer.run("report", report.REPORT_FILE, write, keep_going=False)
  runs = timer.save()
  summary = {"report": out["path"], "claims": out["claims"], "distill": distilled,
             "analysis": results, "timings": timing_summary(runs),
             "failures": [dataclasses.asdict(r) for r in timer.failures()]}
  if verbose:
    logging.info("Stage timings (wall and CPU seconds; parentheses: a skipped stage's time "
                 "when it last ran):\n%s", format_timings(summary["timings"]))
  if summary["failures"]:
    raise ReproductionIncomplete(
        "; ".join(f"{f['stage']} {f['name']}: {f['note']}" for f in summary["failures"]) +
        f". The report ({out['path']}) lists what is missing; re-run the same command to "
        "retry only the failed pieces.")
  return summary


# ----------------------------------------------------------------------------- reports


def load_workdir(workdir: str, names: list[str] | None = None
                 ) -> tuple[dict[str, dict], dict[str, dict]]:
  """(analysis results, distilled results) found in a reproduction workdir.

  Args:
    workdir: a reproduction workdir.
    names: the analyses to look for (default: `ddjax.analysis.names()`).

  Returns:
    (analysis key -> its JSON, method -> the driver's results.json), for those present.
  """
  results, distilled = {}, {}
  analysis_dir = os.path.join(workdir, ANALYSIS_DIR)
  for name in (analysis.names() if names is None else names):
    found = common.read_results(analysis_dir, analysis.key_of(name))
    if found is not None:
      results[analysis.key_of(name)] = found
  distill_dir = os.path.join(workdir, DISTILL_DIR)
  if os.path.isdir(distill_dir):
    for method in sorted(os.listdir(distill_dir)):
      path = os.path.join(distill_dir, method, "results.json")
      if os.path.exists(path):
        with open(path) as f:
          distilled[method] = json.load(f)
  return results, distilled


def report_from_workdir(workdir: str) -> dict[str, Any]:
  """Rebuilds `<workdir>/report.md` from the JSON files a reproduction left there.

  Args:
    workdir: a reproduction workdir (its `config.json`, if any, gives the analyses and
      the method order).

  Returns:
    `report.write_report`'s summary.

  Raises:
    FileNotFoundError: if the workdir holds no results at all.
  """
  config, names = None, None
  try:  # the reproduction's resolved config (launch/reproduce.py writes it)
    with open(os.path.join(workdir, "config.json")) as f:
      config = ml_collections.ConfigDict(json.load(f))
    names = analysis_names(config)
  except (OSError, ValueError, TypeError, AttributeError, KeyError, errors.ConfigError):
    config = None  # not written by launch/reproduce.py: header from the sets alone
  results, distilled = load_workdir(workdir, names)
  if not results and not distilled:
    raise FileNotFoundError(f"{workdir} holds no analysis/<name>.json and no "
                            "distill/<method>/results.json: not a reproduction workdir.")
  names = [n for n in (names or analysis.names()) if analysis.key_of(n) in results]
  if config is not None:
    order = [m.strip() for m in str(config.methods).split(",")]
    distilled = dict(sorted(distilled.items(),
                            key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
  claims, problems = analysis.claim_rows(results, names)
  return report.write_report(workdir, results=results, claims=claims, claim_problems=problems,
                             sections=analysis.sections(names), distilled=distilled,
                             config=config,
                             timings=timing_summary(read_timings(workdir)))


def analysis_report(workdir: str, names: list[str],
                    config: ml_collections.ConfigDict | None = None) -> dict[str, Any]:
  """The report of an analysis-only workdir (`launch/analyze.py`): figures and claims.

  Args:
    workdir: holds `<key>.json` and the figures of each analysis.
    names: the analyses that ran, in order.
    config: the analysis config, for the header (dataset, size, seed).

  Returns:
    `report.write_report`'s summary; the report is `<workdir>/report.md`.
  """
  results = {analysis.key_of(n): r for n in names
             if (r := common.read_results(workdir, analysis.key_of(n))) is not None}
  claims, problems = analysis.claim_rows(results, names)
  return report.write_report(workdir, results=results, claims=claims, claim_problems=problems,
                             sections=analysis.sections(names), config=config,
                             analysis_dir=workdir,
                             expected=[analysis.key_of(n) for n in names])
