"""Q3, the paper's section 5 quantitative analysis: are the real test images a distilled
image helps most a coherent group?

The paper asked LLaVA to describe each distilled image's top-influenced test images,
which cannot run here. Instead: is each distilled image's top-k most-helped set (exact
leave-one-out, `ddjax.analysis.loo`, the sets and settings of `config.influence`) more
coherent than random sets? (a) class purity against random k-subsets of the test pool,
(b) mean pairwise cosine similarity of a real-trained model's penultimate features against
random k-subsets of the distilled image's own class (and against random sets of the
top-k's class composition, and of the whole pool). Permutation p-values per image
(vectorised, seeded draws), per set the fraction significant raw and after
Benjamini-Hochberg, the mean effect, and a set-level permutation p-value.
"""

from __future__ import annotations

import functools
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy import stats as scipy_stats

from ddjax import analysis
from ddjax.analysis import cache, common, loo, stats
from ddjax.errors import ConfigError

QUESTION = "Q3"
POSITION = 3

__all__ = ["QUESTION", "POSITION", "COHERENCE_STATS", "COHERENCE_NULLS", "default_config",
           "permutation_pvalues", "coherence_tests", "embed_features", "run", "claims"]

# fold_in constant of the permutation draws, a stream of config.seed.
_PERMUTATION = 901

COHERENCE_STATS = ("purity", "majority", "cosine", "cosine_matched", "cosine_any")
COHERENCE_NULLS = {
    "purity": "uniform random k-subsets of the whole test pool",
    "majority": "uniform random k-subsets of the whole test pool",
    "cosine": "uniform random k-subsets of the test pool's images of the distilled image's class",
    "cosine_matched": ("random k-subsets with the top-k's class composition (for each class, "
                       "as many random pool images of it as the top-k holds)"),
    "cosine_any": "uniform random k-subsets of the whole test pool",
}


def default_config() -> ml_collections.ConfigDict:
  """The `coherence` section at the paper's scale.

  Returns:
    The section (CIFAR-10's 10,000 test images need more draws: configs/analysis/coherence.py).
  """
  coh = ml_collections.ConfigDict()
  coh.sets = ""            # "" = every set of config.influence.sets
  coh.top_k = 9            # the top-k most-helped test images per distilled image
  coh.num_draws = 2000     # random k-subsets per distilled image (p-value floor 1/(draws+1))
  coh.alpha = 0.05         # significance level, raw and Benjamini-Hochberg (per set)
  coh.row_batch = 8        # distilled images whose null draws are held in memory at once
  coh.feature_batch = 500  # images per forward pass of the real-trained feature model
  return coh


# ----------------------------------------------------------------------------- permutation tests


def permutation_pvalues(observed, null) -> np.ndarray:
  """One-sided ("more coherent") permutation p-values.

  Args:
    observed: [rows] the observed statistics.
    null: [rows, draws] the statistic under the null.

  Returns:
    [rows] (1 + #{null >= observed}) / (1 + draws).
  """
  observed, null = np.asarray(observed, np.float64), np.asarray(null, np.float64)
  # A hair of slack so that float ties (purity is a multiple of 1/k) count as >=.
  exceed = np.sum(null >= observed[:, None] - 1e-7, axis=1)
  return (1.0 + exceed) / (1.0 + null.shape[1])


def _mean_offdiag(sub: jax.Array) -> jax.Array:
  k = sub.shape[-1]
  return (sub.sum((-2, -1)) - jnp.trace(sub, axis1=-2, axis2=-1)) / (k * (k - 1))


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


def _check_inputs(matrix, row_labels, pool_labels, features, k: int,
                  num_classes: int | None) -> tuple[int, np.ndarray]:
  """Validates `coherence_tests`' inputs; returns (number of classes, pool class counts)."""
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
  return num_classes, counts


def _stat_summary(o, n, alpha: float) -> dict[str, Any]:
  """One statistic's per-row test and its set-level summary."""
  o, n = np.asarray(o, np.float64), np.asarray(n, np.float64)
  p = permutation_pvalues(o, n)
  reject, q = stats.benjamini_hochberg(p, alpha)
  null_mean, null_std = n.mean(1), n.std(1)
  set_null = n.mean(0)  # [draws]: the mean over rows under the null
  return {
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


def coherence_tests(key: jax.Array, matrix, row_labels, pool_labels, features, *, k: int,
                    num_draws: int, num_classes: int | None = None, alpha: float = 0.05,
                    row_batch: int = 8) -> dict[str, Any]:
  """Permutation tests of the coherence of each row's top-k most-helped test images.

  Per statistic: "purity" (fraction in the distilled image's class; null = random
  k-subsets of the pool), "majority" (fraction in the top-k's commonest class, same null),
  "cosine" (mean pairwise cosine similarity; null = random k-subsets of the distilled
  image's class), "cosine_matched" (the same similarity against random sets with the
  top-k's class composition, i.e. coherence beyond what its classes explain) and
  "cosine_any" (against random k-subsets of the pool).

  Args:
    key: the PRNG key (row i draws with fold_in(key, i)).
    matrix: [rows, pool] influence (positive = helps).
    row_labels: [rows] classes of the distilled images.
    pool_labels: [pool] classes of the test images.
    features: [pool, d] features of the test pool (cosine similarity is taken on them).
    k: top-k size (>= 2).
    num_draws: null draws per row.
    num_classes: the number of classes (default: from the labels).
    alpha: the significance level, raw and Benjamini-Hochberg.
    row_batch: rows whose draws are held in memory at once.

  Returns:
    {"top_k", "num_draws", "alpha", "top_indices"} and, per statistic, the per-row observed
    values, null means / stds, permutation p-values, BH decisions, and a set-level p-value
    for the mean over rows (draw b of every row forms one null sample of the mean: the
    rows' draws are independent); "purity" also has the exact hypergeometric p-values.

  Raises:
    ValueError: for mismatched shapes.
    ConfigError: for k < 2, or a class with fewer than k pool images.
  """
  matrix = np.asarray(matrix, np.float64)
  row_labels = np.asarray(row_labels, np.int32)
  pool_labels = np.asarray(pool_labels, np.int32)
  features = np.asarray(features, np.float32)
  num_classes, counts = _check_inputs(matrix, row_labels, pool_labels, features, k,
                                      num_classes)
  unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
  gram = jnp.asarray(unit @ unit.T)
  top = loo.top_helped(matrix, k)
  obs, null = _coherence_draws(key, jnp.asarray(top, jnp.int32), jnp.asarray(row_labels),
                               jnp.asarray(pool_labels), gram, num_draws=int(num_draws),
                               num_classes=num_classes, row_batch=int(row_batch))
  out: dict[str, Any] = {"top_k": int(k), "num_draws": int(num_draws), "alpha": float(alpha),
                         "top_indices": top}
  for name, o, n in zip(COHERENCE_STATS, obs, null):
    out[name] = _stat_summary(o, n, alpha)
  # Exact check of the purity test: the count in the class is hypergeometric under the null.
  class_counts = counts[row_labels]
  hits = np.rint(out["purity"]["observed"] * k).astype(int)
  out["purity"]["hypergeometric_pvalue"] = scipy_stats.hypergeom.sf(
      hits - 1, pool_labels.size, class_counts, k)
  return out


# ----------------------------------------------------------------------------- features


@functools.partial(jax.jit, static_argnames=("model",))
def _embed(model, variables, x):
  return model.apply(variables, x, method="embed")


def embed_features(model, variables, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
  """Penultimate features of `x`.

  Args:
    model, variables: a trained network with an `embed` method.
    x: [n, ...] images (model space).
    batch_size: images per forward pass (the last batch is padded: one compiled shape).

  Returns:
    [n, d] features.
  """
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


# ----------------------------------------------------------------------------- run


def _figure(workdir, names, per_set, alpha) -> str:
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


def _set_entry(config, workdir, name, dset, real, features) -> dict[str, Any]:
  """One set's tests; `features` (pool digest -> features) is filled as needed."""
  sec = config.coherence
  res = loo.exact_influence(config, workdir, name, dset, real)
  pool_key = cache.digest(res["test_indices"])
  if pool_key not in features:  # every set shares one pool unless configs differ
    model, variables = common.real_model_from_config(config, real, workdir)
    features[pool_key] = embed_features(model, variables, real.x_test[res["test_indices"]],
                                        sec.feature_batch)
  key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.seed), _PERMUTATION),
                           zlib.crc32(name.encode()) & 0x7FFFFFFF)
  tests = coherence_tests(key, res["influence"], res["row_labels"], res["test_labels"],
                          features[pool_key], k=int(sec.top_k),
                          num_draws=int(sec.num_draws), num_classes=real.num_classes,
                          alpha=float(sec.alpha), row_batch=int(sec.row_batch))
  return {"method": dset.method, "control": loo.is_control(dset),
          "rows": res["rows"], "row_labels": res["row_labels"],
          "top_test_indices": res["test_indices"][tests.pop("top_indices")],
          "num_test": int(res["test_indices"].size), **tests}


def _pooled(learned: list[str], per_set: dict, alpha: float) -> dict:
  """Per statistic, the learned sets' tests pooled (BH over all their images)."""
  pooled = {}
  for stat in COHERENCE_STATS:
    if learned:
      p = np.concatenate([per_set[n][stat]["pvalue"] for n in learned])
      reject, _ = stats.benjamini_hochberg(p, alpha)
      pooled[stat] = {"fraction_significant": float(np.mean(p <= alpha)),
                      "fraction_significant_bh": float(np.mean(reject)),
                      "mean_effect": float(np.mean(np.concatenate(
                          [per_set[n][stat]["effect"] for n in learned])))}
  return pooled


def _results(config, figures, names, learned, per_set, pooled) -> dict[str, Any]:
  return {
      "analysis": "coherence",
      "paper_counterpart": ("section 5 quantitative analysis (E9; the paper used LLaVA "
                            "descriptions, replaced here by class purity and real-model "
                            "feature similarity under permutation tests)"),
      "figures": figures, "config": config.coherence.to_dict(),
      "influence_config": config.influence.to_dict(),
      "feature_model": {"model": config.real_model.model,
                        **dict(config.real_model.model_kwargs),
                        "epochs": int(config.real_model.epochs)},
      "seeds": {"config_seed": int(config.seed),
                "permutation": f"fold_in(fold_in(seed, {_PERMUTATION}), crc32(set name)), "
                               "then fold_in(., row)"},
      "sign_convention": loo.SIGN_CONVENTION,
      "nulls": COHERENCE_NULLS,
      "set_order": names, "learned_sets": learned, "sets": per_set, "learned_pooled": pooled,
  }


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The top-k most-helped test images of each distilled image against random sets.

  Args:
    config: the analysis config (its `coherence` section; `influence` gives the sets and
      the exact matrix, its defaults when absent; `real_model` the feature model).
    workdir: where `coherence.json` and coherence.png go.

  Returns:
    The JSON, as written: per set and distilled image, its top-k's class purity and
    feature cosine similarity against random same-class, class-matched and pool-wide
    sets (permutation p-values, the fraction significant raw and after
    Benjamini-Hochberg, a set-level p-value); over the learned sets, the pooled values.

  Raises:
    ConfigError: for k < 2 or a pool class with fewer than k images.
    DistilledSetError: for no distilled sets, or `influence.sets` or `coherence.sets`
      naming an unknown one.
  """
  config = analysis.with_section(config, "influence")
  sec = common.section(config, "coherence")
  adata = common.load_analysis_data(config)
  real = adata.real
  base = loo.influence_sets(config, adata.distilled)
  names = common.selected_names(sec, adata.distilled, "coherence") if sec.sets else base
  features: dict[str, np.ndarray] = {}
  per_set = {}
  for name in common.progress(config, names, desc="coherence"):
    per_set[name] = _set_entry(config, workdir, name, adata.distilled[name], real, features)
  learned = [n for n in names if not per_set[n]["control"]]
  pooled = _pooled(learned, per_set, float(sec.alpha))
  figures = [_figure(workdir, names, per_set, float(sec.alpha))] if names else []
  common.write_results(workdir, "coherence",
                       _results(config, figures, names, learned, per_set, pooled))
  return common.read_results(workdir, "coherence")


# ----------------------------------------------------------------------------- claims


def claims(result: dict) -> list[dict]:
  """The claim row of the paper's section 5 coherence (its LLaVA analysis): the test
  images a distilled image helps most are a coherent group.

  Args:
    result: coherence.json's content; `learned_sets` names the sets the claim is about.

  Returns:
    One row (whether every learned set's top-k sets are, at the set level, more similar
    than random same-class sets), or [] without learned sets.
  """
  learned = result.get("learned_sets") or []
  if not learned:
    return []
  sets, alpha = result["sets"], result["config"]["alpha"]
  k = result["config"]["top_k"]
  ok = all(sets[n]["cosine"]["set_pvalue"] < alpha for n in learned)
  fmt = common.fmt

  def one(n):
    c, m, p = sets[n]["cosine"], sets[n]["cosine_matched"], sets[n]["purity"]
    return (f"{n}: cosine {fmt(c['mean_observed'])} vs same-class {fmt(c['mean_null'])} "
            f"(set p {c['set_pvalue']:.3g}, BH-significant images "
            f"{fmt(c['fraction_significant_bh'])}); "
            f"vs class-matched {fmt(m['mean_null'])} (p {m['set_pvalue']:.3g}); purity "
            f"{fmt(p['mean_observed'])} vs {fmt(p['mean_null'])} (p {p['set_pvalue']:.3g})")

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
