r"""The `coherence` section's sizes: are the real test images each distilled image helps
most more coherent than random sets? (permutation tests of class purity and real-model
feature similarity, standing in for the paper's section 5 LLaVA analysis, which cannot
run here); its defaults are `ddjax.analysis.coherence.default_config()`. The sets and
the exact leave-one-out matrix come from config.influence (configs/analysis/influence.py),
the feature model from config.real_model.

    python -m launch.analyze --config=configs/analysis/paper.py:size=demo \
        --config.distilled=/tmp/s2/sets --analysis=influence,coherence --workdir=/tmp/ddjax/q3
"""

import ml_collections


def sized(section: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
  """Adapts the coherence section to `config.size`.

  Args:
    section: config.coherence, at the paper's settings.
    config: the analysis config (its size).
  """
  if config.size == "tiny":
    section.top_k = 5
    section.num_draws = 200
  elif config.size == "paper":
    section.num_draws = 5000           # BH over 100 images needs p down to ~0.05 / 100
    section.row_batch = 1              # 5,000 x 10,000 scores per image
