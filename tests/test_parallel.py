"""Sharded pools on 8 forced CPU devices give the same results as one device."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ddjax import parallel

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))

EIGHT_DEVICE_SCRIPT = textwrap.dedent("""
    import functools, json, sys
    import jax, jax.numpy as jnp, numpy as np
    from ddjax import models, parallel, train
    assert jax.device_count() == 8, jax.devices()
    model = models.get_model("convnet", 3, width=4, depth=1)
    x = jax.random.normal(jax.random.PRNGKey(1), (12, 8, 8, 1))
    y = jnp.arange(12) % 3
    tx = train.sgd_momentum(0.05, 0.9)

    def final_loss(key, weights):  # one pool member: protocol A from its own init / mask
      v = models.init_variables(model, key, x.shape)
      v, hist = train.train_full_batch(model, tx, v, x, y, num_steps=5, sample_weights=weights)
      return train.evaluate(model, v, x, y)["per_example_loss"]

    keys = jax.random.split(jax.random.PRNGKey(0), 5)          # 5 members on 8 devices: padded
    masks = jnp.ones((5, 12)).at[jnp.arange(5), jnp.arange(5)].set(0.0)
    sharded = parallel.sharded_vmap(final_loss)(keys, masks)
    assert len(sharded.sharding.device_set) >= 1
    hvp_like = parallel.sharded_sum(lambda v, w: w * jnp.sin(v), in_axes=(0, 0))(
        jnp.arange(11.0), jnp.linspace(0, 1, 11))
    print(json.dumps({"pool": np.asarray(sharded).tolist(), "sum": float(hvp_like),
                      "devices": jax.device_count()}))
""")


@pytest.mark.slow
def test_sharded_pool_on_8_cpu_devices_matches_single_device():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8", PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-c", EIGHT_DEVICE_SCRIPT], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  import json  # pylint: disable=g-import-not-at-top
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["devices"] == 8

  # The same computation on this process's single device, plain vmap.
  from ddjax import models, train  # pylint: disable=g-import-not-at-top
  model = models.get_model("convnet", 3, width=4, depth=1)
  x = jax.random.normal(jax.random.PRNGKey(1), (12, 8, 8, 1))
  y = jnp.arange(12) % 3
  tx = train.sgd_momentum(0.05, 0.9)

  def final_loss(key, weights):
    v = models.init_variables(model, key, x.shape)
    v, _ = train.train_full_batch(model, tx, v, x, y, num_steps=5, sample_weights=weights)
    return train.evaluate(model, v, x, y)["per_example_loss"]

  keys = jax.random.split(jax.random.PRNGKey(0), 5)
  masks = jnp.ones((5, 12)).at[jnp.arange(5), jnp.arange(5)].set(0.0)
  single = jax.jit(jax.vmap(final_loss))(keys, masks)
  np.testing.assert_allclose(np.asarray(result["pool"]), single, rtol=1e-5, atol=1e-6)
  expected_sum = float(jnp.sum(jnp.linspace(0, 1, 11) * jnp.sin(jnp.arange(11.0))))
  np.testing.assert_allclose(result["sum"], expected_sum, rtol=1e-6)


def test_sharded_vmap_single_device_and_errors():
  f = parallel.sharded_vmap(lambda a, b: a * b, in_axes=(0, None))
  np.testing.assert_allclose(f(jnp.arange(3.0), 2.0), [0.0, 2.0, 4.0])
  with pytest.raises(ValueError, match="disagree on the member count"):
    parallel.sharded_vmap(lambda a, b: a + b)(jnp.arange(3.0), jnp.arange(4.0))
  with pytest.raises(ValueError, match="leading axes only"):
    parallel.sharded_vmap(lambda a: a, in_axes=(1,))(jnp.ones((2, 3)))
  total = parallel.sharded_sum(lambda a: a ** 2)(jnp.arange(4.0))
  np.testing.assert_allclose(total, 14.0)
