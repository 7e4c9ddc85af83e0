r"""Sizes config.curvature_over_training (the paper's Fig. 6, section 4.3): the Hutchinson
trace of the loss Hessian on real and distilled data along real training (+ top eigenvalue
and SLQ density, beyond the paper). Its defaults (the paper's settings) are
`ddjax.analysis.curvature_over_training.default_config()`.

    python -m launch.analyze --config=configs/analysis/paper.py:dataset=mnist5k \
        --config.distilled=/tmp/ddjax/repro/distill --analysis=curvature_over_training \
        --workdir=/tmp/ddjax/analysis

Sized by `config.size`: tiny (tests, seconds), demo (mnist5k on 2 CPU cores), full
(mnist5k at the paper's protocols), paper (the paper's CIFAR-10 settings, for a GPU).
Protocol-B settings (batch, lr, momentum) come from config.real_model. At demo size on
mnist5k (docs/demo/report.md) the TM and BPTT traces end below the real-data trace.

CPU costs behind the demo sizes (width-32 ConvNet on 28x28, measured on the 2-core
machine in CPU-seconds): one Hessian-vector product ~0.3 per 100 images (so one probe of
the full 4,000-image train set ~12). The whole analysis at demo size on /tmp/s2/sets (7
sets): ~190 CPU-seconds (wall on 2 free cores is roughly 0.6x).
"""

import ml_collections


def sized(section: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
  """Adapts the curvature_over_training section to `config.size`.

  Args:
    section: config.curvature_over_training, at the paper's settings.
    config: the analysis config (its size).
  """
  if config.size == "demo":
    # ~190 CPU-s (the paper: 301 states x up to 100 probes of the full 50k-image HVP,
    # 10.6 h on a GPU): 48 steps (3 epochs; the real trace peaks near iteration 25), a trace
    # every 4 states (13 states), 2 fixed probes per trace (the EMA averages the probe
    # noise), the real-data trace on a 400-image class-balanced subset of the train split
    # (an unbiased estimate of the full-set trace, 10x cheaper per probe), SLQ (1 probe x 12
    # Lanczos steps) at 2 states.
    section.num_steps = 48
    section.stride = 4
    section.num_probes = 2
    section.train_subset = 400
    section.hvp_batch_size = 200
    section.spectrum_iterations = [12, 48]
    section.slq_probes = 1
    section.slq_iters = 12
  elif config.size == "full":
    # Every one of the 300 states, PyHessian's stopping rule on the full train split
    # (the paper's protocol; on 2 CPU cores this is a multi-hour job).
    section.spectrum_iterations = [0, 60, 90, 150, 300]
  elif config.size == "tiny":
    section.num_steps = 4
    section.stride = 2
    section.num_probes = 2
    section.hvp_batch_size = 100
    section.spectrum_iterations = [4]
    section.slq_probes = 1
    section.slq_iters = 4
