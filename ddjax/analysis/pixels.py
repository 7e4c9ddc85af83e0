"""Q1: do distilled pixels look like real pixels? (the paper's Fig. 3 left)

Un-normalised (never clipped) pixel intensities of the real train images and of each
distilled set: KDEs, the fraction outside [0, 1], moments, and the KS and Wasserstein-1
distances to the real distribution.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np
from scipy import stats as scipy_stats

from ddjax import data
from ddjax.analysis import common, methods, real_features

QUESTION = "Q1"
POSITION = 3

__all__ = ["QUESTION", "POSITION", "default_config", "unnormalised_pixels",
           "pixel_statistics", "run", "claims"]


def default_config() -> ml_collections.ConfigDict:
  """The pixels section at the paper's settings (configs/analysis/pixels.py sizes it).

  Returns:
    round_off, tolerance, the real-pixel subsample and the KDE settings.
  """
  pix = ml_collections.ConfigDict()
  pix.round_off = 1e-5        # |excess| below this is float round-off of normalise/invert
  pix.tolerance = 0.05        # also report pixels more than this outside [0, 1]
  pix.max_real_pixels = 2_000_000  # subsample of real train pixels for KS / W1 (CIFAR: 153M)
  pix.kde_points = 20_000     # points per KDE curve (Scott bandwidth, as seaborn)
  pix.kde_grid = 512
  return pix


def unnormalised_pixels(images: np.ndarray, preprocessor: data.Preprocessor) -> np.ndarray:
  """Model space -> [0, 1]-scale pixel values, NOT clipped (values outside [0, 1] are the
  point of the paper's Fig. 3 left).

  Args:
    images: [N, H, W, C] in model space.
    preprocessor: the model space's preprocessor.

  Returns:
    float32 pixels of the same shape.
  """
  return np.asarray(preprocessor.invert(np.asarray(images, np.float32)), np.float32)


def pixel_statistics(pixels: np.ndarray, round_off: float = 1e-5,
                     tolerance: float = 0.05) -> dict[str, float]:
  """Range, moments and out-of-[0, 1] fractions of un-normalised images [N, H, W, C].

  A pixel is outside if it is below -round_off or above 1 + round_off (round_off absorbs
  the float error of normalise-then-invert); `*_tol` counts excursions beyond `tolerance`.

  Args:
    pixels: [N, H, W, C] un-normalised pixels.
    round_off: the float error tolerated at 0 and 1.
    tolerance: the excursion counted by `frac_outside_tol`.

  Returns:
    num_pixels, mean, std, min, max, quantiles, frac_below_0, frac_above_1,
    frac_outside, frac_outside_tol, frac_images_with_outside.

  Raises:
    ValueError: for no pixels.
  """
  pixels = np.asarray(pixels, np.float64)
  if pixels.size == 0:
    raise ValueError("pixel_statistics needs at least one pixel.")
  flat = pixels.reshape(pixels.shape[0], -1)
  below, above = flat < -round_off, flat > 1.0 + round_off
  outside = below | above
  return {"num_pixels": int(flat.size), "mean": float(flat.mean()), "std": float(flat.std()),
          "min": float(flat.min()), "max": float(flat.max()),
          "quantiles": {str(q): float(v) for q, v in
                        zip((0.01, 0.05, 0.5, 0.95, 0.99),
                            np.quantile(flat, (0.01, 0.05, 0.5, 0.95, 0.99)))},
          "frac_below_0": float(below.mean()), "frac_above_1": float(above.mean()),
          "frac_outside": float(outside.mean()),
          "frac_outside_tol": float(((flat < -tolerance) | (flat > 1.0 + tolerance)).mean()),
          "frac_images_with_outside": float(outside.any(axis=1).mean())}


def _set_statistics(px: np.ndarray, real_flat: np.ndarray, dset, section) -> dict:
  """pixel_statistics of one set, with the KS and Wasserstein-1 distances to real pixels."""
  s = pixel_statistics(px, section.round_off, section.tolerance)
  ks = scipy_stats.ks_2samp(px.ravel(), real_flat)
  s.update(method=dset.method, learned=common.is_learned(dset),
           ks_statistic=float(ks.statistic), ks_pvalue=float(ks.pvalue),
           wasserstein1=float(scipy_stats.wasserstein_distance(px.ravel(), real_flat)))
  return s


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Un-normalised pixel distributions of the real train images and each distilled set.

  Args:
    config: the analysis config: its `pixels` section (round-off, tolerance, how many real
      pixels the distances sample) and `seed` (that sample).
    workdir: where pixels.json and pixels.png go.

  Returns:
    The JSON: the pixel statistics (moments, quantiles, fractions outside [0, 1]) of the
    real train images and of each set, per set with its KS and Wasserstein-1 distances to
    the real pixels; and whether the preprocessing inverts exactly.

  Raises:
    DistilledSetError: for no distilled sets, or one that does not fit the real data.
  """
  section = common.section(config, "pixels")
  adata = common.load_analysis_data(config)
  real, pre, distilled = adata.real, adata.preprocessor, adata.distilled
  names = real_features.ordered_set_names(distilled)
  # zca_reg discards each image's mean and norm; its invert rescales to [0, 1], so
  # out-of-range fractions are meaningless there (reported, and flagged).
  invert_exact = pre.kind != "zca_reg"
  rng = np.random.default_rng(int(config.seed))

  real_pixels = unnormalised_pixels(real.x_train, pre)
  real_flat = real_pixels.ravel()
  if real_flat.size > section.max_real_pixels:
    real_flat = rng.choice(real_flat, int(section.max_real_pixels), replace=False)
  real_stats = pixel_statistics(real_pixels, section.round_off, section.tolerance)
  set_pixels = {n: unnormalised_pixels(distilled[n].images, pre) for n in names}
  sets_out = {n: _set_statistics(set_pixels[n], real_flat, distilled[n], section)
              for n in names}

  results = {
      "analysis": "pixels", "paper_counterpart": "Fig. 3 left (E3)",
      "config": common.to_dict(section), "seed": int(config.seed), "seeds": [int(config.seed)],
      "dataset": real.name, "preprocess": pre.kind, "invert_exact": invert_exact,
      "real_reference": f"real train images ({int(real.x_train.shape[0])}), "
                        f"{int(real_flat.size)} pixels for KS / W1",
      "real": real_stats, "set_order": names, "sets": sets_out,
  }
  results["figures"] = [_plot(results, real_flat, real_pixels, real.y_train, set_pixels,
                              distilled, rng, section, workdir)]
  common.write_results(workdir, "pixels", results)
  return results


def _kde(values: np.ndarray, grid: np.ndarray, max_points: int, rng) -> np.ndarray:
  """A Gaussian KDE of (at most max_points of) `values` on `grid`; zeros if degenerate."""
  values = np.asarray(values, np.float64).ravel()
  if values.size > max_points:
    values = rng.choice(values, max_points, replace=False)
  if values.size < 2 or np.std(values) == 0:
    return np.zeros_like(grid)
  return scipy_stats.gaussian_kde(values)(grid)  # Scott's rule, seaborn's default


def _first_of_class_0(labels) -> int:
  """The index of the first class-0 image (0 if there is none)."""
  labels = np.asarray(labels)
  return int(np.flatnonzero(labels == 0)[0]) if np.any(labels == 0) else 0


def _plot(results, real_flat, real_pixels, real_labels, set_pixels, distilled, rng,
          section, workdir) -> str:
  """The paper's Fig. 3 (left): pixel KDEs of every set, and of one class-0 image each."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  lo = min([results["real"]["min"]] + [s["min"] for s in results["sets"].values()])
  hi = max([results["real"]["max"]] + [s["max"] for s in results["sets"].values()])
  pad = 0.05 * (hi - lo + 1e-6)
  grid = np.linspace(lo - pad, hi + pad, int(section.kde_grid))
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  # Left: every pixel of each set. Right: the paper's version, one class-0 image each.
  curves = [("real train", real_flat, real_pixels[_first_of_class_0(real_labels)], "k")]
  for i, (n, px) in enumerate(set_pixels.items()):
    curves.append((real_features.set_label(n, distilled[n]), px,
                   px[_first_of_class_0(distilled[n].hard_labels)],
                   methods.color(distilled[n].method, i)))
  for label, allpx, one, colour in curves:
    for ax, values in ((axes[0], allpx), (axes[1], one)):
      density = _kde(values, grid, int(section.kde_points), rng)
      ax.plot(grid, density, color=colour, lw=1.2, label=label)
      if label == "real train":  # filled like the paper's real curve; the rest as lines
        ax.fill_between(grid, density, color=colour, alpha=0.12)
  for ax, title in ((axes[0], "all pixels of each set"),
                    (axes[1], "one class-0 image each (the paper's Fig. 3 left)")):
    ax.axvline(0, color="grey", ls=":", lw=0.8)
    ax.axvline(1, color="grey", ls=":", lw=0.8)
    ax.set_xlabel("pixel value (un-normalised, not clipped)")
    ax.set_ylabel("density (KDE)")
    ax.set_yscale("symlog", linthresh=0.1)  # MNIST's spike at 0 would flatten the tails
    ax.set_ylim(bottom=0)
    ax.set_title(title, fontsize=9)
  axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
  common.save_figure(fig, workdir, "pixels.png")
  return "pixels.png"


def claims(result: dict) -> list[dict[str, Any]]:
  """The claim row of the paper's Fig. 3 (left) from this analysis's JSON.

  Args:
    result: pixels.json's content.

  Returns:
    One row (distilled pixels fall outside [0, 1] and differ from real pixels), or none
    without learned sets.
  """
  sets = result["sets"]
  learned = common.learned_names(result)
  if not learned:
    return []
  base = next((n for n in result["set_order"] if sets[n]["method"] == methods.CONTROL), None)
  ks_floor = sets[base]["ks_statistic"] if base else 0.05
  tol = result["config"].get("tolerance", 0.05)
  ok = result["invert_exact"] and all(
      sets[n]["frac_outside_tol"] >= 0.01 and sets[n]["ks_statistic"] > ks_floor for n in learned)
  return [{
      "question": "Q1", "analysis": "pixels",
      "claim": "Distilled pixel statistics differ from real images: values fall outside [0, 1].",
      "criterion": (f"every learned set: >= 1% of un-normalised pixels more than {tol} "
                    "outside [0, 1] and KS "
                    "distance to real train pixels > " +
                    (f"the random-real set's ({common.fmt(ks_floor)})" if base else "0.05") +
                    ("" if result["invert_exact"] else "; not testable: zca_reg inversion "
                     "rescales each image to [0, 1]")),
      "paper": "one DM image spans about -0.1 to 1.5, one TM image about -0.5 to 1.0; the "
               "real image stays in [0, 1]",
      "measured": "; ".join(f"{n}: {sets[n]['frac_outside']:.1%} outside ("
                            f"{sets[n]['frac_outside_tol']:.1%} by > {tol}), range "
                            f"[{sets[n]['min']:.2f}, {sets[n]['max']:.2f}], KS "
                            f"{common.fmt(sets[n]['ks_statistic'])}" for n in learned) +
                  f"; real {result['real']['frac_outside']:.1%} outside",
      "reproduced": bool(ok)}]
