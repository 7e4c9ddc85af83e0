"""The exact leave-one-out influence matrix that the paper's section 5 analyses share.

Protocol A (config.protocol_a: a fixed number of full-batch SGD steps) is retrained from
one fixed initialisation once on the whole distilled set and once without each left-out
image, all runs one vmapped call over weight masks (`ddjax.influence.loo_influence`, or
`loo_retrain` with a subset of the masks when only some images are left out). The
settings come from `config.influence` (ddjax/analysis/influence.py); the matrix is cached
(`ddjax.analysis.cache`), so that `influence`, `influence_approx` and `coherence` compute
it once per set.

Sign convention (the paper's): I[i, t] = loss(x_t; theta without i) - loss(x_t; theta all).
Positive means removing distilled image i raises the loss on test image t, i.e. image i
*helps* t; "the test images i helps most" are the largest entries of row i.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.flatten_util import ravel_pytree

from ddjax import data, influence as influence_lib, models
from ddjax.analysis import cache, common
from ddjax.distill import synset

__all__ = ["INIT", "TEST_SUBSET", "ROWS", "INFLUENCE_FILE", "SIGN_CONVENTION", "top_helped",
           "class_purity", "is_control", "influence_sets", "test_pool_indices", "loo_rows",
           "loo_model", "leave_one_out", "influence_payload", "exact_influence",
           "trained_variables"]

# fold_in constants: each random choice draws from its own stream of config.seed.
INIT, TEST_SUBSET, ROWS = 801, 802, 803
INFLUENCE_FILE = "influence_{}.npz"
SIGN_CONVENTION = ("I[i, t] = loss(x_t; trained without distilled image i) - loss(x_t; trained "
                   "on all); positive = removing i raises the test loss = i helps t; the "
                   "top-k 'most helped' test images are the k largest entries of row i")


# ----------------------------------------------------------------------------- the matrix


def top_helped(matrix, k: int) -> np.ndarray:
  """The k test images each row helps most.

  Args:
    matrix: [rows, tests] influence (larger = helps more).
    k: how many per row.

  Returns:
    [rows, k] test indices in decreasing influence; ties keep the lower index first (a
    stable sort of -I).

  Raises:
    ValueError: if `matrix` is not 2-D with at least k columns, or k < 1.
  """
  matrix = np.asarray(matrix)
  if matrix.ndim != 2 or not 1 <= k <= matrix.shape[1]:
    raise ValueError(f"top_helped needs a 2-D matrix with at least k={k} columns, got shape "
                     f"{matrix.shape}.")
  return np.argsort(-matrix, axis=1, kind="stable")[:, :k]


def class_purity(matrix, row_labels, test_labels, k: int) -> np.ndarray:
  """The fraction of each row's top-k most-helped test images that share its class.

  Args:
    matrix: [rows, tests] influence.
    row_labels: [rows] class of each left-out distilled image.
    test_labels: [tests] class of each test image.
    k: top-k size.

  Returns:
    [rows] purities in [0, 1].
  """
  top = top_helped(matrix, k)
  return np.mean(np.asarray(test_labels)[top] == np.asarray(row_labels)[:, None], axis=1)


# ----------------------------------------------------------------------------- what is left out


def is_control(dset: synset.DistilledSet) -> bool:
  """Whether a set is the random-real control.

  Args:
    dset: a distilled set.

  Returns:
    True for the random-real baseline (plain real train images), False for learned sets.
  """
  return not common.is_learned(dset)


def influence_sets(config: ml_collections.ConfigDict, distilled: dict) -> list[str]:
  """The sets of config.influence, which influence_approx and coherence use too.

  Args:
    config: the analysis config (with its `influence` section).
    distilled: set name -> distilled set (anything with a `method`).

  Returns:
    `sets` ("" = all) in the paper's method order, then at most `max_sets` learned ones
    (0 = all) plus every random-real control.

  Raises:
    DistilledSetError: if `sets` names sets that were not loaded.
  """
  names = common.selected_names(config.influence, distilled, "influence")
  max_sets = int(config.influence.get("max_sets", 0) or 0)
  if max_sets:
    learned = [n for n in names if not is_control(distilled[n])]
    keep = set(learned[:max_sets])
    names = [n for n in names if n in keep or is_control(distilled[n])]
  return names


def test_pool_indices(config: ml_collections.ConfigDict, real: data.ImageDataset) -> np.ndarray:
  """The real test images scored.

  Args:
    config: the analysis config.
    real: the real dataset.

  Returns:
    Indices into the loaded real test split: all of it, or a seeded class-balanced subset
    of config.influence.test_per_class per class.
  """
  per_class = int(config.influence.test_per_class or 0)
  if not per_class:
    return np.arange(real.y_test.shape[0])
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), TEST_SUBSET)
  return data.class_balanced_indices(key, real.y_test, per_class, real.num_classes)


def loo_rows(config: ml_collections.ConfigDict, dset: synset.DistilledSet) -> np.ndarray:
  """The distilled images left out (the rows of the matrix).

  Args:
    config: the analysis config.
    dset: the distilled set.

  Returns:
    Sorted indices: all images, or a seeded class-balanced choice of
    config.influence.points_per_class per class.

  Raises:
    DistilledSetError: if a class has fewer images than points_per_class.
  """
  per_class = int(config.influence.points_per_class or 0)
  n = dset.images.shape[0]
  if not per_class:
    return np.arange(n)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), ROWS)
  try:
    rows = data.class_balanced_indices(key, dset.hard_labels, per_class, dset.num_classes)
  except ValueError as e:
    raise synset.DistilledSetError(f"influence.points_per_class={per_class}: {e}") from e
  return np.sort(rows)


def loo_model(config: ml_collections.ConfigDict, num_classes: int):
  """The network retrained for leave-one-out.

  Args:
    config: the analysis config (config.model, config.model_kwargs; the width may be
      overridden by config.influence.width).
    num_classes: the dataset's classes.

  Returns:
    (model, its constructor kwargs).
  """
  kwargs = dict(config.model_kwargs)
  if config.influence.width:
    kwargs["width"] = int(config.influence.width)
  return models.get_model(config.model, num_classes, **kwargs), kwargs


# ----------------------------------------------------------------------------- exact influence


def leave_one_out(model, variables, x, y, x_test, y_test, rows,
                  **kwargs) -> influence_lib.LOOResult:
  """Exact leave-one-out for the training points `rows`.

  Args:
    model, variables: the network and its (shared) initialisation.
    x, y: the training (distilled) images and labels.
    x_test, y_test: the test images scored.
    rows: the points left out: all of them runs `loo_influence`; a subset runs
      `loo_retrain` on those rows of `loo_masks` plus the all-points run.
    **kwargs: protocol A's settings (num_steps, learning_rate, momentum, chunk_size,
      eval_batch_size).

  Returns:
    The `LOOResult`, rows of the matrix following `rows`.

  Raises:
    FloatingPointError: if a retrain diverged.
  """
  n = int(np.shape(x)[0])
  rows = np.asarray(rows, np.int64)
  if np.array_equal(rows, np.arange(n)):
    return influence_lib.loo_influence(model, variables, x, y, x_test, y_test, **kwargs)
  masks = np.asarray(influence_lib.loo_masks(n))[np.append(rows, n)]
  finals, losses, accs = influence_lib.loo_retrain(model, variables, x, y, x_test, y_test,
                                                   masks=masks, **kwargs)
  losses = np.asarray(losses, np.float64)
  if not np.all(np.isfinite(losses)):
    raise FloatingPointError("Leave-one-out retraining diverged (non-finite test loss); "
                             "lower config.protocol_a.learning_rate.")
  accs = np.asarray(accs, np.float64)
  return influence_lib.LOOResult(
      influence=losses[:-1] - losses[-1], loss_all=losses[-1], loss_without=losses[:-1],
      accuracy_all=float(accs[-1]), accuracy_without=accs[:-1],
      variables_all=jax.tree_util.tree_map(lambda a: a[-1], finals))


def influence_payload(config, name, dset, real, rows, test_idx, model_kwargs) -> dict:
  """Everything the exact matrix of one set depends on (its cache payload).

  Args:
    config: the analysis config.
    name: the set's name.
    dset: the distilled set.
    real: the real dataset.
    rows: the left-out images.
    test_idx: the scored test images.
    model_kwargs: the LOO network's kwargs.

  Returns:
    A JSON-able dict (digests of the images, labels and test pool; rows, network,
    protocol A, seed). Not in it: chunk and batch sizes, which do not change the numbers.
  """
  pa = config.protocol_a
  return {"set": name, "images": cache.digest(dset.images),
          "labels": cache.digest(dset.labels),
          "dataset": real.name, "test": cache.digest(test_idx, real.y_test[test_idx],
                                                     real.x_test[test_idx[:50]]),
          "rows": np.asarray(rows).tolist(), "model": config.model,
          "model_kwargs": {k: v for k, v in sorted(model_kwargs.items())},
          "steps": int(pa.steps), "learning_rate": float(pa.learning_rate),
          "momentum": float(pa.momentum), "seed": int(config.seed)}


def _compute_exact(config, dset, real, model, rows, test_idx) -> dict[str, np.ndarray]:
  pa, sec = config.protocol_a, config.influence
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), INIT)
  x, y = jnp.asarray(dset.images), jnp.asarray(dset.labels)
  x_test, y_test = jnp.asarray(real.x_test[test_idx]), jnp.asarray(real.y_test[test_idx])
  variables = models.init_variables(model, key, x.shape)  # one init for every run and set
  start = time.perf_counter()
  loo = leave_one_out(model, variables, x, y, x_test, y_test, rows, num_steps=int(pa.steps),
                      learning_rate=float(pa.learning_rate), momentum=float(pa.momentum),
                      chunk_size=int(sec.chunk_size) or None,
                      eval_batch_size=int(sec.eval_batch_size))
  seconds = time.perf_counter() - start
  return {"influence": np.asarray(loo.influence, np.float64), "rows": rows,
          "row_labels": dset.hard_labels[rows].astype(np.int32), "test_indices": test_idx,
          "test_labels": real.y_test[test_idx].astype(np.int32), "loss_all": loo.loss_all,
          "loss_without": loo.loss_without, "accuracy_all": np.asarray(loo.accuracy_all),
          "accuracy_without": loo.accuracy_without,
          "params_flat": np.asarray(ravel_pytree(jax.device_get(loo.variables_all))[0]),
          "seconds": np.asarray(seconds)}


def exact_influence(config: ml_collections.ConfigDict, workdir: str, name: str,
                    dset: synset.DistilledSet, real: data.ImageDataset) -> dict[str, Any]:
  """The exact leave-one-out matrix of one set, from the cache or computed.

  Args:
    config: the analysis config (config.influence, config.protocol_a, the model).
    workdir: the analysis workdir (the cache is `cache.cache_dir(config, workdir)`).
    name: the set's name.
    dset: the distilled set (model space).
    real: the real dataset.

  Returns:
    Its arrays: influence [rows, tests], rows, row_labels, test_indices, test_labels,
    loss_all, loss_without, accuracy_all, accuracy_without, params_flat (the all-points
    model), seconds, and signature (the cache payload as JSON, a 0-d string array);
    `resumed` (whether the cache had it).
  """
  model, kwargs = loo_model(config, real.num_classes)
  rows, test_idx = loo_rows(config, dset), test_pool_indices(config, real)
  payload = influence_payload(config, name, dset, real, rows, test_idx, kwargs)
  computed = []

  def compute():
    computed.append(True)
    return _compute_exact(config, dset, real, model, rows, test_idx)

  arrays = cache.cached(cache.cache_dir(config, workdir), f"influence_{name}", payload, compute)
  signature = json.dumps(payload, sort_keys=True, default=str)
  return {**arrays, "signature": np.asarray(signature), "resumed": not computed}


def trained_variables(config, real, params_flat) -> tuple[Any, dict]:
  """The LOO network trained on the whole set, from a saved `params_flat`.

  Args:
    config: the analysis config.
    real: the real dataset.
    params_flat: the raveled variables of `exact_influence`.

  Returns:
    (LOO model, its variables).

  Raises:
    ValueError: if `params_flat` does not fit the model.
  """
  model, _ = loo_model(config, real.num_classes)
  template = models.init_variables(model, jax.random.PRNGKey(0), (1,) + real.image_shape)
  flat, unravel = ravel_pytree(template)
  if flat.size != np.size(params_flat):
    raise ValueError(f"Saved LOO parameters have {np.size(params_flat)} entries, the model "
                     f"{flat.size}: the influence npz is from another model.")
  return model, unravel(jnp.asarray(params_flat, flat.dtype))
