"""Sizes config.embedding (the paper's Fig. 2 right): penultimate features of a
real-trained model, a UMAP of real test + distilled points, kNN class agreement.

    python -m launch.analyze --config=configs/analysis/paper.py:dataset=mnist5k \
        --config.distilled=/tmp/ddjax/repro/distill --analysis=embedding \
        --workdir=/tmp/ddjax/analysis

Expected at demo size on mnist5k (docs/demo/report.md): 5-NN class agreement >= 0.98
for every learned set, and DM points nearer class boundaries than TM points.

Sized by `config.size`: tiny (tests, seconds), demo (mnist5k on 2 CPU cores, about a
minute), full and paper (the paper's ResNet-18 features and UMAP, `default_config()`;
paper is the paper's CIFAR-10 setting, for a GPU).
"""

import ml_collections


def sized(section: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
  """Adapts the embedding section (`ddjax.analysis.embedding.default_config()`) to
  `config.size`."""
  if config.size == "demo":
    section.model = "convnet"   # the cached real ConvNet; 512-d features at width 32
    section.num_seeds = 2
  elif config.size == "tiny":
    section.model = "convnet"
    section.num_seeds = 2
    section.k = 3                  # 10 test points per class
    section.projection = "pca"     # UMAP's numba compile alone takes ~30 s
