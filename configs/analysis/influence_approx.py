r"""The `influence_approx` section's sizes: influence functions (CG, LiSSA, Arnoldi, the
plain gradient dot product) against the exact leave-one-out influence (an extension of
the paper's section 5, which used exact leave-one-out only); its defaults are
`ddjax.analysis.influence_approx.default_config()`. The sets and the exact matrix come
from config.influence (configs/analysis/influence.py).

    python -m launch.analyze --config=configs/analysis/paper.py:size=demo \
        --config.distilled=/tmp/s2/sets --analysis=influence,influence_approx \
        --workdir=/tmp/ddjax/q3

CPU cost (2-core machine): a Hessian-vector product costs about three protocol-A steps.
"""

import ml_collections


def sized(section: ml_collections.ConfigDict, config: ml_collections.ConfigDict) -> None:
  """Adapts the influence_approx section to `config.size`.

  Args:
    section: config.influence_approx, at the paper's settings.
    config: the analysis config (its size).
  """
  size = config.size
  if size == "tiny":
    section.methods = "cg,lissa,arnoldi,identity"
    section.lanczos_iters = 12        # = arnoldi_iters: one Lanczos compilation for both
    section.cg_maxiter = 10
    section.lissa_depth = 20
    section.arnoldi_rank = 4
    section.arnoldi_iters = 12
    section.top_k = 5
  elif size == "demo":
    # One vmapped HVP for 10 left-out images costs ~1.2 CPU-s at width 8: CG 30 steps +
    # LiSSA 60 steps + Lanczos/Arnoldi 2 x 40 is ~80 CPU-s per set, so one set.
    section.max_sets = 1
    section.lanczos_iters = 40
    section.cg_maxiter = 30
    section.lissa_depth = 60
    section.arnoldi_iters = 40
  elif size == "paper":
    section.arnoldi_rank = 50
    section.arnoldi_iters = 150
    section.lanczos_iters = 80
