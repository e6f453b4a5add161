"""Evaluation against the alternatives (issue 5): judges, metrics, scenarios, methods, reports.

    from safedenoiser.eval.methods import evaluate
    from safedenoiser.eval.scenarios import build_scenario
    rows, images = evaluate(build_scenario("unconditional", 200), ["vanilla", "safe", "spell"])

    from safedenoiser.eval.folder import judge_folder, report_lines
    print("\n".join(report_lines(judge_folder("run/", negated=7), "run/")))  # a `generate` run, per prompt
"""

from safedenoiser.eval.metrics import (accuracy, class_histogram, frechet_distance, near_copy_share,
                                       tv_distance, unsafe_rate)

__all__ = ["accuracy", "class_histogram", "frechet_distance", "near_copy_share", "tv_distance", "unsafe_rate"]
