"""The analysis registry (ddjax/analysis/__init__.py): analyses are found by name, an
analysis of one's own is one module, and the package's imports run one way."""

import ast
import json
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from configs.analysis import paper as paper_config
from ddjax import analysis
from ddjax.analysis import report
from ddjax.errors import ConfigError

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

# The paper's questions, each with its analyses in report order (paper sections 3-5).
BUILTIN = ["recognition", "embedding", "pixels", "mixing", "sensitivity",     # Q1
           "agreement", "recognition_over_training", "curvature_over_training",  # Q2
           "influence", "influence_approx", "coherence"]                          # Q3


def test_names_finds_every_analysis_module_in_report_order():
  assert analysis.names() == BUILTIN
  assert analysis.sections() == {"Q1": BUILTIN[:5], "Q2": BUILTIN[5:8], "Q3": BUILTIN[8:]}
  for name in BUILTIN:
    module = analysis.load(name)
    assert module.QUESTION in report.QUESTIONS and callable(module.run)
    assert callable(module.claims)
    # Each module gives its config section, and configs/analysis/paper.py holds them all.
    assert isinstance(module.default_config(), ml_collections.ConfigDict)
  assert set(BUILTIN) <= set(paper_config.get_config("size=tiny").keys())


def test_unknown_analysis_is_a_one_line_config_error():
  for name in ("nope", "no_such_package.nope", "common", "report"):  # not analyses
    with pytest.raises(ConfigError, match=f"Unknown analysis '{name}'") as info:
      analysis.load(name)
    assert "\n" not in str(info.value)
  with pytest.raises(ConfigError, match="member_chunk"):
    analysis.get_analysis("pixels")(ml_collections.ConfigDict({"member_chunk": -1}), "/none")


def _readme_analysis() -> str:
  """The README's example of an analysis of one's own (my_analyses/brightness.py)."""
  text = open(os.path.join(ROOT, "README.md")).read()
  blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S)
            if "my_analyses/brightness.py" in b]
  assert len(blocks) == 1, "README lost its example analysis"
  return blocks[0]


@pytest.mark.slow
def test_a_new_analysis_is_one_module_run_by_launch_analyze(tmp_path):
  """The README's example, as the one module of a package of one's own."""
  from ddjax.distill import pretrained  # pylint: disable=g-import-not-at-top
  package = tmp_path / "my_analyses"
  package.mkdir()
  (package / "__init__.py").write_text("")
  (package / "brightness.py").write_text(_readme_analysis())
  npz = pretrained.pretrained_path("mnist5k", "dm", 1)  # a shipped set
  workdir = tmp_path / "work"
  env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}", "JAX_PLATFORMS": "cpu"}
  out = subprocess.run(
      [sys.executable, "-m", "launch.analyze", "--config=configs/analysis/paper.py:size=tiny",
       f"--config.distilled=dm={npz}", "--analysis=my_analyses.brightness",
       f"--workdir={workdir}"], cwd=ROOT, env=env, capture_output=True, text=True)
  assert out.returncode == 0, out.stderr[-3000:]
  assert re.search(r"[01] of 1 claims reproduced", out.stdout), out.stdout
  result = json.loads((workdir / "brightness.json").read_text())
  assert set(result["sets"]) == {"dm"} and result["margin"] == 0.5  # its default section
  text = (workdir / "report.md").read_text()
  assert "| 1 | Q1 | brightness | Sets are as bright as real data. |" in text
  assert "### brightness" in text and "[`./brightness.json`](./brightness.json)" in text


# The package's layers: a module may import from its own layer and the layers below it.
LAYERS = [
    ("ddjax.errors", "ddjax.validation", "ddjax.integrity", "ddjax.workdir", "ddjax.optim",
     "ddjax.progress_bar", "ddjax.parallel", "ddjax.checkpoint", "ddjax.augment"),
    ("ddjax.data",),
    ("ddjax.models",),
    ("ddjax.train", "ddjax.classifier", "ddjax.experts"),
    ("ddjax.distill", "ddjax.curvature", "ddjax.influence"),
    ("ddjax.analysis",),
]


def _module_imports() -> dict[str, set[str]]:
  """Every ddjax module -> the ddjax modules it imports, at module level or inside a
  function alike (an import inside a function still ties the two modules together)."""
  paths = {}
  for folder, _, files in os.walk(os.path.join(ROOT, "ddjax")):
    for f in files:
      if f.endswith(".py"):
        rel = os.path.relpath(os.path.join(folder, f), ROOT)[:-3].replace(os.sep, ".")
        paths[rel[:-len(".__init__")] if rel.endswith(".__init__") else rel] = \
            os.path.join(folder, f)
  graph = {m: set() for m in paths}
  for module, path in paths.items():
    package = module if path.endswith("__init__.py") else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parts = package.split(".")[:len(package.split(".")) - node.level + 1]
          base = ".".join(parts + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base
                   for a in node.names]
      else:
        continue
      for target in targets:
        while target and target not in paths:
          target = target.rsplit(".", 1)[0] if "." in target else ""
        if target and target != module:
          graph[module].add(target)
  return graph


def _layer(module: str) -> int:
  for i, prefixes in enumerate(LAYERS):
    if any(module == p or module.startswith(p + ".") for p in prefixes):
      return i
  raise AssertionError(f"{module} is in no layer of LAYERS; add it")


def test_imports_run_one_way_without_cycles():
  graph = _module_imports()
  upward = [f"{m} -> {t}" for m, targets in graph.items() for t in targets
            if m != "ddjax" and _layer(t) > _layer(m)]
  assert not upward, upward
  # The report is a leaf: it formats what it is given.
  assert graph["ddjax.analysis.report"] <= {"ddjax.workdir", "ddjax.analysis.methods"}
  state, cycles = {}, []

  def visit(module, stack):
    state[module] = "open"
    for target in sorted(graph[module]):
      if state.get(target) == "open":
        cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
      elif target not in state:
        visit(target, stack + [target])
    state[module] = "done"

  for module in sorted(graph):
    if module not in state:
      visit(module, [module])
  assert not cycles, cycles


def test_no_long_functions_in_the_analysis_package():
  """A function over ~60 lines (docstring included) states why, in a comment that says
  "Over 60 lines because"; otherwise it is split into named steps."""
  folder = os.path.join(ROOT, "ddjax", "analysis")
  too_long = []
  for filename in sorted(os.listdir(folder)):
    if not filename.endswith(".py"):
      continue
    source = open(os.path.join(folder, filename)).read()
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        body = lines[node.lineno - 1:node.end_lineno]
        if len(body) > 60 and not any("Over 60 lines because" in line for line in body):
          too_long.append(f"{filename}:{node.name} ({len(body)} lines)")
  assert not too_long, too_long
