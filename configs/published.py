r"""Fashion-MNIST at each method's published settings, and the published accuracies.

    python -m launch.distill --config=configs/published.py:method=dsa,ipc=10 \
        --workdir=workdirs/published/dsa_ipc10
    python -m launch.train_experts --config=configs/published.py:method=experts \
        --workdir=workdirs/published/experts            # before method=mtt (set its buffer_dir)
    python -m launch.train --config=configs/published.py:method=whole \
        --workdir=workdirs/published/whole
    python -m benchmarks.published_table       # every row, resumable (make published-table)

Arguments (`--config=configs/published.py:method=dc,ipc=1,size=tiny`): method (random,
dc, dsa, dm, mtt, kip, bptt; `experts` gives MTT's expert config for
launch/train_experts.py, `whole` the full-data training config for launch/train.py), ipc
(1, 10, 50), size (published, or tiny: each method's `quick` setting, for tests).

Each distillation config is the method's own `configs/distill/<method>.py` at
`dataset=fashion_mnist,ipc=N`, which already holds its published hyperparameters (their
docstrings cite them), with the published evaluation laid over it: the DC protocol
(`evaluate_synset`: ConvNet-3 width 128, SGD 0.01, momentum 0.9, wd 5e-4, lr x0.1 at the
midpoint, batch 256) over 20 networks, the `num_eval` default of the DC code that
produced the DC/DSA rows. Per method (checked against `VICO-UoE/DatasetCondensation`
`main.py`, `utils.py` and `readme.md`; the other methods' published tables have no
Fashion-MNIST row):

* random: `ipc` real images per class (the subset every real-initialised method starts
  from), DC protocol 300 epochs, no augmentation.
* dc: the published row is Fashion-MNIST's own; the DC code uses one set of
  hyperparameters for every dataset (1000 iterations, noise init, lr_img 0.1, (outer,
  inner) loops 1/1 and 10/50). `get_daparam` augments only MNIST, so the evaluation is
  300 epochs without augmentation.
* dsa: Fashion-MNIST's own row; real init, DSA `color_crop_cutout_flip_scale_rotate`
  (the DSA README keeps flip for Fashion-MNIST, drops it for digits), evaluation 1000
  epochs with DSA.
* dm: no Fashion-MNIST (or MNIST) row was published; the DM code's defaults (20,000
  iterations, lr_img 1, batch_real 256, DSA with flip), evaluation 1000 epochs with DSA.
* mtt: no Fashion-MNIST or MNIST row (the MTT code has no MNIST loader); the CIFAR-10
  rows of configs/distill/mtt.py without ZCA. Experts (method=experts): `buffer.py` (SGD
  0.01, momentum 0, no weight decay, batch 256, DSA), 100 experts, but trained for
  max_start_epoch + expert_epochs = 22 epochs instead of 50: MTT never reads a later
  snapshot (MTT#4), so the distillation is the same. IPC 50 needs 42
  (`--config.num_epochs=42`). Evaluation: the learned lr, 1000 epochs, DSA.
* kip: configs/distill/kip.py (pooled ConvNet NTK, mean/std-normalised, Adam 0.01,
  hard labels, 1000 iterations); the published row (KIP-ConvNet, NeurIPS 2021, Table 2,
  "KIP to NN") trained its images with augmentation and learned labels and evaluated a
  finite ConvNet whose exact settings are in its appendix, which was not readable here;
  here the DC protocol, 300 epochs.
* bptt: no Fashion-MNIST row retrieved (RaT-BPTT's Table 1 was not readable); the
  CIFAR-10 rows of configs/distill/bptt.py (IPC 1 RTP, IPC 10 RaT-BPTT), without ZCA.
* whole: ConvNet-128 on all 60,000 training images with the DC protocol's optimiser for
  300 epochs (the no-augmentation epoch count; the DC paper's whole-dataset setting was
  not retrieved), 3 seeds.

`PUBLISHED` holds the published numbers (test accuracy in %, mean and standard deviation)
with their sources; a std of None means the source gives none, a mean of None that no
Fashion-MNIST row was published. The published stds are over 100 networks (5
distillations x 20 networks); ddjax's are over the 20 networks of one distillation.

Expected result: every measured row within 2 published standard deviations of
`PUBLISHED`, or explained in BUILD_NOTES.md ("Fashion-MNIST and the published table"),
which holds the table; the distillation rows need a GPU.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from configs import common
from configs import experts as experts_config
from configs import train as train_config
from configs.distill import bptt, dc, dm, dsa, kip, mtt, random

DATASET = "fashion_mnist"
METHODS = {"random": random, "dc": dc, "dsa": dsa, "dm": dm, "mtt": mtt, "kip": kip,
           "bptt": bptt}
TABLE_IPCS = (1, 10)                    # the rows benchmarks/published_table.py runs
EVAL_NETWORKS = 20                      # DC main.py --num_eval default
WHOLE_SEEDS = 3
SIZES = ("published", "tiny")


@dataclasses.dataclass(frozen=True)
class Published:
  """A published accuracy (%) and where it comes from; mean None = no published row."""
  mean: float | None
  std: float | None
  source: str


_DC_README = "DC README Table 1 (VICO-UoE/DatasetCondensation readme.md)"
_DSA_README = "DC README, DSA Table 2 (VICO-UoE/DatasetCondensation readme.md)"
_KIP_T1 = "std from KIP-ConvNet (NeurIPS 2021) Table 1, which quotes it"
_KIP_T2 = "KIP-ConvNet (NeurIPS 2021) Table 2, KIP to NN (finite ConvNet), no std given"
_DC_PAPER_T1 = ("DC/DSA papers' Table 1 (random-subset and whole-dataset baselines); not "
                "checked against a readable copy of the tables, no std quoted")
# The DSA abstract gives DSA's IPC-50 accuracy as 94.9 % of the whole-dataset one on
# Fashion-MNIST; with DSA's verified 88.7, only a whole-dataset mean of 93.5 rounds to it
# (93.4 gives 95.0, 93.6 gives 94.8).
_WHOLE = ("DC/DSA papers' Table 1 as quoted in issue 16; no readable table, but the mean "
          "is implied by the DSA abstract (IPC 50 is 94.9 % of whole: 88.7 / 93.5); no std")
_NONE_DM = "none: the DM paper reports CIFAR-10/100 and TinyImageNet only"
_NONE_MTT = "none: MTT reports CIFAR-10/100, TinyImageNet, ImageNet subsets (no MNIST loader)"
_NONE_BPTT = "none retrieved: RaT-BPTT Table 1 (arXiv 2311.07025) was not readable here"

PUBLISHED: dict[tuple[str, int], Published] = {
    ("random", 1): Published(51.4, None, _DC_PAPER_T1),
    ("random", 10): Published(73.8, None, _DC_PAPER_T1),
    ("random", 50): Published(82.5, None, _DC_PAPER_T1),
    ("whole", 0): Published(93.5, None, _WHOLE),
    ("dc", 1): Published(70.5, 0.6, f"{_DC_README}; {_KIP_T1}"),
    ("dc", 10): Published(82.3, 0.4, f"{_DC_README}; {_KIP_T1}"),
    ("dc", 50): Published(83.6, 0.4, f"{_DC_README}; {_KIP_T1}"),
    ("dsa", 1): Published(70.6, 0.6, f"{_DSA_README}; {_KIP_T1}"),
    ("dsa", 10): Published(84.6, 0.3, f"{_DSA_README}; {_KIP_T1}"),
    ("dsa", 50): Published(88.7, 0.2, f"{_DSA_README}; {_KIP_T1}"),
    ("kip", 1): Published(73.8, None, _KIP_T2),
    ("kip", 10): Published(86.8, None, _KIP_T2),
    ("kip", 50): Published(87.8, None, _KIP_T2),
    **{("dm", n): Published(None, None, _NONE_DM) for n in (1, 10, 50)},
    **{("mtt", n): Published(None, None, _NONE_MTT) for n in (1, 10, 50)},
    **{("bptt", n): Published(None, None, _NONE_BPTT) for n in (1, 10, 50)},
}


def published(method: str, ipc: int) -> Published:
  """The published row for (method, ipc); ipc is ignored for `whole`."""
  return PUBLISHED.get((method, 0 if method == "whole" else ipc),
                       Published(None, None, "none: no published row"))


def std_difference(ddjax_mean: float, row: Published) -> float | None:
  """(ddjax - published) in published standard deviations; None without a published std.

  Args:
    ddjax_mean: ddjax's mean test accuracy in %.
    row: the published row.

  Returns:
    The difference over the published std, or None if the row has no mean or no std.
  """
  if row.mean is None or not row.std:
    return None
  return (ddjax_mean - row.mean) / row.std


def expert_epochs(ipcs=TABLE_IPCS) -> int:
  """Epochs the MTT experts need for these IPCs: max_start_epoch + expert_epochs."""
  return max(p[1] + p[2] for (d, n), p in mtt.PRESETS.items() if d == "cifar10" and n in ipcs)


def distill_config(method: str, ipc: int, size: str = "published") -> ml_collections.ConfigDict:
  """The method's Fashion-MNIST config with the published evaluation (see the docstring)."""
  if method not in METHODS:
    raise ValueError(f"Unknown method {method!r}; expected one of {sorted(METHODS)}, "
                     "or experts / whole.")
  quick = ",quick" if size == "tiny" else ""
  config = METHODS[method].get_config(f"dataset={DATASET},ipc={ipc}{quick}")
  config.eval.dc_protocol = True
  if size == "tiny":
    # Two iterations in one chunk (a test splits them with --max_chunk_iterations=1).
    config.num_iterations = 0 if method == "random" else 2
    config.checkpoint_every = 2
    config.log_every = 1
    config.eval.every = 0
  else:
    config.eval.num_seeds = EVAL_NETWORKS
    # Networks per vmapped evaluation call. 10 (width 128, all 10,000 test images) was
    # killed for memory at 24 GB RSS on the 2-core, 24 GB CPU machine; 2 bounds it there.
    # A GPU with room can raise it (--config.eval.seed_chunk=10) for speed.
    config.eval.seed_chunk = 2
  if method == "mtt":
    config.mtt.buffer_dir = ""              # the caller points it at its expert buffer
  return config


def experts_config_for(size: str = "published") -> ml_collections.ConfigDict:
  """MTT's Fashion-MNIST experts (`buffer.py` settings; see the docstring)."""
  if size == "tiny":
    config = experts_config.get_config(f"dataset={DATASET},quick")
    probe = distill_config("mtt", 1, "tiny")  # the quick experts must fit the quick MTT
    config.model_kwargs.width = probe.model_kwargs.width
    config.train_per_class = probe.train_per_class
    config.num_epochs = max(config.num_epochs, probe.mtt.max_start_epoch + probe.mtt.expert_epochs)
    return config
  config = experts_config.get_config(f"dataset={DATASET}")
  config.num_epochs = expert_epochs()
  config.weight_decay = 0.0               # buffer.py's --l2 default
  return config


def whole_config(size: str = "published") -> ml_collections.ConfigDict:
  """ConvNet-128 on the whole training set with the DC protocol's optimiser."""
  config = train_config.get_config(f"dataset={DATASET}" + (",quick" if size == "tiny" else ""))
  config.weight_decay = 5e-4
  config.schedule = "midpoint"            # lr x0.1 at the middle, as evaluate_synset
  config.num_seeds = WHOLE_SEEDS          # benchmarks/published_table.py trains these vmapped
  config.eval_every_epochs = 10
  config.checkpoint_every_epochs = 1
  if size == "tiny":
    config.train_per_class = 0            # the whole (tiny) training set
    config.num_epochs = 3
    config.num_seeds = 2
  else:
    config.num_epochs = 300
  return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(arg, method="dsa", ipc=10, size="published")
  if arg.size not in SIZES:
    raise ValueError(f"Unknown size {arg.size!r}; expected one of {SIZES}.")
  if arg.method == "experts":
    return experts_config_for(arg.size)
  if arg.method == "whole":
    return whole_config(arg.size)
  return distill_config(arg.method, arg.ipc, arg.size)
