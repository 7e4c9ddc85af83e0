r"""BPTT: back-propagation through unrolled training (Remember-the-Past, RaT-BPTT).

    python -m launch.distill --config=configs/distill/bptt.py:dataset=mnist5k,ipc=10 \
        --workdir=/tmp/ddjax/bptt_mnist5k_ipc10

Arguments (`--config=configs/distill/bptt.py:dataset=cifar10,ipc=10`): dataset (mnist5k,
mnist, cifar10, cifar100; other names get the CIFAR-10 settings), ipc (1, 10, 50),
quick (a tiny run for tests), cpu (as configs/distill/dc.py: fashion_mnist at the mnist5k
settings). Override anything, e.g. `--config.bptt.window=0`.

References:
* RTP (`RememberThePast-DatasetDistillation`, the only documented command, CIFAR-10
  IPC 1): a fresh ConvNet per iteration, 150 inner steps of SGD(0.01, momentum 0.9)
  differentiated through the momentum buffer, minibatches of 10 per class (capped at
  ipc), outer loss on 64 real images per class, images by SGD(0.1, momentum 0.5) with
  clip_grad_norm 2, noise init, regularised ZCA. Evaluation: 300 epochs SGD(0.01, 0.9).
* RaT-BPTT (`Simple_Dataset_Distillation` README): CIFAR-10 IPC 10: window 60 of 200
  steps (random window start), batch_per_class 10, real batch 5000, Adam 1e-3 outer
  (and inner), ZCA. CIFAR-100 IPC 10: batch_per_class 1, window 100 of 300, learned
  labels. CIFAR-100 IPC 1: window 90 of 130.

Choices made here (not published):
* The inner optimiser is always RTP's SGD(0.01, momentum 0.9), also on the RaT-BPTT rows
  (RaT-BPTT's inner Adam was flagged by its reviewers as an uncontrolled change); their
  outer Adam, windows, batch sizes and label learning are kept.
* CIFAR-10 IPC 50 and CIFAR-100 IPC 50 reuse the IPC 10 rows; MNIST (no command in
  either repository) uses the CIFAR-10 rows on mean/std-normalised digits.
* RaT-BPTT's EMA-relative clipping is replaced by RTP's fixed global-norm clip 2.
* mnist5k (CPU-sized, the embedded default): ConvNet width 32 for distillation and
  evaluation (as the DC/DM mnist5k configs), real init, a RaT-BPTT window of 20 of 60
  inner steps on minibatches of 2 per class, real_per_class 32, Adam(0.05), 60
  iterations, protocol A only. (Differentiating all of 20 steps, full batch or 2 per
  class, left protocol A at the random-real level: 0.882-0.885; BUILD_NOTES.md.) Expected on 2
  CPU cores: ~2-4 min of distillation; protocol-A accuracy above the random-real
  baseline (BUILD_NOTES.md has the measured numbers and command).
* `unroll=full` (RTP-style, the Remember-the-Past reference): every one of the inner
  steps differentiated (window 0), SGD(0.1, momentum 0.5) on the images, clip 2. The
  default `unroll=rat` is RaT-BPTT's random window. On mnist5k both use 60 inner steps on
  minibatches of 2 per class and a real init, so they differ only in the unroll.
* `converged` (the shipped sets, ddjax/distill/pretrained.py): the mnist5k settings above,
  RaT's Adam at 0.01 (10x RaT-BPTT's 1e-3; 0.05 suits only the 60-iteration demo run),
  evaluated every 200 iterations, stopped at the plateau (less than 0.5 points gained over
  the last quarter) or at the cap of 4,000 iterations.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs.distill import common as distill_common
from configs.distill import dc
from ddjax.errors import ConfigError

# (dataset, ipc) -> overrides of the defaults below; see the module docstring.
# RTP (Remember-the-Past), the BPTT of "What is Dataset Distillation Learning?".
RTP_PRESET = _RTP = dict(inner_steps=150, window=0, batch_per_class=10, real_per_class=64, optimizer="sgd",
            lr_img=0.1, init="noise", preprocess="zca_reg", learn_labels=False)
_RAT_C10 = dict(inner_steps=200, window=60, batch_per_class=10, real_per_class=500,
                optimizer="adam", lr_img=1e-3, init="real", preprocess="zca_reg",
                learn_labels=False)
_RAT_C100 = dict(inner_steps=300, window=100, batch_per_class=1, real_per_class=50,
                 optimizer="adam", lr_img=1e-3, init="real", preprocess="zca_reg",
                 learn_labels=True)
PRESETS = {
    ("cifar10", 1): _RTP,
    ("cifar10", 10): _RAT_C10,
    ("cifar10", 50): _RAT_C10,
    ("cifar100", 1): dict(_RAT_C100, inner_steps=130, window=90, lr_img=3e-4),
    ("cifar100", 10): _RAT_C100,
    ("cifar100", 50): _RAT_C100,
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, dataset="mnist5k", ipc=10, quick=False, converged=False,
                         unroll="rat", cpu=False)
  if arg.unroll not in ("rat", "full"):
    raise ConfigError(f"bptt unroll must be 'rat' (RaT-BPTT window) or 'full' (RTP-style "
                     f"full unroll), got {arg.unroll!r}.")
  config = distill_common.base_config("bptt", arg.dataset, arg.ipc)
  config.num_iterations = 5000
  config.eval.every = 200                       # RTP evaluates every 200 iterations
  config.eval.dc_epochs = 300
  config.eval.model_kwargs = ml_collections.ConfigDict(dict(config.model_kwargs))

  hp = ml_collections.ConfigDict()
  hp.inner_steps = 150                          # T
  hp.inner_lr = 0.01
  hp.inner_momentum = 0.9
  hp.batch_per_class = 10                       # 0 or >= ipc: the whole synthetic set per step
  hp.window = 0                                 # RaT-BPTT window W; 0 = differentiate all T steps
  hp.real_per_class = 64
  hp.optimizer = "sgd"                          # sgd (RTP) | adam (RaT-BPTT)
  hp.lr_img = 0.1
  hp.momentum_img = 0.5                         # sgd only
  hp.lr_label = 1e-3                            # with config.learn_labels
  hp.clip_norm = 2.0                            # global norm; 0 disables
  hp.remat = True                               # jax.checkpoint per inner step
  hp.remat_policy = "nothing"                   # nothing | dots | everything
  config.bptt = hp

  dataset = arg.dataset if arg.dataset in ("cifar10", "cifar100") else "cifar10"
  preset = dict(PRESETS.get((dataset, arg.ipc), PRESETS[(dataset, 10)]))
  config.init = preset.pop("init")
  config.preprocess = preset.pop("preprocess")
  config.learn_labels = preset.pop("learn_labels")
  hp.update(preset)
  if arg.dataset in ("mnist", "mnist5k", "fashion_mnist"):
    config.preprocess = "standardize"           # digits: no ZCA (as RaT-BPTT and the DC family)

  if common.cpu_sized(arg.dataset, arg.cpu):
    config.train_per_class, config.eval.test_per_class = common.cpu_subset(arg.dataset)
    config.init = "real"
    config.learn_labels = False
    config.model_kwargs.width = 32
    config.eval.model_kwargs.width = 32
    hp.update(inner_steps=60, window=20, batch_per_class=2, real_per_class=32, optimizer="adam",
              lr_img=0.05, lr_label=0.05)
    config.num_iterations = 60
    config.log_every = 10
    config.checkpoint_every = 40
    config.eval.every = 0
    config.eval.dc_protocol = False
    if arg.unroll == "full":
      # RTP-style: every inner step differentiated, SGD(0.1, momentum 0.5) on the images
      # with RTP's global-norm clip 2.
      hp.update(window=0, optimizer="sgd", lr_img=0.1, momentum_img=0.5, clip_norm=2.0)
    if arg.converged:
      if arg.unroll == "rat":
        hp.lr_img = 0.01                       # 10x RaT-BPTT's Adam 1e-3, for a CPU budget
      distill_common.converge(config, cap=4000, every=200)
  elif arg.converged:
    distill_common.converge(config, cap=config.num_iterations, every=config.eval.every)
  elif arg.unroll == "full":
    hp.window = 0
  if arg.quick:
    dc.quick(config)
    hp.update(inner_steps=4, window=2, batch_per_class=1, real_per_class=4)
    config.eval.dc_protocol = True
  return config
