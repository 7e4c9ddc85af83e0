"""The Colab notebooks run top to bottom on a CPU, and their own assertion cells pass.

Each notebook is executed with nbclient in a kernel running this interpreter (the
.venv's python: jupyter_client maps the `python3` kernelspec's `python` to
sys.executable), from notebooks/ as a fresh user would. A cell that raises fails the
test with the cell's source and traceback. Outputs are checked for the numbers the
notebooks print, and the committed notebooks must carry no outputs.
"""

import os
import re
import sys

import nbformat
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
NOTEBOOK_DIR = os.path.join(ROOT, "notebooks")
NOTEBOOKS = ("quickstart.ipynb", "analysis_tour.ipynb", "curvature_influence.ipynb")
CELL_TIMEOUT_S = 900  # per cell; each notebook takes ~1 min on 2 free cores


def _kernel_manager():
  """A kernel manager whose kernel is this interpreter, whatever kernelspecs exist."""
  from jupyter_client.manager import KernelManager  # pylint: disable=g-import-not-at-top
  km = KernelManager(kernel_name="python3")
  km.kernel_spec.argv[0] = sys.executable  # the spec says `python`; pin it to the venv's
  return km


def _run(name: str, tmp_path, **env) -> nbformat.NotebookNode:
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top
  nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
  old = {k: os.environ.get(k) for k in env}
  os.environ.update({"JAX_PLATFORMS": "cpu", **env})
  try:
    client = NotebookClient(nb, km=_kernel_manager(), timeout=CELL_TIMEOUT_S,
                            resources={"metadata": {"path": NOTEBOOK_DIR}})
    client.execute()
  finally:
    for k, v in old.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    nbformat.write(nb, os.path.join(tmp_path, name))  # the executed notebook, for inspection
  return nb


def _text(nb) -> str:
  out = []
  for cell in nb.cells:
    for o in cell.get("outputs", []):
      if "text" in o:
        out.append(o["text"])
      elif "data" in o and "text/plain" in o["data"]:
        out.append(o["data"]["text/plain"])
  return "\n".join(out)


def _images(nb) -> int:
  return sum("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebooks_are_clean(name):
  """Valid nbformat, a Colab set-up cell first, and no stored outputs."""
  nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
  nbformat.validate(nb)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert "google.colab" in code[0].source and "pip" in code[0].source
  assert all(not c.outputs and c.execution_count is None for c in code), \
      f"{name} has stored outputs; clear them before committing"


@pytest.mark.slow
def test_quickstart(tmp_path):
  nb = _run("quickstart.ipynb", tmp_path)
  text = _text(nb)
  dm = float(re.search(r"protocol A, DM: +([0-9.]+)", text).group(1))
  rnd = float(re.search(r"protocol A, random real: +([0-9.]+)", text).group(1))
  assert 0.6 < dm <= 1.0 and 0.5 < rnd <= 1.0, text
  assert _images(nb) >= 2  # the real digits and the distilled grid


@pytest.mark.slow
def test_analysis_tour(tmp_path):
  nb = _run("analysis_tour.ipynb", tmp_path, DDJAX_TOUR_WORKDIR=str(tmp_path / "tour"))
  text = _text(nb)
  match = re.search(r"Claims reproduced: (\d+) of (\d+)", text)
  assert match and int(match.group(2)) >= 1, text
  assert int(match.group(1)) <= int(match.group(2))
  assert os.path.exists(tmp_path / "tour" / "report.md")
  assert _images(nb) >= 3  # at least one figure per question


@pytest.mark.slow
def test_curvature_influence(tmp_path):
  nb = _run("curvature_influence.ipynb", tmp_path)
  text = _text(nb)
  trace = float(re.search(r"Hutchinson trace: (-?[0-9.e+]+)", text).group(1))
  slq_trace = float(re.search(r"SLQ trace: (-?[0-9.e+]+)", text).group(1))
  assert trace > 0 and abs(slq_trace - trace) < 0.5 * abs(trace), text
  assert re.search(r"LOO influence matrix: \(\d+, \d+\)", text), text
  assert _images(nb) >= 2  # the spectral density and the influence grid
