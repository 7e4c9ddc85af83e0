"""The errors a user can cause and fix: bad config, data, checkpoints or workdirs.

Every such error derives from `DdjaxError`. The binaries (`launch/common.py`) report a
`DdjaxError` as one line, `error: <ClassName>: <message>`, with its traceback only at
`--verbosity=1`; any other exception is a bug in ddjax or a library and keeps its
stack trace. So a message must name the problem and, where there is one, the fix.

The module's own classes (config and workdir problems) are defined here. The others
live beside the code that raises them and also derive from `DdjaxError`:
`ddjax.data.DatasetError`, `ddjax.checkpoint.CheckpointError`,
`ddjax.distill.DistilledSetError`, `ddjax.classifier.TrainingDiverged`,
`ddjax.distill.DistillationDiverged`, `ddjax.experts.ExpertBufferError`.
"""

from __future__ import annotations


class DdjaxError(Exception):
  """Base class of the errors reported to the user in one line."""


class ConfigError(ValueError, DdjaxError):
  """A config value is invalid: an unknown name, a value out of range, a missing section.

  A ValueError too, so callers that caught ValueError keep working.
  """


class WorkdirError(RuntimeError, DdjaxError):
  """The workdir cannot be used for this run."""


class WorkdirLocked(WorkdirError):
  """Another live process holds the workdir's lock."""


class WorkdirConfigMismatch(WorkdirError):
  """The workdir holds a run of another config (a different computation)."""
