r"""The random-real baseline: `ipc` random real images per class, evaluated like a distilled set.

    python -m launch.distill --config=configs/distill/random.py:dataset=mnist5k,ipc=10 \
        --workdir=/tmp/ddjax/random_mnist5k_ipc10

Arguments as configs/distill/dc.py (dataset, ipc, quick, cpu). No iterations: the run draws
the subset (the same one a real-initialised method starts from with the same seed),
evaluates it with the same protocols as the method configs for that dataset (mnist5k:
ConvNet width 32, protocol A over 5 seeds), and writes it as distilled.npz, so analyses
can use it as the "random subset" reference. Measured on mnist5k IPC 10: protocol A
0.877 +- 0.010 (5 seeds, ConvNet width 32). Reported random baselines (DC-Bench,
CIFAR-10 IPC 1/10/50, best/avg): 15.4/14.7, 31.0/28.0, 50.6/47.6.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.distill import common as distill_common
from configs.distill import dc


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, dataset="mnist5k", ipc=10, quick=False, cpu=False)
  config = distill_common.base_config("random", arg.dataset, arg.ipc)
  config.init = "real"
  config.num_iterations = 0
  config.eval.model_kwargs = ml_collections.ConfigDict(dict(config.model_kwargs))
  if common.cpu_sized(arg.dataset, arg.cpu):
    config.train_per_class, config.eval.test_per_class = common.cpu_subset(arg.dataset)
    config.model_kwargs.width = 32
    config.eval.model_kwargs.width = 32
    config.eval.dc_protocol = False
  if arg.quick:
    dc.quick(config)
    config.num_iterations = 0
  return config
