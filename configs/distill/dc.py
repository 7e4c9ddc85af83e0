r"""DC: gradient matching (Zhao, Mopuri & Bilen, ICLR 2021), published hyperparameters.

    python -m launch.distill --config=configs/distill/dc.py:dataset=mnist5k,ipc=10 \
        --workdir=/tmp/ddjax/dc_mnist5k_ipc10

Arguments (`--config=configs/distill/dc.py:dataset=cifar10,ipc=50`): dataset (mnist5k,
mnist, fashion_mnist, svhn_cropped, cifar10, cifar100, or any other name with generic
defaults), ipc (1, 10, 50; 20/30/40 also have reference loops), quick (a tiny run for tests),
cpu (fashion_mnist at the mnist5k settings below, on a class-balanced 400 train / 100 test
images per class; configs/common.py; configs/reproduce.py passes it at sizes tiny and demo).
Any field can be overridden, e.g. `--config.dc.lr_img=0.05`.

Reference (DatasetCondensation `main.py`, `utils.py`): ConvNet-3 (width 128, instance
norm), `Iteration` 1000, noise init, lr_img 0.1 with momentum 0.5, lr_net 0.01 (plain
SGD in the current code; an older revision used momentum 0.5), batch_real 256,
batch_train 256, (outer_loop, inner_loop) = (1, 1) / (10, 50) / (50, 10) at IPC 1 / 10 /
50, distance 'ours', no ZCA. Reported (DC protocol, 20 nets x 5 runs): MNIST 91.7 / 97.4
/ 98.8, CIFAR-10 28.3 / 44.9 / 53.9, CIFAR-100 12.8 / 25.2 / - (the DatasetCondensation
README).

Choices made here:
* Evaluation: DC's protocol without augmentation, 300 epochs, for every dataset. The
  reference trains MNIST evaluation nets with its non-differentiable crop_scale_rotate
  augmentation for 1000 epochs instead; that augmentation is not ported.
* CIFAR-100 maps the classes in chunks of 10 (`class_batch`) to bound memory; the result
  is the same as one vmap over all 100 classes.
* mnist5k (the embedded 4,000-image default, CPU-sized): ConvNet width 32 for
  distillation and evaluation, real init, batch_real 32, (outer, inner) = (10, 5),
  10 iterations, protocol A only (5 seeds). That is ~100 image updates where the
  reference makes 10,000, so lr_img is 1.0 (10x the published 0.1): at 0.1 the images
  moved by an RMS of only ~0.016 (in standardised units) per iteration.
  Measured on mnist5k IPC 10 (2 CPU cores shared with other jobs, load ~5): protocol A
  0.915 +- 0.003 vs 0.877 +- 0.010 for the random real subset it starts from
  (configs/distill/random.py); 237 s of distillation (~2.5 min of CPU time).
* `converged` (the shipped sets, ddjax/distill/pretrained.py; DC and DSA): the published
  lr_img 0.1 and (outer, inner) loops, real batches of 64 per class (256 published;
  mnist5k has 400 per class and 2 CPU cores), evaluated every 50 iterations, stopped at
  the plateau (less than 0.5 points gained over the last quarter) or at the cap. IPC 1:
  the published 1,000 iterations as the cap (plateau at 700 for both). IPC 10: a compute
  cap of 300 iterations, first plateau test at 200: one iteration (10 matching steps, 9 x
  50 network steps) costs ~35 CPU s, 16-60 s on 2 shared cores, so the published 1,000
  would take 5-17 hours per set. The manifest gives each run's curve and whether it
  stopped at the plateau or at the cap. Expected (measured, DC IPC 10): protocol A 0.876
  -> 0.926, 0.937, 0.938, 0.940 at iterations 50-200, plateau at 200 (6,982 CPU s).
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.distill import common as distill_common
from ddjax.distill.gm import LOOPS  # DC `get_loops`: (outer_loop, inner_loop) per IPC

DSA_STRATEGY = "color_crop_cutout_flip_scale_rotate"
DIGITS = ("mnist", "mnist5k", "svhn_cropped")  # the DC README drops flip for digits


def dsa_strategy(dataset: str) -> str:
  return DSA_STRATEGY.replace("_flip", "") if dataset in DIGITS else DSA_STRATEGY


def quick(config: ml_collections.ConfigDict) -> None:
  """A tiny setting for tests: a few iterations of a width-8 net, a few eval steps."""
  config.train_per_class = 20
  config.num_iterations = 2
  config.log_every = 1
  config.checkpoint_every = 1
  config.model_kwargs.width = 8
  config.eval.model_kwargs = ml_collections.ConfigDict(dict(config.model_kwargs))
  config.eval.every = 0
  config.eval.num_seeds = 2
  config.eval.protocol_a_steps = 5
  config.eval.dc_epochs = 2
  config.eval.test_per_class = 10


def gm_config(method: str, arg: str | None) -> ml_collections.ConfigDict:
  """DC (method='dc') or DSA (method='dsa'); they differ in augmentation and defaults."""
  arg = common.parse_arg(arg, dataset="mnist5k", ipc=10, quick=False, converged=False,
                         cpu=False)
  config = distill_common.base_config(method, arg.dataset, arg.ipc)
  dsa = method == "dsa"
  config.init = "real" if dsa else "noise"
  config.num_iterations = 1000
  config.eval.every = 500                      # the reference evaluates every 500 iterations
  config.eval.model_kwargs = ml_collections.ConfigDict(dict(config.model_kwargs))

  hp = ml_collections.ConfigDict()
  hp.lr_img = 0.1
  hp.momentum_img = 0.5
  hp.lr_net = 0.01
  hp.net_momentum = 0.0
  hp.batch_real = 256
  hp.batch_train = 256
  hp.outer_loop, hp.inner_loop = LOOPS.get(arg.ipc, (10, 50))
  hp.dis_metric = "ours"                       # ours | mse | cos
  hp.dsa_strategy = dsa_strategy(arg.dataset) if dsa else "none"
  hp.align_corners = False                     # DC's grid_sample default; MTT uses True
  hp.class_batch = 10 if arg.dataset == "cifar100" else 0  # 0 = vmap over all classes
  config[method] = hp

  if dsa:
    config.eval.dc_epochs = 1000               # augmented evaluation trains longer
    config.eval.dc_augment = hp.dsa_strategy
  else:
    config.eval.dc_epochs = 300
    config.eval.dc_augment = "none"

  if common.cpu_sized(arg.dataset, arg.cpu):
    # CPU-sized: ~100 image updates instead of the reference's 10,000, so lr_img is 10x
    # the published 0.1 (the images move about as far in total; see the docstring).
    config.train_per_class, config.eval.test_per_class = common.cpu_subset(arg.dataset)
    config.init = "real"
    config.model_kwargs.width = 32
    config.eval.model_kwargs.width = 32
    hp.lr_img = 1.0
    hp.batch_real = 32
    hp.outer_loop, hp.inner_loop = 10, 5
    config.num_iterations = 10
    config.log_every = 1
    config.checkpoint_every = 5
    config.eval.every = 0
    config.eval.dc_protocol = False
    if arg.converged:
      # The published image lr and (outer, inner) loops; real batches of 64 per class.
      hp.lr_img = 0.1
      hp.batch_real = 64
      hp.outer_loop, hp.inner_loop = LOOPS.get(arg.ipc, (10, 50))
      if arg.ipc >= 10:
        # CPU compute cap: each IPC-10 iteration runs 10 matching steps and 9 x 50 network
        # steps (the published loops): ~35 CPU s, 16-60 s on 2 shared cores, so the
        # published 1,000 would be 5-17 hours per set. 300 iterations (first plateau test
        # at 200; DC plateaued there: 0.876 -> 0.926, 0.937, 0.938, 0.940 at 50-200).
        distill_common.converge(config, cap=300, every=50, min_iterations=200)
      else:
        distill_common.converge(config, cap=1000, every=50)
  elif arg.converged:
    distill_common.converge(config, cap=config.num_iterations, every=config.eval.every)
  if arg.quick:
    quick(config)
    hp.batch_real = 8
    hp.outer_loop, hp.inner_loop = 2, 2
    config.eval.dc_protocol = True
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return gm_config("dc", arg)
