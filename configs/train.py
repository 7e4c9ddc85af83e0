r"""Train a classifier on real data (protocol B by default), then report test accuracy.

    python -m launch.train --config=configs/train.py --workdir=/tmp/ddjax/train

Default: ConvNet (width 128, instance norm) on mnist5k (4,000 train / 1,000 test),
SGD lr 0.01 momentum 0.9, batch 256, 10 epochs: expect test accuracy ~0.97 in about
3 minutes on 2 CPU cores (BUILD_NOTES.md has the measured run).

Arguments (`--config=configs/train.py:model=resnet18,dataset=cifar10`):
  model, dataset, epochs, quick (a tiny run for tests: 20 images/class, width 8, 2 epochs).
Any field can also be overridden, e.g. `--config.learning_rate=0.05`,
`--config.model_kwargs.width=64`, `--config.data_dir=~/tensorflow_datasets`.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, model="convnet", dataset="mnist5k", epochs=10, quick=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = arg.dataset
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.preprocess = "standardize"     # standardize | zca_kornia | zca_reg | none
  config.train_per_class = 0            # 0 = the whole train split
  config.test_per_class = 0

  config.model = arg.model
  config.model_kwargs = common.model_kwargs(arg.model)

  config.optimizer = "sgd"              # protocol B: SGD(0.01, momentum 0.9), batch 256
  config.learning_rate = 0.01
  config.momentum = 0.9
  config.weight_decay = 0.0
  config.schedule = "constant"          # constant | cosine | midpoint
  config.batch_size = 256
  config.num_epochs = arg.epochs

  config.eval_batch_size = 1000
  config.eval_every_epochs = 1
  config.checkpoint_every_epochs = 1
  config.keep_checkpoints = 2
  config.progress = True

  if arg.quick:
    config.train_per_class = 20
    config.test_per_class = 10
    config.num_epochs = 2
    config.batch_size = 64
    if arg.model.startswith("convnet"):
      config.model_kwargs.width = 8
  return config
