"""The analyses' results do not change when their code is reorganised.

tests/golden/tiny_avx512/ holds every analysis JSON of a tiny reproduction (methods random, dm and
mtt; all analyses) written by the code before the analysis package was split into one
module per analysis (commit 1bfe490); the committed demo report's claim table was written
by that code too. Both must come out the same from the code of today.

The floats of a training run depend on the CPU's instruction set and on the jax/XLA
version (round-off grows through training: on an AVX2 CPU a near-zero coherence effect
changes sign and near-tied influence ranks swap), so each golden set holds for the
machine and stack in its `MACHINE.json`, and the test compares against the set made on
the machine it runs on: tests/golden/tiny_avx512/ is the one the split was checked
against; tiny_avx2/ was written by the same code (session 13) when CI moved to an AVX2
CPU, after its differences from tiny_avx512/ were checked to be of that kind.

The CPU's model name and vector ISA do not pin the floats down: session 17's AVX-512 EPYC
reported the same name and ISA as sessions 7-12's, and its run differed from
tiny_avx512/ by round-off of the same kind. So a machine is also recorded by its CPU
family, model and stepping (the microarchitecture the compiler tunes for), its cache
sizes (which set the blocking of matrix products) and its CPU count (the intra-op thread
pool). The two older sets record only what was recorded then; a set holds for every
machine that agrees with all it records, and the test takes the matching set that records
the most: tiny_avx512_family25_model17/ was written (session 18) on such an EPYC, whose
run matched tiny_avx2/ and tiny_avx512/ in every key, string and length and differed
from them by round-off and its consequences (near-tied ranks, one test image's
prediction, a near-zero effect's sign), and gave the same JSON to the bit when run
twice. On a machine with no set the test fails and says so: check the results first,
then write a set for it with `PYTHONPATH=. python tests/test_analysis_golden.py
--regenerate`, which writes a new directory and never replaces one.
"""

import json
import math
import os
import platform
import re
import shutil
import sys

import pytest

from configs import reproduce as reproduce_config
from ddjax import analysis
from ddjax.analysis import reproduce

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GOLDEN_ROOT = os.path.join(ROOT, "tests", "golden")
MACHINE_FILE = "MACHINE.json"
# The committed demo reports: mnist5k (`make demo`) and Fashion-MNIST (BUILD_NOTES).
DEMOS = [os.path.join(ROOT, "docs", name) for name in ("demo", "demo_fashion")]
# Floats may differ by round-off only: scipy's Benjamini-Hochberg and Welch interval
# (which replaced hand-written ones) order their float operations differently, by ~2 ulp.
FLOAT_RTOL = 1e-12
# Measured durations, which no two runs share.
DURATIONS = {"wall_time_s", "loo_seconds", "exact_loo_seconds", "seconds"}


def differences(new, old, path="$") -> list[str]:
  """Where two JSON values differ: exactly, except floats to FLOAT_RTOL and durations."""
  if isinstance(new, dict) and isinstance(old, dict):
    out = [f"{path}.{k}: only in {'new' if k in new else 'old'}" for k in set(new) ^ set(old)]
    for k in sorted((set(new) & set(old)) - DURATIONS):
      out += differences(new[k], old[k], f"{path}.{k}")
    return out
  if isinstance(new, list) and isinstance(old, list):
    out = [f"{path}: length {len(new)} vs {len(old)}"] if len(new) != len(old) else []
    for i, (a, b) in enumerate(zip(new, old)):
      out += differences(a, b, f"{path}[{i}]")
    return out
  if isinstance(new, float) and isinstance(old, float):
    same = new == old or math.isclose(new, old, rel_tol=FLOAT_RTOL, abs_tol=0.0)
    return [] if same else [f"{path}: {new!r} vs {old!r}"]
  return [] if (type(new), new) == (type(old), old) else [f"{path}: {new!r} vs {old!r}"]


def test_differences_sees_every_kind_of_change():
  old = {"a": [1, 2.0, "x"], "b": {"c": True}}
  assert differences(old, json.loads(json.dumps(old))) == []
  assert differences({"a": [1, 2.0 + 1e-15, "x"], "b": {"c": True}}, old) == []
  assert len(differences({"a": [1, 2.001, "y"], "b": {"c": 1}}, old)) == 3
  assert differences({**old, "wall_time_s": 3.0}, {**old, "wall_time_s": 4.0}) == []
  assert sorted(differences({"a": [1, 2.0], "b": {}}, old)) == ["$.a: length 2 vs 3",
                                                                 "$.b.c: only in old"]


def _claim_lines(text: str) -> list[str]:
  return [line for line in text.splitlines() if re.match(r"\| \d+ \| Q\d \|", line)]


@pytest.mark.parametrize("demo", DEMOS, ids=os.path.basename)
def test_the_committed_demo_claim_table_regenerates_identically(tmp_path, demo):
  workdir = str(tmp_path / "demo")
  shutil.copytree(demo, workdir)
  committed = _claim_lines(open(os.path.join(demo, "report.md")).read())
  out = reproduce.report_from_workdir(workdir)
  assert not out["claim_problems"]
  assert _claim_lines(open(out["path"]).read()) == committed and len(committed) == 16


# What the floats of a run depend on, beyond the stack's versions and the ISA (the first
# two sets record only those): /proc/cpuinfo's fields and the cache sizes.
CPUINFO_FIELDS = {"cpu family": "cpu_family", "model": "cpu_model", "stepping": "cpu_stepping"}
CACHE_ROOT = "/sys/devices/system/cpu/cpu0/cache"


def _caches() -> list[str]:
  """The CPU's caches as 'L<level> <type> <size>', from sysfs (empty where it has none)."""
  out = []
  if os.path.isdir(CACHE_ROOT):
    for index in sorted(i for i in os.listdir(CACHE_ROOT) if i.startswith("index")):
      fields = []
      for name in ("level", "type", "size"):
        path = os.path.join(CACHE_ROOT, index, name)
        fields.append(open(path).read().strip() if os.path.exists(path) else "?")
      out.append(f"L{fields[0]} {fields[1]} {fields[2]}")
  return out


def machine() -> dict:
  """What the floats of a run depend on: the stack's versions and the CPU."""
  import jax, jaxlib, numpy, scipy  # pylint: disable=g-import-not-at-top,multiple-imports
  cpu, isa, info = platform.processor(), [], {}
  if os.path.exists("/proc/cpuinfo"):
    for line in open("/proc/cpuinfo"):
      key, _, value = (part.strip() for part in line.partition(":"))
      if key == "model name":
        cpu = value
      elif key == "flags" and not isa:
        isa = sorted(set(value.split()) & {
            "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "amx_tile"})
      elif key in CPUINFO_FIELDS and CPUINFO_FIELDS[key] not in info:
        info[CPUINFO_FIELDS[key]] = value
  return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": numpy.__version__,
          "scipy": scipy.__version__, "cpu": cpu, "isa": isa, "machine": platform.machine(),
          **info, "caches": _caches(), "cpu_count": os.cpu_count()}


def golden_sets() -> dict[str, dict]:
  """{directory: the machine its golden JSON was made on} for tests/golden/tiny_*/."""
  out = {}
  for name in sorted(os.listdir(GOLDEN_ROOT)):
    path = os.path.join(GOLDEN_ROOT, name, MACHINE_FILE)
    if name.startswith("tiny_") and os.path.exists(path):
      with open(path) as f:
        out[os.path.join(GOLDEN_ROOT, name)] = json.load(f)
  return out


def golden_dir_for(here: dict) -> str | None:
  """The golden set that holds for `here`: of those whose every record `here` agrees
  with, the one that records the most; None if there is none."""
  matching = [(len(made_on), directory) for directory, made_on in golden_sets().items()
              if all(key in here and here[key] == value for key, value in made_on.items())]
  return max(matching)[1] if matching else None


def new_golden_dir(here: dict) -> str:
  """A directory, not yet taken, for a golden set made on `here`."""
  isa = ("avx512" if "avx512f" in here["isa"] else "avx2" if "avx2" in here["isa"] else
         here["machine"])
  base = os.path.join(GOLDEN_ROOT, f"tiny_{isa}_family{here.get('cpu_family', '?')}"
                                   f"_model{here.get('cpu_model', '?')}")
  path, n = base, 1
  while os.path.exists(path):
    n += 1
    path = f"{base}_{n}"
  return path


def tiny_reproduction(workdir: str) -> dict:
  """The tiny reproduction the golden files come from; returns its summary."""
  config = reproduce_config.get_config("dataset=mnist5k,size=tiny")
  config.methods = "random,dm,mtt"
  config.analyses = "all"
  return reproduce.run_reproduction(config, workdir, verbose=False)


@pytest.mark.slow
def test_every_analysis_of_the_tiny_reproduction_is_unchanged(tmp_path):
  here = machine()
  sets = golden_sets()
  directory = golden_dir_for(here)
  assert directory is not None, (
      f"no golden set was made on this machine ({here}); the sets are "
      f"{ {os.path.basename(d): m for d, m in sets.items()} }: see this module's docstring")
  summary = tiny_reproduction(str(tmp_path / "repro"))
  assert not summary["failures"]
  golden = sorted(f[:-5] for f in os.listdir(directory)
                  if f.endswith(".json") and f != MACHINE_FILE)
  assert sorted(summary["analysis"]) == golden == sorted(analysis.names())
  problems = {}
  for name in golden:
    with open(os.path.join(directory, f"{name}.json")) as f:
      found = differences(summary["analysis"][name], json.load(f))
    if found:
      problems[name] = found[:10]
  unrecorded = sorted(set(here) - set(sets[directory]))
  assert not problems, (
      f"{problems}; compared with {os.path.basename(directory)}, which records only "
      f"{sorted(sets[directory])} of this machine (it was not asked about {unrecorded}): if "
      "every difference is round-off, write a set for this machine (module docstring)"
      if unrecorded else problems)


def test_every_golden_set_holds_every_analysis_for_its_own_machine():
  sets = golden_sets()
  assert len(sets) >= 1 and len({json.dumps(m, sort_keys=True) for m in sets.values()}) == len(sets)
  for directory, made_on in sets.items():
    names = sorted(f[:-5] for f in os.listdir(directory)
                   if f.endswith(".json") and f != MACHINE_FILE)
    assert names == sorted(analysis.names()), directory
    assert golden_dir_for(made_on) == directory


def test_the_set_that_records_the_most_of_a_machine_holds_for_it(tmp_path, monkeypatch):
  monkeypatch.setattr(sys.modules[__name__], "GOLDEN_ROOT", str(tmp_path))
  old = {"cpu": "EPYC", "isa": ["avx2"]}
  new = {**old, "cpu_model": "17", "caches": ["L3 Unified 32768K"]}
  for name, made_on in (("tiny_old", old), ("tiny_new", new), ("other", new)):
    os.makedirs(tmp_path / name)
    (tmp_path / name / MACHINE_FILE).write_text(json.dumps(made_on))
  assert golden_dir_for({**new, "cpu_count": 2}) == str(tmp_path / "tiny_new")
  assert golden_dir_for({**new, "cpu_model": "1"}) == str(tmp_path / "tiny_old")
  assert golden_dir_for({**old, "isa": ["avx2", "avx512f"]}) is None
  here = {**new, "isa": ["avx512f"], "cpu_family": "25", "machine": "x86_64"}
  first = new_golden_dir(here)
  assert first == str(tmp_path / "tiny_avx512_family25_model17")
  os.makedirs(first)
  assert new_golden_dir(here) == first + "_2"


def test_this_machine_is_recorded_beyond_its_cpu_name_and_isa():
  here = machine()
  assert here["cpu_count"] == os.cpu_count()
  if os.path.exists("/proc/cpuinfo") and platform.machine() == "x86_64":
    assert here["cpu_family"].isdigit() and here["cpu_model"].isdigit()
  if os.path.isdir(CACHE_ROOT):
    assert here["caches"] and all(c.startswith("L") for c in here["caches"])


if __name__ == "__main__" and sys.argv[1:] == ["--regenerate"]:
  import tempfile  # pylint: disable=g-import-not-at-top
  # A new directory, never an existing set: a set is replaced only by deleting it in git.
  target = new_golden_dir(machine())
  out = tiny_reproduction(tempfile.mkdtemp(prefix="golden_"))
  os.makedirs(target)
  for key, result in out["analysis"].items():
    with open(os.path.join(target, f"{key}.json"), "w") as f:
      json.dump(result, f, indent=2)
  with open(os.path.join(target, MACHINE_FILE), "w") as f:
    json.dump(machine(), f, indent=2)
  print(f"wrote {len(out['analysis'])} golden files and {MACHINE_FILE} to {target}")
