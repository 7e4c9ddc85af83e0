"""Leave-one-out by batched retraining, influence functions and their comparison.

Tiny float64 models: a 1-block ConvNet of width 2 on 4x4 inputs for retraining,
and an MLP / softmax regression for the influence formulas, checked against
dense `jax.hessian` / `jax.jacobian` references.
"""

import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree
from scipy import stats

from ddjax import influence, models, train
from ddjax.models import layers

C = 3


@pytest.fixture(scope="module", autouse=True)
def x64():
  previous = jax.config.jax_enable_x64
  jax.config.update("jax_enable_x64", True)
  yield
  jax.config.update("jax_enable_x64", previous)


def _f64(tree):
  return jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), tree)


def _init(model, x):
  init = jax.jit(functools.partial(model.init, train=False))
  return _f64(dict(init(jax.random.PRNGKey(0), x[:1])))


def _data(shape, n, n_test, seed=1):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  x = jax.random.normal(k1, (n,) + shape, jnp.float64)
  x_test = jax.random.normal(k2, (n_test,) + shape, jnp.float64)
  return x, jnp.arange(n) % C, x_test, jnp.arange(n_test) % C


class MLP(nn.Module):
  hidden: int = 8

  @nn.compact
  def __call__(self, x, train: bool = False):
    if self.hidden:
      x = jnp.tanh(layers.Dense(self.hidden)(x))
    return layers.Dense(C)(x)


# ----------------------------------------------------------------------------- leave-one-out


def test_loo_masks():
  masks = np.asarray(influence.loo_masks(4))
  assert masks.shape == (5, 4)
  np.testing.assert_array_equal(masks[-1], 1)
  np.testing.assert_array_equal(masks[:-1], 1 - np.eye(4))


def test_batched_loo_equals_separate_retrains():
  model = models.get_model("convnet", C, width=2, depth=1)
  x, y, x_test, y_test = _data((4, 4, 1), 5, 7)
  variables = _init(model, x)
  steps = 15
  kw = dict(num_steps=steps, learning_rate=0.05)
  batched = influence.loo_influence(model, variables, x, y, x_test, y_test, **kw)
  chunked = influence.loo_influence(model, variables, x, y, x_test, y_test, chunk_size=4, **kw)

  # The reference: separate retrains on the data with point i actually deleted.
  tx = train.sgd_momentum(0.05, 0.9)
  fit = jax.jit(lambda xs, ys: train.train_full_batch(model, tx, variables, xs, ys,
                                                      num_steps=steps)[0])
  test_loss = lambda v: np.asarray(train.evaluate(model, v, x_test, y_test)["per_example_loss"])
  loss_all = test_loss(fit(x, y))
  loss_without = np.stack([test_loss(fit(np.delete(x, i, 0), np.delete(y, i, 0)))
                           for i in range(5)])
  assert np.abs(loss_without - loss_all).max() > 1e-4  # the retrains really differ
  for got in (batched, chunked):  # chunks of 4 runs: one full chunk and a remainder of 2
    assert got.influence.shape == (5, 7)
    np.testing.assert_allclose(got.loss_all, loss_all, rtol=1e-10)
    np.testing.assert_allclose(got.influence, loss_without - loss_all, rtol=1e-7, atol=1e-12)
    chex.assert_trees_all_close(got.variables_all, fit(x, y), rtol=1e-10)


@chex.assert_max_traces(n=2)  # the scan body of training, and evaluation's batch map
def _counted_features(x, kernel):
  return jnp.tanh(x @ kernel)


class Counted(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool = False):
    kernel = self.param("kernel", nn.initializers.normal(1.0), (x.shape[-1], C))
    return _counted_features(x, kernel)


def test_loo_loop_bodies_are_traced_once():
  model = Counted()
  x, y, x_test, y_test = _data((4,), 6, 5)
  chex.clear_trace_counter()
  variables = _f64(dict(model.init(jax.random.PRNGKey(0), x[:1])))
  chex.clear_trace_counter()
  for seed in range(3):  # new data values, same shapes: no retrace
    influence.loo_influence(model, variables, x + seed, y, x_test, y_test, num_steps=5)
  chex.clear_trace_counter()


def test_loo_rejects_batchnorm_and_bad_masks():
  model = models.get_model("convnet", C, width=2, depth=1, norm="batchnorm")
  x, y, x_test, y_test = _data((4, 4, 1), 4, 3)
  variables = _init(model, x)
  with pytest.raises(ValueError, match="batch statistics"):
    influence.loo_influence(model, variables, x, y, x_test, y_test, num_steps=2)
  with pytest.raises(ValueError, match="at least 2"):
    influence.loo_masks(1)
  mlp = MLP()
  mlp_vars = _init(mlp, jnp.zeros((1, 4)))
  x, y, x_test, y_test = _data((4,), 4, 3)
  with pytest.raises(ValueError, match="masks must be"):
    influence.loo_retrain(mlp, mlp_vars, x, y, x_test, y_test, masks=jnp.ones((3, 5)))


# ----------------------------------------------------------------------------- influence functions


def _reference(model, variables, x, y, x_test, y_test, damping, l2=0.0):
  """g_train (H + l2 I + damping I)^-1 g_test^T / n, densely."""
  flat, unravel = ravel_pytree(variables["params"])
  losses = lambda f, xs, ys: -jnp.take_along_axis(
      jax.nn.log_softmax(model.apply({"params": unravel(f)}, xs)), ys[:, None], 1)[:, 0]
  hess = np.asarray(jax.jit(jax.hessian(lambda f: losses(f, x, y).mean()))(flat))
  hess = hess + l2 * np.eye(flat.size)
  g_train = np.asarray(jax.jit(jax.jacobian(lambda f: losses(f, x, y)))(flat))
  g_test = np.asarray(jax.jit(jax.jacobian(lambda f: losses(f, x_test, y_test)))(flat))
  solved = np.linalg.solve(hess + damping * np.eye(flat.size), g_train.T)
  return solved.T @ g_test.T / x.shape[0], np.linalg.eigvalsh(hess), g_train @ g_test.T / x.shape[0]


@pytest.fixture(scope="module")
def mlp_problem(x64):
  model = MLP()
  x, y, x_test, y_test = _data((4,), 8, 6)
  variables = _init(model, x)
  return model, variables, x, y, x_test, y_test


def test_influence_methods_match_the_dense_formula(mlp_problem):
  model, variables, x, y, x_test, y_test = mlp_problem
  p = ravel_pytree(variables["params"])[0].size
  _, eig, _ = _reference(model, variables, x, y, x_test, y_test, 0.0)
  damping = max(0.0, -eig.min()) + 0.2  # positive definite: every method applies
  ref, eig, dot = _reference(model, variables, x, y, x_test, y_test, damping)
  kw = dict(damping=damping, key=jax.random.PRNGKey(0))
  runs = {
      "direct": {},
      "cg": dict(cg_maxiter=500, cg_tol=1e-12),
      "lissa": dict(lissa_scale=float(eig.max() + damping), lissa_depth=20000, cg_tol=1e-14),
      "arnoldi": dict(arnoldi_rank=p, arnoldi_iters=p),  # the full eigenbasis: exact
  }
  for method, extra in runs.items():
    got = influence.influence_functions(model, variables, x, y, x_test, y_test, method=method,
                                        **kw, **extra)
    assert got.influence.shape == (8, 6)
    np.testing.assert_allclose(got.influence, ref, rtol=1e-6, atol=1e-10, err_msg=method)
  got = influence.influence_functions(model, variables, x, y, x_test, y_test, method="identity")
  np.testing.assert_allclose(got.influence, dot, rtol=1e-10)
  # A truncated eigenbasis is an approximation that still tracks the exact answer.
  low = influence.influence_functions(model, variables, x, y, x_test, y_test, method="arnoldi",
                                      arnoldi_rank=10, arnoldi_iters=40, **kw)
  assert influence.pearson(low.influence, ref) > 0.5


def test_gauss_newton_influence_with_cg(mlp_problem):
  model, variables, x, y, x_test, y_test = mlp_problem
  direct = influence.influence_functions(model, variables, x, y, x_test, y_test, method="direct",
                                         curvature_kind="ggn", damping=1e-2)
  cg = influence.influence_functions(model, variables, x, y, x_test, y_test, method="cg",
                                     curvature_kind="ggn", damping=1e-2, cg_maxiter=500,
                                     cg_tol=1e-12)
  np.testing.assert_allclose(cg.influence, direct.influence, rtol=1e-6, atol=1e-10)
  assert cg.info["converged"] == 8 and cg.info["negative_curvature"] == 0


def test_influence_functions_predict_loo_on_a_convex_problem():
  """Softmax regression with weight decay, trained to its optimum: the Newton-step
  model behind influence functions is accurate, so they track exact LOO."""
  model = MLP(hidden=0)
  x, y, x_test, y_test = _data((5,), 30, 20, seed=3)
  variables = _init(model, x)
  wd = 0.1
  loo = influence.loo_influence(model, variables, x, y, x_test, y_test, num_steps=1500,
                                learning_rate=0.1, weight_decay=wd)
  approx = influence.influence_functions(model, loo.variables_all, x, y, x_test, y_test,
                                         method="direct", damping=0.0, l2=wd)
  scores = influence.compare_influence(approx.influence, loo.influence, k=3)
  assert scores["pearson"] > 0.98 and scores["spearman"] > 0.97


def test_influence_input_errors(mlp_problem):
  model, variables, x, y, x_test, y_test = mlp_problem
  with pytest.raises(ValueError, match="Unknown influence method"):
    influence.influence_functions(model, variables, x, y, x_test, y_test, method="tracin")
  with pytest.raises(ValueError, match="Unknown curvature"):
    influence.influence_functions(model, variables, x, y, x_test, y_test, curvature_kind="fisher")


# ----------------------------------------------------------------------------- comparison


def test_correlation_utilities():
  rng = np.random.default_rng(0)
  a = rng.normal(size=(6, 40))
  b = a + 0.5 * rng.normal(size=a.shape)
  assert influence.pearson(a, b) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1])
  assert influence.spearman(a, b) == pytest.approx(stats.spearmanr(a.ravel(), b.ravel())[0])
  assert influence.pearson(a, 3 * a + 1) == pytest.approx(1.0)
  assert influence.spearman(a, np.exp(a)) == pytest.approx(1.0)  # rank-based: monotone-invariant
  assert influence.topk_overlap(a, np.exp(a), k=9) == 1.0
  assert influence.topk_overlap(a, -a, k=9) == 0.0  # 2k <= 40: disjoint top sets
  scores = influence.compare_influence(b, a, k=9)
  assert set(scores) == {"pearson", "spearman", "pearson_row_mean", "spearman_row_mean",
                         "top9_overlap"}
  assert 0 < scores["top9_overlap"] < 1
  with pytest.raises(ValueError, match="shape"):
    influence.pearson(a, a[:, :3])
  with pytest.raises(ValueError, match="k must be"):
    influence.topk_overlap(a, b, k=41)
