"""Q3, the paper's Fig. 10 (section 5): which real test images does each distilled image help?

The exact leave-one-out (LOO) influence of each distilled image on real test images
(`ddjax.analysis.loo`: n + 1 protocol-A retrains from one initialisation, one vmapped
call), saved as `<workdir>/influence_<set>.npz`; a grid PNG shows, for each distilled image
of one class, the 9 test images it helps most; the numbers are the class purity of each
image's top-k, the influence magnitudes (same vs other class), and the hard-example split
(how much the top-k is drawn to test images the all-points model gets wrong, and the
purity among the test images it gets right).

Sign convention (the paper's): I[i, t] = loss(x_t; theta without i) - loss(x_t; theta all);
positive = removing i raises the test loss = i helps t.
"""

from __future__ import annotations

import os
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from scipy import stats as scipy_stats

from ddjax import data, train
from ddjax import influence as influence_lib
from ddjax.analysis import cache, common, loo, stats

QUESTION = "Q3"
POSITION = 1

__all__ = ["QUESTION", "POSITION", "default_config", "majority_purity", "purity_chance",
           "correct_subset_purity", "influence_statistics", "all_points_correct", "run",
           "claims"]


def default_config() -> ml_collections.ConfigDict:
  """The `influence` section at the paper's settings.

  Returns:
    The section: every distilled image left out, every test image, the paper's top-9
    (influence_approx and coherence read it too: their sets and the matrix).
  """
  inf = ml_collections.ConfigDict()
  # Comma-separated distilled-set names ("" = every loaded set). A set whose method is
  # `random` (the real-subset baseline) is kept as a control and marked as such.
  inf.sets = ""
  # At most this many learned sets of them (the paper's method order: bptt, dm, dc, dsa,
  # mtt, kip), plus the control (0 = all). influence_approx and coherence use the same sets.
  inf.max_sets = 0
  # Real test images scored: a seeded class-balanced subset of this many per class of the
  # loaded test split (0 = all of it; the paper used all 10,000 CIFAR-10 test images).
  inf.test_per_class = 0
  # Distilled images left out: a seeded class-balanced choice of this many per class
  # (0 = every image, the paper's 100). Every run still trains on the full set minus one;
  # only the number of leave-one-out runs (rows of the matrix) shrinks.
  inf.points_per_class = 0
  # Width of the LOO ConvNet (0 = config.model_kwargs.width; the paper: 128).
  inf.width = 0
  inf.top_k = 9            # the paper's grid: the 9 most-helped test images per row
  inf.grid_class = 0       # class whose distilled images the grid figure shows (paper: 0)
  inf.chunk_size = 0       # LOO runs per vmapped chunk (0 = all runs in one vmap)
  inf.eval_batch_size = 1000
  return inf


# ----------------------------------------------------------------------------- statistics


def majority_purity(matrix, test_labels, k: int) -> np.ndarray:
  """The fraction of each row's top-k that belongs to the top-k's most common class.

  Args:
    matrix: [rows, tests] influence.
    test_labels: [tests] class of each test image.
    k: top-k size.

  Returns:
    [rows] fractions in [1/k, 1].
  """
  labels = np.asarray(test_labels)[loo.top_helped(matrix, k)]
  return np.array([np.bincount(r).max() / k for r in labels])


def _summary(values) -> dict[str, float]:
  values = np.asarray(values, np.float64)
  return {**stats.mean_ci(values), "median": float(np.median(values)),
          "min": float(values.min()), "max": float(values.max())}


def purity_chance(row_labels, test_labels) -> float:
  """The expected top-k purity of a random ranking.

  Args:
    row_labels: [rows] class of each left-out image.
    test_labels: [tests] class of each test image.

  Returns:
    The mean over rows of its class's share of the test images.
  """
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
  purity = loo.class_purity(np.asarray(matrix)[:, correct], row_labels, kept, k)
  return {"per_image": purity, **_summary(purity), "chance": purity_chance(row_labels, kept),
          "num_test": n}


def _magnitude(matrix, row_labels, test_labels, top) -> dict[str, Any]:
  """The influence magnitudes, and whether same-class test images get more of it."""
  same = test_labels[None, :] == row_labels[:, None]
  mean_same = np.array([m[s].mean() for m, s in zip(matrix, same)])
  mean_other = np.array([m[~s].mean() if (~s).any() else np.nan for m, s in zip(matrix, same)])
  gap = mean_same - mean_other
  if gap.size > 1 and np.any(gap != 0):
    wilcoxon_p = float(scipy_stats.wilcoxon(gap, alternative="greater").pvalue)
  else:
    wilcoxon_p = float("nan")
  return {
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
  }


def _hard_example_loss(matrix, top, loss_all) -> dict[str, float]:
  """How much the top-k is drawn to test images the all-points model finds hard."""
  loss_all = np.asarray(loss_all, np.float64)
  return {
      "corr_mean_abs_influence_vs_loss": influence_lib.pearson(np.abs(matrix).mean(0),
                                                             loss_all),
      "topk_mean_loss_all": float(loss_all[top].mean()),
      "pool_mean_loss_all": float(loss_all.mean()),
      "pool_median_loss_all": float(np.median(loss_all))}


def influence_statistics(matrix, row_labels, test_labels, k: int,
                         loss_all=None, correct_all=None) -> dict[str, Any]:
  """Purity of each row's top-k and the influence magnitudes (same vs other class).

  Beyond the paper: `purity_standardized` ranks by each test column's z-score over the
  left-out images (which image affects test image t unusually strongly), removing the
  per-test-image scale; with `loss_all`, how much the raw top-k is drawn to test images
  the all-points model finds hard; with `correct_all`, the share of misclassified images
  in the top-k and `purity_correct` (`correct_subset_purity`).

  Args:
    matrix: [rows, tests] influence.
    row_labels: [rows] class of each left-out image.
    test_labels: [tests] class of each test image.
    k: top-k size.
    loss_all: [tests] the all-points model's test losses (optional).
    correct_all: [tests] bool, whether that model classifies each test image right
      (optional).

  Returns:
    {"purity_standardized", "purity", "majority_purity", "magnitude"}, and
    "hard_examples" / "purity_correct" when the optional inputs are given.
  """
  matrix = np.asarray(matrix, np.float64)
  row_labels, test_labels = np.asarray(row_labels), np.asarray(test_labels)
  purity = loo.class_purity(matrix, row_labels, test_labels, k)
  majority = majority_purity(matrix, test_labels, k)
  chance = purity_chance(row_labels, test_labels)
  top = loo.top_helped(matrix, k)
  zscores = (matrix - matrix.mean(0)) / np.maximum(matrix.std(0), 1e-12)
  purity_z = loo.class_purity(zscores, row_labels, test_labels, k)
  out = {
      "purity_standardized": {"per_image": purity_z, **_summary(purity_z)},
      "purity": {"per_image": purity, **_summary(purity), "chance": float(chance),
                 "fraction_pure": float(np.mean(purity == 1.0)),
                 "same_class_in_top": int(np.rint(purity * k).sum()),
                 "top_total": int(purity.size * k)},
      "majority_purity": {"per_image": majority, **_summary(majority)},
      "magnitude": _magnitude(matrix, row_labels, test_labels, top),
  }
  if loss_all is not None:
    out["hard_examples"] = _hard_example_loss(matrix, top, loss_all)
  if correct_all is not None:
    wrong = ~np.asarray(correct_all, bool)
    out.setdefault("hard_examples", {}).update({
        "topk_fraction_misclassified": float(wrong[top].mean()),
        "pool_fraction_misclassified": float(wrong.mean())})
    out["purity_correct"] = correct_subset_purity(matrix, row_labels, test_labels,
                                                  ~wrong, k)
  return out


def all_points_correct(config: ml_collections.ConfigDict, real: data.ImageDataset,
                       res: dict) -> np.ndarray:
  """Whether the all-points LOO model classifies each test image of the pool correctly.

  Args:
    config: the analysis config.
    real: the real dataset.
    res: `loo.exact_influence`'s arrays (its `params_flat` is the model trained on every
      distilled image).

  Returns:
    [tests] bool.
  """
  model, variables = loo.trained_variables(config, real, res["params_flat"])
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
  """The paper's Fig. 10: each distilled image of class `cls` beside the k test images it
  helps most."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  rows = np.flatnonzero(res["row_labels"] == cls)
  if rows.size == 0:
    return None
  top = loo.top_helped(res["influence"][rows], k)
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


# ----------------------------------------------------------------------------- run


def _write_matrix(workdir: str, name: str, res: dict) -> str:
  """Writes the set's matrix as `<workdir>/influence_<name>.npz` (the file the JSON names)."""
  fname = loo.INFLUENCE_FILE.format(name)
  cache.write(os.path.join(workdir, fname), {k: v for k, v in res.items() if k != "resumed"})
  return fname


def _set_entry(config, workdir: str, name: str, dset, real, k: int) -> tuple[dict, dict]:
  """One set's matrix (computed or cached, and written) and its JSON entry."""
  res = loo.exact_influence(config, workdir, name, dset, real)
  fname = _write_matrix(workdir, name, res)
  st = influence_statistics(res["influence"], res["row_labels"], res["test_labels"], k,
                            res["loss_all"], all_points_correct(config, real, res))
  top = loo.top_helped(res["influence"], k)
  entry = {
      "method": dset.method, "control": loo.is_control(dset),
      "num_distilled": int(dset.images.shape[0]), "rows": res["rows"],
      "row_labels": res["row_labels"], "num_test": int(res["test_indices"].size),
      "loo_runs": int(res["rows"].size + 1), "loo_seconds": float(res["seconds"]),
      "resumed": bool(res["resumed"]), "file": fname,
      "accuracy_all": float(res["accuracy_all"]),
      "accuracy_without": _summary(res["accuracy_without"]),
      # top-k test images per row, as indices into the loaded real test split
      "top_test_indices": res["test_indices"][top], **st}
  return res, entry


def _results(config, names: list[str], per_set: dict, figures: list[str], k: int,
             num_classes: int) -> dict[str, Any]:
  learned = [n for n in names if not per_set[n]["control"]]
  _, kwargs = loo.loo_model(config, num_classes)
  results = {
      "analysis": "influence", "paper_counterpart": "Fig. 10 (section 5, E8)",
      "figures": figures, "config": config.influence.to_dict(),
      "protocol_a": config.protocol_a.to_dict(), "loo_model": {"model": config.model, **kwargs},
      "seeds": {"config_seed": int(config.seed), "init": f"fold_in(seed, {loo.INIT})",
                "test_subset": f"fold_in(seed, {loo.TEST_SUBSET})",
                "rows": f"fold_in(seed, {loo.ROWS})"},
      "sign_convention": loo.SIGN_CONVENTION, "top_k": k, "set_order": names,
      "learned_sets": learned, "sets": per_set,
  }
  if learned:
    purities = np.concatenate([per_set[n]["purity"]["per_image"] for n in learned])
    results["learned_pooled"] = {"purity": _summary(purities),
                                 "fraction_pure": float(np.mean(purities == 1.0))}
  return results


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The paper's Fig. 10: exact LOO influence of distilled images on real test images.

  Args:
    config: the analysis config: its `influence` section (sets, rows per class, top-k),
      `protocol_a` and `model` (the leave-one-out retraining) and `seed`.
    workdir: where `influence.json`, each set's matrix `influence_<set>.npz`,
      influence_purity.png and the `influence_grid_<set>.png` grids go.

  Returns:
    The JSON, as written: per set the accuracy with and without each image, the top-k
    most-helped test images of each image, their class purity (against chance), the
    same- vs other-class influence magnitudes and the hard-example split; over the
    learned sets, the pooled purity.

  Raises:
    DistilledSetError: for no distilled sets, `influence.sets` naming an unknown one, or
      a class with fewer images than points_per_class.
    FloatingPointError: when the leave-one-out retraining diverges.
  """
  sec = common.section(config, "influence")
  adata = common.load_analysis_data(config)
  real, pre = adata.real, adata.preprocessor
  names = loo.influence_sets(config, adata.distilled)
  k = int(sec.top_k)
  per_set, figures = {}, []
  for name in common.progress(config, names, desc="influence"):
    dset = adata.distilled[name]
    res, per_set[name] = _set_entry(config, workdir, name, dset, real, k)
    fig = _grid_figure(workdir, name, dset, pre, real, res, min(9, k), int(sec.grid_class))
    if fig:
      figures.append(fig)
  figures.insert(0, _purity_figure(workdir, names, per_set, k))
  results = _results(config, names, per_set, figures, k, real.num_classes)
  common.write_results(workdir, "influence", results)
  return common.read_results(workdir, "influence")


# ----------------------------------------------------------------------------- claims


def _hard_example_text(sets: dict, names: list[str]) -> str:
  """The hard-example measurements of the claim row (absent from results before them)."""
  have = [n for n in names if "mean" in sets[n].get("purity_correct", {})]
  if not have:
    return ""
  hard = sets[have[0]]["hard_examples"]
  return ("; misclassified by the all-points model: " + ", ".join(
      f"{n} {common.fmt(sets[n]['hard_examples']['topk_fraction_misclassified'])}"
      for n in have)
      + f" of the top-k vs {common.fmt(hard['pool_fraction_misclassified'])} of the pool"
      + "; top-k among correctly classified test images only: " + ", ".join(
          f"{n} {common.fmt(sets[n]['purity_correct']['mean'])}" for n in have)
      + f" (chance {common.fmt(sets[have[0]]['purity_correct']['chance'])})")


def _measured(sets: dict, learned: list[str], control: list[str]) -> str:
  fmt = common.fmt
  mag = {n: sets[n]["magnitude"] for n in learned}
  measured = "; ".join(
      f"{n} {fmt(sets[n]['purity']['mean'])} ({sets[n]['purity']['same_class_in_top']}/"
      f"{sets[n]['purity']['top_total']}, same-class mean I {mag[n]['mean_same_class']:.2g}"
      f" vs other {mag[n]['mean_other_class']:.2g})" for n in learned)
  if control:
    c = control[0]
    measured += f"; control {c} {fmt(sets[c]['purity']['mean'])}"
  measured += f"; chance {fmt(sets[learned[0]]['purity']['chance'])}"
  measured += "; column-standardised ranking: " + ", ".join(
      f"{n} {fmt(sets[n]['purity_standardized']['mean'])}" for n in learned)
  return measured + _hard_example_text(sets, learned + control[:1])


def claims(result: dict) -> list[dict]:
  """The claim row of the paper's Fig. 10: each distilled image helps test images of its
  own class most.

  Args:
    result: influence.json's content.

  Returns:
    One row (whether every learned set's top-k is mostly of its class, and same-class
    influence beats other-class), or [] without learned sets.
  """
  learned = [n for n in result["set_order"] if not result["sets"][n]["control"]]
  if not learned:
    return []
  sets = result["sets"]
  k = result["top_k"]
  control = [n for n in result["set_order"] if sets[n]["control"]]
  ok = all(sets[n]["purity"]["mean"] >= 0.8 and sets[n]["magnitude"]["mean_same_class"]
           > sets[n]["magnitude"]["mean_other_class"] for n in learned)
  return [{
      "question": "Q3", "analysis": "influence",
      "claim": ("Individual distilled images carry meaningful, class-specific information: the "
                "real test images each one helps most (exact leave-one-out) are of its class."),
      "criterion": (f"every learned set: mean top-{k} same-class fraction >= 0.8, and the mean "
                    "influence on same-class test images > on other-class ones"),
      "paper": ("Fig. 10 (qualitative): all 90 top-9 test images of the 10 BPTT airplane "
                "images are airplanes, in visually coherent sub-groups (CIFAR-10)"),
      "measured": f"top-{k} purity per set: " + _measured(sets, learned, control),
      "reproduced": bool(ok)}]
