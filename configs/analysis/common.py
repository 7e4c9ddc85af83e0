"""Fields every analysis config shares (the real data, the distilled sets, the real model),
and `add_section`, which adds one analysis's section.

configs/analysis/paper.py assembles them all.
"""

import importlib

import ml_collections

from configs import common
from ddjax import analysis
from ddjax.errors import ConfigError


SIZES = ("tiny", "demo", "full", "paper")


def base_config(dataset: str = "mnist5k", size: str = "demo") -> ml_collections.ConfigDict:
  """size: 'tiny' (tests, seconds), 'demo' (mnist5k on 2 CPU cores, lighter settings; also
  fashion_mnist, on 400 train and 100 test images per class),
  'full' (mnist5k at the paper's protocols: every seed, step and image; hours on a CPU),
  'paper' (the paper's CIFAR-10 settings, width 128, for a GPU)."""
  if size not in SIZES:
    raise ConfigError(f"Unknown size {size!r}; expected one of {', '.join(SIZES)}.")
  config = ml_collections.ConfigDict()
  config.size = size
  config.seed = 0
  config.dataset = dataset
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.preprocess = "standardize"
  config.train_per_class = 0
  config.test_per_class = 0
  config.distilled = ""            # "name=path,..." or a directory of <name>/distilled.npz
  config.cache_dir = ""            # real-trained models; "" = <workdir>/real_models
  config.progress = True

  # The network trained on distilled/real data throughout (the paper's ConvNet).
  config.model = "convnet"
  config.model_kwargs = common.model_kwargs("convnet")
  # The real-trained model (protocol B: SGD 0.01, momentum 0.9, batch 256).
  config.real_model = ml_collections.ConfigDict()
  config.real_model.model = "convnet"
  config.real_model.model_kwargs = common.model_kwargs("convnet")
  config.real_model.epochs = 10
  config.real_model.batch_size = 256
  config.real_model.learning_rate = 0.01
  config.real_model.momentum = 0.9
  # Protocol A (the paper's distilled-data training): 300 full-batch steps, SGD 0.01/0.9.
  config.protocol_a = ml_collections.ConfigDict(
      {"steps": 300, "learning_rate": 0.01, "momentum": 0.9, "num_seeds": 5})

  # At most this many models per vmapped call in the analyses' pools (0 = all at once;
  # ddjax.parallel.members_per_call): a memory bound, the results are the same. full
  # trains 25-30 models of one kind at a time, and 30 width-32 ConvNets evaluated on
  # 1,000 MNIST test images in one call went past 22 GB on the CPU (killed by the OOM
  # killer); the demo's pools (at most 8) peak at ~6 GB. tiny uses chunks too, so that
  # the tests run the chunked path full runs.
  config.member_chunk = {"full": 4, "tiny": 2}.get(size, 0)

  if size in ("tiny", "demo", "full"):
    # full: the width the shipped mnist5k sets were distilled and evaluated with.
    config.model_kwargs.width = 8 if size == "tiny" else 32
    config.real_model.model_kwargs.width = 8 if size == "tiny" else 32
  if size in common.CPU_SIZES and dataset in common.CPU_SIZED_DATASETS:
    # fashion_mnist: a class-balanced subset of mnist5k's size (4,000 train and 1,000 test
    # images; the test split too, since agreement, embedding and coherence scale with it).
    config.train_per_class, config.test_per_class = common.cpu_subset(dataset)
  if size == "tiny":
    config.train_per_class = 20
    config.test_per_class = 10
    config.real_model.epochs = 2
    config.real_model.batch_size = 64
    config.protocol_a.steps = 20
    config.protocol_a.num_seeds = 2
    config.progress = False
  return config


def add_section(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """Adds `config.<name>`: the analysis's `default_config()`, then `sized(section,
  config)` of configs/analysis/<name>.py if that file exists (the size's and dataset's
  settings; it may read the shared fields of `config`)."""
  module, key = analysis.load(name), analysis.key_of(name)
  config[key] = (module.default_config() if hasattr(module, "default_config")
                 else ml_collections.ConfigDict())
  try:
    sizing = importlib.import_module(f"configs.analysis.{key}")
  except ModuleNotFoundError as e:
    if e.name != f"configs.analysis.{key}":
      raise
    sizing = None
  if sizing is not None and hasattr(sizing, "sized"):
    sizing.sized(config[key], config)
  return config
