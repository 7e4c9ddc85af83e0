r"""DSA parity: ddjax.augment against the reference PyTorch operations, op by op.

Draws random NHWC images and per-sample parameters, applies ddjax's primitives with those
parameters (`affine_sample` for scale/rotate with both align_corners settings,
`translate`, `cutout`, flip, and `color`), and runs the DatasetCondensation code
for the same parameters in PyTorch (benchmarks/torch_dsa.py, in .bench-venv). Prints the
max absolute difference per op; all should be float32 round-off (< 1e-5).

    .venv/bin/python -m benchmarks.dsa_parity
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from ddjax import augment

_TORCH_PYTHON = flags.DEFINE_string("torch_python", ".bench-venv/bin/python", "Python with torch.")
_SIZE = flags.DEFINE_integer("size", 32, "Image side.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  n, size, p = 8, _SIZE.value, augment.DSAParams()
  x = rng.normal(size=(n, size, size, 3)).astype(np.float32)
  sx = rng.uniform(1 / p.ratio_scale, p.ratio_scale, n)
  sy = rng.uniform(1 / p.ratio_scale, p.ratio_scale, n)
  angle = rng.uniform(-p.ratio_rotate, p.ratio_rotate, n) * math.pi / 180
  zeros = np.zeros(n)
  arrays = {
      "x": x,
      "theta_scale": np.stack([np.stack([sx, zeros, zeros], -1),
                               np.stack([zeros, sy, zeros], -1)], 1).astype(np.float32),
      "theta_rotate": np.stack([np.stack([np.cos(angle), -np.sin(angle), zeros], -1),
                                np.stack([np.sin(angle), np.cos(angle), zeros], -1)], 1
                               ).astype(np.float32),
      "shift_h": rng.integers(-4, 5, n), "shift_w": rng.integers(-4, 5, n),
      "cut_size": np.asarray(int(size * p.ratio_cutout + 0.5)),
      "centre_h": rng.integers(0, size + 1, n), "centre_w": rng.integers(0, size + 1, n),
      "u_bright": rng.uniform(size=n).astype(np.float32),
      "u_sat": rng.uniform(size=n).astype(np.float32),
      "u_contrast": rng.uniform(size=n).astype(np.float32),
  }
  xj = jnp.asarray(x)
  for ac in (0, 1):
    for op in ("scale", "rotate"):
      arrays[f"jax_{op}_align{ac}"] = np.asarray(
          augment.affine_sample(xj, jnp.asarray(arrays[f"theta_{op}"]), bool(ac)))
  arrays["jax_crop"] = np.asarray(augment.translate(xj, jnp.asarray(arrays["shift_h"]),
                                                    jnp.asarray(arrays["shift_w"])))
  cut = int(arrays["cut_size"])
  arrays["jax_cutout"] = np.asarray(augment.cutout(xj, jnp.asarray(arrays["centre_h"]),
                                                   jnp.asarray(arrays["centre_w"]), cut, cut))
  arrays["jax_flip"] = x[:, :, ::-1, :]
  arrays["jax_color"] = np.asarray(augment.color(
      xj, *(jnp.asarray(arrays[k]) for k in ("u_bright", "u_sat", "u_contrast")), p))
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "dsa_parity.npz")
    np.savez(path, **arrays)
    run = subprocess.run([_TORCH_PYTHON.value, os.path.join(ROOT, "benchmarks", "torch_dsa.py"),
                          path], capture_output=True, text=True, cwd=ROOT)
  if run.returncode != 0:
    sys.exit(f"PyTorch side failed (is {_TORCH_PYTHON.value} set up? `make bench-setup`):\n"
             f"{run.stderr[-2000:]}")
  diffs = json.loads(run.stdout.strip().splitlines()[-1])
  width = max(map(len, diffs))
  for name, diff in diffs.items():
    print(f"{name:<{width}}  max |jax - torch| = {diff:.2e}")
  worst = max(diffs.values())
  print(f"worst: {worst:.2e} ({'OK' if worst < 1e-4 else 'MISMATCH'})")


if __name__ == "__main__":
  app.run(main)
