r"""DM: distribution matching (Zhao & Bilen, WACV 2023), published hyperparameters.

    python -m launch.distill --config=configs/distill/dm.py:dataset=mnist5k,ipc=10 \
        --workdir=/tmp/ddjax/dm_mnist5k_ipc10

Arguments as configs/distill/dc.py (dataset, ipc, quick, cpu).

Reference (DatasetCondensation `main_DM.py`): ConvNet-3, 20,000 iterations, each with a
fresh randomly initialised and frozen network; per class, ||mean embed(real) - mean
embed(syn)||^2 with Siamese DSA `color_crop_cutout_flip_scale_rotate`; real init;
SGD(lr_img 1, momentum 0.5) on the images (lr_img 10 for IPC >= 100); batch_real 256;
no ZCA; evaluation: DC protocol, 1000 epochs with DSA. Reported: CIFAR-10 26.0 / 48.9
/ 63.0, CIFAR-100 11.4 / 29.7 / 43.6 at IPC 1 / 10 / 50 (as quoted in later papers'
comparison tables); no MNIST numbers found.

Choices made here:
* Digits (MNIST, SVHN) drop flip, as the DC README advises for DSA; DM's README gives no
  MNIST guidance.
* CIFAR-100 maps the classes in chunks of 10 (`class_batch`) to bound memory.
* mnist5k (CPU-sized): ConvNet width 32 for distillation and evaluation, batch_real
  64, 300 iterations (the published lr_img 1.0), protocol A only over 5 seeds.
  Measured on mnist5k IPC 10 (2 CPU cores shared with other jobs, load ~6): protocol A
  0.933 +- 0.005 vs 0.877 +- 0.010 for the random real subset it starts from
  (configs/distill/random.py); 327 s of distillation (699 s at load ~11).
* `converged` (the shipped sets, ddjax/distill/pretrained.py): the published lr_img 1.0,
  batch_real 64 per class (256 published: 4x the cost per iteration), evaluated every 250
  iterations, stopped at the plateau (less than
  0.5 points gained over the last quarter of the iterations) or at the cap of 6,000
  iterations. BUILD_NOTES.md and the shipped manifest give the curve.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.distill import common as distill_common
from configs.distill import dc


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, dataset="mnist5k", ipc=10, quick=False, converged=False,
                         cpu=False)
  config = distill_common.base_config("dm", arg.dataset, arg.ipc)
  config.init = "real"
  config.num_iterations = 20000
  config.eval.every = 2000                     # the reference evaluates every 2000 iterations
  config.eval.dc_epochs = 1000
  config.eval.model_kwargs = ml_collections.ConfigDict(dict(config.model_kwargs))

  hp = ml_collections.ConfigDict()
  hp.lr_img = 10.0 if arg.ipc >= 100 else 1.0
  hp.momentum_img = 0.5
  hp.lr_net = 0.01                             # only recorded (state.lr); DM trains no network
  hp.batch_real = 256
  hp.dsa_strategy = dc.dsa_strategy(arg.dataset)
  hp.align_corners = False
  hp.class_batch = 10 if arg.dataset == "cifar100" else 0
  config.dm = hp
  config.eval.dc_augment = hp.dsa_strategy

  if common.cpu_sized(arg.dataset, arg.cpu):
    config.train_per_class, config.eval.test_per_class = common.cpu_subset(arg.dataset)
    config.model_kwargs.width = 32
    config.eval.model_kwargs.width = 32
    hp.batch_real = 64
    config.num_iterations = 300
    config.log_every = 25
    config.checkpoint_every = 100
    config.eval.every = 0
    config.eval.dc_protocol = False
    if arg.converged:
      # batch_real stays 64 per class (published 256): at 256 an iteration took 5.5 s on
      # the 2 loaded cores (width 32), too slow for thousands of iterations.
      distill_common.converge(config, cap=6000, every=250)
  elif arg.converged:
    distill_common.converge(config, cap=config.num_iterations, every=config.eval.every)
  if arg.quick:
    dc.quick(config)
    hp.batch_real = 8
    config.eval.dc_protocol = True
  return config
