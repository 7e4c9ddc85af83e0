"""Sections for Q2, "what information does distilled data hold?" (paper section 4).

    agreement                  (E5, Fig. 4)  prediction agreement of distilled-trained models
                                             with accuracy-matched early-stopped vs
                                             subset-trained real models
    recognition_over_training  (E6, Fig. 5)  accuracy on each distilled set after every
                                             iteration of real training
    curvature_over_training    (E7, Fig. 6)  Hutchinson trace of the loss Hessian on real and
                                             distilled data along real training (+ top
                                             eigenvalue and SLQ density, beyond the paper)

Sized by `config.size`: tiny (tests, seconds), demo (mnist5k on 2 CPU cores), paper (the
paper's CIFAR-10 settings, for a GPU). Protocol-B settings (batch, lr, momentum) come from
config.real_model; the agreement pools use config.model / config.model_kwargs, the network
the distilled-trained models are (the paper used one ConvNet throughout).

CPU costs behind the demo sizes (width-32 ConvNet on 28x28, measured on the 2-core
machine in CPU-seconds): one SGD step on 256 images ~0.36, protocol A (300 steps on 100
images) ~35 per model, a forward pass over 1,000 test images ~0.8, one Hessian-vector
product ~0.3 per 100 images (so one probe of the full 4,000-image train set ~12). Whole
analyses at demo size on /tmp/s2/sets (7 sets), CPU-seconds (wall on 2 free cores is
roughly 0.6x): agreement ~720, recognition_over_training ~170, curvature_over_training
~190. `<section>.sets` restricts an analysis to some sets (in agreement, protocol A costs
~35 per set; the two real pools ~470 whatever the sets).
"""

import ml_collections
import numpy as np


def add_sections(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Adds config.agreement, config.recognition_over_training, config.curvature_over_training."""
  size = config.size

  # ---------------------------------------------------------------- agreement (E5)
  agr = ml_collections.ConfigDict()
  agr.sets = ""             # comma-separated distilled sets to analyse ("" = all)
  # Distilled-trained models per set (protocol A, config.protocol_a; seeds config.seed + i).
  # The paper trained one per method.
  agr.num_distilled_seeds = config.protocol_a.num_seeds
  # Subset-trained pool: class-balanced real subsets of these fractions of the train split
  # (int(fraction * per-class count) images per class, at least 1), `models_per_fraction`
  # models each (one vmapped call per subset size), `subset_epochs` of protocol B.
  # Paper: 520 models, s ~ U(0.5 %, 5 %), 100 epochs; here a grid of 26 fractions x 20
  # models stands in for the uniform draw (same range, same count, vmappable).
  agr.subset_fractions = [float(f) for f in np.round(np.linspace(0.005, 0.05, 26), 4)]
  agr.models_per_fraction = 20
  agr.subset_epochs = 100
  # Early-stopped pool: `early_seeds` real trainings for `early_epochs` epochs of protocol B
  # on the full train split; test predictions after every iteration. Paper: 30 x 1 epoch.
  agr.early_seeds = 30
  agr.early_epochs = 1
  # Matching: a pool member counts if |its test accuracy - the distilled-trained model's|
  # <= tolerance; an early-stopped run contributes its one closest iteration (if within
  # tolerance). The paper used the 0.01-wide accuracy buckets n/100 and (n+1)/100 (about
  # +-0.01) and one hand-picked iteration for all 30 runs (also reported, as paper_style).
  agr.match_tolerance = 0.01
  agr.confidence = 0.95

  # ---------------------------------------------------------------- recognition_over_training (E6)
  rot = ml_collections.ConfigDict()
  rot.sets = ""
  rot.epochs = 2            # paper: 2 epochs of protocol B (392 iterations; 300 plotted)
  rot.plot_iterations = 300  # iterations drawn in the figure (0 = all)
  rot.num_seeds = 3         # real trainings, vmapped (the paper: one)
  rot.test_subset = 0       # real test images evaluated per iteration (0 = all)
  rot.threshold = 0.9       # report the first iteration each curve reaches this accuracy
  # "Recognised early": the first iteration a distilled set reaches `level` x the final real
  # test accuracy, against the iteration the test accuracy itself gets there.
  rot.level = 0.95
  rot.final_window = 0.1    # "final" accuracy = mean over the last 10 % of iterations
  rot.eval_batch_size = 1000

  # ---------------------------------------------------------------- curvature_over_training (E7)
  cur = ml_collections.ConfigDict()
  cur.sets = ""
  cur.num_steps = 300       # paper: states theta_0 ... theta_300 of protocol-B real training
  cur.stride = 1            # trace every `stride` states (paper: every state)
  cur.num_seeds = 1         # training runs (the paper: one)
  # Hutchinson probes: num_probes > 0 fixes the count; 0 = PyHessian's rule (the paper):
  # stop when the running mean changes by < tol (relative), at most max_probes.
  cur.num_probes = 0
  cur.tol = 1e-3
  cur.max_probes = 100
  cur.probe_batch = 1       # probes vmapped together (more memory, faster on a GPU)
  cur.train_subset = 0      # real images for the real-data trace (class-balanced; 0 = all)
  cur.hvp_batch_size = 1000  # batch of the dataset-averaged HVP (the result does not depend on it)
  # The paper's smoothing, s_t = 0.9 s_{t-1} + 0.1 x_t per iteration (0.9 ** stride per state).
  cur.ema_decay = 0.9
  # Beyond the paper: SLQ spectral density (and the top eigenvalue = the largest Lanczos Ritz
  # value of those runs) at these iterations, for real and every distilled set.
  cur.spectrum_iterations = [0, 60, 90, 150, 300]
  cur.slq_probes = 3
  cur.slq_iters = 90        # Ghorbani et al.'s 90 Lanczos steps

  if size == "demo":
    # mnist5k: 4,000 train images, 16 iterations per epoch at batch 256.
    # E5 (~6 min on 2 free cores: protocol A on 7 sets ~2 min, the early-stopped pool
    # ~2 min, the subset pool ~2 min). One distilled-trained model per set, as the paper.
    # The distilled-trained ConvNets reach 0.88-0.93 on mnist5k, which the paper's 0.5-5 %
    # subsets (2-20 images per class) do not span: fractions 2.5-7.5 % (10/20/30 per
    # class; measured 0.83-0.93), 4 models each, 60 epochs (60-120 steps; at 30 epochs the
    # 20-per-class models were not converged). Early-stopped: 4 runs x 3 epochs (48
    # iterations; test accuracy 0.11 -> 0.93). Tolerance 0.02: pools are small here.
    agr.num_distilled_seeds = 1
    agr.subset_fractions = [0.025, 0.05, 0.075]
    agr.models_per_fraction = 4
    agr.subset_epochs = 60
    agr.early_seeds = 4
    agr.early_epochs = 3
    agr.match_tolerance = 0.02
    # E6 (~170 CPU-s): 4 epochs (64 iterations; test accuracy 0.15 -> 0.94), 2 runs, 500
    # test images per iteration (each iteration also evaluates every distilled set).
    rot.epochs = 4
    rot.plot_iterations = 0
    rot.num_seeds = 2
    rot.test_subset = 500
    # E7 (~190 CPU-s; the paper: 301 states x up to 100 probes of the full 50k-image HVP,
    # 10.6 h on a GPU): 48 steps (3 epochs; the real trace peaks near iteration 25), a trace
    # every 4 states (13 states), 2 fixed probes per trace (the EMA averages the probe
    # noise), the real-data trace on a 400-image class-balanced subset of the train split
    # (an unbiased estimate of the full-set trace, 10x cheaper per probe), SLQ (1 probe x 12
    # Lanczos steps) at 2 states.
    cur.num_steps = 48
    cur.stride = 4
    cur.num_probes = 2
    cur.train_subset = 400
    cur.hvp_batch_size = 200
    cur.spectrum_iterations = [12, 48]
    cur.slq_probes = 1
    cur.slq_iters = 12
  elif size == "full":
    # The paper's protocols on mnist5k (16 iterations per epoch). E5: 5 distilled-trained
    # models per set; the subset pool over the paper's range (0.5-5 % of the train split:
    # 2-20 images per class), 26 fractions x 4 = 104 models, 100 epochs; 30 early-stopped
    # runs over 3 epochs (48 iterations: mnist5k's first epoch ends at 16 iterations, before
    # the distilled-trained accuracies are reached); the paper's +-0.01 buckets.
    agr.models_per_fraction = 4
    agr.early_epochs = 3
    # E6: as demo, but every test image and 3 runs.
    rot.epochs = 4
    rot.plot_iterations = 0
    # E7: every one of the 300 states, PyHessian's stopping rule on the full train split
    # (the paper's protocol; on 2 CPU cores this is a multi-hour job).
    cur.spectrum_iterations = [0, 60, 90, 150, 300]
  elif size == "tiny":
    agr.num_distilled_seeds = 1
    agr.subset_fractions = [0.1, 0.2]     # 2 and 4 images per class of 20
    agr.models_per_fraction = 2
    agr.subset_epochs = 3
    agr.early_seeds = 2
    agr.early_epochs = 1
    agr.match_tolerance = 1.0             # everything matches: tests check the bookkeeping
    rot.epochs = 2
    rot.plot_iterations = 0
    rot.num_seeds = 2
    rot.eval_batch_size = 500
    cur.num_steps = 4
    cur.stride = 2
    cur.num_probes = 2
    cur.hvp_batch_size = 100
    cur.spectrum_iterations = [4]
    cur.slq_probes = 1
    cur.slq_iters = 4
  config.agreement = agr
  config.recognition_over_training = rot
  config.curvature_over_training = cur
  return config
