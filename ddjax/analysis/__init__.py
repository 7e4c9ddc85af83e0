"""The paper's three questions as analyses of distilled sets (see common.py for the contract).

Each entry of `ANALYSES` is `run_<name>(config, workdir) -> dict`, writing
`<workdir>/<name>.json` and PNG figures; `launch/analyze.py --analysis=<name>` runs one,
`launch/reproduce.py` runs them all and writes the report.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable

from ddjax import parallel
from ddjax.errors import ConfigError

# name -> (module, function). Q1 "can it substitute for real data?" (paper section 3),
# Q2 "what information does it hold?" (section 4), Q3 "does each point carry meaning?" (5).
ANALYSES: dict[str, tuple[str, str]] = {
    "recognition": ("ddjax.analysis.substitute", "run_recognition"),
    "embedding": ("ddjax.analysis.substitute", "run_embedding"),
    "pixels": ("ddjax.analysis.substitute", "run_pixels"),
    "mixing": ("ddjax.analysis.training_setup", "run_mixing"),
    "sensitivity": ("ddjax.analysis.training_setup", "run_sensitivity"),
    "agreement": ("ddjax.analysis.information", "run_agreement"),
    "recognition_over_training": ("ddjax.analysis.information", "run_recognition_over_training"),
    "curvature_over_training": ("ddjax.analysis.information", "run_curvature_over_training"),
    "influence": ("ddjax.analysis.semantics", "run_influence"),
    "influence_approx": ("ddjax.analysis.semantics", "run_influence_approx"),
    "coherence": ("ddjax.analysis.semantics", "run_coherence"),
}


def get_analysis(name: str) -> Callable[[Any, str], dict]:
  """The analysis `name` as `run(config, workdir) -> dict`.

  The run vmaps at most `config.member_chunk` models per call (0 = all; see
  `ddjax.parallel.members_per_call`), which bounds the memory of its model pools.
  """
  if name not in ANALYSES:
    raise ConfigError(f"Unknown analysis {name!r}; expected one of {sorted(ANALYSES)}.")
  module, fn_name = ANALYSES[name]
  fn = getattr(importlib.import_module(module), fn_name)

  @functools.wraps(fn)
  def run(config, workdir: str) -> dict:
    chunk = int(config.get("member_chunk", 0) or 0)
    if chunk < 0:
      raise ConfigError(f"config.member_chunk must be >= 0, got {chunk}.")
    with parallel.members_per_call(chunk):
      return fn(config, workdir)

  return run


# Modules whose `claims(results)` rows make the report's claim table, in report order.
CLAIM_MODULES = ("ddjax.analysis.substitute", "ddjax.analysis.training_setup",
                 "ddjax.analysis.information", "ddjax.analysis.semantics")
