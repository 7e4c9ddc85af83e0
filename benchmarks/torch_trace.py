"""PyTorch side of bench_trace.py: a PyHessian-style Hutchinson trace on the CPU.

Run by `benchmarks/bench_trace.py` with the PyTorch environment
(`.bench-venv/bin/python benchmarks/torch_trace.py --data=... --out=...`); it imports
only torch and numpy. The computation is PyHessian 0.1's `hessian.trace()` with a
dataloader: for each Rademacher probe v, a Python loop over the batches computes
the loss, its gradient with create_graph=True, and the gradient of (grad . v),
accumulated with weight batch size / N (`dataloader_hv_product`).

The model is the DC ConvNet (width W, depth 3, instance norm = GroupNorm(W, W),
ReLU, 2x2 average pooling, first conv padding 3 on 28x28 inputs), float32, with the
weights the JAX side wrote (or PyTorch's default init if none were given).
"""

import argparse
import json
import statistics
import time

import numpy as np
import torch
from torch import nn


def convnet(width: int, depth: int = 3, num_classes: int = 10, channels: int = 1,
            image_size: int = 28) -> nn.Sequential:
  layers, c, size = [], channels, image_size
  for d in range(depth):
    pad = 3 if d == 0 and image_size == 28 else 1
    layers += [nn.Conv2d(c, width, 3, padding=pad), nn.GroupNorm(width, width, eps=1e-5),
               nn.ReLU(), nn.AvgPool2d(2, 2)]
    size = (size + 2 * pad - 2) // 2
    c = width
  return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * size * size, num_classes))


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--data", required=True, help=".npz from bench_trace.py")
  parser.add_argument("--out", required=True, help="JSON results")
  parser.add_argument("--batch_size", type=int, default=500)
  parser.add_argument("--probes_per_repeat", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--threads", type=int, default=2)
  args = parser.parse_args()

  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  blob = np.load(args.data)
  x = torch.from_numpy(np.ascontiguousarray(blob["x"].transpose(0, 3, 1, 2)))  # NHWC -> NCHW
  y = torch.from_numpy(blob["y"].astype(np.int64))
  width = int(blob["width"])
  model = convnet(width, channels=x.shape[1], image_size=x.shape[2])
  params = [p for p in model.parameters() if p.requires_grad]
  names = [n for n, p in model.named_parameters() if p.requires_grad]
  if "param_names" in blob:
    if list(blob["param_names"]) != names:
      raise SystemExit(f"parameter names differ: {list(blob['param_names'])} vs {names}")
    with torch.no_grad():
      for name, p in zip(names, params):
        p.copy_(torch.from_numpy(blob[f"param:{name}"]))
  model.eval()  # PyHessian does this; no effect on this model
  criterion = nn.CrossEntropyLoss()
  batches = [(x[i:i + args.batch_size], y[i:i + args.batch_size])
             for i in range(0, x.shape[0], args.batch_size)]

  def dataloader_hv_product(v):
    thv = [torch.zeros_like(p) for p in params]
    num = 0.0
    for xb, yb in batches:
      model.zero_grad()
      loss = criterion(model(xb), yb)
      grads = torch.autograd.grad(loss, params, create_graph=True)
      hv = torch.autograd.grad(grads, params, grad_outputs=v, only_inputs=True,
                               retain_graph=False)
      thv = [t + h * float(xb.shape[0]) for t, h in zip(thv, hv)]
      num += float(xb.shape[0])
    return [t / num for t in thv]

  def probe_sample():
    v = [torch.randint_like(p, high=2) for p in params]
    for vi in v:
      vi[vi == 0] = -1
    hv = dataloader_hv_product(v)
    return float(sum(torch.sum(h * vi) for h, vi in zip(hv, v)))

  result = {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "num_params": int(sum(p.numel() for p in params)), "num_examples": int(x.shape[0]),
            "batch_size": args.batch_size}
  if "param_names" in blob and "probe:" + names[0] in blob:
    v = [torch.from_numpy(blob[f"probe:{n}"]) for n in names]
    hv = dataloader_hv_product(v)
    result["check_vhv"] = float(sum(torch.sum(h * vi) for h, vi in zip(hv, v)))

  t0 = time.perf_counter()
  for _ in range(args.warmup):
    probe_sample()
  result["warmup_s"] = time.perf_counter() - t0
  times, samples = [], []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    samples += [probe_sample() for _ in range(args.probes_per_repeat)]
    times.append(time.perf_counter() - t0)
  result.update(repeat_s=times, samples=samples,
                per_probe_s=statistics.median(times) / args.probes_per_repeat)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)


if __name__ == "__main__":
  main()
