"""The job behind `launch/curvature.py`: trace, top eigenvalues and spectral density
of a model's loss Hessian (or Gauss-Newton matrix) at one parameter state.

The parameters come from a `launch/train.py` workdir (its config.json rebuilds the
model, data and optimiser, and the checkpoint is restored into that template), or
from a fresh initialisation of `config.model` on `config.dataset`. The data is the
train split, the test split, or a distilled set (`distilled:PATH`). Results go to
`workdir/curvature.json` (plus `density.png`), with the timings.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddjax import checkpoint, models, train, workdir as workdir_lib
from ddjax.curvature import estimators, operators
from ddjax.errors import ConfigError

__all__ = ["run_curvature"]


def _load_state(config: ml_collections.ConfigDict):
  """(model, variables, dataset, preprocessor, description) from a checkpoint or an init."""
  from ddjax import classifier  # pylint: disable=g-import-not-at-top
  if config.checkpoint_dir:
    path = os.path.join(config.checkpoint_dir, "config.json")
    if not os.path.exists(path):
      raise checkpoint.CheckpointError(
          f"{config.checkpoint_dir} has no config.json; checkpoint_dir must be the --workdir "
          "of a launch/train.py run.")
    with open(path) as f:
      train_config = ml_collections.ConfigDict(json.load(f))
    ds, pre = classifier.load_preprocessed(train_config)
    model = models.get_model(train_config.model, ds.num_classes, **train_config.model_kwargs)
    variables = models.init_variables(model, jax.random.PRNGKey(train_config.seed), ds.x_train.shape)
    template = train.create_train_state(variables, classifier.make_optimizer(train_config, 1))
    ckpt = checkpoint.Checkpointer(os.path.join(config.checkpoint_dir, "checkpoints"), None)
    step = None if config.checkpoint_step < 0 else config.checkpoint_step
    state, meta = ckpt.restore(template, step)
    ckpt.close()
    where = f"checkpoint {config.checkpoint_dir} (epoch {meta.get('epoch')})"
    return model, state.variables, ds, pre, where
  ds, pre = classifier.load_preprocessed(config)
  model = models.get_model(config.model, ds.num_classes, **config.model_kwargs)
  variables = models.init_variables(model, jax.random.PRNGKey(config.seed), ds.x_train.shape)
  return model, variables, ds, pre, f"initialisation of {config.model} (seed {config.seed})"


def _select_data(config, ds, pre):
  from ddjax import distill  # pylint: disable=g-import-not-at-top
  if config.data == "train":
    x, y = ds.x_train, ds.y_train
  elif config.data == "test":
    x, y = ds.x_test, ds.y_test
  elif config.data.startswith("distilled:"):
    dset = distill.load_distilled(config.data.split(":", 1)[1], ds.num_classes, ds.image_shape)
    if dset.preprocessor.kind != pre.kind:
      raise distill.DistilledSetError(
          f"{config.data}: the distilled images are in {dset.preprocessor.kind!r} space but the "
          f"model's data is preprocessed with {pre.kind!r}.")
    x, y = dset.images, dset.labels
  else:
    raise ConfigError(f"Unknown data {config.data!r}; expected train, test or distilled:PATH.")
  if config.num_examples and config.num_examples < x.shape[0]:
    idx = np.sort(np.asarray(jax.random.permutation(jax.random.PRNGKey(config.seed), x.shape[0]))
                  [:config.num_examples])
    x, y = x[idx], y[idx]
  return jnp.asarray(x), jnp.asarray(y)


def _subset(spec: str):
  if not spec:
    return None
  return spec if spec.startswith("re:") else tuple(s.strip() for s in spec.split(",") if s.strip())


def _timed(fn, *args, **kwargs):
  t0 = time.perf_counter()
  out = fn(*args, **kwargs)
  return out, time.perf_counter() - t0


def _trace(op, key, cfg) -> tuple[dict, float]:
  est, seconds = _timed(estimators.hutchinson_trace, op, key,
                        num_probes=cfg.num_probes or None, max_probes=cfg.max_probes, tol=cfg.tol,
                        probe_batch=cfg.probe_batch)
  return {**est.to_dict(), "time_s": seconds, "time_per_probe_s": seconds / est.num_probes}, seconds


def _plot(path: str, grid, density, top: list[float] | None, title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.semilogy(grid, np.maximum(density, 1e-12), color="black", lw=1)
  for value in top or []:
    ax.axvline(value, color="#D55E00", lw=0.8, ls=":")
  ax.set_xlabel("Eigenvalue")
  ax.set_ylabel("Density (SLQ)")
  ax.set_ylim(bottom=max(1e-8, float(np.max(density)) * 1e-8))
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run_curvature(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Computes the configured curvature quantities and writes them to `workdir`.

  Args:
    config: a configs/curvature.py config.
    workdir: the output directory (config.json, curvature.json, density.png).

  Returns:
    The results written to curvature.json: the source, data and operator settings,
    and, as configured, 'trace', 'per_layer_trace', 'topk' and 'density', each with
    its timings.

  Raises:
    DdjaxError: a bad config value, checkpoint or data (ConfigError,
      CheckpointError, DatasetError, DistilledSetError), or NonFiniteCurvatureError.
  """
  key = jax.random.PRNGKey(config.seed)
  model, variables, ds, pre, source = _load_state(config)
  x, y = _select_data(config, ds, pre)
  build = {"hessian": operators.hessian_operator,
           "ggn": operators.gauss_newton_operator}.get(config.operator)
  if build is None:
    raise ConfigError(f"Unknown operator {config.operator!r}; expected hessian or ggn.")
  workdir_lib.prepare_workdir(workdir, config)  # after the inputs are validated
  kw = dict(batch_size=config.batch_size or None, batch_stats=config.batch_stats, l2=config.l2,
            precision=config.precision or None)
  op = build(model, variables, x, y, subset=_subset(config.subset), **kw)
  logging.info("Curvature of %s on %s (%d examples, %d parameters)", source, config.data,
               x.shape[0], op.size)
  result: dict[str, Any] = {
      "source": source, "data": config.data, "num_examples": int(x.shape[0]),
      "num_params": op.size, "operator": config.operator, "batch_stats": config.batch_stats,
      "subset": config.subset, "precision": config.precision, "batch_size": config.batch_size,
      "jax": jax.__version__, "platform": jax.devices()[0].platform,
  }
  if config.trace.enabled:
    result["trace"], _ = _trace(op, jax.random.fold_in(key, 1), config.trace)
    t = result["trace"]
    logging.info("Trace %.6g +- %.2g (%d probes, %.1f s)", t["trace"], t["stderr"],
                 t["num_probes"], t["time_s"])
  if config.per_layer:
    params = variables["params"]
    layers = {}
    chosen = operators.resolve_subset(params, _subset(config.subset))
    for name, paths in operators.layer_groups(params).items():
      paths = tuple(p for p in paths if chosen is None or p in chosen)  # within the subset
      if paths:
        block = build(model, variables, x, y, subset=paths, **kw)
        layers[name], _ = _trace(block, jax.random.fold_in(key, 2), config.trace)
        layers[name]["num_params"] = block.size
    result["per_layer_trace"] = layers
  top = None
  if config.topk.k:
    if config.topk.method == "lanczos":
      pairs, seconds = _timed(estimators.lanczos_topk, op, jax.random.fold_in(key, 3),
                              config.topk.k, num_iters=config.topk.num_iters or None)
    elif config.topk.method == "power":
      pairs, seconds = _timed(estimators.power_iteration, op, jax.random.fold_in(key, 3),
                              k=config.topk.k, max_iters=config.topk.num_iters or 100)
    else:
      raise ConfigError(f"Unknown topk.method {config.topk.method!r}; expected lanczos or power.")
    top = pairs.eigenvalues.tolist()
    result["topk"] = {"method": config.topk.method, "eigenvalues": top,
                      "residuals": pairs.residuals.tolist(),
                      "converged": pairs.converged.tolist(), "time_s": seconds}
    logging.info("Top-%d eigenvalues (%s): %s (%.1f s)", config.topk.k, config.topk.method,
                 np.array2string(np.asarray(top), precision=4), seconds)
  if config.density.num_probes:
    num_iters = min(config.density.num_iters, op.size)
    dens, seconds = _timed(estimators.slq, op, jax.random.fold_in(key, 4),
                           num_probes=config.density.num_probes, num_iters=num_iters)
    grid, values = dens.density(num_points=config.density.grid_points,
                                sigma=config.density.sigma or None)
    moments = dens.moments((1, 2))
    result["density"] = {**dens.to_dict(), "num_iters": num_iters, "time_s": seconds,
                         "trace_estimate": dens.trace, "mean_eigenvalue": float(moments[0]),
                         "mean_squared_eigenvalue": float(moments[1]),
                         "grid": grid.tolist(), "values": values.tolist()}
    _plot(os.path.join(workdir, "density.png"), grid, values, top,
          f"{config.operator} spectrum, {source}, {config.data} ({x.shape[0]} ex.)")
    logging.info("SLQ density: %d probe(s) x %d steps (%.1f s), trace estimate %.6g",
                 config.density.num_probes, num_iters, seconds, dens.trace)
  workdir_lib.write_json(os.path.join(workdir, "curvature.json"), result)
  return result
