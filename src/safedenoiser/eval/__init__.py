"""Evaluation against the alternatives (issue 5): judges, metrics, scenarios, methods, reports.

    from safedenoiser.eval import run_scenario
    result = run_scenario("unconditional", methods=["vanilla", "safe", "spell"], n=200)
"""

from safedenoiser.eval.metrics import (accuracy, class_histogram, frechet_distance, near_copy_share,
                                       tv_distance, unsafe_rate)

__all__ = ["accuracy", "class_histogram", "frechet_distance", "near_copy_share", "tv_distance", "unsafe_rate"]
