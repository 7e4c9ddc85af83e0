"""What every binary does before and around its library call."""

from __future__ import annotations

import os
import sys

from absl import logging


def setup() -> None:
  """Quietens TensorFlow's C++ logs (TFDS only) and logs the JAX devices."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import jax  # pylint: disable=g-import-not-at-top
  logging.info("JAX %s, devices: %s", jax.__version__, jax.devices())


def run_reporting_errors(fn, *args, **kwargs):
  """Runs fn; a user-facing error (bad data, config, checkpoint) exits with its message
  instead of a stack trace."""
  from ddjax import checkpoint, classifier, data, distill  # pylint: disable=g-import-not-at-top
  user_errors = (data.DatasetError, checkpoint.CheckpointError, classifier.TrainingDiverged,
                 distill.DistillationDiverged, distill.DistilledSetError)
  try:
    return fn(*args, **kwargs)
  except user_errors as e:
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(f"error: {type(e).__name__}: {e}")
