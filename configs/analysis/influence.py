r"""The `influence` section's sizes: the exact leave-one-out influence of each distilled
image on real test images (the paper's Fig. 10, section 5); its defaults are
`ddjax.analysis.influence.default_config()`. influence_approx and coherence read this
section too (their sets and the exact matrix).

    python -m launch.analyze --config=configs/analysis/paper.py:size=demo \
        --config.distilled=/tmp/s2/sets --analysis=influence,influence_approx,coherence \
        --workdir=/tmp/ddjax/q3

n + 1 protocol-A retrains (config.protocol_a: steps, lr, momentum) of the network of
config.model / config.model_kwargs (the width overridable) from one initialisation, one
vmapped call. Sign convention throughout: I[i, t] = loss(x_t; theta without i) -
loss(x_t; theta all), positive when distilled image i *helps* test image t (removing it
raises the loss).

CPU cost behind the demo sizes (2-core machine, CPU-seconds): one protocol-A step of a
ConvNet on 100 28x28 images costs ~0.03 at width 8 and ~0.12 at width 32, so the exact LOO
of all 100 images of one set (101 runs x 300 steps) is ~900 CPU-s at width 8 and ~3,600 at
width 32; the demo therefore leaves out one image per class (11 runs, ~100 CPU-s per set)
with a width-8 network, for two learned sets and the random control.
"""

import ml_collections


def sized(section: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
  """Adapts the influence section to `config.size`.

  Args:
    section: config.influence, at the paper's settings.
    config: the analysis config (its size).
  """
  size = config.size
  if size == "tiny":
    section.test_per_class = 0         # config.test_per_class = 10 already
    section.points_per_class = 1
    section.top_k = 5
  elif size == "demo":
    section.test_per_class = 20        # 200 test images: the matrices stay small on the CPU
    section.max_sets = 2               # ~100 CPU-s per set: two learned sets + the control
    section.points_per_class = 1       # 11 retrains per set instead of 101 (see module doc)
    section.width = 8                  # ~4x cheaper than the demo's width-32 ConvNet
  elif size == "full":
    # The paper's Fig. 10 protocol: every distilled image left out (101 runs), every test
    # image, the distillation's own width (32); 26 runs per vmapped chunk bounds memory.
    section.chunk_size = 26
  elif size == "paper":
    section.chunk_size = 26            # 101 width-128 CIFAR runs in 4 chunks: fits 80 GB
