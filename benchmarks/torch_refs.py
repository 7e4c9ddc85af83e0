r"""PyTorch references for `launch/benchmark.py`, in the style of the reference codebases.

Runs in .bench-venv (CPU torch; imports only torch and numpy). The ddjax side
(`benchmarks/suite.py`) writes the inputs (data, initial weights, synthetic images) to an
.npz and passes the hyperparameters, so both sides compute the same thing:

  dc      one DC iteration (DatasetCondensation `main.py`): a fresh network; per outer
          loop, per class, gw_real = grad CE(real) (detached), gw_syn = grad CE(syn) with
          create_graph=True, match_loss 'ours'; one SGD step on the images; then
          inner_loop epochs of training the network on the synthetic set
  dm      one DM iteration (`main_DM.py`): a fresh frozen network; per class, Siamese
          DiffAugment (aug_mode 'S') of the real and synthetic batches, squared distance
          of the mean embeddings; one SGD step on the images
  hvp     one full-dataset Hessian-vector product, PyHessian's `dataloader_hv_product`
          (a Python loop over batches, create_graph=True, then grad of grad . v)
  loo     leave-one-out retrains one after another (the paper's notebook): protocol A
          from the same initial weights on the set without image i
  pool    subset-trained models one after another (the paper's generate_models.py)
  record  one model's protocol B, predicting the test set after every iteration

MTT and BPTT use benchmarks/torch_metagrad.py and the Hutchinson probes
benchmarks/torch_trace.py. The network is torch_trace.py's DC ConvNet (instance norm).

    .bench-venv/bin/python benchmarks/torch_refs.py dc --data=inputs.npz --width=32 \
        --hparams='{"outer_loop": 10, ...}' --repeats=3 --warmup=1

Prints one JSON line: {"median_s", "times_s", "warmup_s", ...}.
"""

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

# benchmarks/ is this script's directory; suite.py imports only the standard library at
# module level, so its timing helper is shared with the ddjax side.
from suite import timed
from torch_trace import convnet


def nchw(a) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 3, 1, 2)))


def network(blob, width: int, x: torch.Tensor, index: int | None = None) -> torch.nn.Sequential:
  """torch_trace's ConvNet; with the ddjax initial weights when the blob holds them."""
  net = convnet(width, num_classes=10, channels=x.shape[1], image_size=x.shape[2])
  if "param_names" in blob:
    names = [n for n, _ in net.named_parameters()]
    if list(blob["param_names"]) != names:
      raise SystemExit(f"parameter names differ: {list(blob['param_names'])} vs {names}")
    with torch.no_grad():
      for name, p in net.named_parameters():
        value = blob[f"param:{name}"]
        p.copy_(torch.from_numpy(value if index is None else value[index]))
  return net


# ----------------------------------------------------------------------------- DC


def distance_wb(gwr, gws):
  """DC's `distance_wb`: sum over output channels of 1 - cos; 0 for biases and norms."""
  shape = gwr.shape
  if len(shape) == 4:
    gwr = gwr.reshape(shape[0], shape[1] * shape[2] * shape[3])
    gws = gws.reshape(shape[0], shape[1] * shape[2] * shape[3])
  elif len(shape) == 1:
    return torch.tensor(0.0)
  return torch.sum(1 - torch.sum(gwr * gws, dim=-1)
                   / (torch.norm(gwr, dim=-1) * torch.norm(gws, dim=-1) + 0.000001))


def match_loss(gw_syn, gw_real):
  return sum(distance_wb(gw_real[i], gw_syn[i]) for i in range(len(gw_real)))


def dc_iteration(args, blob, hp):
  if hp["dis_metric"] != "ours" or hp["dsa_strategy"] not in ("none", ""):
    raise SystemExit("the DC reference implements dis_metric 'ours' without DSA")
  x, y = nchw(blob["x"]), torch.from_numpy(blob["y"])
  indices_class = [torch.nonzero(y == c).flatten() for c in range(10)]
  image_syn = nchw(blob["images"]).requires_grad_(True)
  label_syn = torch.from_numpy(blob["labels"])
  ipc = image_syn.shape[0] // 10
  optimizer_img = torch.optim.SGD([image_syn], lr=hp["lr_img"], momentum=hp["momentum_img"])

  def get_images(c, n):
    return x[indices_class[c][torch.randperm(len(indices_class[c]))[:n]]]

  def iteration():
    net = convnet(args.width, channels=x.shape[1], image_size=x.shape[2])
    net.train()
    net_parameters = list(net.parameters())
    optimizer_net = torch.optim.SGD(net.parameters(), lr=hp["lr_net"],
                                    momentum=hp["net_momentum"])
    for ol in range(hp["outer_loop"]):
      loss = torch.tensor(0.0)
      for c in range(10):
        img_real = get_images(c, hp["batch_real"])
        lab_real = torch.full((img_real.shape[0],), c, dtype=torch.long)
        img_syn = image_syn[c * ipc:(c + 1) * ipc]
        lab_syn = torch.full((ipc,), c, dtype=torch.long)
        loss_real = F.cross_entropy(net(img_real), lab_real)
        gw_real = [g.detach() for g in torch.autograd.grad(loss_real, net_parameters)]
        loss_syn = F.cross_entropy(net(img_syn), lab_syn)
        gw_syn = torch.autograd.grad(loss_syn, net_parameters, create_graph=True)
        loss = loss + match_loss(gw_syn, gw_real)
      optimizer_img.zero_grad()
      loss.backward()
      optimizer_img.step()
      if ol == hp["outer_loop"] - 1:
        break
      # Train the network on the synthetic set (the reference's `epoch('train', ...)`).
      images, labels = image_syn.detach().clone(), label_syn.clone()
      batch = min(hp["batch_train"], images.shape[0])
      for _ in range(hp["inner_loop"]):
        perm = torch.randperm(images.shape[0])
        for i in range(0, images.shape[0], batch):
          idx = perm[i:i + batch]
          step_loss = F.cross_entropy(net(images[idx]), labels[idx])
          optimizer_net.zero_grad()
          step_loss.backward()
          optimizer_net.step()

  return iteration


# ----------------------------------------------------------------------------- DM


def diff_augment(x, strategy: str, seed: int, align_corners: bool):
  """The reference DiffAugment, aug_mode 'S' and Siamese: one family per call, one
  parameter draw for the whole batch (the same `seed` gives the same transform)."""
  families = strategy.split("_")
  g = torch.Generator().manual_seed(seed)
  family = families[int(torch.randint(len(families), (1,), generator=g))]
  n, _, h, w = x.shape
  rand = lambda: torch.rand(1, generator=g).expand(n).contiguous()
  if family == "color":
    x = x + (rand().view(n, 1, 1, 1) - 0.5) * 1.0
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (rand().view(n, 1, 1, 1) * 2.0) + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (rand().view(n, 1, 1, 1) + 0.5) + mean
  if family in ("scale", "rotate"):
    zero = torch.zeros(n)
    if family == "scale":
      sx, sy = rand() * (1.2 - 1 / 1.2) + 1 / 1.2, rand() * (1.2 - 1 / 1.2) + 1 / 1.2
      theta = torch.stack([torch.stack([sx, zero, zero], -1), torch.stack([zero, sy, zero], -1)], 1)
    else:
      angle = (rand() - 0.5) * 2 * 15.0 / 180 * math.pi
      theta = torch.stack([torch.stack([angle.cos(), -angle.sin(), zero], -1),
                           torch.stack([angle.sin(), angle.cos(), zero], -1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=align_corners)
    return F.grid_sample(x, grid, align_corners=align_corners)
  if family == "crop":
    shift = int(h * 0.125 + 0.5)
    tx = torch.randint(-shift, shift + 1, (1,), generator=g).expand(n).view(n, 1, 1)
    ty = torch.randint(-shift, shift + 1, (1,), generator=g).expand(n).view(n, 1, 1)
    gb, gx, gy = torch.meshgrid(torch.arange(n), torch.arange(h), torch.arange(w), indexing="ij")
    gx = torch.clamp(gx + tx + 1, 0, h + 1)
    gy = torch.clamp(gy + ty + 1, 0, w + 1)
    x_pad = F.pad(x, [1, 1, 1, 1, 0, 0, 0, 0])
    return x_pad.permute(0, 2, 3, 1).contiguous()[gb, gx, gy].permute(0, 3, 1, 2)
  if family == "cutout":
    size = int(h * 0.5 + 0.5)
    ox = torch.randint(0, h + (1 - size % 2), (1,), generator=g).expand(n).view(n, 1, 1)
    oy = torch.randint(0, w + (1 - size % 2), (1,), generator=g).expand(n).view(n, 1, 1)
    gb, gx, gy = torch.meshgrid(torch.arange(n), torch.arange(size), torch.arange(size),
                                indexing="ij")
    gx = torch.clamp(gx + ox - size // 2, min=0, max=h - 1)
    gy = torch.clamp(gy + oy - size // 2, min=0, max=w - 1)
    mask = torch.ones(n, h, w)
    mask[gb, gx, gy] = 0
    return x * mask.unsqueeze(1)
  if family == "flip":
    return torch.where(rand().view(n, 1, 1, 1) < 0.5, x.flip(3), x)
  raise SystemExit(f"unknown DSA family {family!r}")


def dm_iteration(args, blob, hp):
  x, y = nchw(blob["x"]), torch.from_numpy(blob["y"])
  indices_class = [torch.nonzero(y == c).flatten() for c in range(10)]
  image_syn = nchw(blob["images"]).requires_grad_(True)
  ipc = image_syn.shape[0] // 10
  optimizer_img = torch.optim.SGD([image_syn], lr=hp["lr_img"], momentum=hp["momentum_img"])
  dsa = hp["dsa_strategy"] not in ("none", "")
  counter = [0]

  def iteration():
    net = convnet(args.width, channels=x.shape[1], image_size=x.shape[2])
    net.train()
    for p in net.parameters():
      p.requires_grad = False
    embed = net[:-1]  # everything but the classifier: the penultimate features
    loss = torch.tensor(0.0)
    for c in range(10):
      idx = indices_class[c][torch.randperm(len(indices_class[c]))[:hp["batch_real"]]]
      img_real, img_syn = x[idx], image_syn[c * ipc:(c + 1) * ipc]
      if dsa:
        counter[0] += 1
        img_real = diff_augment(img_real, hp["dsa_strategy"], counter[0], hp["align_corners"])
        img_syn = diff_augment(img_syn, hp["dsa_strategy"], counter[0], hp["align_corners"])
      output_real = embed(img_real).detach()
      output_syn = embed(img_syn)
      loss = loss + torch.sum((output_real.mean(0) - output_syn.mean(0)) ** 2)
    optimizer_img.zero_grad()
    loss.backward()
    optimizer_img.step()

  return iteration


# ----------------------------------------------------------------------------- curvature


def hvp_case(args, blob):
  x, y = nchw(blob["x"]), torch.from_numpy(blob["y"].astype(np.int64))
  net = network(blob, int(blob["width"]), x)
  net.eval()
  params = [p for p in net.parameters() if p.requires_grad]
  names = [n for n, _ in net.named_parameters()]
  v = [torch.from_numpy(blob[f"probe:{n}"]) for n in names]
  batches = [(x[i:i + args.batch_size], y[i:i + args.batch_size])
             for i in range(0, x.shape[0], args.batch_size)]

  def dataloader_hv_product():  # PyHessian 0.1
    thv = [torch.zeros_like(p) for p in params]
    num = 0.0
    for xb, yb in batches:
      net.zero_grad()
      loss = F.cross_entropy(net(xb), yb)
      grads = torch.autograd.grad(loss, params, create_graph=True)
      hv = torch.autograd.grad(grads, params, grad_outputs=v, only_inputs=True,
                               retain_graph=False)
      thv = [t + h * float(xb.shape[0]) for t, h in zip(thv, hv)]
      num += float(xb.shape[0])
    return [t / num for t in thv]

  out = {}
  result = timed(lambda: out.update(hv=dataloader_hv_product()), args.warmup, args.repeats)
  result["check_vhv"] = float(sum(torch.sum(h * vi) for h, vi in zip(out["hv"], v)))
  return result


# ----------------------------------------------------------------------------- LOO


def loo_case(args, blob):
  x, y = nchw(blob["x"]), torch.from_numpy(blob["y"].astype(np.int64))
  xt, yt = nchw(blob["x_test"]), torch.from_numpy(blob["y_test"].astype(np.int64))
  width, n = int(blob["width"]), x.shape[0]

  def retrain(i):
    """Protocol A without image i (i = n: with every image); per-example test losses."""
    keep = torch.arange(n) != i
    xs, ys = x[keep], y[keep]
    net = network(blob, width, x)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    for _ in range(args.num_steps):
      loss = F.cross_entropy(net(xs), ys)
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
    with torch.no_grad():
      return torch.cat([F.cross_entropy(net(xt[j:j + 1000]), yt[j:j + 1000], reduction="none")
                        for j in range(0, xt.shape[0], 1000)]).numpy()

  runs = list(range(min(args.runs, n + 1) - 1)) + [n]  # the first LOO runs and the full run
  for _ in range(args.warmup):
    retrain(n)
  times, losses = [], {}
  for i in runs:
    t0 = time.perf_counter()
    losses[i] = retrain(i)
    times.append(time.perf_counter() - t0)
  per_retrain = statistics.median(times)
  complete = len(runs) == n + 1
  total = float(np.sum(times)) if complete else per_retrain * (n + 1)
  result = {"median_s": total, "times_s": times, "per_retrain_s": per_retrain, "warmup_s": None,
            "timed_runs": len(runs), "extrapolated": not complete}
  if "losses" in blob:  # the ddjax influence rows of the same runs
    ref = blob["losses"].astype(np.float64)
    result["max_abs_influence_diff"] = float(max(
        np.abs((losses[i] - losses[n]) - (ref[i] - ref[n])).max() for i in runs if i < n)
        if len(runs) > 1 else 0.0)
    # The scale: float32 round-off (im2col vs PyTorch's conv) grows along training.
    result["max_abs_influence"] = float(np.abs(ref[:-1] - ref[-1]).max())
  return result


# ----------------------------------------------------------------------------- pools


def train_epochs(net, x, y, epochs: int, batch_size: int, after_step=None):
  optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
  for _ in range(epochs):
    perm = torch.randperm(x.shape[0])
    for i in range(0, x.shape[0], batch_size):  # drop_last=False
      idx = perm[i:i + batch_size]
      loss = F.cross_entropy(net(x[idx]), y[idx])
      optimizer.zero_grad()
      loss.backward()
      optimizer.step()
      if after_step is not None:
        after_step(net)


def predict(net, xt):
  with torch.no_grad():
    return torch.cat([net(xt[j:j + 1000]).argmax(-1) for j in range(0, xt.shape[0], 1000)])


def pool_case(args, blob):
  x, y = nchw(blob["x"]), torch.from_numpy(blob["y"].astype(np.int64))
  xt, yt = nchw(blob["x_test"]), torch.from_numpy(blob["y_test"].astype(np.int64))
  subsets = torch.from_numpy(blob["subsets"].astype(np.int64))
  width = int(blob["width"])
  accs = []

  def pool():
    accs.clear()
    for m in range(subsets.shape[0]):
      net = network(blob, width, x, index=m)
      train_epochs(net, x[subsets[m]], y[subsets[m]], args.epochs, args.batch_size)
      accs.append(float((predict(net, xt) == yt).float().mean()))

  result = timed(pool, args.warmup, args.repeats)
  result.update(models_per_s=subsets.shape[0] / result["median_s"],
                mean_test_accuracy=float(np.mean(accs)))
  return result


def record_case(args, blob):
  x, y = nchw(blob["x"]), torch.from_numpy(blob["y"].astype(np.int64))
  xt, yt = nchw(blob["x_test"]), torch.from_numpy(blob["y_test"].astype(np.int64))
  width = int(blob["width"])
  records = []

  def run():
    records.clear()
    net = network(blob, width, x)
    train_epochs(net, x, y, args.epochs, args.batch_size,
                 after_step=lambda n: records.append(predict(n, xt).to(torch.int16)))

  result = timed(run, args.warmup, args.repeats)
  result.update(iterations=len(records),
                final_accuracy=float((records[-1].long() == yt).float().mean()))
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("case", choices=["dc", "dm", "hvp", "loo", "pool", "record"])
  parser.add_argument("--data", required=True, help="inputs.npz written by benchmarks/suite.py")
  parser.add_argument("--width", type=int, default=32)
  parser.add_argument("--hparams", default="{}", help="JSON: the method's hyperparameters")
  parser.add_argument("--batch_size", type=int, default=256)
  parser.add_argument("--num_steps", type=int, default=300)
  parser.add_argument("--runs", type=int, default=0, help="LOO: retrains to time (0 = all)")
  parser.add_argument("--epochs", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=1)
  parser.add_argument("--threads", type=int, default=2)
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  torch.manual_seed(0)
  blob = dict(np.load(args.data))
  if args.case in ("dc", "dm"):
    make = dc_iteration if args.case == "dc" else dm_iteration
    result = timed(make(args, blob, json.loads(args.hparams)), args.warmup, args.repeats)
  elif args.case == "loo":
    if args.runs <= 0:
      args.runs = blob["x"].shape[0] + 1
    result = loo_case(args, blob)
  else:
    result = {"hvp": hvp_case, "pool": pool_case, "record": record_case}[args.case](args, blob)
  result.update(torch=torch.__version__, threads=torch.get_num_threads())
  print(json.dumps(result))


if __name__ == "__main__":
  main()
