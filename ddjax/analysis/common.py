"""What every analysis shares: real data, distilled sets in one space, real-trained models,
its config section, results and figures in the workdir.

An analysis (ddjax/analysis/__init__.py) reads the real dataset and the distilled sets
named in `config.distilled`, writes `<workdir>/<name>.json` and PNG figures, and returns
the JSON's content. `config` fields used here:

  dataset, data_dir, preprocess, seed, train_per_class, test_per_class   (the real data)
  distilled: "name=path,name=path" or a directory holding <name>/distilled.npz
  real_model: model, model_kwargs, epochs, batch_size, learning_rate, momentum
              (protocol B on the real train split; trained once, cached)
  cache_dir:  the analyses' cache (`ddjax.analysis.cache`; "" = <workdir>/cache)
  progress:   progress bars on a terminal
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddjax import classifier, data, models, progress_bar, train, workdir as workdir_lib
from ddjax.analysis import cache, methods
from ddjax.distill import synset
from ddjax.errors import ConfigError

__all__ = ["DistilledSetError", "AnalysisData", "parse_distilled", "convert_space",
           "real_data_config", "load_analysis_data", "is_learned", "learned_names",
           "ordered_set_names", "selected_names", "section", "section_inputs", "to_dict",
           "fmt", "progress", "train_real_model", "real_model_from_config", "write_results",
           "read_results", "save_figure", "display_images"]

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

  Args:
    spec: `config.distilled`: a mapping or ConfigDict {name: path}, a
      "name=path,name=path" string, or a directory path; empty for none.

  Returns:
    {set name: path of its `distilled.npz`}; {} for an empty spec.

  Raises:
    DistilledSetError: a directory without any `<name>/distilled.npz`, or an entry
      without "=".
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
  """Model-space images of one preprocessor -> model space of another (via [0, 1] pixels).

  Args:
    images: float [N, H, W, C] images in `source`'s model space.
    source: the preprocessor the images were made with.
    target: the preprocessor of the space wanted.

  Returns:
    float32 [N, H, W, C] images in `target`'s space (unchanged when the two
    preprocessors are the same).
  """
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
  """The real-data fields of an analysis config, for `classifier.load_preprocessed`.

  Args:
    config: an analysis config (dataset, and optionally data_dir, preprocess, seed,
      train_per_class, test_per_class).

  Returns:
    A new ConfigDict with those six fields, defaults filled in ("standardize", seed 0,
    0 per class = the whole split).
  """
  return ml_collections.ConfigDict({
      "dataset": config.dataset, "data_dir": config.get("data_dir"),
      "preprocess": config.get("preprocess", "standardize"), "seed": config.get("seed", 0),
      "train_per_class": config.get("train_per_class", 0) or 0,
      "test_per_class": config.get("test_per_class", 0) or 0})


def load_analysis_data(config: ml_collections.ConfigDict, *,
                       require_distilled: bool = True) -> AnalysisData:
  """The real data (model space) and the distilled sets, validated and converted.

  Args:
    config: an analysis config (the real-data fields and `distilled`).
    require_distilled: raise when `config.distilled` names no set.

  Returns:
    AnalysisData: the real dataset in model space, its preprocessor, and
    {name: DistilledSet} with each set's images converted into that space.

  Raises:
    DistilledSetError: no sets (when required), an unreadable or mismatched set, or a
      set distilled from another dataset.
    ConfigError: from loading the real data (e.g. an unknown preprocessing).
    DatasetError: the real dataset cannot be loaded.
  """
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
  """A synthesised set (not the random-real baseline, which is plain real train images).

  Args:
    dset: a distilled set.

  Returns:
    True unless its method is "random".
  """
  return dset.method != "random"


def learned_names(result: dict) -> list[str]:
  """The learned sets of an analysis's JSON (every set but the random-real control).

  Args:
    result: an analysis's JSON with `sets` (set name -> entry with a `learned` flag) and,
      if the analysis writes one, `set_order`.

  Returns:
    The learned sets' names in `set_order` (else in the order of `sets`); [] when the JSON
    has no sets.
  """
  sets = result.get("sets") or {}
  return [n for n in result.get("set_order", sets) if sets[n].get("learned")]


def ordered_set_names(distilled: dict[str, synset.DistilledSet],
                      order: tuple[str, ...] = methods.PAPER_ORDER) -> list[str]:
  """Set names sorted by `methods.order_key`: the methods of `order` first (in that
  order), then other learned sets, the random-real control last; ties by name.

  Args:
    distilled: {name: DistilledSet}.
    order: the method order, `methods.PAPER_ORDER` or `methods.FIG2_ORDER`.

  Returns:
    The set names, sorted.
  """
  return sorted(distilled, key=lambda n: methods.order_key(n, distilled[n].method, order))


def selected_names(section: ml_collections.ConfigDict, distilled: dict[str, synset.DistilledSet],
                   what: str, order: tuple[str, ...] = methods.PAPER_ORDER) -> list[str]:
  """The sets named in `section.sets` ("" = all), in `order` (see `ordered_set_names`).

  Args:
    section: an analysis's config section; its `sets` is a comma-separated list of
      set names, or empty.
    distilled: {name: DistilledSet}, the sets loaded.
    what: the section's name, for the error message.
    order: the method order.

  Returns:
    The selected set names, in `order`.

  Raises:
    DistilledSetError: naming sets that are not among the distilled sets.
  """
  ordered = ordered_set_names(distilled, order)
  spec = str(section.get("sets", "") or "")
  if not spec.strip():
    return ordered
  wanted = [s.strip() for s in spec.split(",") if s.strip()]
  unknown = [w for w in wanted if w not in distilled]
  if unknown:
    raise DistilledSetError(f"config.{what}.sets names {unknown}, which are not among the "
                            f"distilled sets {ordered}.")
  return [n for n in ordered if n in wanted]


def section(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """`config.<name>`, the analysis's section.

  Args:
    config: the analysis config.
    name: the section's name (usually the analysis's).

  Returns:
    The section's ConfigDict.

  Raises:
    ConfigError: if the config has none (build it with configs/analysis/paper.py).
  """
  found = config.get(name)
  if found is None:
    raise ConfigError(f"config has no {name!r} section; build the config with "
                      "configs/analysis/paper.py (or add the analysis's default_config()).")
  return found


def section_inputs(config: ml_collections.ConfigDict, name: str,
                   validate: Callable[[ml_collections.ConfigDict], Any] | None = None
                   ) -> tuple[ml_collections.ConfigDict, AnalysisData, list[str]]:
  """The start of an analysis that works on the sets its section selects.

  The section is checked before any data is read, so a bad config fails at once.

  Args:
    config: the analysis config.
    name: the analysis's section (`config.<name>`), also named in error messages.
    validate: checks the section (raising ConfigError); None for no check.

  Returns:
    (the section, the real data and the distilled sets in its space, the sets that
    `config.<name>.sets` selects in `methods.PAPER_ORDER`).

  Raises:
    ConfigError: without the section, or from `validate`.
    DistilledSetError: for no, mismatched or unknown distilled sets.
  """
  found = section(config, name)
  if validate is not None:
    validate(found)
  adata = load_analysis_data(config)
  return found, adata, selected_names(found, adata.distilled, name)


def to_dict(section_or_dict) -> dict:
  """A ConfigDict (or mapping) as a plain dict, for JSON.

  Args:
    section_or_dict: a ConfigDict or a mapping.

  Returns:
    A plain dict (nested ConfigDicts become dicts; a mapping is copied shallowly).
  """
  if isinstance(section_or_dict, ml_collections.ConfigDict):
    return section_or_dict.to_dict()
  return dict(section_or_dict)


def fmt(x: float | None, digits: int = 2) -> str:
  """A number for a claim row's text: `digits` decimals, "n/a" for None.

  Args:
    x: the number, or None.
    digits: decimals shown.

  Returns:
    The formatted string.
  """
  return "n/a" if x is None else f"{x:.{digits}f}"


def progress(config: ml_collections.ConfigDict, iterable: Iterable | None = None, **kwargs):
  """`progress_bar.bar`, on when `config.progress` is (and the output is a terminal).

  Args:
    config: the analysis config; its `progress` (default False) turns the bar on.
    iterable: what to iterate over; None for a bar advanced with `.update()`.
    **kwargs: passed to tqdm (desc, total, ...).

  Returns:
    The tqdm bar.
  """
  return progress_bar.bar(iterable, enabled=bool(config.get("progress", False)), **kwargs)


# ----------------------------------------------------------------------------- real models


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
  """A model trained on the real train split with protocol B (SGD, momentum, minibatches).

  Args:
    real: the real dataset (model space).
    model_name: a `ddjax.models` registry name.
    model_kwargs: its constructor arguments.
    seed: initialisation and batch order.
    epochs, batch_size, learning_rate, momentum: protocol B's settings.
    cache_dir: if given, the variables are cached there (`ddjax.analysis.cache`, keyed by
      dataset, model, kwargs and every setting), so every analysis of a reproduction
      shares one real model.

  Returns:
    (model, variables).
  """
  kwargs = dict(model_kwargs or {})
  name = models.canonical_model_name(model_name)
  model, fit = _train_fn(name, tuple(sorted(kwargs.items())), real.num_classes, int(epochs),
                         int(batch_size), float(learning_rate), float(momentum))
  key = jax.random.PRNGKey(seed)

  def compute():
    return jax.device_get(fit(key, jnp.asarray(real.x_train), jnp.asarray(real.y_train)))

  if not cache_dir:
    return model, compute()
  template = models.init_variables(model, key, real.x_train.shape)
  payload = {"dataset": real.name, "model": model_name, "kwargs": kwargs, "seed": seed,
             "epochs": epochs, "batch_size": batch_size, "lr": learning_rate,
             "momentum": momentum, "n": int(real.x_train.shape[0])}
  return model, cache.cached_tree(cache_dir, f"real_model_{name}", payload, template, compute)


def real_model_from_config(config: ml_collections.ConfigDict, real: data.ImageDataset,
                           workdir: str, model_name: str | None = None,
                           model_kwargs: dict | None = None, seed: int | None = None):
  """`train_real_model` with the settings of `config.real_model` (overridable).

  Args:
    config: the analysis config (`real_model`, `seed`, `cache_dir`).
    real: the real dataset (model space).
    workdir: the analysis's output directory (for the default cache directory).
    model_name: overrides `config.real_model.model`.
    model_kwargs: overrides the constructor arguments; None = `real_model.model_kwargs`
      for the configured model, {} for another.
    seed: overrides `config.seed`.

  Returns:
    (model, variables), cached in `cache.cache_dir(config, workdir)`.
  """
  rm = config.real_model
  name = model_name or rm.model
  if model_kwargs is None:
    model_kwargs = dict(rm.model_kwargs) if models.canonical_model_name(name) == \
        models.canonical_model_name(rm.model) else {}
  return train_real_model(real, name, model_kwargs, seed=config.seed if seed is None else seed,
                          epochs=rm.epochs, batch_size=rm.batch_size,
                          learning_rate=rm.learning_rate, momentum=rm.momentum,
                          cache_dir=cache.cache_dir(config, workdir))


# ----------------------------------------------------------------------------- outputs


def write_results(workdir: str, name: str, results: dict) -> str:
  """Writes `<workdir>/<name>.json` (atomically); returns its path.

  Args:
    workdir: the output directory (created if missing).
    name: the analysis's name.
    results: the JSON-able results.

  Returns:
    The JSON file's path.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, f"{name}.json")
  workdir_lib.write_json(path, results)
  return path


def read_results(workdir: str, name: str) -> dict | None:
  """`<workdir>/<name>.json`, or None if there is none.

  Args:
    workdir: the output directory.
    name: the analysis's name.

  Returns:
    The parsed JSON, or None.
  """
  path = os.path.join(workdir, f"{name}.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def save_figure(fig, workdir: str, filename: str) -> str:
  """Saves a matplotlib figure as `<workdir>/<filename>` (PNG, 120 dpi), closes it, and
  returns the path.

  Args:
    fig: the matplotlib figure.
    workdir: the output directory (created if missing).
    filename: the file's name, e.g. "agreement.png".

  Returns:
    The PNG's path.
  """
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, filename)
  fig.savefig(path, dpi=120, bbox_inches="tight")
  plt.close(fig)
  return path


def display_images(images: np.ndarray, preprocessor: data.Preprocessor) -> np.ndarray:
  """Model space -> [0, 1] images for plotting (clipped).

  Args:
    images: float [N, H, W, C] images in `preprocessor`'s model space.
    preprocessor: the preprocessor they were made with.

  Returns:
    float32 [N, H, W, C] images in [0, 1].
  """
  return np.clip(np.asarray(preprocessor.invert(np.asarray(images, np.float32))), 0.0, 1.0)
