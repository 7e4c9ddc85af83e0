r"""The whole paper from scratch: experts, distillation, every analysis, the report.

    python -m launch.reproduce --config=configs/reproduce.py:dataset=mnist5k,size=demo \
        --workdir=workdirs/demo                                            # = make demo
    python -m launch.reproduce --config=configs/reproduce.py:dataset=cifar10,size=paper \
        --config.data_dir=~/tensorflow_datasets --workdir=/tmp/ddjax/repro_c10  # a GPU

Writes `<workdir>/experts/` (MTT's expert trajectories), `<workdir>/distill/<method>/`
(one `launch/distill.py` workdir per method: distilled.npz, results.json, synthetic.png),
`<workdir>/analysis/` (`<name>.json` and PNGs of every analysis), `<workdir>/report.md`
(every figure, the distilled-set accuracies, the computed claim table, stage timings) and
`<workdir>/timings.json`. Re-running resumes: finished stages are skipped and a partly
done distillation resumes from its orbax checkpoint.

size=demo analyses the distilled sets that ship with ddjax (distilled to a plateau; see
ddjax/distill/pretrained_sets/v1/manifest.json) and distils nothing, except a method
whose set is not shipped; `--config.sets=distil` re-distils every method from scratch
with the demo's cut iterations (as before the sets were shipped: 24 min, protocol-A
accuracies 0.88 for random real and 0.89-0.92 for the five methods, 7 of 16 claims
reproduced). Expected with the shipped sets: ~17 min on 2 free cores (19 min 10 s in a
fresh clone, `make setup` included), protocol A 0.92-0.94 for the five methods, 7 of 16
claims reproduced (a different 7; docs/demo/report.md is a committed copy of that run).

Fashion-MNIST on 2 CPU cores (offline from Debian's idx files, `make fashion-mnist`, or
`--config.data_dir=DIR` holding them; ddjax/data/idx.py):

    python -m launch.reproduce --config=configs/reproduce.py:dataset=fashion_mnist,size=demo \
        --workdir=workdirs/demo_fashion_mnist

At sizes tiny and demo fashion_mnist (28x28x1, 10 classes, as mnist5k) takes every
config's mnist5k settings (the `cpu` argument of configs/distill/*.py and
configs/experts.py; configs/common.py): mnist5k's networks (ConvNet width 32), the same
per-iteration hyperparameters and, at demo, the same cuts as mnist5k (`_demo_cuts`), on a
class-balanced subset of mnist5k's size drawn with `seed`: 400 train images per class
(4,000 of the 60,000) and 100 test images per class (1,000 of the 10,000, as the
agreement, embedding and coherence analyses scale with the test split) in every stage,
experts, distillation, its evaluation and the analyses alike. No Fashion-MNIST set ships,
so size=demo distils every method here (a log line says so) with the demo's cut outer
iterations: random 0, dc 3, dm 80, mtt 40 (after 3 experts x 5 epochs), bptt 12, kip 25.
Expected: about as long as the mnist5k demo with `--config.sets=distil` (same image
counts, widths and iterations); accuracies and claims are not yet measured (lower than
mnist5k's, Fashion-MNIST being harder: its published random-real IPC-10 row is 73.8 %,
configs/published.py). Sizes full and paper do not change for fashion_mnist: the whole
splits and each method's Fashion-MNIST row of configs/distill/*.py (width 128, its
published iterations; the rows configs/published.py evaluates), at paper under
`_paper_settings`.

Arguments (`--config=configs/reproduce.py:dataset=...,size=...,ipc=...`):
  dataset: mnist5k (the embedded default), fashion_mnist, cifar10, or any dataset name
           ddjax loads.
  size:    tiny  - tests (a couple of distillation iterations on 20 images per class);
           demo  - mnist5k on 2 CPU cores in at most 30 minutes: the shipped sets,
                   lighter analysis settings (fashion_mnist: see above);
           full  - the shipped mnist5k sets at the analyses' faithful settings (every
                   seed, step, image and probe of the paper's protocols; hours on 2 cores);
           paper - the paper's settings (CIFAR-10, IPC 10, ConvNet-128, its protocols),
                   for a GPU.
  ipc:     images per class (the paper: 10).

Sub-configs (all overridable from the command line):
  config.experts              configs/experts.py            (MTT's expert trajectories)
  config.distill.<method>     configs/distill/<method>.py   (every method, used or not)
  config.analysis             configs/analysis/paper.py     (every analysis section)
`seed`, `data_dir` and `progress` are shared by reference: `--config.seed=1` reseeds
every stage. Examples: `--config.methods=random,dm,mtt`, `--config.analyses=mixing,agreement`,
`--config.distill.dm.num_iterations=50`, `--config.analysis.mixing.num_seeds=3`.

The paper's four methods (its section 3): BPTT, DM, GM (gradient matching:
DC's `main.py`, whose default is no DSA; add `dsa` to `methods` for GM with DSA) and TM
(MTT); plus KIP and the random-real baseline (`random`) that the analyses compare with.
"""

from __future__ import annotations

import ml_collections

from configs import common
from configs import experts as experts_config
from configs.distill import bptt, dc, dm, dsa, kip, mtt
from configs.distill import random as random_config
from ddjax.errors import ConfigError

# Every method a reproduction can distil; `methods` picks which run.
METHOD_CONFIGS = {"random": random_config, "dc": dc, "dsa": dsa, "dm": dm, "mtt": mtt,
                  "bptt": bptt, "kip": kip}
# The paper's BPTT, DM, GM (= dc) and TM (= mtt), plus KIP and the random-real baseline.
DEFAULT_METHODS = "random,dc,dm,mtt,bptt,kip"
SIZES = ("tiny", "demo", "full", "paper")


def _demo_cuts(config: ml_collections.ConfigDict) -> None:
  """The demo budget: experts + 5 methods + random + 11 analyses + the report in
  <= 30 minutes on 2 CPU cores. The analyses need most of it (about 1-2 min each), so the
  distillations get about a minute each. Each method stays the same algorithm with the
  same per-iteration hyperparameters as its mnist5k config; only the outer iterations,
  the experts and the in-distillation evaluation are cut."""
  ex = config.experts
  # MTT experts: 3 (not 6) experts x 5 (not 12) epochs, in one vmapped group (about 7 s
  # of CPU time per expert-epoch here). MTT samples a start epoch in [0, max_start_epoch)
  # and matches expert_epochs ahead: max_start_epoch + expert_epochs = 3 + 2 = 5 snapshots.
  ex.num_experts = 3
  ex.num_epochs = 5
  ex.experts_per_batch = 3
  config.distill.mtt.mtt.max_start_epoch = 3  # (mnist5k config: 8 of 12 epochs)

  # Outer iterations (mnist5k configs: dc/dsa 10, dm 300, mtt 150, bptt 60, kip 100).
  # Each cut keeps the method's images moving clearly away from their real init.
  iterations = dict(dc=3, dsa=3, dm=80, mtt=40, bptt=12, kip=25)
  for method, n in iterations.items():
    cfg = config.distill[method]
    cfg.num_iterations = n
    cfg.log_every = max(1, min(cfg.log_every, n // 4))
    cfg.checkpoint_every = max(1, n // 2)    # a killed demo resumes from the middle
  for cfg in config.distill.values():
    # The analyses evaluate every set anyway (over several seeds), so the driver's own
    # evaluation is cut to its minimum: no periodic evaluation, one protocol-A seed (300
    # full-batch steps, as the paper), no DC protocol. About 20-40 s per set on 2 cores.
    cfg.eval.every = 0
    cfg.eval.num_seeds = 1
    cfg.eval.dc_protocol = False


def _tiny_cuts(config: ml_collections.ConfigDict) -> None:
  """Tests: every config's `quick` preset (20 real images per class, width-8 nets (4 for
  MTT and its experts), 2 outer iterations), one protocol-A seed of 5 steps, no DC protocol."""
  for cfg in config.distill.values():
    cfg.eval.num_seeds = 1
    cfg.eval.dc_protocol = False
    cfg.eval.protocol_a_steps = 5
  config.experts.num_experts = 2
  config.experts.experts_per_batch = 2


def _paper_settings(config: ml_collections.ConfigDict) -> None:
  """The paper's sets are mean/std-normalised, never ZCA-whitened (the paper's released sets:
  models trained on them reach 43-59 % on non-whitened test images), so every method and MTT's
  experts use `standardize`, even where a method's published CIFAR-10 row whitens (MTT,
  BPTT, KIP). Everything else is each method's published CIFAR-10 IPC row (width-128
  ConvNet-3, published iterations, 5-seed evaluation with protocol A and the DC protocol)."""
  config.experts.preprocess = "standardize"
  # The paper's BPTT is Remember-the-Past (its networks, data utilities and protocol A
  # come from that codebase), so BPTT follows the RTP preset
  # (150 fully differentiated inner steps of SGD 0.01/0.9, images by SGD 0.1/0.5, clip 2,
  # noise init) at every IPC, not the RaT-BPTT rows configs/distill/bptt.py uses for
  # CIFAR-10 IPC 10.
  rtp = dict(bptt.RTP_PRESET)
  config.distill.bptt.init = rtp.pop("init")
  config.distill.bptt.learn_labels = rtp.pop("learn_labels")
  rtp.pop("preprocess")
  config.distill.bptt.bptt.update(rtp)
  for cfg in config.distill.values():
    cfg.preprocess = "standardize"
    cfg.eval.num_seeds = 5


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, dataset="mnist5k", size="demo", ipc=10)
  if arg.size not in SIZES:
    raise ConfigError(f"Unknown size {arg.size!r}; expected one of {SIZES}.")
  quick = ",quick" if arg.size == "tiny" else ""
  # The CPU-sized (mnist5k) settings for another 28x28x1 dataset at tiny and demo: see
  # configs/common.py (mnist5k has them at every size; the flag changes nothing there).
  cpu = ",cpu" if arg.size in common.CPU_SIZES and arg.dataset in common.CPU_SIZED_DATASETS else ""
  config = ml_collections.ConfigDict()
  config.dataset = arg.dataset
  config.size = arg.size
  config.ipc = arg.ipc
  config.seed = 0
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.progress = arg.size != "tiny"
  config.methods = DEFAULT_METHODS     # comma-separated keys of config.distill, in run order
  config.analyses = "all"              # comma-separated names of ddjax.analysis.names(), or all
  # On a failing method or analysis: record it, go on with the rest, write the report
  # (which lists the failure) and exit non-zero. False: stop at the first failure.
  config.keep_going = True
  # shipped: analyse the converged sets that ship with ddjax (ddjax/distill/pretrained.py),
  # distilling only methods with no shipped set at this dataset and IPC; distil: distil
  # every method here with config.distill (the demo's cut iterations at size=demo).
  config.sets = "shipped" if arg.size in ("demo", "full") else "distil"

  config.experts = experts_config.get_config(f"dataset={arg.dataset}{quick}{cpu}")
  config.distill = ml_collections.ConfigDict()
  for method, module in METHOD_CONFIGS.items():
    config.distill[method] = module.get_config(f"dataset={arg.dataset},ipc={arg.ipc}{quick}{cpu}")
  # Another seed's random real subset: a baseline that shares no draw with the sets'
  # initialisation (the mixing analysis's baseline at size=full).
  config.distill.random_independent = random_config.get_config(
      f"dataset={arg.dataset},ipc={arg.ipc}{quick}{cpu}")
  # MTT's experts are trained into <workdir>/experts (set at run time when this is "").
  config.distill.mtt.mtt.buffer_dir = ""

  from configs.analysis import paper  # pylint: disable=g-import-not-at-top
  config.analysis = paper.get_config(f"dataset={arg.dataset},size={arg.size}")
  # config.analysis.distilled is set at run time to <workdir>/distill.

  if arg.size == "demo":
    _demo_cuts(config)
  elif arg.size == "full":
    # The shipped sets at the analyses' faithful settings; the shipped independent random
    # draw joins as the mixing/sensitivity baseline.
    config.methods = DEFAULT_METHODS + ",random_independent"
  elif arg.size == "tiny":
    _tiny_cuts(config)
  else:
    _paper_settings(config)
  if arg.size == "tiny":  # the quick MTT config and the quick experts agree (width 4)
    config.experts.model_kwargs.width = config.distill.mtt.model_kwargs.width
    config.experts.train_per_class = config.distill.mtt.train_per_class

  # One seed, data directory and progress switch for every stage.
  for name, sub in [("experts", config.experts), ("analysis", config.analysis),
                    *config.distill.items()]:
    sub.seed = (config.get_ref("seed") + 1 if name == "random_independent"
                else config.get_ref("seed"))
    sub.data_dir = config.get_ref("data_dir")
    sub.progress = config.get_ref("progress")
  return config
