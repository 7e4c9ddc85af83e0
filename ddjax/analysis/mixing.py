"""Does real data help distilled data? The paper's Fig. 3 right (section 3): each distilled
set plus k real train images per class, trained with protocol A and tested on real data.

k is in `config.mixing.additions` (the paper: 0, 2, 10, 50, 250); training is protocol A
(full batch, SGD 0.01 / momentum 0.9, 300 steps), vmapped over seeds that are the same
init keys for every set and addition (`ddjax.analysis.training_setup`), so gains are
paired. The real additions are NESTED (the k=2 images are the first two of the k=10 ones,
per class) and identical for every set. The baseline is a random-real set of the same size
(the distilled set named `random` if given, else a seeded draw), plus the same additions.
The paper's finding: a few real images LOWER a distilled set's accuracy, while they raise
the baseline's. Runs go through the analyses' cache, which sensitivity's `standard` runs
share.
"""

from __future__ import annotations

import time

import jax
import ml_collections
import numpy as np

from ddjax.analysis import cache, common, stats
from ddjax.analysis import training_setup as ts
from ddjax.errors import ConfigError

QUESTION = "Q1"
POSITION = 4

__all__ = ["QUESTION", "POSITION", "default_config", "parse_additions", "train_mixed",
           "summarize_sets", "run", "claims"]


def default_config() -> ml_collections.ConfigDict:
  """The mixing section at the paper's settings: 0, 2, 10, 50 and 250 real images per
  class added to each set, trained as protocol A.

  Returns:
    A ConfigDict with the k's (`additions`), protocol A's seeds and steps when 0
    (`num_seeds`, `steps`), which sets to mix (`sets`), the random-real baseline
    (`baseline`, `baseline_ipc`) and the labels used (`labels`).
  """
  mixing = ml_collections.ConfigDict()
  # A distilled set + k real train images per class (nested across k, seeded).
  mixing.additions = "0,2,10,50,250"   # the paper's k (its x-axis "10 +k")
  mixing.num_seeds = 0                 # 0 = config.protocol_a.num_seeds
  mixing.steps = 0                     # 0 = config.protocol_a.steps (300)
  mixing.sets = ""                     # "" = every distilled set; else "dm,mtt,..."
  mixing.baseline = "random"           # this distilled set is the baseline; drawn if absent
  mixing.baseline_ipc = 0              # 0 = the distilled sets' IPC (for a drawn baseline)
  mixing.labels = "as_distilled"       # or "hard" (argmax of learned soft labels)
  return mixing


def parse_additions(section: ml_collections.ConfigDict) -> list[int]:
  """The k's of `section.additions`, sorted and distinct.

  Args:
    section: the mixing section.

  Returns:
    The real images added per class, ascending.

  Raises:
    ConfigError: if they are not integers, or there are none.
  """
  try:
    additions = sorted(set(ts.as_list(section.additions, int)))
  except ValueError:
    raise ConfigError(f"config.mixing.additions must be integers per class like '0,2,10', "
                      f"got {section.additions!r}.") from None
  if not additions:
    raise ConfigError("config.mixing.additions is empty; e.g. '0,2,10,50,250'.")
  return additions


def train_mixed(config: ml_collections.ConfigDict, cache_directory: str,
                setup: ts.TrainingSetup, keys, sets: list[ts.AnalysedSet], real,
                add_idx: dict[int, np.ndarray]) -> dict[str, dict[int, dict]]:
  """Trains every set plus every addition (cached runs).

  Args:
    config: the analysis config (its progress flag).
    cache_directory: the analyses' cache.
    setup: protocol A.
    keys: the seeds' init keys.
    sets: the sets, the baseline last.
    real: the real dataset.
    add_idx: {k: train-split indices of the k-per-class additions}.

  Returns:
    {set name: {k: {"accuracy", "finite" (per seed), "num_images"}}}.
  """
  additions = list(add_idx)
  per_seed: dict[str, dict[int, dict]] = {s.name: {} for s in sets}
  with common.progress(config, total=len(sets) * len(additions), desc="mixing") as bar:
    for k in additions:  # one addition size at a time: sets of one size share a compile
      for s in sets:
        x, y = ts.mix(s.images, s.labels, real.x_train[add_idx[k]], real.y_train[add_idx[k]],
                      real.num_classes)
        per_seed[s.name][k] = {**ts.run_accuracies(cache_directory, setup, keys, x, y,
                                                   real.x_test, real.y_test, real.num_classes),
                               "num_images": int(x.shape[0])}
        bar.update(1)
  return per_seed


def summarize_sets(sets: list[ts.AnalysedSet], per_seed: dict[str, dict[int, dict]],
                   additions: list[int]) -> dict[str, dict]:
  """Each set's accuracy per addition, its gain over the first addition and its gap to the
  baseline, both paired over seeds.

  Args:
    sets: the sets, the baseline last.
    per_seed: `train_mixed`'s runs.
    additions: the k's, ascending.

  Returns:
    {set name: {"method", "ipc", "soft_labels", "is_baseline", "source", "additions":
    {str(k): {...}}}}, as in the JSON.
  """
  baseline = sets[-1]
  base_acc = {k: np.asarray(per_seed[baseline.name][k]["accuracy"]) for k in additions}
  results_sets = {}
  for s in sets:
    acc0 = np.asarray(per_seed[s.name][additions[0]]["accuracy"])
    entries = {}
    for k in additions:
      acc = np.asarray(per_seed[s.name][k]["accuracy"])
      entries[str(k)] = {
          "num_images": per_seed[s.name][k]["num_images"],
          "accuracy": acc.tolist(), **stats.mean_ci(acc),
          "finite_fraction": float(np.mean(per_seed[s.name][k]["finite"])),
          # Paired over seeds (same init keys): the change from adding k real images...
          f"gain_vs_{additions[0]}": stats.mean_ci(acc - acc0),
          # ... and the gap to the random-real baseline with the same additions.
          "vs_baseline": stats.mean_ci(acc - base_acc[k]),
      }
    results_sets[s.name] = {"method": s.method, "ipc": s.ipc, "soft_labels": s.soft_labels,
                            "is_baseline": s.is_baseline, "source": s.source,
                            "additions": entries}
  return results_sets


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """The paper's Fig. 3 right: accuracy of each distilled set + k real images per class.

  Args:
    config: the analysis config: its `mixing` section, `protocol_a` (the training) and
      `seed` (the init keys, the additions and a drawn baseline).
    workdir: where mixing.json and mixing.png go (and the cache, unless config.cache_dir).

  Returns:
    The JSON: the training setup, seeds and additions, the baseline and how many of its
    images are also added; per set and k, the accuracy over seeds, its gain over k = 0 and
    its gap to the baseline (both paired over seeds).

  Raises:
    ConfigError: for additions that are empty or not integers, or unknown `labels`.
    DistilledSetError: for no distilled sets, or `mixing.sets` naming an unknown one.
  """
  start = time.time()
  section = common.section(config, "mixing")
  adata = common.load_analysis_data(config)
  real = adata.real
  additions = parse_additions(section)
  sets = ts.collect_sets(config, section, adata, "mixing")
  setup = ts.standard_setup(config, section)
  num_seeds = ts.num_seeds(config, section)
  keys = ts.seed_keys(config.seed, num_seeds)
  add_idx = ts.addition_indices(jax.random.fold_in(jax.random.PRNGKey(config.seed), 1),
                                real.y_train, additions, real.num_classes)
  per_seed = train_mixed(config, cache.cache_dir(config, workdir), setup, keys, sets, real,
                         add_idx)
  baseline = sets[-1]
  base_idx = set() if baseline.real_indices is None else set(baseline.real_indices.tolist())
  results = {
      "analysis": "mixing",
      "paper_counterpart": "Fig. 3 right (E4: distilled + real images, protocol A)",
      "figures": ["mixing.png"],
      "config": section.to_dict(),
      "setup": setup.describe(),
      "seed": int(config.seed),
      "num_seeds": num_seeds,
      "seed_keys": ts.key_array(keys).tolist(),
      "additions": additions,
      "addition_seed": "fold_in(PRNGKey(seed), 1)",
      "baseline": baseline.name,
      "baseline_source": baseline.source,
      # Real additions that are also images of a drawn baseline (the paper does not remove
      # such overlap; unknown, hence 0, for a baseline given as a file).
      "baseline_overlap": {str(k): len(base_idx & set(add_idx[k].tolist())) for k in additions},
      "dataset": real.name,
      "num_test": int(real.x_test.shape[0]),
      "sets": summarize_sets(sets, per_seed, additions),
  }
  return ts.finish_run(workdir, "mixing", results, start, _plot,
                       f"{len(sets)} sets x {len(additions)} additions")


def _plot(results: dict, workdir: str) -> None:
  """mixing.png: mean accuracy (± std over seeds) against the real images added."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  additions = results["additions"]
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  markers = "s o * ^ v P X h <".split()
  i = 0
  for name, entry in results["sets"].items():
    means = [entry["additions"][str(k)]["mean"] for k in additions]
    err = [entry["additions"][str(k)]["std"] for k in additions]  # CIs are in the JSON
    if entry["is_baseline"]:
      ax.errorbar(additions, means, yerr=err, ls="--", marker="D", color="k", capsize=3,
                  label=f"{name} (random real)")
    else:
      ax.errorbar(additions, means, yerr=err, marker=markers[i % len(markers)], capsize=3,
                  label=name)
      i += 1
  ax.set_xscale("symlog", linthresh=1)
  ax.set_xticks(additions)
  ipc = next(iter(results["sets"].values()))["ipc"]
  ax.set_xticklabels([f"{ipc} +{k}" for k in additions])
  ax.set_xlabel("images per class: distilled + real added")
  ax.set_ylabel("test accuracy")
  ax.set_title(f"Mixing real into distilled data ({results['dataset']}, "
               f"{results['setup']['num_steps']} full-batch steps, "
               f"mean ± std over {results['num_seeds']} seeds)", fontsize=9)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  common.save_figure(fig, workdir, "mixing.png")


# ----------------------------------------------------------------------------- claims


def claims(result: dict) -> list[dict]:
  """The claim table's rows from mixing.json, each with its criterion.

  Args:
    result: this analysis's JSON (empty: no rows).

  Returns:
    Two rows at the largest addition <= 10 per class (help vs the baseline; a drop
    below the set's own +0), and a convergence row when the largest addition is >= 250;
    none if the additions do not start at 0 or have no k in 1..10.
  """
  if not result:
    return []
  additions = result["additions"]
  k0 = additions[0]
  small = [k for k in additions if 0 < k <= 10]
  if k0 != 0 or not small:
    return []
  k = max(small)  # the paper's clearest point: +10 per class
  sets = result["sets"]
  distilled = {n: e for n, e in sets.items() if not e["is_baseline"]}
  if not distilled:
    return []
  rows = _small_addition_claims(sets[result["baseline"]], distilled, k, f"gain_vs_{k0}")
  top = max(additions)
  if top >= 250:  # the paper's convergence point
    rows.append(_convergence_claim(sets, top))
  return rows


def _small_addition_claims(base: dict, distilled: dict[str, dict], k: int,
                           gain_key: str) -> list[dict]:
  """The rows on +k real images per class: less help than for real data, and a drop."""
  base_gain = base["additions"][str(k)][gain_key]["mean"]
  gains = {n: e["additions"][str(k)][gain_key]["mean"] for n, e in distilled.items()}
  gains_txt = ", ".join(f"{n} {g:+.3f}" for n, g in gains.items())
  less = [n for n, g in gains.items() if g < base_gain]
  lower = [n for n, g in gains.items() if g < 0]
  return [{
      "question": "Q1", "analysis": "mixing",
      "claim": f"Adding real images helps distilled data less than it helps random real data "
               f"(+{k} real images per class, protocol A).",
      "criterion": f"every distilled set's mean accuracy gain from +{k} real/class (paired over "
                   f"seeds) is below the random-real baseline's gain",
      "paper": "CIFAR-10, +10/class: random real 0.273 -> 0.326 (+5.3 pts); BPTT -8.9, DM -1.2, "
               "GM -2.3, TM -8.0 pts (Fig. 3 right)",
      "measured": f"gain at +{k}: baseline {base['additions'][str(k)]['mean']:.3f} "
                  f"({base_gain:+.3f}); {gains_txt}; {len(less)}/{len(gains)} below baseline",
      "reproduced": bool(len(less) == len(gains)),
  }, {
      "question": "Q1", "analysis": "mixing",
      "claim": f"A few real images (+{k} per class) lower the accuracy of distilled data, "
               f"while they raise the random-real baseline's.",
      "criterion": f"baseline mean gain at +{k} > 0 and at least half of the distilled sets have "
                   f"a negative mean gain (the paper: all four sets)",
      "paper": "every distilled set drops at +2 and +10 (BPTT 0.587->0.498, TM 0.532->0.452); "
               "random real rises 0.273->0.326",
      "measured": f"baseline {base_gain:+.3f}; {len(lower)}/{len(gains)} distilled sets lower "
                  f"({gains_txt})",
      "reproduced": bool(base_gain > 0 and 2 * len(lower) >= len(gains)),
  }]


def _convergence_claim(sets: dict[str, dict], top: int) -> dict:
  """The row on +top real images per class: every set reaches the same accuracy."""
  means = {n: e["additions"][str(top)]["mean"] for n, e in sets.items()}
  spread = max(means.values()) - min(means.values())
  return {
      "question": "Q1", "analysis": "mixing",
      "claim": f"With many real images (+{top} per class) every set converges to the same "
               f"accuracy.",
      "criterion": "spread (max - min) of mean accuracy over all sets, baseline included, "
                   "at the largest addition <= 0.03",
      "paper": "+250/class: all sets 0.58-0.60",
      "measured": f"+{top}: " + ", ".join(f"{n} {m:.3f}" for n, m in means.items())
                  + f"; spread {spread:.3f}",
      "reproduced": bool(spread <= 0.03),
  }
