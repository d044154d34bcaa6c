"""Overfitting metrics of Infusion (plain torch + numpy; no ComfyUI import).

- Latent Fisher divergence (concept-agnostic overfitting): ``fisher``.
- Wasserstein-2 between feature sets (concept-specific overfitting): ``wasserstein``.
"""
from .fisher import (DEFAULT_SIGMA_FLOOR, EpsFn, LFDPlan, LFDResult, TimestepRow, Weighting,
                     check_weighting, compare, evaluate, latent_fisher_divergence, make_plan)
from .wasserstein import (W2Result, empirical_w2, feature_wasserstein, gaussian_w2,
                          gaussian_w2_from_stats, sqrtm_psd)

__all__ = [
    "DEFAULT_SIGMA_FLOOR",
    "EpsFn",
    "LFDPlan",
    "LFDResult",
    "TimestepRow",
    "W2Result",
    "Weighting",
    "check_weighting",
    "compare",
    "empirical_w2",
    "evaluate",
    "feature_wasserstein",
    "gaussian_w2",
    "gaussian_w2_from_stats",
    "latent_fisher_divergence",
    "make_plan",
    "sqrtm_psd",
]
