"""The PyTorch side of benchmarks/dsa_parity.py: the reference DSA ops with fixed parameters.

Runs in .bench-venv (CPU torch; no jax). Reads an .npz with NHWC images and per-sample
parameters, applies the DatasetCondensation `utils.py` operations (affine_grid +
grid_sample for scale/rotate, the meshgrid gather for crop, the cutout mask, flip,
brightness/saturation/contrast) exactly as written there, but with the parameters given
instead of drawn, and prints one JSON line of max |jax - torch| per op.

    .bench-venv/bin/python benchmarks/torch_dsa.py /tmp/dsa_parity.npz
"""

import json
import sys

import numpy as np
import torch
import torch.nn.functional as F


def main(path):
  d = np.load(path)
  x = torch.tensor(d["x"]).permute(0, 3, 1, 2).contiguous()  # NCHW, as the reference
  n, _, h, w = x.shape
  out = {}
  for ac in (0, 1):
    for op in ("scale", "rotate"):
      theta = torch.tensor(d[f"theta_{op}"])
      grid = F.affine_grid(theta, x.shape, align_corners=bool(ac))
      y = F.grid_sample(x, grid, align_corners=bool(ac))
      out[f"{op}_align{ac}"] = y
  # rand_crop with given translations.
  tx = torch.tensor(d["shift_h"]).long().view(n, 1, 1)
  ty = torch.tensor(d["shift_w"]).long().view(n, 1, 1)
  gb, gx, gy = torch.meshgrid(torch.arange(n), torch.arange(h), torch.arange(w), indexing="ij")
  gx = torch.clamp(gx + tx + 1, 0, h + 1)
  gy = torch.clamp(gy + ty + 1, 0, w + 1)
  x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
  out["crop"] = x_pad.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)
  # rand_cutout with given centres.
  size = int(d["cut_size"])
  ox = torch.tensor(d["centre_h"]).long().view(n, 1, 1)
  oy = torch.tensor(d["centre_w"]).long().view(n, 1, 1)
  gb, gx, gy = torch.meshgrid(torch.arange(n), torch.arange(size), torch.arange(size),
                              indexing="ij")
  gx = torch.clamp(gx + ox - size // 2, min=0, max=h - 1)
  gy = torch.clamp(gy + oy - size // 2, min=0, max=w - 1)
  mask = torch.ones(n, h, w)
  mask[gb, gx, gy] = 0
  out["cutout"] = x * mask.unsqueeze(1)
  # flip, then the color chain with given draws.
  out["flip"] = x.flip(3)
  b, s, c = (torch.tensor(d[k]).view(n, 1, 1, 1) for k in ("u_bright", "u_sat", "u_contrast"))
  y = x + (b - 0.5) * 1.0
  y = (y - y.mean(dim=1, keepdim=True)) * (s * 2.0) + y.mean(dim=1, keepdim=True)
  m = y.mean(dim=[1, 2, 3], keepdim=True)
  out["color"] = (y - m) * (c + 0.5) + m
  diffs = {k: float(np.abs(v.permute(0, 2, 3, 1).numpy() - d[f"jax_{k}"]).max())
           for k, v in out.items()}
  print(json.dumps(diffs))


if __name__ == "__main__":
  main(sys.argv[1])
