"""Curvature operators: pure, jit-able matrix-vector products over parameter pytrees.

An operator is a `LinearOperator`: a pytree whose leaves are the arrays it uses
(the linearisation point, the data, a damping constant) and whose static part is
the function applying it. Algorithms (`ddjax.curvature.estimators`,
`ddjax.curvature.solvers`) take an operator as an ordinary jit argument, so the
data is never baked into a compiled program as a constant, and two operators with
equal static parts (the same model, loss and options) share one compilation.

Operators built from a model (`hessian_operator`, `gauss_newton_operator`) are the
curvature of the weighted-mean loss

    L(theta) = sum_i w_i l(f(theta, x_i), y_i) / sum_i w_i  +  l2/2 * |theta|^2

over a whole dataset. The data is cut into fixed-size batches (the last one padded
with weight-0 examples) and the per-batch products are summed by a `lax.scan`,
each batch's loss already divided by the *total* weight, so the result is the
exact full-dataset product whatever the batch size (PyHessian's size-weighted
batch average, without its uneven-last-batch bias).

Batch norm. By default (`batch_stats="running"`) the model runs in eval mode with
its stored running statistics, as PyHessian does (`model.eval()`); this operator is
a sum over examples, so batching does not change it. `batch_stats="batch"`
normalises with each batch's own statistics instead: the loss then couples the
examples of a batch, the operator depends on the batch size (it is the mean of
per-batch Hessians, not the full-batch Hessian), and padding would change the
statistics, so the data must split into equal batches. In both modes the updated
statistics are discarded: an HVP never writes running averages back.

Devices. `mesh=` (a `jax.sharding.Mesh`, or "auto" for every local device) splits the
batches over the mesh's devices: each device scans its share, keeping its own partial
sum, and the partial sums are added at the end (`ddjax.parallel.sharded_scan_sum`). The
batch count is padded to a multiple of the device count with weight-0 batches, so the
product is the same up to float rounding. The default (None) is the single scan.

Precision. `precision=None` keeps JAX's default matmul precision, which is TF32
for float32 on recent NVIDIA GPUs; "highest" forces full float32 (or float64)
matmuls inside the operator. CPUs compute float32 exactly either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
from typing import Any, Callable, NamedTuple, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from ddjax import parallel
from ddjax.errors import ConfigError, DdjaxError

__all__ = [
    "BATCH_STATS_MODES", "Batches", "LinearOperator", "NonFiniteCurvatureError", "PRECISIONS",
    "Subset", "check_finite", "cross_entropy_losses", "damped", "dense_matrix", "dense_operator",
    "flatten", "gauss_newton_operator", "hessian_operator", "layer_groups", "loss_hessian_operator",
    "make_batches", "merge_params", "model_outputs", "param_paths", "resolve_subset",
    "select_params",
]

PyTree = Any
LossFn = Callable[[jax.Array, jax.Array], jax.Array]  # (outputs [b, ...], labels [b, ...]) -> [b]
Subset = str | Sequence[str] | Callable[[str], bool] | None

BATCH_STATS_MODES = ("running", "batch")
PRECISIONS = (None, "default", "high", "highest", "bfloat16", "tensorfloat32", "float32")


class NonFiniteCurvatureError(FloatingPointError, DdjaxError):
  """A curvature product (or a quantity computed from it) is NaN or infinite."""


# ----------------------------------------------------------------------------- the operator type


@flax.struct.dataclass
class LinearOperator:
  """A symmetric linear map `v -> A v` on pytrees shaped like `primal`.

  `fn(primal, args, v)` is static (hashable; equal functions share compiled code);
  `primal` (the point the curvature is taken at, or any array of the domain's
  shape) and `args` are traced.

  Attributes:
    fn: (primal, args, v) -> A v, static.
    primal: a pytree of the domain's shape (the linearisation point).
    args: the traced arrays `fn` uses (data, damping, ...).
  """

  fn: Callable[[PyTree, PyTree, PyTree], PyTree] = flax.struct.field(pytree_node=False)
  primal: PyTree
  args: PyTree = None

  def __call__(self, v: PyTree) -> PyTree:
    """A v, for `v` shaped like `primal`."""
    return self.fn(self.primal, self.args, v)

  @property
  def size(self) -> int:
    """Dimension of the domain (number of scalar parameters)."""
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(self.primal)))

  @property
  def dtype(self) -> np.dtype:
    """The result dtype of the primal's leaves."""
    return jnp.result_type(*jax.tree_util.tree_leaves(self.primal))


def flatten(op: LinearOperator) -> tuple[Callable[[jax.Array], jax.Array], jax.Array,
                                         Callable[[jax.Array], PyTree]]:
  """(flat matvec, flat primal, unravel): the operator on 1-D vectors.

  Args:
    op: the operator.

  Returns:
    (x [p] -> A x [p], the primal raveled [p], [p] -> pytree like the primal).
  """
  flat, unravel = ravel_pytree(op.primal)

  def matvec(x):
    return ravel_pytree(op(unravel(x)))[0]

  return matvec, flat, unravel


def _dense_matvec(primal, matrix, v):
  del primal
  return jnp.dot(matrix, v, precision=jax.lax.Precision.HIGHEST)


def dense_operator(matrix) -> LinearOperator:
  """The operator of an explicit symmetric [p, p] matrix (tests, synthetic spectra).

  Args:
    matrix: a symmetric [p, p] array (symmetry is not checked).

  Returns:
    The LinearOperator on vectors [p] (full-precision matmuls).

  Raises:
    ValueError: the matrix is not square.
  """
  matrix = jnp.asarray(matrix)
  if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
    raise ValueError(f"dense_operator needs a square matrix, got shape {matrix.shape}.")
  return LinearOperator(_dense_matvec, jnp.zeros(matrix.shape[:1], matrix.dtype), matrix)


def _damped_matvec(primal, args, v):
  del primal
  inner, damping = args
  return jax.tree_util.tree_map(lambda a, b: a + damping.astype(a.dtype) * b, inner(v), v)


def damped(op: LinearOperator, damping: float) -> LinearOperator:
  """A + damping * I (absolute damping: the value is added to every eigenvalue).

  Args:
    op: the operator A.
    damping: the constant added.

  Returns:
    The damped LinearOperator, on the same domain.
  """
  return LinearOperator(_damped_matvec, op.primal, (op, jnp.asarray(damping, op.dtype)))


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _dense_matrix(op: LinearOperator, batch_size: int | None) -> jax.Array:
  matvec, flat, _ = flatten(op)
  eye = jnp.eye(flat.size, dtype=flat.dtype)
  return jax.lax.map(matvec, eye, batch_size=batch_size).T  # row i of the map is A e_i


def dense_matrix(op: LinearOperator, *, batch_size: int | None = 64) -> jax.Array:
  """Materialises an operator as a [p, p] matrix, `batch_size` columns at a time.

  p products: only for small models (tests, exact influence on tiny networks).

  Args:
    op: the operator, of dimension p.
    batch_size: columns computed per vmapped call (None: all at once).

  Returns:
    The [p, p] matrix, in the order of `flatten(op)`.
  """
  return _dense_matrix(op, batch_size=None if batch_size is None else min(batch_size, op.size))


def check_finite(tree: PyTree, what: str) -> None:
  """Raises NonFiniteCurvatureError if any float leaf of `tree` is NaN or infinite.

  Args:
    tree: a pytree of arrays (fetched to the host).
    what: how the message names the quantity.

  Raises:
    NonFiniteCurvatureError: naming the first leaf with NaN/inf entries.
  """
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    arr = np.asarray(leaf)
    if np.issubdtype(arr.dtype, np.inexact) and not np.all(np.isfinite(arr)):
      bad = int(np.sum(~np.isfinite(arr)))
      raise NonFiniteCurvatureError(
          f"{what} is not finite ({bad} NaN/inf entries in {jax.tree_util.keystr(path) or 'it'}). "
          "The Hessian-vector products returned NaN or inf: check that the parameters, the "
          "data and the loss are finite at this point (a diverged checkpoint, a NaN image, "
          "log(0) in a custom loss).")


# ----------------------------------------------------------------------------- data


class Batches(NamedTuple):
  """A dataset as fixed-size batches: x [B, b, ...], y [B, b, ...], w [B, b].

  Padding examples (to fill the last batch) have weight 0.

  Attributes:
    x: inputs [B, b, ...].
    y: labels [B, b, ...].
    w: per-example weights [B, b].
  """
  x: jax.Array
  y: jax.Array
  w: jax.Array


def make_batches(x, y, batch_size: int | None = None, weights=None) -> Batches:
  """Splits (x, y, weights) into `Batches`; `batch_size=None` gives one batch.

  Args:
    x: inputs [n, ...].
    y: labels [n, ...].
    batch_size: examples per batch (capped at n); None for one batch.
    weights: per-example weights [n] (default 1).

  Returns:
    The Batches, the last batch zero-padded with weight-0 examples.

  Raises:
    ConfigError: a non-positive batch_size.
    ValueError: an empty dataset, or labels or weights of the wrong length.
  """
  x, y = jnp.asarray(x), jnp.asarray(y)
  n = x.shape[0]
  if n == 0:
    raise ValueError("make_batches: the dataset is empty.")
  if y.shape[:1] != (n,):
    raise ValueError(f"make_batches: {n} inputs but labels of shape {y.shape}.")
  w = jnp.ones((n,), jnp.float32) if weights is None else jnp.asarray(weights)
  if w.shape != (n,):
    raise ValueError(f"make_batches: weights must have shape ({n},), got {w.shape}.")
  batch_size = n if batch_size is None else int(batch_size)
  if batch_size <= 0:
    raise ConfigError(f"make_batches: batch_size must be positive, got {batch_size}.")
  batch_size = min(batch_size, n)
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n

  def shape(a):
    a = jnp.concatenate([a, jnp.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a
    return a.reshape((num_batches, batch_size) + a.shape[1:])

  return Batches(shape(x), shape(y), shape(w))


def cross_entropy_losses(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy; integer [b] or soft [b, C] labels.

  Args:
    logits: [b, C].
    labels: integer [b] or soft [b, C].

  Returns:
    The losses [b].
  """
  if labels.ndim == logits.ndim:
    return optax.softmax_cross_entropy(logits, labels)
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


# ----------------------------------------------------------------------------- parameter subsets


def _path_str(path) -> str:
  parts = []
  for entry in path:
    for attr in ("key", "idx", "name"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return "/".join(parts)


def param_paths(params: PyTree) -> tuple[str, ...]:
  """'/'-joined paths of every parameter array, e.g. 'convs_0/kernel'.

  Args:
    params: a parameter pytree.

  Returns:
    The paths, in leaf order.
  """
  return tuple(_path_str(p) for p, _ in jax.tree_util.tree_leaves_with_path(params))


def layer_groups(params: PyTree, depth: int = 1) -> dict[str, tuple[str, ...]]:
  """Parameter paths grouped by their first `depth` components (one group per layer).

  Args:
    params: a parameter pytree.
    depth: how many path components name a group.

  Returns:
    {group name: (its parameter paths)}, in leaf order.
  """
  groups: dict[str, list[str]] = {}
  for path in param_paths(params):
    groups.setdefault("/".join(path.split("/")[:depth]), []).append(path)
  return {k: tuple(v) for k, v in groups.items()}


def resolve_subset(params: PyTree, subset: Subset) -> tuple[str, ...] | None:
  """The selected parameter paths, or None for all parameters.

  Args:
    params: a parameter pytree.
    subset: a path prefix ('head', 'convs_0/kernel'), a sequence of prefixes, a
      regular expression given as 're:PATTERN' (matched with re.search), a
      predicate on the path string, or None.

  Returns:
    The selected paths, in leaf order, or None for None.

  Raises:
    ConfigError: the subset selects nothing (the message lists the top-level names).
  """
  if subset is None:
    return None
  paths = param_paths(params)
  if callable(subset):
    chosen = tuple(p for p in paths if subset(p))
  elif isinstance(subset, str) and subset.startswith("re:"):
    pattern = re.compile(subset[3:])
    chosen = tuple(p for p in paths if pattern.search(p))
  else:
    prefixes = (subset,) if isinstance(subset, str) else tuple(subset)
    chosen = tuple(p for p in paths
                   if any(p == q or p.startswith(q.rstrip("/") + "/") for q in prefixes))
  if not chosen:
    tops = sorted({p.split("/")[0] for p in paths})
    raise ConfigError(f"Parameter subset {subset!r} selects no parameters; the top-level "
                      f"names are {tops} (full paths look like {paths[0]!r}).")
  return chosen


def select_params(params: PyTree, paths: Sequence[str]) -> dict[str, jax.Array]:
  """{path: array} for the selected paths (the domain of a restricted operator).

  Args:
    params: a parameter pytree.
    paths: the paths to keep (`resolve_subset`).

  Returns:
    The selected arrays by path.
  """
  wanted = set(paths)
  return {_path_str(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)
          if _path_str(p) in wanted}


def merge_params(params: PyTree, selected: dict[str, jax.Array]) -> PyTree:
  """`params` with the leaves named in `selected` replaced (traceable).

  Args:
    params: a parameter pytree.
    selected: {path: array} replacements (`select_params`' format).

  Returns:
    The parameter pytree with those leaves replaced.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  new = [selected.get(_path_str(p), x) for p, x in leaves]
  return jax.tree_util.tree_unflatten(treedef, new)


# ----------------------------------------------------------------------------- model operators


def _precision_context(precision: str | None):
  return jax.default_matmul_precision(precision) if precision else contextlib.nullcontext()


def model_outputs(model, params: PyTree, model_state: dict, x: jax.Array,
                  batch_stats: str = "running") -> jax.Array:
  """Model outputs for a curvature computation; batch-norm updates are discarded.

  Args:
    model: the flax module.
    params: its parameters.
    model_state: its other collections ({} for stateless models).
    x: the inputs.
    batch_stats: "running" (eval mode) or "batch" (each batch's own statistics).

  Returns:
    The outputs (logits).
  """
  variables = {"params": params, **model_state}
  if batch_stats == "batch" and model_state:
    outputs, _ = model.apply(variables, x, train=True, mutable=list(model_state))
    return outputs
  return model.apply(variables, x, train=False)


@dataclasses.dataclass(frozen=True)
class _ModelMatvec:
  """Static part of a model curvature operator (hashable, compared by value)."""
  model: Any
  kind: str                  # "hessian" | "ggn"
  batch_stats: str
  loss_fn: LossFn
  subset: tuple[str, ...] | None
  precision: str | None
  mesh: Any = None           # split the batches over these devices (parallel.sharded_scan_sum)

  def __call__(self, primal, args, v):
    with _precision_context(self.precision):
      return self._matvec(primal, args, v)

  def _matvec(self, primal, args, v):
    batches: Batches = args["batches"]
    total = jnp.sum(batches.w)

    def outputs(p, x):
      full = merge_params(args["params"], p) if self.subset is not None else p
      return model_outputs(self.model, full, args["model_state"], x, self.batch_stats)

    def batch_loss(z, y, w):
      # Dividing by the dataset's total weight makes the scan's sum the exact mean.
      return jnp.sum(w * self.loss_fn(z, y)) / total

    def batch_product(batch):
      x, y, w = batch
      if self.kind == "hessian":
        grad = jax.grad(lambda p: batch_loss(outputs(p, x), y, w))
        return jax.jvp(grad, (primal,), (v,))[1]  # forward-over-reverse
      # Gauss-Newton: J^T H_z J v with one linearisation of the network
      z, jvp = jax.linearize(lambda p: outputs(p, x), primal)
      hz = jax.jvp(jax.grad(lambda z_: batch_loss(z_, y, w)), (z,), (jvp(v),))[1]
      (hv,) = jax.linear_transpose(jvp, primal)(hz)
      return hv

    if self.mesh is not None:
      hv = parallel.sharded_scan_sum(batch_product, tuple(batches), self.mesh)
    else:
      def body(acc, batch):
        return jax.tree_util.tree_map(jnp.add, acc, batch_product(batch)), None

      zeros = jax.tree_util.tree_map(jnp.zeros_like, v)
      hv, _ = jax.lax.scan(body, zeros, batches)
    l2 = args["l2"]
    return jax.tree_util.tree_map(lambda a, b: a + l2.astype(a.dtype) * b, hv, v)


def _model_operator(kind: str, model, variables: dict, x, y, *, weights=None,
                    batch_size: int | None = None, batch_stats: str = "running",
                    subset: Subset = None, l2: float = 0.0, damping: float = 0.0,
                    loss_fn: LossFn = cross_entropy_losses,
                    precision: str | None = None, mesh=None) -> LinearOperator:
  if batch_stats not in BATCH_STATS_MODES:
    raise ConfigError(f"Unknown batch_stats mode {batch_stats!r}; expected one of {BATCH_STATS_MODES}.")
  if precision not in PRECISIONS:
    raise ConfigError(f"Unknown matmul precision {precision!r}; expected one of {PRECISIONS}.")
  if "params" not in variables:
    raise ValueError(f"variables must hold 'params'; got collections {sorted(variables)}.")
  variables = dict(variables)
  params = variables.pop("params")
  model_state = variables
  batches = make_batches(x, y, batch_size, weights)
  mesh = parallel.resolve_mesh(mesh)
  if mesh is not None:  # whole weight-0 batches, so that every device gets as many
    total = parallel.round_up(batches.x.shape[0], mesh.devices.size)
    batches = Batches(*(jnp.concatenate([a, jnp.zeros((total - a.shape[0],) + a.shape[1:],
                                                      a.dtype)]) for a in batches))
  n = jnp.shape(x)[0]
  if batch_stats == "batch" and model_state and n % batches.x.shape[1]:
    raise ConfigError(
        f"batch_stats='batch' needs the {n} examples to split into equal batches (got "
        f"batch_size={batches.x.shape[1]}): padding would change the batch statistics.")
  paths = resolve_subset(params, subset)
  primal = params if paths is None else select_params(params, paths)
  fn = _ModelMatvec(model, kind, batch_stats, loss_fn, paths, precision, mesh)
  op = LinearOperator(fn, primal, {
      "params": params if paths is not None else None, "model_state": model_state,
      "batches": batches, "l2": jnp.asarray(l2, jnp.result_type(*jax.tree_util.tree_leaves(primal)))})
  return damped(op, damping) if damping else op


def hessian_operator(model, variables: dict, x, y, **kwargs) -> LinearOperator:
  """Hessian of the (weighted) mean loss of `model` on (x, y) at `variables['params']`.

  Args:
    model: the flax module.
    variables: its flax variables; the curvature is taken at variables['params'].
    x: the inputs [n, ...].
    y: the labels, integer [n] or soft [n, C].
    **kwargs: the keyword options:
      weights: per-example weights [n] (default 1): the loss is sum w l / sum w.
      batch_size: evaluate the dataset-averaged product in batches of this size
        (a `lax.scan`; None = one batch). The result does not depend on it
        (batch_stats="running").
      batch_stats: "running" (default, eval-mode batch norm) or "batch" (see module doc).
      subset: restrict to a parameter subset (see `resolve_subset`); the operator's
        vectors are then {path: array} dicts of the selected parameters.
      l2: add the Hessian of l2/2 |theta|^2 (the training objective's weight decay).
      damping: add damping * I.
      loss_fn: per-example loss (outputs, labels) -> [b]; default cross-entropy.
      precision: matmul precision inside the product (None, "highest", ...).
      mesh: split the batches over a device mesh ("auto": every local device; see module doc).

  Returns:
    The LinearOperator on parameter pytrees (or {path: array} dicts with `subset`).

  Raises:
    ConfigError: an unknown batch_stats mode or precision, a subset that selects
      nothing, a bad batch_size, or batch_stats="batch" with unequal batches.
    ValueError: `variables` without 'params', or inconsistent data shapes.
  """
  return _model_operator("hessian", model, variables, x, y, **kwargs)


def gauss_newton_operator(model, variables: dict, x, y, **kwargs) -> LinearOperator:
  """Generalised Gauss-Newton J^T H_loss J of the same objective (positive
  semi-definite for convex losses such as cross-entropy).

  Args:
    model: the flax module.
    variables: its flax variables.
    x: the inputs [n, ...].
    y: the labels.
    **kwargs: the keyword options of `hessian_operator`.

  Returns:
    The LinearOperator.

  Raises:
    ConfigError, ValueError: as `hessian_operator`.
  """
  return _model_operator("ggn", model, variables, x, y, **kwargs)


@dataclasses.dataclass(frozen=True)
class _LossMatvec:
  loss_fn: Callable[..., jax.Array]
  precision: str | None

  def __call__(self, primal, args, v):
    with _precision_context(self.precision):
      grad = jax.grad(lambda p: self.loss_fn(p, *args))
      return jax.jvp(grad, (primal,), (v,))[1]


def loss_hessian_operator(loss_fn: Callable[..., jax.Array], params: PyTree, *args,
                          precision: str | None = None) -> LinearOperator:
  """Hessian of an arbitrary scalar `loss_fn(params, *args)` (forward-over-reverse).

  Args:
    loss_fn: the loss, (params, *args) -> scalar. It must be hashable and stable (a
      module-level function) for compiled algorithms to be reused across calls.
    params: the point the Hessian is taken at.
    *args: the loss's other arguments (traced arrays).
    precision: matmul precision inside the product (None, "highest", ...).

  Returns:
    The LinearOperator on pytrees shaped like `params`.

  Raises:
    ConfigError: an unknown precision.
  """
  if precision not in PRECISIONS:
    raise ConfigError(f"Unknown matmul precision {precision!r}; expected one of {PRECISIONS}.")
  return LinearOperator(_LossMatvec(loss_fn, precision), params, tuple(args))
