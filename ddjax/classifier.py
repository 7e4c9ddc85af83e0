"""Train and evaluate a classifier on a dataset: the job behind `launch/train.py`.

The loop is the flax-examples shape: build data, model and optimiser from the config,
restore the latest checkpoint in `workdir` if any, then run jitted epochs (each a
`lax.scan` over batches), writing metrics and a checkpoint after every epoch.

Everything the config and data can get wrong is checked before the workdir is
touched; the workdir is locked for the run and belongs to one config
(`ddjax.workdir.open_workdir`; `resumable_fields` lists what a re-run may change).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ddjax import checkpoint, data, errors, models, optim, progress_bar, train, validation
from ddjax import workdir as workdir_lib

__all__ = ["RESUMABLE_FIELDS", "TrainingDiverged", "load_preprocessed", "make_optimizer",
           "resumable_fields", "train_and_evaluate"]

# Fields of configs/train.py a re-run in the same workdir may change (besides
# workdir.ALWAYS_RESUMABLE): when to evaluate and checkpoint, and the evaluation batch
# size, none of which changes the training.
RESUMABLE_FIELDS = ("eval_every_epochs", "checkpoint_every_epochs", "eval_batch_size")


class TrainingDiverged(FloatingPointError, errors.DdjaxError):
  """The loss became NaN or infinite."""


def make_optimizer(config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """SGD (torch semantics) or Adam, with a constant, cosine or DC-midpoint schedule.

  Args:
    config: a configs/train.py config (optimizer, learning_rate, schedule, momentum,
      weight_decay).
    total_steps: the run's total optimiser steps (the cosine and midpoint schedules
      depend on it).

  Returns:
    `optim.make(config.optimizer, schedule, ...)`.

  Raises:
    ConfigError: an unknown schedule or optimizer.
  """
  lr = config.learning_rate
  if config.schedule == "constant":
    schedule = lr
  elif config.schedule == "cosine":
    schedule = optax.cosine_decay_schedule(lr, max(total_steps, 1))
  elif config.schedule == "midpoint":
    schedule = optax.piecewise_constant_schedule(lr, {total_steps // 2: 0.1})
  else:
    raise errors.ConfigError(
        f"Unknown schedule {config.schedule!r}; expected constant, cosine or midpoint.")
  return optim.make(config.optimizer, schedule, momentum=config.momentum,
                    weight_decay=config.weight_decay)


def load_preprocessed(config: ml_collections.ConfigDict) -> tuple[data.ImageDataset, data.Preprocessor]:
  """The config's dataset, optionally limited to n per class, in model space.

  Args:
    config: a config with dataset, preprocess and seed, and optionally data_dir,
      train_per_class and test_per_class (class-balanced subsets drawn from the seed).

  Returns:
    (dataset with preprocessed images, the Preprocessor fitted on its train split).

  Raises:
    DatasetError: the dataset cannot be loaded.
    ConfigError: an unknown preprocessing, or more per class than a class has.
  """
  ds = data.load_dataset(config.dataset, data_dir=config.get("data_dir"))
  key = jax.random.PRNGKey(config.seed)
  train_idx = test_idx = None
  if config.get("train_per_class"):
    train_idx = data.class_balanced_indices(jax.random.fold_in(key, 1), ds.y_train,
                                            config.train_per_class, ds.num_classes)
  if config.get("test_per_class"):
    test_idx = data.class_balanced_indices(jax.random.fold_in(key, 2), ds.y_test,
                                           config.test_per_class, ds.num_classes)
  if train_idx is not None or test_idx is not None:
    ds = data.subset(ds, train_idx, test_idx)
  pre = data.fit_preprocessor(config.preprocess, ds.x_train, ds.name)
  ds = dataclasses.replace(ds, x_train=np.asarray(pre.apply(ds.x_train)),
                           x_test=np.asarray(pre.apply(ds.x_test)))
  return ds, pre


def resumable_fields(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The fields a re-run in the same workdir may change: RESUMABLE_FIELDS, and
  num_epochs under the constant schedule (the cosine and midpoint schedules depend on
  the total step count, so there a longer run is another computation).

  Args:
    config: a configs/train.py config.

  Returns:
    The field names.
  """
  return RESUMABLE_FIELDS + (("num_epochs",) if config.schedule == "constant" else ())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       restore: str = "latest", overwrite: bool = False) -> dict[str, Any]:
  """Trains `config.model` on `config.dataset`; resumes from `workdir` if possible.

  Args:
    config: a configs/train.py config.
    workdir: the run's directory (config.json, metrics.jsonl, checkpoints/, results.json).
    restore: 'latest' resumes from the newest checkpoint and fails if it is corrupt;
      'previous' resumes from the newest intact one (`Checkpointer.restore_or`).
    overwrite: move a run of another config in `workdir` to previous/<n>/ and start over.

  Returns:
    The results written to results.json (dataset, model, epochs, steps, test accuracy
    and loss).

  Raises:
    DdjaxError: a bad config value, dataset, checkpoint or workdir (one-line message).
  """
  validation.check_config(config)
  checkpoint.check_restore_mode(restore)
  make_optimizer(config, 1)  # an unknown schedule or optimizer fails here, before any work
  with workdir_lib.open_workdir(workdir, config, ignore=resumable_fields(config),
                                overwrite=overwrite) as run:
    return _train_and_evaluate(config, workdir, run, restore)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, run: workdir_lib.Run,
                        restore: str) -> dict[str, Any]:
  ds, _ = load_preprocessed(config)
  logging.info("Dataset %s", ds)
  x_train, y_train = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  x_test, y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)

  model = models.get_model(config.model, ds.num_classes, **config.model_kwargs)
  key = jax.random.PRNGKey(config.seed)
  init_key, train_key = jax.random.split(key)
  variables = models.init_variables(model, init_key, x_train.shape)
  batch_size = min(config.batch_size, x_train.shape[0])
  spe = train.steps_per_epoch(x_train.shape[0], batch_size)
  tx = make_optimizer(config, config.num_epochs * spe)
  state = train.create_train_state(variables, tx)
  logging.info("Model %s: %d parameters", config.model, models.count_params(state.params))

  run.start()  # the config and data are valid: now the workdir is written
  writer = workdir_lib.MetricWriter(workdir)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), config.get("keep_checkpoints", 3))
  state, meta, step = ckpt.restore_or(state, restore)
  start_epoch = int(meta.get("epoch", 0))
  if step is not None:
    logging.info("Resumed from checkpoint at epoch %d in %s", start_epoch, ckpt.directory)

  epoch_fn = jax.jit(functools.partial(train.train_epoch, model, tx, batch_size=batch_size),
                     donate_argnums=(0,))
  eval_fn = jax.jit(functools.partial(train.evaluate, model, batch_size=config.eval_batch_size))

  test = None
  with progress_bar.bar(total=config.num_epochs, initial=start_epoch, desc="train", unit="epoch",
                        enabled=config.get("progress", True)) as bar:
    for epoch in range(start_epoch, config.num_epochs):
      state, history = epoch_fn(state, x_train, y_train, jax.random.fold_in(train_key, epoch))
      train_loss = float(jnp.mean(history["loss"]))
      if not np.isfinite(train_loss):
        raise TrainingDiverged(
            f"Training loss became {train_loss} in epoch {epoch + 1}; the last good checkpoint "
            f"(epoch {ckpt.latest_step()}) is kept in {ckpt.directory}. Lower the learning rate.")
      metrics = {"epoch": epoch + 1, "train_loss": train_loss,
                 "train_accuracy": float(jnp.mean(history["accuracy"]))}
      last = epoch + 1 == config.num_epochs
      if last or (epoch + 1) % config.eval_every_epochs == 0:
        test = eval_fn(state.variables, x_test, y_test)
        metrics.update(test_accuracy=float(test["accuracy"]), test_loss=float(test["loss"]))
      writer.write(int(state.step), **metrics)
      if last or (epoch + 1) % config.checkpoint_every_epochs == 0:
        ckpt.save(epoch + 1, state, meta={"epoch": epoch + 1})
      bar.set_postfix({k: round(v, 4) for k, v in metrics.items() if k != "epoch"})
      bar.update(1)
  if test is None:  # nothing left to train: evaluate the restored state
    test = eval_fn(state.variables, x_test, y_test)
  ckpt.close()
  result = {"dataset": ds.name, "model": config.model, "epochs": config.num_epochs,
            "steps": int(state.step), "test_accuracy": float(test["accuracy"]),
            "test_loss": float(test["loss"])}
  workdir_lib.write_json(os.path.join(workdir, "results.json"), result)
  return result
