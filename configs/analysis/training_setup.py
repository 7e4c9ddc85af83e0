r"""Q1 part 2 sections: `mixing` (E4, Fig. 3 right) and `sensitivity` (claim 1).

    python -m launch.analyze --config=configs/analysis/paper.py:size=demo \
        --config.distilled=/tmp/s2/sets --analysis=mixing,sensitivity --workdir=/tmp/ddjax/q1b

Both train fresh networks (`config.model`, `config.model_kwargs`) on small sets with
protocol A (`config.protocol_a`: full batch, SGD 0.01 / momentum 0.9, 300 steps), vmapped
over `num_seeds` init keys (0 = `config.protocol_a.num_seeds`); `steps` (0 = protocol A's)
shortens every run, which only the CPU demo does.

Cost on the CPU (measured, ConvNet width 32, mnist5k): ~0.0016 CPU-seconds per image per
full-batch step (width 16: 0.0008), i.e. 300 steps on 100 images take ~50 CPU-s per seed,
~25 s on 2 free cores, plus ~8 CPU-s of compilation per distinct set size or variant.
Protocol A on the paper's full mixing grid (100 + 120 + 200 + 600 + 2,600 images, 8 sets)
is ~8 GPU-minutes but ~3.5 CPU-hours per seed, so the demo cuts the grid, the steps and
the seeds (see `_demo`), and says so in the JSON (`config`, `setup`).
"""

import ml_collections


def add_sections(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds config.mixing and config.sensitivity, sized by config.size."""
  size = config.size

  # E4: distilled set + k real train images per class (nested across k, seeded).
  mixing = ml_collections.ConfigDict()
  mixing.additions = "0,2,10,50,250"   # the paper's k (its x-axis "10 +k")
  mixing.num_seeds = 0                 # 0 = config.protocol_a.num_seeds
  mixing.steps = 0                     # 0 = config.protocol_a.steps (300)
  mixing.sets = ""                     # "" = every distilled set; else "dm,mtt,..."
  mixing.baseline = "random"           # this distilled set is the baseline; drawn if absent
  mixing.baseline_ipc = 0              # 0 = the distilled sets' IPC (for a drawn baseline)
  mixing.labels = "as_distilled"       # or "hard" (argmax of learned soft labels)

  # Claim 1: the same sets under changed training setups (ddjax.analysis.training_setup.
  # parse_variant). Seeds are the same init keys in every variant (paired drops).
  sens = ml_collections.ConfigDict()
  sens.variants = ("standard,adam,lr_x0.1,lr_x10,steps_100,steps_1000,minibatch,augment,"
                   "arch_convnet_tiny,arch_alexnet,arch_resnet18")
  sens.num_seeds = 0                   # 0 = config.protocol_a.num_seeds
  sens.steps = 0                       # the standard's steps; 0 = config.protocol_a.steps
  sens.adam_lr = 1e-3                  # Adam's usual default (optax b1 0.9, b2 0.999)
  sens.minibatch_size = 10             # 10 steps per epoch on 100 images, same number of steps
  sens.augment_strategy = ""           # "" = DSA's color_crop_cutout_flip_scale_rotate,
                                       # without flip for digit datasets (MNIST, SVHN)
  sens.sets = ""
  sens.baseline = "random"
  sens.baseline_ipc = 0
  sens.labels = "as_distilled"

  if size == "tiny":  # tests: 20 train images per class, width-8 ConvNet, 20 steps
    mixing.additions = "0,2,5"
    mixing.num_seeds = 2
    sens.variants = "standard,adam,lr_x10,steps_10,minibatch,augment"
    sens.num_seeds = 2
    sens.minibatch_size = 5
  elif size == "demo":
    _demo(mixing, sens)
  elif size == "full":
    # The paper's protocol (k = 0/2/10/50/250, 300 steps, 5 seeds) on mnist5k, against a
    # random-real baseline drawn independently of every distilled set's initialisation
    # (the shipped `random_independent` set: another seed's class-balanced subset).
    mixing.baseline = "random_independent"
    sens.baseline = "random_independent"
  # size == "paper": the defaults above, 5 seeds (configs/analysis/paper.py), width 128.

  config.mixing = mixing
  config.sensitivity = sens
  return config


def _demo(mixing: ml_collections.ConfigDict, sens: ml_collections.ConfigDict) -> None:
  """mnist5k, 7 sets of 100 images + the random baseline, ConvNet width 32, 2 CPU cores.

  Steps: 50 full-batch steps, not 300, in both analyses. Measured on mnist5k (DM and
  random real, seed 0): at 50 steps DM 0.915 -> 0.903 with +10 real/class and random real
  0.842 -> 0.870; at 300 steps 0.939 -> 0.933 and 0.871 -> 0.907: the same pattern, at
  1/6 of the cost.
  mixing: k in {0, 10} (the paper's clearest point; +50/+250 would add 600 / 2,600 images
  per set, 2.5x / 10x the whole demo), 2 seeds: 8 sets x 300 images x 50 steps x 2 seeds
  ~ 390 CPU-s.
  sensitivity: one variant of each kind that fits (optimizer, lr, batch, architecture),
  2 seeds; `standard` is mixing's +0 run (shared cache). augment, lr_x0.1, steps_<n> and
  alexnet/resnet18 are left to the paper size (each ~+120 CPU-s, resnet18 far more).
  Measured (CPU time, 2 cores): mixing 312 CPU-s; sensitivity with augment 396 CPU-s,
  ~270 without. num_seeds=1 halves both.
  """
  mixing.additions = "0,10"
  mixing.num_seeds = 2
  mixing.steps = 50
  sens.variants = "standard,adam,lr_x10,minibatch,arch_convnet_tiny"
  sens.num_seeds = 2
  sens.steps = 50
