"""What every analysis shares: real data, distilled sets in one space, real-trained models,
results and figures in the workdir.

An analysis is `run_<name>(config, workdir) -> dict`: it reads the real dataset and the
distilled sets named in `config.distilled`, writes `<workdir>/<name>.json` and PNG figures,
and returns the JSON's content. `config` fields used here:

  dataset, data_dir, preprocess, seed, train_per_class, test_per_class   (the real data)
  distilled: "name=path,name=path" or a directory holding <name>/distilled.npz
  real_model: model, model_kwargs, epochs, batch_size, learning_rate, momentum
              (protocol B on the real train split; trained once, cached in cache_dir)
  cache_dir:  where real-trained models are cached ("" = <workdir>/real_models)
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import os
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy import stats

from ddjax import classifier, data, models, train, workdir as workdir_lib
from ddjax.distill import synset

DistilledSetError = synset.DistilledSetError


@dataclasses.dataclass(frozen=True)
class AnalysisData:
  """The real dataset in model space, and each distilled set converted into that space."""
  real: data.ImageDataset
  preprocessor: data.Preprocessor
  distilled: dict[str, synset.DistilledSet]


# ----------------------------------------------------------------------------- inputs


def parse_distilled(spec: Any) -> dict[str, str]:
  """`config.distilled` -> {name: path}.

  Accepts a mapping, a "name=path,name=path" string, or a directory whose subdirectories
  hold `distilled.npz` (a reproduction's `distill/` folder), named by subdirectory.
  """
  if not spec:
    return {}
  if isinstance(spec, (dict, ml_collections.ConfigDict)):
    return {str(k): str(v) for k, v in dict(spec).items()}
  spec = str(spec)
  if os.path.isdir(spec):
    found = sorted(glob.glob(os.path.join(spec, "*", "distilled.npz")))
    if not found:
      raise DistilledSetError(f"No <name>/distilled.npz under {spec}.")
    return {os.path.basename(os.path.dirname(p)): p for p in found}
  out = {}
  for item in spec.split(","):
    if "=" not in item:
      raise DistilledSetError(f"Bad distilled-set entry {item!r}: expected name=path.")
    name, path = item.split("=", 1)
    out[name.strip()] = path.strip()
  return out


def convert_space(images: np.ndarray, source: data.Preprocessor,
                  target: data.Preprocessor) -> np.ndarray:
  """Model-space images of one preprocessor -> model space of another (via [0, 1] pixels)."""
  if source.kind == target.kind == "none":
    return np.asarray(images, np.float32)
  same = (source.kind == target.kind and all(
      (a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
      for a, b in ((source.mean, target.mean), (source.std, target.std),
                   (source.whiten, target.whiten))))
  if same:
    return np.asarray(images, np.float32)
  return np.asarray(target.apply(np.asarray(source.invert(np.asarray(images, np.float32)))),
                    np.float32)


def real_data_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "dataset": config.dataset, "data_dir": config.get("data_dir"),
      "preprocess": config.get("preprocess", "standardize"), "seed": config.get("seed", 0),
      "train_per_class": config.get("train_per_class", 0) or 0,
      "test_per_class": config.get("test_per_class", 0) or 0})


def load_analysis_data(config: ml_collections.ConfigDict, *,
                       require_distilled: bool = True) -> AnalysisData:
  """The real data (model space) and the distilled sets, validated and converted."""
  real, pre = classifier.load_preprocessed(real_data_config(config))
  paths = parse_distilled(config.get("distilled", ""))
  if require_distilled and not paths:
    raise DistilledSetError("No distilled sets given: set config.distilled to "
                            "'name=path/distilled.npz,...' or a directory of <name>/distilled.npz.")
  distilled = {}
  for name, path in paths.items():
    dset = synset.load_distilled(path, num_classes=real.num_classes, image_shape=real.image_shape)
    if dset.dataset != real.name:
      raise DistilledSetError(f"{path} was distilled from {dset.dataset!r}; this analysis "
                              f"uses {real.name!r}.")
    images = convert_space(dset.images, dset.preprocessor, pre)
    distilled[name] = dataclasses.replace(dset, images=images, preprocessor=pre)
  return AnalysisData(real=real, preprocessor=pre, distilled=distilled)


def is_learned(dset: synset.DistilledSet) -> bool:
  """A synthesised set (not the random-real baseline, which is plain real train images)."""
  return dset.method != "random"


def ordered_set_names(distilled: dict[str, synset.DistilledSet],
                      method_order: tuple[str, ...]) -> list[str]:
  """Sets of the methods in `method_order` first (in that order), then other learned
  sets, the random-real baseline last; ties by name."""
  def rank(name):
    method = distilled[name].method
    if method == "random":
      return (2, 0, name)
    if method in method_order:
      return (0, method_order.index(method), name)
    return (1, 0, name)
  return sorted(distilled, key=rank)


def array_digest(*arrays) -> str:
  """A short hash of arrays' shapes, dtypes and bytes: the key of a result cache."""
  h = hashlib.sha1()
  for a in arrays:
    a = np.ascontiguousarray(np.asarray(a))
    h.update(str((a.shape, a.dtype.str)).encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def read_npz(path: str) -> dict[str, np.ndarray] | None:
  """A cache file's arrays, or None if it is missing or unreadable (e.g. a kill mid-write:
  the entry is then recomputed and rewritten)."""
  if not os.path.exists(path):
    return None
  try:
    with np.load(path, allow_pickle=False) as f:
      return {k: f[k] for k in f.files}
  except Exception:  # pylint: disable=broad-except
    return None


def write_npz(path: str, **arrays) -> None:
  """Writes atomically (temporary file, then rename), so a kill never leaves half a file."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, **{k: np.asarray(v) for k, v in arrays.items()})
  os.replace(tmp, path)


def claim_rows(results: dict[str, dict], builders: dict[str, Any]) -> list[dict[str, Any]]:
  """The claim-table rows of the analyses present in `results`, in `builders`' order.

  builders: analysis name -> function of that analysis's JSON returning its rows.
  """
  rows = []
  for name, build in builders.items():
    if results.get(name):
      rows += build(results[name])
  return rows


# ----------------------------------------------------------------------------- real models


def _cache_key(dataset: str, model: str, model_kwargs: dict, fields: dict) -> str:
  text = json.dumps({"dataset": dataset, "model": model, "kwargs": model_kwargs, **fields},
                    sort_keys=True, default=str)
  return hashlib.sha1(text.encode()).hexdigest()[:12]


@functools.lru_cache(maxsize=8)
def _train_fn(model_name: str, kwargs: tuple, num_classes: int, epochs: int, batch_size: int,
              learning_rate: float, momentum: float):
  model = models.get_model(model_name, num_classes, **dict(kwargs))
  tx = train.sgd_momentum(learning_rate, momentum)

  def fit(key, x, y):
    init_key, train_key = jax.random.split(key)
    state = train.create_train_state(models.init_variables(model, init_key, x.shape), tx)
    state, _ = train.train_minibatch(model, tx, state, x, y, train_key, num_epochs=epochs,
                                     batch_size=min(batch_size, x.shape[0]))
    return state.variables

  return model, jax.jit(fit)


def train_real_model(real: data.ImageDataset, model_name: str, model_kwargs: dict | None = None,
                     *, seed: int = 0, epochs: int = 10, batch_size: int = 256,
                     learning_rate: float = 0.01, momentum: float = 0.9,
                     cache_dir: str | None = None) -> tuple[Any, dict]:
  """(model, variables) of `model_name` trained on the real train split with protocol B.

  Cached as `<cache_dir>/<model>-<hash>.msgpack` (the hash covers dataset, model, kwargs
  and training settings), so every analysis of a reproduction shares one real model.
  """
  kwargs = dict(model_kwargs or {})
  model, fit = _train_fn(models.canonical_model_name(model_name), tuple(sorted(kwargs.items())),
                         real.num_classes, int(epochs), int(batch_size), float(learning_rate),
                         float(momentum))
  key = jax.random.PRNGKey(seed)
  template = models.init_variables(model, key, real.x_train.shape)
  path = None
  if cache_dir:
    fields = dict(seed=seed, epochs=epochs, batch_size=batch_size, lr=learning_rate,
                  momentum=momentum, n=int(real.x_train.shape[0]))
    path = os.path.join(cache_dir, f"{models.canonical_model_name(model_name)}-"
                                   f"{_cache_key(real.name, model_name, kwargs, fields)}.msgpack")
    if os.path.exists(path):
      with open(path, "rb") as f:
        try:
          return model, flax.serialization.from_bytes(template, f.read())
        except Exception:  # pylint: disable=broad-except
          pass  # a corrupt cache entry is retrained and rewritten
  variables = fit(key, jnp.asarray(real.x_train), jnp.asarray(real.y_train))
  variables = jax.device_get(variables)
  if path:
    os.makedirs(cache_dir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
      f.write(flax.serialization.to_bytes(variables))
    os.replace(tmp, path)
  return model, variables


def real_model_from_config(config: ml_collections.ConfigDict, real: data.ImageDataset,
                           workdir: str, model_name: str | None = None,
                           model_kwargs: dict | None = None, seed: int | None = None):
  """`train_real_model` with the settings of `config.real_model` (overridable)."""
  rm = config.real_model
  name = model_name or rm.model
  if model_kwargs is None:
    model_kwargs = dict(rm.model_kwargs) if models.canonical_model_name(name) == \
        models.canonical_model_name(rm.model) else {}
  return train_real_model(real, name, model_kwargs, seed=config.seed if seed is None else seed,
                          epochs=rm.epochs, batch_size=rm.batch_size,
                          learning_rate=rm.learning_rate, momentum=rm.momentum,
                          cache_dir=config.get("cache_dir") or os.path.join(workdir, "real_models"))


# ----------------------------------------------------------------------------- outputs


def mean_ci(values, confidence: float = 0.95) -> dict[str, float]:
  """Mean, std and a Student-t confidence interval of the mean over seeds."""
  values = np.asarray(values, np.float64).ravel()
  n = values.size
  mean = float(values.mean())
  std = float(values.std(ddof=1)) if n > 1 else 0.0
  half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / np.sqrt(n)) if n > 1 else 0.0
  return {"mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half, "n": n}


def write_results(workdir: str, name: str, results: dict) -> str:
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, f"{name}.json")
  workdir_lib.write_json(path, results)
  return path


def read_results(workdir: str, name: str) -> dict | None:
  path = os.path.join(workdir, f"{name}.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def save_figure(fig, workdir: str, filename: str) -> str:
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, filename)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return path


def display_images(images: np.ndarray, preprocessor: data.Preprocessor) -> np.ndarray:
  """Model space -> [0, 1] images for plotting (clipped)."""
  return np.clip(np.asarray(preprocessor.invert(np.asarray(images, np.float32))), 0.0, 1.0)
