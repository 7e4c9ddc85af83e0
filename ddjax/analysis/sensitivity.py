"""Is distilled data a substitute for real data outside the standard setting? The paper's
claim 1 (abstract, section 3): test accuracy of every set under changed training setups.

Each setup is a named variant of protocol A (`ddjax.analysis.training_setup.parse_variant`):
`standard`, `adam`, `lr_x<f>`, `steps_<n>`, `minibatch[_<b>]`, `augment`, `wd_<decay>`,
`norm_<kind>`, `arch_<model>`. Reported per set and variant: accuracy, accuracy relative to
`standard`, the drop from `standard`, and the drop's excess over the random-real baseline's
drop (paired over seeds: the same init keys in every variant). The paper's claim: distilled
sets lose more than real data does when the setup changes. Runs go through the analyses'
cache: a set's `standard` run is mixing's +0 run when their steps and seeds agree.
"""

from __future__ import annotations

import time

import ml_collections
import numpy as np

from ddjax.analysis import cache, common, stats
from ddjax.analysis import training_setup as ts

QUESTION = "Q1"
POSITION = 5

__all__ = ["QUESTION", "POSITION", "default_config", "train_variants", "summarize_sets",
           "summarize_variants", "run", "claims"]


def default_config() -> ml_collections.ConfigDict:
  """Protocol A changed one way at a time: Adam, a tenth or ten times the learning rate,
  fewer or more steps, minibatches, augmentation, three other architectures.

  Returns:
    The `sensitivity` section: `variants` (names as `training_setup.parse_variant` reads
    them) and their settings (`adam_lr`, `minibatch_size`, `augment_strategy`);
    `num_seeds` and `steps` (0: protocol A's); `sets`; the random-real `baseline` (and
    `baseline_ipc` for a drawn one); `labels`.
  """
  sens = ml_collections.ConfigDict()
  # Claim 1: the same sets under changed training setups (ddjax.analysis.training_setup.
  # parse_variant). Seeds are the same init keys in every variant (paired drops).
  sens.variants = ("standard,adam,lr_x0.1,lr_x10,steps_100,steps_1000,minibatch,augment,"
                   "arch_convnet_tiny,arch_alexnet,arch_resnet18")
  sens.num_seeds = 0                   # 0 = config.protocol_a.num_seeds
  sens.steps = 0                       # the standard's steps; 0 = config.protocol_a.steps
  sens.adam_lr = 1e-3                  # Adam's usual default (optax b1 0.9, b2 0.999)
  sens.minibatch_size = 10             # 10 steps per epoch on 100 images, same number of steps
  sens.augment_strategy = ""           # "" = DSA's color_crop_cutout_flip_scale_rotate,
                                       # without flip for digit datasets (MNIST, SVHN)
  sens.sets = ""                       # "" = every distilled set; else "dm,mtt,..."
  sens.baseline = "random"             # this distilled set is the baseline; drawn if absent
  sens.baseline_ipc = 0                # 0 = the distilled sets' IPC (for a drawn baseline)
  sens.labels = "as_distilled"         # or "hard" (argmax of learned soft labels)
  return sens


def train_variants(config: ml_collections.ConfigDict, cache_directory: str,
                   variants: dict[str, ts.TrainingSetup], keys, sets: list[ts.AnalysedSet],
                   real) -> dict[str, dict[str, dict]]:
  """Trains every set under every variant (cached runs).

  Args:
    config: the analysis config (its progress flag).
    cache_directory: the analyses' cache.
    variants: {name: setup}.
    keys: the seeds' init keys.
    sets: the sets, the baseline last.
    real: the real dataset (its test split).

  Returns:
    {set name: {variant: {"accuracy", "finite"} per seed}}.
  """
  per_seed: dict[str, dict[str, dict]] = {s.name: {} for s in sets}
  with common.progress(config, total=len(sets) * len(variants), desc="sensitivity") as bar:
    for vname, setup in variants.items():  # one variant at a time: sets share its compile
      for s in sets:
        per_seed[s.name][vname] = ts.run_accuracies(cache_directory, setup, keys, s.images,
                                                    s.labels, real.x_test, real.y_test,
                                                    real.num_classes)
        bar.update(1)
  return per_seed


def summarize_sets(sets: list[ts.AnalysedSet], per_seed: dict[str, dict[str, dict]],
                   variants: list[str]) -> dict[str, dict]:
  """Each set's accuracy per variant, its drop from `standard` and the drop's excess over
  the baseline's drop, both paired over seeds.

  Args:
    sets: the sets, the baseline last.
    per_seed: `train_variants`' runs.
    variants: the variant names (with "standard").

  Returns:
    {set name: {"method", "ipc", "soft_labels", "is_baseline", "source", "variants":
    {variant: {...}}}}, as in the JSON.
  """
  baseline = sets[-1]
  acc = {s.name: {v: np.asarray(per_seed[s.name][v]["accuracy"]) for v in variants}
         for s in sets}
  results_sets = {}
  for s in sets:
    std_acc = acc[s.name]["standard"]
    entries = {}
    for v in variants:
      a = acc[s.name][v]
      drop = std_acc - a
      base_drop = acc[baseline.name]["standard"] - acc[baseline.name][v]
      entries[v] = {
          "accuracy": a.tolist(), **stats.mean_ci(a),
          "finite_fraction": float(np.mean(per_seed[s.name][v]["finite"])),
          "relative_to_standard": float(a.mean() / max(std_acc.mean(), 1e-12)),
          "drop": stats.mean_ci(drop),                     # standard - variant, paired
          "excess_drop": stats.mean_ci(drop - base_drop),  # minus the baseline's drop, paired
      }
    results_sets[s.name] = {"method": s.method, "ipc": s.ipc, "soft_labels": s.soft_labels,
                            "is_baseline": s.is_baseline, "source": s.source,
                            "variants": entries}
  return results_sets


def summarize_variants(results_sets: dict[str, dict], baseline: str,
                       variants: list[str]) -> dict[str, dict]:
  """Per non-standard variant: the baseline's drop and the distilled sets' mean drops.

  Args:
    results_sets: `summarize_sets`' output.
    baseline: the baseline's name.
    variants: the variant names.

  Returns:
    {variant: {"baseline_drop", "mean_distilled_drop", "mean_excess_drop",
    "num_sets_dropping_more", "num_sets"}} (means None without distilled sets).
  """
  distilled = [n for n, e in results_sets.items() if not e["is_baseline"]]
  summary = {}
  for v in variants:
    if v == "standard":
      continue
    excess = [results_sets[n]["variants"][v]["excess_drop"]["mean"] for n in distilled]
    summary[v] = {
        "baseline_drop": results_sets[baseline]["variants"][v]["drop"]["mean"],
        "mean_distilled_drop": float(np.mean([results_sets[n]["variants"][v]["drop"]["mean"]
                                              for n in distilled])) if distilled else None,
        "mean_excess_drop": float(np.mean(excess)) if excess else None,
        "num_sets_dropping_more": int(np.sum(np.asarray(excess) > 0)),
        "num_sets": len(distilled),
    }
  return summary


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Claim 1: accuracy of each set under changed training setups, and its drop vs random
  real data's.

  Args:
    config: the analysis config: its `sensitivity` section, `protocol_a` (the standard
      setup the variants change) and `seed` (the init keys, shared by every variant).
    workdir: where sensitivity.json and sensitivity.png go (and the cache, unless
      config.cache_dir).

  Returns:
    The JSON: each variant's setup; per set and variant, the accuracy over seeds, relative
    to and dropped from `standard`, and the drop's excess over the baseline's; per
    variant, the distilled sets' mean drop against the baseline's.

  Raises:
    ConfigError: for an empty, repeated or unknown variant (before any data is read), or
      unknown `labels`.
    DistilledSetError: for no distilled sets, or `sensitivity.sets` naming an unknown one.
  """
  start = time.time()
  section = common.section(config, "sensitivity")
  variants = ts.variants_from_config(config, section)  # bad names fail before loading anything
  adata = common.load_analysis_data(config)
  real = adata.real
  sets = ts.collect_sets(config, section, adata, "sensitivity")
  num_seeds = ts.num_seeds(config, section)
  keys = ts.seed_keys(config.seed, num_seeds)
  per_seed = train_variants(config, cache.cache_dir(config, workdir), variants, keys, sets, real)
  baseline = sets[-1]
  results_sets = summarize_sets(sets, per_seed, list(variants))
  results = {
      "analysis": "sensitivity",
      "paper_counterpart": "Claim 1 (abstract, section 3): distilled data is no substitute "
                           "outside the standard evaluation setting; the 'training-"
                           "sensitivity table' [U in paper_spec.md]",
      "figures": ["sensitivity.png"],
      "config": section.to_dict(),
      "variants": {v: {**setup.describe(),
                       "steps_run": {s.name: setup.steps_run(s.images.shape[0]) for s in sets}}
                   for v, setup in variants.items()},
      "seed": int(config.seed),
      "num_seeds": num_seeds,
      "seed_keys": ts.key_array(keys).tolist(),
      "baseline": baseline.name,
      "baseline_source": baseline.source,
      "dataset": real.name,
      "num_test": int(real.x_test.shape[0]),
      "sets": results_sets,
      "summary": summarize_variants(results_sets, baseline.name, list(variants)),
  }
  return ts.finish_run(workdir, "sensitivity", results, start, _plot,
                       f"{len(sets)} sets x {len(variants)} variants")


def _plot(results: dict, workdir: str) -> None:
  """sensitivity.png: the accuracy table (coloured by the change from standard), and each
  distilled set's excess drop per variant."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  set_names = list(results["sets"])
  variants = list(results["variants"])
  table = np.array([[results["sets"][s]["variants"][v]["mean"] for v in variants]
                    for s in set_names])
  # Colour: change from the set's own standard accuracy; text: the accuracy itself.
  change = table - table[:, variants.index("standard")][:, None]
  others = [v for v in variants if v != "standard"]
  fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(4 + 1.2 * len(variants), 0.5 * len(set_names) + 3),
                                 layout="constrained",
                                 gridspec_kw={"width_ratios": [len(variants), max(len(others), 1)]})
  limit = max(float(np.abs(change).max()), 0.01)
  im = ax0.imshow(change, cmap="RdBu", vmin=-limit, vmax=limit, aspect="auto")
  for i in range(len(set_names)):
    for j in range(len(variants)):
      ax0.text(j, i, f"{table[i, j]:.3f}", ha="center", va="center", fontsize=7)
  ax0.set_xticks(range(len(variants)), variants, rotation=45, ha="right", fontsize=8)
  ax0.set_yticks(range(len(set_names)),
                 [f"{s} (random real)" if results["sets"][s]["is_baseline"] else s
                  for s in set_names], fontsize=8)
  ax0.set_title(f"test accuracy, mean of {results['num_seeds']} seeds "
                f"(colour: change from standard)", fontsize=9)
  fig.colorbar(im, ax=ax0, fraction=0.04, pad=0.02)
  _plot_excess(ax1, results, set_names, others)
  common.save_figure(fig, workdir, "sensitivity.png")


def _plot_excess(ax, results: dict, set_names: list[str], others: list[str]) -> None:
  """Bars of each distilled set's excess drop (± std) per non-standard variant."""
  distilled = [s for s in set_names if not results["sets"][s]["is_baseline"]]
  width = 0.8 / max(len(distilled), 1)
  for i, s in enumerate(distilled):
    means = [results["sets"][s]["variants"][v]["excess_drop"]["mean"] for v in others]
    err = [results["sets"][s]["variants"][v]["excess_drop"]["std"] for v in others]
    ax.bar(np.arange(len(others)) + (i - (len(distilled) - 1) / 2) * width, means, width,
           yerr=err, capsize=2, label=s)
  ax.axhline(0, color="k", lw=0.8)
  ax.set_xticks(range(len(others)), others, rotation=45, ha="right", fontsize=8)
  ax.set_ylabel("drop from standard minus random real's drop", fontsize=8)
  ax.set_title("> 0: the distilled set loses more than real data (± std)", fontsize=9)
  if distilled:
    ax.legend(fontsize=7)


# ----------------------------------------------------------------------------- claims


def claims(result: dict) -> list[dict]:
  """The claim table's row from sensitivity.json, with its criterion.

  Args:
    result: this analysis's JSON (empty or without a summary: no rows).

  Returns:
    One row: distilled sets drop more than random real data when the setup changes.
  """
  if not result or not result.get("summary"):
    return []
  summary = result["summary"]
  variants = [v for v, s in summary.items() if s["mean_excess_drop"] is not None]
  excess = {v: summary[v]["mean_excess_drop"] for v in variants}
  worse = [v for v in variants if excess[v] > 0]
  overall = float(np.mean(list(excess.values()))) if excess else 0.0
  measured = "; ".join(
      f"{v}: baseline drop {summary[v]['baseline_drop']:+.3f}, distilled "
      f"{summary[v]['mean_distilled_drop']:+.3f} ({summary[v]['num_sets_dropping_more']}/"
      f"{summary[v]['num_sets']} sets drop more)" for v in variants)
  return [{
      "question": "Q1", "analysis": "sensitivity",
      "claim": "Distilled data is a poor substitute for real data outside the standard "
               "evaluation setting: when the training setup changes, distilled sets lose more "
               "accuracy than a random-real set of the same size.",
      "criterion": "mean excess drop (distilled drop from standard minus random real's drop, "
                   "averaged over distilled sets and non-standard variants) > 0, and > 0 for "
                   "more than half of the variants",
      "paper": "claim 1 of the abstract (qualitative; the paper's sensitivity table is not in "
               "the released code, paper_spec.md [U])",
      "measured": f"mean excess drop {overall:+.3f}; {len(worse)}/{len(variants)} variants with "
                  f"excess > 0. " + measured,
      "reproduced": bool(variants and overall > 0 and 2 * len(worse) > len(variants)),
  }]
