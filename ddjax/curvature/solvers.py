"""Inverse curvature-vector products (A + damping I)^-1 b, matrix-free.

* `cg`: conjugate gradient. Needs A + damping I positive definite; it stops at the
  first direction of non-positive curvature (flagged `negative_curvature`) instead
  of returning a solution dominated by it.
* `lissa`: the truncated Neumann series of LiSSA (Agarwal et al. 2017, Koh & Liang
  2017), y <- b + y - (A + damping I) y / scale, x = y / scale.

Damping is **absolute** in both: the value is added to every eigenvalue of A.
(Koh & Liang's and jax-influence's LiSSA add scale * damping; to reproduce their
damping d at scale s, pass damping = s * d.)

LiSSA converges iff every eigenvalue of (A + damping I) / scale lies in (0, 2):
choose scale above (lambda_max + damping) / 2, and damping above -lambda_min.
Divergence is detected exactly: if the spectrum lies in [0, 2], each term of the
series has norm <= |b|, so |y_t| <= (t + 1) |b|; a larger iterate (by the factor
`growth_limit`) or a NaN proves divergence, stops the loop and sets `diverged`.

Both solvers are pure and jittable, take pytrees shaped like the operator's
domain, and vmap over right-hand sides (`solve(..., batched=True)`). `solve` is the
host-side entry point: it jits, then raises `LissaDivergedError` or
`NonFiniteCurvatureError` with the numbers that explain the failure.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ddjax.curvature.operators import LinearOperator, NonFiniteCurvatureError
from ddjax.errors import ConfigError, DdjaxError

__all__ = ["SOLVERS", "LissaDivergedError", "SolveResult", "cg", "check_solution", "lissa", "solve"]

PyTree = Any
SOLVERS = ("cg", "lissa")


class LissaDivergedError(FloatingPointError, DdjaxError):
  """The LiSSA iterate grew beyond what a convergent series allows (or became NaN)."""


class SolveResult(NamedTuple):
  """The outcome of `cg`, `lissa` or `solve` (with `solve(..., batched=True)` every
  field has a leading right-hand-side axis).

  Attributes:
    x: the solution, shaped like the right-hand side.
    num_iters: the products the iteration used.
    residual_norm: |b - (A + damping I) x|.
    rhs_norm: |b|.
    converged: the tolerance was met.
    negative_curvature: cg met p^T A p <= 0.
    diverged: LiSSA's divergence test fired.
  """
  x: PyTree                     # the solution, shaped like the right-hand side
  num_iters: jax.Array          # products used by the iteration
  residual_norm: jax.Array      # |b - (A + damping I) x|
  rhs_norm: jax.Array           # |b|
  converged: jax.Array          # bool: the tolerance was met
  negative_curvature: jax.Array  # cg: hit p^T A p <= 0
  diverged: jax.Array           # lissa: the divergence test fired


def _flat_system(op: LinearOperator, b: PyTree, damping):
  flat_b, unravel = ravel_pytree(b)

  def matvec(x):
    return ravel_pytree(op(unravel(x)))[0] + damping * x

  return matvec, flat_b, unravel


def cg(op: LinearOperator, b: PyTree, *, damping: float | jax.Array = 0.0, tol: float = 1e-6,
       atol: float = 0.0, maxiter: int = 100) -> SolveResult:
  """Conjugate gradient for (A + damping I) x = b from x = 0.

  Stops when |r| <= max(tol |b|, atol), after `maxiter` products, or on
  non-positive curvature p^T A p <= 0 (then x is the last iterate, not a solution).

  Args:
    op: the operator A.
    b: the right-hand side, a pytree shaped like the operator's domain.
    damping: added to every eigenvalue of A.
    tol: the relative residual tolerance.
    atol: the absolute residual tolerance.
    maxiter: the most products.

  Returns:
    The SolveResult (device arrays; jittable, no checks).
  """
  matvec, b, unravel = _flat_system(op, b, damping)
  bnorm = jnp.linalg.norm(b)
  target = jnp.maximum(tol * bnorm, atol)
  # r = b - A x with x = 0.
  init = (jnp.zeros_like(b), b, b, jnp.vdot(b, b), jnp.asarray(0), jnp.asarray(False))

  def cond(state):
    _, _, _, rr, i, neg = state
    return (jnp.sqrt(rr) > target) & (i < maxiter) & ~neg

  def body(state):
    x, r, p, rr, i, _ = state
    ap = matvec(p)
    pap = jnp.vdot(p, ap)
    neg = pap <= 0
    alpha = jnp.where(neg, 0.0, rr / jnp.where(neg, 1.0, pap))
    x = x + alpha * p
    r = r - alpha * ap
    rr_new = jnp.vdot(r, r)
    p = r + (rr_new / rr) * p
    return x, r, p, jnp.where(neg, rr, rr_new), i + 1, neg

  x, _, _, rr, iters, neg = jax.lax.while_loop(cond, body, init)
  residual = jnp.linalg.norm(b - matvec(x))  # the true residual, not the recursive one
  return SolveResult(unravel(x), iters, residual, bnorm, jnp.sqrt(rr) <= target, neg,
                     jnp.asarray(False))


def lissa(op: LinearOperator, b: PyTree, *, scale: float | jax.Array,
          damping: float | jax.Array = 0.0, depth: int = 1000, tol: float = 1e-6,
          growth_limit: float = 1.5) -> SolveResult:
  """LiSSA for (A + damping I) x = b: at most `depth` products.

  Stops early once the series' last term is below `tol` times the iterate
  (|y_t - y_{t-1}| <= tol |y_t|), or when divergence is detected (see module doc).

  Args:
    op: the operator A.
    b: the right-hand side, a pytree shaped like the operator's domain.
    scale: the series' scale, above (lambda_max + damping) / 2.
    damping: added to every eigenvalue of A.
    depth: the most terms (products).
    tol: the relative size of the last term that stops the series.
    growth_limit: the factor over the convergent bound that counts as divergence.

  Returns:
    The SolveResult (device arrays; jittable, no checks).
  """
  matvec, b, unravel = _flat_system(op, b, damping)
  bnorm = jnp.linalg.norm(b)

  def cond(state):
    _, t, step, ynorm, diverged = state
    return (t < depth) & ~diverged & (step > tol * ynorm)

  def body(state):
    y, t, _, _, _ = state
    y_new = b + y - matvec(y) / scale
    ynorm = jnp.linalg.norm(y_new)
    diverged = ~jnp.isfinite(ynorm) | (ynorm > growth_limit * (t + 2) * bnorm)
    return y_new, t + 1, jnp.linalg.norm(y_new - y), ynorm, diverged

  init = (b, jnp.asarray(0), jnp.asarray(jnp.inf, b.dtype), bnorm, jnp.asarray(False))
  y, iters, step, ynorm, diverged = jax.lax.while_loop(cond, body, init)
  x = y / scale
  residual = jnp.linalg.norm(b - matvec(x))
  return SolveResult(unravel(x), iters, residual, bnorm, ~diverged & (step <= tol * ynorm),
                     jnp.asarray(False), diverged)


@functools.partial(jax.jit, static_argnames=("method", "batched", "maxiter", "depth", "tol",
                                             "atol", "growth_limit"))
def _solve(op, b, damping, scale, *, method, batched, maxiter, depth, tol, atol, growth_limit):
  if method == "cg":
    fn = lambda rhs: cg(op, rhs, damping=damping, tol=tol, atol=atol, maxiter=maxiter)
  else:
    fn = lambda rhs: lissa(op, rhs, scale=scale, damping=damping, depth=depth, tol=tol,
                           growth_limit=growth_limit)
  return jax.vmap(fn)(b) if batched else fn(b)


def check_solution(result: SolveResult, method: str, *, scale: float | None = None,
                   damping: float = 0.0) -> None:
  """Raises LissaDivergedError / NonFiniteCurvatureError for a failed solve.

  Args:
    result: the SolveResult (single or batched).
    method: the solver's name, for the message.
    scale: LiSSA's scale, for the message.
    damping: the damping, for the message.

  Raises:
    LissaDivergedError: a right-hand side diverged.
    NonFiniteCurvatureError: the solution holds NaN/inf.
  """
  diverged = np.asarray(result.diverged)
  if np.any(diverged):
    which = np.flatnonzero(np.atleast_1d(diverged))
    iters = np.atleast_1d(np.asarray(result.num_iters))[which]
    raise LissaDivergedError(
        f"LiSSA diverged for {which.size} right-hand side(s) (first: #{int(which[0])}, after "
        f"{int(iters[0])} steps) with scale={scale} and damping={damping}: some eigenvalue of "
        "(A + damping I) / scale lies outside (0, 2). Raise scale above (lambda_max + damping) "
        "/ 2 (power_iteration gives lambda_max), or raise damping above -lambda_min.")
  leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(result.x)]
  if not all(np.all(np.isfinite(x)) for x in leaves):
    raise NonFiniteCurvatureError(
        f"{method} returned NaN/inf: the curvature product is not finite. Check the "
        "parameters, data and loss.")


def solve(op: LinearOperator, b: PyTree, *, method: str = "cg", damping: float = 0.0,
          scale: float | None = None, batched: bool = False, maxiter: int = 100,
          depth: int = 1000, tol: float = 1e-6, atol: float = 0.0,
          growth_limit: float = 1.5) -> SolveResult:
  """Solves (A + damping I) x = b with `method` ("cg" or "lissa"), jitted.

  Args:
    op: the operator A.
    b: the right-hand side, a pytree shaped like the operator's domain.
    method: "cg" or "lissa".
    damping: added to every eigenvalue of A.
    scale: LiSSA's scale (required for "lissa").
    batched: treat the leading axis of b's leaves as independent right-hand sides
      (vmapped).
    maxiter: cg's most products.
    depth: LiSSA's most products.
    tol: the relative tolerance (see `cg`, `lissa`).
    atol: cg's absolute tolerance.
    growth_limit: LiSSA's divergence factor.

  Returns:
    The SolveResult.

  Raises:
    ConfigError: an unknown method, or LiSSA without a positive scale.
    LissaDivergedError: LiSSA diverged.
    NonFiniteCurvatureError: the solution holds NaN/inf.
  """
  if method not in SOLVERS:
    raise ConfigError(f"Unknown solver {method!r}; expected one of {SOLVERS}.")
  if method == "lissa" and (scale is None or not scale > 0):
    raise ConfigError(f"LiSSA needs a positive scale above (lambda_max + damping) / 2; got {scale}.")
  dtype = op.dtype
  result = _solve(op, b, jnp.asarray(damping, dtype), jnp.asarray(scale or 1.0, dtype),
                  method=method, batched=batched, maxiter=int(maxiter), depth=int(depth),
                  tol=float(tol), atol=float(atol), growth_limit=float(growth_limit))
  check_solution(result, method, scale=scale, damping=damping)
  return result
