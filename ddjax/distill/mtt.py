"""Trajectory matching: MTT (Cazenavette et al., CVPR 2022). Hyperparameters in `config.mtt`.

Expert trajectories come from `ddjax.experts` (launch/train_experts.py) and are loaded
once by `load_aux` as a device array [experts, snapshots, P] of flat parameters.

One `distill_step` is one iteration of the reference `distill.py`:

    pick an expert and a start epoch t ~ U{0, ..., max_start_epoch - 1}
    theta_0 = theta*_t; target = theta*_{t + expert_epochs}
    syn_steps plain-SGD steps theta <- theta - syn_lr * grad CE(f(theta, x_b), y_b) on
      minibatches of `batch_syn` synthetic images (chunks of random permutations,
      optional per-sample DSA)
    loss = ||theta_T - target||^2 / ||theta_0 - target||^2
    gradients into the images and the learned syn_lr (state.lr); SGD with momentum
      0.5 on each, with lr_img and lr_lr

The unroll is a `lax.scan` with a `jax.checkpoint`ed body (`ddjax.distill.unroll`), so
memory holds one parameter vector per step plus one step's activations, not
activations x syn_steps (MTT#21: the reference's memory grows linearly with the unroll).
"""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.flatten_util import ravel_pytree

from ddjax import augment, experts, models, train
from ddjax.data import sampling
from ddjax.distill import base, unroll
from ddjax.distill.bptt import check_stateless
from ddjax.errors import ConfigError

__all__ = ["ExpertTrajectories", "LEARNS_LR", "distill_step", "init_state", "load_aux",
           "matching_loss", "student_batches"]

LEARNS_LR = True  # the driver evaluates with state.lr and writes it to the distilled set


@flax.struct.dataclass
class ExpertTrajectories:
  """Flat expert parameters [num_experts, num_snapshots, P] on device (host-side aux).

  Attributes:
    params: float32 [num_experts, num_snapshots, P], in `ravel_pytree` order.
  """
  params: jax.Array


def hparams(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The method's hyperparameters (`base.method_hparams`).

  Args:
    config: a configs/distill/mtt.py config.

  Returns:
    config.mtt; a ConfigError if the config lacks it.
  """
  return base.method_hparams(config, "mtt")


# The distillation network, config.model with config.model_kwargs.
make_model = base.make_model


def buffer_dir(config: ml_collections.ConfigDict) -> str:
  """The expert buffer: config.mtt.buffer_dir, else `experts.default_buffer_dir`.

  Args:
    config: a configs/distill/mtt.py config.

  Returns:
    The buffer directory.
  """
  return config.mtt.get("buffer_dir") or experts.default_buffer_dir(config.dataset,
                                                                    config.preprocess)


def load_aux(config: ml_collections.ConfigDict) -> ExpertTrajectories:
  """Loads the expert buffer, checked against this run's dataset, preprocessing and model.

  Args:
    config: a configs/distill/mtt.py config.

  Returns:
    The ExpertTrajectories: the first num_experts experts (0: all), each cut to
    max_start_epoch + expert_epochs snapshots.

  Raises:
    ConfigError: max_start_epoch or expert_epochs below 1.
    ExpertBufferError: no buffer, one trained for another run, or too short.
  """
  hp = hparams(config)
  if hp.max_start_epoch < 1 or hp.expert_epochs < 1:
    raise ConfigError(f"config.mtt.max_start_epoch ({hp.max_start_epoch}) and expert_epochs "
                      f"({hp.expert_epochs}) must both be >= 1.")
  expected = {"dataset": config.dataset, "preprocess": config.preprocess,
              "model": models.canonical_model_name(config.model),
              "model_kwargs": experts.param_kwargs(config.model_kwargs)}
  path = buffer_dir(config)
  trajectories, _ = experts.load_trajectories(
      path, num_experts=int(hp.get("num_experts", 0) or 0),
      num_snapshots=hp.max_start_epoch + hp.expert_epochs, expected=expected)
  return ExpertTrajectories(params=jnp.asarray(trajectories))


def image_optimizer(hp) -> optax.GradientTransformation:
  """torch.optim.SGD([images], lr_img, momentum).

  Args:
    hp: config.mtt.

  Returns:
    The optax GradientTransformation.
  """
  return train.sgd_momentum(hp.lr_img, hp.momentum)


def lr_optimizer(hp) -> optax.GradientTransformation:
  """torch.optim.SGD([syn_lr], lr_lr, momentum).

  Args:
    hp: config.mtt.

  Returns:
    The optax GradientTransformation.
  """
  return train.sgd_momentum(hp.lr_lr, hp.momentum)


def init_state(config: ml_collections.ConfigDict, key: jax.Array, real: base.RealData,
               aux: ExpertTrajectories | None = None) -> base.DistillState:
  """The initial synthetic set, syn_lr = lr_teacher, and both optimisers' states.

  Args:
    config: a configs/distill/mtt.py config.
    key: the PRNG key of the initialisation.
    real: the real train data.
    aux: the ExpertTrajectories, checked against the model if given.

  Returns:
    The DistillState at step 0.

  Raises:
    ConfigError: missing hyperparameters, learn_labels, a model with batch
      statistics, trajectories of another size or too short, a bad batch_syn, or a
      bad DSA strategy.
  """
  hp = hparams(config)
  if config.learn_labels:
    raise ConfigError("MTT trains students on hard labels; config.learn_labels must be False.")
  model = make_model(config, real.num_classes)
  variables = models.init_variables(model, key, real.x.shape)
  check_stateless(variables, "MTT")
  if aux is not None:
    num_params = models.count_params(variables["params"])
    if aux.params.shape[-1] != num_params:
      raise ConfigError(f"The expert trajectories hold {aux.params.shape[-1]} parameters per "
                        f"snapshot; config.model has {num_params}.")
    needed = hp.max_start_epoch + hp.expert_epochs
    if aux.params.shape[1] < needed:
      raise ConfigError(f"max_start_epoch + expert_epochs = {needed} snapshots are needed; the "
                        f"trajectories have {aux.params.shape[1]}.")
  images, labels = sampling.init_synthetic(key, real.x, real.y, config.ipc, real.num_classes,
                                           config.init)
  batch_syn = hp.batch_syn or images.shape[0]
  if not 0 < batch_syn <= images.shape[0]:
    raise ConfigError(f"config.mtt.batch_syn={hp.batch_syn} must be in [1, {images.shape[0]}] "
                      "(the synthetic set size), or 0 for the whole set.")
  augment.parse_strategy(hp.dsa_strategy)  # fail early on a bad strategy
  lr = jnp.asarray(hp.lr_teacher, jnp.float32)
  opt_state = {"images": image_optimizer(hp).init(images), "lr": lr_optimizer(hp).init(lr)}
  return base.DistillState(step=jnp.zeros((), jnp.int32), images=images, labels=labels, lr=lr,
                           opt_state=opt_state, extra={})


def student_batches(key: jax.Array, num_images: int, syn_steps: int, batch_syn: int) -> jax.Array:
  """[syn_steps, batch_syn] row indices: consecutive chunks of fresh random permutations.

  The reference pops `batch_syn`-chunks of a permutation and draws a new permutation
  when it runs out; here chunks run across permutation boundaries when batch_syn does
  not divide the set (static shapes), so a batch may repeat an image then.

  Args:
    key: the PRNG key.
    num_images: the synthetic set's size.
    syn_steps: student steps.
    batch_syn: images per step.

  Returns:
    int32 [syn_steps, batch_syn] row indices.
  """
  num_perms = -(-syn_steps * batch_syn // num_images)
  keys = jax.random.split(key, num_perms)
  perms = jax.vmap(lambda k: jax.random.permutation(k, num_images))(keys).reshape(-1)
  return perms[:syn_steps * batch_syn].reshape(syn_steps, batch_syn)


def matching_loss(model, unravel, images: jax.Array, labels: jax.Array, lr: jax.Array,
                  start: jax.Array, target: jax.Array, batches: jax.Array, key: jax.Array, *,
                  dsa_strategy: str = "none", dsa_params: augment.DSAParams = augment.DSAParams(),
                  remat: bool = True, remat_policy: str = "nothing") -> jax.Array:
  """||theta_T - target||^2 / ||start - target||^2 after len(batches) student steps from `start`.

  Differentiable in images and lr.

  Args:
    model: the flax module (stateless).
    unravel: flat [P] -> params (`experts.unravel_fn`).
    images: the synthetic images [N, H, W, C].
    labels: their labels [N].
    lr: the student's learning rate (syn_lr).
    start: the expert's flat parameters at the start epoch [P].
    target: the expert's flat parameters expert_epochs later [P].
    batches: [T, b] row indices of the student steps.
    key: the augmentation key (split per step).
    dsa_strategy: per-sample DSA ('none': no augmentation).
    dsa_params: DSA's parameters.
    remat: rematerialise each student step.
    remat_policy: see `unroll.REMAT_POLICIES`.

  Returns:
    The scalar normalised parameter distance.
  """
  aug = augment.make_augment_fn(dsa_strategy, siamese=False, params=dsa_params)
  step_keys = jax.random.split(key, batches.shape[0])

  def student_loss(params, batch):
    idx, k = batch
    x = images[idx]
    if aug is not None:
      x = aug(k, x)
    return train.cross_entropy(model.apply({"params": params}, x), labels[idx])

  (params, _), _ = unroll.sgd_unroll(student_loss, unravel(start), (batches, step_keys), lr,
                                     remat=remat, remat_policy=remat_policy)
  final = ravel_pytree(params)[0]
  return jnp.sum((final - target) ** 2) / jnp.sum((start - target) ** 2)


def distill_step(config: ml_collections.ConfigDict, state: base.DistillState, key: jax.Array,
                 real: base.RealData, aux: ExpertTrajectories) -> tuple[base.DistillState, dict]:
  """One MTT iteration: a random expert segment, an unrolled student, one update.

  Args:
    config: the mtt config (bound by the driver).
    state: the DistillState.
    key: this iteration's PRNG key.
    real: the real train data.
    aux: the ExpertTrajectories (`load_aux`).

  Returns:
    (new state, {'loss', 'syn_lr' (before the update), 'start_epoch',
    'grad_norm_images'}).

  Raises:
    ValueError: `aux` is None.
  """
  hp = hparams(config)
  if aux is None:
    raise ValueError("MTT's distill_step needs the expert trajectories (aux = load_aux(config)).")
  model = make_model(config, real.num_classes)
  unravel = experts.unravel_fn(model, state.images.shape[1:])
  expert_key, epoch_key, batch_key, aug_key = jax.random.split(key, 4)
  expert = jax.random.randint(expert_key, (), 0, aux.params.shape[0])
  start_epoch = jax.random.randint(epoch_key, (), 0, hp.max_start_epoch)
  start = aux.params[expert, start_epoch]
  target = aux.params[expert, start_epoch + hp.expert_epochs]
  num_images = state.images.shape[0]
  batches = student_batches(batch_key, num_images, hp.syn_steps, hp.batch_syn or num_images)
  dsa_params = augment.DSAParams(align_corners=bool(hp.get("align_corners", True)))

  loss, (g_images, g_lr) = jax.value_and_grad(
      lambda images, lr: matching_loss(model, unravel, images, state.labels, lr, start, target,
                                       batches, aug_key, dsa_strategy=hp.dsa_strategy,
                                       dsa_params=dsa_params, remat=hp.remat,
                                       remat_policy=hp.get("remat_policy", "nothing")),
      argnums=(0, 1))(state.images, state.lr)
  img_updates, img_opt = image_optimizer(hp).update(g_images, state.opt_state["images"])
  lr_updates, lr_opt = lr_optimizer(hp).update(g_lr, state.opt_state["lr"])
  new_state = state.replace(step=state.step + 1,
                            images=optax.apply_updates(state.images, img_updates),
                            lr=optax.apply_updates(state.lr, lr_updates),
                            opt_state={"images": img_opt, "lr": lr_opt})
  return new_state, {"loss": loss, "syn_lr": state.lr, "start_epoch": start_epoch,
                     "grad_norm_images": jnp.sqrt(jnp.sum(g_images ** 2))}
