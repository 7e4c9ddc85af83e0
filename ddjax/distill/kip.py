"""KIP: kernel inducing points (Nguyen, Chen & Lee, ICLR 2021; Nguyen, Novak, Xiao & Lee,
NeurIPS 2021) with the infinite-width ConvNet NTK. Hyperparameters in `config.kip`.

One `distill_step`:

    a class-balanced real target batch (x_t, y_t), labels as centred one-hot
    K_ss = k(x_s, x_s), K_ts = k(x_t, x_s): the NTK of `depth` x [conv3x3 -> relu
      (-> 2x2 avg pool)] -> flatten -> dense (neural-tangents' stax network, NTK
      parameterisation)
    prediction = K_ts (K_ss + lambda I)^-1 y_s, lambda = reg * tr(K_ss) / n
    loss = 0.5 * mean((prediction - y_t)^2)
    one Adam step on the support images (and labels, if learned)

The kernel (`config.kip.kernel_impl`): "ddjax" (default) computes it in ddjax itself
(`ddjax.distill.ntk`, pure JAX, any jax version); "neural_tangents" takes it from
neural-tangents' `stax`, the reference that ddjax's kernel is tested against
(tests/test_ntk.py). neural-tangents is imported only for that, lazily, here: it needs
jax 0.5.x (see BUILD_NOTES.md).

Labels: without `config.learn_labels` the support keeps its hard labels. With it, the
labels are [N, C] floats in one-hot space (initialised one-hot; the regression target is
labels - 1/C), kept non-negative, so that cross-entropy evaluation (protocol A) stays
bounded, and projected so that every row's argmax stays its class
(`labels.keep_class_argmax`): the distilled set stays class-sorted, ipc per class.

Cost: without pooling the conv NTK needs only each pixel's own covariance (cheap). Average
pooling needs the full spatial covariance, [n, m, H, W, H, W] per layer: 28x28 images
with 100 support and 100 target images need ~24 GB per layer, so the CPU (mnist5k)
config turns pooling off; the CIFAR configs keep KIP's pooled kernel for accelerators.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ddjax import optim
from ddjax.data import sampling
from ddjax.distill import base, labels as labels_lib, ntk

__all__ = ["KERNEL_IMPLS", "blocked", "centred_one_hot", "convnet_ntk", "distill_step",
           "init_state", "krr_loss", "krr_predict", "make_kernel"]

KernelFn = Callable[[jax.Array, jax.Array | None], jax.Array]  # (x1, x2) -> NTK [n1, n2]
KERNEL_IMPLS = ("ddjax", "neural_tangents")


def hparams(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The method's hyperparameters (`base.method_hparams`).

  Args:
    config: a configs/distill/kip.py config.

  Returns:
    config.kip; a ConfigError if the config lacks it.
  """
  return base.method_hparams(config, "kip")


def _neural_tangents():
  try:
    import neural_tangents  # pylint: disable=g-import-not-at-top
  except Exception as e:  # ImportError, or AttributeError on a jax it does not support
    raise ImportError(
        f"config.kip.kernel_impl='neural_tangents' needs neural-tangents (0.6.5, which runs "
        f"on jax 0.5.x; this is jax {jax.__version__}); the default kernel_impl='ddjax' does "
        f"not: {type(e).__name__}: {e}") from e
  return neural_tangents


def kernel_impl(hp: ml_collections.ConfigDict) -> str:
  """The configured NTK implementation.

  Args:
    hp: config.kip.

  Returns:
    hp.kernel_impl (default "ddjax").

  Raises:
    ValueError: not one of KERNEL_IMPLS.
  """
  impl = hp.get("kernel_impl", "ddjax")
  if impl not in KERNEL_IMPLS:
    raise ValueError(f"config.kip.kernel_impl must be one of {KERNEL_IMPLS}, got {impl!r}.")
  return impl


@functools.lru_cache(maxsize=None)
def convnet_ntk(depth: int = 3, pooling: bool = True, w_std: float = 2.0 ** 0.5,
                b_std: float = 0.1, num_outputs: int = 10, impl: str = "ddjax") -> KernelFn:
  """The infinite-width KIP ConvNet's NTK: (x1, x2) -> [n1, n2] (x2=None: x1 with itself).

  Args:
    depth: conv layers.
    pooling: a 2x2 average pool after every conv.
    w_std: the weights' standard deviation (NTK parameterisation).
    b_std: the biases' standard deviation.
    num_outputs: the dense head's width (the kernel does not depend on it).
    impl: "ddjax" (`ddjax.distill.ntk`) or "neural_tangents" (the reference, imported here).

  Returns:
    The kernel function (cached per arguments).

  Raises:
    ValueError: an unknown impl.
    ImportError: neural-tangents is requested but cannot be imported.
  """
  if impl == "ddjax":
    return ntk.convnet_kernel_fn(depth, pooling, w_std, b_std, num_outputs, get="ntk")
  if impl != "neural_tangents":
    raise ValueError(f"Unknown kernel impl {impl!r}; expected one of {KERNEL_IMPLS}.")
  stax = _neural_tangents().stax
  layers = []
  for _ in range(depth):
    layers += [stax.Conv(1, (3, 3), padding="SAME", W_std=w_std, b_std=b_std), stax.Relu()]
    if pooling:
      layers.append(stax.AvgPool((2, 2), strides=(2, 2)))
  layers += [stax.Flatten(), stax.Dense(num_outputs, W_std=w_std, b_std=b_std)]
  _, _, kernel_fn = stax.serial(*layers)
  return lambda x1, x2=None: kernel_fn(x1, x2, "ntk")


def blocked(kernel: KernelFn, block: int) -> KernelFn:
  """`kernel` evaluated on block x block tiles under `lax.map`, each tile rematerialised.

  The pooled conv NTK's intermediates grow with n1 * n2 * (H * W)^2; tiling bounds them to
  one tile in the forward and in the backward pass. Ragged ends are padded by repeating
  the first image and cropped.

  Args:
    kernel: (x1, x2) -> [n1, n2].
    block: images per tile side; 0 returns `kernel` itself.

  Returns:
    The tiled kernel, with the same values.
  """
  if not block:
    return kernel

  def tiles(x):
    pad = -x.shape[0] % block
    x = jnp.concatenate([x, jnp.broadcast_to(x[:1], (pad,) + x.shape[1:])]) if pad else x
    return x.reshape((-1, block) + x.shape[1:])

  tile = jax.checkpoint(lambda a, b: kernel(a, b))

  def k(x1, x2=None):
    x2 = x1 if x2 is None else x2
    out = jax.lax.map(lambda a: jax.lax.map(lambda b: tile(a, b), tiles(x2)), tiles(x1))
    n1b, n2b = out.shape[:2]
    out = out.transpose(0, 2, 1, 3).reshape(n1b * block, n2b * block)
    return out[:x1.shape[0], :x2.shape[0]]

  return k


def make_kernel(hp: ml_collections.ConfigDict, num_classes: int) -> KernelFn:
  """The configured NTK: `convnet_ntk` of config.kip, tiled by kernel_block.

  Args:
    hp: config.kip.
    num_classes: the output width.

  Returns:
    The kernel function (x1, x2=None) -> [n1, n2].
  """
  kernel = convnet_ntk(int(hp.depth), bool(hp.pooling), float(hp.w_std), float(hp.b_std),
                       int(num_classes), kernel_impl(hp))
  return blocked(kernel, int(hp.get("kernel_block", 0) or 0))


def krr_predict(k_ts: jax.Array, k_ss: jax.Array, y_s: jax.Array, reg: float) -> jax.Array:
  """K_ts (K_ss + lambda I)^-1 y_s with lambda = reg * tr(K_ss) / n (a Cholesky solve).

  Args:
    k_ts: target-support kernel [m, n].
    k_ss: support kernel [n, n].
    y_s: support targets [n, C].
    reg: the relative ridge.

  Returns:
    The predictions [m, C].
  """
  n = k_ss.shape[0]
  lam = reg * jnp.trace(k_ss) / n
  alpha = jax.scipy.linalg.solve(k_ss + lam * jnp.eye(n, dtype=k_ss.dtype), y_s, assume_a="pos")
  return k_ts @ alpha


def krr_loss(kernel: KernelFn, x_s: jax.Array, y_s: jax.Array, x_t: jax.Array, y_t: jax.Array,
             reg: float) -> tuple[jax.Array, jax.Array]:
  """(0.5 * mean squared error of the KRR prediction on the target, target accuracy).

  Args:
    kernel: the NTK function.
    x_s: support (synthetic) images [n, ...].
    y_s: support targets [n, C] (centred one-hot).
    x_t: target (real) images [m, ...].
    y_t: target targets [m, C].
    reg: the relative ridge.

  Returns:
    (loss, accuracy of the prediction's argmax against y_t's).
  """
  prediction = krr_predict(kernel(x_t, x_s), kernel(x_s, None), y_s, reg)
  loss = 0.5 * jnp.mean((prediction - y_t) ** 2)
  accuracy = jnp.mean(jnp.argmax(prediction, -1) == jnp.argmax(y_t, -1))
  return loss, accuracy


def centred_one_hot(labels: jax.Array, num_classes: int) -> jax.Array:
  """KIP's regression targets: one-hot minus 1/C (also for soft labels in one-hot space).

  Args:
    labels: integer [N] or soft [N, C] labels.
    num_classes: C.

  Returns:
    [N, C] targets.
  """
  if labels.ndim == 1:
    labels = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  return labels - 1.0 / num_classes


def optimizer(hp: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam(lr) on the support images (and labels).

  Args:
    hp: config.kip.

  Returns:
    `optim.make("adam", hp.lr)`.
  """
  return optim.make("adam", hp.lr)


def init_state(config: ml_collections.ConfigDict, key: jax.Array, real: base.RealData,
               aux: Any = None) -> base.DistillState:
  """The initial support set (one-hot labels if learned) and Adam's state.

  Args:
    config: a configs/distill/kip.py config.
    key: the PRNG key of the initialisation.
    real: the real train data.
    aux: unused.

  Returns:
    The DistillState at step 0.

  Raises:
    ValueError: missing hyperparameters, target_per_class above the smallest class's
      count, reg <= 0, or an unknown kernel_impl.
    ImportError: kernel_impl="neural_tangents" without a working neural-tangents.
    ConfigError: an unknown init.
  """
  del aux
  hp = hparams(config)
  smallest = int(jnp.min(real.class_count))
  if hp.target_per_class > smallest:
    raise ValueError(f"config.kip.target_per_class={hp.target_per_class} exceeds the smallest "
                     f"class's {smallest} real training images; lower it.")
  if hp.reg <= 0:
    raise ValueError(f"config.kip.reg must be > 0 (the ridge is reg * tr(K) / n), got {hp.reg}.")
  if kernel_impl(hp) == "neural_tangents":
    _neural_tangents()  # fail here, with the reason, rather than inside jit
  images, hard = sampling.init_synthetic(key, real.x, real.y, config.ipc, real.num_classes,
                                         config.init)
  learned = {"images": images}
  if config.learn_labels:
    learned["labels"] = jax.nn.one_hot(hard, real.num_classes, dtype=jnp.float32)
  return base.DistillState(step=jnp.zeros((), jnp.int32), images=images,
                           labels=learned.get("labels", hard),
                           lr=jnp.zeros((), jnp.float32),  # KIP trains no network
                           opt_state=optimizer(hp).init(learned), extra={})


def distill_step(config: ml_collections.ConfigDict, state: base.DistillState, key: jax.Array,
                 real: base.RealData, aux: Any = None) -> tuple[base.DistillState, dict]:
  """One KIP iteration: a real target batch, the KRR loss, one Adam step.

  Args:
    config: the kip config (bound by the driver).
    state: the DistillState.
    key: this iteration's PRNG key.
    real: the real train data.
    aux: unused.

  Returns:
    (new state, {'loss', 'target_accuracy', 'grad_norm'}).
  """
  del aux
  hp = hparams(config)
  num_classes = real.num_classes
  kernel = make_kernel(hp, num_classes)
  x_t, y_t = base.sample_per_class(key, real, hp.target_per_class)
  x_t = x_t.reshape((-1,) + x_t.shape[2:])
  y_t = centred_one_hot(y_t.reshape(-1), num_classes)

  learned = {"images": state.images}
  if config.learn_labels:
    learned["labels"] = state.labels

  def loss_fn(learned):
    y_s = centred_one_hot(learned.get("labels", state.labels), num_classes)
    return krr_loss(kernel, learned["images"], y_s, x_t, y_t, hp.reg)

  (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(learned)
  updates, opt_state = optimizer(hp).update(grads, state.opt_state, learned)
  learned = optax.apply_updates(learned, updates)
  new_labels = state.labels
  if config.learn_labels:
    new_labels = labels_lib.keep_class_argmax(jnp.maximum(learned["labels"], 0.0))
  return state.replace(step=state.step + 1, images=learned["images"], labels=new_labels,
                       opt_state=opt_state), {"loss": loss, "target_accuracy": accuracy,
                                              "grad_norm": optax.global_norm(grads)}
