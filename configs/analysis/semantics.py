"""Sections for Q3, "does each distilled point carry meaning?" (paper section 5).

    influence         (E8, Fig. 10)  exact leave-one-out influence of each distilled image on
                                     real test images (n + 1 protocol-A retrains from one
                                     init, one vmapped call), top-9 grids, class purity
    influence_approx  (extension)    influence functions (CG, LiSSA, Arnoldi, plain gradient
                                     dot product) against that exact LOO
    coherence         (E9 stand-in)  are each image's top-k influenced test images more
                                     coherent than random same-class sets? (permutation test;
                                     the paper asked LLaVA, which cannot run here)

Sign convention throughout: I[i, t] = loss(x_t; theta without i) - loss(x_t; theta all),
positive when distilled image i *helps* test image t (removing it raises the loss).

Sized by `config.size`: tiny (tests, seconds), demo (mnist5k on 2 CPU cores), paper (the
paper's CIFAR-10 settings, for a GPU). Protocol A (steps, lr, momentum) comes from
config.protocol_a, the network from config.model / config.model_kwargs.

CPU cost behind the demo sizes (2-core machine, CPU-seconds): one protocol-A step of a
ConvNet on 100 28x28 images costs ~0.03 at width 8 and ~0.12 at width 32, so the exact LOO
of all 100 images of one set (101 runs x 300 steps) is ~900 CPU-s at width 8 and ~3,600 at
width 32; the demo therefore leaves out one image per class (11 runs, ~100 CPU-s per set)
with a width-8 network, for two learned sets and the random control. A Hessian-vector
product costs about three protocol-A steps.
"""

import ml_collections


def add_sections(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds config.influence, config.influence_approx and config.coherence for `config.size`."""
  size = config.size

  # ---------------------------------------------------------------- influence (E8)
  inf = ml_collections.ConfigDict()
  # Comma-separated distilled-set names ("" = every loaded set). A set whose method is
  # `random` (the real-subset baseline) is kept as a control and marked as such.
  inf.sets = ""
  # At most this many learned sets of them (the paper's method order: bptt, dm, dc, dsa,
  # mtt, kip), plus the control (0 = all). influence_approx and coherence use the same sets.
  inf.max_sets = 0
  # Real test images scored: a seeded class-balanced subset of this many per class of the
  # loaded test split (0 = all of it; the paper used all 10,000 CIFAR-10 test images).
  inf.test_per_class = 0
  # Distilled images left out: a seeded class-balanced choice of this many per class
  # (0 = every image, the paper's 100). Every run still trains on the full set minus one;
  # only the number of leave-one-out runs (rows of the matrix) shrinks.
  inf.points_per_class = 0
  # Width of the LOO ConvNet (0 = config.model_kwargs.width; the paper: 128).
  inf.width = 0
  inf.top_k = 9            # the paper's grid: the 9 most-helped test images per row
  inf.grid_class = 0       # class whose distilled images the grid figure shows (paper: 0)
  inf.chunk_size = 0       # LOO runs per vmapped chunk (0 = all runs in one vmap)
  inf.eval_batch_size = 1000

  # ---------------------------------------------------------------- influence_approx
  apx = ml_collections.ConfigDict()
  apx.sets = ""            # "" = every set of config.influence.sets
  apx.max_sets = 0         # at most this many of them, in the paper's method order (0 = all)
  # "cg", "lissa", "arnoldi" (Koh & Liang 2017; Schioppa et al. 2022), "identity" (plain
  # gradient dot product, no curvature: a TracIn-like baseline), "direct" (dense
  # Hessian solve: small models only).
  apx.methods = "cg,lissa,arnoldi,identity"
  apx.curvature = "hessian"  # or "ggn" (Gauss-Newton, positive semi-definite)
  # Absolute damping (added to every eigenvalue). protocol A stops far from a minimum, so
  # H is indefinite: with damping_from_lambda_min the damping is raised to
  # damping_factor * |lambda_min| (Lanczos estimate), Koh & Liang's rule of thumb.
  apx.damping = 0.01
  apx.damping_from_lambda_min = True
  apx.damping_factor = 1.5
  apx.lanczos_iters = 60   # Lanczos steps for the lambda_min / lambda_max estimates
  apx.cg_maxiter = 100
  apx.cg_tol = 1e-5
  apx.lissa_depth = 1000   # LiSSA scale: 1.5 * (max |lambda| + damping) from the Lanczos run
  apx.arnoldi_rank = 20
  apx.arnoldi_iters = 60
  apx.top_k = 9            # top-k overlap with the exact LOO
  apx.max_scatter_points = 5000

  # ---------------------------------------------------------------- coherence (E9)
  coh = ml_collections.ConfigDict()
  coh.sets = ""            # "" = every set of config.influence.sets
  coh.top_k = 9            # the top-k most-helped test images per distilled image
  coh.num_draws = 2000     # random k-subsets per distilled image (p-value floor 1/(draws+1))
  coh.alpha = 0.05         # significance level, raw and Benjamini-Hochberg (per set)
  coh.row_batch = 8        # distilled images whose null draws are held in memory at once
  coh.feature_batch = 500  # images per forward pass of the real-trained feature model

  if size == "tiny":
    inf.test_per_class = 0         # config.test_per_class = 10 already
    inf.points_per_class = 1
    inf.top_k = 5
    apx.methods = "cg,lissa,arnoldi,identity"
    apx.lanczos_iters = 12        # = arnoldi_iters: one Lanczos compilation for both
    apx.cg_maxiter = 10
    apx.lissa_depth = 20
    apx.arnoldi_rank = 4
    apx.arnoldi_iters = 12
    apx.top_k = 5
    coh.top_k = 5
    coh.num_draws = 200
  elif size == "demo":
    inf.test_per_class = 20        # 200 test images: the matrices stay small on the CPU
    inf.max_sets = 2               # ~100 CPU-s per set: two learned sets + the control
    inf.points_per_class = 1       # 11 retrains per set instead of 101 (see module doc)
    inf.width = 8                  # ~4x cheaper than the demo's width-32 ConvNet
    # One vmapped HVP for 10 left-out images costs ~1.2 CPU-s at width 8: CG 30 steps +
    # LiSSA 60 steps + Lanczos/Arnoldi 2 x 40 is ~80 CPU-s per set, so one set.
    apx.max_sets = 1
    apx.lanczos_iters = 40
    apx.cg_maxiter = 30
    apx.lissa_depth = 60
    apx.arnoldi_iters = 40
  elif size == "full":
    # E8 as the paper: every distilled image left out (101 runs), every test image, the
    # distillation's own width (32); 26 runs per vmapped chunk bounds memory.
    inf.chunk_size = 26
  elif size == "paper":
    inf.chunk_size = 26            # 101 width-128 CIFAR runs in 4 chunks: fits 80 GB
    apx.arnoldi_rank = 50
    apx.arnoldi_iters = 150
    apx.lanczos_iters = 80
    coh.num_draws = 5000           # BH over 100 images needs p down to ~0.05 / 100
    coh.row_batch = 1              # 5,000 x 10,000 scores per image
  config.influence = inf
  config.influence_approx = apx
  config.coherence = coh
  return config
