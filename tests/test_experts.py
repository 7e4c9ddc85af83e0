"""Expert trajectories: determinism, vmap == loop, the buffer on disk, resuming."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import experts as experts_config
from ddjax import experts, models, train

KEY = jax.random.PRNGKey(0)
MODEL = models.get_model("convnet", 3, width=4, depth=1)
TX = train.sgd_momentum(0.05, 0.0, 5e-4)


def _data(n_per_class=8, num_classes=3, size=8, key=KEY):
  y = np.repeat(np.arange(num_classes), n_per_class).astype(np.int32)
  x = np.asarray(jax.random.normal(key, (len(y), size, size, 1))) + 0.5 * y[:, None, None, None]
  return jnp.asarray(x, jnp.float32), jnp.asarray(y)


def _group(indices, seed=0, epochs=2):
  x, y = _data()
  init_keys, train_keys = experts.expert_keys(seed, indices)
  return experts.train_group(MODEL, TX, x, y, x[:6], y[:6], init_keys, train_keys, epochs,
                             batch_size=8)


def test_expert_training_is_deterministic_per_seed():
  a, acc_a = _group([0, 1])
  b, acc_b = _group([0, 1])
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(acc_a, acc_b)
  c, _ = _group([0, 1], seed=1)
  assert not np.allclose(a[:, 0], c[:, 0])   # another seed: other inits
  assert a.shape == (2, 3, models.count_params(
      models.init_variables(MODEL, KEY, (1, 8, 8, 1))["params"]))
  assert not np.allclose(a[:, 0], a[:, 1])   # snapshots move
  assert not np.allclose(a[0], a[1])         # experts differ


def test_vmap_over_experts_equals_a_loop():
  together, _ = _group([0, 1, 2])
  for g, i in enumerate([0, 1, 2]):
    alone, _ = _group([i])
    np.testing.assert_allclose(together[g], alone[0], rtol=1e-5, atol=1e-6)


def _write_npz(tmp_path):
  x, y = _data(n_per_class=16)
  path = os.path.join(tmp_path, "toy.npz")
  np.savez(path, x_train=np.asarray(jax.nn.sigmoid(x)), y_train=np.asarray(y),
           x_test=np.asarray(jax.nn.sigmoid(x[::4])), y_test=np.asarray(y[::4]))
  return path


def _config(npz, **overrides):
  config = experts_config.get_config("quick")
  config.dataset = f"npz:{npz}"
  config.model_kwargs.depth = 1
  config.train_per_class = config.test_per_class = 0
  config.progress = False
  config.update(overrides)
  return config


def test_buffer_resumes_an_interrupted_group_and_adds_experts(tmp_path, monkeypatch):
  npz = _write_npz(tmp_path)
  reference_dir, buffer_dir = str(tmp_path / "reference"), str(tmp_path / "buffer")
  reference = experts.train_experts(_config(npz, num_experts=3), reference_dir)
  assert reference["num_experts"] == 3
  spec = experts.read_spec(reference_dir)
  assert spec["num_epochs"] == 2 and spec["weight_decay"] == 0.0  # buffer.py's --l2 default

  # Interrupt the first group (experts 0, 1) after its first epoch.
  real_make_epoch_fn = experts.make_epoch_fn

  def crashing_make_epoch_fn(*args, **kwargs):
    fn = real_make_epoch_fn(*args, **kwargs)

    def wrapped(states, x, y, keys, epoch):
      if epoch == 1:
        raise KeyboardInterrupt("simulated kill")
      return fn(states, x, y, keys, epoch)

    return wrapped

  monkeypatch.setattr(experts, "make_epoch_fn", crashing_make_epoch_fn)
  with pytest.raises(KeyboardInterrupt):
    experts.train_experts(_config(npz, num_experts=2), buffer_dir)
  monkeypatch.setattr(experts, "make_epoch_fn", real_make_epoch_fn)
  assert experts.completed_experts(buffer_dir, 2) == []
  with open(os.path.join(buffer_dir, experts.IN_PROGRESS, "group.json")) as f:
    assert json.load(f)["experts"] == [0, 1]

  # Resume (a different group size must not matter), then add a third expert.
  experts.train_experts(_config(npz, num_experts=2, experts_per_batch=1), buffer_dir)
  assert not os.path.exists(os.path.join(buffer_dir, experts.IN_PROGRESS))
  before = os.path.getmtime(experts.expert_path(buffer_dir, 0))
  experts.train_experts(_config(npz, num_experts=3), buffer_dir)
  assert os.path.getmtime(experts.expert_path(buffer_dir, 0)) == before  # not retrained

  got, _ = experts.load_trajectories(buffer_dir)
  want, _ = experts.load_trajectories(reference_dir)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  first2, _ = experts.load_trajectories(buffer_dir, num_experts=2, num_snapshots=2)
  np.testing.assert_array_equal(first2, got[:2, :2])

  # Refusals: other settings, too many snapshots, a wrong expected model.
  with pytest.raises(experts.ExpertBufferError, match="learning_rate"):
    experts.train_experts(_config(npz, learning_rate=0.02), buffer_dir)
  with pytest.raises(experts.ExpertBufferError, match="trained for 2 epochs"):
    experts.load_trajectories(buffer_dir, num_snapshots=4)
  with pytest.raises(experts.ExpertBufferError, match="model_kwargs"):
    experts.load_trajectories(buffer_dir, expected={"model_kwargs": {"width": 128}})
  with pytest.raises(experts.ExpertBufferError, match="launch.train_experts"):
    experts.load_trajectories(str(tmp_path / "nowhere"))
