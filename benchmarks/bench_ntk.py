r"""KIP's ConvNet NTK: ddjax's kernel (ddjax.distill.ntk) against neural-tangents', side by side.

    .venv/bin/python -m benchmarks.bench_ntk
    .venv/bin/python -m benchmarks.bench_ntk --dataset=mnist5k --ipc=10 --repeats=5

Builds the KIP config (configs/distill/kip.py:dataset=mnist5k,ipc=10: depth 3, no pooling,
100 support and 200 target 28x28 images) once per `config.kip.kernel_impl` and times, in
one process, with the two implementations interleaved repeat by repeat (so that a busy
machine slows both alike):

* `kernel+grad`: the jitted KRR loss and its gradient w.r.t. the support images, i.e. the
  kernels K_ts, K_ss forward and backward (kip.krr_loss);
* `distill_step`: the jitted KIP iteration as the driver runs it (state donated);
* with --pooled_tile=N, `pooled tile`: the pooled kernel (KIP's CIFAR kernel: depth 3, 2x2
  average pooling, full spatial covariance) and its gradient on one N x N tile, the unit
  that `kip.blocked` maps over.

Each is called once to compile (not timed), then --repeats times; the median is reported,
and the ratio neural_tangents / ddjax (> 1: ddjax faster). Needs neural-tangents (the
legacy stack, jax 0.5.x). Prints one line per measurement and a JSON summary.
"""

from __future__ import annotations

import functools
import json
import statistics
import time

from absl import app, flags

_DATASET = flags.DEFINE_string("dataset", "mnist5k", "KIP config dataset.")
_IPC = flags.DEFINE_integer("ipc", 10, "Images per class.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement (median reported).")
_POOLED_TILE = flags.DEFINE_integer(
    "pooled_tile", 0, "Also time the pooled kernel (depth 3, 2x2 average pooling) and its "
    "gradient on one tile of this many target x support images of the dataset (0: off).")
_IMPLS = ("ddjax", "neural_tangents")


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  from configs.distill import kip as kip_config  # pylint: disable=g-import-not-at-top
  from ddjax.distill import base, driver, kip  # pylint: disable=g-import-not-at-top

  setups = {}
  for impl in _IMPLS:
    config = kip_config.get_config(f"dataset={_DATASET.value},ipc={_IPC.value}")
    config.kip.kernel_impl = impl
    if impl == _IMPLS[0]:
      ds, _ = driver.load_data(config)
      real = base.make_real_data(ds.x_train, ds.y_train, ds.num_classes)
    hp = config.kip
    state = kip.init_state(config, driver.prng_keys(config)["init"], real)
    kernel = kip.make_kernel(hp, real.num_classes)
    x_t, y_t = base.sample_per_class(jax.random.PRNGKey(0), real, hp.target_per_class)
    x_t = x_t.reshape((-1,) + x_t.shape[2:])
    y_t = kip.centred_one_hot(y_t.reshape(-1), real.num_classes)
    y_s = kip.centred_one_hot(state.labels, real.num_classes)
    krr = lambda x_s, k, y_s, x_t, y_t, reg: kip.krr_loss(k, x_s, y_s, x_t, y_t, reg)[0]
    loss = jax.jit(jax.value_and_grad(functools.partial(
        krr, k=kernel, y_s=y_s, x_t=x_t, y_t=y_t, reg=hp.reg)))
    step = jax.jit(functools.partial(kip.distill_step, config), donate_argnums=(0,))
    setups[impl] = {"loss": loss, "step": step, "state": state, "images": state.images,
                    "config": config}
    if _POOLED_TILE.value:
      n = _POOLED_TILE.value
      pooled = kip.convnet_ntk(hp.depth, True, hp.w_std, hp.b_std, real.num_classes, impl)
      weights = jax.random.normal(jax.random.PRNGKey(1), (n, n))
      setups[impl]["tile"] = functools.partial(jax.jit(jax.value_and_grad(
          lambda x_s, x_t, k=pooled: (k(x_t, x_s) * weights).sum())), x_t=x_t[:n])
      setups[impl]["tile_images"] = state.images[:n]

  def run(impl, what, i):
    s = setups[impl]
    t = time.perf_counter()
    if what == "kernel+grad":
      jax.block_until_ready(s["loss"](s["images"]))
    elif what == "pooled tile":
      jax.block_until_ready(s["tile"](s["tile_images"]))
    else:
      s["state"], _ = s["step"](s["state"], driver.iteration_key(s["config"], i), real)
      jax.block_until_ready(s["state"].images)
    return time.perf_counter() - t

  results = {}
  for what in ("kernel+grad", "distill_step") + (("pooled tile",) if _POOLED_TILE.value else ()):
    for impl in _IMPLS:
      run(impl, what, 0)  # compile
    times = {impl: [] for impl in _IMPLS}
    for i in range(_REPEATS.value):
      for impl in _IMPLS:
        times[impl].append(run(impl, what, i + 1))
    medians = {impl: statistics.median(t) for impl, t in times.items()}
    ratio = medians["neural_tangents"] / medians["ddjax"]
    results[what] = {"median_s": medians, "times_s": times, "ratio_nt_over_ddjax": ratio}
    print(f"{what:13s} ddjax {medians['ddjax']:7.3f} s, neural_tangents "
          f"{medians['neural_tangents']:7.3f} s (median of {_REPEATS.value}): "
          f"neural_tangents / ddjax = {ratio:.2f}")
  print(json.dumps({"dataset": _DATASET.value, "ipc": _IPC.value, "jax": jax.__version__,
                    "devices": [str(d) for d in jax.devices()], **results}))


if __name__ == "__main__":
  app.run(main)
