"""Second-order toolkit: curvature operators, spectral estimators and inverse solvers.

    op = curvature.hessian_operator(model, variables, x, y, batch_size=500)
    est = curvature.hutchinson_trace(op, key)             # PyHessian's rule: tol 1e-3, <= 100 probes
    top = curvature.lanczos_topk(op, key, k=5)            # Ritz pairs, full reorthogonalisation
    dens = curvature.slq(op, key, num_probes=4, num_iters=90)
    x = curvature.solve(op, b, method="cg", damping=1e-2).x

Operators (`operators`): Hessian (forward-over-reverse), Gauss-Newton, damped,
restricted to a parameter subset, on one batch or averaged over a dataset by a
scan over fixed-size batches. Estimators (`estimators`) and solvers (`solvers`)
take only an operator (plus a PRNG key or a right-hand side).
"""

from ddjax.curvature.estimators import (Eigenpairs, LanczosResult, SpectralDensity, TraceEstimate,
                                        hutchinson_samples, hutchinson_trace, lanczos, lanczos_topk,
                                        power_iteration, slq, tridiagonal_eigh)
from ddjax.curvature.operators import (BATCH_STATS_MODES, Batches, LinearOperator,
                                       NonFiniteCurvatureError, check_finite, cross_entropy_losses,
                                       damped, dense_matrix, dense_operator, flatten,
                                       gauss_newton_operator, hessian_operator, layer_groups,
                                       loss_hessian_operator, make_batches, merge_params,
                                       model_outputs, param_paths, resolve_subset, select_params)
from ddjax.curvature.solvers import (SOLVERS, LissaDivergedError, SolveResult, cg, check_solution,
                                     lissa, solve)

__all__ = [
    "BATCH_STATS_MODES", "Batches", "Eigenpairs", "LanczosResult", "LinearOperator",
    "LissaDivergedError", "NonFiniteCurvatureError", "SOLVERS", "SolveResult", "SpectralDensity",
    "TraceEstimate", "cg", "check_finite", "check_solution", "cross_entropy_losses", "damped",
    "dense_matrix", "dense_operator", "flatten", "gauss_newton_operator", "hessian_operator",
    "hutchinson_samples", "hutchinson_trace", "lanczos", "lanczos_topk", "layer_groups", "lissa",
    "loss_hessian_operator", "make_batches", "merge_params", "model_outputs", "param_paths",
    "power_iteration", "resolve_subset", "select_params", "slq", "solve", "tridiagonal_eigh",
]
