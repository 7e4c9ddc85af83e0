r"""Every analysis of "What is Dataset Distillation Learning?" in one config.

    python -m launch.analyze --config=configs/analysis/paper.py:dataset=mnist5k \
        --config.distilled=/tmp/ddjax/repro/distill --analysis=all --workdir=/tmp/ddjax/analysis

Arguments: dataset (mnist5k, mnist, fashion_mnist, cifar10, cifar100), size (tiny: tests,
seconds; demo: mnist5k on 2 CPU cores, or fashion_mnist on a class-balanced 400 train /
100 test images per class, configs/common.py; full: mnist5k at the paper's protocols;
paper: the paper's settings, for a GPU). One section per analysis of
`ddjax.analysis.names()`: its module's `default_config()` (the paper's settings), adapted
to the size by `configs/analysis/<name>.py` where that file exists.
`launch/reproduce.py` distils the sets first and then runs this; its docstring gives the
expected results.
"""

import ml_collections

from configs import common
from configs.analysis import common as analysis_common
from ddjax import analysis


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, dataset="mnist5k", size="demo")
  config = analysis_common.base_config(arg.dataset, arg.size)
  if arg.size == "paper":  # the paper's ConvNet (width 128) for training and analysis
    config.model_kwargs.width = 128
    config.real_model.model_kwargs.width = 128
    config.protocol_a.num_seeds = 5
  for name in analysis.names():
    analysis_common.add_section(config, name)
  return config
