"""The reproduction report: every figure, the distilled-set accuracies and the claim table.

    out = write_report(workdir, results=..., claims=..., sections=..., distilled=...,
                       timings=..., config=...)

A leaf: it formats what it is given and imports no analysis. The claim rows are computed
by the analyses (`ddjax.analysis.claim_rows`: each analysis's `claims(result)`, each row
with its explicit criterion and a computed `reproduced`), and `sections` says which
analyses answer which of the paper's questions. The report is `<workdir>/report.md`
(GitHub markdown, figures linked relatively, so the workdir can be moved or published as
is); the rows also go to `<workdir>/claims.json`.
"""

from __future__ import annotations

import datetime
import os
from typing import Any, Iterable

from ddjax import workdir as workdir_lib
from ddjax.analysis import methods

__all__ = ["REPORT_FILE", "CLAIMS_FILE", "QUESTIONS", "CLAIM_KEYS", "validate_claim",
           "claim_counts", "markdown_table", "claim_table", "distilled_table",
           "timing_cells", "timing_totals", "timings_table", "render_report", "write_report"]

REPORT_FILE = "report.md"
CLAIMS_FILE = "claims.json"
PAPER = ('Yang, Zhu, Deng & Russakovsky, "What is Dataset Distillation Learning?" '
         "(ICML 2024)")

# The paper's three questions (its sections 3-5); each analysis names the one it answers.
QUESTIONS = {
    "Q1": ("Can distilled data substitute for real data?", "paper section 3"),
    "Q2": ("What information does distilled data hold?", "paper section 4"),
    "Q3": ("Does each distilled point carry meaning?", "paper section 5"),
}
# Each method's protocol-A accuracy on CIFAR-10 at IPC 10 in the paper's released
# notebooks: a reference, not comparable across datasets.
PAPER_PROTOCOL_A_CIFAR10 = {"bptt": 0.589, "dm": 0.4266, "dc": 0.4596, "mtt": 0.5363}
CLAIM_KEYS = ("question", "analysis", "claim", "paper", "measured", "reproduced")


# ----------------------------------------------------------------------------- claims


def validate_claim(row: Any) -> dict:
  """A claim row with `reproduced` as a Python bool; ValueError naming what is wrong.

  Args:
    row: a claim row from an analysis's `claims(result)`: a dict with every key of
      CLAIM_KEYS (and optionally "criterion").

  Returns:
    A copy of the row with `reproduced` converted to a Python bool.

  Raises:
    ValueError: if the row is not a dict, lacks a key of CLAIM_KEYS, names a question
      not in QUESTIONS, or has a `reproduced` that is not a Python or numpy bool.
  """
  if not isinstance(row, dict):
    raise ValueError(f"a claim row must be a dict, got {type(row).__name__}")
  missing = [k for k in CLAIM_KEYS if k not in row]
  if missing:
    raise ValueError(f"claim row {row.get('claim', row)!r} lacks {missing}")
  if row["question"] not in QUESTIONS:
    raise ValueError(f"claim row {row['claim']!r} has question {row['question']!r}; expected "
                     f"one of {sorted(QUESTIONS)}")
  reproduced = row["reproduced"]
  if type(reproduced).__name__ not in ("bool", "bool_"):  # Python or numpy bool only
    raise ValueError(f"claim row {row['claim']!r} has reproduced={reproduced!r}; expected "
                     "True or False")
  return {**row, "reproduced": bool(reproduced)}


def claim_counts(rows: list[dict]) -> dict[str, tuple[int, int]]:
  """{'all': (reproduced, total), 'Q1': ..., ...}.

  Args:
    rows: validated claim rows (`validate_claim`).

  Returns:
    {"all": (reproduced, total)} and the same pair for each question of QUESTIONS
    ((0, 0) for a question without rows).
  """
  out = {"all": (sum(r["reproduced"] for r in rows), len(rows))}
  for q in QUESTIONS:
    qs = [r for r in rows if r["question"] == q]
    out[q] = (sum(r["reproduced"] for r in qs), len(qs))
  return out


# ----------------------------------------------------------------------------- markdown


def _cell(value: Any) -> str:
  """Text safe inside a markdown table cell."""
  text = "" if value is None else str(value)
  return " ".join(text.split()).replace("|", "\\|")


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
  """A GitHub markdown table.

  Args:
    header: the column titles.
    rows: one list of cells per row (any values; None is empty, "|" is escaped and
      whitespace collapsed).

  Returns:
    The table's lines joined by newlines (no trailing newline).
  """
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def claim_table(rows: list[dict]) -> str:
  """The claim table: one line per row, in the given order.

  Args:
    rows: validated claim rows (`validate_claim`).

  Returns:
    A markdown table: number, question, analysis, claim, criterion, paper, measured
    and reproduced ("yes"/"no").
  """
  return markdown_table(
      ["#", "question", "analysis", "claim (the paper's finding)", "criterion", "paper",
       "measured", "reproduced"],
      [[i + 1, r["question"], r["analysis"], r["claim"], r.get("criterion", ""), r["paper"],
        r["measured"], "yes" if r["reproduced"] else "no"] for i, r in enumerate(rows)])


def _fmt_acc(res: dict) -> str:
  mean, std = res.get("protocol_a_mean"), res.get("protocol_a_std")
  if mean is None:
    return "-"
  n = len(res.get("protocol_a_all") or []) or "?"
  if n == 1:
    return f"{mean:.3f} (1 seed)"
  return f"{mean:.3f} ± {std:.3f} ({n} seeds)"


def distilled_table(distilled: dict[str, dict]) -> str:
  """The distilled sets' table: cost and accuracies, with the paper's for reference.

  Args:
    distilled: set name -> its record; optional keys "iterations", "distill_seconds",
      "protocol_a_mean", "protocol_a_std", "protocol_a_all" (per-seed accuracies),
      "dc_mean", "dc_std" and "learned_lr" ("-" where missing).

  Returns:
    A markdown table, one row per set in the given order.
  """
  rows = []
  for method, res in distilled.items():
    paper = PAPER_PROTOCOL_A_CIFAR10.get(method)
    dc = (f"{res['dc_mean']:.3f} ± {res['dc_std']:.3f}" if res.get("dc_mean") is not None
          else "-")
    lr = f"{res['learned_lr']:.4g}" if res.get("learned_lr") is not None else "-"
    rows.append([method, methods.REPORT_NAME.get(method, method), res.get("iterations", "-"),
                 f"{res.get('distill_seconds', 0.0):.0f}", _fmt_acc(res), dc, lr,
                 f"{paper:.3f}" if paper is not None else "-"])
  return markdown_table(
      ["set", "paper's name", "iterations", "distillation s", "protocol-A test accuracy",
       "DC protocol", "learned lr", "paper, CIFAR-10 (reference)"], rows)


def timing_cells(record: dict, *, earlier: str = " earlier", arrow: str = " → "
                 ) -> tuple[str, str, str]:
  """The wall-clock, CPU and load cells of one stage's timing record.

  Args:
    record: one row of `reproduce.timing_summary`: `status`; `wall_s`, `cpu_s` and the 1-min
      load average `load_start`/`load_end` when the stage ran; `earlier_wall_s` and
      `earlier_cpu_s` when it was skipped but timed in an earlier run.
    earlier: the text after the earlier seconds in a skipped stage's cells.
    arrow: between the load at the stage's start and at its end.

  Returns:
    (wall, cpu, load): seconds to 0.1 s and "start<arrow>end" ("" without both loads) for a
    stage that ran; for a skipped one, the earlier run's whole seconds in parentheses ("-"
    when it never ran) and no load.
  """
  if record["status"] == "skipped":
    wall = (f"({record['earlier_wall_s']:.0f}{earlier})" if "earlier_wall_s" in record
            else "-")
    cpu = f"({record['earlier_cpu_s']:.0f}{earlier})" if "earlier_cpu_s" in record else "-"
    return wall, cpu, ""
  start, end = record.get("load_start"), record.get("load_end")
  load = f"{start:.1f}{arrow}{end:.1f}" if start is not None and end is not None else ""
  return f"{record['wall_s']:.1f}", f"{record['cpu_s']:.1f}", load


def timing_totals(timings: list[dict]) -> tuple[float, float]:
  """The wall-clock and CPU seconds that this run spent: the sum over the stages that ran.

  Args:
    timings: rows of `reproduce.timing_summary` (skipped stages count nothing).

  Returns:
    (wall seconds, CPU seconds).
  """
  ran = [r for r in timings if r["status"] != "skipped"]
  return sum(r["wall_s"] for r in ran), sum(r["cpu_s"] for r in ran)


def timings_table(timings: list[dict]) -> str:
  """The report's table of stage timings, with this run's total.

  Args:
    timings: rows of `reproduce.timing_summary`, in run order.

  Returns:
    A markdown table: stage, what, status, wall and CPU seconds (a skipped stage's from its
    earlier run, in parentheses), load, note; then a total row.
  """
  rows = [[r["stage"], r["name"], r["status"], *timing_cells(r), r.get("note", "")]
          for r in timings]
  total_wall, total_cpu = timing_totals(timings)
  rows.append(["**total**", "this run", "", f"{total_wall:.1f}", f"{total_cpu:.1f}", "", ""])
  return markdown_table(["stage", "what", "status", "wall s", "CPU s", "load (1 min)", "note"],
                        rows)


def _figure_links(figures: Iterable[str], base: str, root: str) -> tuple[list[str], list[str]]:
  """(markdown image lines, missing files) for figures in `base` (relative to root)."""
  lines, missing = [], []
  for fig in figures:
    rel = os.path.join(base, fig)
    if not os.path.exists(os.path.join(root, rel)):
      missing.append(rel)
      continue
    alt = os.path.splitext(os.path.basename(fig))[0].replace("_", " ")
    lines.append(f"![{alt}]({rel})")
  return lines, missing


def _seeds_text(res: dict) -> str:
  """The seeds an analysis reports, whichever of the usual keys it uses."""
  seeds = res.get("seeds")
  if isinstance(seeds, dict):
    seeds = ", ".join(f"{k}: {v}" for k, v in seeds.items())
  if seeds is not None:
    return f"Seeds: {seeds}."
  parts = []
  if res.get("seed") is not None:
    parts.append(f"base seed {res['seed']}")
  if res.get("num_seeds") is not None:
    parts.append(f"{res['num_seeds']} seeds")
  return ("Seeds: " + ", ".join(parts) + ".") if parts else ""


# ----------------------------------------------------------------------------- the report


def render_report(*, results: dict[str, dict], distilled: dict[str, dict], claims: list[dict],
                  claim_problems: list[str], sections: dict[str, list[str]],
                  timings: list[dict], failures: list[dict], header: dict[str, Any],
                  root: str, analysis_rel: str = "analysis", distill_rel: str = "distill",
                  expected: Iterable[str] = ()) -> tuple[str, list[str]]:
  """The report as markdown.

  Args:
    results: analysis key -> its JSON.
    distilled: method -> the distillation driver's results.json.
    claims: validated claim rows (`ddjax.analysis.claim_rows`), in table order.
    claim_problems: messages about claims that could not be computed.
    sections: question ("Q1", ...) -> the analysis keys that answer it, in order;
      analyses with results but in no section go to "Further analyses".
    timings: stage records (`reproduce.timing_summary`).
    failures: stage records of failed stages.
    header: the header's fields (dataset, ipc, ...).
    root: the directory of report.md (figure links are relative to it).
    analysis_rel, distill_rel: the analysis and distillation directories, relative to root.
    expected: analysis keys that should have results (missing ones are listed).

  Returns:
    (markdown text, figure paths that were listed but are missing).
  """
  missing_figures: list[str] = []
  out = _summary_lines(results, claims, claim_problems, failures, header, expected)
  out += _distilled_lines(distilled, root, distill_rel, missing_figures)
  out += ["## Claims", ""]
  out += [claim_table(claims) if claims else "No claim could be evaluated (no analysis results).",
          ""]
  out += _question_lines(results, claims, sections, failures, root, analysis_rel,
                         missing_figures)
  out += _timing_lines(timings)
  problems = [f"{f['stage']} `{f['name']}` failed: {f.get('note', '')}" for f in failures]
  problems += claim_problems
  problems += [f"figure listed but missing: `{m}`" for m in missing_figures]
  if problems:
    out += ["## Problems", ""] + [f"- {_cell(p)}" for p in problems] + [""]
  return "\n".join(out), missing_figures


def _summary_lines(results, claims, claim_problems, failures, header, expected) -> list[str]:
  """The title, the header, the claim count and what is incomplete."""
  counts = claim_counts(claims)
  out = [f"# Reproduction: {PAPER}", ""]
  out.append(", ".join(f"{k}: **{v}**" for k, v in header.items() if v not in (None, "")) + ".")
  out.append("")
  done, total = counts["all"]
  per_q = ", ".join(f"{q} {a}/{b}" for q, (a, b) in counts.items() if q != "all")
  out.append(f"**Claims reproduced: {done} of {total}** ({per_q}). Each row of the claim table "
             "is computed from that analysis's JSON by its `claims(result)`, with the "
             "criterion stated in the row.")
  out.append("")
  not_run = [n for n in expected if n not in results]
  if failures or not_run or claim_problems:
    out.append("**Incomplete:** " + "; ".join(
        [f"{f['stage']} `{f['name']}` failed ({f.get('note', '')})" for f in failures] +
        [f"no results for `{n}`" for n in not_run if not any(f["name"] == n for f in failures)] +
        [f"{len(claim_problems)} claim problem(s), see Problems"] * bool(claim_problems)) + ".")
    out.append("")
  return out


def _distilled_lines(distilled, root, distill_rel, missing_figures) -> list[str]:
  """The distilled sets' accuracy table and grids (missing grids appended to
  `missing_figures`)."""
  out = ["## Distilled sets", ""]
  if not distilled:
    return out + ["No distilled set finished.", ""]
  steps = sorted({str(r["protocol_a_steps"]) for r in distilled.values()
                  if r.get("protocol_a_steps") is not None})
  out.append(f"Protocol A: a fresh {next(iter(distilled.values())).get('eval_model', 'ConvNet')}"
             f" trained {'/'.join(steps) or 'the configured number of'} full-batch SGD steps "
             "on the set (the paper: 300 steps, lr 0.01, momentum 0.9), test accuracy on the "
             "real test split: the driver's final evaluation, cut to few seeds at small sizes; "
             "the analyses below re-evaluate the sets over their own seeds. The paper's "
             "column is CIFAR-10 at IPC 10, for reference only.")
  out += ["", distilled_table(distilled), ""]
  grid_rows = []
  for method, res in distilled.items():
    rel = os.path.join(distill_rel, method, os.path.basename(res.get("grid") or "synthetic.png"))
    if os.path.exists(os.path.join(root, rel)):
      grid_rows.append(f"**{method}** ({methods.REPORT_NAME.get(method, method)})"
                       f"<br>![{method}]({rel})")
    else:
      missing_figures.append(rel)
  if grid_rows:
    out += ["Each set, one row per class:", ""] + [f"- {g}" for g in grid_rows] + [""]
  return out


def _question_lines(results, claims, sections, failures, root, analysis_rel,
                    missing_figures) -> list[str]:
  """One section per question: its claims, then each analysis's figures and JSON link."""
  known = {n for names in sections.values() for n in names}
  parts = [(q, title, where, tuple(sections.get(q, ())))
           for q, (title, where) in QUESTIONS.items()]
  others = tuple(n for n in results if n not in known)
  if others:
    parts.append(("Other", "Further analyses", "", others))
  out = []
  for q, title, where, names in parts:
    out += [f"## {q}: {title}" + (f" ({where})" if where else ""), ""]
    q_claims = [r for r in claims if r["question"] == q]
    if q_claims:
      a, b = claim_counts(q_claims)["all"]
      out += [f"{a} of {b} claims reproduced:", ""]
      out += [f"- {'✅' if r['reproduced'] else '❌'} **{_cell(r['claim'])}** "
              f"({r['analysis']}) — measured: {_cell(r['measured'])}" for r in q_claims]
      out.append("")
    for name in names:
      out += _analysis_lines(name, results.get(name), failures, root, analysis_rel,
                             missing_figures)
  return out


def _analysis_lines(name, res, failures, root, analysis_rel, missing_figures) -> list[str]:
  counterpart = (res or {}).get("paper_counterpart", "")
  out = [f"### {name}" + (f" — paper counterpart: {counterpart}" if counterpart else ""), ""]
  if res is None:
    failed = [f for f in failures if f["name"] == name]
    return out + [f"Not run ({failed[0]['note']})." if failed else "Not run.", ""]
  seeds = _seeds_text(res)
  if seeds:
    out += [seeds, ""]
  lines, missing = _figure_links(res.get("figures") or [], analysis_rel, root)
  missing_figures += missing
  out += lines or ["(no figure)"]
  return out + ["", f"Numbers: [`{analysis_rel}/{name}.json`]({analysis_rel}/{name}.json).", ""]


def _timing_lines(timings) -> list[str]:
  out = ["## Stage timings", ""]
  if not timings:
    return out + ["(no timings recorded)", ""]
  load = [r for r in timings if r.get("load_start") is not None]
  out.append("Wall and CPU seconds of this process per stage, and the machine's 1-minute "
             "load average at its start and end (a load above the core count means the cores "
             "were shared). Skipped stages show their time when they last ran."
             + (f" The run started at load {load[0]['load_start']:.1f}." if load else ""))
  return out + ["", timings_table(timings), ""]


def write_report(workdir: str, *, results: dict[str, dict], claims: list[dict],
                 sections: dict[str, list[str]], distilled: dict[str, dict] | None = None,
                 claim_problems: Iterable[str] = (), timings: list[dict] | None = None,
                 failures: list[dict] | None = None, config: Any = None,
                 analysis_dir: str | None = None,
                 expected: Iterable[str] = ()) -> dict[str, Any]:
  """Writes `<workdir>/report.md` and `<workdir>/claims.json`.

  Args:
    workdir: where the report goes.
    results: analysis key -> its JSON (figures in `analysis_dir`).
    claims: the claim rows (`ddjax.analysis.claim_rows`).
    sections: question -> analysis keys (see `render_report`).
    distilled: method -> the driver's results.json (grids in
      `<workdir>/distill/<method>/`); None or empty for an analysis-only report.
    claim_problems: messages about claims that could not be computed.
    timings, failures: stage records.
    config: the run's config, for the header (dataset, ipc, size, seed) and each
      method's protocol-A steps; None takes the header from the sets.
    analysis_dir: where the analyses' JSON and figures are (default
      `<workdir>/analysis`).
    expected: analysis keys that should have results.

  Returns:
    {"path", "claims", "claim_problems", "counts", "missing_figures"}.
  """
  distilled = dict(distilled or {})
  claim_problems = list(claim_problems)
  analysis_dir = analysis_dir or os.path.join(workdir, "analysis")
  header = {}
  if config is not None:
    for key in ("dataset", "ipc", "size", "seed"):
      if config.get(key) is not None:
        header[key] = config.get(key)
  else:
    first = next(iter(distilled.values()), {})
    header.update(dataset=first.get("dataset"), ipc=first.get("ipc"))
  header["methods"] = ", ".join(distilled) or "none"
  if config is not None and config.get("distill") is not None:  # the steps of each evaluation
    distilled = {m: {**r, "protocol_a_steps": config.distill[m].eval.protocol_a_steps}
                 if m in config.distill else r for m, r in distilled.items()}
  header["generated"] = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  text, missing = render_report(
      results=results, distilled=distilled, claims=claims, claim_problems=claim_problems,
      sections=sections, timings=timings or [], failures=failures or [], header=header,
      root=workdir, analysis_rel=os.path.relpath(analysis_dir, workdir),
      expected=expected)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, REPORT_FILE)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text + "\n")
  os.replace(tmp, path)
  workdir_lib.write_json(os.path.join(workdir, CLAIMS_FILE),
                         {"counts": claim_counts(claims), "claims": claims,
                          "problems": claim_problems})
  return {"path": path, "claims": claims, "claim_problems": claim_problems,
          "counts": claim_counts(claims), "missing_figures": missing}
