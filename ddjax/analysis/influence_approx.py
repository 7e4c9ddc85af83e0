"""Q3, an extension of the paper's section 5 (the paper used exact leave-one-out only):
do influence functions recover the exact leave-one-out influence of distilled images?

Influence functions (`ddjax.influence.influence_functions`: CG, LiSSA, Arnoldi, and the
plain gradient dot product as a no-curvature baseline) at the model trained on the whole
set, compared with the exact leave-one-out matrix (`ddjax.analysis.loo`, the sets and
settings of `config.influence`) by Pearson, Spearman and top-k overlap, with wall times.
The damping follows the Hessian's smallest eigenvalue (a Lanczos estimate), since
protocol A stops far from a minimum. The matrices are cached (`ddjax.analysis.cache`).
"""

from __future__ import annotations

import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddjax import analysis, curvature, influence as influence_lib
from ddjax.analysis import cache, common, loo
from ddjax.errors import ConfigError

QUESTION = "Q3"
POSITION = 2

__all__ = ["QUESTION", "POSITION", "default_config", "approx_sets", "approx_methods",
           "approx_influence", "run", "claims"]

# fold_in constant of the Lanczos (and Arnoldi) start vectors, a stream of config.seed.
_LANCZOS = 804
# The section's fields that do not change the matrices (which sets, k, plotting).
_NOT_SOLVER = ("sets", "max_sets", "top_k", "max_scatter_points")


def default_config() -> ml_collections.ConfigDict:
  """The `influence_approx` section at the paper's scale.

  Returns:
    The section (sized for CIFAR-10 at width 128 by configs/analysis/influence_approx.py).
  """
  apx = ml_collections.ConfigDict()
  apx.sets = ""            # "" = every set of config.influence.sets
  apx.max_sets = 0         # at most this many of them, in the paper's method order (0 = all)
  # "cg", "lissa", "arnoldi" (Koh & Liang 2017; Schioppa et al. 2022), "identity" (plain
  # gradient dot product, no curvature: a TracIn-like baseline), "direct" (dense
  # Hessian solve: small models only).
  apx.methods = "cg,lissa,arnoldi,identity"
  apx.curvature = "hessian"  # or "ggn" (Gauss-Newton, positive semi-definite)
  # Absolute damping (added to every eigenvalue). protocol A stops far from a minimum, so
  # H is indefinite: with damping_from_lambda_min the damping is raised to
  # damping_factor * |lambda_min| (Lanczos estimate), Koh & Liang's rule of thumb.
  apx.damping = 0.01
  apx.damping_from_lambda_min = True
  apx.damping_factor = 1.5
  apx.lanczos_iters = 60   # Lanczos steps for the lambda_min / lambda_max estimates
  apx.cg_maxiter = 100
  apx.cg_tol = 1e-5
  apx.lissa_depth = 1000   # LiSSA scale: 1.5 * (max |lambda| + damping) from the Lanczos run
  apx.arnoldi_rank = 20
  apx.arnoldi_iters = 60
  apx.top_k = 9            # top-k overlap with the exact LOO
  apx.max_scatter_points = 5000
  return apx


def approx_sets(config: ml_collections.ConfigDict, distilled: dict) -> list[str]:
  """The sets compared.

  Args:
    config: the analysis config (its `influence` and `influence_approx` sections).
    distilled: set name -> distilled set.

  Returns:
    `influence_approx.sets` ("" = the sets of `loo.influence_sets`) in the paper's method
    order, at most `max_sets` of them (0 = all).

  Raises:
    DistilledSetError: if `sets` names sets that were not loaded.
  """
  sec = config.influence_approx
  base = loo.influence_sets(config, distilled)
  names = common.selected_names(sec, distilled, "influence_approx") if sec.sets else base
  if sec.max_sets:
    names = names[:int(sec.max_sets)]
  return names


def approx_methods(sec: ml_collections.ConfigDict) -> list[str]:
  """The methods of `sec.methods`, in order.

  Args:
    sec: the `influence_approx` section.

  Returns:
    The method names.

  Raises:
    ConfigError: naming methods `ddjax.influence` does not have.
  """
  methods = [m.strip() for m in str(sec.methods).split(",") if m.strip()]
  unknown = [m for m in methods if m not in influence_lib.METHODS]
  if unknown:
    raise ConfigError(f"Unknown influence_approx method(s) {unknown}; expected some of "
                      f"{influence_lib.METHODS}.")
  return methods


# ----------------------------------------------------------------------------- compute


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


def _damping(sec, spectrum: dict) -> tuple[float, float]:
  """(damping, LiSSA scale) from the section and the Lanczos spectrum."""
  damping = float(sec.damping)
  if sec.damping_from_lambda_min and spectrum["lambda_min"] < 0:
    damping = max(damping, float(sec.damping_factor) * -spectrum["lambda_min"])
  scale = 1.5 * (max(abs(spectrum["lambda_max"]), abs(spectrum["lambda_min"])) + damping)
  return damping, scale


def _compute(config, dset, real, res, methods) -> tuple[dict, dict]:
  """(meta, matrices): the spectrum, damping and each method's matrix and diagnostics."""
  sec = config.influence_approx
  model, variables = loo.trained_variables(config, real, res["params_flat"])
  x, y = jnp.asarray(dset.images), jnp.asarray(dset.labels)
  x_test = jnp.asarray(real.x_test[res["test_indices"]])
  y_test = jnp.asarray(res["test_labels"])
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), _LANCZOS)
  start = time.perf_counter()
  spectrum = _spectrum(model, variables, x, y, sec.curvature, key, sec.lanczos_iters)
  spectrum["seconds"] = time.perf_counter() - start
  damping, scale = _damping(sec, spectrum)
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
  return meta, matrices


def approx_influence(config: ml_collections.ConfigDict, workdir: str, name: str, dset,
                     real, res: dict) -> dict[str, Any]:
  """Influence functions for one set, from the cache or computed.

  Args:
    config: the analysis config.
    workdir: the analysis workdir (the cache is `cache.cache_dir(config, workdir)`).
    name: the set's name.
    dset: the distilled set (model space).
    real: the real dataset.
    res: the set's exact matrix (`loo.exact_influence`).

  Returns:
    {"meta": spectrum, damping, LiSSA scale and per-method seconds, diagnostics or
    error; "matrices": method -> [rows, tests] (the methods that succeeded);
    "resumed": whether the cache had them}.

  Raises:
    ConfigError: for an unknown method.
  """
  sec = config.influence_approx
  methods = approx_methods(sec)
  solver = {k: v for k, v in sec.to_dict().items() if k not in _NOT_SOLVER}
  payload = {"exact": str(res["signature"]), "solver": solver, "seed": config.seed}
  fresh = {}

  def compute():
    fresh["meta"], matrices = _compute(config, dset, real, res, methods)
    return {"meta": np.asarray(json.dumps(fresh["meta"], default=float)),
            **{f"approx_{m}": v for m, v in matrices.items()}}

  got = cache.cached(cache.cache_dir(config, workdir), f"influence_approx_{name}", payload,
                     compute)
  # A fresh computation keeps its numbers' Python types; a cached one reads them back.
  meta = fresh["meta"] if fresh else json.loads(str(got["meta"]))
  return {"meta": meta, "matrices": {m: got[f"approx_{m}"] for m in methods
                                     if f"approx_{m}" in got}, "resumed": not fresh}


# ----------------------------------------------------------------------------- results


def _compare(info: dict, mat, res: dict, k: int) -> dict:
  """One method's agreement with the exact matrix, added to its meta."""
  exact = res["influence"]
  cmp = influence_lib.compare_influence(mat, exact, k=k)
  return {**info, **cmp, "topk_overlap": cmp[f"top{k}_overlap"],
          "sign_agreement": float(np.mean(np.sign(mat) == np.sign(exact))),
          "scale_ratio": float(np.abs(mat).mean() / max(np.abs(exact).mean(), 1e-30)),
          "purity_topk": float(loo.class_purity(mat, res["row_labels"], res["test_labels"],
                                                k).mean())}


def _set_entry(dset, res: dict, out: dict, methods: list[str], k: int) -> dict[str, Any]:
  """One set's JSON entry: the spectrum and damping, and each method against the exact."""
  k_eff = min(k, res["influence"].shape[1])
  entry = {"method": dset.method, "control": loo.is_control(dset),
           "exact_loo_seconds": float(res["seconds"]), "rows": int(res["rows"].size),
           "num_test": int(res["test_indices"].size), "resumed": bool(out["resumed"]),
           "spectrum": out["meta"]["spectrum"], "damping": out["meta"]["damping"],
           "lissa_scale": out["meta"]["lissa_scale"], "methods": {}}
  exact_purity = loo.class_purity(res["influence"], res["row_labels"], res["test_labels"],
                                  k_eff)
  for m in methods:
    info = out["meta"]["methods"].get(m, {"error": "not run"})
    if m in out["matrices"]:
      info = _compare(info, out["matrices"][m], res, k_eff)
    entry["methods"][m] = info
  entry["exact_purity_topk"] = float(exact_purity.mean())
  return entry


def _summary(names: list[str], methods: list[str], per_set: dict) -> dict:
  """Per method: the sets it succeeded / failed on, and its mean statistics over sets."""
  summary = {}
  for m in methods:
    ok = [per_set[n]["methods"][m] for n in names if "pearson" in per_set[n]["methods"][m]]
    summary[m] = {"sets_ok": len(ok), "sets_failed": len(names) - len(ok)}
    for stat in ("pearson", "spearman", "pearson_row_mean", "spearman_row_mean", "topk_overlap",
                 "seconds"):
      if ok:
        summary[m][stat] = float(np.mean([o[stat] for o in ok]))
  return summary


def _figure(workdir, names, methods, exact, approx, max_points, seed) -> str:
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


def _results(config, figures, methods, k, names, per_set) -> dict[str, Any]:
  return {
      "analysis": "influence_approx",
      "paper_counterpart": "none (extension: the paper used exact leave-one-out only, E8)",
      "figures": figures, "config": config.influence_approx.to_dict(),
      "influence_config": config.influence.to_dict(),
      "seeds": {"config_seed": int(config.seed), "lanczos": f"fold_in(seed, {_LANCZOS})"},
      "sign_convention": loo.SIGN_CONVENTION + " (influence functions use the same sign)",
      "note": ("The LOO model is protocol A (a fixed number of full-batch steps), not trained "
               "to convergence: the Hessian is indefinite and influence functions, which "
               "assume a minimum, are expected to be imperfect. Seconds include compilation."),
      "top_k": k, "methods": methods, "set_order": names, "sets": per_set,
      "summary": _summary(names, methods, per_set),
  }


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Influence functions (CG, LiSSA, Arnoldi, ...) against the exact leave-one-out.

  Args:
    config: the analysis config (its `influence_approx` section; `influence` gives the
      sets and the exact matrix, its defaults when absent).
    workdir: where `influence_approx.json`, influence_approx.png and, unless
      config.cache_dir, the cached matrices go.

  Returns:
    The JSON, as written: per set the Hessian's spectrum estimate, the damping and, per
    method, its Pearson, Spearman and top-k overlap with the exact matrix and its wall
    time (or its error); per method, its mean over the sets it ran on.

  Raises:
    ConfigError: for a method that `influence_approx.methods` names but does not exist.
    DistilledSetError: for no distilled sets, or `influence.sets` or
      `influence_approx.sets` naming an unknown one.
  """
  config = analysis.with_section(config, "influence")
  sec = common.section(config, "influence_approx")
  adata = common.load_analysis_data(config)
  real = adata.real
  names = approx_sets(config, adata.distilled)
  methods = [m.strip() for m in str(sec.methods).split(",") if m.strip()]
  k = int(sec.top_k)
  per_set, exact, approx = {}, {}, {}
  for name in common.progress(config, names, desc="influence_approx"):
    dset = adata.distilled[name]
    res = loo.exact_influence(config, workdir, name, dset, real)
    out = approx_influence(config, workdir, name, dset, real, res)
    exact[name], approx[name] = res["influence"], out["matrices"]
    per_set[name] = _set_entry(dset, res, out, methods, k)
  figures = [_figure(workdir, names, methods, exact, approx, int(sec.max_scatter_points),
                     int(config.seed))] if names else []
  common.write_results(workdir, "influence_approx",
                       _results(config, figures, methods, k, names, per_set))
  return common.read_results(workdir, "influence_approx")


# ----------------------------------------------------------------------------- claims


def claims(result: dict) -> list[dict]:
  """The claim row of this extension: some influence function recovers the exact
  leave-one-out ranking of the test images.

  Args:
    result: influence_approx.json's content.

  Returns:
    One row (whether on every set the best method reaches Spearman >= 0.5 and top-k
    overlap >= 0.5 with the exact LOO), or [] without sets or methods.
  """
  names, methods = result["set_order"], result["methods"]
  if not names or not methods:
    return []
  k = result["top_k"]
  fmt = common.fmt

  def best(n):
    ok = {m: v for m, v in result["sets"][n]["methods"].items() if "spearman" in v}
    return max(ok.items(), key=lambda kv: kv[1]["spearman"]) if ok else (None, None)

  ok = True
  for n in names:
    m, v = best(n)
    ok &= m is not None and v["spearman"] >= 0.5 and v["topk_overlap"] >= 0.5
  measured = "; ".join(
      f"{m}: Spearman {fmt(s['spearman'])}, top-{k} overlap {fmt(s['topk_overlap'])}, "
      f"{s['seconds']:.0f} s" if "spearman" in s else f"{m}: failed on {s['sets_failed']} set(s)"
      for m, s in result["summary"].items())
  exact_s = np.mean([result["sets"][n]["exact_loo_seconds"] for n in names])
  return [{
      "question": "Q3", "analysis": "influence_approx",
      "claim": ("Extension (ddjax, not in the paper): influence-function approximations (CG, "
                "LiSSA, Arnoldi) recover the exact leave-one-out influence of distilled images."),
      "criterion": (f"on every set, the best method reaches Spearman >= 0.5 with exact LOO and "
                    f"top-{k} overlap >= 0.5"),
      "paper": "none: the paper used exact LOO retraining only (no approximation)",
      "measured": f"mean over sets: {measured}; exact LOO {exact_s:.0f} s per set",
      "reproduced": bool(ok)}]
