"""Fields shared by every distillation config. Method-specific hyperparameters live
in a sub-dict named after the method (config.dc, config.dm, config.mtt, config.bptt,
config.kip); the driver (`launch/distill.py`) reads only the fields below."""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

from configs import common

DATASET_CHANNELS = {"mnist5k": 1, "mnist": 1, "fashion_mnist": 1, "cifar10": 3, "cifar100": 3,
                    "svhn_cropped": 3}
DATASET_CLASSES = {"mnist5k": 10, "mnist": 10, "fashion_mnist": 10, "cifar10": 10, "cifar100": 100,
                   "svhn_cropped": 10}


def base_config(method: str, dataset: str = "mnist5k", ipc: int = 10) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.method = method
  config.seed = 0
  config.dataset = dataset
  config.data_dir = config_dict.placeholder(str)
  config.train_per_class = 0               # 0 = the whole train split; n = n real images per class
  config.preprocess = "standardize"        # standardize | zca_kornia | zca_reg
  config.ipc = ipc
  config.init = "real"                     # real | noise
  config.learn_labels = False

  # The network distillation trains/matches through (ConvNet-3 of the references).
  config.model = "convnet"
  config.model_kwargs = common.model_kwargs("convnet")

  config.num_iterations = 1000             # outer iterations
  config.log_every = 10
  config.checkpoint_every = 50

  # Periodic evaluation of the synthetic set, written to the workdir.
  config.eval = ml_collections.ConfigDict()
  config.eval.every = 200                  # 0 disables periodic evaluation (final one still runs)
  config.eval.num_seeds = 5
  config.eval.model = "convnet"
  config.eval.protocol_a_steps = 300       # the paper's setting: 300 full-batch SGD steps
  config.eval.protocol_a_lr = 0.01
  config.eval.protocol_a_momentum = 0.9
  config.eval.dc_protocol = True           # also run DC's evaluate_synset protocol
  config.eval.dc_epochs = 300              # 300 (DC/DSA) or 1000 (DM/MTT)
  config.eval.dc_lr = 0.01                 # MTT evaluates with its learned lr instead
  config.eval.dc_batch_size = 256
  config.eval.dc_augment = "none"          # a DSA strategy string, or none
  config.eval.test_per_class = 0           # 0 = the whole test split
  # Stop when the periodic protocol-A accuracy gained less than plateau_gain over the last
  # plateau_fraction of the iterations (ddjax/distill/progress.py); 0 = run to the cap.
  config.eval.plateau_gain = 0.0
  config.eval.plateau_fraction = 0.25
  config.eval.plateau_min_iterations = 0
  config.progress = True
  return config


# The convergence criterion of the shipped sets: less than 0.5 points of protocol-A
# accuracy gained over the last quarter of the iterations.
PLATEAU_GAIN = 0.005
PLATEAU_FRACTION = 0.25


def converge(config: ml_collections.ConfigDict, cap: int, every: int,
             min_iterations: int | None = None) -> ml_collections.ConfigDict:
  """Runs `config` to a protocol-A plateau, or to `cap` iterations if it never plateaus.

  Evaluates every `every` iterations (and at iteration 0, the initialisation) over
  `config.eval.num_seeds` seeds; the test first applies at `min_iterations` (default
  4 * every, so that the last quarter spans at least one evaluation interval).
  """
  config.num_iterations = cap
  config.eval.every = every
  config.eval.plateau_gain = PLATEAU_GAIN
  config.eval.plateau_fraction = PLATEAU_FRACTION
  config.eval.plateau_min_iterations = 4 * every if min_iterations is None else min_iterations
  config.checkpoint_every = every
  config.log_every = max(1, min(config.log_every, every))
  return config
