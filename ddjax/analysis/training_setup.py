"""What the mixing and sensitivity analyses share (the paper's section 3): training setups,
seeded runs, the sets they train on and the real images added to them.

Not an analysis itself (it defines no QUESTION/run): `ddjax.analysis.mixing` (the paper's
Fig. 3 right) and `ddjax.analysis.sensitivity` (claim 1, "outside the standard evaluation
setting") build on it.

* `TrainingSetup`: one way of training a fresh network on a small set; `standard_setup` is
  protocol A (full batch, SGD 0.01 / momentum 0.9, 300 steps) and `parse_variant` names a
  change of it: `standard`, `adam`, `lr_x<f>`, `steps_<n>`, `minibatch[_<b>]`, `augment`,
  `wd_<decay>`, `norm_<kind>`, `arch_<model>`.
* `setup_accuracies`: every run of one setup on one set is vmapped over seeds
  (`parallel.sharded_vmap`: the seed axis is split over local devices); seeds are the same
  init keys for every set, addition and variant, so all differences are paired.
* `run_accuracies`: the same, through the analyses' cache (`ddjax.analysis.cache`), one
  entry per (setup, seeds, data): an interrupted analysis resumes where it stopped, and
  sensitivity's `standard` run of a set is mixing's +0 run when their steps and seeds
  agree (the same entry, not trained twice).
* `collect_sets`, `addition_indices`, `mix`: the distilled sets, the random-real baseline,
  and the nested real additions of the paper's Fig. 3 right.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import re
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ddjax import augment, data, models, optim, parallel, train
from ddjax.analysis import cache, common
from ddjax.errors import ConfigError
from ddjax.models import layers

__all__ = ["DEFAULT_AUGMENT", "VARIANT_FORMS", "TrainingSetup", "standard_setup",
           "default_augment_strategy", "parse_variant", "variants_from_config",
           "make_optimizer", "seed_run_fn", "seed_keys", "setup_accuracies", "run_accuracies",
           "addition_indices", "mix", "AnalysedSet", "as_list", "collect_sets", "key_array",
           "num_seeds", "finish_run"]

# Digit datasets: horizontal flips change a digit's meaning (DSA drops 'flip' for MNIST).
_DIGIT_DATASETS = ("mnist", "mnist5k", "emnist", "svhn", "svhn_cropped", "kmnist", "usps")
DEFAULT_AUGMENT = "color_crop_cutout_flip_scale_rotate"  # DSA's evaluation strategy


# ----------------------------------------------------------------------------- setups


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
  """One way of training a fresh network on a small set (hashable: it keys the jit cache).

  batch_size 0 means full batch (protocol A); augment is a DSA strategy or "none".
  """
  name: str
  model: str
  model_kwargs: tuple[tuple[str, Any], ...]
  optimizer: str = "sgd"           # "sgd" (momentum) or "adam"
  learning_rate: float = 0.01
  momentum: float = 0.9
  weight_decay: float = 0.0
  num_steps: int = 300
  batch_size: int = 0
  augment: str = "none"

  def steps_run(self, num_examples: int) -> int:
    """Optimiser steps actually taken on a set.

    Args:
      num_examples: the set's number of images.

    Returns:
      `num_steps`, or for a minibatch setup as many whole epochs as give at least
      `num_steps` steps.
    """
    if not self.batch_size or self.batch_size >= num_examples:
      return self.num_steps
    per_epoch = train.steps_per_epoch(num_examples, self.batch_size)
    return per_epoch * (-(-self.num_steps // per_epoch))

  def describe(self) -> dict:
    """The setup's fields as a JSON-ready dict (model_kwargs as a dict)."""
    out = dataclasses.asdict(self)
    out["model_kwargs"] = dict(self.model_kwargs)
    return out


def _kwargs_tuple(kwargs: Any) -> tuple[tuple[str, Any], ...]:
  return tuple(sorted((str(k), v) for k, v in dict(kwargs or {}).items()))


def standard_setup(config: ml_collections.ConfigDict,
                   section: ml_collections.ConfigDict | None = None) -> TrainingSetup:
  """Protocol A from `config.protocol_a` and `config.model(_kwargs)`.

  Args:
    config: the analysis config.
    section: the analysis's section; its `steps` (> 0) overrides the number of steps
      (used to size the CPU demo).

  Returns:
    The setup named "standard".
  """
  pa = config.protocol_a
  steps = int((section.get("steps", 0) if section is not None else 0) or pa.steps)
  return TrainingSetup(name="standard", model=models.canonical_model_name(config.model),
                       model_kwargs=_kwargs_tuple(config.get("model_kwargs")),
                       optimizer="sgd", learning_rate=float(pa.learning_rate),
                       momentum=float(pa.momentum), num_steps=steps)


def default_augment_strategy(dataset: str) -> str:
  """DSA's evaluation strategy, without 'flip' for digit datasets (a flipped 2 is no 2).

  Args:
    dataset: the real dataset's name.

  Returns:
    A DSA strategy string.
  """
  if dataset.lower() in _DIGIT_DATASETS:
    return DEFAULT_AUGMENT.replace("_flip", "")
  return DEFAULT_AUGMENT


VARIANT_FORMS = ("standard", "adam", "lr_x<factor>", "steps_<n>", "minibatch", "minibatch_<batch>",
                 "augment", "wd_<decay>", "norm_<kind>", "arch_<model>")


def _number(name: str, text: str, kind=float):
  try:
    value = kind(text)
  except ValueError:
    raise ConfigError(f"Training-setup variant {name!r}: {text!r} is not a valid "
                      f"{'integer' if kind is int else 'number'}.") from None
  if not math.isfinite(value) or value <= 0:
    raise ConfigError(f"Training-setup variant {name!r}: the value must be positive, got {text!r}.")
  return value


def parse_variant(name: str, standard: TrainingSetup, *, adam_lr: float = 1e-3,
                  minibatch_size: int = 10, augment_strategy: str = "") -> TrainingSetup:
  """A named change of `standard` (see VARIANT_FORMS).

  adam: Adam (optax defaults b1 0.9, b2 0.999) at `adam_lr`, same steps. minibatch: batch
  `minibatch_size`, reshuffled every epoch, as many whole epochs as give at least the
  standard number of steps (exactly that number when the batch divides the set).
  augment: per-sample DSA (`augment_strategy`, default `DEFAULT_AUGMENT`) at every step.
  arch_<model>: another network from `ddjax.models` (ConvNet-family ones keep the standard
  ConvNet fields except the width).

  Args:
    name: the variant's name.
    standard: protocol A (`standard_setup`).
    adam_lr: Adam's learning rate.
    minibatch_size: the batch of `minibatch`.
    augment_strategy: the DSA strategy of `augment`.

  Returns:
    The variant's setup, named `name`.

  Raises:
    ConfigError: for an unknown or malformed name (a ValueError).
  """
  if not isinstance(name, str) or not name:
    raise ConfigError(f"A training-setup variant must be a non-empty string, got {name!r}.")
  replace = functools.partial(dataclasses.replace, standard, name=name)
  if name == "standard":
    return standard
  if name == "adam":
    return replace(optimizer="adam", learning_rate=float(adam_lr), momentum=0.0)
  if name == "augment":
    strategy = augment_strategy or DEFAULT_AUGMENT
    augment.parse_strategy(strategy)  # a bad family name fails here, with its own message
    return replace(augment=strategy)
  if name == "minibatch":
    return replace(batch_size=int(minibatch_size))
  match = re.fullmatch(r"(lr_x|steps_|minibatch_|wd_|norm_|arch_)(.+)", name)
  if match is None:
    raise ConfigError(f"Unknown training-setup variant {name!r}; expected one of "
                      f"{', '.join(VARIANT_FORMS)} (e.g. lr_x0.1, steps_1000, arch_alexnet).")
  return _prefixed_variant(name, *match.groups(), standard, replace)


def _prefixed_variant(name: str, prefix: str, value: str, standard: TrainingSetup,
                      replace) -> TrainingSetup:
  """The variants `<prefix><value>` of `parse_variant`."""
  if prefix == "lr_x":
    return replace(learning_rate=standard.learning_rate * _number(name, value))
  if prefix == "steps_":
    return replace(num_steps=_number(name, value, int))
  if prefix == "minibatch_":
    return replace(batch_size=_number(name, value, int))
  if prefix == "wd_":
    return replace(weight_decay=_number(name, value))
  if prefix == "norm_":
    if value not in layers.NORMS:
      raise ConfigError(f"Training-setup variant {name!r}: unknown norm {value!r}; expected "
                        f"one of {layers.NORMS}.")
    if not standard.model.startswith("convnet"):
      raise ConfigError(f"Training-setup variant {name!r} changes a ConvNet's norm, but the "
                        f"standard network is {standard.model!r}.")
    return replace(model_kwargs=_kwargs_tuple({**dict(standard.model_kwargs), "norm": value}))
  # arch_<model>
  try:
    model = models.canonical_model_name(value)
  except ValueError as e:
    raise ConfigError(f"Training-setup variant {name!r}: {e}") from None
  standard_kwargs = dict(standard.model_kwargs)
  if model.startswith("convnet") and standard.model.startswith("convnet"):
    kwargs = {k: v for k, v in standard_kwargs.items() if k != "width"}
  else:
    kwargs = {k: v for k, v in standard_kwargs.items() if k == "conv_impl"}
  return replace(model=model, model_kwargs=_kwargs_tuple(kwargs))


def variants_from_config(config: ml_collections.ConfigDict,
                         section: ml_collections.ConfigDict) -> dict[str, TrainingSetup]:
  """The variants of `section.variants`; every name is checked before any work.

  Args:
    config: the analysis config (protocol A, the model, the dataset).
    section: the sensitivity section (variants, steps, adam_lr, minibatch_size,
      augment_strategy).

  Returns:
    {name: setup}, `standard` first if it was not named.

  Raises:
    ConfigError: for an empty or repeated list, or an unknown variant.
  """
  names = as_list(section.variants, str)
  if not names:
    raise ConfigError("config.sensitivity.variants is empty; name at least 'standard'.")
  if len(set(names)) != len(names):
    raise ConfigError(f"config.sensitivity.variants repeats a name: {names}.")
  if "standard" not in names:
    names = ["standard"] + names  # every drop is measured against it
  standard = standard_setup(config, section)
  strategy = section.get("augment_strategy", "") or default_augment_strategy(config.dataset)
  return {n: parse_variant(n, standard, adam_lr=section.get("adam_lr", 1e-3),
                           minibatch_size=section.get("minibatch_size", 10),
                           augment_strategy=strategy) for n in names}


# ----------------------------------------------------------------------------- training


def make_optimizer(setup: TrainingSetup) -> optax.GradientTransformation:
  """The setup's optimiser, from ddjax's one factory (`ddjax.optim.make`).

  Args:
    setup: SGD with momentum or Adam, its learning rate and (PyTorch-style) weight decay.

  Returns:
    The optax GradientTransformation.

  Raises:
    ConfigError: for an unknown optimizer.
  """
  return optim.make(setup.optimizer, setup.learning_rate, momentum=setup.momentum,
                    weight_decay=setup.weight_decay)


@functools.lru_cache(maxsize=64)
def seed_run_fn(setup: TrainingSetup, num_classes: int):
  """One seed's run of a setup.

  The network is initialised from `key` exactly as `train.protocol_a_accuracy` does, so the
  standard setup reproduces it; shuffles and augmentation use `fold_in(key, 1)`.
  Cached per setup, so `sharded_vmap`'s jit cache is hit on every later call.

  Args:
    setup: the training setup.
    num_classes: the network's outputs.

  Returns:
    `one(key, x, y, x_test, y_test) -> (test accuracy, all parameters finite)`.
  """
  model = models.get_model(setup.model, num_classes, **dict(setup.model_kwargs))
  tx = make_optimizer(setup)
  augment_fn = augment.make_augment_fn(setup.augment, siamese=False)

  def one(key, x, y, x_test, y_test):
    variables = dict(model.init(key, x[:1], train=False))
    train_key = jax.random.fold_in(key, 1)
    if setup.batch_size and setup.batch_size < x.shape[0]:
      state = train.create_train_state(variables, tx)
      epochs = setup.steps_run(x.shape[0]) // train.steps_per_epoch(x.shape[0], setup.batch_size)
      state, _ = train.train_minibatch(model, tx, state, x, y, train_key, num_epochs=epochs,
                                       batch_size=setup.batch_size, augment_fn=augment_fn)
      variables = state.variables
    else:
      variables, _ = train.train_full_batch(model, tx, variables, x, y,
                                            num_steps=setup.num_steps, augment_fn=augment_fn,
                                            key=train_key if augment_fn is not None else None)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(p))
                                for p in jax.tree_util.tree_leaves(variables)]))
    return train.evaluate(model, variables, x_test, y_test)["accuracy"], finite

  return one


@functools.lru_cache(maxsize=64)
def _vmapped_run_fn(setup: TrainingSetup, num_classes: int):
  return parallel.sharded_vmap(seed_run_fn(setup, num_classes), in_axes=(0, None, None, None, None))


def seed_keys(seed: int, num_seeds: int) -> jax.Array:
  """The init keys shared by every set, addition and variant (so differences are paired).

  Args:
    seed: `config.seed`.
    num_seeds: how many.

  Returns:
    [num_seeds] keys split from PRNGKey(seed).

  Raises:
    ConfigError: if num_seeds < 1.
  """
  if num_seeds < 1:
    raise ConfigError(f"num_seeds must be >= 1, got {num_seeds}.")
  return jax.random.split(jax.random.PRNGKey(seed), num_seeds)


def setup_accuracies(setup: TrainingSetup, keys: jax.Array, x, y, x_test, y_test,
                     num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Trains one network per key on (x, y), vmapped over keys, and tests it.

  Args:
    setup: the training setup.
    keys: [num_seeds] init keys (`seed_keys`).
    x, y: the training set (hard or soft labels).
    x_test, y_test: the real test set.
    num_classes: the number of classes.

  Returns:
    (test accuracy [num_seeds] float64, all parameters finite [num_seeds] bool).
  """
  run = _vmapped_run_fn(setup, int(num_classes))
  acc, finite = run(keys, jnp.asarray(x, jnp.float32), jnp.asarray(y), jnp.asarray(x_test),
                    jnp.asarray(y_test))
  return np.asarray(acc, np.float64), np.asarray(finite, bool)


def key_array(keys) -> np.ndarray:
  """Raw uint32 key data (typed or legacy keys), for a cache payload and the JSON.

  Args:
    keys: [num_seeds] typed PRNG keys, or legacy uint32 [num_seeds, 2] keys.

  Returns:
    The keys' raw data as a numpy uint32 array ([num_seeds, 2] for threefry keys).
  """
  if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.key_data(keys)
  return np.asarray(keys)


def run_accuracies(cache_directory: str, setup: TrainingSetup, keys, x, y, x_test, y_test,
                   num_classes: int) -> dict[str, np.ndarray]:
  """`setup_accuracies` through the analyses' cache, one entry per (setup, seeds, data).

  The payload is the setup's fields and a digest of the keys and the arrays, not the set's
  name: sensitivity's `standard` run of a set is mixing's +0 run when their steps and
  seeds agree, and is then read back, not trained twice.

  Args:
    cache_directory: `cache.cache_dir(config, workdir)`.
    setup, keys, x, y, x_test, y_test, num_classes: as `setup_accuracies`.

  Returns:
    {"accuracy": [num_seeds] float64, "finite": [num_seeds] bool}.
  """
  payload = {"setup": setup.describe(),
             "data": cache.digest(key_array(keys), x, y, x_test, y_test)}

  def compute():
    acc, finite = setup_accuracies(setup, keys, x, y, x_test, y_test, num_classes)
    return {"accuracy": acc, "finite": finite}

  return cache.cached(cache_directory, f"training_setup_{setup.name}", payload, compute)


def num_seeds(config: ml_collections.ConfigDict, section: ml_collections.ConfigDict) -> int:
  """`section.num_seeds`, or protocol A's when it is 0.

  Args:
    config: the analysis config (`protocol_a.num_seeds`, the fallback).
    section: the analysis's section (`num_seeds`, 0 or missing = the fallback).

  Returns:
    The number of seeds, an int.
  """
  return int(section.get("num_seeds", 0) or config.protocol_a.num_seeds)


def finish_run(workdir: str, name: str, results: dict, start: float,
               plot: Callable[[dict, str], Any], counted: str) -> dict:
  """The end of mixing's and sensitivity's `run`: the wall time, the figure, the JSON.

  Args:
    workdir: where `<name>.json` (and the figure) go.
    name: the analysis.
    results: its JSON, without `wall_time_s` (added here, last).
    start: `time.time()` when the run began.
    plot: draws the figure from the results into the workdir.
    counted: what the run trained, for the log line (e.g. "3 sets x 5 additions").

  Returns:
    `results`, with `wall_time_s`: the seconds since `start`, before the figure is drawn.
  """
  results["wall_time_s"] = time.time() - start
  plot(results, workdir)
  common.write_results(workdir, name, results)
  logging.info("%s: %s in %.0f s", name, counted, results["wall_time_s"])
  return results


# ----------------------------------------------------------------------------- data


def addition_indices(key: jax.Array, labels, additions: Sequence[int],
                     num_classes: int) -> dict[int, np.ndarray]:
  """Indices of k real images per class for each k, nested in k, class-sorted and seeded.

  One class-balanced draw of max(additions) per class; each k takes every class's first
  k, so the 2-per-class images are contained in the 10-per-class ones (the paper's
  `random.seed(1)` + shuffle + first-k).

  Args:
    key: the draw's key.
    labels: [N] the real train labels.
    additions: the k's (images per class).
    num_classes: the number of classes.

  Returns:
    {k: [k * num_classes] indices into labels}.

  Raises:
    ConfigError: for a negative k (and ValueError when a class has too few images).
  """
  additions = [int(k) for k in additions]
  if not additions:
    return {}
  if min(additions) < 0:
    raise ConfigError(f"Real additions per class must be >= 0, got {additions}.")
  largest = max(additions)
  per_class = data.class_balanced_indices(key, labels, largest, num_classes).reshape(
      num_classes, largest)
  return {k: per_class[:, :k].reshape(-1) for k in additions}


def mix(images: np.ndarray, labels: np.ndarray, x_add: np.ndarray, y_add: np.ndarray,
        num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """A distilled set plus real images.

  Args:
    images, labels: the distilled set (hard [n] or soft [n, num_classes] labels).
    x_add, y_add: the real images and their hard labels.
    num_classes: the number of classes.

  Returns:
    (images, labels) concatenated; the real images get one-hot labels when the set's are
    soft, else the set's label dtype.
  """
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels)
  if labels.ndim == 2:
    y_add = np.eye(num_classes, dtype=labels.dtype)[np.asarray(y_add)]
  else:
    y_add = np.asarray(y_add, labels.dtype)
  return (np.concatenate([images, np.asarray(x_add, np.float32)]),
          np.concatenate([labels, y_add]))


@dataclasses.dataclass(frozen=True)
class AnalysedSet:
  """A set the analyses train on: a distilled set, or the random-real baseline."""
  name: str
  images: np.ndarray
  labels: np.ndarray
  method: str
  ipc: int
  is_baseline: bool
  source: str     # "given" (a distilled-set file) or "drawn" (the seeded random-real baseline)
  real_indices: np.ndarray | None = None  # train-split rows of a drawn baseline

  @property
  def soft_labels(self) -> bool:
    """Whether the labels are soft ([n, num_classes])."""
    return self.labels.ndim == 2


def as_list(value: Any, kind) -> list:
  """A config list ("a,b" string or sequence; None is empty) with each item cast by `kind`.

  Args:
    value: a comma-separated string (blank items skipped), a sequence, or None.
    kind: the cast applied to each item (e.g. int, float, str).

  Returns:
    The list of cast items.
  """
  if value is None:
    return []
  if isinstance(value, str):
    return [kind(v.strip()) for v in value.split(",") if v.strip()]
  return [kind(v) for v in value]


def collect_sets(config: ml_collections.ConfigDict, section: ml_collections.ConfigDict,
                 adata: common.AnalysisData, name: str) -> list[AnalysedSet]:
  """The distilled sets (optionally `section.sets` only) and the random-real baseline, last.

  Args:
    config: the analysis config (its seed).
    section: the analysis's section (sets, baseline, baseline_ipc, labels).
    adata: the real data and the distilled sets.
    name: the section's name, for messages.

  Returns:
    The sets sorted by name, then the baseline: the distilled set named
    `section.baseline` (hard labels) if there is one, else a seeded class-balanced draw.

  Raises:
    DistilledSetError: if `section.sets` names an unknown set.
    ConfigError: for an unknown `section.labels`.
  """
  baseline_name = section.get("baseline", "random") or "random"
  wanted = as_list(section.get("sets", ""), str)
  unknown = [s for s in wanted if s not in adata.distilled]
  if unknown:
    raise common.DistilledSetError(f"config.{name}.sets names {unknown}, which are not among "
                                   f"the distilled sets {sorted(adata.distilled)}.")
  hard = section.get("labels", "as_distilled")
  if hard not in ("as_distilled", "hard"):
    raise ConfigError(f"config.{name}.labels must be 'as_distilled' or 'hard', got {hard!r}.")
  out = []
  for set_name in sorted(adata.distilled):
    if set_name == baseline_name or (wanted and set_name not in wanted):
      continue
    d = adata.distilled[set_name]
    labels = d.hard_labels if hard == "hard" else np.asarray(d.labels)
    out.append(AnalysedSet(set_name, np.asarray(d.images, np.float32), labels, d.method, d.ipc,
                           False, "given"))
  return out + [_baseline_set(config, section, adata, baseline_name, out)]


def _baseline_set(config, section, adata: common.AnalysisData, baseline_name: str,
                  others: list[AnalysedSet]) -> AnalysedSet:
  """The given baseline set, or a class-balanced draw of the real train split."""
  if baseline_name in adata.distilled:
    d = adata.distilled[baseline_name]
    return AnalysedSet(baseline_name, np.asarray(d.images, np.float32), d.hard_labels, d.method,
                       d.ipc, True, "given")
  real = adata.real
  # The distilled sets' most common IPC (10 if none are given besides the baseline).
  ipc_counts = collections.Counter(s.ipc for s in others)
  ipc = int(section.get("baseline_ipc", 0) or
            (ipc_counts.most_common(1)[0][0] if ipc_counts else 10))
  # The paper's baseline draw is random.seed(9999); its additions use random.seed(1).
  idx = data.class_balanced_indices(jax.random.fold_in(jax.random.PRNGKey(config.seed), 9999),
                                    real.y_train, ipc, real.num_classes)
  return AnalysedSet(baseline_name, np.asarray(real.x_train[idx], np.float32),
                     np.asarray(real.y_train[idx]), "random", ipc, True, "drawn", idx)
