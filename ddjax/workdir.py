"""The workdir is the unit of an experiment: config, metrics, checkpoints, figures."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np


def prepare_workdir(workdir: str, config: Any) -> str:
  """Creates `workdir` and writes the resolved config there (config.json).

  A different config.json already there (a re-run with changed flags) is kept as
  config.<n>.json rather than overwritten, so nothing already saved is lost.
  """
  os.makedirs(workdir, exist_ok=True)
  text = (config.to_json_best_effort(indent=2) if hasattr(config, "to_json_best_effort")
          else json.dumps(config, indent=2, default=str)) + "\n"
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return workdir
    n = 1
    while os.path.exists(os.path.join(workdir, f"config.{n}.json")):
      n += 1
    os.replace(path, os.path.join(workdir, f"config.{n}.json"))
  with open(path, "w") as f:
    f.write(text)
  return workdir


def _to_python(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _to_python(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_to_python(v) for v in value]
  arr = np.asarray(value)
  if arr.ndim == 0:
    item = arr.item()
    return item if not isinstance(item, float) or np.isfinite(item) else str(item)
  if arr.dtype.kind == "f" and not np.isfinite(arr).all():
    return [_to_python(v) for v in arr]  # "nan" / "inf" strings, never bare NaN in JSON
  return arr.tolist()


class MetricWriter:
  """Appends one JSON object per line to `workdir/metrics.jsonl`."""

  def __init__(self, workdir: str, filename: str = "metrics.jsonl"):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, filename)

  def write(self, step: int, **metrics: Any) -> None:
    record = {"step": int(step), "time": time.time(), **_to_python(metrics)}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")

  def read(self) -> list[dict]:
    return read_metrics(self.path)


def read_metrics(path: str) -> list[dict]:
  if os.path.isdir(path):
    path = os.path.join(path, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_json(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_to_python(obj), f, indent=2)
  os.replace(tmp, path)
