"""What each training (distilled) point influences: exact leave-one-out by batched
retraining, influence-function approximations, and their comparison (the paper's
section 5, Fig. 10).

    loo = influence.loo_influence(model, variables, x_syn, y_syn, x_test, y_test)
    approx = influence.influence_functions(model, loo.variables_all, x_syn, y_syn,
                                           x_test, y_test, method="cg", damping=0.01)
    influence.compare_influence(approx.influence, loo.influence)
"""

from ddjax.influence.compare import compare_influence, pearson, spearman, topk_overlap
from ddjax.influence.functions import (CURVATURES, METHODS, InfluenceResult, influence_functions,
                                       per_example_grads, project_gradients)
from ddjax.influence.loo import LOOResult, loo_influence, loo_masks, loo_retrain

__all__ = [
    "CURVATURES", "InfluenceResult", "LOOResult", "METHODS", "compare_influence",
    "influence_functions", "loo_influence", "loo_masks", "loo_retrain", "pearson",
    "per_example_grads", "project_gradients", "spearman", "topk_overlap",
]
