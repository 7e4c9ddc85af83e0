"""The paper's three questions as analyses of distilled sets, found by name.

An analysis is one module. `ddjax/analysis/<name>.py` defines:

    QUESTION = "Q2"      # the paper's question it answers (its report section)
    POSITION = 1         # its place in that section, and in `all`
    def default_config() -> ml_collections.ConfigDict   # config.<name> (optional)
    def run(config, workdir) -> dict     # writes <workdir>/<name>.json and PNGs
    def claims(result) -> list[dict]     # its rows of the claim table (optional)

and `configs/analysis/<name>.py` may define `sized(section, config)`, which adapts the
section to `config.size` and the dataset. Nothing else registers it: `names()` finds
every module of this package that defines `QUESTION` and `run`, and a dotted name
(`mypackage.my_analysis`) imports an analysis from any package, keyed by its last
component. The questions (paper sections 3-5): Q1 "can distilled data substitute for
real data?", Q2 "what information does it hold?", Q3 "does each point carry meaning?".

    run = analysis.get_analysis("agreement")     # run(config, workdir) -> dict
    rows, problems = analysis.claim_rows({"agreement": result})

`launch/analyze.py` runs some or all of them; `launch/reproduce.py` distils the sets first
and writes the report (`ddjax.analysis.report`).
"""

from __future__ import annotations

import copy
import functools
import importlib
import pkgutil
import types
from typing import Any, Callable, Iterable

import ml_collections

from ddjax import parallel
from ddjax.analysis import report
from ddjax.errors import ConfigError

__all__ = ["names", "load", "key_of", "get_analysis", "with_section", "claim_rows",
           "question_of", "sections"]

_DEFAULT_POSITION = 100


def _is_analysis(module: types.ModuleType) -> bool:
  return callable(getattr(module, "run", None)) and isinstance(
      getattr(module, "QUESTION", None), str)


def _order(module: types.ModuleType, name: str) -> tuple:
  return (module.QUESTION, getattr(module, "POSITION", _DEFAULT_POSITION), name)


@functools.lru_cache(maxsize=1)
def _builtin() -> tuple[str, ...]:
  found = {}
  for info in pkgutil.iter_modules(__path__):
    if info.name.startswith("_") or info.ispkg:
      continue
    module = importlib.import_module(f"{__name__}.{info.name}")
    if _is_analysis(module):
      found[info.name] = module
  return tuple(sorted(found, key=lambda n: _order(found[n], n)))


def names() -> list[str]:
  """ddjax's own analyses, in report order (by question, then position).

  Returns:
    The names of every module of `ddjax.analysis` that defines QUESTION and run.
  """
  return list(_builtin())


def key_of(name: str) -> str:
  """The key of an analysis's results, config section and JSON file: its module name.

  Args:
    name: an analysis name, possibly dotted ("mypackage.my_analysis").

  Returns:
    The last dotted component ("my_analysis"); a plain name is returned unchanged.
  """
  return name.rsplit(".", 1)[-1]


def load(name: str) -> types.ModuleType:
  """The module of analysis `name`.

  Args:
    name: one of `names()`, or a dotted module path (an analysis of another package).

  Returns:
    The imported module.

  Raises:
    ConfigError: if there is no such analysis.
  """
  path = name if "." in name else f"{__name__}.{name}"
  try:
    module = importlib.import_module(path)
  except ModuleNotFoundError as e:
    if e.name is not None and not path.startswith(e.name):
      raise  # the analysis exists but one of its own imports is missing
    module = None
  if module is None or not _is_analysis(module):
    raise ConfigError(f"Unknown analysis {name!r}; expected one of {names()}, or the "
                      "dotted path of a module defining QUESTION and run.")
  return module


def question_of(name: str) -> str:
  """The paper's question analysis `name` answers ("Q1", "Q2", "Q3").

  Args:
    name: one of `names()`, or a dotted module path.

  Returns:
    The module's QUESTION string.

  Raises:
    ConfigError: if there is no such analysis.
  """
  return load(name).QUESTION


def with_section(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """`config`, with the analysis's `default_config()` as its section if it has none.

  Args:
    config: an analysis config (configs/analysis/paper.py), possibly locked.
    name: the analysis.

  Returns:
    `config` itself when the section is there (or the module has no defaults), else an
    unlocked copy with it added.
  """
  module, key = load(name), key_of(name)
  if key in config or not hasattr(module, "default_config"):
    return config
  out = copy.deepcopy(config)
  out.unlock()
  out[key] = module.default_config()
  return out


def get_analysis(name: str) -> Callable[[Any, str], dict]:
  """The analysis `name` as `run(config, workdir) -> dict`.

  The run vmaps at most `config.member_chunk` models per call (0 = all; see
  `ddjax.parallel.members_per_call`), which bounds the memory of its model pools, and
  uses the module's default section when the config has none.

  Args:
    name: one of `names()`, or a dotted module path.

  Returns:
    `run(config, workdir) -> dict`, wrapping the module's `run`: it writes
    `<workdir>/<key>.json` and figures and returns the JSON's content.

  Raises:
    ConfigError: for an unknown analysis or a negative `member_chunk`.
  """
  module = load(name)

  @functools.wraps(module.run)
  def run(config, workdir: str) -> dict:
    chunk = int(config.get("member_chunk", 0) or 0)
    if chunk < 0:
      raise ConfigError(f"config.member_chunk must be >= 0, got {chunk}.")
    with parallel.members_per_call(chunk):
      return module.run(with_section(config, name), workdir)

  return run


def claim_rows(results: dict[str, dict], analyses: Iterable[str] | None = None
               ) -> tuple[list[dict], list[str]]:
  """The claim table's rows computed from analysis results, and any problems.

  Args:
    results: analysis key -> its JSON.
    analyses: the analyses to ask, in order (default: `names()`); a dotted name is
      asked about `results[key_of(name)]`.

  Returns:
    (rows, problems): each analysis's `claims(result)` rows in order, validated
    (`report.validate_claim`; analyses without `claims` or without results give none),
    and a message for each that raised or returned a malformed row (left out).
  """
  rows, problems = [], []
  for name in (names() if analyses is None else list(analyses)):
    result = results.get(key_of(name))
    if not result:
      continue
    try:
      module = load(name)
    except ConfigError as e:
      problems.append(f"no claims for {name!r}: {e}")
      continue
    if not hasattr(module, "claims"):
      continue
    try:
      module_rows = list(module.claims(result) or [])
    except Exception as e:  # pylint: disable=broad-except
      problems.append(f"`{module.__name__}.claims` failed: {type(e).__name__}: {e}")
      continue
    for row in module_rows:
      try:
        rows.append(report.validate_claim(row))
      except ValueError as e:
        problems.append(f"`{module.__name__}.claims` returned a malformed row: {e}")
  return rows, problems


def sections(analyses: Iterable[str] | None = None) -> dict[str, list[str]]:
  """The report's sections: question -> the keys of the analyses answering it, in order.

  Args:
    analyses: analysis names (default: `names()`).

  Returns:
    {"Q1": [...], "Q2": [...], ...}, questions in order of first appearance.
  """
  out: dict[str, list[str]] = {}
  for name in (names() if analyses is None else list(analyses)):
    out.setdefault(question_of(name), []).append(key_of(name))
  return out
