r"""The `sensitivity` section's sizes: the sets under changed training setups (the paper's
claim 1); its defaults are `ddjax.analysis.sensitivity.default_config()`.

    python -m launch.analyze --config=configs/analysis/paper.py:size=demo \
        --config.distilled=/tmp/s2/sets --analysis=mixing,sensitivity --workdir=/tmp/ddjax/q1b

Each variant trains fresh networks (`config.model`, `config.model_kwargs`) on the small
sets, a change of protocol A (`config.protocol_a`: full batch, SGD 0.01 / momentum 0.9,
300 steps), vmapped over `num_seeds` init keys (0 = `config.protocol_a.num_seeds`);
`steps` (0 = protocol A's) shortens every run, which only the CPU demo does.

Cost on the CPU (measured, ConvNet width 32, mnist5k): ~0.0016 CPU-seconds per image per
full-batch step (width 16: 0.0008), i.e. 300 steps on 100 images take ~50 CPU-s per seed,
~25 s on 2 free cores, plus ~8 CPU-s of compilation per distinct set size or variant. The
demo cuts the variants, the steps and the seeds (see `_demo`), and says so in the JSON
(`config`, `variants`).
"""

import ml_collections


def sized(section: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
  """Adapts the sensitivity section to `config.size`.

  Args:
    section: config.sensitivity, at the paper's settings.
    config: the analysis config (its size).
  """
  if config.size == "tiny":  # tests: 20 train images per class, width-8 ConvNet, 20 steps
    section.variants = "standard,adam,lr_x10,steps_10,minibatch,augment"
    section.num_seeds = 2
    section.minibatch_size = 5
  elif config.size == "demo":
    _demo(section)
  elif config.size == "full":
    # The paper's protocol on mnist5k, against a random-real baseline drawn independently
    # of every distilled set's initialisation (the shipped `random_independent` set:
    # another seed's class-balanced subset).
    section.baseline = "random_independent"
  # size == "paper": the defaults, 5 seeds (configs/analysis/paper.py), width 128.


def _demo(section: ml_collections.ConfigDict) -> None:
  """mnist5k, 7 sets of 100 images + the random baseline, ConvNet width 32, 2 CPU cores.

  Steps: 50 full-batch steps, not 300, as in the mixing section (there, at 50 steps the
  pattern of 300 holds at 1/6 of the cost). One variant of each kind that fits
  (optimizer, lr, batch, architecture), 2 seeds; `standard` is mixing's +0 run (shared
  cache). augment, lr_x0.1, steps_<n> and alexnet/resnet18 are left to the paper size
  (each ~+120 CPU-s, resnet18 far more).
  Measured (CPU time, 2 cores): 396 CPU-s with augment, ~270 without. num_seeds=1 halves it.
  """
  section.variants = "standard,adam,lr_x10,minibatch,arch_convnet_tiny"
  section.num_seeds = 2
  section.steps = 50
