"""Hand-made distilled sets on tiny mnist5k for the tests of the paper's section 3 analyses
(tests/test_analysis_recognition.py, _embedding.py, _pixels.py).

Three sets: `random` (a class-balanced real subset), `shuffled` (the same images, every one
moved to the next class's label block: all labels wrong) and `outside` (constructed pixel
values, OUTSIDE_VALUES, partly outside [0, 1]).
"""

import jax
import numpy as np

from configs.analysis import common as analysis_common
from ddjax import data
from ddjax.analysis import common
from ddjax.distill import synset

IPC = 10  # images per class of the real-subset and shuffled sets (tiny: 20 train per class)
# The "outside" set: per image, these pixel values in [0, 1] scale, in these counts (of 784).
OUTSIDE_VALUES = ((-0.5, 78), (1.5, 39), (0.0, 300), (1.0, 100), (0.5, 267))
SECTIONS = ("recognition", "embedding", "pixels")


def tiny_config(distilled: str, cache_dir: str):
  """The tiny analysis config with the three sections, one recognition model."""
  config = analysis_common.base_config("mnist5k", "tiny")
  for name in SECTIONS:
    analysis_common.add_section(config, name)
  config.recognition.models = "convnet"   # one compiled training function keeps this fast
  config.distilled = distilled
  config.cache_dir = cache_dir
  return config


def save(path, images, labels, pre, method, ipc):
  return synset.save_distilled(path, synset.DistilledSet(
      images=np.asarray(images, np.float32), labels=np.asarray(labels, np.int32), method=method,
      dataset="mnist5k", ipc=ipc, num_classes=10, preprocessor=pre))


def outside_images(n: int) -> np.ndarray:
  """n images with exactly the pixel values of OUTSIDE_VALUES (the last image is in range)."""
  row = np.concatenate([np.full(count, v, np.float32) for v, count in OUTSIDE_VALUES])
  assert row.size == 28 * 28
  images = np.tile(row, (n, 1))
  images[-1] = np.clip(images[-1], 0.0, 1.0)
  return images.reshape(n, 28, 28, 1)


def make_env(tmp_path_factory, name: str) -> dict:
  """The three sets under a fresh directory, and the tiny config reading them.

  The real-model cache is shared by every test module of the session (one pytest worker),
  so the real ConvNets are trained once.
  """
  root = tmp_path_factory.mktemp(name)
  cache_dir = str(tmp_path_factory.getbasetemp() / "q1_cache")
  probe = tiny_config("", cache_dir)
  adata = common.load_analysis_data(probe, require_distilled=False)
  real, pre = adata.real, adata.preprocessor
  idx = data.class_balanced_indices(jax.random.PRNGKey(7), real.y_train, IPC, 10)
  x_sub, y_sub = real.x_train[idx], real.y_train[idx]
  sets = root / "sets"
  save(str(sets / "random" / "distilled.npz"), x_sub, y_sub, pre, "random", IPC)
  # Every image moved to the next class's label block: labels are all wrong.
  save(str(sets / "shuffled" / "distilled.npz"), np.roll(x_sub, IPC, axis=0), y_sub, pre,
       "shuffled", IPC)
  outside = outside_images(20)
  save(str(sets / "outside" / "distilled.npz"), pre.apply(outside), np.repeat(np.arange(10), 2),
       pre, "constructed", 2)
  config = tiny_config(str(sets), cache_dir)
  return dict(config=config, workdir=str(root / "work"), real=real, pre=pre, root=root,
              outside=outside)
