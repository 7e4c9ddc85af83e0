"""Influence-function approximations of leave-one-out (Koh & Liang 2017).

Removing training point i from the mean training loss over n points moves the
parameters by about H^-1 g_i / n (one Newton step), so the test loss changes by

    I[i, t] ~ g_t^T (H + damping I)^-1 g_i / n,

with g = per-example loss gradients at the trained parameters and H the Hessian
(or Gauss-Newton matrix) of the mean training loss. The sign matches
`loo.loo_influence` (positive: point i helps test point t). Methods:

* "cg" / "lissa": solve (H + damping I) s_i = g_i for every training point (the
  solves are vmapped), then project: g_t . s_i for every test point is one JVP of
  the per-example test losses along s_i.
* "arnoldi" (Schioppa et al. 2022): the top-k eigenpairs (lambda_j, u_j) of H from
  Lanczos (Arnoldi on a symmetric operator); then g.u_j for every example is one
  JVP per eigenvector, and I = P_train^T diag(1 / (lambda + damping)) P_test / n.
  Eigenpairs with lambda + damping <= 0 are dropped.
* "direct": a dense (H + damping I) and a float64 solve: exact, for small models only.
* "identity": H = I, the plain gradient dot product (a TracIn-like baseline).

Caveats: protocol A stops far from a minimum, so H is
indefinite and the Newton-step model is rough; influence functions then
approximate the proximal Bregman response rather than leave-one-out (Bae et al.
2022). Compare against the exact LOO with `compare.compare_influence`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ddjax import curvature
from ddjax.errors import ConfigError

__all__ = ["CURVATURES", "METHODS", "InfluenceResult", "influence_functions",
           "per_example_grads", "project_gradients"]

PyTree = Any
METHODS = ("cg", "lissa", "arnoldi", "direct", "identity")
CURVATURES = ("hessian", "ggn")


def _split(variables: dict) -> tuple[PyTree, dict]:
  variables = dict(variables)
  return variables.pop("params"), variables


def _losses(model, params, model_state, x, y):
  outputs = curvature.model_outputs(model, params, model_state, x)
  return curvature.cross_entropy_losses(outputs, y)


@functools.partial(jax.jit, static_argnames=("model", "chunk_size"))
def per_example_grads(model, variables: dict, x, y, *, chunk_size: int | None = None) -> PyTree:
  """Gradients of each example's loss: a pytree shaped like the params with a leading n.

  All n at once (vmap), or `chunk_size` at a time to bound memory.

  Args:
    model: the flax module (static).
    variables: its flax variables (other collections used in eval mode).
    x: the inputs [n, ...].
    y: the labels.
    chunk_size: examples per vmapped call (None: all).

  Returns:
    The gradients, shaped like the params with a leading n axis.
  """
  params, state = _split(variables)
  grad = jax.grad(lambda p, xi, yi: _losses(model, p, state, xi[None], yi[None])[0])
  one = lambda xy: grad(params, *xy)
  if chunk_size is None:
    return jax.vmap(one)((x, y))
  return jax.lax.map(one, (x, y), batch_size=chunk_size)


@functools.partial(jax.jit, static_argnames=("model", "batch_size"))
def project_gradients(model, variables: dict, x, y, vectors: PyTree, *,
                      batch_size: int | None = None) -> jax.Array:
  """[r, n] matrix of g_x . u for each of the r stacked `vectors` u and example x.

  One forward-mode pass (a JVP of the per-example losses) per vector, over the
  data in batches of `batch_size`.

  Args:
    model: the flax module (static).
    variables: its flax variables.
    x: the inputs [n, ...].
    y: the labels.
    vectors: r parameter-shaped vectors stacked on a leading axis.
    batch_size: examples per JVP (None: all).

  Returns:
    The [r, n] projections.
  """
  params, state = _split(variables)
  batches = curvature.make_batches(x, y, batch_size)

  def one(u):
    def per_batch(batch):
      bx, by, _ = batch
      return jax.jvp(lambda p: _losses(model, p, state, bx, by), (params,), (u,))[1]
    return jax.lax.map(per_batch, batches).reshape(-1)[: x.shape[0]]

  return jax.lax.map(one, vectors)


@dataclasses.dataclass(frozen=True)
class InfluenceResult:
  """An influence approximation (`influence_functions`).

  Attributes:
    influence: [n_rows, n_test] predicted loss change when point i is removed.
    method: the method used.
    info: diagnostics (iterations, residuals, eigenvalues, ...), JSON-ready.
  """
  influence: np.ndarray  # [n_train, n_test], predicted loss change when point i is removed
  method: str
  info: dict


def _operator(curv, model, variables, x, y, batch_size, l2):
  if curv not in CURVATURES:
    raise ConfigError(f"Unknown curvature {curv!r}; expected one of {CURVATURES}.")
  build = curvature.hessian_operator if curv == "hessian" else curvature.gauss_newton_operator
  return build(model, variables, x, y, batch_size=batch_size, l2=l2)


def influence_functions(model, variables: dict, x, y, x_test, y_test, *, method: str = "cg",
                        curvature_kind: str = "hessian", damping: float = 0.01, l2: float = 0.0,
                        key: jax.Array | None = None, cg_maxiter: int = 100,
                        cg_tol: float = 1e-6, lissa_scale: float | None = None,
                        lissa_depth: int = 1000, arnoldi_rank: int = 20,
                        arnoldi_iters: int | None = None, batch_size: int | None = None,
                        eval_batch_size: int = 1000, rows=None) -> InfluenceResult:
  """Predicted leave-one-out influence [n_train, n_test] at the trained `variables`.

  Args:
    model: the flax module.
    variables: its trained flax variables.
    x: the training (distilled) points [n, ...].
    y: their labels.
    x_test: the test inputs.
    y_test: the test labels.
    method: one of METHODS (see module doc).
    curvature_kind: "hessian" or "ggn" (Gauss-Newton, positive semi-definite).
    damping: absolute damping added to the curvature (all methods but "identity").
    l2: the training objective's weight decay (its Hessian l2 * I joins H; the
      test losses and per-example gradients exclude it, as they should).
    key: PRNG key for Lanczos ("arnoldi") and the LiSSA scale estimate.
    cg_maxiter: CG's most products per solve.
    cg_tol: the relative tolerance of CG (and of LiSSA's stopping rule).
    lissa_scale: LiSSA's scale; default 1.5 * (|lambda|_max + damping) from 30
      power iterations, so that the damped spectrum / scale lies in (0, 2).
    lissa_depth: LiSSA's most terms.
    arnoldi_rank, arnoldi_iters: eigenpairs kept, and Lanczos steps (default
      max(3 * rank, 30)).
    batch_size: batch size of the curvature products over the training set.
    eval_batch_size: batch size of the test-set projections.
    rows: indices of the training points whose influence rows are wanted (default
      all); the curvature and the 1/n still use every training point, so each row
      equals that row of the full matrix, at the cost of len(rows) solves.

  Returns:
    The InfluenceResult ([len(rows), n_test]).

  Raises:
    ConfigError: an unknown method or curvature, or (arnoldi) no eigenvalue plus
      damping above 0.
    ValueError: bad rows.
    NonFiniteCurvatureError, LissaDivergedError: a failed curvature product or solve.
  """
  if method not in METHODS:
    raise ConfigError(f"Unknown influence method {method!r}; expected one of {METHODS}.")
  variables = dict(variables)
  x, y, x_test, y_test = map(jnp.asarray, (x, y, x_test, y_test))
  n = x.shape[0]
  key = jax.random.PRNGKey(0) if key is None else key
  eval_batch_size = min(eval_batch_size, x_test.shape[0])
  info: dict = {"method": method, "curvature": curvature_kind, "damping": damping, "l2": l2,
                "num_train": int(n)}
  if rows is None:
    rows = np.arange(n)
  rows = np.asarray(rows, np.int64).reshape(-1)
  if rows.size == 0 or rows.min() < 0 or rows.max() >= n:
    raise ValueError(f"rows must be non-empty indices in [0, {n}), got {rows.tolist()[:10]}.")
  x_rows, y_rows = x[rows], y[rows]
  grads = per_example_grads(model, variables, x_rows, y_rows)
  op = None if method == "identity" else _operator(curvature_kind, model, variables, x, y,
                                                  batch_size, l2)

  if method == "arnoldi":
    eig = curvature.lanczos_topk(op, key, arnoldi_rank, num_iters=arnoldi_iters)
    keep = eig.eigenvalues + damping > 0
    if not np.any(keep):
      raise ConfigError(f"No eigenvalue plus damping ({damping}) is positive among the top "
                        f"{arnoldi_rank}; raise the damping.")
    vectors = jax.tree_util.tree_map(lambda a: a[np.flatnonzero(keep)], eig.eigenvectors)
    p_train = np.asarray(project_gradients(model, variables, x_rows, y_rows, vectors),
                         np.float64)
    p_test = np.asarray(project_gradients(model, variables, x_test, y_test, vectors,
                                          batch_size=eval_batch_size), np.float64)
    inv = 1.0 / (eig.eigenvalues[keep] + damping)
    influence = (p_train.T * inv) @ p_test / n
    info.update(eigenvalues=eig.eigenvalues.tolist(), kept=int(keep.sum()),
                ritz_residuals=eig.residuals.tolist())
    return InfluenceResult(influence, method, info)

  if method == "identity":
    solutions = grads
  elif method == "direct":
    dense = np.asarray(curvature.dense_matrix(op), np.float64)
    flat_g = np.asarray(jax.vmap(lambda g: ravel_pytree(g)[0])(grads), np.float64)
    sol = np.linalg.solve(dense + damping * np.eye(dense.shape[0]), flat_g.T).T
    _, unravel = ravel_pytree(op.primal)
    solutions = jax.vmap(unravel)(jnp.asarray(sol, op.dtype))
    info["min_eigenvalue"] = float(np.linalg.eigvalsh(dense).min())
  elif method == "cg":
    res = curvature.solve(op, grads, method="cg", damping=damping, batched=True,
                          maxiter=cg_maxiter, tol=cg_tol)
    solutions = res.x
    info.update(iterations=np.asarray(res.num_iters).tolist(),
                converged=int(np.sum(np.asarray(res.converged))),
                negative_curvature=int(np.sum(np.asarray(res.negative_curvature))),
                relative_residual=np.asarray(res.residual_norm / res.rhs_norm).tolist())
  else:  # lissa
    if lissa_scale is None:
      top = curvature.power_iteration(op, key, k=1, max_iters=30)
      lissa_scale = 1.5 * (abs(float(top.eigenvalues[0])) + damping)
      info["lambda_max_estimate"] = float(top.eigenvalues[0])
    res = curvature.solve(op, grads, method="lissa", damping=damping, scale=lissa_scale,
                          batched=True, depth=lissa_depth, tol=cg_tol)
    solutions = res.x
    info.update(scale=lissa_scale, iterations=np.asarray(res.num_iters).tolist(),
                relative_residual=np.asarray(res.residual_norm / res.rhs_norm).tolist())

  proj = project_gradients(model, variables, x_test, y_test, solutions, batch_size=eval_batch_size)
  influence = np.asarray(proj, np.float64) / n
  if not np.all(np.isfinite(influence)):
    raise curvature.NonFiniteCurvatureError(f"Influence ({method}) is not finite.")
  return InfluenceResult(influence, method, info)
