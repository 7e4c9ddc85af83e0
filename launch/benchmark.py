r"""Side-by-side benchmarks: ddjax against PyTorch references of the same computation.

    python -m launch.benchmark                                   # all, --size=small
    python -m launch.benchmark --size=mnist5k --out=/tmp/bench.json
    python -m launch.benchmark --benchmarks=distill_mtt,mtt_memory,hvp --repeats=5

Benchmarks (`--benchmarks`, a comma list; groups: all, distill, mtt_memory):
  distill_dc, distill_dm, distill_mtt, distill_bptt   one distillation iteration
  distill_dsa, distill_kip                            the same, ddjax only
  mtt_memory@10/20/40/80                              MTT peak memory against syn_steps
  hvp, hutchinson                                     a full-dataset HVP; a Hutchinson probe
  loo                                                 n + 1 leave-one-out retrains
  pool                                                a subset-trained model pool
  record                                              protocol B recording every iteration

Each side runs in its own process (`benchmarks/suite.py` in this Python, the reference
in --torch_python), one after the other: warm-up first (the JAX one compiles), then the
median of --repeats; peak memory is the child process's maximum resident set size
(getrusage via wait4), or the device's peak bytes when ddjax runs on a GPU. The ratio is
ddjax / reference (below 1: ddjax is faster). Without PyTorch the ddjax side still runs
and the reference column says "reference unavailable".

--size: small (the quick configs, tiny problems: minutes), mnist5k (the mnist5k IPC-10
configs, real data, CPU-sized problems), cifar (ConvNet-128, IPC 10, syn_steps 30,
random CIFAR-shaped data: for a GPU). See benchmarks/suite.py for every problem size.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from benchmarks import suite
from launch import common  # pylint: disable=unused-import  (defines --multihost, unused here)

_BENCHMARKS = flags.DEFINE_list("benchmarks", ["all"], "Benchmarks to run (see module doc).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats per side (median reported).")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed warm-up calls per side (JAX compiles).")
_SIZE = flags.DEFINE_enum("size", "small", sorted(suite.SIZES), "Problem sizes.")
_OUT = flags.DEFINE_string("out", "", "Write the results here as JSON.")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", ".bench-venv/bin/python",
                                    "Python with PyTorch (requirements-bench.txt).")
_THREADS = flags.DEFINE_integer(
    "threads", 0, "CPU threads: 0 = every core on both sides (XLA's default; PyTorch "
    "set_num_threads(cores)); 1 = both sides single-threaded (XLA with "
    "--xla_cpu_multi_thread_eigen=false, both pinned to one core), the fair setting on a "
    "machine shared with other jobs, where multi-threaded runs wait on each other's "
    "threads; N > 1: PyTorch N, XLA all.")
_TIMEOUT = flags.DEFINE_integer("timeout", 1800, "Seconds per side before it is stopped.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The common arguments each reference script understands.
SCRIPT_ARGS = {"torch_refs.py": ("data", "repeats", "warmup", "threads"),
               "torch_trace.py": ("data", "out", "repeats", "warmup", "threads"),
               "torch_metagrad.py": ("repeats", "threads")}


def run_child(cmd: list[str], timeout: float, env: dict | None = None,
              cpus: set[int] | None = None) -> dict:
  """Runs cmd; returns its exit code, output, wall time and peak RSS (MB, from wait4).

  Linux starts a spawned child's maximum RSS at its parent's (exec records the mm it
  replaces), so the caller must stay small: this binary never imports JAX itself.
  `cpus` pins the child to those cores (sched_setaffinity), e.g. one core for --threads=1.
  """
  if cpus:  # a trampoline, not preexec_fn (unsafe after fork in a threaded parent)
    cmd = [sys.executable, "-c", "import os, sys; os.sched_setaffinity(0, "
           f"{sorted(cpus)}); os.execvp(sys.argv[1], sys.argv[1:])", *cmd]
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)
    timed_out = False
    while True:
      pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
      if pid:
        break
      if time.perf_counter() - t0 > timeout:
        proc.kill()
        _, status, usage = os.wait4(proc.pid, 0)
        timed_out = True
        break
      time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    out.seek(0)
    err.seek(0)
    return {"returncode": proc.returncode, "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"), "wall_s": time.perf_counter() - t0,
            "peak_rss_mb": usage.ru_maxrss / 1024, "timed_out": timed_out}


def _last_json(text: str) -> dict | None:
  for line in reversed(text.strip().splitlines()):
    if line.startswith("{"):
      try:
        return json.loads(line)
      except json.JSONDecodeError:
        return None
  return None


def _failure(child: dict, timeout: float) -> str:
  if child["timed_out"]:
    return f"did not finish in {timeout:.0f} s"
  lines = [l for l in child["stderr"].strip().splitlines() if l.strip()]
  return f"exit {child['returncode']}: {lines[-1] if lines else 'no output'}"


def torch_available(python: str) -> tuple[bool, str]:
  """(True, version) if `python` imports torch, else (False, why not)."""
  path = python if os.path.isabs(python) else os.path.join(ROOT, python)
  if not os.path.exists(path):
    return False, f"{python} not found (make bench-setup)"
  try:
    proc = subprocess.run([path, "-c", "import torch; print(torch.__version__)"],
                          capture_output=True, text=True, timeout=120)
  except (OSError, subprocess.TimeoutExpired) as e:
    return False, f"{python} failed: {e}"
  if proc.returncode != 0:
    return False, f"{python} has no torch"
  return True, proc.stdout.strip()


def reference_command(python: str, ref: dict, workdir: str, repeats: int, warmup: int,
                      threads: int) -> list[str]:
  path = python if os.path.isabs(python) else os.path.join(ROOT, python)
  common_args = {"data": f"--data={os.path.join(workdir, 'inputs.npz')}",
                 "out": f"--out={ref.get('out', '')}", "repeats": f"--repeats={repeats}",
                 "warmup": f"--warmup={warmup}", "threads": f"--threads={threads}"}
  return ([path, os.path.join(ROOT, "benchmarks", ref["script"])] + list(ref["args"])
          + [common_args[k] for k in SCRIPT_ARGS[ref["script"]]])


def _peak_mb(side: dict) -> float | None:
  return side.get("device_peak_mb", side.get("peak_rss_mb"))


def note_for(case: str, ddjax: dict, reference: dict | None) -> str:
  """A short note: throughput, what was extrapolated, cross-checks between the sides."""
  ref = reference or {}
  parts = []
  if reference is not None and ddjax.get("platform", "cpu") != "cpu":
    parts.append(f"ddjax on {ddjax['platform']}, the PyTorch reference on the CPU")
  if case.startswith("mtt_memory@") and ddjax.get("xla_temp_mb") is not None:
    parts.append(f"XLA temp {ddjax['xla_temp_mb']:.0f} MB")
  if case == "hutchinson":
    parts.append(ddjax.get("unit", "per probe"))
  if case == "hvp" and "check_vhv" in ref:
    a, b = ddjax["check_vhv"], ref["check_vhv"]
    parts.append(f"v'Hv rel. diff {abs(a - b) / max(abs(b), 1e-30):.1e}")
  if case == "loo":
    parts.append(f"{ddjax['runs']} retrains x {ddjax['num_steps']} steps")
    if ref.get("extrapolated"):
      parts.append(f"torch loop extrapolated from {ref['timed_runs']}")
    if "max_abs_influence_diff" in ref:
      parts.append(f"max |I_ddjax - I_torch| {ref['max_abs_influence_diff']:.1e} of max |I| "
                   f"{ref.get('max_abs_influence', float('nan')):.2g}")
  if case == "pool":
    parts.append(f"{ddjax['models_per_s']:.2f} vs {ref.get('models_per_s', float('nan')):.2f} "
                 f"models/s ({ddjax['models']} models)")
  if case == "record":
    parts.append(f"{ddjax['iterations']} iterations x {ddjax['num_test']} test predictions")
  if case.startswith("distill_") and "warmup_s" in ddjax:
    parts.append(f"compile+first {ddjax.get('compile_s', 0) + ddjax['warmup_s']:.1f} s")
  return "; ".join(parts)


def single_core(threads: int) -> set[int] | None:
  """--threads=1 pins both sides to one core: XLA:CPU splits large loop fusions over its
  own thread pool even with Eigen single-threaded, so the flag alone is not one thread."""
  if threads != 1 or not hasattr(os, "sched_getaffinity"):
    return None
  return {min(os.sched_getaffinity(0))}


def jax_env(threads: int) -> dict:
  """The ddjax child's environment; threads=1 turns off XLA:CPU's multi-threaded Eigen."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
  if threads == 1:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false").strip()
  return env


def run_benchmark(case: str, size: str, repeats: int, warmup: int, torch_python: str,
                  torch_ok: tuple[bool, str], threads: int, timeout: float, root_dir: str) -> dict:
  """Both sides of one case; the row of the table and its raw results."""
  workdir = os.path.join(root_dir, case.replace("@", "_"))
  os.makedirs(workdir, exist_ok=True)
  env = jax_env(threads)
  cmd = [sys.executable, "-m", "benchmarks.suite", case, f"--size={size}", f"--workdir={workdir}",
         f"--repeats={repeats}", f"--warmup={warmup}"]
  row = {"benchmark": case, "ddjax_command": shlex.join(cmd)}
  child = run_child(cmd, timeout, env, single_core(threads))
  ddjax = _last_json(child["stdout"]) if child["returncode"] == 0 else None
  if ddjax is None:
    row["ddjax_error"] = _failure(child, timeout)
    return row
  ddjax["peak_rss_mb"] = child["peak_rss_mb"]
  row["ddjax"] = ddjax
  ref = ddjax.pop("reference", None)
  if ref is None:
    row["reference_unavailable"] = ddjax.pop("reference_unavailable", "no reference")
  elif not torch_ok[0]:
    row["reference_unavailable"] = torch_ok[1]
  else:
    rcmd = reference_command(torch_python, ref, workdir, repeats, warmup, threads)
    row["reference_command"] = shlex.join(rcmd)
    rchild = run_child(rcmd, timeout, cpus=single_core(threads))
    result = None
    if rchild["returncode"] == 0:
      if "out" in ref and os.path.exists(ref["out"]):
        with open(ref["out"]) as f:
          result = json.load(f)
        result.setdefault("median_s", result.get("per_probe_s"))
      else:
        result = _last_json(rchild["stdout"])
      result.setdefault("warmup_s", result.get("first_s"))
    if result is None:
      row["reference_error"] = _failure(rchild, timeout)
    else:
      result["peak_rss_mb"] = rchild["peak_rss_mb"]
      row["reference"] = result
      row["ratio"] = ddjax["median_s"] / result["median_s"]
  row["note"] = note_for(case, ddjax, row.get("reference"))
  return row


def format_table(rows: list[dict]) -> str:
  """The ratio table, Markdown."""
  lines = ["| benchmark | ddjax median s | reference median s | ratio ddjax/ref | "
           "ddjax peak MB | reference peak MB | note |",
           "|---|---:|---:|---:|---:|---:|---|"]
  for row in rows:
    d, r = row.get("ddjax"), row.get("reference")
    if d is None:
      lines.append(f"| {row['benchmark']} | error: {row.get('ddjax_error')} | | | | | |")
      continue
    if r is not None:
      ref_s, ratio, ref_mem = f"{r['median_s']:.3f}", f"{row['ratio']:.2f}", f"{_peak_mb(r):.0f}"
    else:
      why = row.get("reference_error") or row.get("reference_unavailable")
      ref_s, ratio, ref_mem = (f"reference unavailable ({why})" if "reference_error" not in row
                               else f"reference failed ({why})"), "-", "-"
    lines.append(f"| {row['benchmark']} | {d['median_s']:.3f} | {ref_s} | {ratio} | "
                 f"{_peak_mb(d):.0f} | {ref_mem} | {row.get('note', '')} |")
  return "\n".join(lines)


def memory_summary(rows: list[dict]) -> dict | None:
  """MTT peak memory at the largest syn_steps over that at the smallest (goal: <= 2)."""
  points = {int(r["benchmark"].split("@")[1]): r for r in rows
            if r["benchmark"].startswith("mtt_memory@") and "ddjax" in r}
  if len(points) < 2:
    return None
  lo, hi = min(points), max(points)
  out = {"syn_steps": [lo, hi],
         "ddjax_peak_ratio": _peak_mb(points[hi]["ddjax"]) / _peak_mb(points[lo]["ddjax"])}
  temps = [points[s]["ddjax"].get("xla_temp_mb") for s in (lo, hi)]
  if all(temps):
    out["ddjax_xla_temp_ratio"] = temps[1] / temps[0]
  if all("reference" in points[s] for s in (lo, hi)):
    out["reference_peak_ratio"] = (_peak_mb(points[hi]["reference"])
                                   / _peak_mb(points[lo]["reference"]))
  return out


def main(argv):
  del argv
  # No common.setup(): it imports JAX, and this process's RSS would leak into every
  # child's peak (see run_child). The children report their platform and devices.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  cases = suite.expand(_BENCHMARKS.value)
  threads = _THREADS.value or os.cpu_count() or 1  # 0: XLA keeps its default (all cores)
  torch_ok = torch_available(_TORCH_PYTHON.value)
  print(f"harness RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB, "
        f"size={_SIZE.value}, repeats={_REPEATS.value}, warm-up={_WARMUP.value}, "
        f"threads={'all' if not _THREADS.value else threads}, "
        f"{os.cpu_count()} CPU cores, load average {os.getloadavg()}, PyTorch: "
        f"{torch_ok[1] if torch_ok[0] else 'reference unavailable (' + torch_ok[1] + ')'}",
        flush=True)
  started = time.time()
  load_start = os.getloadavg()
  rows = []
  with tempfile.TemporaryDirectory(prefix="ddjax_bench_") as root_dir:
    for case in cases:
      t0 = time.time()
      row = run_benchmark(case, _SIZE.value, _REPEATS.value, _WARMUP.value, _TORCH_PYTHON.value,
                          torch_ok, threads, _TIMEOUT.value, root_dir)
      rows.append(row)
      print(f"{case}: done in {time.time() - t0:.0f} s; load {os.getloadavg()[0]:.1f}",
            file=sys.stderr, flush=True)
  print(format_table(rows))
  memory = memory_summary(rows)
  if memory:
    print(f"MTT peak memory, syn_steps {memory['syn_steps'][1]} / {memory['syn_steps'][0]}: "
          f"ddjax {memory['ddjax_peak_ratio']:.2f}x"
          + (f" (XLA temp buffers {memory['ddjax_xla_temp_ratio']:.2f}x)"
             if "ddjax_xla_temp_ratio" in memory else "")
          + (f", reference {memory['reference_peak_ratio']:.2f}x"
             if "reference_peak_ratio" in memory else ""))
  if _OUT.value:
    result = {"size": _SIZE.value, "repeats": _REPEATS.value, "warmup": _WARMUP.value,
              "threads": _THREADS.value,
              "command": shlex.join([sys.executable, "-m", "launch.benchmark"] + sys.argv[1:]),
              "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "torch": torch_ok[1] if torch_ok[0] else None,
              "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
              "wall_s": time.time() - started, "mtt_memory": memory, "results": rows}
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    with open(_OUT.value, "w") as f:
      json.dump(result, f, indent=2)
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
