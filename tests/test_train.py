"""Training protocols: determinism, vmap == loop, weighting, minibatching, evaluation."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ddjax import models, train

KEY = jax.random.PRNGKey(0)
MODEL = models.get_model("convnet", 3, width=4, depth=1)


def _toy_data(n=12, key=KEY):
  kx, _ = jax.random.split(key)
  y = jnp.arange(n) % 3
  # Class-dependent brightness makes the task learnable.
  x = jax.random.normal(kx, (n, 8, 8, 1)) * 0.5 + y[:, None, None, None].astype(jnp.float32)
  return x, y.astype(jnp.int32)


def _init(key):
  return models.init_variables(MODEL, key, (1, 8, 8, 1))


TX = train.sgd_momentum(0.05, 0.9)
full_batch = jax.jit(functools.partial(train.train_full_batch, MODEL, TX, num_steps=15))


def test_protocol_a_deterministic_and_learns():
  x, y = _toy_data()
  v1, h1 = full_batch(_init(KEY), x, y)
  v2, h2 = full_batch(_init(KEY), x, y)
  chex.assert_trees_all_equal(v1, v2)
  chex.assert_shape(h1["loss"], (15,))
  assert h1["loss"][-1] < h1["loss"][0]
  v3, _ = full_batch(_init(jax.random.PRNGKey(1)), x, y)
  assert not np.allclose(v1["params"]["head"]["kernel"], v3["params"]["head"]["kernel"])


def test_protocol_a_vmap_over_seeds_equals_loop():
  x, y = _toy_data()
  keys = jax.random.split(KEY, 3)
  batched, hist = jax.vmap(lambda k: full_batch(_init(k), x, y))(keys)
  for i, k in enumerate(keys):
    single, h = full_batch(_init(k), x, y)
    chex.assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[i], batched), single,
                                rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(hist["loss"][i], h["loss"], rtol=1e-5)


def test_protocol_a_weight_masks_vmap_and_leave_one_out_exactness():
  x, y = _toy_data()
  v0 = _init(KEY)
  masks = jnp.ones((3, 12)).at[1, 4].set(0.0).at[2, 7].set(0.0)
  batched, _ = jax.vmap(lambda w: full_batch(v0, x, y, sample_weights=w))(masks)
  # All-ones weights == unweighted training.
  unweighted, _ = full_batch(v0, x, y)
  chex.assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[0], batched), unweighted,
                              rtol=1e-5, atol=1e-6)
  # A zero weight == training without that example.
  keep = np.arange(12) != 4
  removed, _ = full_batch(v0, x[keep], y[keep])
  chex.assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[1], batched), removed,
                              rtol=1e-4, atol=1e-6)


def test_protocol_a_record_fn_and_augment_hook():
  x, y = _toy_data()
  record = train.make_eval_recorder(MODEL, x, y, predictions=True)
  f = jax.jit(functools.partial(train.train_full_batch, MODEL, TX, num_steps=5, record_fn=record,
                                augment_fn=lambda k, xb: xb + 0.0 * jax.random.normal(k, xb.shape)))
  v, h = f(_init(KEY), x, y, key=KEY)
  chex.assert_shape(h["record"]["accuracy"], (5,))
  chex.assert_shape(h["record"]["predictions"], (5, 12))
  final = train.evaluate(MODEL, v, x, y)
  np.testing.assert_allclose(h["record"]["accuracy"][-1], final["accuracy"])
  np.testing.assert_array_equal(h["record"]["predictions"][-1], final["predictions"])
  with pytest.raises(ValueError, match="augment_fn needs a PRNG key"):
    train.train_full_batch(MODEL, TX, _init(KEY), x, y, num_steps=1, augment_fn=lambda k, a: a)


def test_epoch_batches_cover_each_example_once_with_partial_last_batch():
  idx, mask = train._epoch_batches(KEY, 10, 4)
  chex.assert_shape(idx, (3, 4))
  np.testing.assert_array_equal(mask.sum(1), [4, 4, 2])
  np.testing.assert_array_equal(np.sort(np.asarray(idx)[np.asarray(mask) > 0]), np.arange(10))
  # The padding (what batch norm sees beside the real entries) is distinct real examples.
  padding = np.asarray(idx)[np.asarray(mask) == 0]
  assert len(set(padding.tolist())) == len(padding) == 2
  idx, mask = train._epoch_batches(KEY, 3, 8)  # a batch bigger than the data: cycles
  np.testing.assert_array_equal(np.sort(np.bincount(np.asarray(idx).ravel(), minlength=3)), [2, 3, 3])


def test_protocol_b_minibatch_history_and_resume_sequence():
  x, y = _toy_data(10)
  state = train.create_train_state(_init(KEY), TX)
  record = train.make_eval_recorder(MODEL, x, y, predictions=True)
  run = jax.jit(functools.partial(train.train_minibatch, MODEL, TX, num_epochs=3, batch_size=4,
                                  record_fn=record))
  final, hist = run(state, x, y, KEY)
  assert int(final.step) == 9  # 3 epochs x ceil(10 / 4)
  chex.assert_shape(hist["loss"], (9,))
  chex.assert_shape(hist["record"]["predictions"], (9, 10))
  # Two epochs then one more (first_epoch=2) follow the same shuffle sequence.
  part = jax.jit(functools.partial(train.train_minibatch, MODEL, TX, batch_size=4),
                 static_argnames="num_epochs")
  mid, _ = part(state, x, y, KEY, num_epochs=2)
  resumed, _ = part(mid, x, y, KEY, num_epochs=1, first_epoch=2)
  chex.assert_trees_all_close(resumed.params, final.params, rtol=1e-5, atol=1e-6)


def test_partial_batch_loss_is_mean_over_real_examples():
  x, y = _toy_data(6)
  state = train.create_train_state(_init(KEY), TX)
  w = jnp.array([1, 1, 0, 0, 1, 0], jnp.float32)
  _, m = train.train_step(MODEL, TX, state, x, y, w)
  logits = MODEL.apply(_init(KEY), x)
  per = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  np.testing.assert_allclose(m["loss"], per[w > 0].mean(), rtol=1e-5)


def test_evaluate_batches_match_direct():
  x, y = _toy_data(23)
  v = _init(KEY)
  out = jax.jit(functools.partial(train.evaluate, MODEL, batch_size=5))(v, x, y)
  logits = MODEL.apply(v, x)
  np.testing.assert_allclose(out["per_example_loss"],
                             optax.softmax_cross_entropy_with_integer_labels(logits, y), rtol=1e-5)
  np.testing.assert_array_equal(out["predictions"], jnp.argmax(logits, -1))
  np.testing.assert_allclose(out["accuracy"], jnp.mean(jnp.argmax(logits, -1) == y))
  soft = jax.nn.one_hot(y, 3)
  np.testing.assert_allclose(train.evaluate(MODEL, v, x, soft)["loss"], out["loss"], rtol=1e-5)


def test_dc_optimizer_drops_lr_at_midpoint_with_weight_decay():
  tx = train.dc_optimizer(0.1, total_steps=10, momentum=0.0, weight_decay=0.5)
  params = jnp.array(2.0)
  state = tx.init(params)
  steps = []
  for _ in range(10):
    update, state = tx.update(jnp.array(0.0), state, params)
    steps.append(float(update))
  # The update is -lr * wd * p: lr 0.1 for 5 steps, then 0.01.
  np.testing.assert_allclose(steps[:5], -0.1 * 0.5 * 2.0, rtol=1e-6)
  np.testing.assert_allclose(steps[5:], -0.01 * 0.5 * 2.0, rtol=1e-6)


def test_dc_protocol_and_protocol_a_over_seeds():
  x, y = _toy_data(12)
  keys = jax.random.split(KEY, 2)
  acc_dc = train.evaluate_dc_protocol(MODEL, keys, x, y, x, y, num_epochs=3, batch_size=8)
  acc_a = train.protocol_a_accuracy(MODEL, keys, x, y, x, y, num_steps=10)
  chex.assert_shape(acc_dc, (2,))
  chex.assert_shape(acc_a, (2,))
  assert np.all((0 <= acc_a) & (acc_a <= 1))
  mean, std = train.mean_std(acc_a)
  assert 0 <= mean <= 1 and std >= 0


def test_cross_entropy_weighted_mean_and_soft_labels():
  logits = jax.random.normal(KEY, (4, 3))
  y = jnp.array([0, 1, 2, 1])
  per = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  w = jnp.array([1.0, 0.0, 2.0, 1.0])
  np.testing.assert_allclose(train.cross_entropy(logits, y, w), (per * w).sum() / 4, rtol=1e-6)
  np.testing.assert_allclose(train.cross_entropy(logits, jax.nn.one_hot(y, 3)), per.mean(), rtol=1e-6)
