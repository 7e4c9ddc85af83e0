"""Expert trajectories for trajectory matching (MTT's `buffer.py`), resumable and vmapped.

    summary = train_experts(config, buffer_dir)      # launch/train_experts.py
    trajectories, spec = load_trajectories(buffer_dir, num_experts=..., num_snapshots=...)

Each expert is a fresh `config.model` trained for `config.num_epochs` epochs on the real
train set with SGD (torch semantics; the reference: lr 0.01, momentum 0, batch 256,
optional DSA and ZCA). Its flat parameters (`jax.flatten_util.ravel_pytree` order) are
saved at initialisation and after every epoch: a trajectory of num_epochs + 1 snapshots.

Randomness: expert i draws everything from `fold_in(PRNGKey(config.seed), i)` (init,
then epoch e's shuffle and augmentation from `fold_in(train_key, e)`), so an expert does
not depend on which other experts share its vmapped group.

Buffer directory layout:

    buffer.json            the training settings (`buffer_spec`); a later run with other
                           settings is refused
    expert_00000.npz       trajectory [E+1, P] float32, test_accuracy [E+1], train_loss [E]
    in_progress/           the group being trained: group.json, one snapshot file per
                           finished epoch, and an orbax checkpoint of the stacked states

`config.experts_per_batch` experts train together under `jax.vmap`. A killed run
resumes from the last finished epoch of its group; finished experts are never retrained.
The buffer directory is locked while experts train (`ddjax.workdir.locked`), and every
.npz it holds carries a `checksum` entry (sha256 over its other arrays) that is verified
when it is read.
With several local devices, a group whose size is a multiple of the device count is
split over them (`place_group`; each expert's arithmetic is unchanged), so choose
experts_per_batch as a multiple of the device count to use every device.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ddjax import augment, checkpoint, classifier, data, errors, integrity, models, optim, parallel
from ddjax import progress_bar, train, validation, workdir as workdir_lib

__all__ = [
    "BUFFER_FILE", "IN_PROGRESS", "ExpertBufferError", "ExpertsDiverged", "completed_experts",
    "default_buffer_dir", "expert_keys", "expert_path", "init_states", "load_trajectories",
    "make_epoch_fn", "make_optimizer", "param_kwargs", "place_group", "read_spec", "train_experts",
    "train_group", "unravel_fn",
]

BUFFER_FILE = "buffer.json"
IN_PROGRESS = "in_progress"
FORMAT_VERSION = 1
# Settings that change what an expert is; a buffer trained with other values is refused.
SPEC_FIELDS = ("dataset", "train_per_class", "preprocess", "model", "model_kwargs", "num_classes",
               "image_shape", "num_params", "learning_rate", "momentum", "weight_decay",
               "batch_size", "num_epochs", "dsa_strategy", "seed")


class ExpertBufferError(data.DatasetError):
  """An expert buffer is missing, incomplete, corrupt or was trained with other settings.

  A DatasetError: the buffer is MTT's input data, so the binaries report it in one line.
  """


class ExpertsDiverged(FloatingPointError, errors.DdjaxError):
  """An expert's parameters became NaN or infinite."""


def expert_path(buffer_dir: str, index: int) -> str:
  """The file of finished expert `index`.

  Args:
    buffer_dir: the buffer directory.
    index: the expert's index.

  Returns:
    <buffer_dir>/expert_<index, 5 digits>.npz.
  """
  return os.path.join(buffer_dir, f"expert_{index:05d}.npz")


def default_buffer_dir(dataset: str, preprocess: str, root: str = "workdirs/experts") -> str:
  """Where launch/train_experts.py writes, and MTT reads, by default.

  Args:
    dataset: the dataset name.
    preprocess: the preprocessing kind.
    root: the directory of all buffers.

  Returns:
    <root>/<dataset>_<preprocess>.
  """
  return os.path.join(root, f"{dataset}_{preprocess}")


def param_kwargs(model_kwargs: dict) -> dict:
  """The model fields that shape the parameters (conv_impl does not).

  Args:
    model_kwargs: a config's model_kwargs.

  Returns:
    Those fields without conv_impl, sorted by name.
  """
  return {k: v for k, v in sorted(dict(model_kwargs).items()) if k != "conv_impl"}


def buffer_spec(config: ml_collections.ConfigDict, num_classes: int, image_shape, num_params: int
                ) -> dict[str, Any]:
  """The settings that define a buffer's experts, as written to buffer.json.

  Args:
    config: a configs/experts.py config.
    num_classes: the dataset's class count.
    image_shape: (H, W, C).
    num_params: the model's parameter count.

  Returns:
    The spec: the SPEC_FIELDS and the format version.
  """
  return {"dataset": config.dataset, "train_per_class": int(config.get("train_per_class", 0) or 0),
          "preprocess": config.preprocess, "model": models.canonical_model_name(config.model),
          "model_kwargs": param_kwargs(config.model_kwargs), "num_classes": int(num_classes),
          "image_shape": [int(s) for s in image_shape], "num_params": int(num_params),
          "learning_rate": float(config.learning_rate), "momentum": float(config.momentum),
          "weight_decay": float(config.weight_decay), "batch_size": int(config.batch_size),
          "num_epochs": int(config.num_epochs), "dsa_strategy": str(config.dsa_strategy),
          "seed": int(config.seed), "format_version": FORMAT_VERSION}


def spec_differences(saved: dict, expected: dict, fields=SPEC_FIELDS) -> list[str]:
  """The fields on which two buffer specs differ, as readable lines.

  Args:
    saved: the buffer's spec.
    expected: the spec the run needs.
    fields: the fields compared.

  Returns:
    One "field: buffer has X, expected Y" line per difference (empty when they agree).
  """
  return [f"{k}: buffer has {saved.get(k)!r}, expected {expected.get(k)!r}"
          for k in fields if saved.get(k) != expected.get(k)]


def read_spec(buffer_dir: str) -> dict[str, Any]:
  """The spec (buffer.json) of a buffer directory.

  Args:
    buffer_dir: the buffer directory.

  Returns:
    The spec dict.

  Raises:
    ExpertBufferError: no buffer.json (with the command that trains experts), or an
      unreadable one.
  """
  path = os.path.join(buffer_dir, BUFFER_FILE)
  if not os.path.exists(path):
    raise ExpertBufferError(
        f"No expert buffer in {buffer_dir} ({BUFFER_FILE} is missing). Train experts first:\n"
        f"    python -m launch.train_experts --config=configs/experts.py:dataset=<dataset> "
        f"--workdir={buffer_dir}")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise ExpertBufferError(f"{path} is unreadable: {e}") from e


def _write_json_atomic(path: str, obj: Any) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)


def _save_npz_atomic(path: str, **arrays) -> None:
  """Writes the arrays and their `checksum` (a temp file, then rename)."""
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  tmp = f"{path}.tmp{os.getpid()}.npz"  # per process: concurrent writers never share it
  np.savez(tmp, checksum=np.asarray(integrity.arrays_digest(arrays)), **arrays)
  os.replace(tmp, path)


def _load_npz_verified(path: str) -> dict[str, np.ndarray]:
  """The arrays of a buffer .npz, checked against its `checksum` when it has one."""
  try:
    with np.load(path, allow_pickle=False) as f:
      arrays = {k: f[k] for k in f.files}
  except Exception as e:  # zip / format errors
    raise ExpertBufferError(f"{path} is unreadable or not an expert file: {e}") from e
  saved = arrays.pop("checksum", None)
  if saved is not None and str(saved) != integrity.arrays_digest(arrays):
    raise ExpertBufferError(f"{path} failed its checksum: its content changed after it was "
                            "saved. Delete it to retrain that expert (or group).")
  return arrays


# ----------------------------------------------------------------------------- training


def expert_keys(seed: int, indices) -> tuple[jax.Array, jax.Array]:
  """(init keys, train keys) for the given expert indices, [G] each.

  Args:
    seed: the config's seed.
    indices: the experts' indices (G of them).

  Returns:
    (init keys [G, 2], train keys [G, 2]), split from fold_in(PRNGKey(seed), index).
  """
  keys = jax.vmap(lambda i: jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), i)))(
      jnp.asarray(indices, jnp.uint32))
  return keys[:, 0], keys[:, 1]


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The experts' optimiser: SGD with torch semantics (MTT's buffer.py).

  Args:
    config: a configs/experts.py config (learning_rate, momentum, weight_decay).

  Returns:
    The optax GradientTransformation of `optim.make("sgd", ...)`.
  """
  return optim.make("sgd", config.learning_rate, momentum=config.momentum,
                    weight_decay=config.weight_decay)


def init_states(model, tx, init_keys: jax.Array, image_shape) -> train.TrainState:
  """Stacked fresh TrainStates, one per key.

  Args:
    model: the flax module.
    tx: the optimiser.
    init_keys: [G, 2] initialisation keys.
    image_shape: (H, W, C).

  Returns:
    A TrainState whose leaves have a leading axis G.
  """
  def one(key):
    variables = models.init_variables(model, key, (1,) + tuple(image_shape))
    return train.create_train_state(variables, tx)
  return jax.vmap(one)(init_keys)


def place_group(states: train.TrainState, train_keys: jax.Array, mesh="auto"
                ) -> tuple[train.TrainState, jax.Array]:
  """Splits a vmapped group (states and keys, leading axis G) over the mesh's devices.

  "auto": every local device. Unchanged when there is one device or G is not a
  multiple of the device count (the group then runs on one device, as before).

  Args:
    states: the stacked TrainStates.
    train_keys: [G, 2].
    mesh: a Mesh, None or "auto" (`parallel.resolve_mesh`).

  Returns:
    (states, train_keys), placed over the devices or as given.
  """
  mesh = parallel.resolve_mesh(mesh)
  if mesh is None or train_keys.shape[0] % mesh.devices.size:
    return states, train_keys
  return parallel.shard_members(states, mesh), parallel.shard_members(train_keys, mesh)


@functools.lru_cache(maxsize=16)
def make_epoch_fn(model, tx, *, batch_size: int, augment_fn=None):
  """A jitted epoch of a vmapped group: every expert runs `train.train_epoch` with its
  own fold_in(key, epoch). Cached per model, optimiser and settings, so repeated
  groups reuse the compile.

  Args:
    model: the flax module.
    tx: the optimiser.
    batch_size: the batch size.
    augment_fn: optional (key, images) -> images.

  Returns:
    (states, x, y, train_keys, epoch) -> (states, mean train loss [G]); the states
    are donated.
  """

  def one(state, x, y, key, epoch):
    state, history = train.train_epoch(model, tx, state, x, y, jax.random.fold_in(key, epoch),
                                       batch_size=batch_size, augment_fn=augment_fn)
    return state, jnp.mean(history["loss"])

  return jax.jit(jax.vmap(one, in_axes=(0, None, None, 0, None)), donate_argnums=(0,))


@functools.lru_cache(maxsize=16)
def make_snapshot_fn(model, eval_batch_size: int = 1000):
  """A jitted (states, x_test, y_test) -> (flat params [G, P], test accuracy [G]).

  Args:
    model: the flax module.
    eval_batch_size: `train.evaluate`'s batch size.

  Returns:
    The jitted function (cached per model and batch size).
  """

  def one(state, x_test, y_test):
    acc = train.evaluate(model, state.variables, x_test, y_test, eval_batch_size)["accuracy"]
    return ravel_pytree(state.params)[0], acc

  return jax.jit(jax.vmap(one, in_axes=(0, None, None)))


def train_group(model, tx, x, y, x_test, y_test, init_keys, train_keys, num_epochs: int, *,
                batch_size: int, augment_fn=None) -> tuple[np.ndarray, np.ndarray]:
  """Trains a vmapped group from scratch in memory: (trajectories [G, E+1, P], test acc [G, E+1]).

  The building block `train_experts` runs epoch by epoch with checkpoints; this
  uninterrupted version is what the tests compare against a per-expert loop.

  Args:
    model: the flax module.
    tx: the optimiser.
    x: the train images [N, H, W, C].
    y: their labels.
    x_test: the test images.
    y_test: the test labels.
    init_keys: [G, 2] initialisation keys (`expert_keys`).
    train_keys: [G, 2] training keys.
    num_epochs: epochs per expert.
    batch_size: the batch size.
    augment_fn: optional (key, images) -> images.

  Returns:
    (flat parameter trajectories [G, E+1, P], test accuracies [G, E+1]), numpy.
  """
  states = init_states(model, tx, init_keys, x.shape[1:])
  states, train_keys = place_group(states, train_keys)
  epoch_fn = make_epoch_fn(model, tx, batch_size=batch_size, augment_fn=augment_fn)
  snapshot_fn = make_snapshot_fn(model)
  flats, accs = [], []
  for epoch in range(num_epochs + 1):
    flat, acc = snapshot_fn(states, x_test, y_test)
    flats.append(np.asarray(flat))
    accs.append(np.asarray(acc))
    if epoch < num_epochs:
      states, _ = epoch_fn(states, x, y, train_keys, epoch)
  return np.stack(flats, 1), np.stack(accs, 1)


class _GroupRun:
  """One vmapped group's on-disk progress: snapshots per epoch, an orbax checkpoint of
  the states after the last finished epoch, and group.json naming its experts."""

  def __init__(self, buffer_dir: str, indices: list[int]):
    self.dir = os.path.join(buffer_dir, IN_PROGRESS)
    self.indices = list(indices)

  @staticmethod
  def pending_indices(buffer_dir: str) -> list[int] | None:
    path = os.path.join(buffer_dir, IN_PROGRESS, "group.json")
    if not os.path.exists(path):
      return None
    with open(path) as f:
      return list(json.load(f)["experts"])

  def snapshot_path(self, epoch: int) -> str:
    return os.path.join(self.dir, f"snapshot_{epoch:04d}.npz")

  def start(self) -> None:
    shutil.rmtree(self.dir, ignore_errors=True)
    os.makedirs(self.dir)
    _write_json_atomic(os.path.join(self.dir, "group.json"), {"experts": self.indices})

  def save_snapshot(self, epoch: int, flat: np.ndarray, test_accuracy: np.ndarray,
                    train_loss: np.ndarray) -> None:
    _save_npz_atomic(self.snapshot_path(epoch), flat=flat, test_accuracy=test_accuracy,
                     train_loss=train_loss)

  def load_snapshots(self, last_epoch: int) -> list[dict[str, np.ndarray]]:
    out = []
    for e in range(last_epoch + 1):
      path = self.snapshot_path(e)
      if not os.path.exists(path):
        raise ExpertBufferError(f"{self.dir} lacks the snapshot of epoch {e} that its checkpoint "
                                f"(epoch {last_epoch}) needs; delete {self.dir} to retrain the group.")
      out.append(_load_npz_verified(path))
    return out

  def finish(self) -> None:
    shutil.rmtree(self.dir, ignore_errors=True)


def completed_experts(buffer_dir: str, num_experts: int) -> list[int]:
  """The indices below `num_experts` whose expert file exists.

  Args:
    buffer_dir: the buffer directory.
    num_experts: how many experts the run wants.

  Returns:
    The finished indices, ascending.
  """
  return [i for i in range(num_experts) if os.path.exists(expert_path(buffer_dir, i))]


def train_experts(config: ml_collections.ConfigDict, buffer_dir: str, *,
                  restore: str = "latest", overwrite: bool = False) -> dict[str, Any]:
  """Trains experts 0..config.num_experts-1 into `buffer_dir`, skipping finished ones and
  resuming an interrupted group.

  Args:
    config: a configs/experts.py config.
    buffer_dir: the buffer directory, locked while this runs.
    restore: 'latest' resumes an interrupted group from its newest checkpoint and fails
      if that is corrupt; 'previous' falls back to the newest intact one.
    overwrite: move a buffer trained with other settings to previous/<n>/ and start a
      new one (without it, such a buffer is refused).

  Returns:
    A summary: buffer_dir, num_experts, num_epochs, num_params, final test accuracies.

  Raises:
    DdjaxError: a bad config, dataset, checkpoint or buffer (ExpertBufferError for a
      buffer trained with other settings), or ExpertsDiverged.
  """
  validation.check_config(config)
  checkpoint.check_restore_mode(restore)
  with workdir_lib.locked(buffer_dir):
    return _train_experts(config, buffer_dir, restore, overwrite)


def _train_experts(config: ml_collections.ConfigDict, buffer_dir: str, restore: str,
                   overwrite: bool) -> dict[str, Any]:
  ds, _ = classifier.load_preprocessed(config)
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  x_test, y_test = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)
  model = models.get_model(config.model, ds.num_classes, **config.model_kwargs)
  probe = models.init_variables(model, jax.random.PRNGKey(0), x.shape)
  if set(probe) != {"params"}:
    raise errors.ConfigError(
        f"Expert models must be stateless for trajectory matching; {config.model} has "
        f"{sorted(set(probe) - {'params'})}. Use a norm without batch statistics.")
  num_params = models.count_params(probe["params"])
  spec = buffer_spec(config, ds.num_classes, ds.image_shape, num_params)

  spec_path = os.path.join(buffer_dir, BUFFER_FILE)
  if os.path.exists(spec_path):
    diff = spec_differences(read_spec(buffer_dir), spec)
    if diff and overwrite:
      moved = workdir_lib.move_aside(buffer_dir)
      logging.warning("--overwrite: moved the buffer trained with other settings (%s) to %s "
                      "(nothing deleted).", "; ".join(diff), moved)
    elif diff:
      raise ExpertBufferError(f"{buffer_dir} holds experts trained with other settings ("
                              + "; ".join(diff) + "). Use another --workdir, or --overwrite "
                              f"to move them to {buffer_dir}/{workdir_lib.PREVIOUS_DIR}/.")
  os.makedirs(buffer_dir, exist_ok=True)
  if not os.path.exists(spec_path):
    _write_json_atomic(spec_path, spec)

  tx = make_optimizer(config)
  batch_size = min(int(config.batch_size), x.shape[0])
  augment_fn = augment.make_augment_fn(
      config.dsa_strategy, siamese=False,
      params=augment.DSAParams(align_corners=bool(config.get("align_corners", True))))
  epoch_fn = make_epoch_fn(model, tx, batch_size=batch_size, augment_fn=augment_fn)
  snapshot = make_snapshot_fn(model, int(config.get("eval_batch_size", 1000)))
  snapshot_fn = lambda states: snapshot(states, x_test, y_test)

  num_experts, num_epochs = int(config.num_experts), int(config.num_epochs)
  done = set(completed_experts(buffer_dir, num_experts))
  todo = [i for i in range(num_experts) if i not in done]
  groups = []
  pending = _GroupRun.pending_indices(buffer_dir)
  if pending and set(pending) <= set(todo):
    groups.append(pending)  # finish the interrupted group first, with its own size
    todo = [i for i in todo if i not in pending]
  elif pending is not None:
    _GroupRun(buffer_dir, pending).finish()  # stale: its experts were finished or dropped
  per = max(int(config.experts_per_batch), 1)
  groups += [todo[i:i + per] for i in range(0, len(todo), per)]

  with progress_bar.bar(total=num_experts * num_epochs, initial=len(done) * num_epochs,
                        unit="epoch", desc="experts", enabled=config.get("progress", True)) as bar:
    for indices in groups:
      _train_one_group(buffer_dir, indices, spec, model, tx, x, y, epoch_fn, snapshot_fn,
                       num_epochs, config.seed, bar, restore)

  final = [float(_load_npz_verified(expert_path(buffer_dir, i))["test_accuracy"][-1])
           for i in range(num_experts)]
  return {"buffer_dir": buffer_dir, "num_experts": num_experts, "num_epochs": num_epochs,
          "num_params": num_params, "final_test_accuracy": final,
          "mean_final_test_accuracy": float(np.mean(final))}


def _train_one_group(buffer_dir, indices, spec, model, tx, x, y, epoch_fn, snapshot_fn,
                     num_epochs, seed, bar, restore="latest") -> None:
  run = _GroupRun(buffer_dir, indices)
  init_keys, train_keys = expert_keys(seed, indices)
  states = init_states(model, tx, init_keys, x.shape[1:])
  ckpt_dir = os.path.join(run.dir, "checkpoints")
  start = 0
  if _GroupRun.pending_indices(buffer_dir) == indices:
    with checkpoint.Checkpointer(ckpt_dir, max_to_keep=1) as ckpt:
      states, meta, step = ckpt.restore_or(states, restore)
    start = int(meta.get("epoch", 0)) if step is not None else 0
  states, train_keys = place_group(states, train_keys)  # after a restore, which is unsharded
  if start:
    logging.info("Experts %s: resuming after epoch %d", indices, start)
    snaps = run.load_snapshots(start)
    bar.update(start * len(indices))
  else:
    run.start()
    flat, acc = snapshot_fn(states)
    snaps = [dict(flat=np.asarray(flat), test_accuracy=np.asarray(acc),
                  train_loss=np.full(len(indices), np.nan, np.float32))]
    run.save_snapshot(0, **snaps[0])

  with checkpoint.Checkpointer(ckpt_dir, max_to_keep=1) as ckpt:
    for epoch in range(start, num_epochs):
      states, loss = epoch_fn(states, x, y, train_keys, epoch)
      flat, acc = snapshot_fn(states)
      snap = dict(flat=np.asarray(flat), test_accuracy=np.asarray(acc), train_loss=np.asarray(loss))
      if not np.all(np.isfinite(snap["flat"])):
        raise ExpertsDiverged(f"Experts {indices} diverged in epoch {epoch + 1} "
                                 f"(train loss {snap['train_loss']}); lower the learning rate.")
      # Snapshot first, then the checkpoint that points past it: a kill in between
      # resumes from the previous epoch and rewrites this snapshot.
      run.save_snapshot(epoch + 1, **snap)
      ckpt.save(epoch + 1, states, meta={"epoch": epoch + 1})
      snaps.append(snap)
      bar.set_postfix(experts=f"{indices[0]}-{indices[-1]}", test_acc=float(np.mean(acc)))
      bar.update(len(indices))

  flats = np.stack([s["flat"] for s in snaps], 1)         # [G, E+1, P]
  accs = np.stack([s["test_accuracy"] for s in snaps], 1)
  losses = np.stack([s["train_loss"] for s in snaps[1:]], 1) if num_epochs else np.zeros((len(indices), 0))
  for g, i in enumerate(indices):
    _save_npz_atomic(expert_path(buffer_dir, i), trajectory=flats[g].astype(np.float32),
                     test_accuracy=accs[g], train_loss=losses[g], expert_index=np.asarray(i),
                     spec=np.asarray(json.dumps(spec)))
  run.finish()


# ----------------------------------------------------------------------------- loading


def load_trajectories(buffer_dir: str, *, num_experts: int = 0, num_snapshots: int = 0,
                      expected: dict | None = None) -> tuple[np.ndarray, dict]:
  """Stacked trajectories [N, S, P] (float32) and the buffer's spec.

  Args:
    buffer_dir: the buffer directory.
    num_experts: the first n finished experts (0: all).
    num_snapshots: the first S snapshots of each (0: all).
    expected: spec fields that must match (model, dataset, ...).

  Returns:
    (trajectories float32 [N, S, P], the buffer's spec).

  Raises:
    ExpertBufferError: no buffer or no finished expert, a spec that does not match,
      too few snapshots, or a corrupt, misshapen or non-finite expert file.
  """
  spec = read_spec(buffer_dir)
  if expected:
    diff = spec_differences(spec, expected, fields=tuple(expected))
    if diff:
      raise ExpertBufferError(f"The experts in {buffer_dir} do not fit this run ("
                              + "; ".join(diff) + "). Train matching experts with "
                              "launch/train_experts.py, or point at another buffer.")
  available = spec["num_epochs"] + 1
  if num_snapshots > available:
    raise ExpertBufferError(f"{num_snapshots} snapshots per expert are needed but the experts in "
                            f"{buffer_dir} were trained for {spec['num_epochs']} epochs "
                            f"({available} snapshots). Lower max_start_epoch + expert_epochs, or "
                            "train longer experts.")
  num_snapshots = num_snapshots or available
  files = sorted(f for f in os.listdir(buffer_dir) if f.startswith("expert_") and f.endswith(".npz"))
  if num_experts:
    files = files[:num_experts]
  if not files:
    raise ExpertBufferError(f"{buffer_dir} has no finished experts yet; run launch/train_experts.py.")
  trajectories = np.empty((len(files), num_snapshots, spec["num_params"]), np.float32)
  for n, name in enumerate(files):
    path = os.path.join(buffer_dir, name)
    traj = _load_npz_verified(path).get("trajectory")
    if traj is None:
      raise ExpertBufferError(f"{path} is not an expert file: it has no trajectory.")
    if traj.shape != (available, spec["num_params"]):
      raise ExpertBufferError(f"{path} holds a trajectory of shape {traj.shape}; the buffer spec "
                              f"says {(available, spec['num_params'])}.")
    if not np.all(np.isfinite(traj[:num_snapshots])):
      raise ExpertBufferError(f"{path} contains non-finite parameters.")
    trajectories[n] = traj[:num_snapshots]
  return trajectories, spec


def unravel_fn(model, image_shape) -> Any:
  """flat [P] -> params pytree for `model`, in `ravel_pytree` order (the buffer's).

  Args:
    model: the flax module.
    image_shape: (H, W, C).

  Returns:
    The unravel function.
  """
  shapes = jax.eval_shape(lambda: models.init_variables(model, jax.random.PRNGKey(0),
                                                        (1,) + tuple(image_shape))["params"])
  return ravel_pytree(jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))[1]

