"""The reproduction report: every figure, the distilled-set accuracies and the claim table.

    out = write_report(workdir, results=..., distilled=..., timings=..., config=...)
    out = report_from_workdir(workdir)      # rebuild from what a workdir holds

The claim table is computed, never written by hand: its rows are what each module of
`ddjax.analysis.CLAIM_MODULES` returns from `claims(results)` (results: analysis name ->
its JSON), each with the module's explicit criterion and a computed `reproduced`. The
report is `<workdir>/report.md` (GitHub markdown, figures linked relatively, so the
workdir can be moved or published as is); the rows also go to `<workdir>/claims.json`.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
from typing import Any, Iterable

from ddjax import workdir as workdir_lib

REPORT_FILE = "report.md"
CLAIMS_FILE = "claims.json"
PAPER = ('Yang, Zhu, Deng & Russakovsky, "What is Dataset Distillation Learning?" '
         "(ICML 2024)")

# The paper's three questions and the analyses that answer each (paper sections 3-5).
QUESTIONS = {
    "Q1": ("Can distilled data substitute for real data?", "paper section 3",
           ("recognition", "embedding", "pixels", "mixing", "sensitivity")),
    "Q2": ("What information does distilled data hold?", "paper section 4",
           ("agreement", "recognition_over_training", "curvature_over_training")),
    "Q3": ("Does each distilled point carry meaning?", "paper section 5",
           ("influence", "influence_approx", "coherence")),
}
# How the paper names each method (paper_spec.md section 3), and its protocol-A accuracy
# on CIFAR-10 at IPC 10 (notebook outputs): a reference, not comparable across datasets.
PAPER_METHOD = {"bptt": "BPTT", "dm": "DM", "dc": "GM (DC)", "dsa": "GM (DSA)", "mtt": "TM (MTT)",
                "kip": "KIP (not in the paper)", "random": "random real subset"}
PAPER_PROTOCOL_A_CIFAR10 = {"bptt": 0.589, "dm": 0.4266, "dc": 0.4596, "mtt": 0.5363}
CLAIM_KEYS = ("question", "analysis", "claim", "paper", "measured", "reproduced")


# ----------------------------------------------------------------------------- claims


def validate_claim(row: Any) -> dict:
  """A claim row with `reproduced` as a Python bool; ValueError naming what is wrong."""
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


def collect_claims(results: dict[str, dict], modules: Iterable[str] | None = None
                   ) -> tuple[list[dict], list[str]]:
  """(rows, problems): every module's `claims(results)` rows, validated, in module order.

  A module that is missing, raises, or returns a malformed row is named in `problems`
  (the report shows them) instead of stopping the report.
  """
  if modules is None:
    from ddjax.analysis import CLAIM_MODULES  # pylint: disable=g-import-not-at-top
    modules = CLAIM_MODULES
  rows, problems = [], []
  for name in modules:
    try:
      module_rows = importlib.import_module(name).claims(results)
    except Exception as e:  # pylint: disable=broad-except
      problems.append(f"`{name}.claims` failed: {type(e).__name__}: {e}")
      continue
    for row in module_rows or []:
      try:
        rows.append(validate_claim(row))
      except ValueError as e:
        problems.append(f"`{name}.claims` returned a malformed row: {e}")
  return rows, problems


def claim_counts(rows: list[dict]) -> dict[str, tuple[int, int]]:
  """{'all': (reproduced, total), 'Q1': ..., ...}."""
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
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
  return "\n".join(lines)


def claim_table(rows: list[dict]) -> str:
  """The claim table: one line per row, in the given order."""
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
  rows = []
  for method, res in distilled.items():
    paper = PAPER_PROTOCOL_A_CIFAR10.get(method)
    dc = (f"{res['dc_mean']:.3f} ± {res['dc_std']:.3f}" if res.get("dc_mean") is not None
          else "-")
    lr = f"{res['learned_lr']:.4g}" if res.get("learned_lr") is not None else "-"
    rows.append([method, PAPER_METHOD.get(method, method), res.get("iterations", "-"),
                 f"{res.get('distill_seconds', 0.0):.0f}", _fmt_acc(res), dc, lr,
                 f"{paper:.3f}" if paper is not None else "-"])
  return markdown_table(
      ["set", "paper's name", "iterations", "distillation s", "protocol-A test accuracy",
       "DC protocol", "learned lr", "paper, CIFAR-10 (reference)"], rows)


def timings_table(timings: list[dict]) -> str:
  rows, total_wall, total_cpu = [], 0.0, 0.0
  for r in timings:
    if r["status"] == "skipped":
      wall = f"({r['earlier_wall_s']:.0f} earlier)" if "earlier_wall_s" in r else "-"
      cpu = f"({r['earlier_cpu_s']:.0f} earlier)" if "earlier_cpu_s" in r else "-"
      load = ""
    else:
      wall, cpu = f"{r['wall_s']:.1f}", f"{r['cpu_s']:.1f}"
      total_wall += r["wall_s"]
      total_cpu += r["cpu_s"]
      load = (f"{r['load_start']:.1f} → {r['load_end']:.1f}"
              if r.get("load_start") is not None and r.get("load_end") is not None else "")
    rows.append([r["stage"], r["name"], r["status"], wall, cpu, load, r.get("note", "")])
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
                  claim_problems: list[str], timings: list[dict], failures: list[dict],
                  header: dict[str, Any], root: str, analysis_rel: str = "analysis",
                  distill_rel: str = "distill",
                  expected: Iterable[str] = ()) -> tuple[str, list[str]]:
  """(markdown text, missing figure paths). `root` is where report.md lives."""
  counts = claim_counts(claims)
  missing_figures: list[str] = []
  out = [f"# Reproduction: {PAPER}", ""]
  out.append(", ".join(f"{k}: **{v}**" for k, v in header.items() if v not in (None, "")) + ".")
  out.append("")
  done, total = counts["all"]
  per_q = ", ".join(f"{q} {a}/{b}" for q, (a, b) in counts.items() if q != "all")
  out.append(f"**Claims reproduced: {done} of {total}** ({per_q}). Each row of the claim table "
             "is computed from the analyses' JSON by `claims(results)` of the analysis "
             "modules, with the criterion stated in the row.")
  out.append("")
  not_run = [n for n in expected if n not in results]
  if failures or not_run or claim_problems:
    out.append("**Incomplete:** " + "; ".join(
        [f"{f['stage']} `{f['name']}` failed ({f.get('note', '')})" for f in failures] +
        [f"no results for `{n}`" for n in not_run if not any(f["name"] == n for f in failures)] +
        [f"{len(claim_problems)} claim problem(s), see Problems"] * bool(claim_problems)) + ".")
    out.append("")

  out += ["## Distilled sets", ""]
  if distilled:
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
        grid_rows.append(f"**{method}** ({PAPER_METHOD.get(method, method)})<br>![{method}]({rel})")
      else:
        missing_figures.append(rel)
    if grid_rows:
      out += ["Each set, one row per class:", ""]
      out += [f"- {g}" for g in grid_rows]
      out.append("")
  else:
    out += ["No distilled set finished.", ""]

  out += ["## Claims", ""]
  out += [claim_table(claims) if claims else "No claim could be evaluated (no analysis results).",
          ""]

  known = {n for _, _, names in QUESTIONS.values() for n in names}
  sections = [(q, title, where, names) for q, (title, where, names) in QUESTIONS.items()]
  others = tuple(n for n in results if n not in known)
  if others:
    sections.append(("Other", "Further analyses", "", others))
  for q, title, where, names in sections:
    out += [f"## {q}: {title}" + (f" ({where})" if where else ""), ""]
    q_claims = [r for r in claims if r["question"] == q]
    if q_claims:
      a, b = claim_counts(q_claims)["all"]
      out += [f"{a} of {b} claims reproduced:", ""]
      out += [f"- {'✅' if r['reproduced'] else '❌'} **{_cell(r['claim'])}** "
              f"({r['analysis']}) — measured: {_cell(r['measured'])}" for r in q_claims]
      out.append("")
    for name in names:
      res = results.get(name)
      counterpart = (res or {}).get("paper_counterpart", "")
      out.append(f"### {name}" + (f" — paper counterpart: {counterpart}" if counterpart else ""))
      out.append("")
      if res is None:
        failed = [f for f in failures if f["name"] == name]
        out += [f"Not run ({failed[0]['note']})." if failed else "Not run.", ""]
        continue
      seeds = _seeds_text(res)
      if seeds:
        out += [seeds, ""]
      lines, missing = _figure_links(res.get("figures") or [], analysis_rel, root)
      missing_figures += missing
      out += lines or ["(no figure)"]
      out += ["", f"Numbers: [`{analysis_rel}/{name}.json`]({analysis_rel}/{name}.json).", ""]

  out += ["## Stage timings", ""]
  if timings:
    load = [r for r in timings if r.get("load_start") is not None]
    out.append("Wall and CPU seconds of this process per stage, and the machine's 1-minute "
               "load average at its start and end (a load above the core count means the cores "
               "were shared). Skipped stages show their time when they last ran."
               + (f" The run started at load {load[0]['load_start']:.1f}." if load else ""))
    out += ["", timings_table(timings), ""]
  else:
    out += ["(no timings recorded)", ""]

  problems = [f"{f['stage']} `{f['name']}` failed: {f.get('note', '')}" for f in failures]
  problems += claim_problems
  problems += [f"figure listed but missing: `{m}`" for m in missing_figures]
  if problems:
    out += ["## Problems", ""] + [f"- {_cell(p)}" for p in problems] + [""]
  return "\n".join(out), missing_figures


def write_report(workdir: str, *, results: dict[str, dict], distilled: dict[str, dict],
                 timings: list[dict] | None = None, failures: list[dict] | None = None,
                 config: Any = None, analysis_dir: str | None = None,
                 claim_modules: Iterable[str] | None = None,
                 expected: Iterable[str] | None = None) -> dict[str, Any]:
  """Writes `<workdir>/report.md` and `<workdir>/claims.json`.

  results: analysis name -> its JSON dict (figures live in `analysis_dir`, default
  `<workdir>/analysis`); distilled: method -> the driver's results.json (grids in
  `<workdir>/distill/<method>/`). Returns {'path', 'claims', 'claim_problems',
  'counts', 'missing_figures'}.
  """
  analysis_dir = analysis_dir or os.path.join(workdir, "analysis")
  claims, claim_problems = collect_claims(results, claim_modules)
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
  if expected is None and config is not None and config.get("analyses") is not None:
    from ddjax.analysis import reproduce  # pylint: disable=g-import-not-at-top
    expected = reproduce.analysis_names(config)
  text, missing = render_report(
      results=results, distilled=distilled, claims=claims, claim_problems=claim_problems,
      timings=timings or [], failures=failures or [], header=header, root=workdir,
      analysis_rel=os.path.relpath(analysis_dir, workdir), expected=expected or ())
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


def load_workdir(workdir: str) -> tuple[dict[str, dict], dict[str, dict]]:
  """(analysis results, distilled results) found in a reproduction workdir."""
  from ddjax import analysis  # pylint: disable=g-import-not-at-top
  results, distilled = {}, {}
  analysis_dir = os.path.join(workdir, "analysis")
  for name in analysis.ANALYSES:
    path = os.path.join(analysis_dir, f"{name}.json")
    if os.path.exists(path):
      with open(path) as f:
        results[name] = json.load(f)
  distill_dir = os.path.join(workdir, "distill")
  if os.path.isdir(distill_dir):
    for method in sorted(os.listdir(distill_dir)):
      path = os.path.join(distill_dir, method, "results.json")
      if os.path.exists(path):
        with open(path) as f:
          distilled[method] = json.load(f)
  return results, distilled


def report_from_workdir(workdir: str) -> dict[str, Any]:
  """Rebuilds `<workdir>/report.md` from the JSON files a reproduction left there."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from ddjax.analysis import reproduce  # pylint: disable=g-import-not-at-top
  results, distilled = load_workdir(workdir)
  if not results and not distilled:
    raise FileNotFoundError(f"{workdir} holds no analysis/<name>.json and no "
                            "distill/<method>/results.json: not a reproduction workdir.")
  config = None
  try:  # the reproduction's resolved config (launch/reproduce.py writes it)
    with open(os.path.join(workdir, "config.json")) as f:
      config = ml_collections.ConfigDict(json.load(f))
    order = [m.strip() for m in str(config.methods).split(",")]
    distilled = dict(sorted(distilled.items(),
                            key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
    config.analyses = ",".join(n for n in results)  # report what is there, not what is missing
  except (OSError, ValueError, TypeError, AttributeError, KeyError):
    config = None  # not written by launch/reproduce.py: header from the sets alone
  return write_report(workdir, results=results, distilled=distilled, config=config,
                      timings=reproduce.timing_summary(reproduce.read_timings(workdir)))
