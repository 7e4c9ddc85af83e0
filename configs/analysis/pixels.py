"""Sizes config.pixels (the paper's Fig. 3 left): un-normalised pixel-intensity
distributions of the real train images and each distilled set.

    python -m launch.analyze --config=configs/analysis/paper.py:dataset=mnist5k \
        --config.distilled=/tmp/ddjax/repro/distill --analysis=pixels \
        --workdir=/tmp/ddjax/analysis

Expected at demo size on mnist5k (docs/demo/report.md): 19-54% of each learned set's
pixels outside [0, 1]; the real pixels none.

Sized by `config.size`: tiny (tests, seconds) uses fewer KDE points; demo, full and
paper use `default_config()` (the KDEs take seconds at any size).
"""

import ml_collections


def sized(section: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
  """Adapts the pixels section (`ddjax.analysis.pixels.default_config()`) to
  `config.size`."""
  if config.size == "tiny":
    section.kde_points = 2_000
    section.kde_grid = 128
