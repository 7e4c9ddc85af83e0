"""The paper's three questions as analyses of distilled sets (see common.py for the contract).

Each entry of `ANALYSES` is `run_<name>(config, workdir) -> dict`, writing
`<workdir>/<name>.json` and PNG figures; `launch/analyze.py --analysis=<name>` runs one,
`launch/reproduce.py` runs them all and writes the report.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

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
  if name not in ANALYSES:
    raise ConfigError(f"Unknown analysis {name!r}; expected one of {sorted(ANALYSES)}.")
  module, fn = ANALYSES[name]
  return getattr(importlib.import_module(module), fn)


# Modules whose `claims(results)` rows make the report's claim table, in report order.
CLAIM_MODULES = ("ddjax.analysis.substitute", "ddjax.analysis.training_setup",
                 "ddjax.analysis.information", "ddjax.analysis.semantics")
