"""Q2: how early does a model trained on real data recognise distilled data? The paper's
Fig. 5 (section 4.2).

During protocol-B real training, the accuracy on the real test set and on every distilled
set (hard labels) after every iteration, from one `record_fn` inside the training scan
(one forward pass over all of them), vmapped over seeds; when each curve gets to a level
(a fraction of the final test accuracy), and the gap to the test accuracy. Iteration t is
the model after t SGD steps (the paper's list index j is iteration j + 1). The curves are
cached (`ddjax.analysis.cache`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ddjax import data, models, parallel, train
from ddjax.analysis import cache, common, methods, pools, stats
from ddjax.errors import ConfigError

QUESTION = "Q2"
POSITION = 2

__all__ = ["QUESTION", "POSITION", "default_config", "make_group_recorder",
           "recognition_curves", "first_iteration_reaching", "first_for_good", "run", "claims"]


def default_config() -> ml_collections.ConfigDict:
  """The recognition_over_training section at the paper's settings
  (configs/analysis/recognition_over_training.py sizes it).

  Returns:
    The section: the sets, the real training, the level and the evaluation.
  """
  rot = ml_collections.ConfigDict()
  rot.sets = ""
  rot.epochs = 2            # paper: 2 epochs of protocol B (392 iterations; 300 plotted)
  rot.plot_iterations = 300  # iterations drawn in the figure (0 = all)
  rot.num_seeds = 3         # real trainings, vmapped (the paper: one)
  rot.test_subset = 0       # real test images evaluated per iteration (0 = all)
  rot.threshold = 0.9       # report the first iteration each curve reaches this accuracy
  # "Recognised early": the first iteration a distilled set reaches `level` x the final real
  # test accuracy, against the iteration the test accuracy itself gets there.
  rot.level = 0.95
  rot.final_window = 0.1    # "final" accuracy = mean over the last 10 % of iterations
  rot.eval_batch_size = 1000
  return rot


# ----------------------------------------------------------------------------- compute


def make_group_recorder(model, x, y, groups, num_groups: int, *,
                        batch_size: int = 1000) -> train.RecordFn:
  """A `record_fn` of `train.train_minibatch`: accuracy and mean loss of each group.

  Args:
    model: the flax module.
    x, y: the evaluation images and hard labels [N].
    groups: [N] each example's group id in 0..num_groups - 1.
    num_groups: the group count.
    batch_size: the evaluation batch (one batched forward pass over all of x).

  Returns:
    record(params, model_state) -> {"accuracy": [G], "loss": [G]}.

  Raises:
    ValueError: for soft labels or an empty group.
  """
  x, y, groups = jnp.asarray(x), jnp.asarray(y), jnp.asarray(groups)
  if y.ndim != 1:
    raise ValueError(f"make_group_recorder needs hard labels [N], got shape {y.shape}.")
  counts = jax.ops.segment_sum(jnp.ones_like(y, jnp.float32), groups, num_groups)
  if not isinstance(counts, jax.core.Tracer) and np.any(np.asarray(counts) == 0):
    raise ValueError(f"Every group needs at least one example; counts "
                     f"{np.asarray(counts).tolist()}.")

  def record(params, model_state):
    out = train.evaluate(model, {"params": params, **model_state}, x, y, batch_size)
    correct = (out["predictions"] == y).astype(jnp.float32)
    return {"accuracy": jax.ops.segment_sum(correct, groups, num_groups) / counts,
            "loss": jax.ops.segment_sum(out["per_example_loss"], groups, num_groups) / counts}

  return record


def _fit_recognition_member(model, learning_rate, momentum, num_epochs, batch_size,
                            eval_batch_size, num_groups, key, x, y, x_eval, y_eval, groups):
  init_key, train_key = jax.random.split(key)
  tx = train.sgd_momentum(learning_rate, momentum)
  state = train.create_train_state(models.init_variables(model, init_key, x.shape), tx)
  record = make_group_recorder(model, x_eval, y_eval, groups, num_groups,
                               batch_size=eval_batch_size)
  state, history = train.train_minibatch(model, tx, state, x, y, train_key, num_epochs=num_epochs,
                                         batch_size=min(batch_size, x.shape[0]), record_fn=record)
  return {**history["record"], "variables": state.variables}


@functools.lru_cache(maxsize=16)
def _recognition_member_fn(model, learning_rate: float, momentum: float, num_epochs: int,
                           batch_size: int, eval_batch_size: int, num_groups: int):
  return functools.partial(_fit_recognition_member, model, learning_rate, momentum, num_epochs,
                           batch_size, eval_batch_size, num_groups)


def recognition_curves(model, keys: jax.Array, x, y, x_eval, y_eval, groups, num_groups: int, *,
                       num_epochs: int, batch_size: int = 256, learning_rate: float = 0.01,
                       momentum: float = 0.9, eval_batch_size: int = 1000) -> dict:
  """Protocol-B training on (x, y) per key (vmapped, sharded), evaluating each group of
  (x_eval, y_eval) after every iteration.

  Args:
    model: the flax module.
    keys: [S] init and batch-order keys.
    x, y: the real train split.
    x_eval, y_eval, groups, num_groups: as `make_group_recorder`.
    num_epochs, batch_size, learning_rate, momentum: protocol B.
    eval_batch_size: the evaluation batch.

  Returns:
    {"accuracy", "loss"}: [S, T, G] after every iteration, and "variables": the final
    variables (leading axis S).

  Raises:
    ValueError: unless every group id 0..num_groups - 1 occurs.
  """
  counts = np.bincount(np.asarray(groups), minlength=num_groups)
  if counts.size != num_groups or np.any(counts == 0):
    raise ValueError(f"groups must hold ids 0..{num_groups - 1}, each at least once; counts "
                     f"{counts.tolist()}.")
  fn = _recognition_member_fn(model, float(learning_rate), float(momentum), int(num_epochs),
                              int(batch_size), int(eval_batch_size), int(num_groups))
  return parallel.sharded_vmap(fn, in_axes=(0, None, None, None, None, None))(
      keys, jnp.asarray(x), jnp.asarray(y), jnp.asarray(x_eval), jnp.asarray(y_eval),
      jnp.asarray(groups))


def first_iteration_reaching(curve, level: float) -> int | None:
  """The first iteration at which a curve gets to a level.

  Args:
    curve: [T] values after iterations 1..T.
    level: the level.

  Returns:
    The iteration (1-based: after that many steps) with curve >= level, or None.
  """
  hit = np.flatnonzero(np.asarray(curve) >= level - 1e-12)
  return int(hit[0]) + 1 if hit.size else None


def first_for_good(above) -> int | None:
  """The first iteration after which a condition stays true to the end.

  Args:
    above: [T] booleans after iterations 1..T.

  Returns:
    That iteration (1-based), or None if the last value is False.
  """
  above = np.asarray(above, bool)
  if not above.size or not above[-1]:
    return None
  below = np.flatnonzero(~above)
  return int(below[-1]) + 2 if below.size else 1


# ----------------------------------------------------------------------------- the run's pieces


def _validate(section: ml_collections.ConfigDict) -> None:
  name = "recognition_over_training"
  pools.check_positive_int(name, section, "epochs", "num_seeds", "eval_batch_size")
  pools.check_fraction(name, "level", section.level)
  pools.check_fraction(name, "final_window", section.final_window)
  if section.test_subset < 0:
    raise ConfigError(f"config.recognition_over_training.test_subset must be >= 0, got "
                      f"{section.test_subset}.")


def _eval_arrays(section, real: data.ImageDataset, distilled: dict, names: list[str],
                 key: jax.Array) -> tuple:
  """(x_eval, y_eval, groups, y_test): the real test images (or a class-balanced subset of
  `test_subset` of them; group 0), then each distilled set (groups 1..)."""
  x_test, y_test = real.x_test, real.y_test
  if section.test_subset and section.test_subset < x_test.shape[0]:
    per_class = max(1, int(section.test_subset) // real.num_classes)
    idx = data.class_balanced_indices(jax.random.fold_in(key, 1), y_test, per_class,
                                      real.num_classes)
    x_test, y_test = x_test[idx], y_test[idx]
  x_eval = np.concatenate([x_test] + [distilled[n].images for n in names]).astype(np.float32)
  y_eval = np.concatenate([y_test] + [distilled[n].hard_labels for n in names]).astype(np.int32)
  groups = np.concatenate([np.zeros(len(y_test), np.int32)] +
                          [np.full(len(distilled[n].images), g + 1, np.int32)
                           for g, n in enumerate(names)])
  return x_eval, y_eval, groups, (x_test, y_test)


def _curves(config, section, real, distilled, names, key, workdir) -> tuple:
  """The cached curves: (accuracy [S, T, G], loss [S, T, G], y_test)."""
  rm = config.real_model
  model = models.get_model(rm.model, real.num_classes, **common.to_dict(rm.model_kwargs))
  x_eval, y_eval, groups, (x_test, y_test) = _eval_arrays(section, real, distilled, names, key)
  seeds = int(section.num_seeds)

  def compute():
    out = recognition_curves(
        model, pools.stack_keys(jax.random.fold_in(key, 2), range(seeds)), real.x_train,
        real.y_train, x_eval, y_eval, groups, len(names) + 1, num_epochs=int(section.epochs),
        batch_size=int(rm.batch_size), learning_rate=float(rm.learning_rate),
        momentum=float(rm.momentum), eval_batch_size=int(section.eval_batch_size))
    return {"accuracy": np.asarray(out["accuracy"]), "loss": np.asarray(out["loss"])}

  got = cache.cached(cache.cache_dir(config, workdir), "recognition_over_training", {
      **pools.data_fields(config, real), **pools.model_fields(config, "real_model"),
      "epochs": int(section.epochs), "seeds": seeds, "test": cache.digest(x_test, y_test),
      "sets": [cache.digest(distilled[n].images, distilled[n].hard_labels) for n in names],
      "lr": float(rm.learning_rate), "momentum": float(rm.momentum),
      "batch_size": int(rm.batch_size)}, compute)
  return (np.asarray(got["accuracy"], np.float64), np.asarray(got["loss"], np.float64), y_test)


def _group_summary(acc: np.ndarray, loss: np.ndarray, final: np.ndarray, g: int, level: float,
                   threshold: float) -> dict:
  """Group g's final accuracy, the iterations its curves reach the threshold and the level,
  and its mean curves."""
  mean = acc.mean(0)
  return {
      "final_accuracy": stats.mean_ci(final[:, g]),
      "iteration_reaching_threshold": first_iteration_reaching(mean[:, g], threshold),
      "iteration_reaching_level": first_iteration_reaching(mean[:, g], level),
      "per_seed_iteration_reaching_level": [first_iteration_reaching(acc[s, :, g], level)
                                            for s in range(acc.shape[0])],
      "mean_accuracy_curve": mean[:, g].tolist(),
      "mean_loss_curve": loss.mean(0)[:, g].tolist(),
  }


def _set_entries(acc, loss, final, level, threshold, distilled, names) -> dict:
  """Every distilled set's summary, and how it compares with the real test curve."""
  mean = acc.mean(0)
  half = acc.shape[1] // 2
  t_test = first_iteration_reaching(mean[:, 0], level)
  per_set = {}
  for g, n in enumerate(names, start=1):
    t = first_iteration_reaching(mean[:, g], level)
    gap = mean[half:, g] - mean[half:, 0]
    per_set[n] = {
        "label": methods.label(n, distilled[n].method), "method": distilled[n].method,
        "learned": common.is_learned(distilled[n]),
        **_group_summary(acc, loss, final, g, level, threshold),
        # Before the real test accuracy gets to the level (None = never: earlier by definition).
        "recognised_before_test": bool(t is not None and (t_test is None or t < t_test)),
        "gap_vs_test_second_half": {"mean": float(gap.mean()), "min": float(gap.min()),
                                    "fraction_positive": float(np.mean(gap > 0))},
        "first_iteration_above_test_for_good": first_for_good(mean[:, g] > mean[:, 0]),
    }
  return per_set


def _recognition_figure(curves: np.ndarray, labels: list[str], colors: list,
                        plot_iterations: int, workdir: str) -> str:
  """The paper's Fig. 5: accuracy on real test and on each distilled set per iteration."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  t = curves.shape[1] if not plot_iterations else min(plot_iterations, curves.shape[1])
  its = np.arange(1, t + 1)
  fig, ax = plt.subplots(figsize=(6.5, 3.6))
  for g, (label, color) in enumerate(zip(labels, colors)):
    mean = curves[:, :t, g].mean(0)
    ax.plot(its, mean, color=color, lw=2.2 if g == 0 else 1.4, label=label)
    if curves.shape[0] > 1:
      ax.fill_between(its, curves[:, :t, g].min(0), curves[:, :t, g].max(0), color=color,
                      alpha=0.15, lw=0)
  ax.set_xlabel("Iteration")
  ax.set_ylabel("Accuracy")
  ax.set_ylim(0, 1.02)
  ax.legend(fontsize=7, loc="lower right")
  ax.set_title(f"Real training: accuracy on real test vs distilled data "
               f"(mean, min-max over {curves.shape[0]} runs)", fontsize=8)
  common.save_figure(fig, workdir, "recognition_over_training.png")
  return "recognition_over_training.png"


# ----------------------------------------------------------------------------- run and claims


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Accuracy on the real test set and each distilled set after every real-training step.

  Args:
    config: the analysis config: its `recognition_over_training` section, `real_model`
      (the architecture trained on real data, and its SGD settings) and `seed`.
    workdir: where recognition_over_training.json, recognition_over_training.png and,
      unless config.cache_dir, the cache go.

  Returns:
    The JSON: the level (a fraction of the final test accuracy) and when the test curve
    reaches it; for the test set and each distilled set, the final accuracy, the
    iterations its mean curve reaches the threshold and the level, and its mean curves;
    per set also its gap to the test accuracy.

  Raises:
    ConfigError: for epochs, num_seeds or eval_batch_size below 1, level or final_window
      outside (0, 1], or a negative test_subset.
    DistilledSetError: for no, mismatched or unknown distilled sets.
  """
  section, adata, names = common.section_inputs(config, "recognition_over_training",
                                                _validate)
  real, distilled = adata.real, adata.distilled
  key = pools.stream_key(config.seed, pools.RECOGNITION_STREAM)
  acc, loss, y_test = _curves(config, section, real, distilled, names, key, workdir)
  num_iters = acc.shape[1]
  window = max(1, int(round(section.final_window * num_iters)))
  final = acc[:, -window:, :].mean(1)                  # [S, G]
  level = float(section.level) * float(final[:, 0].mean())
  per_set = _set_entries(acc, loss, final, level, section.threshold, distilled, names)
  labels = ["real test"] + [per_set[n]["label"] for n in names]
  colors = ["black"] + [methods.color(distilled[n].method, i) for i, n in enumerate(names)]
  figures = [_recognition_figure(acc, labels, colors, int(section.plot_iterations), workdir)]
  rm = config.real_model
  results = {
      "analysis": "recognition_over_training", "paper_counterpart": "Fig. 5 (section 4.2)",
      "figures": figures, "config": common.to_dict(section),
      "model": pools.model_fields(config, "real_model"),
      "real_training": {"batch_size": int(rm.batch_size), "learning_rate": float(rm.learning_rate),
                        "momentum": float(rm.momentum), "epochs": int(section.epochs),
                        "iterations": int(num_iters),
                        "steps_per_epoch": train.steps_per_epoch(real.x_train.shape[0],
                                                                 min(int(rm.batch_size),
                                                                     real.x_train.shape[0]))},
      "seeds": {"config_seed": int(config.seed), "num_seeds": int(section.num_seeds)},
      "num_test_images": int(len(y_test)),
      "level": {"fraction_of_final_test": float(section.level), "accuracy": level,
                "test_iteration_reaching_level": first_iteration_reaching(acc.mean(0)[:, 0],
                                                                          level)},
      "test": _group_summary(acc, loss, final, 0, level, section.threshold),
      "sets": per_set,
  }
  common.write_results(workdir, "recognition_over_training", results)
  return results


def claims(result: dict) -> list[dict]:
  """The claim row of the paper's Fig. 5: a real-trained model recognises distilled data
  early, before its test accuracy saturates.

  Args:
    result: recognition_over_training.json's content.

  Returns:
    One row: whether every learned set reaches the level before the test curve does and
    is, on average over the second half of training, above the test accuracy; none
    without learned sets.
  """
  sets = result.get("sets", {})
  learned = common.learned_names(result)
  if not learned:
    return []
  ok = [sets[n]["recognised_before_test"] and sets[n]["gap_vs_test_second_half"]["mean"] > 0
        for n in learned]
  lvl = result["level"]
  measured = (f"level {lvl['accuracy']:.3f} ({lvl['fraction_of_final_test']:.2f} x final test "
              f"{result['test']['final_accuracy']['mean']:.3f}): test reaches it at iteration "
              f"{lvl['test_iteration_reaching_level']} of "
              f"{result['real_training']['iterations']}; " +
              ", ".join(f"{n} at {sets[n]['iteration_reaching_level']} (final "
                        f"{sets[n]['final_accuracy']['mean']:.3f}, 2nd-half gap "
                        f"{sets[n]['gap_vs_test_second_half']['mean']:+.3f})" for n in learned))
  return [{
      "question": "Q2", "analysis": "recognition_over_training",
      "claim": "A model trained on real data learns to recognise distilled data early in "
               "training, before its real test accuracy saturates.",
      "criterion": (f"every learned set: mean accuracy on it reaches "
                    f"{lvl['fraction_of_final_test']} x the final real test accuracy at an "
                    "earlier iteration than the test accuracy does, and exceeds the test "
                    "accuracy on average over the second half of training"),
      "paper": "TM and BPTT reach ~1.0 by iteration ~100-120 (test 0.56 then, 0.66 at 300); "
               "DM/GM ~0.8-0.85; from ~50 iterations every distilled set is above test accuracy",
      "measured": measured,
      "reproduced": bool(all(ok)),
  }]
