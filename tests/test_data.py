"""Data loaders, preprocessing and sampling."""

import dataclasses

import chex
import jax
import numpy as np
import pytest

from ddjax import data


@pytest.fixture(scope="module")
def mnist5k():
  return data.load_mnist5k()


def test_mnist5k_split_is_fixed_and_balanced(mnist5k):
  chex.assert_shape(mnist5k.x_train, (4000, 28, 28, 1))
  chex.assert_shape(mnist5k.x_test, (1000, 28, 28, 1))
  assert mnist5k.x_train.dtype == np.float32 and mnist5k.y_train.dtype == np.int32
  np.testing.assert_array_equal(np.bincount(mnist5k.y_train), [400] * 10)
  np.testing.assert_array_equal(np.bincount(mnist5k.y_test), [100] * 10)
  assert 0.0 <= mnist5k.x_train.min() and mnist5k.x_train.max() <= 1.0
  # Train and test rows are disjoint (no image appears in both).
  train_hashes = {x.tobytes() for x in mnist5k.x_train}
  assert not any(x.tobytes() in train_hashes for x in mnist5k.x_test)
  again = data.load_dataset("mnist5k")
  np.testing.assert_array_equal(again.x_test, mnist5k.x_test)


def _write_npz(path, **arrays):
  np.savez(path, **arrays)
  return f"npz:{path}"


def _good_arrays(n=12, shape=(8, 8, 3)):
  rng = np.random.default_rng(0)
  return dict(x_train=rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
              y_train=np.arange(n) % 3,
              x_test=rng.integers(0, 256, (6,) + shape, dtype=np.uint8),
              y_test=np.arange(6) % 3)


def test_npz_loads_and_scales_uint8(tmp_path):
  ds = data.load_dataset(_write_npz(tmp_path / "d.npz", **_good_arrays()))
  assert ds.num_classes == 3 and ds.image_shape == (8, 8, 3)
  assert ds.x_train.dtype == np.float32 and ds.x_train.max() <= 1.0


@pytest.mark.parametrize("change,message", [
    (dict(y_train=None), "missing keys"),
    (dict(y_train=np.array(["a"] * 12)), "integer class labels"),
    (dict(y_train=np.arange(11) % 3), "one label per image"),
    (dict(x_train=np.zeros((12, 8), np.uint8)), "must be \\[N, H, W, C\\]"),
    (dict(x_test=np.zeros((6, 4, 4, 3), np.uint8)), "differ in shape"),
    (dict(y_test=np.array([0, 1, 2, 0, 1, -1])), "outside"),
    (dict(x_train=np.full((12, 8, 8, 3), np.nan, np.float32)), "NaN"),
    (dict(x_train=np.zeros((12, 8, 8, 3), np.complex64)), "uint8 or float"),
])
def test_npz_bad_input_names_the_problem(tmp_path, change, message):
  arrays = _good_arrays()
  for k, v in change.items():
    if v is None:
      del arrays[k]
    else:
      arrays[k] = v
  with pytest.raises(data.DatasetError, match=message):
    data.load_dataset(_write_npz(tmp_path / "bad.npz", **arrays))


def test_npz_out_of_range_labels_with_declared_classes(tmp_path):
  arrays = _good_arrays()
  arrays["num_classes"] = np.array(2)
  with pytest.raises(data.DatasetError, match="outside \\[0, 2\\)"):
    data.load_dataset(_write_npz(tmp_path / "d.npz", **arrays))


def test_missing_npz_and_unknown_dataset():
  with pytest.raises(data.DatasetError, match="not found"):
    data.load_dataset("npz:/nonexistent/file.npz")
  with pytest.raises(data.DatasetError, match="Unknown dataset 'no_such_dataset_xyz'"):
    data.load_dataset("no_such_dataset_xyz")


def test_tfds_mock_cifar10():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # (100 examples: with fewer, mock_data's random labels leave classes without training
  # images, which the loader refuses.)
  with tfds.testing.mock_data(num_examples=100):
    ds = data.load_dataset("cifar10")
  chex.assert_shape(ds.x_train, (100, 32, 32, 3))
  chex.assert_shape(ds.x_test, (100, 32, 32, 3))
  assert ds.num_classes == 10 and len(ds.class_names) == 10
  assert ds.y_train.min() >= 0 and ds.y_train.max() < 10
  assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_tfds_unprepared_offline_says_how_to_prepare(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with pytest.raises(data.DatasetError, match="(?s)not prepared.*download_and_prepare"):
    data.load_tfds("mnist", data_dir=str(tmp_path), download=False)

  def no_network(self, *args, **kwargs):
    raise ConnectionError("no network")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_network)
  with pytest.raises(data.DatasetError, match="(?s)downloading it failed.*no network"):
    data.load_tfds("mnist", data_dir=str(tmp_path))


def test_standardize_uses_dd_constants_and_inverts(mnist5k):
  pre = data.fit_preprocessor("standardize", mnist5k.x_train, "mnist5k")
  np.testing.assert_allclose(pre.mean, [0.1307]) and np.testing.assert_allclose(pre.std, [0.3081])
  x = mnist5k.x_test[:5]
  np.testing.assert_allclose(pre.apply(x), (x - 0.1307) / 0.3081, rtol=1e-6)
  np.testing.assert_allclose(pre.invert(pre.apply(x)), x, atol=1e-6)
  # Works on jax arrays too, and round-trips through arrays (distilled-set files).
  np.testing.assert_allclose(np.asarray(pre.apply(jax.numpy.asarray(x))), pre.apply(x), rtol=1e-6)
  again = data.Preprocessor.from_arrays(pre.to_arrays())
  np.testing.assert_allclose(again.apply(x), pre.apply(x))


def test_standardize_unknown_dataset_uses_train_statistics():
  x = np.random.default_rng(0).uniform(size=(50, 4, 4, 3)).astype(np.float32)
  pre = data.fit_preprocessor("standardize", x, "npz:custom")
  z = pre.apply(x)
  np.testing.assert_allclose(z.mean(axis=(0, 1, 2)), 0, atol=1e-5)
  np.testing.assert_allclose(z.std(axis=(0, 1, 2)), 1, atol=1e-4)


def test_zca_kornia_whitens_and_inverts():
  rng = np.random.default_rng(0)
  mixing = rng.normal(size=(48, 48))
  x = (rng.normal(size=(400, 48)) @ mixing).reshape(400, 4, 4, 3).astype(np.float32) * 0.1
  pre = data.fit_preprocessor("zca_kornia", x, zca_strength=1e-4)
  z = pre.apply(x).reshape(400, -1)
  cov = np.cov(z, rowvar=False)
  np.testing.assert_allclose(cov, np.eye(48), atol=0.05)
  # The same transform applies to held-out images, and inverts exactly.
  x_new = x[:7] + 0.01
  np.testing.assert_allclose(pre.invert(pre.apply(x_new)), x_new, atol=1e-3)


def test_zca_reg_matches_definition():
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(100, 4, 4, 1)).astype(np.float32)
  pre = data.fit_preprocessor("zca_reg", x, zca_strength=0.1)
  flat = x.reshape(100, -1).astype(np.float64)
  flat = flat - flat.mean(1, keepdims=True)
  flat /= np.linalg.norm(flat, axis=1, keepdims=True)
  cov = flat.T @ flat / 100
  evals, evecs = np.linalg.eigh(cov)
  evals = evals + 0.1 * evals.sum() / 16
  expected = flat @ (evecs * evals ** -0.5) @ evecs.T
  np.testing.assert_allclose(pre.apply(x).reshape(100, -1), expected, atol=1e-4)
  shown = pre.invert(pre.apply(x))
  np.testing.assert_allclose(shown.reshape(100, -1).min(1), 0, atol=1e-5)
  np.testing.assert_allclose(shown.reshape(100, -1).max(1), 1, atol=1e-5)


def test_unknown_preprocessing():
  with pytest.raises(ValueError, match="Unknown preprocessing 'whiten'"):
    data.fit_preprocessor("whiten", np.zeros((2, 2, 2, 1)))


def test_class_balanced_sampling_is_seeded_sorted_and_nested(mnist5k):
  key = jax.random.PRNGKey(3)
  idx = data.class_balanced_indices(key, mnist5k.y_train, 10)
  np.testing.assert_array_equal(mnist5k.y_train[idx], np.repeat(np.arange(10), 10))
  assert len(set(idx.tolist())) == 100
  np.testing.assert_array_equal(idx, data.class_balanced_indices(key, mnist5k.y_train, 10))
  assert not np.array_equal(idx, data.class_balanced_indices(jax.random.PRNGKey(4), mnist5k.y_train, 10))
  bigger = data.class_balanced_indices(key, mnist5k.y_train, 50).reshape(10, 50)
  np.testing.assert_array_equal(bigger[:, :10].ravel(), idx)
  with pytest.raises(ValueError, match="cannot sample 401 per class"):
    data.class_balanced_indices(key, mnist5k.y_train, 401)


def test_init_synthetic_real_and_noise(mnist5k):
  key = jax.random.PRNGKey(0)
  x, y = data.init_synthetic(key, mnist5k.x_train, mnist5k.y_train, 3, 10, "real")
  chex.assert_shape(x, (30, 28, 28, 1))
  np.testing.assert_array_equal(y, np.repeat(np.arange(10), 3))
  xn, _ = data.init_synthetic(key, mnist5k.x_train, mnist5k.y_train, 3, 10, "noise")
  assert abs(float(xn.std()) - 1.0) < 0.05
  with pytest.raises(ValueError, match="Unknown synthetic init"):
    data.init_synthetic(key, mnist5k.x_train, mnist5k.y_train, 3, 10, "zeros")


def test_subset_keeps_metadata(mnist5k):
  small = data.subset(mnist5k, np.arange(10), np.arange(5))
  assert small.x_train.shape[0] == 10 and small.num_classes == 10
  assert dataclasses.replace(small).name == "mnist5k"
