"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen, ICML 2021) in JAX.

A port of the reference `DiffAugment` (DatasetCondensation `utils.py`, `ParamDiffAug`,
aug_mode 'S'): every call samples ONE family from the strategy string, e.g.
'color_crop_cutout_flip_scale_rotate', and applies it. Families and their parameters:

    color   brightness x + (u - 1/2) * 1.0, then saturation (x - mean_c) * 2u + mean_c,
            then contrast (x - mean_chw) * (u + 1/2) + mean_chw
    crop    integer translation in [-r, r] px, r = int(0.125 * size + 0.5), zero fill
    cutout  a zeroed square of side int(0.5 * size + 0.5) at a random centre
    flip    horizontal flip with probability 0.5
    scale   sx, sy ~ U(1/1.2, 1.2) independently (affine grid + bilinear sampling)
    rotate  theta ~ U(-15, 15) degrees (affine grid + bilinear sampling)

Modes:
  * Siamese (`siamese=True`): one parameter draw shared by the whole batch. The draw
    does not depend on the batch size, so the same key applied to a real batch and a
    synthetic batch gives both the identical transform (the reference reseeds and
    broadcasts the first sample's parameters).
  * Per-sample (`siamese=False`): independent parameters for every image (the
    reference's seed=-1, used when training networks on synthetic data).

Everything is a pure, jittable function of (key, images) and differentiable with
respect to the images: the affine families are `affine_grid` + `grid_sample`
(bilinear, zero padding) written as gathers, and crop/cutout/flip are gathers and
masks. Images are NHWC in the model space, as in the reference (which augments the
normalised tensors).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp

from ddjax.errors import ConfigError

Array = jax.Array
AugmentFn = Callable[[Array, Array], Array]


@dataclasses.dataclass(frozen=True)
class DSAParams:
  """The reference `ParamDiffAug` values.

  `align_corners` chooses between the two reference copies: DC calls
  `F.affine_grid/grid_sample` with PyTorch's default (False); MTT passes True.
  """

  prob_flip: float = 0.5
  ratio_scale: float = 1.2
  ratio_rotate: float = 15.0       # degrees
  ratio_crop_pad: float = 0.125
  ratio_cutout: float = 0.5        # side of the square, as a fraction of the image side
  brightness: float = 1.0
  saturation: float = 2.0
  contrast: float = 0.5
  align_corners: bool = False


FAMILIES = ("color", "crop", "cutout", "flip", "scale", "rotate")
_NONE = ("", "none", "None")


def parse_strategy(strategy: str) -> tuple[str, ...]:
  """'color_crop_flip' -> ('color', 'crop', 'flip'); 'none' -> ()."""
  if not isinstance(strategy, str):
    raise TypeError(f"A DSA strategy must be a string like 'color_crop_cutout', got {strategy!r}.")
  if strategy in _NONE:
    return ()
  families = tuple(strategy.split("_"))
  unknown = [f for f in families if f not in FAMILIES]
  if unknown:
    raise ConfigError(f"Unknown DSA augmentation famil{'y' if len(unknown) == 1 else 'ies'} "
                      f"{unknown} in strategy {strategy!r}; expected '_'-separated names from "
                      f"{FAMILIES}, or 'none'.")
  return families


# ----------------------------------------------------------------------------- parameter draws


def _uniform(key: Array, n: int, siamese: bool, lo: float = 0.0, hi: float = 1.0) -> Array:
  """[n] draws; in Siamese mode one draw broadcast, independent of n."""
  u = jax.random.uniform(key, (1 if siamese else n,), minval=lo, maxval=hi)
  return jnp.broadcast_to(u, (n,))


def _randint(key: Array, n: int, siamese: bool, lo: int, hi: int) -> Array:
  """[n] integers in [lo, hi); in Siamese mode one draw broadcast."""
  r = jax.random.randint(key, (1 if siamese else n,), lo, hi)
  return jnp.broadcast_to(r, (n,))


# ----------------------------------------------------------------------------- geometric primitives


def affine_sample(x: Array, theta: Array, align_corners: bool = False) -> Array:
  """PyTorch's `grid_sample(x, affine_grid(theta, x.shape))`, bilinear, zero padding.

  x: [N, H, W, C]; theta: [N, 2, 3] maps output coordinates (x right, y down, both in
  [-1, 1]) to input coordinates, as in PyTorch. Linear in `x`, hence differentiable.
  """
  n, h, w, c = x.shape
  if theta.shape != (n, 2, 3):
    raise ValueError(f"theta must be [N, 2, 3] = [{n}, 2, 3], got {theta.shape}.")
  if align_corners:
    xs, ys = jnp.linspace(-1.0, 1.0, w), jnp.linspace(-1.0, 1.0, h)
  else:
    xs, ys = (2.0 * jnp.arange(w) + 1.0) / w - 1.0, (2.0 * jnp.arange(h) + 1.0) / h - 1.0
  gx_base, gy_base = jnp.meshgrid(xs, ys)                        # [H, W]
  base = jnp.stack([gx_base, gy_base, jnp.ones_like(gx_base)], -1)  # [H, W, 3]
  grid = jnp.einsum("hwk,njk->nhwj", base, theta.astype(x.dtype))  # [N, H, W, 2]
  gx, gy = grid[..., 0], grid[..., 1]
  if align_corners:
    ix, iy = (gx + 1.0) * 0.5 * (w - 1), (gy + 1.0) * 0.5 * (h - 1)
  else:
    ix, iy = ((gx + 1.0) * w - 1.0) * 0.5, ((gy + 1.0) * h - 1.0) * 0.5
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  wx1, wy1 = ix - x0, iy - y0
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  flat = x.reshape(n, h * w, c)

  def corner(yi, xi, weight):
    # Out-of-image corners read zero (padding_mode='zeros').
    valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    idx = (jnp.clip(yi, 0, h - 1) * w + jnp.clip(xi, 0, w - 1)).reshape(n, h * w, 1)
    vals = jnp.take_along_axis(flat, idx, axis=1).reshape(n, h, w, c)
    return vals * (weight * valid)[..., None].astype(x.dtype)

  return (corner(y0, x0, (1 - wx1) * (1 - wy1)) + corner(y0, x0 + 1, wx1 * (1 - wy1))
          + corner(y0 + 1, x0, (1 - wx1) * wy1) + corner(y0 + 1, x0 + 1, wx1 * wy1))


def translate(x: Array, shift_h: Array, shift_w: Array) -> Array:
  """out[i, j] = x[i + shift_h, j + shift_w], zero outside the image (reference rand_crop)."""
  n, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  rows = jnp.clip(jnp.arange(h)[None] + shift_h[:, None] + 1, 0, h + 1)  # [N, H]
  cols = jnp.clip(jnp.arange(w)[None] + shift_w[:, None] + 1, 0, w + 1)  # [N, W]
  return jax.vmap(lambda im, r, c: im[r][:, c])(xp, rows, cols)


def cutout(x: Array, centre_h: Array, centre_w: Array, size_h: int, size_w: int) -> Array:
  """Zeroes rows [centre_h - size_h//2, +size_h) x the same for columns, per image."""
  _, h, w, _ = x.shape
  top = (centre_h - size_h // 2)[:, None]
  left = (centre_w - size_w // 2)[:, None]
  rows = jnp.arange(h)[None]
  cols = jnp.arange(w)[None]
  in_rows = (rows >= top) & (rows < top + size_h)   # [N, H]
  in_cols = (cols >= left) & (cols < left + size_w)  # [N, W]
  mask = 1.0 - (in_rows[:, :, None] & in_cols[:, None, :]).astype(x.dtype)
  return x * mask[..., None]


# ----------------------------------------------------------------------------- families


def color(x: Array, u_brightness: Array, u_saturation: Array, u_contrast: Array,
          p: DSAParams = DSAParams()) -> Array:
  """The reference color chain for per-image uniform draws u_* in [0, 1), each [N]."""
  col = lambda u: u[:, None, None, None].astype(x.dtype)
  x = x + (col(u_brightness) - 0.5) * p.brightness
  mean_c = x.mean(axis=-1, keepdims=True)
  x = (x - mean_c) * (col(u_saturation) * p.saturation) + mean_c
  mean_all = x.mean(axis=(1, 2, 3), keepdims=True)
  return (x - mean_all) * (col(u_contrast) + p.contrast) + mean_all


def _color(key: Array, x: Array, p: DSAParams, siamese: bool) -> Array:
  n = x.shape[0]
  kb, ks, kc = jax.random.split(key, 3)
  return color(x, _uniform(kb, n, siamese), _uniform(ks, n, siamese), _uniform(kc, n, siamese), p)


def _crop(key: Array, x: Array, p: DSAParams, siamese: bool) -> Array:
  n, h, w, _ = x.shape
  rh, rw = int(h * p.ratio_crop_pad + 0.5), int(w * p.ratio_crop_pad + 0.5)
  kh, kw = jax.random.split(key)
  return translate(x, _randint(kh, n, siamese, -rh, rh + 1), _randint(kw, n, siamese, -rw, rw + 1))


def _cutout(key: Array, x: Array, p: DSAParams, siamese: bool) -> Array:
  n, h, w, _ = x.shape
  sh, sw = int(h * p.ratio_cutout + 0.5), int(w * p.ratio_cutout + 0.5)
  kh, kw = jax.random.split(key)
  # The reference draws centres in [0, size + (1 - side % 2)).
  ch = _randint(kh, n, siamese, 0, h + (1 - sh % 2))
  cw = _randint(kw, n, siamese, 0, w + (1 - sw % 2))
  return cutout(x, ch, cw, sh, sw)


def _flip(key: Array, x: Array, p: DSAParams, siamese: bool) -> Array:
  u = _uniform(key, x.shape[0], siamese)[:, None, None, None]
  return jnp.where(u < p.prob_flip, x[:, :, ::-1, :], x)


def _scale(key: Array, x: Array, p: DSAParams, siamese: bool) -> Array:
  n = x.shape[0]
  kx, ky = jax.random.split(key)
  r = p.ratio_scale
  sx = _uniform(kx, n, siamese, 1.0 / r, r)
  sy = _uniform(ky, n, siamese, 1.0 / r, r)
  zero = jnp.zeros_like(sx)
  theta = jnp.stack([jnp.stack([sx, zero, zero], -1), jnp.stack([zero, sy, zero], -1)], 1)
  return affine_sample(x, theta, p.align_corners)


def _rotate(key: Array, x: Array, p: DSAParams, siamese: bool) -> Array:
  n = x.shape[0]
  angle = _uniform(key, n, siamese, -p.ratio_rotate, p.ratio_rotate) * (math.pi / 180.0)
  cos, sin, zero = jnp.cos(angle), jnp.sin(angle), jnp.zeros_like(angle)
  theta = jnp.stack([jnp.stack([cos, -sin, zero], -1), jnp.stack([sin, cos, zero], -1)], 1)
  return affine_sample(x, theta, p.align_corners)


_FAMILY_FNS = {"color": _color, "crop": _crop, "cutout": _cutout, "flip": _flip,
               "scale": _scale, "rotate": _rotate}


def apply_family(family: str, key: Array, x: Array, *, siamese: bool = True,
                 params: DSAParams = DSAParams()) -> Array:
  """Applies one named family with parameters drawn from `key`."""
  (family,) = parse_strategy(family)
  return _FAMILY_FNS[family](key, x, params, siamese)


def sample_family(key: Array, strategy: str) -> Array:
  """The index (into `parse_strategy(strategy)`) of the family a call with `key` applies."""
  families = parse_strategy(strategy)
  if not families:
    raise ValueError("sample_family: strategy 'none' has no families.")
  return jax.random.randint(jax.random.fold_in(key, 0), (), 0, len(families))


def dsa(key: Array, x: Array, strategy: str, *, siamese: bool = True,
        params: DSAParams = DSAParams()) -> Array:
  """DiffAugment, aug_mode 'S': one family of `strategy`, drawn from `key`, applied to x.

  The family choice and the parameters depend only on `key` (and, per-sample, on the
  batch position), so `dsa(k, real)` and `dsa(k, syn)` match in Siamese mode.
  """
  families = parse_strategy(strategy)
  if x.ndim != 4:
    raise ValueError(f"DSA expects NHWC images [N, H, W, C], got shape {x.shape}.")
  if not families:
    return x
  param_key = jax.random.fold_in(key, 1)
  branches = [functools.partial(_FAMILY_FNS[f], p=params, siamese=siamese) for f in families]
  if len(branches) == 1:
    return branches[0](param_key, x)
  return jax.lax.switch(sample_family(key, strategy), branches, param_key, x)


def make_augment_fn(strategy: str, *, siamese: bool = False,
                    params: DSAParams = DSAParams()) -> AugmentFn | None:
  """An `(key, x) -> x` hook for `ddjax.train`, or None for strategy 'none'."""
  if not parse_strategy(strategy):
    return None
  return functools.partial(dsa, strategy=strategy, siamese=siamese, params=params)
