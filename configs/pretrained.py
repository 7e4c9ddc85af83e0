r"""The shipped distilled sets: which config makes each entry of ddjax's pretrained sets.

    python -m launch.pretrained --config=configs/pretrained.py:dataset=mnist5k,method=mtt,ipc=10

Each entry is its method's `converged` config (configs/distill/<method>.py): distilled
until protocol-A accuracy (ConvNet width 32, 300 full-batch steps, 5 seeds, evaluated
periodically) gains less than 0.5 points over the last quarter of the iterations, or
until the method's cap. `method=random` is the real subset the real-initialised methods
start from (seed 0), evaluated the same way; `method=random_independent` is another draw
(seed 1), the baseline that shares no image with any distilled set's initialisation.
`method=bptt_full` is BPTT with the RTP-style full unroll (`bptt` is the RaT-BPTT window).

Arguments: dataset (mnist5k), method (dc, dsa, dm, mtt, bptt, bptt_full, kip, random,
random_independent), ipc (1, 10). Expected results: the shipped manifest
(ddjax/distill/pretrained_sets/v1/manifest.json) and BUILD_NOTES.md give each entry's
accuracy, plateau evidence and cost; on mnist5k every learned set should beat random real
by at least 3 points at IPC 10 and 15 points at IPC 1.
"""

from __future__ import annotations

import importlib

import ml_collections

from configs import common
from ddjax.errors import ConfigError

# Entry method name -> (config module, extra config argument, method name written in the set).
METHODS = {
    "dc": ("dc", ""), "dsa": ("dsa", ""), "dm": ("dm", ""), "mtt": ("mtt", ""),
    "bptt": ("bptt", ",unroll=rat"), "bptt_full": ("bptt", ",unroll=full"),
    "kip": ("kip", ""), "random": ("random", ""), "random_independent": ("random", ""),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, dataset="mnist5k", method="dm", ipc=10)
  if arg.method not in METHODS:
    raise ConfigError(f"Unknown pretrained method {arg.method!r}; expected one of "
                     f"{sorted(METHODS)}.")
  module, extra = METHODS[arg.method]
  learned = not arg.method.startswith("random")
  spec = f"dataset={arg.dataset},ipc={arg.ipc}{extra}" + (",converged" if learned else "")
  config = importlib.import_module(f"configs.distill.{module}").get_config(spec)
  if arg.method == "random_independent":
    config.seed = 1
  with config.unlocked():
    config.entry = arg.method        # the manifest's method name (bptt_full, random_independent)
  return config
