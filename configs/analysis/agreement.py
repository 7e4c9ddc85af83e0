r"""Sizes config.agreement (the paper's Fig. 4, section 4.1): prediction agreement of
distilled-trained models with accuracy-matched early-stopped vs subset-trained real models.
Its defaults (the paper's settings) are `ddjax.analysis.agreement.default_config()`.

    python -m launch.analyze --config=configs/analysis/paper.py:dataset=mnist5k \
        --config.distilled=/tmp/ddjax/repro/distill --analysis=agreement \
        --workdir=/tmp/ddjax/analysis

Sized by `config.size`: tiny (tests, seconds), demo (mnist5k on 2 CPU cores), full
(mnist5k at the paper's protocols), paper (the paper's CIFAR-10 settings, for a GPU).
Protocol-B settings (batch, lr, momentum) come from config.real_model; the pools use
config.model / config.model_kwargs, the network the distilled-trained models are (the
paper used one ConvNet throughout). At demo size on mnist5k (docs/demo/report.md) every
learned set agrees more with the early-stopped models, by 0.005-0.010 (Mann-Whitney
p < 0.05 for 2 of the 5).

CPU costs behind the demo sizes (width-32 ConvNet on 28x28, measured on the 2-core
machine in CPU-seconds): one SGD step on 256 images ~0.36, protocol A (300 steps on 100
images) ~35 per model, a forward pass over 1,000 test images ~0.8. The whole analysis at
demo size on /tmp/s2/sets (7 sets): ~720 CPU-seconds (wall on 2 free cores is roughly
0.6x). `agreement.sets` restricts it to some sets (protocol A costs ~35 per set; the two
real pools ~470 whatever the sets).
"""

import ml_collections


def sized(section: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
  """Adapts the agreement section to `config.size`.

  Args:
    section: config.agreement, at the paper's settings.
    config: the analysis config (its size and config.protocol_a).
  """
  # Distilled-trained models per set: protocol A's seed count.
  section.num_distilled_seeds = config.protocol_a.num_seeds
  if config.size == "demo":
    # mnist5k: 4,000 train images, 16 iterations per epoch at batch 256.
    # ~6 min on 2 free cores: protocol A on 7 sets ~2 min, the early-stopped pool
    # ~2 min, the subset pool ~2 min. One distilled-trained model per set, as the paper.
    # The distilled-trained ConvNets reach 0.88-0.93 on mnist5k, which the paper's 0.5-5 %
    # subsets (2-20 images per class) do not span: fractions 2.5-7.5 % (10/20/30 per
    # class; measured 0.83-0.93), 4 models each, 60 epochs (60-120 steps; at 30 epochs the
    # 20-per-class models were not converged). Early-stopped: 4 runs x 3 epochs (48
    # iterations; test accuracy 0.11 -> 0.93). Tolerance 0.02: pools are small here.
    section.num_distilled_seeds = 1
    section.subset_fractions = [0.025, 0.05, 0.075]
    section.models_per_fraction = 4
    section.subset_epochs = 60
    section.early_seeds = 4
    section.early_epochs = 3
    section.match_tolerance = 0.02
  elif config.size == "full":
    # The paper's protocols on mnist5k (16 iterations per epoch): 5 distilled-trained
    # models per set; the subset pool over the paper's range (0.5-5 % of the train split:
    # 2-20 images per class), 26 fractions x 4 = 104 models, 100 epochs; 30 early-stopped
    # runs over 3 epochs (48 iterations: mnist5k's first epoch ends at 16 iterations, before
    # the distilled-trained accuracies are reached); the paper's +-0.01 buckets.
    section.models_per_fraction = 4
    section.early_epochs = 3
  elif config.size == "tiny":
    section.num_distilled_seeds = 1
    section.subset_fractions = [0.1, 0.2]     # 2 and 4 images per class of 20
    section.models_per_fraction = 2
    section.subset_epochs = 3
    section.early_seeds = 2
    section.early_epochs = 1
    section.match_tolerance = 1.0             # everything matches: tests check the bookkeeping
