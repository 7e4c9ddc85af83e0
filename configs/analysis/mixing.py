r"""The `mixing` section's sizes: distilled sets plus k real images per class (the paper's
Fig. 3 right); its defaults are `ddjax.analysis.mixing.default_config()`.

    python -m launch.analyze --config=configs/analysis/paper.py:size=demo \
        --config.distilled=/tmp/s2/sets --analysis=mixing,sensitivity --workdir=/tmp/ddjax/q1b

It trains fresh networks (`config.model`, `config.model_kwargs`) on small sets with
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


def sized(section: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
  """Adapts the mixing section to `config.size`.

  Args:
    section: config.mixing, at the paper's settings.
    config: the analysis config (its size).
  """
  if config.size == "tiny":  # tests: 20 train images per class, width-8 ConvNet, 20 steps
    section.additions = "0,2,5"
    section.num_seeds = 2
  elif config.size == "demo":
    _demo(section)
  elif config.size == "full":
    # The paper's protocol (k = 0/2/10/50/250, 300 steps, 5 seeds) on mnist5k, against a
    # random-real baseline drawn independently of every distilled set's initialisation
    # (the shipped `random_independent` set: another seed's class-balanced subset).
    section.baseline = "random_independent"
  # size == "paper": the defaults, 5 seeds (configs/analysis/paper.py), width 128.


def _demo(section: ml_collections.ConfigDict) -> None:
  """mnist5k, 7 sets of 100 images + the random baseline, ConvNet width 32, 2 CPU cores.

  Steps: 50 full-batch steps, not 300 (as in the sensitivity section). Measured on mnist5k
  (DM and random real, seed 0): at 50 steps DM 0.915 -> 0.903 with +10 real/class and
  random real 0.842 -> 0.870; at 300 steps 0.939 -> 0.933 and 0.871 -> 0.907: the same
  pattern, at 1/6 of the cost.
  k in {0, 10} (the paper's clearest point; +50/+250 would add 600 / 2,600 images per set,
  2.5x / 10x the whole demo), 2 seeds: 8 sets x 300 images x 50 steps x 2 seeds
  ~ 390 CPU-s. Measured (CPU time, 2 cores): 312 CPU-s; num_seeds=1 halves it.
  """
  section.additions = "0,10"
  section.num_seeds = 2
  section.steps = 50
