"""The public API is documented: every public function of ddjax's packages has
Google-style Args/Returns sections, and every module lists its public names in __all__."""

import ast
import importlib
import os

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
# The packages (and modules) whose public functions must document their arguments and
# return values.
DOCUMENTED = ("data", "models", "train.py", "distill", "curvature", "influence", "analysis")


def _modules():
  for part in DOCUMENTED:
    path = os.path.join(ROOT, "ddjax", part)
    if path.endswith(".py"):
      yield path
      continue
    for folder, _, files in os.walk(path):
      for f in sorted(files):
        if f.endswith(".py"):
          yield os.path.join(folder, f)


def _undocumented(path: str) -> list[str]:
  out = []
  for node in ast.parse(open(path).read()).body:
    if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
      continue
    doc = ast.get_docstring(node) or ""
    params = [a.arg for a in node.args.args + node.args.kwonlyargs]
    returns = any(isinstance(n, ast.Return) and n.value is not None for n in ast.walk(node))
    missing = ["Args"] * (bool(params) and "Args:" not in doc)
    missing += ["Returns"] * (returns and "Returns:" not in doc and "Yields:" not in doc)
    if missing:
      out.append(f"{os.path.relpath(path, ROOT)}:{node.name} lacks {'/'.join(missing)}")
  return out


def test_every_public_function_has_args_and_returns():
  missing = [m for path in _modules() for m in _undocumented(path)]
  assert not missing, missing


@pytest.mark.parametrize("path", sorted(_modules()))
def test_every_module_lists_its_public_names(path):
  rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
  name = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
  module = importlib.import_module(name)
  names = getattr(module, "__all__", None)
  assert names is not None, f"{name} has no __all__"
  assert len(set(names)) == len(names) and all(hasattr(module, n) for n in names), name
