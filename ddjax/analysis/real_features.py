"""What the paper's section 3 analyses share: real-trained models, their outputs on images.

`recognition` (the paper's Fig. 2 left), `embedding` (Fig. 2 right) and `pixels` (Fig. 3
left) order the distilled sets as Fig. 2 groups them (`methods.FIG2_ORDER`) and label them
alike; the first two evaluate models trained on the REAL train split (protocol B) with
the per-model epochs of `config.recognition`. Not an analysis itself (no QUESTION, no run).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from ddjax import data, models, train
from ddjax.analysis import cache, common, methods
from ddjax.distill import synset
from ddjax.errors import ConfigError

__all__ = ["ordered_set_names", "set_label", "model_spec", "trained_real_model",
           "jitted_evaluate", "jitted_features"]


def ordered_set_names(distilled: dict[str, synset.DistilledSet]) -> list[str]:
  """The sets in the group order of the paper's Fig. 2.

  Args:
    distilled: name -> distilled set.

  Returns:
    The names: TM, BPTT, DM, GM, ... (`methods.FIG2_ORDER`), then other learned sets,
    the random-real set last.
  """
  return common.ordered_set_names(distilled, methods.FIG2_ORDER)


def set_label(name: str, dset: synset.DistilledSet) -> str:
  """A set's label in the figures: its name, with the paper's name of its method.

  Args:
    name: the set's name.
    dset: the set.

  Returns:
    e.g. "dm_ipc1 (DM)" (`methods.label`).
  """
  return methods.label(name, dset.method)


def model_spec(config: ml_collections.ConfigDict, name: str) -> tuple[dict, int]:
  """The constructor arguments and protocol-B epochs of the real-trained model `name`.

  `name` gets config.real_model.model_kwargs when it is config.real_model's model (else
  its own defaults), and the epochs of config.recognition.epochs when that names it
  (else config.real_model.epochs).

  Args:
    config: the analysis config.
    name: a `ddjax.models` registry name.

  Returns:
    (model_kwargs, epochs).

  Raises:
    ConfigError: if the epochs are below 1.
  """
  rm = config.real_model
  name = models.canonical_model_name(name)
  same_as_real_model = name == models.canonical_model_name(rm.model)
  kwargs = common.to_dict(rm.model_kwargs) if same_as_real_model else {}
  epochs = rm.epochs
  rec = config.get("recognition")
  if rec is not None and name in rec.get("epochs", {}):
    epochs = int(rec.epochs[name])
  if epochs < 1:
    raise ConfigError(f"Real model {name}: epochs must be >= 1, got {epochs}.")
  return kwargs, epochs


def trained_real_model(config: ml_collections.ConfigDict, real: data.ImageDataset, workdir: str,
                       name: str, seed: int) -> tuple[Any, Any]:
  """The real-trained model `name` of `seed`, with the settings of `model_spec`.

  With config.real_model's epochs this is `common.real_model_from_config` (one cache
  entry, so it is the model every other analysis uses); with other epochs it is trained
  (and cached, `cache.cache_dir`) with the same protocol B.

  Args:
    config: the analysis config.
    real: the real dataset (model space).
    workdir: the analysis workdir (the cache's default home).
    name: a `ddjax.models` registry name.
    seed: initialisation and batch order.

  Returns:
    (model, variables).
  """
  kwargs, epochs = model_spec(config, name)
  if epochs == config.real_model.epochs:
    return common.real_model_from_config(config, real, workdir, model_name=name,
                                         model_kwargs=kwargs, seed=seed)
  rm = config.real_model
  return common.train_real_model(
      real, name, kwargs, seed=seed, epochs=epochs, batch_size=rm.batch_size,
      learning_rate=rm.learning_rate, momentum=rm.momentum,
      cache_dir=cache.cache_dir(config, workdir))


@functools.lru_cache(maxsize=16)
def jitted_evaluate(model, batch_size: int):
  """`train.evaluate` of `model` in batches of `batch_size`, compiled once per model.

  Args:
    model: a flax module.
    batch_size: images per batch.

  Returns:
    evaluate(variables, x, labels) -> {"accuracy", ...}, jitted.
  """
  return jax.jit(functools.partial(train.evaluate, model, batch_size=batch_size))


@functools.lru_cache(maxsize=16)
def jitted_features(model, batch_size: int):
  """Penultimate features (`model.embed`), batched with `lax.map`, as one jit.

  Args:
    model: a flax module with an `embed` method.
    batch_size: images per batch (the last batch is zero-padded).

  Returns:
    features(variables, x [N, ...]) -> [N, feature_dim], jitted.
  """
  def features(variables, x):
    n = x.shape[0]
    bs = min(batch_size, n)
    num_batches = -(-n // bs)
    xp = jnp.concatenate([x, jnp.zeros((num_batches * bs - n,) + x.shape[1:], x.dtype)])
    out = jax.lax.map(lambda xb: model.apply(variables, xb, train=False, method="embed"),
                      xp.reshape((num_batches, bs) + x.shape[1:]))
    return out.reshape((num_batches * bs,) + out.shape[2:])[:n]
  return jax.jit(features)
