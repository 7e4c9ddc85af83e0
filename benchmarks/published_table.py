r"""ddjax beside the published Fashion-MNIST tables (issue 16), resumable, in short chunks.

    python -m benchmarks.published_table --workdir=workdirs/published_table  # make published-table
    python -m benchmarks.published_table --workdir=/tmp/t --size=tiny --data_dir=DIR  # the test

Every row (random real images, the whole training set, and DC, DSA, DM, MTT, KIP and
BPTT at IPC 1 and 10) is distilled and evaluated at the settings of
`configs/published.py`, which also holds the published numbers. The table gives ddjax's
DC-protocol accuracy (mean +- std over the evaluation networks), the published one, and
their difference in published standard deviations. It is written to
`--workdir/table.md` and `table.json` and printed after every invocation.

Chunks. One invocation works through the rows in order and stops cleanly before
`--budget_seconds` (default 540 s, so each invocation fits a 10-minute GPU slot); the
next invocation with the same --workdir continues where it stopped. The units of work:

* distillation: `ddjax.distill.driver.run_distillation` with `num_iterations` raised to
  the next cap. The driver resumes from its latest checkpoint and draws iteration i's
  key as fold_in(key, i), so a run in chunks computes what one uninterrupted run
  would. A cap is the most iterations that fit in the time left at the seconds per
  iteration measured in the previous chunk (the driver's `distill_seconds` in
  metrics.jsonl), rounded down to a multiple of `checkpoint_every`; a row never run
  before starts with one checkpoint interval, and only in the first half of a budget.
  The driver's own closing evaluation is protocol A on one network (a progress point);
  the published protocol runs once, in the evaluation unit, on the finished
  `distilled.npz`.
* evaluation: `driver.Evaluator` with the published protocol (config.eval), the same
  evaluation networks as the driver's (`prng_keys(config)['eval']`); writes row.json,
  whose presence marks the row finished. Finished rows are skipped.
* MTT experts (before the first MTT row): `ddjax.experts.train_experts` with
  `num_experts` raised by whole vmapped groups (finished experts are never retrained).
* whole dataset: the DC protocol's training on all training images, one vmapped epoch
  at a time over the seeds, checkpointed every epoch; the same computation as
  `train.evaluate_dc_protocol` with the same keys.

Reduced rows (issue 16's CPU checks). `--max_iterations=K` distils at most K iterations
and `--eval_networks=N` trains N networks per protocol instead of 20; the table names the
cut in the row's status ("measured, reduced: 200 of 1,000 iterations; 5 networks") and in
`reduction`. A reduced row is finished only for a run that asks for no more: a later run
without the flags keeps its row.json as `row.reduced_<K>it_<N>nets.json`, continues the
distillation from its checkpoint and evaluates again. `--max_experts=E` trains MTT's
first E experts (a prefix of the published buffer: expert i's keys are its own) and
distils the MTT rows from them ("E of 100 experts"); a later run with more experts adds
to the buffer but distils MTT again from the start, keeping the old row whole as
`mtt_ipc<N>.reduced_<E>experts/` (its iterations sampled another buffer).
`--report_only` runs nothing and writes the table of what --workdir holds.

The evidence copy. `--export_dir=DIR` (`make published-table-docs`: DIR is
docs/published_table, the committed copy) copies every row --workdir holds, replacing
that row's copy, with the table of all rows: row.json, the reduced rows it superseded,
results, settings, logs, figures and the distilled set itself (`distilled.npz`), plus the
latest checkpoint of a row that still has iterations to distil. A fresh machine resumes
from the copy with `cp -rn DIR/. WORKDIR/`; an export that would drop a row the copy
holds is refused.

A killed invocation loses at most the work since the last checkpoint. Measured times go
to `--workdir/timing.json`, every chunk to `<row>/chunks.jsonl`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
import types
from typing import Any

from absl import app, flags, logging

from configs import published as pub

DEFAULT_METHODS = ("random", "whole", "dc", "dsa", "dm", "kip", "bptt", "mtt")
BASELINES = ("random", "whole")
# Units never measured start only while at least this fraction of the budget is left: a
# first chunk (compilation included) of an unknown method must not overrun the slot.
PROBE_FRACTION = 0.5
SAFETY = 1.25          # estimates are multiplied by this before they are held to the budget
ROW_FILE = "row.json"
CHUNKS_FILE = "chunks.jsonl"
TIMING_FILE = "timing.json"

def define_flags() -> types.SimpleNamespace:
  """The binary's flags, defined only when it runs as a program (importing the module, as
  the tests do beside other binaries, defines none, so no flag name can clash)."""
  return types.SimpleNamespace(
      workdir=flags.DEFINE_string("workdir", "workdirs/published_table", "Where rows, "
                                  "checkpoints and the table go; re-running with it resumes."),
      methods=flags.DEFINE_list("methods", list(DEFAULT_METHODS), "Rows to run: random, whole, "
                                "dc, dsa, dm, kip, bptt, mtt."),
      ipcs=flags.DEFINE_list("ipcs", [str(n) for n in pub.TABLE_IPCS], "Images per class."),
      budget=flags.DEFINE_float("budget_seconds", 540.0, "Stop cleanly before this much wall "
                                "time."),
      size=flags.DEFINE_enum("size", "published", list(pub.SIZES), "published, or tiny (tests)."),
      data_dir=flags.DEFINE_string("data_dir", None, "A directory with the four Fashion-MNIST "
                                   "idx files (default: Debian's, else TFDS)."),
      max_chunk=flags.DEFINE_integer("max_chunk_iterations", 0, "Cap on iterations (experts, "
                                     "epochs) per chunk; 0 = what fits the budget."),
      max_units=flags.DEFINE_integer("max_units", 0, "Stop after this many units of work "
                                     "(tests, dry runs); 0 = until the budget or the end."),
      eval_networks=flags.DEFINE_integer(
          "eval_networks", 0, "Networks the evaluation unit trains per protocol; 0 = the "
          f"published {pub.EVAL_NETWORKS}. Fewer is a reduced row (the CPU checks use 5).",
          lower_bound=0),
      report_only=flags.DEFINE_bool("report_only", False, "Run nothing: write and print the "
                                    "table of what --workdir holds."),
      export_dir=flags.DEFINE_string(
          "export_dir", None, "After the run, copy every row's evidence (results, logs, "
          "figures, distilled.npz; the latest checkpoint of a row still distilling) and the "
          "whole table here, e.g. docs/published_table (make published-table-docs)."),
      max_iterations=flags.DEFINE_integer(
          "max_iterations", 0, "Distil at most this many iterations; 0 = the published "
          "count. Fewer is a reduced row, continued by a later run without it.",
          lower_bound=0),
      max_experts=flags.DEFINE_integer(
          "max_experts", 0, "Train MTT's experts up to this many and distil MTT from "
          f"them; 0 = the published {pub.experts_config_for().num_experts}. Fewer is a "
          "reduced MTT row, which a run with more experts distils again from the start.",
          lower_bound=0))


_FLAGS = None  # set by define_flags() when run as a program


# ----------------------------------------------------------------------------- rows


@dataclasses.dataclass(frozen=True)
class Row:
  method: str
  ipc: int      # 0 for the whole training set

  @property
  def name(self) -> str:
    return "whole" if self.method == "whole" else f"{self.method}_ipc{self.ipc}"

  @property
  def config_arg(self) -> str:
    return f"method={self.method}" + ("" if self.method == "whole" else f",ipc={self.ipc}")


def plan_rows(methods, ipcs) -> list[Row]:
  """The rows in run order: the baselines, then each IPC's methods (MTT last, after its experts).

  Args:
    methods: method names (DEFAULT_METHODS; order is ignored).
    ipcs: images per class.

  Returns:
    The rows, each once.
  """
  unknown = sorted(set(methods) - set(DEFAULT_METHODS))
  if unknown:
    raise ValueError(f"Unknown methods {unknown}; expected some of {list(DEFAULT_METHODS)}.")
  rows = [Row("random", n) for n in ipcs if "random" in methods]
  if "whole" in methods:
    rows.append(Row("whole", 0))
  for n in ipcs:
    rows += [Row(m, n) for m in DEFAULT_METHODS if m in methods and m not in BASELINES]
  return rows


@dataclasses.dataclass(frozen=True)
class Reduction:
  """What a CPU run cuts from the published settings (0 = nothing); named in every row.

  A row measured under a reduction is not finished for a run that asks for more: that run
  keeps the reduced row.json beside it (`row.reduced_<...>.json`), continues the
  distillation from its checkpoint and evaluates again.
  """
  max_iterations: int = 0
  eval_networks: int = 0
  max_experts: int = 0

  def __post_init__(self):
    if min(self.max_iterations, self.eval_networks, self.max_experts) < 0:
      raise ValueError(f"--max_iterations, --eval_networks and --max_experts must be >= 0, "
                       f"got {self.max_iterations}, {self.eval_networks} and "
                       f"{self.max_experts}.")

  def apply(self, config) -> None:
    """Cuts the row's config in place."""
    if self.max_iterations and "num_iterations" in config:
      config.num_iterations = min(int(config.num_iterations), self.max_iterations)
    if self.eval_networks and "eval" in config:
      config.eval.num_seeds = self.eval_networks

  def apply_experts(self, experts_config, mtt_config=None) -> None:
    """Cuts the expert buffer (and the MTT row that reads it) in place.

    Expert i's randomness is fold_in(seed, i) whatever the group size, so E experts are
    the first E of the published buffer and a later run only adds to them.

    Args:
      experts_config: the experts' config (`num_experts`, `experts_per_batch`).
      mtt_config: an MTT row's config; it then reads exactly the experts trained.
    """
    total = int(experts_config.num_experts)
    if self.max_experts:
      total = min(total, self.max_experts)
      experts_config.num_experts = total
      experts_config.experts_per_batch = min(int(experts_config.experts_per_batch), total)
    if mtt_config is not None and self.max_experts:
      mtt_config.mtt.num_experts = total


def describe_reduction(record: dict[str, Any], published_iterations: int | None,
                       published_networks: int, published_experts: int | None = None
                       ) -> str | None:
  """Names what a measured row cut ("200 of 1,000 iterations; 5 networks"), None if nothing.

  Args:
    record: the row's row.json.
    published_iterations: the published iteration count (None for the whole-data row).
    published_networks: the published number of evaluation networks.
    published_experts: the published expert count (MTT rows; None for the others).

  Returns:
    The reduction in words, or None for a row at published settings.
  """
  parts = []
  done = record.get("iterations")
  if (published_iterations and done is not None and done < published_iterations
      and record.get("stop_reason") != "plateau"):
    parts.append(f"{done:,} of {published_iterations:,} iterations")
  experts = record.get("num_experts")
  if published_experts and experts is not None and experts < published_experts:
    parts.append(f"{experts} of {published_experts} experts")
  networks = len(record.get("dc_all", []))
  if record.get("method") != "whole" and networks < published_networks:
    parts.append(f"{networks} network{'' if networks == 1 else 's'}")
  return "; ".join(parts) or None


def chunk_iterations(remaining: int, checkpoint_every: int, fit: int | None, cap: int = 0) -> int:
  """How many iterations the next chunk runs.

  Args:
    remaining: iterations left in the run.
    checkpoint_every: the run's checkpoint interval.
    fit: iterations that fit in the time left, or None if never measured (then one
      checkpoint interval, to measure).
    cap: at most this many (0: no cap).

  Returns:
    `remaining` if it all fits; else the most that fit, rounded down to a multiple of
    `checkpoint_every` (so a killed chunk loses less than one interval); 0 if none fit.
  """
  k = min(remaining, checkpoint_every) if fit is None else min(remaining, max(fit, 0))
  if k < remaining:
    k -= k % max(checkpoint_every, 1)
  return min(k, cap) if cap else k


def percent(x: float | None) -> float | None:
  return None if x is None else 100.0 * float(x)


def row_record(row: Row, result: dict[str, Any] | None, status: str, size: str,
               reduction: str | None = None) -> dict[str, Any]:
  """One table row: ddjax (DC protocol, %) beside the published number."""
  ref = pub.published(row.method, row.ipc)
  if result and reduction:
    status = f"measured, reduced: {reduction}"
  mean = percent(result.get("dc_mean")) if result else None
  std = percent(result.get("dc_std")) if result else None
  return {"row": row.name, "method": row.method, "ipc": row.ipc or "all",
          "ddjax_mean": mean, "ddjax_std": std,
          "num_networks": len(result.get("dc_all", [])) if result else None,
          "published_mean": ref.mean, "published_std": ref.std, "source": ref.source,
          "difference_in_published_std": (None if mean is None
                                           else pub.std_difference(mean, ref)),
          "status": status, "reduction": reduction if result else None,
          "config": f"configs/published.py:{row.config_arg},size={size}"}


def _pm(mean, std) -> str:
  if mean is None:
    return "—"
  return f"{mean:.1f}" if std is None else f"{mean:.1f} ± {std:.1f}"


def format_table(records: list[dict[str, Any]], command: str) -> str:
  """The markdown table of `row_record`s."""
  lines = [f"Fashion-MNIST, ddjax vs published (test accuracy %, DC protocol). `{command}`", "",
           "| method | IPC | ddjax | published | Δ (published std) | source | status |",
           "|---|---|---|---|---|---|---|"]
  for r in records:
    d = r["difference_in_published_std"]
    delta = "—" if r["ddjax_mean"] is None or r["published_mean"] is None else (
        "n/a (no std)" if d is None else f"{d:+.1f}")
    lines.append(f"| {r['method']} | {r['ipc']} | {_pm(r['ddjax_mean'], r['ddjax_std'])} | "
                 f"{_pm(r['published_mean'], r['published_std'])} | {delta} | {r['source']} | "
                 f"{r['status']} |")
  return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- budget and timing


@dataclasses.dataclass
class Budget:
  seconds: float
  start: float = dataclasses.field(default_factory=time.time)
  max_units: int = 0
  units: int = 0

  def left(self) -> float:
    return self.seconds - (time.time() - self.start)

  def fits(self, estimate: float | None) -> bool:
    """Whether a unit estimated to take `estimate` s (None: never measured) may start."""
    if self.max_units and self.units >= self.max_units:
      return False
    if estimate is None:
      return self.left() >= PROBE_FRACTION * self.seconds
    return estimate * SAFETY <= self.left()

  def fit_count(self, per_item: float | None, overhead: float) -> int | None:
    """How many items of `per_item` s fit after `overhead` s (None if never measured)."""
    if per_item is None:
      return None
    return int(math.floor((self.left() / SAFETY - overhead) / max(per_item, 1e-9)))


class Timing:
  """Measured seconds per unit kind, kept in `workdir/timing.json` across invocations."""

  def __init__(self, workdir: str):
    from ddjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    self._write = workdir_lib.write_json
    self.path = os.path.join(workdir, TIMING_FILE)
    self.data: dict[str, Any] = {}
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.data = json.load(f)

  def get(self, key: str) -> dict[str, Any]:
    return self.data.get(key, {})

  def set(self, key: str, **values) -> None:
    self.data[key] = {**self.data.get(key, {}), **values}
    self._write(self.path, self.data)


def _log_chunk(row_dir: str, step: int, **record) -> None:
  from ddjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  workdir_lib.MetricWriter(row_dir, CHUNKS_FILE).write(step, **record)


def distilled_to(results: dict[str, Any] | None, total: int) -> bool:
  """Whether a row's results.json says its distillation is done: `total` iterations, or
  stopped early at a plateau."""
  return bool(results) and (results["iterations"] >= total
                            or results.get("stop_reason") == "plateau")


def _read_json(path: str) -> dict[str, Any] | None:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


# ----------------------------------------------------------------------------- the table


class Table:
  """Runs the rows of one --workdir within one budget."""

  def __init__(self, workdir: str, size: str, data_dir: str | None, budget: Budget,
               max_chunk: int = 0, reduction: Reduction = Reduction()):
    self.workdir, self.size, self.data_dir = workdir, size, data_dir
    self.budget, self.max_chunk, self.reduction = budget, max_chunk, reduction
    self.timing = Timing(workdir)
    self.stopped: str | None = None      # why this invocation stopped early

  def row_dir(self, row: Row) -> str:
    return os.path.join(self.workdir, row.name)

  def experts_dir(self) -> str:
    return os.path.join(self.workdir, "experts")

  def published_config(self, row: Row):
    """The row's config at this size, without this run's reduction."""
    if row.method == "whole":
      return pub.whole_config(self.size)
    return pub.distill_config(row.method, row.ipc, self.size)

  def config(self, row: Row):
    """The row's config as this run runs it: its data, expert buffer and reduction."""
    config = self.published_config(row)
    config.data_dir = self.data_dir
    config.progress = False
    if row.method == "mtt":
      config.mtt.buffer_dir = self.experts_dir()
      self.reduction.apply_experts(pub.experts_config_for(self.size), config)
    self.reduction.apply(config)
    return config

  def experts_config(self):
    config = pub.experts_config_for(self.size)
    config.data_dir = self.data_dir
    config.progress = False
    self.reduction.apply_experts(config)
    return config

  def row_experts(self, config) -> int:
    """How many experts an MTT row's config distils from (0 in the config: all published)."""
    return int(config.mtt.num_experts) or int(pub.experts_config_for(self.size).num_experts)

  # -- running

  def run(self, rows: list[Row]) -> None:
    """Works through `rows` until they are done or the budget stops it."""
    for row in rows:
      if self.finished(row):
        logging.info("%s: finished, skipped", row.name)
        print(f"skip {row.name}: finished", flush=True)
        continue
      if row.method == "mtt":
        if not self.run_experts():
          return
        self._set_aside_other_experts(row)
      if os.path.exists(os.path.join(self.row_dir(row), ROW_FILE)):
        print(f"{row.name}: continuing a reduced row", flush=True)
      finished = self.run_whole(row) if row.method == "whole" else self.run_distilled(row)
      if not finished:
        return

  def finished(self, row: Row) -> bool:
    """Whether row.json holds at least the iterations and networks this run asks for."""
    record = _read_json(os.path.join(self.row_dir(row), ROW_FILE))
    if record is None or row.method == "whole":
      return record is not None
    config = self.config(row)
    if row.method == "mtt" and record.get("num_experts", 0) < self.row_experts(config):
      return False
    return ((record.get("iterations") or 0) >= int(config.num_iterations)
            or record.get("stop_reason") == "plateau") and (
                len(record.get("dc_all", [])) >= int(config.eval.num_seeds))

  def _set_aside_other_experts(self, row: Row) -> None:
    """Moves an MTT row distilled from another number of experts out of the way.

    Its iterations sampled another buffer, so continuing them would be neither that run
    nor this one: the row starts again, and the old one is kept whole beside it as
    `<row>.reduced_<E>experts/`.
    """
    row_dir = self.row_dir(row)
    saved = _read_json(os.path.join(row_dir, "config.json"))
    if saved is None:
      return
    before = (int(saved.get("mtt", {}).get("num_experts", 0) or 0)
              or self.row_experts(self.published_config(row)))
    if before == self.row_experts(self.config(row)):
      return
    kept = f"{row_dir}.reduced_{before}experts"
    n = 1
    while os.path.exists(kept):
      n += 1
      kept = f"{row_dir}.reduced_{before}experts.{n}"
    os.replace(row_dir, kept)
    logging.info("%s: distilled from %d experts, kept as %s", row.name, before, kept)
    print(f"{row.name}: the row distilled from {before} experts is kept as "
          f"{os.path.basename(kept)}; distilling again from the start", flush=True)

  def _set_aside_reduced(self, row: Row) -> None:
    """Keeps a reduced row.json that a new evaluation supersedes, under a name of its own
    (until then the table keeps showing it)."""
    path = os.path.join(self.row_dir(row), ROW_FILE)
    record = _read_json(path)
    if record is None:
      return
    kept = os.path.join(self.row_dir(row), f"row.reduced_{record.get('iterations') or 0}it_"
                        f"{len(record.get('dc_all', []))}nets.json")
    os.replace(path, kept)
    logging.info("%s: the reduced row.json is kept as %s", row.name, kept)
    print(f"{row.name}: the reduced row is kept as {os.path.basename(kept)}", flush=True)

  def _stop(self, what: str) -> bool:
    self.stopped = what
    logging.info("Stopping before %s: %.0f s of the budget left, %d units run", what,
                 self.budget.left(), self.budget.units)
    print(f"stop before {what} ({self.budget.left():.0f} s of the budget left, "
          f"{self.budget.units} units run); run again with the same --workdir to continue",
          flush=True)
    return False

  def run_experts(self) -> bool:
    """Trains MTT's experts in whole vmapped groups; True once all are trained."""
    from ddjax import experts  # pylint: disable=g-import-not-at-top
    config = self.experts_config()
    total, per = int(config.num_experts), max(int(config.experts_per_batch), 1)
    buffer_dir = self.experts_dir()
    while True:
      done = len(experts.completed_experts(buffer_dir, total))
      if done >= total:
        return True
      t = self.timing.get("experts")
      fit = self.budget.fit_count(t.get("s_per_expert"), 0.0)
      n = min(total - done, per) if fit is None else min(total - done, fit - fit % per)
      if self.max_chunk:
        n = min(n, self.max_chunk)
      estimate = None if fit is None else n * t["s_per_expert"]
      if n <= 0 or not self.budget.fits(estimate):
        return self._stop(f"MTT experts {done}..{total}")
      config.num_experts = done + n
      start = time.time()
      summary = experts.train_experts(config, buffer_dir)
      wall = time.time() - start
      self.budget.units += 1
      # Wall time per expert, compilation included: an overestimate, so chunks stay short.
      self.timing.set("experts", s_per_expert=wall / n)
      _log_chunk(buffer_dir, done + n, kind="experts", start=done, end=done + n, wall_s=wall,
                 mean_final_test_accuracy=summary["mean_final_test_accuracy"])
      print(f"experts {done}..{done + n} of {total}: {wall:.0f} s", flush=True)

  def run_distilled(self, row: Row) -> bool:
    """Distils in chunks, then evaluates with the published protocol; True when finished."""
    from ddjax import checkpoint  # pylint: disable=g-import-not-at-top
    from ddjax.distill import driver  # pylint: disable=g-import-not-at-top
    config, row_dir = self.config(row), self.row_dir(row)
    total, every = int(config.num_iterations), max(int(config.checkpoint_every), 1)
    key = f"{row.name}:distill"
    while True:
      if distilled_to(_read_json(os.path.join(row_dir, driver.RESULTS_FILE)), total):
        break
      with checkpoint.Checkpointer(os.path.join(row_dir, "checkpoints")) as ckpt:
        done = ckpt.latest_step() or 0
      t = self.timing.get(key)
      fit = self.budget.fit_count(t.get("s_per_iteration"), t.get("overhead_s", 0.0))
      k = chunk_iterations(total - done, every, fit, self.max_chunk)
      estimate = None if fit is None else t["overhead_s"] + k * t["s_per_iteration"]
      if (k <= 0 and done < total) or not self.budget.fits(estimate):
        return self._stop(f"{row.name} iterations {done}..{total}")
      self.distill_chunk(row, config, done, done + k)
    if not self.budget.fits(self._eval_estimate(row, config)):
      return self._stop(f"{row.name} evaluation")
    self.evaluate(row, config)
    return True

  def distill_chunk(self, row: Row, config, start: int, end: int) -> None:
    """One run_distillation call up to iteration `end`, timed."""
    from ddjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    from ddjax.distill import driver  # pylint: disable=g-import-not-at-top
    chunk = config.copy_and_resolve_references()
    chunk.num_iterations = end
    # The DC protocol runs once, in `evaluate`, over all the published networks (protocol
    # A too); each chunk's closing evaluation is only a point on the progress curve, so
    # it is protocol A on one network. (Over all of them it doubled the cost of a random
    # row: 2,311 s of a 3,398 s row on 2 CPU cores, BUILD_NOTES.)
    chunk.eval.dc_protocol = False
    chunk.eval.num_seeds = 1
    row_dir = self.row_dir(row)
    t0 = time.time()
    result = driver.run_distillation(chunk, row_dir)
    wall = time.time() - t0
    self.budget.units += 1
    # Steady seconds per iteration from the driver's own clock (metrics written during
    # this chunk, after its first logged step, so compilation is left out); the rest of
    # the wall time (data, compilation, the closing evaluation) is the overhead.
    logged = [(m["step"], m["distill_seconds"]) for m in workdir_lib.read_metrics(row_dir)
              if "distill_seconds" in m and m["time"] >= t0 and start < m["step"] <= end]
    k = end - start
    if len(logged) >= 2 and logged[-1][0] > logged[0][0]:
      s_per_it = (logged[-1][1] - logged[0][1]) / (logged[-1][0] - logged[0][0])
    else:
      s_per_it = wall / max(k, 1)
    overhead = max(wall - k * s_per_it, 0.0)
    if k:
      self.timing.set(f"{row.name}:distill", s_per_iteration=s_per_it, overhead_s=overhead)
    _log_chunk(row_dir, end, kind="distill", start=start, end=end, wall_s=wall,
               s_per_iteration=s_per_it, overhead_s=overhead,
               protocol_a_mean=result.get("protocol_a_mean"))
    rate = f" ({s_per_it:.3f} s/it)" if k else ""
    print(f"{row.name}: iterations {start}..{end} of {int(config.num_iterations)} in {wall:.0f} s"
          f"{rate}", flush=True)

  def _eval_key(self, row: Row, config) -> str:
    return f"eval:ipc{row.ipc}:{int(config.eval.dc_epochs)}:{config.eval.dc_augment}"

  def _eval_estimate(self, row: Row, config) -> float | None:
    t = self.timing.get(self._eval_key(row, config))
    if "seconds" not in t:
      return None
    # Cost grows with the networks trained; an entry without a count was 20 networks.
    return t["seconds"] * int(config.eval.num_seeds) / t.get("networks", pub.EVAL_NETWORKS)

  def evaluate(self, row: Row, config) -> dict[str, Any]:
    """The published protocol on the finished distilled set; writes row.json."""
    from ddjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    from ddjax.distill import driver, synset  # pylint: disable=g-import-not-at-top
    row_dir = self.row_dir(row)
    t0 = time.time()
    dset = synset.load_distilled(os.path.join(row_dir, driver.DISTILLED_FILE))
    ds, _ = driver.load_data(config)
    evaluator = driver.Evaluator(config, ds.num_classes, ds.x_test, ds.y_test)
    result = evaluator(driver.prng_keys(config)["eval"], dset.images, dset.labels,
                       dset.learned_lr)
    wall = time.time() - t0
    self.budget.units += 1
    self.timing.set(self._eval_key(row, config), seconds=wall,
                    networks=int(config.eval.num_seeds))
    distilled = _read_json(os.path.join(row_dir, driver.RESULTS_FILE)) or {}
    record = {"row": row.name, "method": row.method, "ipc": row.ipc, **result,
              "eval_seconds": wall, "iterations": distilled.get("iterations"),
              "distill_seconds": distilled.get("distill_seconds"),
              "stop_reason": distilled.get("stop_reason"),
              "learned_lr": dset.learned_lr, "eval_epochs": int(config.eval.dc_epochs),
              "eval_augment": str(config.eval.dc_augment)}
    if row.method == "mtt":
      record["num_experts"] = self.row_experts(config)
    self._set_aside_reduced(row)
    workdir_lib.write_json(os.path.join(row_dir, ROW_FILE), record)
    print(f"{row.name}: DC protocol {100 * result['dc_mean']:.1f} ± "
          f"{100 * result['dc_std']:.1f} % over {len(result['dc_all'])} networks "
          f"({wall:.0f} s)", flush=True)
    return record

  def run_whole(self, row: Row) -> bool:
    """The whole-dataset row, epoch by epoch within the budget; True when finished."""
    config, row_dir = self.config(row), self.row_dir(row)

    def fits_epoch(first: bool) -> bool:
      t = self.timing.get("whole")  # re-read: train_whole updates it after every epoch
      per = t.get("s_per_epoch")
      if per is None:
        return self.budget.fits(None)
      return self.budget.fits(per + (t.get("overhead_s", 0.0) if first else 0.0))

    def record_timing(first_epoch_s: float | None = None, **values) -> None:
      # A first epoch (compilation included) stands in for s_per_epoch until a later
      # epoch measures it, and never replaces such a measurement.
      if first_epoch_s is not None and "s_per_epoch" not in self.timing.get("whole"):
        values["s_per_epoch"] = first_epoch_s
      self.timing.set("whole", **values)

    if not fits_epoch(True):
      return self._stop("whole-dataset training")
    out = train_whole(config, row_dir, fits_epoch, self.max_chunk, on_timing=record_timing)
    # Counted once it ran: counted before, `--max_units=1` made its own epochs refuse to
    # start (fits_epoch checks the unit count too).
    self.budget.units += 1
    if out is None:
      return self._stop("the next whole-dataset epoch")
    from ddjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    record = {"row": row.name, "method": "whole", "ipc": 0, **out}
    workdir_lib.write_json(os.path.join(row_dir, ROW_FILE), record)
    print(f"whole: {100 * out['dc_mean']:.1f} ± {100 * out['dc_std']:.1f} % over "
          f"{len(out['dc_all'])} seeds", flush=True)
    return True

  # -- reporting

  def records(self, rows: list[Row]) -> list[dict[str, Any]]:
    out = []
    for row in rows:
      result = _read_json(os.path.join(self.row_dir(row), ROW_FILE))
      reduction = None
      if result:
        published = self.published_config(row)
        reduction = describe_reduction(
            result, published.get("num_iterations"),
            int(published.eval.num_seeds) if "eval" in published else 0,
            self.row_experts(published) if row.method == "mtt" else None)
      out.append(row_record(row, result, "measured" if result else self.status(row), self.size,
                            reduction))
    return out

  def status(self, row: Row) -> str:
    from ddjax.distill import driver  # pylint: disable=g-import-not-at-top
    row_dir = self.row_dir(row)
    if not os.path.isdir(row_dir):
      return "not started"
    if row.method == "whole":
      from ddjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
      chunks = workdir_lib.read_metrics(os.path.join(row_dir, CHUNKS_FILE))
      return (f"running: {chunks[-1]['end']}/{int(self.config(row).num_epochs)} epochs" if chunks
              else "not started")
    results = _read_json(os.path.join(row_dir, driver.RESULTS_FILE))
    total = int(self.config(row).num_iterations)
    if results is None:
      return "running"
    if results["iterations"] >= total:
      return "distilled; evaluation pending"
    return f"running: {results['iterations']}/{total} iterations"


# ----------------------------------------------------------------------------- the evidence copy

# A row's evidence: its published-protocol result (and the reduced ones it superseded),
# settings, logs, figures and distilled set. Checkpoints are added only while a row has
# iterations left to distil, so that a fresh machine continues it from the copy.
EVIDENCE_FILES = (ROW_FILE, CHUNKS_FILE, "config.json", "metrics.jsonl", "results.json",
                  "progress.png", "synthetic.png", "distilled.npz")
EXPERTS_EVIDENCE = ("buffer.json", CHUNKS_FILE)   # the expert npz files (29 MB each) stay


def distilling_left(table: Table, row: Row) -> bool:
  """Whether `row` has published iterations left to distil (never for the baselines)."""
  from ddjax.distill import driver  # pylint: disable=g-import-not-at-top
  if row.method in BASELINES:
    return False
  return not distilled_to(_read_json(os.path.join(table.row_dir(row), driver.RESULTS_FILE)),
                         int(table.published_config(row).num_iterations))


def _row_evidence(table: Table, row: Row) -> tuple[list[str], str | None]:
  """The evidence files of `row` in the workdir, and its checkpoint step dir to copy."""
  source = table.row_dir(row)
  if not os.path.isdir(source):
    return [], None
  names = [n for n in sorted(os.listdir(source))
           if n in EVIDENCE_FILES or (n.startswith("row.reduced_") and n.endswith(".json"))]
  step_dir = None
  checkpoints = os.path.join(source, "checkpoints")
  if distilling_left(table, row) and os.path.isdir(checkpoints):
    steps = [int(n) for n in os.listdir(checkpoints) if n.isdigit()]  # orbax: one dir a step
    if steps:
      step_dir = os.path.join("checkpoints", str(max(steps)))
  return names, step_dir


def _replace_copy(source: str, names: list[str], step_dir: str | None, final: str) -> None:
  """Copies `names` (and `step_dir`) of `source` beside `final`, then swaps it in."""
  partial = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.partial")
  if os.path.exists(partial):                # left by an export stopped while copying
    shutil.rmtree(partial)
  os.makedirs(partial)
  for name in names:
    shutil.copy2(os.path.join(source, name), os.path.join(partial, name))
  if step_dir is not None:
    shutil.copytree(os.path.join(source, step_dir), os.path.join(partial, step_dir))
  _swap_in(partial, final)


def _swap_in(partial: str, final: str) -> None:
  """Replaces `final` by the finished `partial` (the old copy is removed only after)."""
  old = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.old")
  if os.path.exists(old):
    if os.path.exists(final):
      shutil.rmtree(old)
    else:                      # an earlier swap stopped between its renames: old is the copy
      os.replace(old, final)
  if os.path.exists(final):
    os.replace(final, old)
  os.replace(partial, final)
  if os.path.exists(old):
    shutil.rmtree(old)


def export_evidence(table: Table, dest: str, command: str) -> list[str]:
  """Copies the evidence of every row `table`'s workdir holds to `dest`, with the table.

  `dest` is the committed copy (docs/published_table): each row the workdir holds
  replaces its copy there whole (written beside it, then swapped in), the table of all
  15 rows is written from the workdir, and every other entry of `dest` (the controls) is
  left as it is. A row `dest` holds (measured, or partly distilled) but the workdir lacks
  stops the export before anything is written, as the new table would drop it: seed the
  workdir from the copy first (`cp -rn DEST/. WORKDIR/`, which also resumes the rows the
  copy holds checkpoints of). An export stopped between a row's two renames is
  completed by the next one, never lost.

  Args:
    table: the Table of the workdir to export.
    dest: the evidence directory.
    command: the command line the table's header names.

  Returns:
    The names of the rows copied.

  Raises:
    errors.WorkdirError: `dest` holds a row (measured or distilling) the workdir lacks, or
      is the workdir.
  """
  from ddjax import errors  # pylint: disable=g-import-not-at-top
  from ddjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  if os.path.abspath(dest) == os.path.abspath(table.workdir):
    raise errors.WorkdirError(f"--export_dir is the workdir itself ({dest}): name the "
                              "committed copy, e.g. docs/published_table.")
  rows = plan_rows(DEFAULT_METHODS, pub.TABLE_IPCS)
  def held(directory: str) -> bool:   # measured, or with iterations distilled
    return any(os.path.exists(os.path.join(directory, name)) for name in (ROW_FILE, "results.json"))

  lost = [r.name for r in rows
          if held(os.path.join(dest, r.name)) and not held(table.row_dir(r))]
  if lost:
    raise errors.WorkdirError(
        f"{dest} holds rows that {table.workdir} lacks ({', '.join(lost)}); the exported "
        f"table would drop them. Seed the workdir first: cp -rn {dest}/. {table.workdir}/")
  os.makedirs(dest, exist_ok=True)
  copied = []
  for row in rows:
    names, step_dir = _row_evidence(table, row)
    if not names and step_dir is None:    # never started (or only its empty directories)
      continue
    _replace_copy(table.row_dir(row), names, step_dir, os.path.join(dest, row.name))
    copied.append(row.name)
  experts_dir = table.experts_dir()
  if os.path.isdir(experts_dir):
    names = [n for n in EXPERTS_EVIDENCE if os.path.exists(os.path.join(experts_dir, n))]
    _replace_copy(experts_dir, names, None, os.path.join(dest, "experts"))
  records = table.records(rows)
  workdir_lib.write_text(os.path.join(dest, "table.md"), format_table(records, command))
  workdir_lib.write_json(os.path.join(dest, "table.json"),
                         {"command": command, "rows": records, "stopped_before": table.stopped})
  # Timings: the workdir's, over those of the copy (a seeded workdir measures only the
  # units it ran; the others' measurements stay).
  kept = _read_json(os.path.join(dest, TIMING_FILE)) or {}
  if table.timing.data or kept:
    workdir_lib.write_json(os.path.join(dest, TIMING_FILE), {**kept, **table.timing.data})
  logging.info("Exported %d rows of %s to %s", len(copied), table.workdir, dest)
  return copied


def train_whole(config, row_dir: str, fits_epoch, max_epochs: int = 0, on_timing=None
                ) -> dict[str, Any] | None:
  """ConvNet on the whole training set, `config.num_seeds` seeds vmapped, resumable.

  The computation of `train.evaluate_dc_protocol(model, split(PRNGKey(seed), num_seeds),
  ...)` (per seed: init from the first half of its key, epoch e shuffled and augmented
  from fold_in(second half, e)), one jitted epoch at a time, checkpointed after each.

  Args:
    config: `configs/published.py:method=whole` (the launch/train.py fields plus num_seeds).
    row_dir: checkpoints and chunks.jsonl go here.
    fits_epoch: fits_epoch(first) says whether another epoch fits the budget (first: the
      first epoch of this call, which compiles).
    max_epochs: at most this many epochs in this call (0: no cap).
    on_timing: called after each epoch, with overhead_s= and first_epoch_s= after the
      first of this call (it compiles), with s_per_epoch= after the others.

  Returns:
    {'dc_mean', 'dc_std', 'dc_all', 'epochs', 'train_seconds'} when all epochs are done,
    None when the budget stopped it first (resume by calling again).
  """
  from ddjax import classifier, validation  # pylint: disable=g-import-not-at-top
  from ddjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  validation.check_config(config)
  # The workdir is locked and bound to this config, as launch/train.py's (num_seeds and
  # num_epochs change the computation, so a changed value is refused, not resumed).
  with workdir_lib.open_workdir(row_dir, config,
                                ignore=classifier.resumable_fields(config)) as run:
    return _train_whole(config, row_dir, run, fits_epoch, max_epochs, on_timing)


def _train_whole(config, row_dir, run, fits_epoch, max_epochs, on_timing):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from ddjax import checkpoint, classifier, models, train  # pylint: disable=g-import-not-at-top
  t_start = time.time()
  ds, _ = classifier.load_preprocessed(config)
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  x_test, y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  model = models.get_model(config.model, ds.num_classes, **config.model_kwargs)
  batch_size = min(int(config.batch_size), x.shape[0])
  num_epochs = int(config.num_epochs)
  tx = classifier.make_optimizer(config, num_epochs * train.steps_per_epoch(x.shape[0], batch_size))
  keys = jax.random.split(jax.random.PRNGKey(config.seed), int(config.num_seeds))
  init_keys, train_keys = jax.vmap(jax.random.split, out_axes=1)(keys)

  def init(key):
    return train.create_train_state(dict(model.init(key, x[:1], train=False)), tx)

  states = jax.vmap(init)(init_keys)
  run.start()  # config and data are valid: the workdir is written from here on
  one_epoch = functools.partial(train.train_epoch, model, tx, batch_size=batch_size)
  epoch_fn = jax.jit(jax.vmap(one_epoch, in_axes=(0, None, None, 0)))
  eval_fn = jax.jit(jax.vmap(lambda variables: train.evaluate(
      model, variables, x_test, y_test, int(config.eval_batch_size))["accuracy"]))
  with checkpoint.Checkpointer(os.path.join(row_dir, "checkpoints"), 2) as ckpt:
    states, meta, _ = ckpt.restore_or(states)
    epoch = int(meta.get("epoch", 0))
    seconds = float(meta.get("train_seconds", 0.0))
    first, ran = True, 0
    while epoch < num_epochs:
      if (max_epochs and ran >= max_epochs) or not fits_epoch(first):
        return None
      t0 = time.time()
      epoch_keys = jax.vmap(lambda k: jax.random.fold_in(k, epoch))(train_keys)
      states, history = epoch_fn(states, x, y, epoch_keys)
      loss = float(jax.device_get(jnp.mean(history["loss"])))
      if not math.isfinite(loss):
        raise classifier.TrainingDiverged(
            f"Whole-dataset training loss became {loss} in epoch {epoch + 1}; the last "
            f"checkpoint is kept in {ckpt.directory}.")
      epoch += 1
      ran += 1
      dt = time.time() - t0
      seconds += dt
      ckpt.save(epoch, states, meta={"epoch": epoch, "train_seconds": seconds})
      if on_timing is not None:
        if first:  # loading, compiling and one epoch
          on_timing(overhead_s=time.time() - t_start, first_epoch_s=dt)
        else:
          on_timing(s_per_epoch=dt)
      _log_chunk(row_dir, epoch, kind="whole", end=epoch, epoch_s=dt, train_loss=loss)
      first = False
  accuracies = jax.device_get(eval_fn(states.variables))
  mean, std = train.mean_std(accuracies)
  return {"dc_mean": mean, "dc_std": std, "dc_all": [float(a) for a in accuracies],
          "epochs": num_epochs, "train_seconds": seconds, "num_train": int(x.shape[0])}


def main(argv):
  del argv
  common.setup()
  ipcs = [int(n) for n in _FLAGS.ipcs.value]
  rows = plan_rows(_FLAGS.methods.value, ipcs)
  os.makedirs(_FLAGS.workdir.value, exist_ok=True)
  budget = Budget(_FLAGS.budget.value, max_units=_FLAGS.max_units.value)
  reduction = Reduction(_FLAGS.max_iterations.value, _FLAGS.eval_networks.value,
                        _FLAGS.max_experts.value)
  table = Table(_FLAGS.workdir.value, _FLAGS.size.value, _FLAGS.data_dir.value, budget,
                _FLAGS.max_chunk.value, reduction)
  if not _FLAGS.report_only.value:
    common.run_reporting_errors(table.run, rows)
  records = table.records(rows)
  command = (f"python -m benchmarks.published_table --workdir={_FLAGS.workdir.value} "
             f"--size={_FLAGS.size.value} --methods={','.join(_FLAGS.methods.value)} "
             f"--ipcs={','.join(_FLAGS.ipcs.value)}"
             + "".join(f" --{name}={value}" for name, value in (
                 ("max_iterations", reduction.max_iterations),
                 ("eval_networks", reduction.eval_networks),
                 ("max_experts", reduction.max_experts)) if value))
  from ddjax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  text = format_table(records, command)
  with open(os.path.join(_FLAGS.workdir.value, "table.md"), "w") as f:
    f.write(text)
  workdir_lib.write_json(os.path.join(_FLAGS.workdir.value, "table.json"),
                         {"command": command, "rows": records, "stopped_before": table.stopped})
  print(text)
  done = sum(r["status"] == "measured" for r in records)
  reduced = sum(r["reduction"] is not None for r in records)
  if _FLAGS.export_dir.value:
    copied = common.run_reporting_errors(export_evidence, table, _FLAGS.export_dir.value,
                                         command)
    print(f"evidence of {len(copied)} rows copied to {_FLAGS.export_dir.value}")
  print(f"{done} of {len(records)} rows measured at published settings"
        + (f", {reduced} reduced" if reduced else "") + (
      f"; stopped before {table.stopped}: run again to continue" if table.stopped else ""))


if __name__ == "__main__":
  _FLAGS = define_flags()
  from launch import common  # pylint: disable=g-import-not-at-top  (its flags, e.g. the cache's)
  app.run(main)
