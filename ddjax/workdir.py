"""The workdir is the unit of an experiment: config, metrics, checkpoints, figures.

A resumable job (`launch/train.py`, `launch/distill.py`) owns its workdir through
`open_workdir`, which guarantees three things:

* **One config.** Once a workdir holds a saved run (checkpoints, metrics or results),
  it belongs to that run's resolved config. A re-run whose config differs in a field
  that changes the computation is refused (`WorkdirConfigMismatch`, naming the fields
  with their old and new values) before anything is written. Fields that do not
  (`ALWAYS_RESUMABLE`: progress, logging and checkpoint cadence, the data directory;
  plus what the job declares, e.g. an iteration cap) may change: config.json then takes
  the new values and the old text is appended to config_history.jsonl.
  `overwrite=True` moves the old run to `previous/<n>/` (never deleting it) and starts
  over. A config.json without any saved output, left by a run that failed before
  computing anything, does not bind the workdir.
* **One process.** `.lock` (an flock'ed file holding the holder's pid, host and start
  time) is held for the life of the job. A second process fails at once
  (`WorkdirLocked`, naming the holder); a lock left behind by a process that died
  (kill -9, a crash) is taken over with a logged warning.
* **One writer.** In a multi-process run only process 0 locks the workdir and writes
  config, metrics and JSON reports (`is_primary`); orbax coordinates the checkpoints.

The order: validate the config, enter `open_workdir` (the lock and the read-only config
check), load and validate the data, then `run.start()` (the old run moved aside if
asked, the config recorded), then restore and run. A run that fails before `start`
leaves the workdir as it was.

Jobs that recompute their outputs from the config on every run (analyses, curvature,
the reproduction's top level) call `prepare_workdir`, which records the config with
the same history but does not refuse a change.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from typing import Any, Iterable

import numpy as np

from ddjax import errors

CONFIG_FILE = "config.json"
CONFIG_HISTORY_FILE = "config_history.jsonl"
LOCK_FILE = ".lock"
PREVIOUS_DIR = "previous"

# Fields that never change what a job computes; every job may change them on a re-run.
ALWAYS_RESUMABLE = ("progress", "log_every", "checkpoint_every", "keep_checkpoints", "data_dir")
_ABSENT = "(absent)"


def is_primary() -> bool:
  """True in a single-process run and in process 0 of a multi-process run."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


# ----------------------------------------------------------------------------- config identity


def config_to_dict(config: Any) -> dict:
  """The config as plain JSON data (what config.json holds)."""
  if hasattr(config, "to_json_best_effort"):
    return json.loads(config.to_json_best_effort())
  return json.loads(json.dumps(config, default=str))


def _config_text(config: Any) -> str:
  return (config.to_json_best_effort(indent=2) if hasattr(config, "to_json_best_effort")
          else json.dumps(config, indent=2, default=str)) + "\n"


def flatten_config(tree: Any, prefix: str = "") -> dict[str, Any]:
  """{dotted.path: leaf value} of nested dicts; an empty dict is a leaf."""
  if isinstance(tree, dict) and tree:
    out = {}
    for key, value in tree.items():
      out.update(flatten_config(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def _ignored(path: str, ignore: Iterable[str]) -> bool:
  return any(path == name or path.startswith(name + ".") for name in ignore)


def config_differences(saved: dict, current: dict, ignore: Iterable[str] = ()
                       ) -> list[tuple[str, Any, Any]]:
  """The fields whose values differ, as (dotted path, saved value, current value).

  Args:
    saved: the config a workdir holds (plain dict, as read from config.json).
    current: the config of this run (plain dict).
    ignore: field names or section prefixes ("eval" covers "eval.every") to skip.

  Returns:
    Sorted by path; a field present on one side only has the value "(absent)" on the other.
  """
  old, new = flatten_config(saved), flatten_config(current)
  ignore = tuple(ignore)
  return [(path, old.get(path, _ABSENT), new.get(path, _ABSENT))
          for path in sorted(set(old) | set(new))
          if not _ignored(path, ignore) and old.get(path, _ABSENT) != new.get(path, _ABSENT)]


def _short(value: Any, limit: int = 40) -> str:
  text = repr(value) if value != _ABSENT else value
  return text if len(text) <= limit else text[:limit - 3] + "..."


def format_differences(diffs: list[tuple[str, Any, Any]], limit: int = 6) -> str:
  """'a.b: 1 -> 2; c: 'x' -> 'y' (and 3 more)'."""
  text = "; ".join(f"{p}: {_short(a)} -> {_short(b)}" for p, a, b in diffs[:limit])
  return text + (f" (and {len(diffs) - limit} more)" if len(diffs) > limit else "")


def read_config(workdir: str) -> dict | None:
  """The workdir's config.json as a dict, or None when it has none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise errors.WorkdirError(
        f"{path} is unreadable ({e}); the workdir's config cannot be checked. Use a new "
        "--workdir, or --overwrite to move this run aside and start over.") from e
  if not isinstance(saved, dict):
    raise errors.WorkdirError(f"{path} does not hold a config (a JSON object); use a new "
                              "--workdir, or --overwrite to move this run aside.")
  return saved


def check_config(workdir: str, config: Any, ignore: Iterable[str] = (),
                 overwrite: bool = False) -> list[tuple[str, Any, Any]]:
  """Refuses to run `config` in a workdir that holds a saved run of a different computation.

  Read-only. A config.json without any saved output (checkpoints, metrics, results),
  left by a run that failed before computing anything, does not bind the workdir.

  Args:
    workdir: the job's workdir (it may not exist yet).
    config: this run's resolved config.
    ignore: fields (besides ALWAYS_RESUMABLE) that do not change the computation.
    overwrite: the run will move the old one aside, so nothing is checked.

  Returns:
    The differences that are allowed (empty when the configs are identical).

  Raises:
    WorkdirConfigMismatch: a field outside `ignore` differs.
  """
  saved = None if overwrite else read_config(workdir)
  if saved is None:
    return []
  current = config_to_dict(config)
  ignore = tuple(ALWAYS_RESUMABLE) + tuple(ignore)
  diffs = config_differences(saved, current, ignore)
  if diffs and not has_saved_run(workdir):
    # Nothing was computed under the old config (a run that failed early): its config
    # is replaced, and kept in config_history.jsonl by record_config.
    return config_differences(saved, current)
  if diffs:
    raise errors.WorkdirConfigMismatch(
        f"{workdir} holds a run of another config ({len(diffs)} field"
        f"{'s differ' if len(diffs) > 1 else ' differs'}, saved -> now: "
        f"{format_differences(diffs)}). "
        f"Re-run with the config in {os.path.join(workdir, CONFIG_FILE)}, use a new --workdir, "
        f"or pass --overwrite to move the old run to {os.path.join(workdir, PREVIOUS_DIR)}/ "
        "and start over.")
  return config_differences(saved, current)  # all allowed by now


def record_config(workdir: str, config: Any) -> str:
  """Writes config.json; a different one already there goes to config_history.jsonl first.

  Returns:
    The path of config.json.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  text = _config_text(config)
  if not is_primary():
    return path
  os.makedirs(workdir, exist_ok=True)
  if os.path.exists(path):
    with open(path) as f:
      old = f.read()
    if old == text:
      return path
    try:
      old_config = json.loads(old)
    except ValueError:
      old_config = old  # kept verbatim
    with open(os.path.join(workdir, CONFIG_HISTORY_FILE), "a") as f:
      f.write(json.dumps({"replaced_at": _now(), "config": old_config}) + "\n")
  write_text(path, text)
  return path


def prepare_workdir(workdir: str, config: Any) -> str:
  """Creates `workdir` and records the resolved config there (config.json).

  For jobs whose outputs are recomputed from the config on every run. A different
  config.json already there goes to config_history.jsonl, so nothing saved is lost.
  Resumable jobs use `open_workdir` instead.
  """
  if is_primary():
    os.makedirs(workdir, exist_ok=True)
  record_config(workdir, config)
  return workdir


# What a run saves: once any of these exists, the workdir belongs to its config.
SAVED_OUTPUTS = ("checkpoints", "metrics.jsonl", "results.json")


def has_saved_run(workdir: str) -> bool:
  """True when `workdir` holds something a run computed (checkpoints, metrics, results)."""
  for name in SAVED_OUTPUTS:
    path = os.path.join(workdir, name)
    if os.path.isfile(path) or (os.path.isdir(path) and os.listdir(path)):
      return True
  return False


def move_aside(workdir: str) -> str | None:
  """Moves everything in `workdir` except previous/ and .lock to previous/<n>/.

  Returns:
    The new directory, or None when there was nothing to move.
  """
  keep = {PREVIOUS_DIR, LOCK_FILE}
  names = sorted(n for n in os.listdir(workdir) if n not in keep) if os.path.isdir(workdir) else []
  if not names:
    return None
  root = os.path.join(workdir, PREVIOUS_DIR)
  os.makedirs(root, exist_ok=True)
  n = 1
  while os.path.exists(os.path.join(root, str(n))):
    n += 1
  target = os.path.join(root, str(n))
  os.makedirs(target)
  for name in names:
    shutil.move(os.path.join(workdir, name), os.path.join(target, name))
  return target


class Run:
  """A resumable job's hold on its workdir; see `open_workdir`."""

  def __init__(self, workdir: str, config: Any, ignore: Iterable[str], overwrite: bool):
    self.workdir = workdir
    self.config = config
    self.ignore = tuple(ignore)
    self.overwrite = overwrite
    self.primary = is_primary()
    self.started = False
    self._lock = locked(workdir)

  def __enter__(self) -> "Run":
    self._lock.__enter__()
    if not self.primary:  # process 0 checks, locks and writes for the whole run
      return self
    try:
      check_config(self.workdir, self.config, self.ignore, overwrite=self.overwrite)
    except BaseException:
      self.__exit__(None, None, None)
      raise
    return self

  def start(self) -> None:
    """Call once the config and data are validated, before the first checkpoint restore:
    moves an old run aside (overwrite) and records the config."""
    if self.started:
      return
    self.started = True
    if not self.primary:
      return
    if self.overwrite and (has_saved_run(self.workdir)
                           or os.path.exists(os.path.join(self.workdir, CONFIG_FILE))):
      moved = move_aside(self.workdir)
      logging.warning("--overwrite: moved the previous run in %s to %s (nothing deleted).",
                      self.workdir, moved)
    ignored = check_config(self.workdir, self.config, self.ignore)
    if ignored:
      logging.info("Resuming %s with changed fields that do not change the computation: %s",
                   self.workdir, format_differences(ignored))
    record_config(self.workdir, self.config)

  def __exit__(self, *exc) -> None:
    self._lock.__exit__(*exc)


@contextlib.contextmanager
def locked(workdir: str):
  """Holds `workdir`'s lock (process 0 only) for the block; see `WorkdirLock`.

  A directory the block created and left empty is removed on exit, so a job that fails
  before writing anything leaves no trace.
  """
  if not is_primary():
    yield
    return
  created = not os.path.isdir(workdir)
  try:
    with WorkdirLock(workdir):
      yield
  finally:
    if created:
      with contextlib.suppress(OSError):
        os.rmdir(workdir)


def open_workdir(workdir: str, config: Any, *, ignore: Iterable[str] = (),
                 overwrite: bool = False) -> Run:
  """Locks `workdir` for a resumable job and checks that it may run `config` there.

  Use as `with open_workdir(...) as run:`; entering takes the lock and checks the
  config (read-only), and `run.start()`, called once the config and data have been
  validated, moves an old run aside (`overwrite`) and records the config. Until then
  the only file written is the lock, removed on exit (with the directory, if the run
  created it and left it empty).

  Args:
    workdir: the job's workdir (created if missing).
    config: this run's resolved config.
    ignore: fields (besides ALWAYS_RESUMABLE) that do not change the computation.
    overwrite: move an existing run to previous/<n>/ (at `start`) and start over.

  Returns:
    A context manager holding the lock until its block exits.

  Raises:
    WorkdirLocked: another live process holds the workdir.
    WorkdirConfigMismatch: the workdir holds a saved run of another config (and not
      `overwrite`).
  """
  return Run(workdir, config, ignore, overwrite)


# ----------------------------------------------------------------------------- the lock


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  return True


def _read_holder(fd: int) -> dict | None:
  os.lseek(fd, 0, os.SEEK_SET)
  raw = b""
  while chunk := os.read(fd, 4096):
    raw += chunk
  if not raw.strip():
    return None
  try:
    holder = json.loads(raw)
  except ValueError:
    return {"pid": "?", "host": "?", "started": "?"}
  return holder if isinstance(holder, dict) else {"pid": "?", "host": "?", "started": "?"}


class WorkdirLock:
  """An exclusive, process-lifetime lock on a workdir (`workdir/.lock`).

  The lock is an flock on the file, so the kernel releases it when its process dies;
  the file's JSON ({pid, host, started}) names the holder in the error a second
  process gets. A file left behind with its flock free was left by a process that
  died: on the same host it is taken over with a warning. One naming another host is
  refused, because flock does not reach across hosts on every network filesystem.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None

  def acquire(self) -> "WorkdirLock":
    os.makedirs(self.workdir, exist_ok=True)
    host = socket.gethostname()
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
          os.close(fd)
          raise
        holder = _read_holder(fd) or {}
        os.close(fd)
        raise errors.WorkdirLocked(
            f"{self.workdir} is in use by pid {holder.get('pid', '?')} on host "
            f"{holder.get('host', '?')} (since {holder.get('started', '?')}); wait for it to "
            "finish or use another --workdir.") from None
      # The holder may have released (unlinked) the file between our open and flock.
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    left = _read_holder(fd)
    if left is not None:
      if left.get("host") != host:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise errors.WorkdirLocked(
            f"{self.workdir} is locked by pid {left.get('pid', '?')} on host "
            f"{left.get('host', '?')} (since {left.get('started', '?')}), which cannot be "
            f"checked from host {host}; if that job is no longer running, delete {self.path} "
            "and re-run.")
      pid = left.get("pid")
      state = ("is no longer running" if isinstance(pid, int) and not _pid_alive(pid)
               else "no longer holds it")
      logging.warning("Took over the lock on %s left by pid %s on %s (since %s), which %s.",
                      self.workdir, pid, host, left.get("started", "?"), state)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": host, "started": _now()}).encode())
    os.fsync(fd)
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
        os.unlink(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)  # releases the flock
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


# ----------------------------------------------------------------------------- metrics, JSON


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
  """Appends one JSON object per line to `workdir/metrics.jsonl` (process 0 only)."""

  def __init__(self, workdir: str, filename: str = "metrics.jsonl"):
    self.enabled = is_primary()
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, filename)

  def write(self, step: int, **metrics: Any) -> None:
    if not self.enabled:
      return
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


def write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically (a temp file, then rename): a reader or a crash
  sees the old file or the new one, never a part."""
  tmp = f"{path}.tmp{os.getpid()}"  # per process: concurrent writers never share it
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def write_json(path: str, obj: Any) -> None:
  """Writes `obj` as JSON atomically (a temp file, then rename); process 0 only."""
  if not is_primary():
    return
  write_text(path, json.dumps(_to_python(obj), indent=2))
