"""Runs any distillation method: the job behind `launch/distill.py`.

    result = run_distillation(config, workdir)

The loop, for every method of `ddjax.distill` (see `base.py` for the contract):

1. Load and preprocess the dataset (`config.dataset`, `config.preprocess`), put the real
   train split on device as `RealData`; `method.load_aux(config)` if the method has one.
2. `method.init_state`, then resume from the latest orbax checkpoint in
   `workdir/checkpoints` if there is one.
3. Jitted `distill_step` (config bound, the state donated), one PRNG key per iteration
   (`fold_in(key, iteration)`, so a resumed run draws what an uninterrupted one would).
   Metrics go to `workdir/metrics.jsonl` every `config.log_every` iterations.
4. The divergence guard (`check_finite`) runs after every logged iteration and before
   every checkpoint: a NaN/inf stops the run with `DistillationDiverged`, and the last
   good checkpoint is never overwritten with a non-finite state.
5. Evaluation every `config.eval.every` iterations and at the end: protocol A (the
   paper's full-batch training) and, optionally, the DC protocol, each over
   `config.eval.num_seeds` vmapped seeds; mean and std go to the metrics.
6. The result: `workdir/distilled.npz` (the portable distilled-set file, see
   `synset.py`), `workdir/results.json` and `workdir/synthetic.png`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddjax import augment, checkpoint, classifier, data, models, progress_bar, train, validation
from ddjax import workdir as workdir_lib
from ddjax.distill import base, get_method, progress, synset

__all__ = [
    "DISTILLED_FILE", "Evaluator", "GRID_FILE", "PROGRESS_FILE", "RESULTS_FILE",
    "RESUMABLE_FIELDS", "eval_model_kwargs", "iteration_key", "learned_lr", "load_data",
    "prng_keys", "run_distillation",
]

RESULTS_FILE = "results.json"
DISTILLED_FILE = "distilled.npz"
GRID_FILE = "synthetic.png"
PROGRESS_FILE = "progress.png"


# ----------------------------------------------------------------------------- data


def load_data(config: ml_collections.ConfigDict) -> tuple[data.ImageDataset, data.Preprocessor]:
  """The config's dataset in model space (optionally `train_per_class` / `eval.test_per_class`).

  Args:
    config: a distillation config (dataset, data_dir, preprocess, seed, ...).

  Returns:
    (dataset with preprocessed images, the fitted Preprocessor), as
    `classifier.load_preprocessed`.

  Raises:
    DatasetError, ConfigError: as `classifier.load_preprocessed`.
  """
  view = ml_collections.ConfigDict({
      "dataset": config.dataset, "data_dir": config.get("data_dir"),
      "preprocess": config.preprocess, "seed": config.seed,
      "train_per_class": config.get("train_per_class", 0) or 0,
      "test_per_class": config.eval.get("test_per_class", 0) or 0})
  return classifier.load_preprocessed(view)


# ----------------------------------------------------------------------------- evaluation


def eval_model_kwargs(config: ml_collections.ConfigDict) -> dict:
  """`config.eval.model_kwargs` if set; else the distillation net's when the names match.

  Args:
    config: a distillation config.

  Returns:
    The evaluation model's fields ({} for another architecture's defaults).
  """
  kwargs = config.eval.get("model_kwargs")
  if kwargs is not None:
    return dict(kwargs)
  if models.canonical_model_name(config.eval.model) == models.canonical_model_name(config.model):
    return dict(config.model_kwargs)
  return {}


# The jitted evaluation functions depend only on these settings (data and lr are
# arguments), so they are shared by every run in a process: a resumed run, or a notebook
# distilling with several methods, compiles them once.
@functools.lru_cache(maxsize=16)
def _protocol_a_fn(model_name: str, kwargs: tuple, num_classes: int, steps: int, lr: float,
                   momentum: float):
  model = models.get_model(model_name, num_classes, **dict(kwargs))
  return jax.jit(functools.partial(train.protocol_a_accuracy, model, num_steps=steps,
                                   learning_rate=lr, momentum=momentum))


@functools.lru_cache(maxsize=16)
def _dc_protocol_fn(model_name: str, kwargs: tuple, num_classes: int, epochs: int,
                    batch_size: int, strategy: str):
  model = models.get_model(model_name, num_classes, **dict(kwargs))
  augment_fn = augment.make_augment_fn(strategy, siamese=False)

  def dc(keys, x, y, x_test, y_test, lr):
    return train.evaluate_dc_protocol(model, keys, x, y, x_test, y_test, num_epochs=epochs,
                                      batch_size=batch_size, learning_rate=lr,
                                      augment_fn=augment_fn)

  return jax.jit(dc)


class Evaluator:
  """Trains fresh networks on a synthetic set and reports test accuracy over seeds.

  Protocol A: `eval.protocol_a_steps` full-batch SGD steps (lr, momentum from the config),
  no augmentation. DC protocol (if `eval.dc_protocol`): `eval.dc_epochs` epochs of
  `evaluate_dc_protocol` with the given lr and `eval.dc_augment` DSA (per-sample).
  The jitted functions are built once, so periodic evaluations do not recompile.

  Args:
    config: a distillation config (its `eval` section).
    num_classes: the class count.
    x_test: the test images, in model space.
    y_test: the test labels.

  Raises:
    ValueError: eval.num_seeds < 1.
  """

  def __init__(self, config: ml_collections.ConfigDict, num_classes: int, x_test, y_test):
    ev = config.eval
    self.config = config
    self.num_seeds = int(ev.num_seeds)
    if self.num_seeds < 1:
      raise ValueError(f"config.eval.num_seeds must be >= 1, got {self.num_seeds}.")
    self.seed_chunk = int(ev.get("seed_chunk", 0) or 0) or self.num_seeds
    self.x_test, self.y_test = jnp.asarray(x_test), jnp.asarray(y_test)
    self.dc_protocol = bool(ev.dc_protocol)
    kwargs = tuple(sorted(eval_model_kwargs(config).items()))
    self._protocol_a = _protocol_a_fn(ev.model, kwargs, num_classes, int(ev.protocol_a_steps),
                                      float(ev.protocol_a_lr), float(ev.protocol_a_momentum))
    self._dc = _dc_protocol_fn(ev.model, kwargs, num_classes, int(ev.dc_epochs),
                               int(ev.dc_batch_size), str(ev.dc_augment))

  def _over_seeds(self, fn, keys, *args) -> np.ndarray:
    chunks = [fn(keys[i:i + self.seed_chunk], *args) for i in range(0, len(keys), self.seed_chunk)]
    return np.concatenate([np.asarray(c) for c in chunks])

  def __call__(self, key: jax.Array, images, labels, dc_lr: float | None = None) -> dict[str, Any]:
    """{'protocol_a_mean', 'protocol_a_std', 'protocol_a_all', and the same for 'dc_'}.

    Args:
      key: the evaluation key; split into one key per seed.
      images: the synthetic images [N, H, W, C].
      labels: their labels.
      dc_lr: the DC protocol's lr (default config.eval.dc_lr).

    Returns:
      The accuracies over seeds (mean, std, and all), plus 'dc_lr' with the DC protocol.
    """
    keys = jax.random.split(key, self.num_seeds)
    images, labels = jnp.asarray(images), jnp.asarray(labels)
    out: dict[str, Any] = {}
    acc = self._over_seeds(self._protocol_a, keys, images, labels, self.x_test, self.y_test)
    out["protocol_a_mean"], out["protocol_a_std"] = train.mean_std(acc)
    out["protocol_a_all"] = acc.tolist()
    if self.dc_protocol:
      lr = float(self.config.eval.dc_lr if dc_lr is None else dc_lr)
      acc = self._over_seeds(self._dc, keys, images, labels, self.x_test, self.y_test,
                             jnp.asarray(lr, jnp.float32))
      out["dc_mean"], out["dc_std"] = train.mean_std(acc)
      out["dc_all"] = acc.tolist()
      out["dc_lr"] = lr
    return out


def learned_lr(method, state: base.DistillState) -> float | None:
  """The state's lr, if the method learns it (module attribute `LEARNS_LR = True`).

  Args:
    method: the method module.
    state: its DistillState.

  Returns:
    The learned lr as a float, or None (not learned, or not a scalar).
  """
  if getattr(method, "LEARNS_LR", False):
    return float(np.asarray(state.lr).reshape(-1)[0]) if np.size(state.lr) == 1 else None
  return None


# ----------------------------------------------------------------------------- outputs


def class_sorted(images, labels) -> tuple[np.ndarray, np.ndarray]:
  """Images and labels stably sorted by (hard) class.

  Args:
    images: [N, H, W, C].
    labels: [N] or [N, C] (argmax).

  Returns:
    (float32 images, labels), reordered.
  """
  images, labels = np.asarray(images, np.float32), np.asarray(labels)
  hard = labels if labels.ndim == 1 else np.argmax(labels, -1)
  order = np.argsort(hard, kind="stable")
  return images[order], labels[order]


def save_grid(path: str, images: np.ndarray, labels: np.ndarray, preprocessor: data.Preprocessor,
              max_per_class: int = 50) -> str:
  """A PNG grid, one row per class, of the images mapped back to [0, 1] pixels.

  Args:
    path: the PNG to write.
    images: [N, H, W, C] in model space.
    labels: [N] or [N, C].
    preprocessor: maps the images back to pixels.
    max_per_class: images shown per class.

  Returns:
    `path`.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  pixels = np.clip(np.asarray(preprocessor.invert(np.asarray(images, np.float32))), 0.0, 1.0)
  hard = labels if labels.ndim == 1 else np.argmax(labels, -1)
  classes = np.unique(hard)
  rows = [pixels[hard == c][:max_per_class] for c in classes]
  cols = max(len(r) for r in rows)
  n, h, w, ch = pixels.shape
  pad = 1
  canvas = np.ones((len(rows) * (h + pad) + pad, cols * (w + pad) + pad, 3 if ch == 3 else 1),
                   np.float32)
  for i, row in enumerate(rows):
    for j, im in enumerate(row):
      im = im if ch in (1, 3) else im[..., :1]
      top, left = pad + i * (h + pad), pad + j * (w + pad)
      canvas[top:top + h, left:left + w] = im
  arr = (canvas * 255.0 + 0.5).astype(np.uint8)
  Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)
  return path


def _config_dict(config: ml_collections.ConfigDict) -> dict:
  try:
    return config.to_dict()
  except Exception:  # pylint: disable=broad-except
    return {"config": str(config)}


# ----------------------------------------------------------------------------- the job


def prng_keys(config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """The run's keys, all from `config.seed`: 'init' (the synthetic set), 'step' (fold in
  the iteration for each `distill_step`) and 'eval' (the same networks at every eval).

  Args:
    config: a distillation config.

  Returns:
    {'init', 'step', 'eval'}: PRNG keys.
  """
  root = jax.random.PRNGKey(config.seed)
  return {name: jax.random.fold_in(root, i)
          for i, name in ((10, "init"), (11, "step"), (12, "eval"))}


def iteration_key(config: ml_collections.ConfigDict, iteration: int) -> jax.Array:
  """The key of `distill_step` number `iteration` (0-based), the same on resume.

  Args:
    config: a distillation config.
    iteration: the 0-based iteration.

  Returns:
    fold_in(prng_keys(config)['step'], iteration).
  """
  return jax.random.fold_in(prng_keys(config)["step"], iteration)


# Fields a re-run in the same workdir may change (besides workdir.ALWAYS_RESUMABLE).
# Iteration i draws its key as fold_in(key, i) and the methods' learning rates are
# constant, so a larger num_iterations continues the same computation; `eval` only
# changes what is measured, never the synthetic images.
RESUMABLE_FIELDS = ("num_iterations", "eval")


def run_distillation(config: ml_collections.ConfigDict, workdir: str, *,
                     restore: str = "latest", overwrite: bool = False) -> dict[str, Any]:
  """Distils `config.dataset` with `config.method` into `workdir`; resumes if possible.

  Args:
    config: a configs/distill/<method>.py config.
    workdir: the run's directory; locked for the run, and bound to the config's
      computation (`RESUMABLE_FIELDS` may change on a re-run).
    restore: 'latest' resumes from the newest checkpoint and fails if it is corrupt;
      'previous' resumes from the newest intact one.
    overwrite: move a run of another config in `workdir` to previous/<n>/ and start over.

  Returns:
    The results written to results.json.

  Raises:
    DdjaxError: a bad config, dataset, checkpoint or workdir (one-line message), or
      DistillationDiverged.
  """
  validation.check_config(config)
  checkpoint.check_restore_mode(restore)
  method = get_method(config.method)
  with workdir_lib.open_workdir(workdir, config, ignore=RESUMABLE_FIELDS,
                                overwrite=overwrite) as run:
    return _run_distillation(config, workdir, method, run, restore)


def _run_distillation(config: ml_collections.ConfigDict, workdir: str, method,
                      run: workdir_lib.Run, restore: str) -> dict[str, Any]:
  writer = workdir_lib.MetricWriter(workdir)
  ds, preprocessor = load_data(config)
  logging.info("Dataset %s", ds)
  real = base.make_real_data(ds.x_train, ds.y_train, ds.num_classes)
  aux = method.load_aux(config) if hasattr(method, "load_aux") else None

  keys = prng_keys(config)
  state = method.init_state(config, keys["init"], real, aux)
  # The initialisation is regenerated from the seed on every run, so the drift of the
  # images from it can be measured after a resume too.
  init_images = np.asarray(jax.device_get(state.images), np.float32)
  run.start()  # the config, data and method are valid: now the workdir is written
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                 config.get("keep_checkpoints", 2))
  state, meta, restored_step = ckpt.restore_or(state, restore)
  distill_seconds = float(meta.get("distill_seconds", 0.0))
  # CPU and evaluation time carried over resumes, for the shipped sets' manifest.
  cpu_base, cpu_start = float(meta.get("cpu_seconds", 0.0)), time.process_time()
  eval_total = {"seconds": float(meta.get("eval_seconds", 0.0))}
  history: list[dict[str, Any]] = list(meta.get("eval_history", []))
  stop_reason = None
  start = int(state.step)
  if restored_step is not None:
    logging.info("Resumed from checkpoint at iteration %d in %s", start, ckpt.directory)

  evaluator = Evaluator(config, ds.num_classes, ds.x_test, ds.y_test)
  step_fn = jax.jit(functools.partial(method.distill_step, config), donate_argnums=(0,))
  total = int(config.num_iterations)
  log_every = max(int(config.log_every), 1)
  ckpt_every = max(int(config.checkpoint_every), 1)
  eval_every = int(config.eval.every or 0)

  def guard(state, metrics, iteration):
    try:
      base.check_finite(state, metrics)
    except base.DistillationDiverged as e:
      last = ckpt.latest_step()
      where = (f"the last good checkpoint (iteration {last}) is kept in {ckpt.directory}"
               if last is not None else "no checkpoint had been written yet")
      raise base.DistillationDiverged(
          f"{e} Stopped at iteration {iteration}; {where}. Lower the image learning rate "
          f"(config.{config.method}.lr_img) or check the data.") from None

  plateau_gain = float(config.eval.get("plateau_gain", 0.0) or 0.0)
  plateau_fraction = float(config.eval.get("plateau_fraction", 0.25))
  plateau_min = int(config.eval.get("plateau_min_iterations", 0) or 0)

  def evaluate(state, iteration):
    """Evaluates, records the history entry and the snapshot; returns the result."""
    t = time.time()
    images = np.asarray(jax.device_get(state.images), np.float32)
    result = evaluator(keys["eval"], images, state.labels, learned_lr(method, state))
    result["eval_seconds"] = time.time() - t
    eval_total["seconds"] += result["eval_seconds"]
    result["init_correlation"] = float(np.mean(progress.image_correlation(images, init_images)))
    if not history or history[-1]["iteration"] < iteration:
      history.append({"iteration": int(iteration), "protocol_a_mean": result["protocol_a_mean"],
                      "protocol_a_std": result["protocol_a_std"],
                      "init_correlation": result["init_correlation"]})
    if eval_every and workdir_lib.is_primary():
      progress.save_snapshot(workdir, iteration, images)
    writer.write(iteration, **{k if k == "eval_seconds" else f"eval_{k}": v
                               for k, v in result.items() if not k.endswith("_all")})
    logging.info("Iteration %d eval: %s", iteration, result)
    return result

  def plateaued() -> dict[str, Any]:
    check = progress.plateau_check(history, plateau_gain, plateau_fraction, plateau_min)
    if check["gain"] is not None:
      logging.info("Plateau test at iteration %d: gain %.4f since iteration %d (stops below "
                   "%.4f)", check["iteration"], check["gain"], check["reference_iteration"],
                   plateau_gain)
    return check

  clock = {"seconds": distill_seconds, "since": time.time()}

  def tick():
    """Adds the time since the last tick to the distillation time (evaluation excluded)."""
    now = time.time()
    clock["seconds"] += now - clock["since"]
    clock["since"] = now
    return clock["seconds"]

  if history and history[-1]["iteration"] == start and plateaued()["reached"]:
    stop_reason = "plateau"  # a finished run, re-run: the plateau test is re-applied

  def save(done):
    ckpt.save(done, state, meta={"iteration": done, "distill_seconds": tick(),
                                 "cpu_seconds": cpu_base + time.process_time() - cpu_start,
                                 "eval_seconds": eval_total["seconds"],
                                 "eval_history": history, "stop_reason": stop_reason})

  eval_result = None
  try:
    if eval_every and start == 0 and not history:
      # The initialisation: the first point of the progress curve (and the result itself
      # when there are no iterations, as for the random-real baseline).
      eval_result = evaluate(state, 0)
      clock["since"] = time.time()
    with progress_bar.bar(total=total, initial=min(start, total), desc=f"distill {config.method}",
                          unit="it", enabled=config.get("progress", True)) as bar:
      for it in range(start, total if stop_reason is None else start):
        state, metrics = step_fn(state, jax.random.fold_in(keys["step"], it), real, aux)
        done = it + 1
        last = done == total
        logged = done % log_every == 0 or last
        evaluated = bool(eval_every) and done % eval_every == 0
        checkpointed = done % ckpt_every == 0 or last or evaluated
        if logged or checkpointed:
          metrics = {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}
          guard(state, metrics, done)
        if logged:
          writer.write(done, **metrics, distill_seconds=tick())
          bar.set_postfix({k: float(v) for k, v in metrics.items() if np.size(v) == 1})
        if evaluated:
          # Evaluated before the checkpoint, so that a resumed run has the history and the
          # plateau test sees every point.
          jax.block_until_ready(state.images)
          tick()
          eval_result = evaluate(state, done)
          clock["since"] = time.time()
          if plateaued()["reached"]:
            stop_reason = "plateau"
        if checkpointed or stop_reason:
          save(done)
        bar.update(1)
        if stop_reason:
          logging.info("Accuracy plateaued at iteration %d; stopping.", done)
          break
    jax.block_until_ready(state.images)
    distill_seconds = tick()
    if stop_reason is None and int(state.step) >= total:
      stop_reason = "cap"
    if eval_result is None or history[-1]["iteration"] != int(state.step):
      eval_result = evaluate(state, int(state.step))
  finally:
    ckpt.close()

  images, labels = class_sorted(state.images, state.labels)
  lr = learned_lr(method, state)
  dset = synset.DistilledSet(images=images, labels=labels, method=config.method, dataset=ds.name,
                             ipc=int(config.ipc), num_classes=ds.num_classes,
                             preprocessor=preprocessor, learned_lr=lr, config=_config_dict(config))
  distilled_path = synset.save_distilled(os.path.join(workdir, DISTILLED_FILE), dset)
  grid_path = save_grid(os.path.join(workdir, GRID_FILE), images, labels, preprocessor)
  result = {"method": config.method, "dataset": ds.name, "ipc": int(config.ipc),
            "num_classes": ds.num_classes, "iterations": int(state.step),
            "distill_seconds": distill_seconds, "learned_lr": lr,
            "eval_model": config.eval.model, "eval_model_kwargs": eval_model_kwargs(config),
            **eval_result, "distilled": distilled_path, "grid": grid_path,
            "cpu_seconds": cpu_base + time.process_time() - cpu_start,
            "eval_seconds_total": eval_total["seconds"],
            "stop_reason": stop_reason, "eval_history": history,
            "plateau": plateaued() if len(history) > 1 else None}
  if eval_every and workdir_lib.is_primary():
    result["progress"] = progress.save_progress_figure(
        os.path.join(workdir, PROGRESS_FILE), history, progress.load_snapshots(workdir),
        np.asarray(state.labels), preprocessor,
        title=f"{config.method} on {ds.name}, IPC {int(config.ipc)} ({stop_reason})")
  workdir_lib.write_json(os.path.join(workdir, RESULTS_FILE), result)
  return result
