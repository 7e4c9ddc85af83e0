r"""Curvature of a model's loss at one parameter state: Hessian trace, top eigenvalues,
spectral density (the quantities of the paper's loss-curvature analysis, section 4.3),
written to the workdir as JSON and PNG.

    python -m launch.curvature --config=configs/curvature.py --workdir=/tmp/ddjax/curv
    python -m launch.curvature \
        --config=configs/curvature.py:checkpoint=/tmp/ddjax/train,data=distilled:/tmp/syn.npz \
        --workdir=/tmp/ddjax/curv_syn

Default: the demo ConvNet (width 128) at its initialisation on the 4,000 mnist5k
training images; the Hessian of the mean cross-entropy, evaluated exactly over the
whole set in batches of 500; Hutchinson trace with PyHessian's rule (tol 1e-3, at
most 100 probes, as the paper); top-5 eigenvalues by Lanczos; an SLQ density from
one probe of 90 Lanczos steps. On 2 CPU cores each full-set product takes minutes
(BUILD_NOTES.md has the measured cost per probe); use `quick` to try it out.

Arguments (`--config=configs/curvature.py:key=value,...`):
  checkpoint: a launch/train.py workdir (its config.json gives model and data);
    empty = a fresh initialisation of `model` on `dataset` (seed `seed`).
  data: train | test | distilled:PATH.   model, dataset: used without a checkpoint.
  quick: a tiny run (200 examples, width 8, 4 probes, short Lanczos).
Every field can be overridden, e.g. `--config.operator=ggn`, `--config.subset=head`,
`--config.per_layer=True`, `--config.trace.num_probes=10`, `--config.precision=highest`.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, checkpoint="", data="train", model="convnet", dataset="mnist5k",
                         quick=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  # Where the parameters come from.
  config.checkpoint_dir = arg.checkpoint
  config.checkpoint_step = -1           # -1 = the latest checkpoint
  config.model = arg.model              # used without a checkpoint
  config.model_kwargs = common.model_kwargs(arg.model)
  config.dataset = arg.dataset
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.preprocess = "standardize"
  # Which loss.
  config.data = arg.data                # train | test | distilled:PATH
  config.num_examples = 0               # 0 = all; else a seeded random subset
  config.batch_size = 500               # dataset-averaged products in batches (exact)
  config.operator = "hessian"           # hessian | ggn
  config.batch_stats = "running"        # running (eval-mode batch norm) | batch
  config.subset = ""                    # parameter-path prefixes, comma-separated, or re:REGEX
  config.per_layer = False              # also the trace of each layer's diagonal block
  config.l2 = 0.0                       # weight decay in the objective
  config.precision = "highest"          # matmul precision inside the products ("" = JAX default)
  # What to compute.
  config.trace = ml_collections.ConfigDict(dict(
      enabled=True, num_probes=0, max_probes=100, tol=1e-3, probe_batch=1))  # 0 = PyHessian's rule
  config.topk = ml_collections.ConfigDict(dict(k=5, num_iters=0, method="lanczos"))  # k=0: skip
  config.density = ml_collections.ConfigDict(dict(
      num_probes=1, num_iters=90, grid_points=1000, sigma=0.0))  # num_probes=0: skip

  if arg.quick:
    config.num_examples = 200
    config.batch_size = 64
    config.model_kwargs.width = 8
    config.trace.num_probes = 4
    config.topk.k = 2
    config.topk.num_iters = 10
    config.density.num_iters = 12
  return config
