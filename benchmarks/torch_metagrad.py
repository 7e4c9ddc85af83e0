"""The PyTorch side of benchmarks/bench_metagrad.py: one MTT or BPTT meta-gradient iteration.

Runs in .bench-venv (CPU torch; no jax, no absl). The computation is the references':
a functional ConvNet on one flat parameter vector (MTT's ReparamModule style), the inner
steps unrolled with `torch.autograd.grad(..., create_graph=True)`, then one backward
pass into the synthetic images (and MTT's learned lr), then the outer optimiser step.

    .bench-venv/bin/python benchmarks/torch_metagrad.py --method=mtt --width=128 \
        --num_images=100 --steps=12 --batch=20 --repeats=3

Prints one JSON line: {"median_s": ..., "times_s": [...], "first_s": ...}.
"""

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F


def build(width: int, channels: int, num_classes: int, size: int):
  """Flat PyTorch-default init of the DC ConvNet, and its forward on a flat vector."""
  torch.manual_seed(0)
  convs = [torch.nn.Conv2d(channels if i == 0 else width, width, 3) for i in range(3)]
  feat = (32 if size == 28 else size) // 8
  fc = torch.nn.Linear(width * feat * feat, num_classes)
  shapes, tensors = [], []
  for conv in convs:
    for t in (conv.weight, conv.bias, torch.ones(width), torch.zeros(width)):  # + GroupNorm
      shapes.append(t.shape)
      tensors.append(t.detach().reshape(-1))
  for t in (fc.weight, fc.bias):
    shapes.append(t.shape)
    tensors.append(t.detach().reshape(-1))
  flat0 = torch.cat(tensors)

  def forward(flat, x):
    ps, i = [], 0
    for s in shapes:
      k = math.prod(s)
      ps.append(flat[i:i + k].view(s))
      i += k
    for layer in range(3):
      w, b, g, beta = ps[4 * layer:4 * layer + 4]
      x = F.conv2d(x, w, b, padding=3 if layer == 0 and x.shape[-1] == 28 else 1)
      x = F.group_norm(x, width, g, beta, eps=1e-5)
      x = F.avg_pool2d(F.relu(x), 2)
    return F.linear(x.flatten(1), ps[-2], ps[-1])

  return flat0, forward


def mtt_iteration(args):
  flat0, forward = build(args.width, args.channels, args.num_classes, args.image_size)
  n = args.num_images
  images = torch.randn(n, args.channels, args.image_size, args.image_size, requires_grad=True)
  labels = torch.arange(n) % args.num_classes
  syn_lr = torch.tensor(0.01, requires_grad=True)
  start, target = flat0, flat0 + 0.01 * torch.randn_like(flat0)
  opt_img = torch.optim.SGD([images], lr=100.0, momentum=0.5)
  opt_lr = torch.optim.SGD([syn_lr], lr=1e-5, momentum=0.5)

  def iteration():
    student = [start.clone().requires_grad_(True)]
    chunks = []
    for _ in range(args.steps):
      if not chunks:
        chunks = list(torch.split(torch.randperm(n), args.batch))
      idx = chunks.pop()
      ce = F.cross_entropy(forward(student[-1], images[idx]), labels[idx])
      grad = torch.autograd.grad(ce, student[-1], create_graph=True)[0]
      student.append(student[-1] - syn_lr * grad)
    loss = ((student[-1] - target) ** 2).sum() / ((start - target) ** 2).sum()
    opt_img.zero_grad()
    opt_lr.zero_grad()
    loss.backward()
    opt_img.step()
    opt_lr.step()

  return iteration


def bptt_iteration(args):
  shape = (args.channels, args.image_size, args.image_size)
  _, forward = build(args.width, *shape[:1], args.num_classes, args.image_size)
  n = args.num_images
  images = torch.randn(n, *shape, requires_grad=True)
  labels = torch.arange(n) % args.num_classes
  x_real = torch.randn(args.real, *shape)
  y_real = torch.arange(args.real) % args.num_classes
  opt = torch.optim.Adam([images], lr=0.01)

  def iteration():
    flat0, _ = build(args.width, *shape[:1], args.num_classes, args.image_size)  # fresh network
    p = flat0.requires_grad_(True)
    v = torch.zeros_like(p)
    for _ in range(args.steps):
      idx = torch.randperm(n)[:args.batch] if args.batch < n else torch.arange(n)
      g = torch.autograd.grad(F.cross_entropy(forward(p, images[idx]), labels[idx]), p,
                              create_graph=True)[0]
      v = 0.9 * v + g
      p = p - 0.01 * v
    loss = F.cross_entropy(forward(p, x_real), y_real)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_([images], 2.0)
    opt.step()

  return iteration


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--method", choices=["mtt", "bptt"], required=True)
  parser.add_argument("--width", type=int, default=128)
  parser.add_argument("--num_images", type=int, default=100)
  parser.add_argument("--steps", type=int, default=12)
  parser.add_argument("--batch", type=int, default=20)
  parser.add_argument("--real", type=int, default=320)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--channels", type=int, default=1)
  parser.add_argument("--image_size", type=int, default=28)
  parser.add_argument("--num_classes", type=int, default=10)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  iteration = (mtt_iteration if args.method == "mtt" else bptt_iteration)(args)
  t0 = time.perf_counter()
  iteration()  # warm-up
  first = time.perf_counter() - t0
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    iteration()
    times.append(time.perf_counter() - t0)
  print(json.dumps({"median_s": statistics.median(times), "times_s": times, "first_s": first}))


if __name__ == "__main__":
  main()
