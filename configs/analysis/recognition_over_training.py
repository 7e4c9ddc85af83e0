r"""Sizes config.recognition_over_training (the paper's Fig. 5, section 4.2): accuracy on
each distilled set after every iteration of real training. Its defaults (the paper's
settings) are `ddjax.analysis.recognition_over_training.default_config()`.

    python -m launch.analyze --config=configs/analysis/paper.py:dataset=mnist5k \
        --config.distilled=/tmp/ddjax/repro/distill --analysis=recognition_over_training \
        --workdir=/tmp/ddjax/analysis

Sized by `config.size`: tiny (tests, seconds), demo (mnist5k on 2 CPU cores), full
(mnist5k at the paper's protocols), paper (the paper's CIFAR-10 settings, for a GPU).
Protocol-B settings (batch, lr, momentum) come from config.real_model. At demo size on
mnist5k (docs/demo/report.md) the BPTT, DM, GM and TM sets get to 0.95 x the final test
accuracy at iterations 14-20, the test accuracy itself at 33 of 64.

CPU costs behind the demo sizes (width-32 ConvNet on 28x28, measured on the 2-core
machine in CPU-seconds): one SGD step on 256 images ~0.36, a forward pass over 1,000 test
images ~0.8. The whole analysis at demo size on /tmp/s2/sets (7 sets): ~170 CPU-seconds
(wall on 2 free cores is roughly 0.6x).
"""

import ml_collections


def sized(section: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
  """Adapts the recognition_over_training section to `config.size`.

  Args:
    section: config.recognition_over_training, at the paper's settings.
    config: the analysis config (its size).
  """
  if config.size == "demo":
    # ~170 CPU-s: 4 epochs (64 iterations; test accuracy 0.15 -> 0.94), 2 runs, 500
    # test images per iteration (each iteration also evaluates every distilled set).
    section.epochs = 4
    section.plot_iterations = 0
    section.num_seeds = 2
    section.test_subset = 500
  elif config.size == "full":
    # As demo, but every test image and 3 runs.
    section.epochs = 4
    section.plot_iterations = 0
  elif config.size == "tiny":
    section.epochs = 2
    section.plot_iterations = 0
    section.num_seeds = 2
    section.eval_batch_size = 500
