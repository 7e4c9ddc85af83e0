"""What every binary does before and around its library call."""

from __future__ import annotations

import os
import sys

from absl import flags, logging

# Every binary imports this module, so every binary has the flag; `setup()` acts on it.
MULTIHOST = flags.DEFINE_bool(
    "multihost", False,
    "Multi-process run (TPU pod slices, multi-node GPU): call jax.distributed.initialize() "
    "before anything else; the coordinator, process count and id come from the environment "
    "(TPU metadata, SLURM, Open MPI, or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and "
    "JAX_PROCESS_ID).")


def setup() -> None:
  """Joins the multi-process run if --multihost, quietens TensorFlow's C++ logs (TFDS
  only) and logs the JAX devices. Call it first in main(), before any JAX computation."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if MULTIHOST.value:
    from ddjax import parallel  # pylint: disable=g-import-not-at-top
    parallel.initialize_multihost()
  import jax  # pylint: disable=g-import-not-at-top
  logging.info("JAX %s, process %d of %d, devices: %s", jax.__version__, jax.process_index(),
               jax.process_count(), jax.devices())


def run_reporting_errors(fn, *args, **kwargs):
  """Runs fn; a user-facing error (bad data, config, checkpoint) exits with its message
  instead of a stack trace."""
  from ddjax import checkpoint, classifier, data, distill  # pylint: disable=g-import-not-at-top
  user_errors = (data.DatasetError, checkpoint.CheckpointError, classifier.TrainingDiverged,
                 distill.DistillationDiverged, distill.DistilledSetError)
  try:
    return fn(*args, **kwargs)
  except Exception as e:  # pylint: disable=broad-except
    # A ValueError from ddjax's own validation (an unknown model, method or size, a bad
    # config value) names the problem too; a ValueError from inside JAX or a library, and
    # every other exception, is a bug and keeps its stack trace.
    if not isinstance(e, user_errors) and not (isinstance(e, ValueError) and _raised_by_ddjax(e)):
      raise
    logging.debug("traceback of the reported error (--verbosity=1 shows it)", exc_info=True)
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(f"error: {type(e).__name__}: {e}")


_OWN_DIRS = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), d)
                  + os.sep for d in ("ddjax", "configs", "launch"))


def _raised_by_ddjax(error: BaseException) -> bool:
  """True when the innermost frame of the traceback is ddjax's (or a config's) code."""
  tb = error.__traceback__
  if tb is None:
    return False
  while tb.tb_next is not None:
    tb = tb.tb_next
  return os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_OWN_DIRS)
