"""Curvature operators, spectral estimators and solvers against dense float64 linear algebra.

Models are tiny so that `jax.hessian` and `numpy.linalg` give exact references: an
MLP (123 parameters; with batch norm for the batch-statistics modes) for most
checks, and a 2-block ConvNet of width 2 on 4x4 inputs (79 parameters, im2col
convolutions and instance norm) for the main operator variants.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from ddjax import curvature, models
from ddjax.models import layers

N, C = 10, 3


@pytest.fixture(scope="module", autouse=True)
def x64():
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  _problem.cache_clear()
  yield
  _problem.cache_clear()
  jax.config.update("jax_enable_x64", previous)


class MLP(nn.Module):
  """6 -> 12 (tanh) -> 3, optionally with batch norm on the hidden layer."""
  batchnorm: bool = False

  @nn.compact
  def __call__(self, x, train: bool = False):
    h = layers.Dense(12)(x)
    if self.batchnorm:
      h = nn.BatchNorm(use_running_average=not train, momentum=0.9)(h)
    return layers.Dense(C)(jnp.tanh(h))


def _f64(tree):
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


@functools.lru_cache(maxsize=None)
def _problem(kind="mlp"):
  if kind == "convnet":
    model = models.get_model("convnet", C, width=2, depth=2)
    x = jax.random.normal(jax.random.PRNGKey(1), (N, 4, 4, 1), jnp.float64)
  else:
    model = MLP(batchnorm=kind == "mlp_bn")
    x = jax.random.normal(jax.random.PRNGKey(1), (N, 6), jnp.float64)
  init = jax.jit(functools.partial(model.init, train=False))
  variables = _f64(dict(init(jax.random.PRNGKey(0), x[:1])))
  if "batch_stats" in variables:  # non-trivial running statistics
    keys = iter(jax.random.split(jax.random.PRNGKey(5), 16))
    variables["batch_stats"] = jax.tree_util.tree_map(
        lambda a: 1.0 + 0.3 * jax.random.uniform(next(keys), a.shape, a.dtype, -1, 1),
        variables["batch_stats"])
  y = jnp.arange(N) % C
  return model, variables, x, y


def _loss(model, variables, x, y, weights=None, train=False):
  """The objective written directly (no ddjax.curvature code): weighted-mean CE."""
  params, unravel = ravel_pytree(variables["params"])
  state = {k: v for k, v in variables.items() if k != "params"}
  w = jnp.ones(x.shape[0]) if weights is None else weights

  def loss(flat):
    v = {"params": unravel(flat), **state}
    if train:
      logits, _ = model.apply(v, x, train=True, mutable=["batch_stats"])
    else:
      logits = model.apply(v, x, train=False)
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1)[:, 0]
    return jnp.sum(w * ce) / jnp.sum(w)

  return loss, params, unravel


def _dense_hessian(model, variables, x, y, **kw):
  loss, params, _ = _loss(model, variables, x, y, **kw)
  return np.asarray(jax.jit(jax.hessian(loss))(params))


@functools.lru_cache(maxsize=None)
def _hessian_of(kind):
  return _dense_hessian(*_problem(kind))


def _dense_ggn(model, variables, x, y):
  params, unravel = ravel_pytree(variables["params"])
  logits_fn = lambda flat: model.apply({"params": unravel(flat)}, x).reshape(-1)
  jac = np.asarray(jax.jit(jax.jacobian(logits_fn))(params))
  z = logits_fn(params)
  ce = lambda zf: jnp.mean(-jnp.take_along_axis(jax.nn.log_softmax(zf.reshape(N, C)),
                                                y[:, None], 1))
  hz = np.asarray(jax.jit(jax.hessian(ce))(z))
  return jac.T @ hz @ jac


@jax.jit
def _apply(op, v):
  return op(v)


def _apply_flat(op, vec):
  flat, unravel = ravel_pytree(op.primal)
  return np.asarray(ravel_pytree(_apply(op, unravel(jnp.asarray(vec, flat.dtype))))[0])


def _rel_err(a, b):
  return np.linalg.norm(a - b) / np.linalg.norm(b)


# ----------------------------------------------------------------------------- operators


def _variant(kind, name):
  """(operator, dense reference matrix) for each operator variant."""
  model, variables, x, y = _problem(kind)
  hess = _hessian_of(kind)
  p = hess.shape[0]
  if name == "hessian_one_batch":
    return curvature.hessian_operator(model, variables, x, y), hess
  if name == "hessian_dataset_uneven":  # batches of 4, 4, 2: the last one padded
    return curvature.hessian_operator(model, variables, x, y, batch_size=4), hess
  if name == "hessian_weighted":
    w = jnp.linspace(0.2, 2.0, N)
    ref = _dense_hessian(model, variables, x, y, weights=w)
    return curvature.hessian_operator(model, variables, x, y, weights=w, batch_size=3), ref
  if name == "ggn":
    return curvature.gauss_newton_operator(model, variables, x, y, batch_size=4), _dense_ggn(
        model, variables, x, y)
  if name == "damped":
    return (curvature.hessian_operator(model, variables, x, y, batch_size=4, damping=0.3),
            hess + 0.3 * np.eye(p))
  if name == "l2":
    return curvature.hessian_operator(model, variables, x, y, l2=5e-3), hess + 5e-3 * np.eye(p)
  if name == "precision_highest":
    return curvature.hessian_operator(model, variables, x, y, precision="highest"), hess
  raise ValueError(name)


VARIANTS = [("mlp", v) for v in ("hessian_one_batch", "hessian_dataset_uneven", "hessian_weighted",
                                 "ggn", "damped", "l2", "precision_highest")]
VARIANTS += [("convnet", v) for v in ("hessian_dataset_uneven", "ggn")]


@pytest.mark.parametrize("kind,name", VARIANTS)
def test_operator_matches_dense_and_is_symmetric(kind, name):
  op, ref = _variant(kind, name)
  rng = np.random.default_rng(0)
  u, v = rng.normal(size=(2, ref.shape[0]))
  hv, hu = _apply_flat(op, v), _apply_flat(op, u)
  assert _rel_err(hv, ref @ v) < 1e-6
  assert _rel_err(hu, ref @ u) < 1e-6
  assert abs(u @ hv - v @ hu) <= 1e-10 * np.linalg.norm(u) * np.linalg.norm(hv)


def test_operator_and_estimator_compose_inside_jit():
  """E7's pattern: a trace at many parameter states, one compiled function."""
  model, variables, x, y = _problem()
  hess = _hessian_of("mlp")

  @jax.jit
  def samples_at(params, key):
    op = curvature.hessian_operator(model, {"params": params}, x, y, batch_size=4)
    return curvature.hutchinson_samples(op, key, max_probes=4, tol=None)[0]

  key = jax.random.PRNGKey(0)
  got = samples_at(variables["params"], key)
  _, unravel = ravel_pytree(variables["params"])
  for i in range(4):  # probe i is Rademacher from fold_in(key, i), in ravel order
    z = np.asarray(jax.random.rademacher(jax.random.fold_in(key, i), (hess.shape[0],), jnp.float64))
    np.testing.assert_allclose(got[i], z @ hess @ z, rtol=1e-8)


def test_batch_size_does_not_change_dataset_operator():
  model, variables, x, y = _problem()
  v = np.random.default_rng(1).normal(size=ravel_pytree(variables["params"])[0].size)
  results = [_apply_flat(curvature.hessian_operator(model, variables, x, y, batch_size=b), v)
             for b in (None, 3, 7)]
  for r in results[1:]:
    assert _rel_err(r, results[0]) < 1e-12


def _subset_embed(params, paths, sub_vec_tree):
  """Embeds {path: array} into a zero pytree shaped like params (test-side, by path)."""
  def leaf(path, a):
    key = "/".join(str(k.key) for k in path)
    return sub_vec_tree[key] if key in paths else jnp.zeros_like(a)
  return jax.tree_util.tree_map_with_path(leaf, params)


@pytest.mark.parametrize("kind,subset", [("mlp", "Dense_1"), ("mlp", "re:kernel$"),
                                         ("convnet", ("convs_1", "norms_1/GroupNorm_0/scale"))])
def test_subset_operator_is_the_hessian_block(kind, subset):
  model, variables, x, y = _problem(kind)
  hess = _hessian_of(kind)
  op = curvature.hessian_operator(model, variables, x, y, subset=subset, batch_size=4)
  paths = set(op.primal)
  assert 0 < len(paths) < len(curvature.param_paths(variables["params"]))
  rng = np.random.default_rng(2)
  sub_v = {k: jnp.asarray(rng.normal(size=a.shape)) for k, a in op.primal.items()}
  full_v = _subset_embed(variables["params"], paths, sub_v)
  full_hv = ravel_pytree(_subset_embed(variables["params"], paths, _apply(op, sub_v)))[0]
  mask = ravel_pytree(_subset_embed(variables["params"], paths,
                                    {k: jnp.ones_like(a) for k, a in sub_v.items()}))[0] > 0
  ref = hess @ np.asarray(ravel_pytree(full_v)[0])
  assert _rel_err(np.asarray(full_hv)[mask], ref[mask]) < 1e-6


def test_layer_groups_cover_every_parameter_once():
  _, variables, _, _ = _problem("convnet")
  groups = curvature.layer_groups(variables["params"])
  assert set(groups) == {"convs_0", "convs_1", "head", "norms_0", "norms_1"}
  flat = sorted(p for g in groups.values() for p in g)
  assert flat == sorted(curvature.param_paths(variables["params"]))


@pytest.mark.parametrize("mode", ["running", "batch"])
def test_batchnorm_modes(mode):
  model, variables, x, y = _problem("mlp_bn")
  before = jax.tree_util.tree_map(np.asarray, variables["batch_stats"])
  if mode == "running":
    ref = _hessian_of("mlp_bn")
    op = curvature.hessian_operator(model, variables, x, y, batch_size=4)
  else:  # the mean of per-batch (train-mode) Hessians over batches of 5
    ref = sum(_dense_hessian(model, variables, x[i:i + 5], y[i:i + 5], train=True)
              for i in (0, 5)) / 2
    op = curvature.hessian_operator(model, variables, x, y, batch_size=5, batch_stats="batch")
  v = np.random.default_rng(3).normal(size=ref.shape[0])
  hv = _apply_flat(op, v)
  assert _rel_err(hv, ref @ v) < 1e-6
  # Nothing is written back into the running statistics: they are unchanged, and
  # a second product gives the same answer.
  chex.assert_trees_all_equal(before, jax.tree_util.tree_map(np.asarray, variables["batch_stats"]))
  np.testing.assert_array_equal(_apply_flat(op, v), hv)


def test_batchnorm_modes_differ_and_batch_mode_rejects_padding():
  model, variables, x, y = _problem("mlp_bn")
  v = np.random.default_rng(4).normal(size=ravel_pytree(variables["params"])[0].size)
  run = _apply_flat(curvature.hessian_operator(model, variables, x, y), v)
  bat = _apply_flat(curvature.hessian_operator(model, variables, x, y, batch_stats="batch"), v)
  assert _rel_err(bat, run) > 1e-3
  with pytest.raises(ValueError, match="equal batches"):
    curvature.hessian_operator(model, variables, x, y, batch_size=4, batch_stats="batch")


def test_precision_setting_reaches_every_matmul():
  model, variables, x, y = _problem("convnet")
  for precision, expect in (("highest", True), (None, False)):
    op = curvature.hessian_operator(model, variables, x, y, precision=precision)
    text = str(jax.make_jaxpr(op)(op.primal))
    dots = text.count("dot_general[")
    assert dots > 0
    assert (text.count("precision=Precision.HIGHEST") + text.count("precision=(Precision.HIGHEST")
            == dots) is expect


def test_operator_input_errors():
  model, variables, x, y = _problem()
  with pytest.raises(ValueError, match="selects no parameters.*Dense_0"):
    curvature.hessian_operator(model, variables, x, y, subset="decoder")
  with pytest.raises(ValueError, match="batch_stats"):
    curvature.hessian_operator(model, variables, x, y, batch_stats="train")
  with pytest.raises(ValueError, match="labels of shape"):
    curvature.hessian_operator(model, variables, x, y[:4])
  with pytest.raises(ValueError, match="precision"):
    curvature.hessian_operator(model, variables, x, y, precision="fp8")


def test_loss_hessian_operator_on_a_quadratic():
  a = jnp.asarray(np.random.default_rng(5).normal(size=(6, 6)))
  op = curvature.loss_hessian_operator(_quadratic, {"w": jnp.ones(6)}, a)
  v = {"w": jnp.arange(6.0)}
  np.testing.assert_allclose(op(v)["w"], (a.T @ a) @ v["w"], rtol=1e-12)


def _quadratic(params, a):
  return 0.5 * jnp.sum((a @ params["w"]) ** 2)


# ----------------------------------------------------------------------------- Hutchinson


def test_hutchinson_within_three_standard_errors():
  model, variables, x, y = _problem()
  exact = np.trace(_hessian_of("mlp"))
  op = curvature.hessian_operator(model, variables, x, y, batch_size=4)
  est = curvature.hutchinson_trace(op, jax.random.PRNGKey(0), num_probes=300, probe_batch=10)
  assert est.num_probes == 300 and not est.stopped_by_tol
  assert abs(est.trace - exact) <= 3 * est.stderr


def test_hutchinson_tolerance_rule_is_pyhessians_and_batch_invariant():
  spectrum = np.linspace(-1.0, 5.0, 40)
  q, _ = np.linalg.qr(np.random.default_rng(6).normal(size=(40, 40)))
  op = curvature.dense_operator((q * spectrum) @ q.T)
  key = jax.random.PRNGKey(3)
  fixed = curvature.hutchinson_trace(op, key, num_probes=100).samples
  # PyHessian's loop, on the same probe sequence.
  trace, expected = 0.0, 100
  for i in range(100):
    mean = fixed[: i + 1].mean()
    if abs(mean - trace) / (abs(trace) + 1e-6) < 1e-2:
      expected = i + 1
      break
    trace = mean
  assert 2 <= expected < 100
  for probe_batch in (1, 4):
    est = curvature.hutchinson_trace(op, key, tol=1e-2, probe_batch=probe_batch)
    assert est.num_probes == expected and est.stopped_by_tol
    np.testing.assert_allclose(est.samples, fixed[:expected], rtol=1e-12)


def test_non_finite_products_raise_clear_errors():
  model, variables, x, y = _problem()
  bad = x.at[0, 0].set(jnp.nan)
  op = curvature.hessian_operator(model, variables, bad, y)
  key = jax.random.PRNGKey(0)
  with pytest.raises(curvature.NonFiniteCurvatureError, match="Hessian-vector product"):
    curvature.hutchinson_trace(op, key, num_probes=2)
  with pytest.raises(curvature.NonFiniteCurvatureError, match="not finite"):
    curvature.lanczos_topk(op, key, 2, num_iters=4)
  # The same checks on a cheaper operator whose products are NaN.
  nan_op = curvature.dense_operator(np.full((5, 5), np.nan))
  with pytest.raises(curvature.NonFiniteCurvatureError, match="not finite"):
    curvature.slq(nan_op, key, num_probes=1, num_iters=4)
  with pytest.raises(curvature.NonFiniteCurvatureError, match="not finite"):
    curvature.power_iteration(nan_op, key, k=1, max_iters=3)
  with pytest.raises(curvature.NonFiniteCurvatureError, match="not finite"):
    curvature.solve(nan_op, jnp.ones(5), method="cg", damping=1.0, maxiter=3)


# ----------------------------------------------------------------------------- eigenpairs


def _synthetic(spectrum, seed=0):
  spectrum = np.asarray(spectrum, np.float64)
  q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(spectrum.size,) * 2))
  return (q * spectrum) @ q.T, q


def test_power_iteration_top_k_by_magnitude():
  rest = np.random.default_rng(1).uniform(-1, 1, 57)
  a, q = _synthetic(np.concatenate([[10.0, -8.0, 6.0], rest]))
  res = curvature.power_iteration(curvature.dense_operator(a), jax.random.PRNGKey(0), k=3,
                                  max_iters=2000, tol=1e-12)
  np.testing.assert_allclose(res.eigenvalues, [10.0, -8.0, 6.0], rtol=1e-8)
  overlaps = np.abs(np.sum(np.asarray(res.eigenvectors) * q[:, :3].T, axis=1))
  np.testing.assert_allclose(overlaps, 1.0, atol=1e-6)
  assert np.all(res.converged) and np.all(res.residuals < 1e-4)


def test_power_iteration_on_model_hessian_matches_eigh():
  model, variables, x, y = _problem()
  ev = np.linalg.eigvalsh(_hessian_of("mlp"))
  op = curvature.hessian_operator(model, variables, x, y, batch_size=4)
  res = curvature.power_iteration(op, jax.random.PRNGKey(1), k=2, max_iters=3000, tol=1e-13)
  np.testing.assert_allclose(res.eigenvalues, ev[np.argsort(-np.abs(ev))][:2], rtol=1e-6)


def test_lanczos_topk_and_ghosts_without_reorthogonalisation():
  bulk = np.random.default_rng(2).uniform(0, 1, 195)
  a, q = _synthetic(np.concatenate([[100.0, 50.0, 30.0, 20.0, 10.0], bulk]))
  op = curvature.dense_operator(a)
  key = jax.random.PRNGKey(0)
  top = curvature.lanczos_topk(op, key, 5, num_iters=120)
  np.testing.assert_allclose(top.eigenvalues, [100, 50, 30, 20, 10], rtol=1e-10)
  vectors = np.asarray(top.eigenvectors)
  np.testing.assert_allclose(np.abs(np.sum(vectors * q[:, :5].T, axis=1)), 1.0, atol=1e-8)
  np.testing.assert_allclose(np.linalg.norm(vectors @ a - top.eigenvalues[:, None] * vectors,
                                            axis=1), 0.0, atol=1e-7)
  res = curvature.lanczos(op, key, 120)
  basis = np.asarray(res.basis)
  np.testing.assert_allclose(basis @ basis.T, np.eye(120), atol=1e-12)
  # Without reorthogonalisation the converged top eigenvalue comes back several times.
  ghost = curvature.lanczos_topk(op, key, 5, num_iters=120, reorthogonalize=False)
  assert np.sum(np.isclose(ghost.eigenvalues, 100.0, rtol=1e-8)) >= 2
  assert np.sum(np.isclose(top.eigenvalues, 100.0, rtol=1e-8)) == 1


def test_lanczos_on_model_hessian_matches_eigh():
  model, variables, x, y = _problem("convnet")
  hess = _hessian_of("convnet")
  ev = np.linalg.eigvalsh(hess)
  op = curvature.hessian_operator(model, variables, x, y, batch_size=4)
  for which, ref in (("largest", ev[::-1]), ("smallest", ev)):
    res = curvature.lanczos_topk(op, jax.random.PRNGKey(2), 3, num_iters=hess.shape[0], which=which)
    np.testing.assert_allclose(res.eigenvalues, ref[:3], rtol=1e-8)
    vectors = np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(res.eigenvectors))
    np.testing.assert_allclose(vectors @ hess, res.eigenvalues[:, None] * vectors, atol=1e-7)


def test_lanczos_breakdown_on_low_rank_operator():
  a, _ = _synthetic(np.concatenate([[3.0, 2.0, 1.0], np.zeros(47)]))
  op = curvature.dense_operator(a)
  res = curvature.lanczos(op, jax.random.PRNGKey(0), 10)
  assert int(res.num_breakdowns) >= 1
  assert np.all(np.isfinite(np.asarray(res.basis)))
  top = curvature.lanczos_topk(op, jax.random.PRNGKey(0), 3, num_iters=10)
  np.testing.assert_allclose(top.eigenvalues, [3.0, 2.0, 1.0], rtol=1e-10)
  dens = curvature.slq(op, jax.random.PRNGKey(1), num_probes=2, num_iters=10)
  assert np.all(np.isfinite(dens.weights))


# ----------------------------------------------------------------------------- SLQ


def test_slq_quadrature_reproduces_probe_moments_exactly():
  a, _ = _synthetic(np.concatenate([[40.0, 25.0], np.random.default_rng(3).normal(0, 1, 58)]))
  op = curvature.dense_operator(a)
  key, m = jax.random.PRNGKey(4), 8
  dens = curvature.slq(op, key, num_probes=4, num_iters=m, probe_batch=2)
  np.testing.assert_allclose(dens.weights.sum(1), 1.0, rtol=1e-12)
  for i in range(4):  # Gauss quadrature with m nodes is exact up to degree 2m - 1
    z = np.asarray(jax.random.rademacher(jax.random.fold_in(key, i), (60,), jnp.float64))
    for q in range(2 * m):
      exact = z @ np.linalg.matrix_power(a, q) @ z / (z @ z)
      quad = np.sum(dens.weights[i] * dens.nodes[i] ** q)
      np.testing.assert_allclose(quad, exact, rtol=1e-7)


def test_slq_moments_and_density_match_exact_spectrum():
  model, variables, x, y = _problem()
  ev = np.linalg.eigvalsh(_hessian_of("mlp"))
  op = curvature.hessian_operator(model, variables, x, y, batch_size=5)
  dens = curvature.slq(op, jax.random.PRNGKey(5), num_probes=48, num_iters=12, probe_batch=16)
  per_probe = np.stack([np.sum(dens.weights * dens.nodes ** q, axis=1) for q in (1, 2)])
  stderr = per_probe.std(axis=1, ddof=1) / np.sqrt(per_probe.shape[1])
  exact = np.array([ev.mean(), (ev ** 2).mean()])
  assert np.all(np.abs(dens.moments((1, 2)) - exact) <= 4 * stderr)
  grid, values = dens.density(num_points=4000)
  mass = np.sum(values) * (grid[1] - grid[0])
  np.testing.assert_allclose(mass, 1.0, atol=1e-3)
  assert grid.min() <= ev.min() and grid.max() >= ev.max()


# ----------------------------------------------------------------------------- solvers


def test_cg_and_lissa_match_direct_damped_solve():
  model, variables, x, y = _problem()
  ggn = _dense_ggn(model, variables, x, y)
  op = curvature.gauss_newton_operator(model, variables, x, y, batch_size=4)
  damping = 0.05
  rng = np.random.default_rng(7)
  b = rng.normal(size=(2, ggn.shape[0]))
  ref = np.linalg.solve(ggn + damping * np.eye(ggn.shape[0]), b.T).T
  _, unravel = ravel_pytree(op.primal)
  rhs = jax.vmap(unravel)(jnp.asarray(b))
  flat = lambda tree: np.asarray(jax.vmap(lambda t: ravel_pytree(t)[0])(tree))
  res = curvature.solve(op, rhs, method="cg", damping=damping, batched=True, maxiter=500, tol=1e-12)
  assert np.all(np.asarray(res.converged))
  np.testing.assert_allclose(flat(res.x), ref, rtol=1e-7, atol=1e-9)
  scale = float(np.linalg.eigvalsh(ggn).max() + damping)
  res = curvature.solve(op, rhs, method="lissa", damping=damping, scale=scale, batched=True,
                        depth=20000, tol=1e-14)
  assert not np.any(np.asarray(res.diverged))
  np.testing.assert_allclose(flat(res.x), ref, rtol=1e-6, atol=1e-8)


def test_cg_on_damped_indefinite_hessian():
  model, variables, x, y = _problem()
  hess = _hessian_of("mlp")
  damping = -np.linalg.eigvalsh(hess).min() + 0.5
  op = curvature.hessian_operator(model, variables, x, y)
  b = np.random.default_rng(8).normal(size=hess.shape[0])
  _, unravel = ravel_pytree(op.primal)
  res = curvature.solve(op, unravel(jnp.asarray(b)), method="cg", damping=damping, maxiter=500,
                        tol=1e-12)
  ref = np.linalg.solve(hess + damping * np.eye(hess.shape[0]), b)
  np.testing.assert_allclose(ravel_pytree(res.x)[0], ref, rtol=1e-7, atol=1e-9)


def test_cg_flags_negative_curvature():
  a, _ = _synthetic(np.array([2.0, 1.0, -1.0, 0.5]))
  res = curvature.solve(curvature.dense_operator(a), jnp.ones(4), method="cg", maxiter=50)
  assert bool(res.negative_curvature) and not bool(res.converged)


@pytest.mark.parametrize("case", ["scale_too_small", "negative_eigenvalue"])
def test_lissa_divergence_raises(case):
  if case == "scale_too_small":  # spectrum of A / scale reaches 10 / 4 > 2: geometric blow-up
    a, _ = _synthetic(np.linspace(0.5, 10.0, 20))
    kw = dict(scale=4.0)
  else:  # the slow blow-up from an undamped negative eigenvalue
    a, _ = _synthetic(np.concatenate([[-0.5], np.linspace(0.5, 5.0, 19)]))
    kw = dict(scale=10.0)
  with pytest.raises(curvature.LissaDivergedError, match="scale"):
    curvature.solve(curvature.dense_operator(a), jnp.ones(20), method="lissa", depth=5000, **kw)


def test_solver_input_errors():
  op = curvature.dense_operator(np.eye(3))
  with pytest.raises(ValueError, match="scale"):
    curvature.solve(op, jnp.ones(3), method="lissa")
  with pytest.raises(ValueError, match="Unknown solver"):
    curvature.solve(op, jnp.ones(3), method="gmres")


# ----------------------------------------------------------------------------- no retracing


def _matmul(primal, args, v):
  del primal
  return args @ v


@pytest.mark.parametrize("algorithm", ["hutchinson", "lanczos", "slq", "power", "cg", "lissa"])
def test_loop_bodies_are_traced_once(algorithm):
  """The product is traced once per loop body (plus one product after the loop for
  power iteration and the solvers), and a second call with new values reuses it."""
  a, _ = _synthetic(np.linspace(-1.0, 4.0, 30))
  runs = {
      "hutchinson": (1, lambda op, s: curvature.hutchinson_samples(
          op, jax.random.PRNGKey(s), max_probes=8, tol=1e-3, probe_batch=2)),
      "lanczos": (1, lambda op, s: curvature.lanczos(op, jax.random.PRNGKey(s), 12)),
      "slq": (1, lambda op, s: curvature.slq(op, jax.random.PRNGKey(s), num_probes=2, num_iters=6)),
      "power": (2, lambda op, s: curvature.power_iteration(op, jax.random.PRNGKey(s), k=2,
                                                          max_iters=20)),
      "cg": (2, lambda op, s: curvature.solve(op, jnp.full(30, s + 1.0), method="cg",
                                              damping=2.0)),
      "lissa": (2, lambda op, s: curvature.solve(op, jnp.full(30, s + 1.0), method="lissa",
                                                 damping=2.0, scale=5.0)),
  }
  max_traces, run = runs[algorithm]
  chex.clear_trace_counter()
  op = curvature.LinearOperator(chex.assert_max_traces(_matmul, n=max_traces), jnp.zeros(30),
                                jnp.asarray(a))
  for seed in range(3):
    run(op, seed)
  chex.clear_trace_counter()
