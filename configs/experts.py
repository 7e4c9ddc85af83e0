r"""Expert trajectories for MTT (the reference's `buffer.py`).

    python -m launch.train_experts --config=configs/experts.py:dataset=mnist5k \
        --workdir=workdirs/experts/mnist5k_standardize

The default --workdir is `workdirs/experts/<dataset>_<preprocess>`, which is where
configs/distill/mtt.py looks (`config.mtt.buffer_dir` overrides it).

Arguments (`--config=configs/experts.py:dataset=cifar10,zca`): dataset (mnist5k, mnist,
cifar10, cifar100, or any dataset name), zca (MTT's kornia ZCA instead of mean/std),
quick (a tiny run for tests), cpu (fashion_mnist at the mnist5k settings below, on a
class-balanced 400 train / 100 test images per class; configs/common.py). Override
anything, e.g. `--config.num_experts=20`.

Reference (`mtt-distillation/buffer.py`, README): 100 ConvNet-3 experts, 50 epochs each,
SGD lr 0.01 (`lr_teacher`), momentum 0, batch 256, DSA on
(`color_crop_cutout_flip_scale_rotate`, per-sample, `align_corners=True`), no lr decay,
parameters saved at init and after every epoch, and no weight decay (`buffer.py`'s
`--l2` default is 0; set `--config.weight_decay=5e-4` for DC's training setting).

Choices made here:
* Digits drop flip from the DSA strategy (the DC README's advice for MNIST/SVHN).
* mnist5k (CPU-sized): ConvNet width 32 (as every mnist5k distillation config), 20
  experts x 15 epochs (MTT samples start epochs up to 8 and targets 2 epochs later), no
  DSA, 10 vmapped together. Expected on 2 CPU cores: ~5 minutes; final expert test
  accuracy ~0.97 (BUILD_NOTES.md has the measured run).
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.distill import dc


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, dataset="mnist5k", zca=False, quick=False, cpu=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.dataset = arg.dataset
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.preprocess = "zca_kornia" if arg.zca else "standardize"
  config.train_per_class = 0            # 0 = the whole train split
  config.test_per_class = 0             # test accuracy per epoch is recorded

  config.model = "convnet"
  config.model_kwargs = common.model_kwargs("convnet")

  config.num_experts = 100
  config.num_epochs = 50
  config.learning_rate = 0.01           # MTT's lr_teacher for the experts
  config.momentum = 0.0
  config.weight_decay = 0.0           # buffer.py's --l2 default
  config.batch_size = 256
  config.dsa_strategy = dc.dsa_strategy(arg.dataset)  # 'none' disables augmentation
  config.align_corners = True           # MTT's DiffAugment passes align_corners=True
  config.experts_per_batch = 10         # experts trained together under jax.vmap
  config.eval_batch_size = 1000
  config.progress = True

  if common.cpu_sized(arg.dataset, arg.cpu):
    config.train_per_class, config.test_per_class = common.cpu_subset(arg.dataset)
    config.model_kwargs.width = 32
    config.num_experts = 20
    config.num_epochs = 15
    config.dsa_strategy = "none"
    config.experts_per_batch = 10
  if arg.quick:
    config.train_per_class = 16
    config.test_per_class = 8
    config.model_kwargs.width = 4
    config.num_experts = 3
    config.num_epochs = 2
    config.batch_size = 32
    config.experts_per_batch = 2
    config.dsa_strategy = "none"
  return config
