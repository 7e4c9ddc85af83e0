r"""Distils one of ddjax's shipped sets to its plateau and installs it with its manifest entry.

    python -m launch.pretrained --config=configs/pretrained.py:dataset=mnist5k,method=dm,ipc=10

Runs the entry's converged config (configs/pretrained.py) in --workdir (default
workdirs/pretrained/<dataset>/<method>_ipc<ipc>; re-running resumes from its
checkpoints), then copies distilled.npz and progress.png into the set directory
(--install_dir, default the package's ddjax/distill/pretrained_sets/v1) and writes the
manifest entry: command, config, commit, iterations, wall and CPU time, protocol-A
accuracy (5 seeds) of the set and of its initialisation, the evaluation history and
plateau test, the mean pixel correlation with the initialisation, shape and sha256.
`--noinstall` only distils.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from launch import common

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/pretrained.py:dataset=...,"
                                          "method=...,ipc=...", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default workdirs/pretrained/"
                               "<dataset>/<method>_ipc<ipc>).")
_INSTALL_DIR = flags.DEFINE_string("install_dir", None, "Set directory to install into (default: "
                                   "the package's shipped version).")
_INSTALL = flags.DEFINE_bool("install", True, "Install the finished set and its manifest entry.")
_RESTORE, _OVERWRITE = common.define_workdir_flags()
flags.mark_flags_as_required(["config"])

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str) -> str:
  try:
    return subprocess.run(["git", *args], cwd=_REPO, capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return ""


def provenance() -> dict:
  """The commit (and whether the code it ran differed from it) and the software stack."""
  import jax  # pylint: disable=g-import-not-at-top
  dirty = _git("status", "--porcelain", "--", "ddjax", "configs", "launch")
  return {"commit": _git("rev-parse", "HEAD") or "unknown", "code_modified": bool(dirty),
          "jax": jax.__version__, "python": platform.python_version(),
          "backend": jax.default_backend(), "cpu_count": os.cpu_count()}


def manifest_record(config, result: dict) -> dict:
  """The manifest fields of a finished run (see ddjax/distill/pretrained.py)."""
  history = result.get("eval_history") or []
  args = f"dataset={result['dataset']},method={config.entry},ipc={result['ipc']}"
  return {
      "command": f"python -m launch.pretrained --config=configs/pretrained.py:{args}",
      "config": config.to_dict(),
      **provenance(),
      "iterations": result["iterations"],
      "stop_reason": result.get("stop_reason"),
      "distill_seconds": round(result["distill_seconds"], 1),
      "eval_seconds": round(result.get("eval_seconds_total", 0.0), 1),
      "wall_seconds": round(result["distill_seconds"] + result.get("eval_seconds_total", 0.0), 1),
      "cpu_seconds": round(result.get("cpu_seconds", 0.0), 1),
      "protocol_a_mean": result["protocol_a_mean"],
      "protocol_a_std": result["protocol_a_std"],
      "protocol_a_all": result.get("protocol_a_all"),
      "init_protocol_a_mean": history[0]["protocol_a_mean"] if history else None,
      "init_protocol_a_std": history[0]["protocol_a_std"] if history else None,
      "init_correlation": result.get("init_correlation"),
      # The best evaluation of the run, so a set that declined after a peak is visible.
      "peak_protocol_a_mean": max((h["protocol_a_mean"] for h in history), default=None),
      "peak_iteration": (max(history, key=lambda h: h["protocol_a_mean"])["iteration"]
                         if history else None),
      "plateau": result.get("plateau"),
      "eval_history": history,
      "learned_lr": result.get("learned_lr"),
      "evaluation": {"model": result["eval_model"], "model_kwargs": result["eval_model_kwargs"],
                     "protocol": "protocol A: full-batch SGD, "
                                 f"{config.eval.protocol_a_steps} steps, lr "
                                 f"{config.eval.protocol_a_lr}, momentum "
                                 f"{config.eval.protocol_a_momentum}, "
                                 f"{config.eval.num_seeds} seeds"},
  }


def main(argv):
  del argv
  common.setup()
  from ddjax.distill import driver, pretrained  # pylint: disable=g-import-not-at-top
  config = _CONFIG.value
  workdir = _WORKDIR.value or os.path.join(
      _REPO, "workdirs", "pretrained", config.dataset, f"{config.entry}_ipc{config.ipc}")
  result = common.run_reporting_errors(driver.run_distillation, config, workdir,
                                       restore=_RESTORE.value, overwrite=_OVERWRITE.value)
  line = (f"{config.entry} {config.dataset} IPC {config.ipc}: protocol A "
          f"{result['protocol_a_mean']:.4f} +- {result['protocol_a_std']:.4f} after "
          f"{result['iterations']} iterations ({result.get('stop_reason')}), mean "
          f"correlation with the initialisation {result.get('init_correlation', float('nan')):.3f}")
  print(line, flush=True)
  if _INSTALL.value:
    figures = {"progress": result["progress"]} if result.get("progress") else {}
    figures["grid"] = result["grid"]
    entry = pretrained.install(result["distilled"], manifest_record(config, result),
                               entry_method=config.entry, directory=_INSTALL_DIR.value,
                               figures=figures)
    logging.info("Installed %s", entry["file"])
    print(f"installed {entry['file']} (sha256 {entry['sha256'][:12]})", file=sys.stdout)


if __name__ == "__main__":
  app.run(main, flags_parser=common.parse_flags)
