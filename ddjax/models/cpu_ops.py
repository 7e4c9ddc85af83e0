"""CPU kernels whose derivatives of every order stay fast on XLA:CPU: a stride-1 2-D
convolution, and per-sample spatial sums (instance-norm statistics).

XLA:CPU runs a forward convolution (NHWC x HWIO) as an Eigen kernel, but the kernel
gradient that JAX's own transpose rule emits falls back to a naive loop, and its second
derivative is worse (8.8 s for a 2-step meta-gradient, BUILD_NOTES.md). Here the
convolution is two bilinear primitives whose transposes are written in terms of each
other, so forward, first, second and higher derivatives only ever contain:

* `conv` (y = x * w, cross-correlation): XLA's conv, i.e. Eigen on the CPU. The input
  gradient is also a forward conv, of the cotangent with the flipped kernel;
* `kernel_grad` (dw = sum over n, h, w of patch(x) outer g): the same Eigen conv with
  batch and channels swapped (channel-rich inputs), or an im2col matmul (1-3 channels,
  where the swapped conv has a batch of 1 and runs slower).

Both primitives are bilinear (`ad.defbilinear`), so jvp, vjp, linearize and
`linear_transpose` all work (forward-over-reverse HVPs included), and they have
batching rules: a vmap over inputs only folds into the batch; a vmap over kernels (e.g.
independent retrains) runs `conv2d_im2col` (defined here, shifted slices and one matmul;
also `Conv2D(impl="im2col")` and the strided convs) under vmap. Tests compare all three
with `lax.conv_general_dilated`.

Spatial sums: XLA:CPU runs a reduction as one serial scalar add chain (~0.5 ms for the
[20, 32, 32, 32] -> [20, 32] sums of an instance norm, ~20x PyTorch), while a batched
matmul with a ones matrix takes ~0.1 ms. `spatial_sum` ([N, H, W, C] -> [N, C]) is that
matmul and `spatial_broadcast` ([N, C] -> [N, H, W, C]) a plain (fusible) broadcast; as
linear primitives that are each other's transpose, the derivatives of an instance norm
written with them contain matmuls and broadcasts but no reductions over H and W.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

try:  # Internal-ish APIs; on a JAX without them "auto" falls back to im2col.
  from jax.core import ShapedArray
  from jax.extend.core import Primitive
  from jax.interpreters import ad, batching, mlir
  AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the installed JAX
  AVAILABLE = False

__all__ = ["AVAILABLE", "conv2d_hybrid", "conv2d_im2col", "spatial_broadcast", "spatial_sum"]

Array = jax.Array
Padding = tuple[tuple[int, int], tuple[int, int]]
_DIMS = ("NHWC", "HWIO", "NHWC")
# Below this many input channels the swapped-axes Eigen conv (batch = channels) loses to
# im2col (measured: 0.46 vs 0.30 ms at 1 channel, 0.9 vs 4.7 ms at 32; BUILD_NOTES.md).
_EIGEN_KERNEL_GRAD_MIN_CHANNELS = 8


def _pad(x: Array, padding: Padding) -> Array:
  (pt, pb), (pl, pr) = padding
  # lax.pad allows the negative pads that input gradients of over-padded convs need.
  return lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))


def _flip_kernel(w: Array) -> Array:
  """HWIO kernel of the adjoint conv: spatially flipped, input/output swapped."""
  return jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)


def _adjoint_padding(kernel_size: tuple[int, int], padding: Padding) -> Padding:
  (kh, kw), ((pt, pb), (pl, pr)) = kernel_size, padding
  return ((kh - 1 - pt, kh - 1 - pb), (kw - 1 - pl, kw - 1 - pr))


def _conv_impl(x: Array, w: Array, *, padding: Padding) -> Array:
  return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_DIMS)


def _patches(x: Array, kernel_size: tuple[int, int], padding: Padding,
             strides: tuple[int, int] = (1, 1)) -> Array:
  """[N, Ho, Wo, kh*kw*C] patches of padded x, channel order (i, j, c) as
  kernel.reshape(kh*kw*C, O)."""
  (kh, kw), (sh, sw) = kernel_size, strides
  xp = _pad(x, padding)
  ho = (xp.shape[1] - kh) // sh + 1
  wo = (xp.shape[2] - kw) // sw + 1
  taps = [xp[:, i:i + (ho - 1) * sh + 1:sh, j:j + (wo - 1) * sw + 1:sw, :]
          for i in range(kh) for j in range(kw)]
  return taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)


def conv2d_im2col(x: Array, kernel: Array, strides: tuple[int, int],
                  padding: Padding) -> Array:
  """NHWC x HWIO convolution as shifted slices plus one matmul (any stride).

  Args:
    x: NHWC input [N, H, W, C].
    kernel: HWIO kernel [kh, kw, C, O].
    strides: (sh, sw).
    padding: ((top, bottom), (left, right)) zero padding.

  Returns:
    The NHWC output [N, Ho, Wo, O].
  """
  kh, kw, cin, cout = kernel.shape
  return _patches(x, (kh, kw), padding, strides) @ kernel.reshape(kh * kw * cin, cout)


def _kernel_grad_im2col(x: Array, g: Array, *, padding: Padding,
                        kernel_size: tuple[int, int]) -> Array:
  kh, kw = kernel_size
  cin, cout = x.shape[-1], g.shape[-1]
  patches = _patches(x, kernel_size, padding).reshape(-1, kh * kw * cin)
  return (patches.T @ g.reshape(-1, cout)).reshape(kh, kw, cin, cout)


def _kernel_grad_swapped(x: Array, g: Array, *, padding: Padding) -> Array:
  # dw[i, j, c, o] = sum_{n,h,w} xpad[n, h+i, w+j, c] g[n, h, w, o]: a VALID forward conv
  # with channels as the batch, the batch as input features and g as a (Ho, Wo) kernel.
  out = lax.conv_general_dilated(_pad(x, padding).transpose(3, 1, 2, 0),
                                 g.transpose(1, 2, 0, 3), (1, 1), "VALID",
                                 dimension_numbers=_DIMS)
  return out.transpose(1, 2, 0, 3)


def _kernel_grad_impl(x: Array, g: Array, *, padding: Padding,
                      kernel_size: tuple[int, int]) -> Array:
  if x.shape[-1] < _EIGEN_KERNEL_GRAD_MIN_CHANNELS:
    return _kernel_grad_im2col(x, g, padding=padding, kernel_size=kernel_size)
  return _kernel_grad_swapped(x, g, padding=padding)


if AVAILABLE:
  conv_p = Primitive("ddjax_conv2d")
  kernel_grad_p = Primitive("ddjax_conv2d_kernel_grad")

  def _conv_abstract(x, w, *, padding):
    kh, kw, cin, cout = w.shape
    if x.ndim != 4 or x.shape[-1] != cin or x.dtype != w.dtype:
      raise ValueError(f"conv2d_hybrid: input {x.shape} {x.dtype} does not match HWIO "
                       f"kernel {w.shape} {w.dtype}.")
    (pt, pb), (pl, pr) = padding
    shape = (x.shape[0], x.shape[1] + pt + pb - kh + 1, x.shape[2] + pl + pr - kw + 1, cout)
    return ShapedArray(shape, x.dtype)

  def _kernel_grad_abstract(x, g, *, padding, kernel_size):
    return ShapedArray(tuple(kernel_size) + (x.shape[-1], g.shape[-1]), x.dtype)

  conv_p.def_impl(_conv_impl)
  conv_p.def_abstract_eval(_conv_abstract)
  mlir.register_lowering(conv_p, mlir.lower_fun(_conv_impl, multiple_results=False))
  kernel_grad_p.def_impl(_kernel_grad_impl)
  kernel_grad_p.def_abstract_eval(_kernel_grad_abstract)
  mlir.register_lowering(kernel_grad_p,
                         mlir.lower_fun(_kernel_grad_impl, multiple_results=False))

  # Transposes. conv: x-cotangent = conv(ct, flipped w); w-cotangent = kernel_grad(x, ct).
  # kernel_grad: x-cotangent = conv(g, flipped ct); g-cotangent = conv(x, ct).
  def _conv_transpose_x(ct, x, w, *, padding):
    return conv_p.bind(ct, _flip_kernel(w), padding=_adjoint_padding(w.shape[:2], padding))

  def _conv_transpose_w(ct, x, w, *, padding):
    return kernel_grad_p.bind(x, ct, padding=padding, kernel_size=tuple(w.aval.shape[:2]))

  def _kernel_grad_transpose_x(ct, x, g, *, padding, kernel_size):
    return conv_p.bind(g, _flip_kernel(ct), padding=_adjoint_padding(kernel_size, padding))

  def _kernel_grad_transpose_g(ct, x, g, *, padding, kernel_size):
    del kernel_size
    return conv_p.bind(x, ct, padding=padding)

  ad.defbilinear(conv_p, _conv_transpose_x, _conv_transpose_w)
  ad.defbilinear(kernel_grad_p, _kernel_grad_transpose_x, _kernel_grad_transpose_g)

  def _conv_batch(args, dims, *, padding):
    (x, w), (bx, bw) = args, dims
    # An unmapped kernel (None; jax < 0.6 spelled it batching.not_mapped): fold the vmapped
    # axis of x into the conv batch.
    if bw is None:
      x = jnp.moveaxis(x, bx, 0)
      b, n = x.shape[:2]
      y = conv_p.bind(x.reshape((b * n,) + x.shape[2:]), w, padding=padding)
      return y.reshape((b, n) + y.shape[1:]), 0
    # batch dims are vmap in_axes (None for an unmapped operand): no broadcast copy of x.
    fn = functools.partial(conv2d_im2col, strides=(1, 1), padding=padding)
    return jax.vmap(fn, in_axes=(bx, bw))(x, w), 0

  def _kernel_grad_batch(args, dims, *, padding, kernel_size):
    (x, g), (bx, bg) = args, dims
    fn = functools.partial(_kernel_grad_im2col, padding=padding, kernel_size=kernel_size)
    return jax.vmap(fn, in_axes=(bx, bg))(x, g), 0

  batching.primitive_batchers[conv_p] = _conv_batch
  batching.primitive_batchers[kernel_grad_p] = _kernel_grad_batch


# Below this many positions XLA's reduce is faster than the matmul (14 vs 31 us at 8x8;
# benchmarks/bench_cpu_ops.py).
_MATMUL_SUM_MIN_POSITIONS = 256


def _spatial_sum_impl(x: Array) -> Array:
  n, h, w, c = x.shape
  if h * w < _MATMUL_SUM_MIN_POSITIONS:
    return x.sum((1, 2))
  # Two rows (ones, zeros): XLA rewrites a matrix-vector dot with a ones vector into the
  # slow reduce this avoids.
  e = jnp.concatenate([jnp.ones((n, 1, h * w), x.dtype), jnp.zeros((n, 1, h * w), x.dtype)], 1)
  return jnp.einsum("nkp,npc->nkc", e, x.reshape(n, h * w, c))[:, 0]


def _spatial_broadcast_impl(s: Array, *, height: int, width: int) -> Array:
  n, c = s.shape
  return jnp.broadcast_to(s[:, None, None, :], (n, height, width, c))


if AVAILABLE:
  spatial_sum_p = Primitive("ddjax_spatial_sum")
  spatial_broadcast_p = Primitive("ddjax_spatial_broadcast")
  spatial_sum_p.def_impl(_spatial_sum_impl)
  spatial_sum_p.def_abstract_eval(
      lambda x: ShapedArray((x.shape[0], x.shape[3]), x.dtype))
  mlir.register_lowering(spatial_sum_p,
                         mlir.lower_fun(_spatial_sum_impl, multiple_results=False))
  spatial_broadcast_p.def_impl(_spatial_broadcast_impl)
  spatial_broadcast_p.def_abstract_eval(
      lambda s, *, height, width: ShapedArray((s.shape[0], height, width, s.shape[1]),
                                                       s.dtype))
  mlir.register_lowering(spatial_broadcast_p,
                         mlir.lower_fun(_spatial_broadcast_impl, multiple_results=False))
  ad.deflinear2(spatial_sum_p, lambda ct, x: [
      spatial_broadcast_p.bind(ct, height=x.aval.shape[1], width=x.aval.shape[2])])
  ad.deflinear2(spatial_broadcast_p, lambda ct, s, **_: [spatial_sum_p.bind(ct)])

  def _spatial_sum_batch(args, dims):
    x = jnp.moveaxis(args[0], dims[0], 0)  # fold the vmapped axis into N
    out = spatial_sum_p.bind(x.reshape((-1,) + x.shape[2:]))
    return out.reshape(x.shape[:2] + out.shape[1:]), 0

  def _spatial_broadcast_batch(args, dims, *, height, width):
    s = jnp.moveaxis(args[0], dims[0], 0)
    out = spatial_broadcast_p.bind(s.reshape((-1,) + s.shape[2:]), height=height, width=width)
    return out.reshape(s.shape[:2] + out.shape[1:]), 0

  batching.primitive_batchers[spatial_sum_p] = _spatial_sum_batch
  batching.primitive_batchers[spatial_broadcast_p] = _spatial_broadcast_batch


def spatial_sum(x: Array) -> Array:
  """[N, H, W, C] -> [N, C] sums over H and W (a matmul on XLA:CPU; see module doc).

  Args:
    x: an NHWC array.

  Returns:
    The [N, C] sums.

  Raises:
    ValueError: `x` is not 4-D.
  """
  if x.ndim != 4:
    raise ValueError(f"spatial_sum expects NHWC, got shape {x.shape}.")
  return spatial_sum_p.bind(x) if AVAILABLE else x.sum((1, 2))


def spatial_broadcast(s: Array, height: int, width: int) -> Array:
  """[N, C] -> [N, height, width, C]; the transpose of `spatial_sum`.

  Args:
    s: an [N, C] array.
    height: the output height.
    width: the output width.

  Returns:
    `s` broadcast over the spatial axes, [N, height, width, C].

  Raises:
    ValueError: `s` is not 2-D.
  """
  if s.ndim != 2:
    raise ValueError(f"spatial_broadcast expects [N, C], got shape {s.shape}.")
  if not AVAILABLE:
    return _spatial_broadcast_impl(s, height=height, width=width)
  return spatial_broadcast_p.bind(s, height=int(height), width=int(width))


def conv2d_hybrid(x: Array, kernel: Array, strides: tuple[int, int],
                  padding: Padding) -> Array:
  """NHWC x HWIO convolution through the two primitives above, stride 1 only
  (`layers.Conv2D` sends strided convs, ResNet's downsampling, to im2col).

  Args:
    x: NHWC input [N, H, W, C].
    kernel: HWIO kernel [kh, kw, C, O].
    strides: must be (1, 1).
    padding: ((top, bottom), (left, right)) zero padding.

  Returns:
    The NHWC output [N, Ho, Wo, O].

  Raises:
    ValueError: the primitives are unavailable on this JAX, a stride is not 1, or the
      shapes do not match.
  """
  if not AVAILABLE:
    raise ValueError("conv_impl='hybrid' needs jax.extend.core.Primitive and "
                     "jax.interpreters.{ad,batching,mlir}, which this JAX lacks; use "
                     "conv_impl='im2col'.")
  if tuple(strides) != (1, 1):
    raise ValueError(f"conv2d_hybrid supports stride 1 only, got {strides}.")
  if x.ndim != 4 or kernel.ndim != 4 or x.shape[-1] != kernel.shape[2]:
    raise ValueError(f"conv2d_hybrid: input {x.shape} does not match HWIO kernel "
                     f"{kernel.shape} (NHWC input, channels = kernel dim 2).")
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  return conv_p.bind(x, kernel.astype(x.dtype), padding=padding)
