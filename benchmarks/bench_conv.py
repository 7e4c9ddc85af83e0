r"""CPU second-order conv benchmark: XLA conv vs im2col vs hybrid (vs PyTorch), side by side.

The computation (the one DEVELOPERS.md measured): the meta-gradient, with respect to
100 synthetic images, of the loss of a ConvNet after `--unroll` SGD steps on those
images (BPTT-style), i.e. a derivative through gradients: second order in the conv.
Also first-order train steps, for the default choice.

    .venv/bin/python -m benchmarks.bench_conv --widths=32,128 --timeout=300

Each case runs in its own subprocess with a time limit (XLA's conv can take minutes),
after a warm-up call; the median of `--repeats` timed calls is reported. When
.bench-venv has torch, the same computation runs in PyTorch (create_graph=True).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

_WIDTHS = flags.DEFINE_list("widths", ["32", "128"], "ConvNet widths.")
_IMPLS = flags.DEFINE_list("impls", ["im2col", "hybrid", "xla", "torch"],
                           "Implementations to compare.")
_UNROLL = flags.DEFINE_integer("unroll", 2, "Unrolled SGD steps.")
_N = flags.DEFINE_integer("n", 100, "Synthetic images (28x28x1).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repeats (median reported).")
_TIMEOUT = flags.DEFINE_integer("timeout", 300, "Seconds per case before giving up.")
_THREADS = flags.DEFINE_integer("threads", 2, "CPU threads for PyTorch.")
_CASE = flags.DEFINE_string("case", None, "Internal: run one case and print JSON.")
_TORCH_PYTHON = flags.DEFINE_string("torch_python", ".bench-venv/bin/python", "Python with torch.")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _jax_case(impl: str, width: int, unroll: int, n: int, repeats: int) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  from ddjax import models, train

  model = models.get_model("convnet", 10, width=width, conv_impl=impl)
  key = jax.random.PRNGKey(0)
  params = models.init_variables(model, key, (1, 28, 28, 1))["params"]
  x_syn = jax.random.normal(key, (n, 28, 28, 1))
  y_syn = jnp.arange(n) % 10
  x_real = jax.random.normal(jax.random.PRNGKey(1), (n, 28, 28, 1))
  y_real = jnp.arange(n) % 10

  def loss(p, x, y):
    return train.cross_entropy(model.apply({"params": p}, x), y)

  def meta_loss(x):
    p = params
    for _ in range(unroll):  # Python-unrolled, as the DEVELOPERS.md measurement
      g = jax.grad(loss)(p, x, y_syn)
      p = jax.tree_util.tree_map(lambda a, b: a - 0.01 * b, p, g)
    return loss(p, x_real, y_real)

  meta_grad = jax.jit(jax.grad(meta_loss))
  first_order = jax.jit(jax.grad(loss))
  out = {}
  for name, fn in (("first_order_s", lambda: first_order(params, x_syn, y_syn)),
                   ("meta_grad_s", lambda: meta_grad(x_syn))):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    out[name.replace("_s", "_compile_s")] = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times.append(time.perf_counter() - t0)
    out[name] = statistics.median(times)
  return out


TORCH_SCRIPT = r"""
import json, statistics, sys, time, math
import torch, torch.nn as nn, torch.nn.functional as F
width, unroll, n, repeats, threads = map(int, sys.argv[1:6])
torch.set_num_threads(threads); torch.manual_seed(0)
class ConvNet(nn.Module):  # the DC ConvNet: conv-instancenorm-relu-avgpool x3, padding 3 on 28x28
  def __init__(s):
    super().__init__()
    s.convs = nn.ModuleList([nn.Conv2d(1 if i == 0 else width, width, 3, padding=3 if i == 0 else 1) for i in range(3)])
    s.norms = nn.ModuleList([nn.GroupNorm(width, width, affine=True) for _ in range(3)])
    s.fc = nn.Linear(width * 16, 10)
net = ConvNet()
names = [k for k, _ in net.named_parameters()]
flat0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
shapes = [p.shape for p in net.parameters()]
def forward(flat, x):
  ps, i = {}, 0
  for name, s in zip(names, shapes):
    k = math.prod(s); ps[name] = flat[i:i + k].view(s); i += k
  for l in range(3):
    x = F.conv2d(x, ps[f"convs.{l}.weight"], ps[f"convs.{l}.bias"], padding=3 if l == 0 else 1)
    x = F.group_norm(x, width, ps[f"norms.{l}.weight"], ps[f"norms.{l}.bias"])
    x = F.avg_pool2d(F.relu(x), 2)
  return F.linear(x.flatten(1), ps["fc.weight"], ps["fc.bias"])
x_syn = torch.randn(n, 1, 28, 28, requires_grad=True); y = torch.arange(n) % 10
x_real = torch.randn(n, 1, 28, 28)
def meta_grad():
  flat = flat0.clone().requires_grad_(True)
  p = flat
  for _ in range(unroll):
    g = torch.autograd.grad(F.cross_entropy(forward(p, x_syn), y), p, create_graph=True)[0]
    p = p - 0.01 * g
  return torch.autograd.grad(F.cross_entropy(forward(p, x_real), y), x_syn)[0]
def first_order():
  flat = flat0.clone().requires_grad_(True)
  return torch.autograd.grad(F.cross_entropy(forward(flat, x_syn), y), flat)[0]
out = {}
for name, fn in (("first_order_s", first_order), ("meta_grad_s", meta_grad)):
  fn(); ts = []
  for _ in range(repeats):
    t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
  out[name] = statistics.median(ts)
print(json.dumps(out))
"""


def _run_case(impl: str, width: int) -> dict:
  args = [str(width), str(_UNROLL.value), str(_N.value), str(_REPEATS.value)]
  if impl == "torch":
    python = os.path.join(ROOT, _TORCH_PYTHON.value)
    if not os.path.exists(python):
      return {"error": f"no torch python at {python} (make bench-setup)"}
    cmd = [python, "-c", TORCH_SCRIPT, *args, str(_THREADS.value)]
  else:
    cmd = [sys.executable, "-m", "benchmarks.bench_conv", f"--case={impl}", f"--widths={width}",
           f"--unroll={_UNROLL.value}", f"--n={_N.value}", f"--repeats={_REPEATS.value}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  try:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=_TIMEOUT.value)
  except subprocess.TimeoutExpired:
    return {"error": f"did not finish in {_TIMEOUT.value} s"}
  if proc.returncode != 0:
    return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  if _CASE.value:
    result = _jax_case(_CASE.value, int(_WIDTHS.value[0]), _UNROLL.value, _N.value, _REPEATS.value)
    print(json.dumps(result))
    return
  print(f"meta-gradient through {_UNROLL.value} unrolled SGD steps, ConvNet on {_N.value} "
        f"28x28x1 images, CPU; median of {_REPEATS.value}")
  print(f"{'width':>5} {'impl':>7} {'first-order (s)':>16} {'meta-grad (s)':>14} {'vs im2col':>10}")
  for width in map(int, _WIDTHS.value):
    results = {impl: _run_case(impl, width) for impl in _IMPLS.value}
    base = results.get("im2col", {}).get("meta_grad_s")
    for impl, r in results.items():
      if "error" in r:
        print(f"{width:>5} {impl:>7} {r['error']}")
        continue
      ratio = f"{r['meta_grad_s'] / base:.2f}x" if base else "-"
      print(f"{width:>5} {impl:>7} {r['first_order_s']:>16.3f} {r['meta_grad_s']:>14.3f} {ratio:>10}")


if __name__ == "__main__":
  app.run(main)
