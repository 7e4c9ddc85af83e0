"""Sizes config.recognition (the paper's Fig. 2 left): real-trained models of several
architectures classify each distilled set.

    python -m launch.analyze --config=configs/analysis/paper.py:dataset=mnist5k \
        --config.distilled=/tmp/ddjax/repro/distill --analysis=recognition \
        --workdir=/tmp/ddjax/analysis

Expected at demo size on mnist5k (docs/demo/report.md): every learned set is recognised
at >= 0.92 by both ConvNets.

Sized by `config.size`: tiny (tests, seconds), demo (mnist5k on 2 CPU cores, about a
minute), full and paper (the paper's models and epochs, `default_config()`; paper is the
paper's CIFAR-10 setting, for a GPU).
"""

import ml_collections


def sized(section: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
  """Adapts the recognition section (`ddjax.analysis.recognition.default_config()`) to
  `config.size`; its `convnet` follows config.real_model."""
  if config.size == "demo":
    # 2 CPU cores: ResNet-18 (even at width 16) costs ~100 s to compile plus ~25-100 s per
    # mnist5k epoch there, AlexNet / VGG-11 similar, so the demo keeps the ConvNet family
    # (the paper's 2:1 epoch ratio ConvNet : ConvNet-Tiny) and leaves the other
    # architectures to size=paper. `convnet` = config.real_model (10 epochs), shared.
    section.models = "convnet,convnet_tiny"
    section.epochs.convnet = config.real_model.epochs
    section.epochs.convnet_tiny = max(1, config.real_model.epochs // 2)
    section.num_seeds.convnet = 2
    section.num_seeds.convnet_tiny = 2
  elif config.size == "tiny":
    section.models = "convnet,convnet_tiny"
    section.epochs.convnet = config.real_model.epochs
    section.epochs.convnet_tiny = 1
    section.num_seeds.convnet = 2
    section.num_seeds.convnet_tiny = 1
