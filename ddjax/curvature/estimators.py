"""Spectral estimators that see a curvature operator only through its products.

* `hutchinson_trace`: tr(A) from Rademacher probes z^T A z (vmapped in blocks),
  with PyHessian's stopping rule (the paper's Hessian-trace setting, section 4.3) or
  a fixed probe count,
  and a standard error.
* `power_iteration`: top-k eigenpairs by |lambda|, deflated by orthogonalisation
  against the pairs already found (PyHessian's `eigenvalues`).
* `lanczos` / `lanczos_topk`: Lanczos with full reorthogonalisation (two classical
  Gram-Schmidt passes against the stored basis; without it converged eigenvalues
  come back as "ghost" copies), and Ritz pairs.
* `slq`: stochastic Lanczos quadrature (Ghorbani et al. 2019): per-probe Gauss
  quadrature nodes and weights of the spectral density, its moments and a
  Gaussian-smoothed density.

Probe i always uses `fold_in(key, i)`, so the result does not depend on how many
probes run at once. Loops are `lax.while_loop` / `fori_loop` / `scan` inside one
jit; the small tridiagonal eigenproblems are solved on the host in float64. Each
public function checks the products for NaN/inf and raises
`NonFiniteCurvatureError` naming the problem.

Lanczos breakdown: when a new residual is below `100 eps` times the operator's
scale, the Krylov space is invariant; the next basis vector is then a fresh random
one orthogonal to the basis and the coupling beta is set to 0 (T becomes block
diagonal). Ritz values stay exact, and SLQ weights of the new block are zero, as
they should be.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from jax.flatten_util import ravel_pytree

from ddjax import parallel
from ddjax.curvature.operators import LinearOperator, NonFiniteCurvatureError, flatten
from ddjax.errors import ConfigError

__all__ = [
    "Eigenpairs", "LanczosResult", "SpectralDensity", "TraceEstimate", "hutchinson_samples",
    "hutchinson_trace", "lanczos", "lanczos_topk", "power_iteration", "slq", "tridiagonal_eigh",
]

PyTree = Any
_HIGHEST = jax.lax.Precision.HIGHEST


def _dot(a, b):
  return jnp.dot(a, b, precision=_HIGHEST)


def _orthogonalize(w: jax.Array, basis: jax.Array) -> jax.Array:
  """w minus its projection on the rows of `basis` (zero rows are inert); twice."""
  for _ in range(2):  # "twice is enough" (Kahan-Parlett)
    w = w - _dot(_dot(basis, w), basis)
  return w


@jax.jit
def _unravel_rows(rows: jax.Array, primal: PyTree) -> PyTree:
  """[k, p] flat rows -> a pytree shaped like `primal` with a leading k axis."""
  _, unravel = ravel_pytree(primal)
  return jax.vmap(unravel)(rows)


# ----------------------------------------------------------------------------- Hutchinson


@dataclasses.dataclass(frozen=True)
class TraceEstimate:
  """A Hutchinson trace estimate (`hutchinson_trace`).

  Attributes:
    trace: the mean of the probe samples.
    stderr: std(samples, ddof=1) / sqrt(num_probes); nan for one probe.
    num_probes: the probes taken.
    samples: z_i^T A z_i, in probe order, float64 [num_probes].
    stopped_by_tol: the relative-tolerance rule fired before max_probes.
  """

  trace: float          # mean of the probe samples
  stderr: float         # std(samples, ddof=1) / sqrt(num_probes); nan for one probe
  num_probes: int
  samples: np.ndarray   # z_i^T A z_i, in probe order
  stopped_by_tol: bool  # the relative-tolerance rule fired before max_probes

  def to_dict(self) -> dict:
    """The estimate as JSON-ready values.

    Returns:
      {'trace', 'stderr', 'num_probes', 'stopped_by_tol', 'samples' (a list)}.
    """
    return {"trace": self.trace, "stderr": self.stderr, "num_probes": self.num_probes,
            "stopped_by_tol": self.stopped_by_tol, "samples": self.samples.tolist()}


def hutchinson_samples(op: LinearOperator, key: jax.Array, *, max_probes: int,
                       tol: float | None, probe_batch: int = 1,
                       mesh=None) -> tuple[jax.Array, jax.Array]:
  """Jittable core of `hutchinson_trace`: (samples [>= max_probes], count).

  With `tol=None` all `max_probes` probes are taken. Otherwise PyHessian's rule:
  stop after the first probe k with |m_k - m_{k-1}| / (|m_{k-1}| + 1e-6) < tol,
  where m_k is the mean of the first k samples and m_0 = 0. Probes run
  `probe_batch` at a time (vmapped); the rule is applied probe by probe, so the
  count is the one a sequential loop would stop at.

  `mesh` (a `jax.sharding.Mesh`, or "auto") splits every block of probes over its
  devices; the block is rounded up to a multiple of the device count. Probe i is
  still `fold_in(key, i)`, so the samples and the count are those of one device.

  Args:
    op: the operator.
    key: the PRNG key; probe i uses fold_in(key, i).
    max_probes: the most probes taken.
    tol: the relative tolerance of the stopping rule; None takes all max_probes.
    probe_batch: probes vmapped together.
    mesh: a Mesh, None or "auto".

  Returns:
    (samples [>= max_probes], the number of valid leading samples): device arrays.
  """
  mesh = parallel.resolve_mesh(mesh)
  if mesh is not None:
    probe_batch = parallel.round_up(probe_batch, mesh.devices.size)
  return _hutchinson_samples(op, key, max_probes=max_probes, tol=tol, probe_batch=probe_batch,
                             mesh=mesh)


@functools.partial(jax.jit, static_argnames=("max_probes", "tol", "probe_batch", "mesh"))
def _hutchinson_samples(op: LinearOperator, key: jax.Array, *, max_probes: int,
                        tol: float | None, probe_batch: int, mesh) -> tuple[jax.Array, jax.Array]:
  matvec, flat, _ = flatten(op)
  num_blocks = -(-max_probes // probe_batch)

  def sample(i):
    z = jax.random.rademacher(jax.random.fold_in(key, i), flat.shape, flat.dtype)
    return jnp.vdot(z, matvec(z))

  def block(block_ids):
    return jax.vmap(sample)(parallel.shard_axis(block_ids, 0, mesh))
  ids = jnp.arange(num_blocks * probe_batch).reshape(num_blocks, probe_batch)
  if tol is None:
    samples = jax.lax.map(block, ids).reshape(-1)
    return samples, jnp.asarray(max_probes, jnp.int32)

  k = jnp.arange(1, num_blocks * probe_batch + 1)

  def cond(state):
    b, _, count = state
    return (count == 0) & (b < num_blocks)

  def body(state):
    b, buf, _ = state
    buf = jax.lax.dynamic_update_slice(buf, block(ids[b]), (b * probe_batch,))
    means = jnp.cumsum(buf) / k
    prev = jnp.concatenate([jnp.zeros((1,), means.dtype), means[:-1]])
    valid = k <= jnp.minimum((b + 1) * probe_batch, max_probes)
    hit = valid & (jnp.abs(means - prev) / (jnp.abs(prev) + 1e-6) < tol)
    count = jnp.where(jnp.any(hit), jnp.argmax(hit) + 1, 0).astype(jnp.int32)
    return b + 1, buf, count

  buf = jnp.zeros((num_blocks * probe_batch,), flat.dtype)
  _, buf, count = jax.lax.while_loop(cond, body, (jnp.asarray(0), buf, jnp.asarray(0, jnp.int32)))
  return buf, jnp.where(count == 0, max_probes, count)


def hutchinson_trace(op: LinearOperator, key: jax.Array, *, num_probes: int | None = None,
                     max_probes: int = 100, tol: float = 1e-3,
                     probe_batch: int = 1, mesh=None) -> TraceEstimate:
  """Hutchinson estimate of tr(A) with Rademacher probes.

  `num_probes` fixes the count; otherwise PyHessian's relative-tolerance rule
  (defaults tol=1e-3, at most 100 probes: the paper's setting). Each probe costs
  one product; `probe_batch` probes are vmapped together (more memory, better
  throughput on accelerators). `mesh` splits each block of probes over devices
  (see `hutchinson_samples`); the estimate is the single-device one.

  Args:
    op: the operator.
    key: the PRNG key; probe i uses fold_in(key, i).
    num_probes: a fixed probe count (a multiple of probe_batch); None applies the
      tolerance rule.
    max_probes: the most probes under the tolerance rule.
    tol: the rule's relative tolerance.
    probe_batch: probes vmapped together.
    mesh: a Mesh, None or "auto".

  Returns:
    The TraceEstimate.

  Raises:
    ConfigError: a probe count or probe_batch below 1, num_probes not a multiple of
      probe_batch, or a non-positive tol.
    NonFiniteCurvatureError: a probe sample is NaN/inf.
  """
  fixed = num_probes is not None
  count = num_probes if fixed else max_probes
  if count < 1 or probe_batch < 1:
    raise ConfigError(f"Need at least one probe and probe_batch >= 1 (got {count}, {probe_batch}).")
  if fixed and num_probes % probe_batch:
    raise ConfigError(f"num_probes={num_probes} must be a multiple of probe_batch={probe_batch}.")
  if not fixed and not tol > 0:
    raise ConfigError(f"tol must be positive, got {tol}; pass num_probes for a fixed count.")
  samples, used = hutchinson_samples(op, key, max_probes=count, tol=None if fixed else float(tol),
                                     probe_batch=probe_batch, mesh=mesh)
  used = int(used)
  samples = np.asarray(samples, np.float64)[:used]
  bad = np.flatnonzero(~np.isfinite(samples))
  if bad.size:
    raise NonFiniteCurvatureError(
        f"Hutchinson probe {int(bad[0])} gave z^T H z = {samples[bad[0]]}: the Hessian-vector "
        "product is not finite. Check that the parameters, data and loss are finite.")
  stderr = float(samples.std(ddof=1) / np.sqrt(used)) if used > 1 else float("nan")
  stopped = not fixed and (used < max_probes or _rule_fires(samples, tol))
  return TraceEstimate(float(samples.mean()), stderr, used, samples, stopped)


def _rule_fires(samples: np.ndarray, tol: float) -> bool:
  means = np.cumsum(samples) / np.arange(1, samples.size + 1)
  prev = np.concatenate([[0.0], means[:-1]])
  return bool(np.abs(means[-1] - prev[-1]) / (abs(prev[-1]) + 1e-6) < tol)


# ----------------------------------------------------------------------------- power iteration


class Eigenpairs(NamedTuple):
  """Eigenpairs of an operator (`power_iteration`, `lanczos_topk`).

  Attributes:
    eigenvalues: float64 [k].
    eigenvectors: unit eigenvectors shaped like the operator's domain, with a leading
      k axis.
    residuals: [k] |A u - lambda u| (power) or the Lanczos estimate |beta_m s_m|.
    num_iters: [k] products spent per eigenvalue (power) or in total (Lanczos).
    converged: bool [k].
  """
  eigenvalues: np.ndarray    # float64 [k]
  eigenvectors: PyTree       # shaped like the operator's domain, with a leading k axis
  residuals: np.ndarray      # |A u - lambda u| (power) or the Lanczos estimate |beta_m s_m|
  num_iters: np.ndarray      # products spent per eigenvalue (power) or in total (Lanczos)
  converged: np.ndarray      # bool [k]


@functools.partial(jax.jit, static_argnames=("k", "max_iters", "tol"))
def _power(op: LinearOperator, key, *, k: int, max_iters: int, tol: float):
  matvec, flat, _ = flatten(op)
  p = flat.size

  def one(basis, j):
    v = jax.random.normal(jax.random.fold_in(key, j), (p,), flat.dtype)

    def cond(state):
      i, _, _, done = state
      return (i < max_iters) & ~done

    def body(state):
      i, v, lam, _ = state
      v = _orthogonalize(v, basis)
      v = v / jnp.linalg.norm(v)
      hv = matvec(v)
      new = jnp.vdot(v, hv)
      done = (i > 0) & (jnp.abs(new - lam) / (jnp.abs(lam) + 1e-6) < tol)
      return i + 1, hv / jnp.linalg.norm(hv), new, done

    init = (jnp.asarray(0), v, jnp.asarray(0.0, flat.dtype), jnp.asarray(False))
    iters, v, lam, done = jax.lax.while_loop(cond, body, init)
    v = _orthogonalize(v, basis)
    v = v / jnp.linalg.norm(v)
    hv = matvec(v)  # one more product: a Rayleigh quotient and residual of the stored vector
    lam = jnp.vdot(v, hv)
    residual = jnp.linalg.norm(hv - lam * v)
    return basis.at[j].set(v), (lam, residual, iters + 1, done)

  basis, out = jax.lax.scan(one, jnp.zeros((k, p), flat.dtype), jnp.arange(k))
  return basis, out


def power_iteration(op: LinearOperator, key: jax.Array, *, k: int = 1, max_iters: int = 100,
                    tol: float = 1e-3) -> Eigenpairs:
  """Top-k eigenpairs by magnitude (PyHessian's `eigenvalues(top_n=k)`).

  Eigenvalue j iterates v <- A v / |A v| on the orthogonal complement of the
  first j eigenvectors until the Rayleigh quotient changes by less than `tol`
  (relative) or `max_iters`. Converges slowly when |lambda_j| ~ |lambda_{j+1}|;
  prefer `lanczos_topk`.

  Args:
    op: the operator.
    key: the PRNG key of the start vectors.
    k: the number of eigenpairs.
    max_iters: the most iterations per eigenvalue.
    tol: the relative change of the Rayleigh quotient that stops an eigenvalue.

  Returns:
    The Eigenpairs, in the order found (decreasing |lambda| when converged).

  Raises:
    ConfigError: k outside [1, dimension].
    NonFiniteCurvatureError: the products gave NaN/inf.
  """
  if k < 1 or k > op.size:
    raise ConfigError(f"k must be in [1, {op.size}], got {k}.")
  basis, (lams, residuals, iters, done) = _power(op, key, k=k, max_iters=max_iters, tol=float(tol))
  lams = np.asarray(lams, np.float64)
  if not np.all(np.isfinite(lams)) or not np.all(np.isfinite(np.asarray(basis))):
    raise NonFiniteCurvatureError("Power iteration produced NaN/inf: the Hessian-vector product "
                                  "is not finite. Check the parameters, data and loss.")
  return Eigenpairs(lams, _unravel_rows(basis, op.primal), np.asarray(residuals, np.float64),
                    np.asarray(iters), np.asarray(done))


# ----------------------------------------------------------------------------- Lanczos


class LanczosResult(NamedTuple):
  """The Lanczos tridiagonal T and basis (`lanczos`).

  Attributes:
    alphas: [m] the diagonal of T.
    betas: [m] the off-diagonal of T (betas[:m-1]); betas[m-1] is the residual norm.
    basis: [m, p] the orthonormal Lanczos vectors, flat.
    num_breakdowns: the number of restarts after an invariant subspace.
  """
  alphas: jax.Array        # [m] diagonal of T
  betas: jax.Array         # [m] off-diagonal of T (betas[:m-1]); betas[m-1] is the residual norm
  basis: jax.Array         # [m, p] orthonormal Lanczos vectors (flat)
  num_breakdowns: jax.Array


def _lanczos_flat(matvec, v0: jax.Array, key: jax.Array, num_iters: int,
                  reorthogonalize: bool) -> LanczosResult:
  p, dtype = v0.size, v0.dtype
  eps = 100 * jnp.finfo(dtype).eps
  # m + 1 rows so that writing row j + 1 at the last step stays in bounds (JAX would clamp).
  basis = jnp.zeros((num_iters + 1, p), dtype).at[0].set(v0 / jnp.linalg.norm(v0))

  def body(j, carry):
    basis, alphas, betas, beta_prev, scale, breakdowns = carry
    v = basis[j]
    w = matvec(v)
    scale = jnp.maximum(scale, jnp.linalg.norm(w))
    alpha = jnp.vdot(v, w)
    w = w - alpha * v - beta_prev * basis[jnp.maximum(j - 1, 0)]  # beta_prev = 0 at j = 0
    if reorthogonalize:
      w = _orthogonalize(w, basis)
    beta = jnp.linalg.norm(w)
    breakdown = beta <= eps * scale

    def restart(_):
      r = jax.random.normal(jax.random.fold_in(key, j), (p,), dtype)
      r = _orthogonalize(r, basis)
      return r / jnp.linalg.norm(r), jnp.zeros((), dtype)

    def proceed(_):
      return w / beta, beta

    v_next, beta = jax.lax.cond(breakdown, restart, proceed, None)
    basis = basis.at[j + 1].set(v_next)
    return (basis, alphas.at[j].set(alpha), betas.at[j].set(beta), beta, scale,
            breakdowns + breakdown.astype(jnp.int32))

  init = (basis, jnp.zeros((num_iters,), dtype), jnp.zeros((num_iters,), dtype),
          jnp.zeros((), dtype), jnp.zeros((), dtype), jnp.asarray(0, jnp.int32))
  basis, alphas, betas, _, _, breakdowns = jax.lax.fori_loop(0, num_iters, body, init)
  return LanczosResult(alphas, betas, basis[:num_iters], breakdowns)


@functools.partial(jax.jit, static_argnames=("num_iters", "reorthogonalize"))
def lanczos(op: LinearOperator, key: jax.Array, num_iters: int, *,
            reorthogonalize: bool = True) -> LanczosResult:
  """`num_iters` Lanczos steps from a normalised Rademacher start vector (jittable).

  Costs num_iters products and O(num_iters * p) memory for the basis; full
  reorthogonalisation adds O(num_iters^2 p) flops.

  Args:
    op: the operator, of dimension p.
    key: the PRNG key of the start vector (and of restarts after a breakdown).
    num_iters: the number of steps m (static).
    reorthogonalize: full reorthogonalisation against the stored basis.

  Returns:
    The LanczosResult (device arrays; T is not checked for NaN here).
  """
  matvec, flat, _ = flatten(op)
  start_key, restart_key = jax.random.split(key)
  v0 = jax.random.rademacher(start_key, flat.shape, flat.dtype)
  return _lanczos_flat(matvec, v0, restart_key, num_iters, reorthogonalize)


def tridiagonal_eigh(alphas, betas) -> tuple[np.ndarray, np.ndarray]:
  """Eigen-decomposition of the Lanczos T (ascending), on the host in float64.

  Args:
    alphas: the diagonal [m].
    betas: the off-diagonal; length m (the last entry, the residual norm, is ignored)
      or m - 1.

  Returns:
    (eigenvalues [m] ascending, eigenvectors [m, m] as columns), float64.

  Raises:
    NonFiniteCurvatureError: T holds NaN/inf.
  """
  a = np.asarray(alphas, np.float64)
  b = np.asarray(betas, np.float64)[: a.size - 1]
  if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
    raise NonFiniteCurvatureError(
        "The Lanczos tridiagonal holds NaN/inf: the Hessian-vector product is not finite. "
        "Check that the parameters, data and loss are finite.")
  if a.size == 1:
    return a.copy(), np.ones((1, 1))
  return scipy.linalg.eigh_tridiagonal(a, b)


_WHICH = ("largest", "smallest", "magnitude")


@jax.jit
def _ritz_vectors(basis: jax.Array, coeffs: jax.Array, primal: PyTree) -> tuple[jax.Array, PyTree]:
  rows = _dot(coeffs.T.astype(basis.dtype), basis)
  return jnp.all(jnp.isfinite(rows)), _unravel_rows(rows, primal)


def lanczos_topk(op: LinearOperator, key: jax.Array, k: int, *, num_iters: int | None = None,
                 which: str = "largest", reorthogonalize: bool = True) -> Eigenpairs:
  """k Ritz pairs from `num_iters` Lanczos steps (default max(3k, 30), capped at p).

  The residual estimate |beta_m s_{m,i}| equals |A u_i - theta_i u_i| in exact
  arithmetic.

  Args:
    op: the operator.
    key: the PRNG key of the start vector.
    k: the number of Ritz pairs.
    num_iters: the Lanczos steps m (default max(3k, 30)), capped at the dimension.
    which: "largest" (algebraic, default), "smallest", or "magnitude".
    reorthogonalize: full reorthogonalisation.

  Returns:
    The Eigenpairs in `which` order; `converged` where the residual estimate is below
    sqrt(eps) times the largest |Ritz value|.

  Raises:
    ConfigError: an unknown `which`, or k outside [1, m].
    NonFiniteCurvatureError: the products gave NaN/inf.
  """
  if which not in _WHICH:
    raise ConfigError(f"Unknown which={which!r}; expected one of {_WHICH}.")
  p = op.size
  m = min(p, num_iters or max(3 * k, 30))
  if not 1 <= k <= m:
    raise ConfigError(f"Need 1 <= k <= num_iters <= dim; got k={k}, num_iters={m}, dim={p}.")
  res = lanczos(op, key, m, reorthogonalize=reorthogonalize)
  theta, s = tridiagonal_eigh(res.alphas, res.betas)
  order = {"largest": np.argsort(-theta), "smallest": np.argsort(theta),
           "magnitude": np.argsort(-np.abs(theta))}[which][:k]
  finite, vectors = _ritz_vectors(res.basis, jnp.asarray(s[:, order]), op.primal)
  residuals = np.abs(float(res.betas[m - 1]) * s[m - 1, order])
  if not bool(finite):
    raise NonFiniteCurvatureError("Lanczos Ritz vectors hold NaN/inf; the product is not finite.")
  tol = np.sqrt(np.finfo(np.dtype(op.dtype)).eps) * max(np.abs(theta).max(), 1e-30)
  return Eigenpairs(theta[order], vectors, residuals, np.full(k, m), residuals <= tol)


# ----------------------------------------------------------------------------- SLQ


@dataclasses.dataclass(frozen=True)
class SpectralDensity:
  """Stochastic Lanczos quadrature: per probe, nodes theta_j and weights w_j with
  sum_j w_j g(theta_j) ~ z^T g(A) z / |z|^2 (exact for polynomials of degree
  < 2 * num_iters); averaged over probes it estimates tr(g(A)) / dim.

  Attributes:
    nodes: float64 [num_probes, num_iters] quadrature nodes (Ritz values).
    weights: float64 [num_probes, num_iters] quadrature weights; each row sums to 1.
    dim: the operator's dimension.
    num_breakdowns: Lanczos breakdowns per probe.
  """
  nodes: np.ndarray     # float64 [num_probes, num_iters]
  weights: np.ndarray   # float64 [num_probes, num_iters], each row sums to 1
  dim: int
  num_breakdowns: np.ndarray

  def moments(self, orders=(1, 2)) -> np.ndarray:
    """Estimates of tr(A^q) / dim for each q in `orders`.

    Args:
      orders: the powers q.

    Returns:
      float64 [len(orders)].
    """
    return np.array([np.mean(np.sum(self.weights * self.nodes ** q, axis=1)) for q in orders])

  @property
  def trace(self) -> float:
    """The SLQ estimate of tr(A): dim times the first moment."""
    return float(self.dim * self.moments((1,))[0])

  def density(self, grid: np.ndarray | None = None, *, num_points: int = 1000,
              sigma: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian-smoothed density on `grid` (default: the node range plus a margin).

    sigma defaults to sqrt(1e-5) times half the spectral range, the spectral-density
    code's sigma^2 = 1e-5 on a spectrum rescaled to [-1, 1]. Integrates to ~1.

    Args:
      grid: the eigenvalue grid; None spans the nodes plus 4 sigma.
      num_points: the default grid's size.
      sigma: the Gaussian's standard deviation (None: the default above).

    Returns:
      (grid [G], density [G]), float64.
    """
    lo, hi = float(self.nodes.min()), float(self.nodes.max())
    half = max((hi - lo) / 2, 1e-12)
    sigma = float(np.sqrt(1e-5) * half) if sigma is None else float(sigma)
    if grid is None:
      grid = np.linspace(lo - 4 * sigma - 0.01 * half, hi + 4 * sigma + 0.01 * half, num_points)
    grid = np.asarray(grid, np.float64)
    z = (grid[:, None, None] - self.nodes[None]) / sigma
    kernel = np.exp(-0.5 * z * z) / (sigma * np.sqrt(2 * np.pi))
    return grid, np.mean(np.sum(self.weights[None] * kernel, axis=2), axis=1)

  def to_dict(self) -> dict:
    """The quadrature as JSON-ready values.

    Returns:
      {'nodes', 'weights', 'dim', 'num_breakdowns'}, arrays as nested lists.
    """
    return {"nodes": self.nodes.tolist(), "weights": self.weights.tolist(), "dim": self.dim,
            "num_breakdowns": self.num_breakdowns.tolist()}


@functools.partial(jax.jit, static_argnames=("num_probes", "num_iters", "probe_batch"))
def _slq(op: LinearOperator, key, *, num_probes: int, num_iters: int, probe_batch: int):
  matvec, flat, _ = flatten(op)

  def one(i):
    k = jax.random.fold_in(key, i)
    v0 = jax.random.rademacher(k, flat.shape, flat.dtype)
    res = _lanczos_flat(matvec, v0, jax.random.fold_in(k, 1), num_iters, True)
    return res.alphas, res.betas, res.num_breakdowns

  ids = jnp.arange(num_probes).reshape(num_probes // probe_batch, probe_batch)
  out = jax.lax.map(jax.vmap(one), ids)  # blocks of probe_batch probes, vmapped
  return jax.tree_util.tree_map(lambda a: a.reshape((num_probes,) + a.shape[2:]), out)


def slq(op: LinearOperator, key: jax.Array, *, num_probes: int = 1, num_iters: int = 90,
        probe_batch: int = 1) -> SpectralDensity:
  """Spectral density by stochastic Lanczos quadrature: num_probes * num_iters products.

  Probes run sequentially unless `probe_batch` > 1 (memory grows as
  probe_batch * num_iters * p for the bases).

  Args:
    op: the operator, of dimension p.
    key: the PRNG key; probe i uses fold_in(key, i).
    num_probes: Rademacher start vectors (a multiple of probe_batch).
    num_iters: Lanczos steps per probe, in [1, p].
    probe_batch: probes vmapped together.

  Returns:
    The SpectralDensity.

  Raises:
    ConfigError: num_iters outside [1, p], or bad probe counts.
    NonFiniteCurvatureError: the products gave NaN/inf.
  """
  p = op.size
  if not 1 <= num_iters <= p:
    raise ConfigError(f"num_iters must be in [1, {p}], got {num_iters}.")
  if num_probes < 1 or probe_batch < 1 or num_probes % probe_batch:
    raise ConfigError(f"num_probes ({num_probes}) must be a positive multiple of probe_batch "
                      f"({probe_batch}).")
  alphas, betas, breakdowns = _slq(op, key, num_probes=num_probes, num_iters=num_iters,
                                   probe_batch=probe_batch)
  nodes, weights = [], []
  for a, b in zip(np.asarray(alphas), np.asarray(betas)):
    theta, s = tridiagonal_eigh(a, b)
    nodes.append(theta)
    weights.append(s[0] ** 2)
  return SpectralDensity(np.stack(nodes), np.stack(weights), p, np.asarray(breakdowns))
