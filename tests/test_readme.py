"""The README's library snippet runs as written and learns something."""

import contextlib
import io
import os
import re

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


@pytest.mark.slow
def test_readme_python_snippet_runs():
  text = open(os.path.join(ROOT, "README.md")).read()
  blocks = re.findall(r"```python\n(.*?)```", text, re.S)
  assert blocks, "README has no python snippet"
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    exec(compile(blocks[0], "README.md", "exec"), {})  # pylint: disable=exec-used
  accuracy = float(re.search(r"protocol A, 10 real images/class: ([0-9.]+)", out.getvalue()).group(1))
  assert 0.5 < accuracy <= 1.0, out.getvalue()
