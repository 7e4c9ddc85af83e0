"""Q3: does each distilled point carry meaning? (paper section 5, E8 and E9).

* `run_influence` (E8, Fig. 10): the exact leave-one-out (LOO) influence of each distilled
  image on real test images. Protocol A (config.protocol_a: 300 full-batch SGD steps) is
  retrained from one fixed initialisation once on the whole distilled set and once
  without each left-out image, all runs one vmapped call over weight masks
  (`ddjax.influence.loo_influence`, or `loo_retrain` with a subset of the masks when only
  some images are left out). The matrix is saved as `<workdir>/influence_<set>.npz`, which
  the other two analyses reuse; a grid PNG shows, for each distilled image of one class,
  the 9 test images it helps most; the numbers are the class purity of each image's top-k
  and the influence magnitudes.
* `run_influence_approx` (an extension; the paper used exact LOO only): influence
  functions (`ddjax.influence.influence_functions`: CG, LiSSA, Arnoldi, and the plain
  gradient dot product as a no-curvature baseline) at the model trained on the whole set,
  compared with the exact LOO (Pearson, Spearman, top-k overlap), with wall times.
* `run_coherence` (E9 stand-in; the paper asked LLaVA to describe the top-influenced
  images, which cannot run here): is each distilled image's top-k most-helped set more
  coherent than random sets? (a) class purity against random k-subsets of the test pool,
  (b) mean pairwise cosine similarity of a real-trained model's penultimate features
  against random k-subsets of the distilled image's own class. Permutation p-values per
  image (vectorised, seeded draws), per set the fraction significant raw and after
  Benjamini-Hochberg, the mean effect, and a set-level permutation p-value.
* `claims(results)`: the report rows for the three.

Sign convention (the paper's): I[i, t] = loss(x_t; theta without i) - loss(x_t; theta all).
Positive means removing distilled image i raises the loss on test image t, i.e. image i
*helps* t; "the test images i helps most" are the largest entries of row i.
"""

from __future__ import annotations

import functools
import json
import os
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.flatten_util import ravel_pytree
from scipy import stats
from tqdm.auto import tqdm

from ddjax import curvature, data, influence as influence_lib, models, train
from ddjax.analysis import common
from ddjax.distill import synset
from ddjax.errors import ConfigError

DistilledSetError = synset.DistilledSetError

PAPER_METHOD = {"mtt": "TM", "bptt": "BPTT", "dm": "DM", "dc": "GM", "dsa": "GM+DSA",
                "kip": "KIP", "random": "real subset"}
METHOD_ORDER = ("bptt", "dm", "dc", "dsa", "mtt", "kip")
# fold_in constants: each random choice draws from its own stream of config.seed.
_INIT, _TEST_SUBSET, _ROWS, _LANCZOS, _PERMUTATION = 801, 802, 803, 804, 901
INFLUENCE_FILE = "influence_{}.npz"
APPROX_FILE = "influence_approx_{}.npz"
SIGN_CONVENTION = ("I[i, t] = loss(x_t; trained without distilled image i) - loss(x_t; trained "
                   "on all); positive = removing i raises the test loss = i helps t; the "
                   "top-k 'most helped' test images are the k largest entries of row i")


# ----------------------------------------------------------------------------- pure statistics


def top_helped(matrix, k: int) -> np.ndarray:
  """[rows, k] test indices in decreasing influence (the k test images each row helps most).

  Ties keep the lower index first (a stable sort of -I).
  """
  matrix = np.asarray(matrix)
  if matrix.ndim != 2 or not 1 <= k <= matrix.shape[1]:
    raise ValueError(f"top_helped needs a 2-D matrix with at least k={k} columns, got shape "
                     f"{matrix.shape}.")
  return np.argsort(-matrix, axis=1, kind="stable")[:, :k]


def class_purity(matrix, row_labels, test_labels, k: int) -> np.ndarray:
  """[rows] fraction of each row's top-k most-helped test images that share its class."""
  top = top_helped(matrix, k)
  return np.mean(np.asarray(test_labels)[top] == np.asarray(row_labels)[:, None], axis=1)


def majority_purity(matrix, test_labels, k: int) -> np.ndarray:
  """[rows] fraction of each row's top-k that belongs to the top-k's most common class."""
  labels = np.asarray(test_labels)[top_helped(matrix, k)]
  return np.array([np.bincount(r).max() / k for r in labels])


def benjamini_hochberg(pvalues, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
  """(rejected [m] bool, adjusted q-values [m]) of the Benjamini-Hochberg step-up procedure.

  q_(i) = min_{j >= i} p_(j) m / j over the ascending p-values; reject q <= alpha.
  """
  p = np.asarray(pvalues, np.float64).ravel()
  if p.size == 0:
    return np.zeros(0, bool), np.zeros(0)
  if np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
    raise ValueError("p-values must lie in [0, 1].")
  m = p.size
  order = np.argsort(p, kind="stable")
  scaled = p[order] * m / np.arange(1, m + 1)
  q_sorted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
  q = np.empty(m)
  q[order] = q_sorted
  return q <= alpha, q


def permutation_pvalues(observed, null) -> np.ndarray:
  """(1 + #{null >= observed}) / (1 + draws) per row: one-sided ("more coherent")."""
  observed, null = np.asarray(observed, np.float64), np.asarray(null, np.float64)
  # A hair of slack so that float ties (purity is a multiple of 1/k) count as >=.
  exceed = np.sum(null >= observed[:, None] - 1e-7, axis=1)
  return (1.0 + exceed) / (1.0 + null.shape[1])


def _mean_offdiag(sub: jax.Array) -> jax.Array:
  k = sub.shape[-1]
  return (sub.sum((-2, -1)) - jnp.trace(sub, axis1=-2, axis2=-1)) / (k * (k - 1))


COHERENCE_STATS = ("purity", "majority", "cosine", "cosine_matched", "cosine_any")
COHERENCE_NULLS = {
    "purity": "uniform random k-subsets of the whole test pool",
    "majority": "uniform random k-subsets of the whole test pool",
    "cosine": "uniform random k-subsets of the test pool's images of the distilled image's class",
    "cosine_matched": ("random k-subsets with the top-k's class composition (for each class, "
                       "as many random pool images of it as the top-k holds)"),
    "cosine_any": "uniform random k-subsets of the whole test pool",
}


@functools.partial(jax.jit, static_argnames=("num_draws", "num_classes", "row_batch"))
def _coherence_draws(key, top_idx, row_labels, pool_labels, gram, *, num_draws: int,
                     num_classes: int, row_batch: int):
  """Observed statistics and their permutation nulls (COHERENCE_STATS order), every row.

  Row i draws with fold_in(key, i). Uniform k-subsets of the whole pool are the top-k of
  uniform scores. For the class-restricted nulls, one class-grouped random permutation
  per draw (argsort of 2 * label - uniform: class blocks in order, each shuffled) gives,
  at offset start[c] + r, the r-th random image of class c: positions start[c] + 0..k-1
  are a random same-class k-subset, and start[l_j] + (occurrence of l_j before j) for the
  top-k's labels l_j a random subset with the top-k's class composition.
  """
  n_pool = pool_labels.shape[0]
  k = top_idx.shape[1]
  start = jnp.cumsum(jnp.bincount(pool_labels, length=num_classes)) - jnp.bincount(
      pool_labels, length=num_classes)

  def purity_stats(idx, c):
    lab = pool_labels[idx]
    purity = jnp.mean((lab == c).astype(jnp.float32), -1)
    majority = jax.nn.one_hot(lab, num_classes).sum(-2).max(-1) / k
    return purity, majority

  def cosine(idx):
    return _mean_offdiag(gram[idx[..., :, None], idx[..., None, :]])

  def per_row(args):
    i, top, c = args
    key_any, key_perm = jax.random.split(jax.random.fold_in(key, i))
    _, any_idx = jax.lax.top_k(jax.random.uniform(key_any, (num_draws, n_pool)), k)
    perm = jnp.argsort(2.0 * pool_labels - jax.random.uniform(key_perm, (num_draws, n_pool)),
                       axis=1)
    same_idx = perm[:, start[c] + jnp.arange(k)]
    top_labels = pool_labels[top]
    earlier = jnp.sum((top_labels[None, :] == top_labels[:, None]) & (
        jnp.arange(k)[None, :] < jnp.arange(k)[:, None]), axis=1)
    matched_idx = perm[:, start[top_labels] + earlier]
    obs_purity, obs_majority = purity_stats(top, c)
    null_purity, null_majority = purity_stats(any_idx, c)
    obs_cos = cosine(top)
    return ((obs_purity, obs_majority, obs_cos, obs_cos, obs_cos),
            (null_purity, null_majority, cosine(same_idx), cosine(matched_idx),
             cosine(any_idx)))

  rows = jnp.arange(top_idx.shape[0])
  return jax.lax.map(per_row, (rows, top_idx, row_labels), batch_size=row_batch)


def coherence_tests(key: jax.Array, matrix, row_labels, pool_labels, features, *, k: int,
                    num_draws: int, num_classes: int | None = None, alpha: float = 0.05,
                    row_batch: int = 8) -> dict[str, Any]:
  """Permutation tests of the coherence of each row's top-k most-helped test images.

  Args:
    matrix: [rows, pool] influence (positive = helps).
    row_labels: [rows] classes of the distilled images; pool_labels: [pool] test classes.
    features: [pool, d] features of the test pool (cosine similarity is taken on them).
  Returns, per statistic ("purity": fraction in the distilled image's class, null =
  random k-subsets of the pool; "majority": fraction in the top-k's commonest class, same
  null; "cosine": mean pairwise cosine similarity, null = random k-subsets of the
  distilled image's class; "cosine_matched": the same similarity against random sets with
  the top-k's class composition, i.e. coherence beyond what its classes explain;
  "cosine_any": against random k-subsets of the pool): per-row observed values, null
  means / stds, permutation p-values, BH decisions, and a set-level p-value for the mean
  over rows (draw b of every row forms one null sample of the mean: the rows' draws are
  independent).
  """
  matrix = np.asarray(matrix, np.float64)
  row_labels = np.asarray(row_labels, np.int32)
  pool_labels = np.asarray(pool_labels, np.int32)
  features = np.asarray(features, np.float32)
  if matrix.shape != (row_labels.size, pool_labels.size):
    raise ValueError(f"influence matrix {matrix.shape} does not match {row_labels.size} rows x "
                     f"{pool_labels.size} test images.")
  if features.shape[0] != pool_labels.size:
    raise ValueError(f"{features.shape[0]} feature rows for {pool_labels.size} test images.")
  if k < 2:
    raise ConfigError(f"coherence needs k >= 2 (pairwise similarity), got {k}.")
  num_classes = int(num_classes or max(pool_labels.max(), row_labels.max()) + 1)
  counts = np.bincount(pool_labels, minlength=num_classes)
  short = sorted({int(c) for c in row_labels if counts[c] < k})
  if short:
    raise ConfigError(f"The test pool has fewer than k={k} images of class(es) {short}; "
                      "raise the test subset or lower coherence.top_k.")
  unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
  gram = jnp.asarray(unit @ unit.T)
  top = top_helped(matrix, k)
  obs, null = _coherence_draws(key, jnp.asarray(top, jnp.int32), jnp.asarray(row_labels),
                               jnp.asarray(pool_labels), gram, num_draws=int(num_draws),
                               num_classes=num_classes, row_batch=int(row_batch))
  out: dict[str, Any] = {"top_k": int(k), "num_draws": int(num_draws), "alpha": float(alpha),
                         "top_indices": top}
  for name, o, n in zip(COHERENCE_STATS, obs, null):
    o, n = np.asarray(o, np.float64), np.asarray(n, np.float64)
    p = permutation_pvalues(o, n)
    reject, q = benjamini_hochberg(p, alpha)
    null_mean, null_std = n.mean(1), n.std(1)
    set_null = n.mean(0)  # [draws]: the mean over rows under the null
    out[name] = {
        "observed": o, "null_mean": null_mean, "null_std": null_std, "pvalue": p, "qvalue": q,
        "effect": o - null_mean,
        "standardized_effect": (o - null_mean) / np.maximum(null_std, 1e-12),
        "significant": p <= alpha, "significant_bh": reject,
        "fraction_significant": float(np.mean(p <= alpha)),
        "fraction_significant_bh": float(np.mean(reject)),
        "mean_observed": float(o.mean()), "mean_null": float(null_mean.mean()),
        "mean_effect": float(np.mean(o - null_mean)),
        "set_pvalue": float((1 + np.sum(set_null >= o.mean() - 1e-7)) / (1 + set_null.size)),
    }
  # Exact check of the purity test: the count in the class is hypergeometric under the null.
  class_counts = counts[row_labels]
  hits = np.rint(out["purity"]["observed"] * k).astype(int)
  out["purity"]["hypergeometric_pvalue"] = stats.hypergeom.sf(hits - 1, pool_labels.size,
                                                              class_counts, k)
  return out


# ----------------------------------------------------------------------------- set selection


def _select_sets(names: list[str], distilled: dict, spec: str) -> list[str]:
  """`spec` ("" = all) in the paper's method order, the random control last."""
  wanted = [s.strip() for s in str(spec or "").split(",") if s.strip()] or list(names)
  unknown = [s for s in wanted if s not in distilled]
  if unknown:
    raise DistilledSetError(f"Unknown distilled set(s) {unknown}; loaded: {sorted(distilled)}.")

  def order(name):
    method = distilled[name].method
    return (method == "random", METHOD_ORDER.index(method) if method in METHOD_ORDER else 99,
            name)

  return sorted(dict.fromkeys(wanted), key=order)


def influence_sets(config: ml_collections.ConfigDict, distilled: dict) -> list[str]:
  """The sets of config.influence: `sets` ("" = all), then at most `max_sets` learned ones
  (in the paper's method order; 0 = all) plus every random-real control."""
  names = _select_sets(list(distilled), distilled, config.influence.sets)
  max_sets = int(config.influence.get("max_sets", 0) or 0)
  if max_sets:
    learned = [n for n in names if not _is_control(distilled[n])]
    keep = set(learned[:max_sets])
    names = [n for n in names if n in keep or _is_control(distilled[n])]
  return names


def _is_control(dset: synset.DistilledSet) -> bool:
  return dset.method == "random"


def test_pool_indices(config: ml_collections.ConfigDict, real: data.ImageDataset) -> np.ndarray:
  """Indices into the loaded real test split: config.influence.test_per_class per class."""
  per_class = int(config.influence.test_per_class or 0)
  if not per_class:
    return np.arange(real.y_test.shape[0])
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _TEST_SUBSET)
  return data.class_balanced_indices(key, real.y_test, per_class, real.num_classes)


def loo_rows(config: ml_collections.ConfigDict, dset: synset.DistilledSet) -> np.ndarray:
  """Distilled images left out: all, or config.influence.points_per_class per class."""
  per_class = int(config.influence.points_per_class or 0)
  n = dset.images.shape[0]
  if not per_class:
    return np.arange(n)
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _ROWS)
  try:
    rows = data.class_balanced_indices(key, dset.hard_labels, per_class, dset.num_classes)
  except ValueError as e:
    raise DistilledSetError(f"influence.points_per_class={per_class}: {e}") from e
  return np.sort(rows)


def loo_model(config: ml_collections.ConfigDict, num_classes: int):
  """(model, kwargs) of the network retrained for LOO (config.model, width overridable)."""
  kwargs = dict(config.model_kwargs)
  if config.influence.width:
    kwargs["width"] = int(config.influence.width)
  return models.get_model(config.model, num_classes, **kwargs), kwargs


# ----------------------------------------------------------------------------- exact influence


def leave_one_out(model, variables, x, y, x_test, y_test, rows,
                  **kwargs) -> influence_lib.LOOResult:
  """Exact LOO for the training points `rows` (all: `loo_influence`; else `loo_retrain` on
  those rows of `loo_masks` plus the all-points run), rows of the matrix following `rows`."""
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


def _influence_signature(config, name, dset, real, rows, test_idx, model_kwargs) -> str:
  pa = config.protocol_a
  sig = {"set": name, "images": common.array_digest(dset.images),
         "labels": common.array_digest(dset.labels),
         "dataset": real.name, "test": common.array_digest(test_idx, real.y_test[test_idx],
                                             real.x_test[test_idx[:50]]),
         "rows": np.asarray(rows).tolist(), "model": config.model,
         "model_kwargs": {k: v for k, v in sorted(model_kwargs.items())},
         "steps": int(pa.steps), "learning_rate": float(pa.learning_rate),
         "momentum": float(pa.momentum), "seed": int(config.seed)}
  return json.dumps(sig, sort_keys=True, default=str)


def exact_influence(config: ml_collections.ConfigDict, workdir: str, name: str,
                    dset: synset.DistilledSet, real: data.ImageDataset) -> dict[str, Any]:
  """The saved `<workdir>/influence_<name>.npz` if it matches the settings, else computed.

  Returns its arrays (influence [rows, tests], rows, row_labels, test_indices,
  test_labels, loss_all, loss_without, accuracy_all, accuracy_without, params_flat,
  seconds, signature) and `resumed`.
  """
  model, kwargs = loo_model(config, real.num_classes)
  rows, test_idx = loo_rows(config, dset), test_pool_indices(config, real)
  signature = _influence_signature(config, name, dset, real, rows, test_idx, kwargs)
  path = os.path.join(workdir, INFLUENCE_FILE.format(name))
  saved = common.read_npz(path)
  if saved is not None and str(saved.get("signature")) == signature:
    return {**saved, "resumed": True}
  pa, sec = config.protocol_a, config.influence
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _INIT)
  x, y = jnp.asarray(dset.images), jnp.asarray(dset.labels)
  x_test, y_test = jnp.asarray(real.x_test[test_idx]), jnp.asarray(real.y_test[test_idx])
  variables = models.init_variables(model, key, x.shape)  # one init for every run and set
  start = time.perf_counter()
  loo = leave_one_out(model, variables, x, y, x_test, y_test, rows, num_steps=int(pa.steps),
                      learning_rate=float(pa.learning_rate), momentum=float(pa.momentum),
                      chunk_size=int(sec.chunk_size) or None,
                      eval_batch_size=int(sec.eval_batch_size))
  seconds = time.perf_counter() - start
  out = {"influence": np.asarray(loo.influence, np.float64), "rows": rows,
         "row_labels": dset.hard_labels[rows].astype(np.int32), "test_indices": test_idx,
         "test_labels": real.y_test[test_idx].astype(np.int32), "loss_all": loo.loss_all,
         "loss_without": loo.loss_without, "accuracy_all": np.asarray(loo.accuracy_all),
         "accuracy_without": loo.accuracy_without,
         "params_flat": np.asarray(ravel_pytree(jax.device_get(loo.variables_all))[0]),
         "seconds": np.asarray(seconds), "signature": np.asarray(signature)}
  os.makedirs(workdir, exist_ok=True)
  common.write_npz(path, **out)
  return {**out, "resumed": False}


def trained_variables(config, real, params_flat) -> tuple[Any, dict]:
  """(LOO model, its variables trained on the whole set) from a saved `params_flat`."""
  model, _ = loo_model(config, real.num_classes)
  template = models.init_variables(model, jax.random.PRNGKey(0), (1,) + real.image_shape)
  flat, unravel = ravel_pytree(template)
  if flat.size != np.size(params_flat):
    raise ValueError(f"Saved LOO parameters have {np.size(params_flat)} entries, the model "
                     f"{flat.size}: the influence npz is from another model.")
  return model, unravel(jnp.asarray(params_flat, flat.dtype))


def all_points_correct(config, real: data.ImageDataset, res: dict) -> np.ndarray:
  """[tests] bool: whether the LOO reference model (trained on every distilled image, the
  saved `params_flat`) classifies each test image of the influence pool correctly."""
  model, variables = trained_variables(config, real, res["params_flat"])
  x_test = jnp.asarray(real.x_test[res["test_indices"]])
  out = train.evaluate(model, variables, x_test, jnp.asarray(res["test_labels"]),
                       int(config.influence.eval_batch_size))
  return np.asarray(out["predictions"]) == np.asarray(res["test_labels"])


# ----------------------------------------------------------------------------- figures


def _show(ax, image: np.ndarray, title: str = "", color: str | None = None) -> None:
  if image.shape[-1] == 1:
    ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0)
  else:
    ax.imshow(image)
  ax.set_xticks([])
  ax.set_yticks([])
  if title:
    ax.set_title(title, fontsize=7, color=color or "black", pad=2)
  if color:
    for spine in ax.spines.values():
      spine.set_edgecolor(color)
      spine.set_linewidth(2)


def _grid_figure(workdir: str, name: str, dset, pre, real, res: dict, k: int, cls: int):
  """Fig. 10: each distilled image of class `cls` beside the k test images it helps most."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = np.flatnonzero(res["row_labels"] == cls)
  if rows.size == 0:
    return None
  top = top_helped(res["influence"][rows], k)
  test_idx = res["test_indices"]
  distilled_disp = common.display_images(dset.images[res["rows"][rows]], pre)
  fig, axes = plt.subplots(rows.size, k + 1, figsize=(1.0 * (k + 1), 1.15 * rows.size + 0.4),
                           squeeze=False)
  for r in range(rows.size):
    _show(axes[r, 0], distilled_disp[r], f"{name} #{int(res['rows'][rows[r]])}", "#0072B2")
    test_disp = common.display_images(real.x_test[test_idx[top[r]]], pre)
    for j in range(k):
      label = int(res["test_labels"][top[r, j]])
      value = res["influence"][rows[r], top[r, j]]
      _show(axes[r, j + 1], test_disp[j], f"y={label} {value:+.2g}",
            "#009E73" if label == cls else "#D55E00")
  fig.suptitle(f"{name}: distilled images of class {cls} (left) and the {k} test images each "
               f"helps most\n(largest LOO loss increase when removed; green = same class)",
               fontsize=8)
  fname = f"influence_grid_{name}.png"
  common.save_figure(fig, workdir, fname)
  return fname


def _purity_figure(workdir: str, names: list[str], per_set: dict, k: int) -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)  # jitter only
  fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(names), 3.2))
  for i, n in enumerate(names):
    values = np.asarray(per_set[n]["purity"]["per_image"])
    ax.scatter(i + rng.uniform(-0.2, 0.2, values.size), values, s=10, alpha=0.6,
               color="#999999" if per_set[n]["control"] else "#0072B2")
    ax.hlines(values.mean(), i - 0.3, i + 0.3, color="black")
    ax.hlines(per_set[n]["purity"]["chance"], i - 0.35, i + 0.35, color="#D55E00",
              linestyles="dotted")
  ax.set_xticks(range(len(names)))
  ax.set_xticklabels([n + (" (control)" if per_set[n]["control"] else "") for n in names],
                     rotation=30, ha="right", fontsize=8)
  ax.set_ylim(-0.05, 1.05)
  ax.set_ylabel(f"top-{k} same-class fraction")
  ax.set_title("Class purity of each distilled image's most-helped test images\n"
               "(black: mean; dotted: chance)", fontsize=9)
  common.save_figure(fig, workdir, "influence_purity.png")
  return "influence_purity.png"


# ----------------------------------------------------------------------------- influence (E8)


def _summary(values) -> dict[str, float]:
  values = np.asarray(values, np.float64)
  return {**common.mean_ci(values), "median": float(np.median(values)),
          "min": float(values.min()), "max": float(values.max())}


def purity_chance(row_labels, test_labels) -> float:
  """The expected top-k purity of a random ranking: each row's class share of the tests."""
  test_labels = np.asarray(test_labels)
  return float(np.mean([np.mean(test_labels == c) for c in np.asarray(row_labels)]))


def correct_subset_purity(matrix, row_labels, test_labels, correct, k: int) -> dict[str, Any]:
  """Top-k class purity with the ranking restricted to test images a model gets right.

  Separates "image i helps test images of its class" from "image i moves the loss of the
  few hard test images most": among test images the all-points model already classifies
  correctly, the hard-example pull is largely gone, so a purity that stays above chance
  (and above a random-real control's) is class-specific help.

  Args:
    matrix: [rows, tests] influence, larger = helps more.
    row_labels: [rows] class of each left-out image.
    test_labels: [tests] class of each test image.
    correct: [tests] bool, whether the reference model classifies each test image right.
    k: top-k size.

  Returns:
    {'per_image', summary stats, 'chance', 'num_test'}; {'num_test': n} alone (and no
    purity) when fewer than k test images are correct.
  """
  correct = np.asarray(correct, bool)
  test_labels = np.asarray(test_labels)
  n = int(correct.sum())
  if n < k:
    return {"num_test": n}
  kept = test_labels[correct]
  purity = class_purity(np.asarray(matrix)[:, correct], row_labels, kept, k)
  return {"per_image": purity, **_summary(purity), "chance": purity_chance(row_labels, kept),
          "num_test": n}


def influence_statistics(matrix, row_labels, test_labels, k: int,
                         loss_all=None, correct_all=None) -> dict[str, Any]:
  """Purity of each row's top-k and the influence magnitudes (same vs other class).

  Beyond the paper: `purity_standardized` ranks by each test column's z-score over the
  left-out images (which image affects test image t unusually strongly), removing the
  per-test-image scale; with `loss_all` (the all-points model's test losses), how much the
  raw top-k is drawn to test images that model finds hard; with `correct_all` (whether
  that model classifies each test image right), the share of misclassified images in the
  top-k and `purity_correct` (`correct_subset_purity`).
  """
  matrix = np.asarray(matrix, np.float64)
  row_labels, test_labels = np.asarray(row_labels), np.asarray(test_labels)
  purity = class_purity(matrix, row_labels, test_labels, k)
  majority = majority_purity(matrix, test_labels, k)
  same = test_labels[None, :] == row_labels[:, None]
  mean_same = np.array([m[s].mean() for m, s in zip(matrix, same)])
  mean_other = np.array([m[~s].mean() if (~s).any() else np.nan for m, s in zip(matrix, same)])
  gap = mean_same - mean_other
  chance = purity_chance(row_labels, test_labels)
  if gap.size > 1 and np.any(gap != 0):
    wilcoxon_p = float(stats.wilcoxon(gap, alternative="greater").pvalue)
  else:
    wilcoxon_p = float("nan")
  top = top_helped(matrix, k)
  zscores = (matrix - matrix.mean(0)) / np.maximum(matrix.std(0), 1e-12)
  purity_z = class_purity(zscores, row_labels, test_labels, k)
  out = {
      "purity_standardized": {"per_image": purity_z, **_summary(purity_z)},
      "purity": {"per_image": purity, **_summary(purity), "chance": float(chance),
                 "fraction_pure": float(np.mean(purity == 1.0)),
                 "same_class_in_top": int(np.rint(purity * k).sum()),
                 "top_total": int(purity.size * k)},
      "majority_purity": {"per_image": majority, **_summary(majority)},
      "magnitude": {
          "mean_abs": float(np.abs(matrix).mean()), "std": float(matrix.std()),
          "max": float(matrix.max()), "min": float(matrix.min()),
          "fraction_positive": float(np.mean(matrix > 0)),
          "mean_topk": float(np.take_along_axis(matrix, top, 1).mean()),
          "mean_same_class": float(mean_same.mean()),
          "mean_other_class": float(np.nanmean(mean_other)),
          "same_minus_other": _summary(gap),
          "fraction_rows_same_above_other": float(np.mean(gap > 0)),
          "wilcoxon_p_same_above_other": wilcoxon_p,
          "row_mean_abs": np.abs(matrix).mean(1),
      },
  }
  if loss_all is not None:
    loss_all = np.asarray(loss_all, np.float64)
    col_abs = np.abs(matrix).mean(0)
    out["hard_examples"] = {
        "corr_mean_abs_influence_vs_loss": (float(np.corrcoef(col_abs, loss_all)[0, 1])
                                            if col_abs.std() > 0 and loss_all.std() > 0
                                            else float("nan")),
        "topk_mean_loss_all": float(loss_all[top].mean()),
        "pool_mean_loss_all": float(loss_all.mean()),
        "pool_median_loss_all": float(np.median(loss_all))}
  if correct_all is not None:
    wrong = ~np.asarray(correct_all, bool)
    out.setdefault("hard_examples", {}).update({
        "topk_fraction_misclassified": float(wrong[top].mean()),
        "pool_fraction_misclassified": float(wrong.mean())})
    out["purity_correct"] = correct_subset_purity(matrix, row_labels, test_labels,
                                                  ~wrong, k)
  return out


def run_influence(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """E8 / Fig. 10: exact LOO influence of distilled images on real test images."""
  sec = config.influence
  adata = common.load_analysis_data(config)
  real, pre = adata.real, adata.preprocessor
  names = influence_sets(config, adata.distilled)
  k = int(sec.top_k)
  per_set, figures = {}, []
  for name in tqdm(names, desc="influence", disable=not config.progress):
    dset = adata.distilled[name]
    res = exact_influence(config, workdir, name, dset, real)
    st = influence_statistics(res["influence"], res["row_labels"], res["test_labels"], k,
                              res["loss_all"], all_points_correct(config, real, res))
    top = top_helped(res["influence"], k)
    per_set[name] = {
        "method": dset.method, "control": _is_control(dset),
        "num_distilled": int(dset.images.shape[0]), "rows": res["rows"],
        "row_labels": res["row_labels"], "num_test": int(res["test_indices"].size),
        "loo_runs": int(res["rows"].size + 1), "loo_seconds": float(res["seconds"]),
        "resumed": bool(res["resumed"]), "file": INFLUENCE_FILE.format(name),
        "accuracy_all": float(res["accuracy_all"]),
        "accuracy_without": _summary(res["accuracy_without"]),
        # top-k test images per row, as indices into the loaded real test split
        "top_test_indices": res["test_indices"][top], **st}
    fig = _grid_figure(workdir, name, dset, pre, real, res, min(9, k), int(sec.grid_class))
    if fig:
      figures.append(fig)
  figures.insert(0, _purity_figure(workdir, names, per_set, k))
  learned = [n for n in names if not per_set[n]["control"]]
  _, kwargs = loo_model(config, real.num_classes)
  results = {
      "analysis": "influence", "paper_counterpart": "Fig. 10 (section 5, E8)",
      "figures": figures, "config": sec.to_dict(),
      "protocol_a": config.protocol_a.to_dict(), "loo_model": {"model": config.model, **kwargs},
      "seeds": {"config_seed": int(config.seed), "init": f"fold_in(seed, {_INIT})",
                "test_subset": f"fold_in(seed, {_TEST_SUBSET})",
                "rows": f"fold_in(seed, {_ROWS})"},
      "sign_convention": SIGN_CONVENTION, "top_k": k, "set_order": names,
      "learned_sets": learned, "sets": per_set,
  }
  if learned:
    purities = np.concatenate([per_set[n]["purity"]["per_image"] for n in learned])
    results["learned_pooled"] = {"purity": _summary(purities),
                                 "fraction_pure": float(np.mean(purities == 1.0))}
  common.write_results(workdir, "influence", results)
  return common.read_results(workdir, "influence")


# ----------------------------------------------------------------------------- influence_approx


def _spectrum(model, variables, x, y, curvature_kind: str, key, num_iters: int) -> dict:
  build = (curvature.hessian_operator if curvature_kind == "hessian"
           else curvature.gauss_newton_operator)
  op = build(model, variables, x, y)
  num_iters = max(2, min(int(num_iters), op.size))
  res = curvature.lanczos(op, key, num_iters)
  theta, _ = curvature.tridiagonal_eigh(res.alphas, res.betas)
  return {"lambda_min": float(theta.min()), "lambda_max": float(theta.max()),
          "lanczos_iters": num_iters, "num_params": int(op.size)}


def _method_info(info: dict) -> dict:
  """The solver diagnostics worth keeping (lists summarised)."""
  out = {}
  for key, value in info.items():
    if key in ("iterations", "relative_residual") and isinstance(value, list):
      arr = np.asarray(value, np.float64)
      out[key + "_mean"] = float(arr.mean())
      out[key + "_max"] = float(arr.max())
    elif key in ("eigenvalues", "ritz_residuals"):
      out[key] = value[:10]
    else:
      out[key] = value
  return out


def _approx_for_set(config, workdir, name, dset, real, res) -> dict[str, Any]:
  """Influence functions for one set (cached in influence_approx_<name>.npz)."""
  sec = config.influence_approx
  methods = [m.strip() for m in str(sec.methods).split(",") if m.strip()]
  unknown = [m for m in methods if m not in influence_lib.METHODS]
  if unknown:
    raise ConfigError(f"Unknown influence_approx method(s) {unknown}; expected some of "
                      f"{influence_lib.METHODS}.")
  # Only the settings the matrices depend on (not which sets, k or plotting).
  solver = {k: v for k, v in sec.to_dict().items()
            if k not in ("sets", "max_sets", "top_k", "max_scatter_points")}
  signature = json.dumps({"exact": str(res["signature"]), "solver": solver, "seed": config.seed},
                         sort_keys=True, default=str)
  path = os.path.join(workdir, APPROX_FILE.format(name))
  saved = common.read_npz(path)
  if saved is not None and str(saved.get("signature")) == signature:
    meta = json.loads(str(saved["meta"]))
    return {"meta": meta, "matrices": {m: saved[f"approx_{m}"] for m in methods
                                       if f"approx_{m}" in saved}, "resumed": True}
  model, variables = trained_variables(config, real, res["params_flat"])
  x, y = jnp.asarray(dset.images), jnp.asarray(dset.labels)
  x_test = jnp.asarray(real.x_test[res["test_indices"]])
  y_test = jnp.asarray(res["test_labels"])
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _LANCZOS)
  start = time.perf_counter()
  spectrum = _spectrum(model, variables, x, y, sec.curvature, key, sec.lanczos_iters)
  spectrum["seconds"] = time.perf_counter() - start
  damping = float(sec.damping)
  if sec.damping_from_lambda_min and spectrum["lambda_min"] < 0:
    damping = max(damping, float(sec.damping_factor) * -spectrum["lambda_min"])
  scale = 1.5 * (max(abs(spectrum["lambda_max"]), abs(spectrum["lambda_min"])) + damping)
  meta: dict[str, Any] = {"spectrum": spectrum, "damping": damping, "lissa_scale": scale,
                          "methods": {}}
  matrices = {}
  for method in methods:
    start = time.perf_counter()
    try:
      out = influence_lib.influence_functions(
          model, variables, x, y, x_test, y_test, method=method, curvature_kind=sec.curvature,
          damping=damping, key=jax.random.fold_in(key, 1), cg_maxiter=int(sec.cg_maxiter),
          cg_tol=float(sec.cg_tol), lissa_scale=scale, lissa_depth=int(sec.lissa_depth),
          arnoldi_rank=int(sec.arnoldi_rank), arnoldi_iters=int(sec.arnoldi_iters),
          rows=res["rows"])
    except (FloatingPointError, ValueError) as e:  # LiSSA divergence, NaN curvature, ...
      meta["methods"][method] = {"error": f"{type(e).__name__}: {e}",
                                 "seconds": time.perf_counter() - start}
      continue
    matrices[method] = np.asarray(out.influence, np.float64)
    meta["methods"][method] = {"seconds": time.perf_counter() - start,
                               "info": _method_info(out.info)}
  os.makedirs(workdir, exist_ok=True)
  common.write_npz(path, signature=np.asarray(signature),
             meta=np.asarray(json.dumps(meta, default=float)),
             **{f"approx_{m}": v for m, v in matrices.items()})
  return {"meta": meta, "matrices": matrices, "resumed": False}


def _approx_figure(workdir, names, methods, exact, approx, max_points, seed) -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  fig, axes = plt.subplots(len(names), len(methods), squeeze=False,
                           figsize=(2.4 * len(methods), 2.3 * len(names)))
  for i, n in enumerate(names):
    for j, m in enumerate(methods):
      ax = axes[i, j]
      if m not in approx[n]:
        ax.text(0.5, 0.5, "failed", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{n} / {m}", fontsize=8)
        continue
      e, a = exact[n].ravel(), approx[n][m].ravel()
      pick = rng.choice(e.size, min(e.size, max_points), replace=False)
      ax.scatter(e[pick], a[pick], s=3, alpha=0.4, color="#0072B2")
      r = influence_lib.pearson(a, e)
      ax.set_title(f"{n} / {m}: r={r:.2f}", fontsize=8)
      ax.axhline(0, color="grey", lw=0.5)
      ax.axvline(0, color="grey", lw=0.5)
      ax.tick_params(labelsize=6)
      if i == len(names) - 1:
        ax.set_xlabel("exact LOO", fontsize=7)
      if j == 0:
        ax.set_ylabel("approximation", fontsize=7)
  fig.suptitle("Influence functions vs exact leave-one-out (each point: one distilled x test "
               "pair)", fontsize=9)
  fig.tight_layout()
  common.save_figure(fig, workdir, "influence_approx.png")
  return "influence_approx.png"


def run_influence_approx(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Extension: influence functions (CG, LiSSA, Arnoldi, ...) vs the exact LOO."""
  sec = config.influence_approx
  adata = common.load_analysis_data(config)
  real = adata.real
  base = influence_sets(config, adata.distilled)
  names = _select_sets(base, adata.distilled, sec.sets) if sec.sets else base
  if sec.max_sets:
    names = names[:int(sec.max_sets)]
  methods = [m.strip() for m in str(sec.methods).split(",") if m.strip()]
  k = int(sec.top_k)
  per_set, exact, approx = {}, {}, {}
  for name in tqdm(names, desc="influence_approx", disable=not config.progress):
    dset = adata.distilled[name]
    res = exact_influence(config, workdir, name, dset, real)
    out = _approx_for_set(config, workdir, name, dset, real, res)
    exact[name], approx[name] = res["influence"], out["matrices"]
    k_eff = min(k, res["influence"].shape[1])
    entry = {"method": dset.method, "control": _is_control(dset),
             "exact_loo_seconds": float(res["seconds"]), "rows": int(res["rows"].size),
             "num_test": int(res["test_indices"].size), "resumed": bool(out["resumed"]),
             "spectrum": out["meta"]["spectrum"], "damping": out["meta"]["damping"],
             "lissa_scale": out["meta"]["lissa_scale"], "methods": {}}
    exact_purity = class_purity(res["influence"], res["row_labels"], res["test_labels"], k_eff)
    for m in methods:
      info = out["meta"]["methods"].get(m, {"error": "not run"})
      if m in out["matrices"]:
        mat = out["matrices"][m]
        cmp = influence_lib.compare_influence(mat, res["influence"], k=k_eff)
        info = {**info, **cmp, "topk_overlap": cmp[f"top{k_eff}_overlap"],
                "sign_agreement": float(np.mean(np.sign(mat) == np.sign(res["influence"]))),
                "scale_ratio": float(np.abs(mat).mean() / max(np.abs(res["influence"]).mean(),
                                                              1e-30)),
                "purity_topk": float(class_purity(mat, res["row_labels"], res["test_labels"],
                                                  k_eff).mean())}
      entry["methods"][m] = info
    entry["exact_purity_topk"] = float(exact_purity.mean())
    per_set[name] = entry
  figures = [_approx_figure(workdir, names, methods, exact, approx, int(sec.max_scatter_points),
                            int(config.seed))] if names else []
  summary = {}
  for m in methods:
    ok = [per_set[n]["methods"][m] for n in names if "pearson" in per_set[n]["methods"][m]]
    summary[m] = {"sets_ok": len(ok), "sets_failed": len(names) - len(ok)}
    for stat in ("pearson", "spearman", "pearson_row_mean", "spearman_row_mean", "topk_overlap",
                 "seconds"):
      if ok:
        summary[m][stat] = float(np.mean([o[stat] for o in ok]))
  results = {
      "analysis": "influence_approx",
      "paper_counterpart": "none (extension: the paper used exact leave-one-out only, E8)",
      "figures": figures, "config": sec.to_dict(), "influence_config": config.influence.to_dict(),
      "seeds": {"config_seed": int(config.seed), "lanczos": f"fold_in(seed, {_LANCZOS})"},
      "sign_convention": SIGN_CONVENTION + " (influence functions use the same sign)",
      "note": ("The LOO model is protocol A (a fixed number of full-batch steps), not trained "
               "to convergence: the Hessian is indefinite and influence functions, which "
               "assume a minimum, are expected to be imperfect. Seconds include compilation."),
      "top_k": k, "methods": methods, "set_order": names, "sets": per_set, "summary": summary,
  }
  common.write_results(workdir, "influence_approx", results)
  return common.read_results(workdir, "influence_approx")


# ----------------------------------------------------------------------------- coherence (E9)


@functools.partial(jax.jit, static_argnames=("model",))
def _embed(model, variables, x):
  return model.apply(variables, x, method="embed")


def embed_features(model, variables, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
  """Penultimate features of `x` in batches (last batch padded, one compiled shape)."""
  n = x.shape[0]
  batch_size = max(1, min(int(batch_size), n))
  out = []
  for start in range(0, n, batch_size):
    xb = x[start:start + batch_size]
    pad = batch_size - xb.shape[0]
    if pad:
      xb = np.concatenate([xb, np.zeros((pad,) + xb.shape[1:], xb.dtype)])
    out.append(np.asarray(_embed(model, variables, jnp.asarray(xb)))[:batch_size - pad])
  return np.concatenate(out)


def _coherence_figure(workdir, names, per_set, alpha) -> str:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)  # jitter only
  fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(3.0 + 1.6 * len(names), 3.4))
  x = np.arange(len(names))
  for i, n in enumerate(names):
    eff = np.asarray(per_set[n]["cosine"]["effect"])
    ax0.scatter(i + rng.uniform(-0.2, 0.2, eff.size), eff, s=10, alpha=0.6,
                color="#999999" if per_set[n]["control"] else "#0072B2")
    ax0.hlines(eff.mean(), i - 0.3, i + 0.3, color="black")
  ax0.axhline(0, color="#D55E00", ls="dotted")
  ax0.set_ylabel("cosine coherence - random same-class mean")
  ax0.set_title("Feature coherence of each image's top-k", fontsize=9)
  width = 0.2
  for j, (stat, label) in enumerate((("purity", "class purity"), ("cosine", "cosine"))):
    ax1.bar(x + (2 * j - 1) * width, [per_set[n][stat]["fraction_significant"] for n in names],
            width, label=f"{label}, p<={alpha}", alpha=0.5, color=("#009E73", "#0072B2")[j])
    ax1.bar(x + 2 * j * width, [per_set[n][stat]["fraction_significant_bh"] for n in names],
            width, label=f"{label}, BH q<={alpha}", color=("#009E73", "#0072B2")[j])
  ax1.set_ylim(0, 1.05)
  ax1.set_ylabel("fraction of distilled images")
  ax1.set_title("Significantly more coherent than random", fontsize=9)
  ax1.legend(fontsize=6)
  for ax in (ax0, ax1):
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
  fig.tight_layout()
  common.save_figure(fig, workdir, "coherence.png")
  return "coherence.png"


def run_coherence(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """E9 stand-in: top-k most-helped test images vs random sets, permutation tests."""
  sec = config.coherence
  adata = common.load_analysis_data(config)
  real = adata.real
  base = influence_sets(config, adata.distilled)
  names = _select_sets(base, adata.distilled, sec.sets) if sec.sets else base
  feat_model, feat_vars = common.real_model_from_config(config, real, workdir)
  features_cache: dict[str, np.ndarray] = {}
  per_set = {}
  for name in tqdm(names, desc="coherence", disable=not config.progress):
    dset = adata.distilled[name]
    res = exact_influence(config, workdir, name, dset, real)
    pool_key = common.array_digest(res["test_indices"])
    if pool_key not in features_cache:  # every set shares one pool unless configs differ
      features_cache[pool_key] = embed_features(feat_model, feat_vars,
                                                real.x_test[res["test_indices"]],
                                                sec.feature_batch)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), _PERMUTATION),
                             zlib.crc32(name.encode()) & 0x7FFFFFFF)
    tests = coherence_tests(key, res["influence"], res["row_labels"], res["test_labels"],
                            features_cache[pool_key], k=int(sec.top_k),
                            num_draws=int(sec.num_draws), num_classes=real.num_classes,
                            alpha=float(sec.alpha), row_batch=int(sec.row_batch))
    per_set[name] = {"method": dset.method, "control": _is_control(dset),
                     "rows": res["rows"], "row_labels": res["row_labels"],
                     "top_test_indices": res["test_indices"][tests.pop("top_indices")],
                     "num_test": int(res["test_indices"].size), **tests}
  learned = [n for n in names if not per_set[n]["control"]]
  pooled = {}
  for stat in COHERENCE_STATS:
    if learned:
      p = np.concatenate([per_set[n][stat]["pvalue"] for n in learned])
      reject, _ = benjamini_hochberg(p, float(sec.alpha))
      pooled[stat] = {"fraction_significant": float(np.mean(p <= sec.alpha)),
                      "fraction_significant_bh": float(np.mean(reject)),
                      "mean_effect": float(np.mean(np.concatenate(
                          [per_set[n][stat]["effect"] for n in learned])))}
  figures = [_coherence_figure(workdir, names, per_set, float(sec.alpha))] if names else []
  results = {
      "analysis": "coherence",
      "paper_counterpart": ("section 5 quantitative analysis (E9; the paper used LLaVA "
                            "descriptions, replaced here by class purity and real-model "
                            "feature similarity under permutation tests)"),
      "figures": figures, "config": sec.to_dict(), "influence_config": config.influence.to_dict(),
      "feature_model": {"model": config.real_model.model,
                        **dict(config.real_model.model_kwargs),
                        "epochs": int(config.real_model.epochs)},
      "seeds": {"config_seed": int(config.seed),
                "permutation": f"fold_in(fold_in(seed, {_PERMUTATION}), crc32(set name)), "
                               "then fold_in(., row)"},
      "sign_convention": SIGN_CONVENTION,
      "nulls": COHERENCE_NULLS,
      "set_order": names, "learned_sets": learned, "sets": per_set, "learned_pooled": pooled,
  }
  common.write_results(workdir, "coherence", results)
  return common.read_results(workdir, "coherence")


# ----------------------------------------------------------------------------- claims


def _fmt(x: float, digits: int = 2) -> str:
  return f"{x:.{digits}f}"


def _hard_example_text(sets: dict, names: list[str]) -> str:
  """The hard-example measurements of the claim row (absent from results before them)."""
  have = [n for n in names if "mean" in sets[n].get("purity_correct", {})]
  if not have:
    return ""
  hard = sets[have[0]]["hard_examples"]
  return ("; misclassified by the all-points model: " + ", ".join(
      f"{n} {_fmt(sets[n]['hard_examples']['topk_fraction_misclassified'])}" for n in have)
      + f" of the top-k vs {_fmt(hard['pool_fraction_misclassified'])} of the pool"
      + "; top-k among correctly classified test images only: " + ", ".join(
          f"{n} {_fmt(sets[n]['purity_correct']['mean'])}" for n in have)
      + f" (chance {_fmt(sets[have[0]]['purity_correct']['chance'])})")


def _influence_claims(res: dict) -> list[dict]:
  learned = [n for n in res["set_order"] if not res["sets"][n]["control"]]
  if not learned:
    return []
  sets = res["sets"]
  k = res["top_k"]
  control = [n for n in res["set_order"] if sets[n]["control"]]
  ok = all(sets[n]["purity"]["mean"] >= 0.8 and sets[n]["magnitude"]["mean_same_class"]
           > sets[n]["magnitude"]["mean_other_class"] for n in learned)
  mag = {n: sets[n]["magnitude"] for n in learned}
  measured = "; ".join(
      f"{n} {_fmt(sets[n]['purity']['mean'])} ({sets[n]['purity']['same_class_in_top']}/"
      f"{sets[n]['purity']['top_total']}, same-class mean I {mag[n]['mean_same_class']:.2g}"
      f" vs other {mag[n]['mean_other_class']:.2g})" for n in learned)
  if control:
    c = control[0]
    measured += f"; control {c} {_fmt(sets[c]['purity']['mean'])}"
  measured += f"; chance {_fmt(sets[learned[0]]['purity']['chance'])}"
  measured += "; column-standardised ranking: " + ", ".join(
      f"{n} {_fmt(sets[n]['purity_standardized']['mean'])}" for n in learned)
  measured += _hard_example_text(sets, learned + control[:1])
  return [{
      "question": "Q3", "analysis": "influence",
      "claim": ("Individual distilled images carry meaningful, class-specific information: the "
                "real test images each one helps most (exact leave-one-out) are of its class."),
      "criterion": (f"every learned set: mean top-{k} same-class fraction >= 0.8, and the mean "
                    "influence on same-class test images > on other-class ones"),
      "paper": ("Fig. 10 (qualitative): all 90 top-9 test images of the 10 BPTT airplane "
                "images are airplanes, in visually coherent sub-groups (CIFAR-10)"),
      "measured": f"top-{k} purity per set: " + measured,
      "reproduced": bool(ok)}]


def _approx_claims(res: dict) -> list[dict]:
  names, methods = res["set_order"], res["methods"]
  if not names or not methods:
    return []
  k = res["top_k"]

  def best(n):
    ok = {m: v for m, v in res["sets"][n]["methods"].items() if "spearman" in v}
    return max(ok.items(), key=lambda kv: kv[1]["spearman"]) if ok else (None, None)

  ok = True
  for n in names:
    m, v = best(n)
    ok &= m is not None and v["spearman"] >= 0.5 and v["topk_overlap"] >= 0.5
  measured = "; ".join(
      f"{m}: Spearman {_fmt(s['spearman'])}, top-{k} overlap {_fmt(s['topk_overlap'])}, "
      f"{s['seconds']:.0f} s" if "spearman" in s else f"{m}: failed on {s['sets_failed']} set(s)"
      for m, s in res["summary"].items())
  exact_s = np.mean([res["sets"][n]["exact_loo_seconds"] for n in names])
  return [{
      "question": "Q3", "analysis": "influence_approx",
      "claim": ("Extension (ddjax, not in the paper): influence-function approximations (CG, "
                "LiSSA, Arnoldi) recover the exact leave-one-out influence of distilled images."),
      "criterion": (f"on every set, the best method reaches Spearman >= 0.5 with exact LOO and "
                    f"top-{k} overlap >= 0.5"),
      "paper": "none: the paper used exact LOO retraining only (no approximation)",
      "measured": f"mean over sets: {measured}; exact LOO {exact_s:.0f} s per set",
      "reproduced": bool(ok)}]


def _coherence_claims(res: dict) -> list[dict]:
  learned = res.get("learned_sets") or []
  if not learned:
    return []
  sets, alpha = res["sets"], res["config"]["alpha"]
  k = res["config"]["top_k"]
  ok = all(sets[n]["cosine"]["set_pvalue"] < alpha for n in learned)

  def one(n):
    c, m, p = sets[n]["cosine"], sets[n]["cosine_matched"], sets[n]["purity"]
    return (f"{n}: cosine {_fmt(c['mean_observed'])} vs same-class {_fmt(c['mean_null'])} "
            f"(set p {c['set_pvalue']:.3g}, BH-significant images "
            f"{_fmt(c['fraction_significant_bh'])}); "
            f"vs class-matched {_fmt(m['mean_null'])} (p {m['set_pvalue']:.3g}); purity "
            f"{_fmt(p['mean_observed'])} vs {_fmt(p['mean_null'])} (p {p['set_pvalue']:.3g})")

  return [{
      "question": "Q3", "analysis": "coherence",
      "claim": ("The real test images a distilled image helps most are semantically coherent: "
                "more similar to each other than random images of the distilled image's class."),
      "criterion": (f"every learned set: set-level permutation p < {alpha} for the mean pairwise "
                    f"cosine similarity (real-trained ConvNet features) of each image's top-{k} "
                    "against random same-class top-k sets"),
      "paper": ("section 5, LLaVA analysis: top-influenced images share semantic attributes "
                "(protocol and numbers not recoverable; Fig. 10 shows coherent sub-groups)"),
      "measured": "; ".join(one(n) for n in learned),
      "reproduced": bool(ok)}]


def claims(results: dict[str, dict]) -> list[dict[str, Any]]:
  """Report rows for influence, influence_approx and coherence (those present)."""
  return common.claim_rows(results, {"influence": _influence_claims,
                                     "influence_approx": _approx_claims,
                                     "coherence": _coherence_claims})
