"""DSA augmentation: reference geometry, Siamese identity, per-sample variety, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax import augment

KEY = jax.random.PRNGKey(0)
ALL = "color_crop_cutout_flip_scale_rotate"


def _images(n=6, h=12, w=12, c=3, key=KEY):
  return jax.random.normal(key, (n, h, w, c))


def test_parse_strategy_and_errors():
  assert augment.parse_strategy(ALL) == augment.FAMILIES
  assert augment.parse_strategy("none") == augment.parse_strategy("None") == ()
  with pytest.raises(ValueError, match=r"Unknown DSA augmentation family \['blur'\]"):
    augment.parse_strategy("color_blur")
  with pytest.raises(ValueError, match="Unknown DSA"):
    augment.dsa(KEY, _images(), "crop_noise")
  with pytest.raises(ValueError, match="NHWC"):
    augment.dsa(KEY, jnp.zeros((4, 8, 8)), "crop")
  x = _images()
  np.testing.assert_array_equal(augment.dsa(KEY, x, "none"), x)
  assert augment.make_augment_fn("none") is None


@pytest.mark.parametrize("align_corners", [False, True])
def test_affine_identity_and_quarter_turn(align_corners):
  x = _images(h=9, w=9)
  eye = jnp.broadcast_to(jnp.array([[1.0, 0, 0], [0, 1.0, 0]]), (x.shape[0], 2, 3))
  np.testing.assert_allclose(augment.affine_sample(x, eye, align_corners), x, atol=1e-5)
  # A 90-degree rotation maps pixel centres onto pixel centres: exactly np.rot90.
  quarter = jnp.broadcast_to(jnp.array([[0.0, -1.0, 0], [1.0, 0.0, 0]]), (x.shape[0], 2, 3))
  np.testing.assert_allclose(augment.affine_sample(x, quarter, align_corners),
                             np.rot90(np.asarray(x), k=1, axes=(1, 2)), atol=1e-5)


def test_affine_zoom_out_pads_with_zeros():
  # theta = 2 I samples twice as far out: the border falls outside and reads zero,
  # the centre pixel stays.
  x = jnp.ones((1, 9, 9, 1))
  out = augment.affine_sample(x, jnp.array([[[2.0, 0, 0], [0, 2.0, 0]]]))
  assert float(out[0, 0, 0, 0]) == 0.0 and float(out[0, 4, 4, 0]) == pytest.approx(1.0)


def test_translate_and_cutout_geometry():
  x = _images(n=2, h=8, w=8, c=1)
  out = augment.translate(x, jnp.array([2, -3]), jnp.array([-1, 0]))
  xn = np.asarray(x)
  for n, (dh, dw) in enumerate([(2, -1), (-3, 0)]):
    expected = np.zeros_like(xn[n])
    for i in range(8):
      for j in range(8):
        if 0 <= i + dh < 8 and 0 <= j + dw < 8:
          expected[i, j] = xn[n, i + dh, j + dw]
    np.testing.assert_allclose(out[n], expected)
  cut = np.asarray(augment.cutout(jnp.ones((1, 8, 8, 1)), jnp.array([1]), jnp.array([6]), 4, 4))
  # Rows 1-2 .. 1+1, i.e. [-1, 3) -> 0..2; columns [4, 8).
  expected = np.ones((8, 8))
  expected[0:3, 4:8] = 0
  np.testing.assert_array_equal(cut[0, ..., 0], expected)


@pytest.mark.parametrize("family", augment.FAMILIES)
def test_siamese_same_transform_for_any_batch(family):
  """One key, two batches of different sizes: every image gets the identical transform."""
  real = _images(n=7, key=jax.random.PRNGKey(1))

  @jax.jit
  def outputs(keys):
    apply = jax.vmap(lambda k, x: augment.apply_family(family, k, x, siamese=True), (0, None))
    return apply(keys, real), apply(keys, real[2:4]), apply(keys, jnp.stack([real[0], real[0]]))

  out_real, out_syn, twice = outputs(jax.random.split(KEY, 4))
  np.testing.assert_allclose(out_syn, out_real[:, 2:4], atol=1e-5)
  # The same image twice in a batch: the same output (one parameter draw per batch).
  np.testing.assert_allclose(twice[:, 0], twice[:, 1], atol=1e-6)


def test_dsa_siamese_picks_one_family_for_both_batches():
  real = _images(n=9, key=jax.random.PRNGKey(2))
  keys = jax.random.split(KEY, 12)

  @jax.jit
  def outputs(keys):
    f = jax.vmap(functools.partial(augment.dsa, strategy=ALL, siamese=True), (0, None))
    return f(keys, real), f(keys, real[:3])

  out_real, out_syn = outputs(keys)
  np.testing.assert_allclose(out_syn, out_real[:, :3], atol=1e-5)
  # The call applies exactly the family `sample_family` names, with fold_in(key, 1).
  for i in (0, 5, 11):
    family = augment.FAMILIES[int(augment.sample_family(keys[i], ALL))]
    expected = augment.apply_family(family, jax.random.fold_in(keys[i], 1), real, siamese=True)
    np.testing.assert_allclose(out_real[i], expected, atol=1e-5)


def test_family_choice_covers_all_families_uniformly():
  keys = jax.random.split(KEY, 3000)
  counts = np.bincount(np.asarray(jax.vmap(lambda k: augment.sample_family(k, ALL))(keys)),
                       minlength=6)
  assert counts.min() > 400 and counts.max() < 600, counts


@pytest.mark.parametrize("family", ["crop", "cutout", "flip", "scale", "rotate"])
def test_per_sample_mode_varies_across_images(family):
  x = jnp.broadcast_to(_images(n=1, c=1), (16, 12, 12, 1))
  per_sample, siamese = jax.jit(lambda x: (augment.apply_family(family, KEY, x, siamese=False),
                                           augment.apply_family(family, KEY, x, siamese=True)))(x)
  per_sample, siamese = np.asarray(per_sample), np.asarray(siamese)
  assert len({per_sample[i].tobytes() for i in range(16)}) > 1
  assert len({siamese[i].tobytes() for i in range(16)}) == 1


def test_parameter_ranges_match_reference():
  x = jnp.ones((512, 32, 32, 1))
  # Cutout zeroes a 16 x 16 square clipped to the image: between 64 (corner) and 256 pixels.
  zeros = np.asarray(jnp.sum(augment.apply_family("cutout", KEY, x, siamese=False) == 0, (1, 2, 3)))
  assert zeros.min() >= 64 and zeros.max() == 256
  # Crop translates by at most int(32 * 0.125 + 0.5) = 4 px per axis: the zero border
  # is at most 4 rows and 4 columns (4*32 + 4*32 - 16 pixels).
  zeros = np.asarray(jnp.sum(augment.apply_family("crop", KEY, x, siamese=False) == 0, (1, 2, 3)))
  assert zeros.max() <= 4 * 32 + 4 * 32 - 16 and zeros.max() >= 3 * 32
  # Brightness/saturation/contrast on a constant image: only brightness changes it,
  # by (u - 0.5) in [-0.5, 0.5].
  out = np.asarray(augment.apply_family("color", KEY, jnp.zeros((512, 4, 4, 3)), siamese=False))
  assert np.abs(out).max() <= 0.5 and np.ptp(out[:, 0, 0, 0]) > 0.8


def test_differentiable_in_images():
  """Gradients w.r.t. the images equal central finite differences, for every family and
  for the family-switching `dsa` (all families but color are linear in the images)."""
  x = _images(n=2, h=6, w=6, c=2)
  k = jax.random.PRNGKey(3)
  weights = jax.random.normal(jax.random.PRNGKey(4), x.shape)
  directions = jax.random.normal(jax.random.PRNGKey(5), (2,) + x.shape)
  fns = {f: functools.partial(augment.apply_family, f, k, siamese=False) for f in augment.FAMILIES}
  fns["dsa"] = lambda im: augment.dsa(k, im, ALL, siamese=True)
  eps = 1e-2

  def check(fn):
    objective = lambda im: jnp.sum(weights * jnp.tanh(fn(im)))
    grad = jax.grad(objective)(x)
    fd = jax.vmap(lambda v: (objective(x + eps * v) - objective(x - eps * v)) / (2 * eps))(
        directions)
    return jnp.einsum("k...,...->k", directions, grad), fd, jnp.any(grad != 0)

  results = jax.jit(lambda: {name: check(fn) for name, fn in fns.items()})()
  for name, (analytic, numeric, nonzero) in results.items():
    np.testing.assert_allclose(analytic, numeric, rtol=2e-2, atol=2e-2, err_msg=name)
    assert bool(nonzero), name
