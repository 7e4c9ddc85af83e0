"""The tiny setup of the paper's section-4 analyses' tests (agreement,
recognition_over_training, curvature_over_training; tests/test_analysis_<name>.py).

mnist5k at 20 train / 10 test images per class, ConvNet width 8 depth 2, two distilled
sets of 2 images per class (real images plus noise, one called "dm", one the random
baseline).
"""

import jax
import ml_collections
import numpy as np

from configs.analysis import common as analysis_config
from ddjax import classifier, data
from ddjax.analysis import common
from ddjax.distill import synset

IPC = 2
Q2 = ("agreement", "recognition_over_training", "curvature_over_training")


def tiny_config(distilled: str) -> ml_collections.ConfigDict:
  """The tiny analysis config with the three sections, reading `distilled`."""
  config = analysis_config.base_config("mnist5k", "tiny")
  for name in Q2:
    analysis_config.add_section(config, name)
  config.distilled = distilled
  # Depth 2 (of 3): a quarter less compile time for the seven compiled training programs.
  config.model_kwargs.depth = 2
  config.real_model.model_kwargs.depth = 2
  config.agreement.subset_fractions = [0.1]   # one subset size (2 per class): one compile
  # The real-data trace on 20 images, the size of each distilled set: one compiled HVP.
  config.curvature_over_training.train_subset = 10 * IPC
  config.curvature_over_training.hvp_batch_size = 10 * IPC
  return config


def make_setup(root) -> tuple[ml_collections.ConfigDict, str, common.AnalysisData]:
  """Writes the two tiny distilled sets under `root`; returns (config, workdir, data)."""
  config = tiny_config("")
  real, pre = classifier.load_preprocessed(common.real_data_config(config))
  rng = np.random.default_rng(0)
  paths = []
  for i, (name, method) in enumerate((("dm", "dm"), ("random", "random"))):
    idx = data.class_balanced_indices(jax.random.PRNGKey(10 + i), real.y_train, IPC, 10)
    images = real.x_train[idx] + (0.3 * rng.standard_normal(real.x_train[idx].shape)
                                  if method != "random" else 0.0)
    dset = synset.DistilledSet(images=np.asarray(images, np.float32),
                               labels=real.y_train[idx].astype(np.int32), method=method,
                               dataset=real.name, ipc=IPC, num_classes=10, preprocessor=pre)
    paths.append(f"{name}={synset.save_distilled(str(root / name / 'distilled.npz'), dset)}")
  config = tiny_config(",".join(paths))
  return config, str(root / "work"), common.load_analysis_data(config)
