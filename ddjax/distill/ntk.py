r"""The infinite-width NNGP and NTK of KIP's ConvNet, in JAX (no neural-tangents).

The network is neural-tangents' `stax` ConvNet that KIP uses, in the NTK parameterisation
and with infinitely many channels:

    depth x [Conv(3x3, SAME, W_std, b_std) -> ReLU (-> AvgPool(2x2, stride 2, VALID))]
      -> Flatten -> Dense(W_std, b_std)

`convnet_kernel_fn(...)(x1, x2)` returns its NTK (or NNGP) [n1, n2] for NHWC images;
neural-tangents 0.6.5 stays the reference it is tested against (tests/test_ntk.py, marker
`legacy_nt`; BUILD_NOTES.md, "KIP's ConvNet NTK in ddjax").

The recursion. For images x (of batch 1) and x' (of batch 2), S(u, u') is the covariance of
the pre-activations at position u of x and u' of x' (the NNGP), T(u, u') the NTK, and
V(u) = S_xx(u, u), V'(u') = S_x'x'(u', u') the variances:

* input: S(u, u') = <x_u, x'_u'> / C (C channels), T = 0;
* conv 3x3, SAME (zero padding), weights shared over positions: both positions move by the
  same filter offset d, so S <- W^2 / 9 sum_{d in {-1,0,1}^2} S(u + d, u' + d) + b^2 and
  T <- W^2 / 9 sum_d T(u + d, u' + d) + S (the new S);
* ReLU (the arc-cosine kernel): with q = V(u) V'(u'), c = S(u, u'), s = sqrt(q - c^2) and
  the angle t = atan2(s, c) in [0, pi], S <- s / (2 pi) + (1/2 - t / (2 pi)) c and
  T <- T (1/2 - t / (2 pi)), the second factor being E[relu'(z) relu'(z')];
* average pooling 2x2, stride 2, VALID: the mean of S over the 2x2 block of u and the 2x2
  block of u' (16 terms); odd sizes lose their last row / column;
* flatten: the mean of S(u, u) (and of T(u, u)) over the positions u;
* dense: S <- W^2 S + b^2, T <- S (the new S) + W^2 T.

Two code paths. Without pooling, the conv's shifted sums keep u = u', so only the
diagonal-in-space covariances are needed: [n1, n2, H, W] (and the variances [n, H, W]).
Pooling mixes positions, so then the full spatial covariance is kept, laid out
[n1, n2, H, W, H', W'] (neural-tangents interleaves it as H, H', W, W'; the values are the
same): n1 * n2 * (H W)^2 floats per layer. `ddjax.distill.kip.blocked` tiles the batch for
it.

At the ReLU the angle is singular where the correlation is +-1 (q = c^2: an image with
itself, x2=None's diagonal; a constant image region): d s = (dq - 2 c dc) / (2 s) and
d t = (c ds - s dc) / q diverge. As in neural-tangents, s is then 0, the angle 0 (pi for
-1, pi/2 where q = c = 0), and the derivative through s (hence through t) is taken as 0:
its limit along the directions that keep q = c^2, which is what the kernel of an image
with itself sees. Two small `custom_jvp`s carry this (the clamped square root, and atan2
with its denominator kept off 0); everything else is plain autodiff, so no infinities or
NaNs reach the gradient. The singular point is detected as
q - c^2 <= `DEGENERATE_TOL` * eps * q, a few float round-offs rather than exactly 0, so
that it does not depend on how the compiler rounds the variances and c (an image paired
with itself through x2, or across kernel tiles, lands up to ~4 eps off 0). In float32
neural-tangents' own x2=None diagonal misses it: its variances and its NNGP diagonal are
rounded differently under jit, and the angle, ~sqrt(2 (1 - rho)), turns the last bit into
a ~1e-4 error of the NTK diagonal (BUILD_NOTES.md).

Float32 by default (float64 inputs stay float64 under `jax_enable_x64`). Pure jnp: jit-,
grad- (forward and reverse) and vmap-able, differentiable in x1 and in x2.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

KernelFn = Callable[..., jax.Array]
GETS = ("nngp", "ntk")

# q - c^2 <= DEGENERATE_TOL * eps * q counts as correlation +-1. An image paired with itself
# lands within ~4 eps of 0 when its variances and its NNGP entry are rounded differently
# (x2 given, a kernel tile, the pooled path), so 16 eps leaves a margin; a pair with
# correlation that close to 1 has its ReLU-derivative angle (~sqrt(2 (1 - rho)) < 2e-3) set
# to 0.
DEGENERATE_TOL = 16.0


def _dtype(x: jax.Array):
  return jnp.promote_types(x.dtype, jnp.float32)


# --- the ReLU's arc-cosine kernel, with finite derivatives -------------------------------

@jax.custom_jvp
def _sqrt_above(r: jax.Array, q: jax.Array) -> jax.Array:
  """sqrt(r) where r > DEGENERATE_TOL * eps * q, else 0 (correlation +-1); there its
  derivative is 0, elsewhere the usual dr / (2 sqrt(r)) (the threshold is constant in q)."""
  return jnp.sqrt(jnp.where(r > DEGENERATE_TOL * jnp.finfo(r.dtype).eps * q, r, 0))


@_sqrt_above.defjvp
def _sqrt_above_jvp(primals, tangents):
  (r, q), (dr, _) = primals, tangents
  s = _sqrt_above(r, q)
  positive = s > 0
  return s, jnp.where(positive, dr / (2 * jnp.where(positive, s, 1)), 0)


@jax.custom_jvp
def _angle(s: jax.Array, c: jax.Array) -> jax.Array:
  """atan2(s, c) in [0, pi] for s >= 0; pi / 2 at s = c = 0 (a zero-variance unit)."""
  return jnp.where((s == 0) & (c == 0), math.pi / 2, jnp.arctan2(s, c))


@_angle.defjvp
def _angle_jvp(primals, tangents):
  (s, c), (ds, dc) = primals, tangents
  # d atan2(s, c) = (c ds - s dc) / (s^2 + c^2), the denominator kept off 0.
  norm = jnp.maximum(s * s + c * c, jnp.finfo(s.dtype).tiny)
  return _angle(s, c), (c / norm) * ds - (s / norm) * dc


def relu_kernel(c: jax.Array, q: jax.Array) -> tuple[jax.Array, jax.Array]:
  """ReLU's (E[relu(z) relu(z')], E[relu'(z) relu'(z')]) for centred Gaussians (z, z') of
  covariance c and product of variances q (elementwise): with s = sqrt(q - c^2) and the
  angle t = atan2(s, c), (s / (2 pi) + (1/2 - t / (2 pi)) c, 1/2 - t / (2 pi)).

  Args:
    c: the covariances, any shape.
    q: the products of the two variances, same shape.

  Returns:
    (the ReLU output covariance, the derivative kernel), both shaped like `c`.
  """
  s = _sqrt_above(q - c * c, q)
  dot = 0.5 - _angle(s, c) / (2 * math.pi)
  return s / (2 * math.pi) + dot * c, dot


# --- linear maps on covariances [..., *spatial] -------------------------------------------

def _channel_mean(x1: jax.Array, x2: jax.Array, subscripts: str) -> jax.Array:
  """einsum(subscripts, x1, x2) / C: the mean over the C channels of products.

  Few channels (images): unrolled broadcast products, so that an image paired with itself
  is rounded alike in the NNGP and in its self-covariance; many: an einsum at full float32
  precision.
  """
  channels = x1.shape[-1]
  if channels > 16:
    return jnp.einsum(subscripts, x1, x2, precision=jax.lax.Precision.HIGHEST) / channels
  ins, out = subscripts.split("->")
  in1, in2 = (spec[:-1] for spec in ins.split(","))  # the channel is last

  def expand(x, spec):  # x[..., c] laid out along `out`
    return jnp.expand_dims(x, [i for i, a in enumerate(out) if a not in spec])

  a, b = expand(x1[..., 0], in1), expand(x2[..., 0], in2)
  total = a * b
  for c in range(1, channels):
    total = total + expand(x1[..., c], in1) * expand(x2[..., c], in2)
  return total / channels


def _input_nngp(x1: jax.Array, x2: jax.Array, full: bool) -> jax.Array:
  """<x1_u, x2_u'> / C: [n1, n2, H, W, H', W'] (full) or [n1, n2, H, W] (u = u')."""
  return _channel_mean(x1, x2, "ahwc,bxyc->abhwxy" if full else "ahwc,bhwc->abhw")


def _input_self(x: jax.Array, full: bool) -> jax.Array:
  """Each image's covariance with itself: [n, H, W, H', W'] (full) or [n, H, W]."""
  return _channel_mean(x, x, "ahwc,axyc->ahwxy" if full else "ahwc,ahwc->ahw")


def _shift_sum(x: jax.Array, axes: Sequence[int]) -> jax.Array:
  """sum_{d in {-1, 0, 1}} x[u + d, u' + d, ...] along `axes` (all shifted together),
  zero outside: one axis of a SAME 3-tap conv acting on a covariance."""
  pad = [(0, 0)] * x.ndim
  for axis in axes:
    pad[axis] = (1, 1)
  padded = jnp.pad(x, pad)

  def shifted(offset):
    out = padded
    for axis in axes:
      out = jax.lax.slice_in_dim(out, offset, offset + x.shape[axis], axis=axis)
    return out

  return shifted(0) + shifted(1) + shifted(2)


def _conv(x: jax.Array, full: bool) -> jax.Array:
  """The unscaled 3x3 SAME conv on a covariance: (1/9) sum_d x(u + d, u' + d)."""
  if full:   # [..., H, W, H', W']: shift (H, H') together, then (W, W')
    x = _shift_sum(_shift_sum(x, (-4, -2)), (-3, -1))
  else:      # [..., H, W]: a 3x3 window sum (XLA's reduce_window: ~2x pad-and-slice on CPU)
    lead = x.ndim - 2
    x = jax.lax.reduce_window(x, np.zeros((), x.dtype), jax.lax.add, (1,) * lead + (3, 3),
                              (1,) * x.ndim, ((0, 0),) * lead + ((1, 1), (1, 1)))
  return x / 9


def _pool(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2, VALID, of both positions of [..., H, W, H', W']."""
  for axis in range(x.ndim - 4, x.ndim):
    size = x.shape[axis] // 2 * 2
    even = jax.lax.slice_in_dim(x, 0, size, stride=2, axis=axis)
    odd = jax.lax.slice_in_dim(x, 1, size, stride=2, axis=axis)
    x = even + odd
  return x / 16


def _spatial_diagonal(x: jax.Array) -> jax.Array:
  """[..., H, W, H, W] -> [..., H, W]: the entries with u = u'."""
  *lead, h, w = x.shape[:-2]
  flat = x.reshape(tuple(lead) + (h * w, h * w))
  return jnp.diagonal(flat, axis1=-2, axis2=-1).reshape(tuple(lead) + (h, w))


def _flatten(x: jax.Array, full: bool) -> jax.Array:
  """Flatten + the infinite-width dense readout's view: the mean of x(u, u) over u."""
  if full:
    x = _spatial_diagonal(x)
  return jnp.mean(x, axis=(-2, -1))


# --- the network ---------------------------------------------------------------------------

def convnet_kernel_fn(depth: int = 3, pooling: bool = True, w_std: float = 2.0 ** 0.5,
                      b_std: float | None = 0.1, num_outputs: int = 10,
                      get: str | Sequence[str] = "ntk",
                      full_spatial: bool | None = None) -> KernelFn:
  """The kernel of `depth` x [conv3x3 -> relu (-> avgpool2x2)] -> flatten -> dense.

  Args:
    depth: conv blocks (>= 1).
    pooling: 2x2 average pooling (stride 2, VALID) after every block's ReLU.
    w_std, b_std: weight and bias standard deviations of every conv and the dense layer
      (b_std None or 0: no bias), neural-tangents' NTK parameterisation.
    num_outputs: the dense layer's width; it does not enter the infinite-width kernel
      (kept so the signature mirrors the network).
    get: "ntk", "nngp", or a sequence of them (then a tuple in that order).
    full_spatial: keep the full spatial covariance even without pooling (the default, None,
      keeps it only when pooling needs it; the diagonal path gives the same numbers).

  Returns:
    kernel_fn(x1, x2=None) for NHWC images x1 [n1, H, W, C], x2 [n2, H, W, C] (None: x1
    with itself) -> [n1, n2] (or a tuple of them, per `get`).

  Raises:
    ValueError: depth < 1, an unknown `get`, or pooling with full_spatial=False (and,
      from kernel_fn, images that are not NHWC of one shape).
  """
  del num_outputs
  if depth < 1:
    raise ValueError(f"depth must be >= 1, got {depth}")
  gets = (get,) if isinstance(get, str) else tuple(get)
  if not gets or any(g not in GETS for g in gets):
    raise ValueError(f"get must be 'ntk', 'nngp' or a sequence of them, got {get!r}")
  full = bool(pooling) if full_spatial is None else bool(full_spatial)
  if pooling and not full:
    raise ValueError("pooling needs the full spatial covariance (full_spatial=False given)")
  w_var = float(w_std) ** 2
  b_var = float(b_std or 0.0) ** 2
  want_ntk = "ntk" in gets

  def variances(cov_self):
    """The per-position variances [n, H, W] of a self-covariance."""
    return _spatial_diagonal(cov_self) if full else cov_self

  def outer(v1, v2):
    """q = V(u) V'(u') for the NNGP [n1, n2, *spatial]."""
    if full:
      return v1[:, None, :, :, None, None] * v2[None, :, None, None, :, :]
    return v1[:, None] * v2[None, :]

  def relu_self(cov):
    """ReLU of a self-covariance [n, *spatial] (its own variances normalise it)."""
    if not full:
      return 0.5 * cov  # E[relu(z)^2] = var / 2
    v = _spatial_diagonal(cov)
    return relu_kernel(cov, v[:, :, :, None, None] * v[:, None, None, :, :])[0]

  def kernel_fn(x1: jax.Array, x2: jax.Array | None = None):
    x1 = jnp.asarray(x1)
    same = x2 is None
    x2 = x1 if same else jnp.asarray(x2)
    if x1.ndim != 4 or x2.ndim != 4 or x1.shape[1:] != x2.shape[1:]:
      raise ValueError(f"expected NHWC images of one shape, got {x1.shape} and {x2.shape}")
    dtype = jnp.promote_types(_dtype(x1), _dtype(x2))
    x1, x2 = x1.astype(dtype), x2.astype(dtype)

    nngp = _input_nngp(x1, x2, full)
    self1 = _input_self(x1, full)
    self2 = self1 if same else _input_self(x2, full)
    ntk = None

    for _ in range(depth):
      nngp = w_var * _conv(nngp, full) + b_var
      if want_ntk:
        ntk = nngp if ntk is None else w_var * _conv(ntk, full) + nngp
      self1 = w_var * _conv(self1, full) + b_var
      self2 = self1 if same else w_var * _conv(self2, full) + b_var

      nngp, dot = relu_kernel(nngp, outer(variances(self1), variances(self2)))
      if want_ntk:
        ntk = ntk * dot
      self1 = relu_self(self1)
      self2 = self1 if same else relu_self(self2)

      if pooling:
        nngp = _pool(nngp)
        ntk = None if ntk is None else _pool(ntk)
        self1 = _pool(self1)
        self2 = self1 if same else _pool(self2)

    nngp = w_var * _flatten(nngp, full) + b_var
    out = {"nngp": nngp}
    if want_ntk:
      out["ntk"] = nngp + w_var * _flatten(ntk, full)
    return out[gets[0]] if isinstance(get, str) else tuple(out[g] for g in gets)

  return kernel_fn


__all__ = ["convnet_kernel_fn", "relu_kernel", "GETS"]
