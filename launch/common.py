"""What every binary does before and around its library call."""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys

from absl import flags, logging

# Every binary imports this module, so every binary has the flag; `setup()` acts on it.
MULTIHOST = flags.DEFINE_bool(
    "multihost", False,
    "Multi-process run (TPU pod slices, multi-node GPU): call jax.distributed.initialize() "
    "before anything else; the coordinator, process count and id come from the environment "
    "(TPU metadata, SLURM, Open MPI, or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
    "JAX_PROCESS_ID). Only process 0 writes config, metrics and reports.")
COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", os.path.join("~", ".cache", "ddjax", "jax"),
    "JAX's persistent compilation cache, so that a resumed or chunked run (a workdir "
    "continued, the published table's short chunks) loads what an earlier process compiled "
    "instead of compiling it again; entries go to a subdirectory per jax version and "
    "backend. '' turns it off. JAX_COMPILATION_CACHE_DIR, when in the environment, decides "
    "instead (empty: off).")


def define_workdir_flags():
  """--restore and --overwrite, for the binaries that resume from a workdir.

  Returns:
    (restore flag holder, overwrite flag holder).
  """
  restore = flags.DEFINE_enum(
      "restore", "latest", ["latest", "previous"],
      "Which checkpoint a re-run resumes from: 'latest' (a corrupt one stops the run with "
      "an error), or 'previous': the newest that passes verification (newer corrupt ones "
      "are moved to checkpoints.corrupt/, never deleted).")
  overwrite = flags.DEFINE_bool(
      "overwrite", False,
      "If the workdir holds a run of another config, move it to <workdir>/previous/<n>/ "
      "and start over (without this flag such a workdir is refused). Nothing is deleted.")
  return restore, overwrite


def setup() -> None:
  """Joins the multi-process run if --multihost, quietens TensorFlow's C++ logs (TFDS
  only), turns on the compilation cache (--compilation_cache_dir) and logs the JAX
  devices. Call it first in main(), before any JAX computation."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if MULTIHOST.value:
    from ddjax import parallel  # pylint: disable=g-import-not-at-top
    parallel.initialize_multihost()
  import jax  # pylint: disable=g-import-not-at-top
  cache = enable_compilation_cache(COMPILATION_CACHE_DIR.value)
  logging.info("JAX %s, process %d of %d, devices: %s; compilation cache: %s", jax.__version__,
               jax.process_index(), jax.process_count(), jax.devices(), cache or "off")


def enable_compilation_cache(root: str) -> str | None:
  """Points JAX's persistent compilation cache at `root`/jax<version>-<backend>.

  The subdirectory keeps apart what two stacks (the default and the legacy venv) or two
  backends compiled. JAX only stores programs that took at least
  `jax_persistent_cache_min_compile_time_secs` (1 s by default) to compile, and an
  entry another CPU compiled with features this one lacks is rejected by XLA's loader
  and compiled again.

  Args:
    root: the cache's root directory ('~' expanded); '' turns the cache off.

  Returns:
    The directory in use, None when off. The JAX_COMPILATION_CACHE_DIR environment
    variable, when present, decides instead of `root` (empty: off), as does a directory
    already set through jax.config.
  """
  import jax  # pylint: disable=g-import-not-at-top
  if jax.config.jax_compilation_cache_dir or "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return jax.config.jax_compilation_cache_dir or None
  if not root:
    return None
  path = os.path.join(os.path.expanduser(root), f"jax{jax.__version__}-{jax.default_backend()}")
  jax.config.update("jax_compilation_cache_dir", path)
  return path


def run_reporting_errors(fn, *args, **kwargs):
  """Runs fn; a `ddjax.errors.DdjaxError` (bad data, config, checkpoint, workdir) exits
  with `error: <ClassName>: <message>` instead of a stack trace (the trace is logged at
  --verbosity=1). Every other exception is a bug and keeps its stack trace."""
  from ddjax import errors  # pylint: disable=g-import-not-at-top
  try:
    return fn(*args, **kwargs)
  except errors.DdjaxError as e:
    logging.debug("traceback of the reported error (--verbosity=1 shows it)", exc_info=True)
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(f"error: {type(e).__name__}: {e}")


# ----------------------------------------------------------------------------- flag parsing


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parser, with one-line errors for a bad config on the command line.

  Pass it to `app.run(main, flags_parser=common.parse_flags)`. A config override that
  names no field (`--config.learnin_rate=0.1`) exits with one line naming the field and
  the closest existing one; an error the config file raises as a `DdjaxError` (a bad
  `path.py:key=value` argument) exits with its message. Any other flag error is
  reported as absl does.

  Args:
    argv: the command line, program name first.

  Returns:
    The arguments left after the flags (absl's contract).
  """
  from ddjax import errors  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    cause = _ddjax_cause(e)
    if cause is not None:
      sys.exit(f"error: {type(cause).__name__}: {cause}")
    message = str(e)
    sys.stderr.write(f"FATAL Flags parsing error: {message}\n"
                     "Pass --helpshort or --helpfull to see help on flags.\n")
    sys.exit(1)
  except (AttributeError, KeyError) as e:
    bad = _unknown_override(argv)
    if bad is None:
      raise  # not a typo on the command line: a bug in a config file keeps its trace
    sys.exit(f"error: {errors.ConfigError.__name__}: {bad}")


def _ddjax_cause(error: BaseException):
  """The DdjaxError among the exceptions `error` was raised from, innermost first."""
  from ddjax import errors  # pylint: disable=g-import-not-at-top
  found, seen = None, set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, errors.DdjaxError) and "Traceback" not in str(error):
      found = error
    error = error.__cause__ or error.__context__
  return found


_OVERRIDE = re.compile(r"^--(?:no)?config\.([^=\s]+)")


def _unknown_override(argv: list[str], flag: str = "config") -> str | None:
  """A one-line message for the first `--config.<path>` in argv that names no field.

  The config is rebuilt from `--config=<file>[:<arg>]` to look the paths up; None when
  every path exists or the config cannot be rebuilt.
  """
  spec = next((a.split("=", 1)[1] for a in argv if a.startswith(f"--{flag}=")), None)
  if spec is None:
    return None
  path, _, arg = spec.partition(":")
  try:
    module_spec = importlib.util.spec_from_file_location("_ddjax_config_check", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
  except Exception:  # pylint: disable=broad-except
    return None
  for item in argv[1:]:
    match = _OVERRIDE.match(item)
    if not match:
      continue
    node, walked = config, []
    for key in match.group(1).split("."):
      keys = list(node.keys()) if hasattr(node, "keys") else None
      if keys is None:
        return (f"--{flag}.{match.group(1)}: config.{'.'.join(walked)} is a "
                f"{type(node).__name__}, not a group of fields.")
      if key not in keys:
        where = f"config.{'.'.join(walked)}" if walked else "the config"
        close = difflib.get_close_matches(key, [str(k) for k in keys], n=1)
        hint = f"; did you mean {'.'.join(walked + close)!r}?" if close else (
            f"; it has {sorted(str(k) for k in keys)}.")
        return f"--{flag}.{match.group(1)}: {where} has no field {key!r}{hint}"
      node = node[key]
      walked.append(key)
  return None
