"""Q1: where do distilled points sit among real ones in feature space? (the paper's Fig. 2 right)

Penultimate features of a real-trained model for the real test images and every distilled
image. A UMAP scatter (n_neighbors 5, as the paper) plus numbers the paper did not give:
the kNN class agreement of distilled points with real test points, compared with held-out
real points and the random-real set, and the distance of each distilled point to its
nearest real point relative to real-real nearest distances.
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy import stats as scipy_stats

from ddjax import data, models
from ddjax.analysis import cache, common, real_features, stats
from ddjax.errors import ConfigError

QUESTION = "Q1"
POSITION = 2

__all__ = ["QUESTION", "POSITION", "default_config", "nearest_neighbours",
           "knn_class_agreement", "project_2d", "run", "claims"]


def default_config() -> ml_collections.ConfigDict:
  """The embedding section at the paper's settings (configs/analysis/embedding.py sizes it).

  Returns:
    The feature model, seeds, kNN and projection settings.
  """
  emb = ml_collections.ConfigDict()
  # Feature extractor: the paper used the pretrained ResNet-18 (512-d pooled features).
  # Trained as in `recognition` (its epochs there, else config.real_model.epochs).
  emb.model = "resnet18"
  emb.num_seeds = 2           # kNN statistics over real models of these seeds; UMAP of the first
  emb.k = 5                   # neighbours for the kNN class-agreement statistics
  emb.inlier_quantile = 0.95  # a point is "inside" if its NN distance <= this real-real quantile
  emb.projection = "umap"     # "umap" (the paper) or "pca" (fast, no numba compile)
  # "real": fit the projection on the real test features and place distilled points with
  # it (UMAP.transform). "all": the paper's fit on the stack of real + distilled. "real" is
  # the default because sets distilled from one random-real init are near-copies of each
  # other: fitted jointly, each distilled point's 5 UMAP neighbours are its copies in the
  # other sets, and the distilled points drift off into clusters of their own.
  emb.projection_fit = "real"
  emb.umap_n_neighbors = 5    # the paper's setting; random_state = config.seed
  emb.umap_min_dist = 0.1
  emb.plot_sets = ""          # comma-separated sets to draw ("" = all); the paper drew mtt,dm
  emb.batch_size = 500
  return emb


# ----------------------------------------------------------------------------- kNN


@functools.partial(jax.jit, static_argnames=("k", "chunk"))
def _knn_chunked(queries, pool, exclude, k: int, chunk: int):
  """k nearest pool rows (Euclidean) of each query; pool row `exclude[i]` is skipped for
  query i (-1 = none). Candidates from |q|^2 + |p|^2 - 2 q.p (centred on the pool mean to
  limit float32 cancellation), in query chunks; the k distances are then recomputed
  exactly as |q - p| and re-sorted."""
  centre = jnp.mean(pool, axis=0)
  queries, pool = queries - centre, pool - centre
  n = queries.shape[0]
  num_chunks = -(-n // chunk)
  pad = num_chunks * chunk - n
  q = jnp.concatenate([queries, jnp.zeros((pad, queries.shape[1]), queries.dtype)])
  ex = jnp.concatenate([exclude, -jnp.ones((pad,), exclude.dtype)])
  pool_sq = jnp.sum(pool * pool, axis=1)

  def one(args):
    qc, exc = args
    d2 = jnp.sum(qc * qc, axis=1)[:, None] + pool_sq[None, :] - 2.0 * qc @ pool.T
    d2 = jnp.where(jnp.arange(pool.shape[0])[None, :] == exc[:, None], jnp.inf, d2)
    _, idx = jax.lax.top_k(-d2, k)
    exact = jnp.sqrt(jnp.sum((qc[:, None, :] - pool[idx]) ** 2, axis=-1))   # [chunk, k]
    order = jnp.argsort(exact, axis=1)
    return (jnp.take_along_axis(exact, order, axis=1),
            jnp.take_along_axis(idx, order, axis=1))

  dist, idx = jax.lax.map(one, (q.reshape(num_chunks, chunk, -1), ex.reshape(num_chunks, chunk)))
  return dist.reshape(-1, k)[:n], idx.reshape(-1, k)[:n]


def nearest_neighbours(queries, pool, k: int, exclude=None, chunk: int = 512):
  """The k nearest `pool` rows of each query (Euclidean), nearest first.

  Args:
    queries: [n, d].
    pool: [m, d].
    k: neighbours per query.
    exclude: [n] pool indices (or -1): `exclude[i]` is never a neighbour of query i
      (leave-one-out when the queries are the pool).
    chunk: queries per compiled step (a memory bound).

  Returns:
    (distances [n, k], indices [n, k]).

  Raises:
    ValueError: for mismatched shapes, or k outside [1, available pool rows].
  """
  queries, pool = np.asarray(queries, np.float32), np.asarray(pool, np.float32)
  if queries.ndim != 2 or pool.ndim != 2 or queries.shape[1] != pool.shape[1]:
    raise ValueError(f"nearest_neighbours needs [n, d] queries and [m, d] pool, got "
                     f"{queries.shape} and {pool.shape}.")
  available = pool.shape[0] - (0 if exclude is None else 1)
  if not 1 <= k <= available:
    raise ValueError(f"k={k} nearest neighbours requested from a pool of {available}.")
  exclude = (np.full(queries.shape[0], -1, np.int32) if exclude is None
             else np.asarray(exclude, np.int32))
  dist, idx = _knn_chunked(jnp.asarray(queries), jnp.asarray(pool), jnp.asarray(exclude),
                           k=int(k), chunk=int(min(chunk, max(1, queries.shape[0]))))
  return np.asarray(dist), np.asarray(idx)


def knn_class_agreement(query_features, query_labels, pool_features, pool_labels, k: int,
                        num_classes: int, exclude=None) -> dict[str, np.ndarray]:
  """How each query point's k nearest pool points agree with its class.

  Args:
    query_features: [n, d].
    query_labels: [n] classes.
    pool_features: [m, d].
    pool_labels: [m] classes.
    k: neighbours.
    num_classes: the number of classes.
    exclude: as `nearest_neighbours`.

  Returns:
    Per query point: `majority` (1.0 if the majority of its k neighbours share its
    class, ties broken towards the class with the nearer neighbours), `same_fraction`
    (the fraction of the k that do) and `nn_distance` (to the nearest pool point).
  """
  query_labels, pool_labels = np.asarray(query_labels), np.asarray(pool_labels)
  dist, idx = nearest_neighbours(query_features, pool_features, k, exclude)
  neighbour_labels = pool_labels[idx]                                  # [n, k]
  # Vote weight 1 + (k - rank) / (k (k + 1)): the rank bonuses sum to 1/2 < 1 vote, so
  # they only break ties, in favour of nearer neighbours.
  weights = 1.0 + (k - np.arange(k)) / (k * (k + 1.0))
  votes = np.zeros((len(query_labels), num_classes))
  np.add.at(votes, (np.arange(len(query_labels))[:, None], neighbour_labels), weights[None, :])
  same = neighbour_labels == query_labels[:, None]
  return {"majority": (np.argmax(votes, 1) == query_labels).astype(np.float64),
          "same_fraction": same.mean(1), "nn_distance": dist[:, 0].astype(np.float64)}


def _embedding_stats(per_point: dict[str, np.ndarray], real_nn: np.ndarray,
                     quantile: float) -> dict[str, float]:
  """Summaries of one set's kNN statistics against the real (held-out) reference."""
  threshold = float(np.quantile(real_nn, quantile))
  real_mean = float(real_nn.mean())
  return {"knn_majority_agreement": float(per_point["majority"].mean()),
          "knn_same_class_fraction": float(per_point["same_fraction"].mean()),
          "mean_nn_distance": float(per_point["nn_distance"].mean()),
          "nn_distance_ratio": float(per_point["nn_distance"].mean() / max(real_mean, 1e-12)),
          "median_nn_distance_ratio": float(np.median(per_point["nn_distance"])
                                            / max(float(np.median(real_nn)), 1e-12)),
          "inlier_fraction": float(np.mean(per_point["nn_distance"] <= threshold))}


# ----------------------------------------------------------------------------- projection


def _import_umap():
  """umap-learn, imported without its optional TensorFlow half (ParametricUMAP), whose
  import costs ~10 s and is not needed here. TensorFlow, if already loaded, is kept."""
  if "tensorflow" in sys.modules:
    import umap  # pylint: disable=g-import-not-at-top
    return umap
  sys.modules["tensorflow"] = None  # makes `import tensorflow` raise ImportError
  try:
    import warnings  # pylint: disable=g-import-not-at-top
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      import umap  # pylint: disable=g-import-not-at-top
  finally:
    del sys.modules["tensorflow"]
  return umap


def project_2d(features: np.ndarray, method: str, seed: int, n_neighbors: int = 5,
               min_dist: float = 0.1, num_fit: int | None = None) -> np.ndarray:
  """2-D projection for the scatter: UMAP (the paper's) or PCA.

  Args:
    features: [n, d].
    method: "umap" or "pca".
    seed: UMAP's random_state.
    n_neighbors, min_dist: UMAP's settings.
    num_fit: the projection is fitted on the first `num_fit` rows (all if None); the
      remaining rows are placed with the fitted map (`UMAP.transform`, or the PCA axes).

  Returns:
    [n, 2] float32.

  Raises:
    ValueError: if num_fit is not in (2, n].
    ConfigError: for an unknown method.
  """
  features = np.asarray(features, np.float32)
  num_fit = features.shape[0] if num_fit is None else int(num_fit)
  if not 2 < num_fit <= features.shape[0]:
    raise ValueError(f"project_2d: num_fit={num_fit} of {features.shape[0]} rows.")
  fit, rest = features[:num_fit], features[num_fit:]
  if method == "umap":
    umap = _import_umap()
    # A fixed random_state makes UMAP single-threaded anyway; n_jobs=1 says so quietly.
    reducer = umap.UMAP(n_neighbors=int(n_neighbors), min_dist=float(min_dist),
                        random_state=int(seed), n_jobs=1)
    xy = reducer.fit_transform(fit)
    if rest.shape[0]:
      xy = np.concatenate([xy, reducer.transform(rest)])
    return np.asarray(xy, np.float32)
  if method == "pca":
    mean = fit.mean(0)
    _, _, vt = np.linalg.svd(fit - mean, full_matrices=False)
    return ((features - mean) @ vt[:2].T).astype(np.float32)
  raise ConfigError(f"Unknown projection {method!r}; expected umap or pca.")


def _cached_projection(config, section, features: np.ndarray, num_fit: int,
                       workdir: str) -> np.ndarray:
  """The 2-D projection through the analyses' cache (UMAP takes tens of seconds on a
  CPU), so a re-run resumes without refitting."""
  features = np.asarray(features, np.float32)
  payload = {"features": cache.digest(features), "method": section.projection,
             "num_fit": int(num_fit), "seed": int(config.seed),
             "n_neighbors": int(section.umap_n_neighbors),
             "min_dist": float(section.umap_min_dist)}
  compute = lambda: {"xy": project_2d(features, section.projection, config.seed,
                                      section.umap_n_neighbors, section.umap_min_dist,
                                      num_fit=num_fit)}
  return cache.cached(cache.cache_dir(config, workdir), "embedding_projection", payload,
                      compute)["xy"]


# ----------------------------------------------------------------------------- run


def _validate(section) -> None:
  """Raises ConfigError for settings outside their ranges."""
  if int(section.k) < 1:
    raise ConfigError(f"config.embedding.k must be >= 1, got {int(section.k)}.")
  if section.num_seeds < 1:
    raise ConfigError(f"config.embedding.num_seeds must be >= 1, got {section.num_seeds}.")
  if not 0.0 < section.inlier_quantile <= 1.0:
    raise ConfigError(f"config.embedding.inlier_quantile must be in (0, 1], got "
                      f"{section.inlier_quantile}.")
  if section.projection not in ("umap", "pca") or section.projection_fit not in ("real", "all"):
    raise ConfigError(f"config.embedding: projection must be umap or pca and projection_fit "
                      f"real or all, got {section.projection!r} / {section.projection_fit!r}.")


def _one_seed(config, section, workdir: str, real: data.ImageDataset, distilled,
              names: list[str], model_name: str, seed: int) -> dict:
  """Features of one real model (seed) and the kNN statistics of every set on them."""
  k = int(section.k)
  model, variables = real_features.trained_real_model(config, real, workdir, model_name, seed)
  feats = real_features.jitted_features(model, int(section.batch_size))
  real_feats = np.asarray(feats(variables, jnp.asarray(real.x_test)))
  set_feats = {n: np.asarray(feats(variables, jnp.asarray(distilled[n].images))) for n in names}
  test_idx = np.arange(real.x_test.shape[0])
  real_pp = knn_class_agreement(real_feats, real.y_test, real_feats, real.y_test, k,
                                real.num_classes, exclude=test_idx)
  out = {"real_feats": real_feats, "set_feats": set_feats, "per_point": {},
         "real": _embedding_stats(real_pp, real_pp["nn_distance"], section.inlier_quantile),
         "sets": {}}
  for n in names:
    pp = knn_class_agreement(set_feats[n], distilled[n].hard_labels, real_feats, real.y_test, k,
                             real.num_classes)
    stats_n = _embedding_stats(pp, real_pp["nn_distance"], section.inlier_quantile)
    out["per_point"][n] = pp
    # Are distilled points farther from real points than real points are from each other?
    stats_n["nn_distance_mannwhitney_p"] = float(scipy_stats.mannwhitneyu(
        pp["nn_distance"], real_pp["nn_distance"], alternative="greater").pvalue)
    out["sets"][n] = stats_n
  return out


def _aggregate(rows: list[dict]) -> dict:
  """key -> mean/CI over seeds and the per-seed values."""
  return {key: {**stats.mean_ci([r[key] for r in rows]), "per_seed": [r[key] for r in rows]}
          for key in rows[0]}


def _sets_summary(distilled, names: list[str], per_seed: list[dict]) -> dict:
  """set -> its statistics over seeds, a binomial CI of the agreement, per-point values."""
  sets_out = {}
  for n in names:
    agg = _aggregate([s["sets"][n] for s in per_seed])
    n_images = int(distilled[n].images.shape[0])
    majority_count = int(round(agg["knn_majority_agreement"]["mean"] * n_images))
    ci = scipy_stats.binomtest(majority_count, n_images).proportion_ci(0.95, method="exact")
    sets_out[n] = {"method": distilled[n].method, "learned": common.is_learned(distilled[n]),
                   "num_images": n_images, **agg,
                   "knn_majority_binomial_ci95": [float(ci.low), float(ci.high)],
                   # Per distilled point, averaged over feature seeds (the points, not
                   # the seeds, are the independent units of the claims' tests).
                   "per_point": {key: np.mean([s["per_point"][n][key] for s in per_seed],
                                              axis=0).tolist()
                                 for key in ("same_fraction", "nn_distance")}}
  return sets_out


def _plot_names(section, distilled, names: list[str]) -> list[str]:
  """The sets to draw: section.plot_sets, or all."""
  plot_names = ([s.strip() for s in section.plot_sets.split(",") if s.strip()]
                if section.plot_sets else names)
  unknown = [s for s in plot_names if s not in distilled]
  if unknown:
    raise ConfigError(f"config.embedding.plot_sets names {unknown}, not among the distilled "
                      f"sets {names}.")
  return plot_names


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Where distilled points sit among real points in a real-trained model's features.

  Reference pool: the real TEST features (held out from the feature model's training and
  from the random-real set, so no query is its own neighbour). Baselines: each test point
  against the other test points (leave-one-out), and the `random` set if present.

  Args:
    config: the analysis config: its `embedding` section (the feature model, k, seeds and
      the projection), `real_model` (how the feature model is trained) and `seed`.
    workdir: where embedding.json, embedding.png and the cached projection go.

  Returns:
    The JSON: the feature model; for the held-out real test points and for each set, its
    kNN class agreement, nearest-neighbour distances and inlier fraction (mean and CI over
    feature seeds), per set also per-point values; and the 2-D projection's settings.

  Raises:
    ConfigError: for k or num_seeds below 1, inlier_quantile outside (0, 1], an unknown
      projection or projection_fit, or plot_sets naming a set that was not given.
    DistilledSetError: for no distilled sets, or a set file that is unreadable or does
      not fit the real data (its dataset, class count or image shape).
  """
  section = common.section(config, "embedding")
  model_name = models.canonical_model_name(section.model)
  _validate(section)
  adata = common.load_analysis_data(config)
  real, distilled = adata.real, adata.distilled
  names = real_features.ordered_set_names(distilled)
  seeds = [int(config.seed) + i for i in range(int(section.num_seeds))]
  per_seed = [_one_seed(config, section, workdir, real, distilled, names, model_name, seed)
              for seed in common.progress(config, seeds, desc="embedding: seeds")]
  real_feats, set_feats = per_seed[0]["real_feats"], per_seed[0]["set_feats"]
  plot_names = _plot_names(section, distilled, names)
  stacked = np.concatenate([real_feats] + [set_feats[n] for n in plot_names])
  num_fit = real_feats.shape[0] if section.projection_fit == "real" else stacked.shape[0]
  xy = _cached_projection(config, section, stacked, num_fit, workdir)
  kwargs, epochs = real_features.model_spec(config, model_name)
  results = {
      "analysis": "embedding", "paper_counterpart": "Fig. 2 right (E2)",
      "config": common.to_dict(section), "seed": int(config.seed), "seeds": seeds,
      "dataset": real.name, "num_classes": real.num_classes, "chance": 1.0 / real.num_classes,
      "model": model_name, "model_kwargs": kwargs, "model_epochs": epochs,
      "feature_dim": int(real_feats.shape[1]), "k": int(section.k),
      "reference": f"real test features ({int(real.x_test.shape[0])} points)",
      "real_heldout": _aggregate([s["real"] for s in per_seed]), "set_order": names,
      "sets": _sets_summary(distilled, names, per_seed),
      "random_baseline": next((n for n in names if distilled[n].method == "random"), None),
      "projection": {"method": section.projection, "random_state": int(config.seed),
                     "n_neighbors": int(section.umap_n_neighbors),
                     "fit_on": section.projection_fit,
                     "sets_plotted": plot_names, "num_points": int(stacked.shape[0]),
                     "feature_seed": seeds[0]},
  }
  results["figures"] = [_plot(results, xy, real.y_test, distilled, plot_names, workdir)]
  common.write_results(workdir, "embedding", results)
  return results


def _plot(results, xy, real_labels, distilled, plot_names, workdir) -> str:
  """The paper's Fig. 2 (right): one panel per set, real test dots and distilled
  triangles, coloured by class."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  colours = plt.cm.rainbow(np.linspace(0, 1, results["num_classes"]))  # one per class
  n_real = len(real_labels)
  cols = min(4, max(1, len(plot_names)))
  rows = -(-max(1, len(plot_names)) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
  offset = n_real
  for i, name in enumerate(plot_names):
    ax = axes[i // cols][i % cols]
    ax.scatter(xy[:n_real, 0], xy[:n_real, 1], s=2, c=colours[np.asarray(real_labels)],
               alpha=0.5, linewidths=0)
    n = distilled[name].images.shape[0]
    pts = xy[offset:offset + n]
    offset += n
    ax.scatter(pts[:, 0], pts[:, 1], s=16, marker="^", alpha=0.85,
               c=colours[distilled[name].hard_labels], edgecolors="k", linewidths=0.6)
    s = results["sets"][name]
    ax.set_title(f"{real_features.set_label(name, distilled[name])}\nkNN agree "
                 f"{s['knn_majority_agreement']['mean']:.2f}, inliers "
                 f"{s['inlier_fraction']['mean']:.2f}", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
  for j in range(len(plot_names), rows * cols):
    axes[j // cols][j % cols].axis("off")
  fig.suptitle(f"{results['projection']['method'].upper()} of {results['model']} features: "
               f"real test (dots) and distilled (triangles), coloured by class", fontsize=9)
  common.save_figure(fig, workdir, "embedding.png")
  return "embedding.png"


# ----------------------------------------------------------------------------- claims


def _agreement_row(res: dict, learned: list[str]) -> dict:
  sets, real = res["sets"], res["real_heldout"]
  base = res.get("random_baseline")
  base_txt = (f"; random-real {common.fmt(sets[base]['knn_majority_agreement']['mean'])}"
              if base else "")
  agree = {n: sets[n]["knn_majority_agreement"]["mean"] for n in learned}
  return {
      "question": "Q1", "analysis": "embedding",
      "claim": "Distilled points lie near real points of their own class in a real-trained "
               "model's feature space.",
      "criterion": f"every learned set: {res['k']}-NN majority class agreement with real test "
                   "points >= 0.5 (chance " + common.fmt(res["chance"]) + ")",
      "paper": "UMAP (qualitative): TM points mostly inside or at the edge of their class "
               "cluster; many DM points between clusters",
      "measured": (", ".join(f"{n} {common.fmt(a)}" for n, a in agree.items()) +
                   f"; held-out real {common.fmt(real['knn_majority_agreement']['mean'])}"
                   f"{base_txt}"),
      "reproduced": bool(min(agree.values()) >= 0.5)}


def _inlier_row(res: dict, learned: list[str]) -> dict:
  sets = res["sets"]
  inliers = {n: sets[n]["inlier_fraction"]["mean"] for n in learned}
  q = res["config"].get("inlier_quantile", 0.95)
  return {
      "question": "Q1", "analysis": "embedding",
      "claim": "Distilled points lie within the real feature distribution.",
      "criterion": (f"every learned set: >= 50% of its points are no farther from their "
                    f"nearest real test point than the {q:.0%} quantile of real-real "
                    "nearest-neighbour distances"),
      "paper": "UMAP (qualitative): distilled points overlap the real clusters "
               "(TM inside, DM near boundaries)",
      "measured": ", ".join(
          f"{n} {common.fmt(v)} (NN dist x{common.fmt(sets[n]['nn_distance_ratio']['mean'])})"
          for n, v in inliers.items()),
      "reproduced": bool(min(inliers.values()) >= 0.5)}


def _boundary_row(res: dict, tm: str, dm: str) -> dict:
  sets = res["sets"]
  same = {n: sets[n]["knn_same_class_fraction"]["mean"] for n in (tm, dm)}
  # One-sided Mann-Whitney U over points (each point's fraction averaged over seeds).
  p = float(scipy_stats.mannwhitneyu(sets[dm]["per_point"]["same_fraction"],
                                     sets[tm]["per_point"]["same_fraction"],
                                     alternative="less").pvalue)
  return {
      "question": "Q1", "analysis": "embedding",
      "claim": "DM points sit nearer class boundaries than TM points.",
      "criterion": f"fraction of the {res['k']} nearest real neighbours sharing the class: "
                   "DM < TM, one-sided Mann-Whitney p < 0.05 over points",
      "paper": "UMAP (qualitative): TM inside class clusters, many DM points in a central "
               "region between clusters",
      "measured": (f"TM ({tm}) {common.fmt(same[tm])}, DM ({dm}) {common.fmt(same[dm])}; "
                   f"p={p:.2g}"),
      "reproduced": bool(same[dm] < same[tm] and p < 0.05)}


def claims(result: dict) -> list[dict[str, Any]]:
  """The claim rows of the paper's Fig. 2 (right) from this analysis's JSON.

  Args:
    result: embedding.json's content.

  Returns:
    Rows (question, analysis, claim, criterion, paper, measured, reproduced): kNN class
    agreement, inliers of the real feature distribution, and (with both a TM and a DM
    set) DM nearer class boundaries than TM. None without learned sets.
  """
  sets = result["sets"]
  learned = common.learned_names(result)
  if not learned:
    return []
  rows = [_agreement_row(result, learned), _inlier_row(result, learned)]
  by_method = {sets[n]["method"]: n for n in learned}
  if "mtt" in by_method and "dm" in by_method:
    rows.append(_boundary_row(result, by_method["mtt"], by_method["dm"]))
  return rows
