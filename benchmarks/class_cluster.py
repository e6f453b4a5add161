"""Negating a part of a class under `LocalPosterior`'s ``boundary_power``: one cluster, or a few images.

The scenario of `docs/results.md` (`eval.scenarios.class_scenario`): a class's 1,000 test images split
into two k-means clusters of the classifier's features, the larger negated (its test images are the
negation set), the class sampled by `fashion-class` at CFG 4; the reference is 500 training images of
that class, so the negated concept is about half of it (prior b near 0.45, against about 0.1 for a
class among all ten). For each class in ``--classes``: vanilla, then the local estimator with each
power in ``--boundary-powers``, without and with the latch, on the same seeds. Unsafe: the sample's
features lie nearest the negated centroid; FD against the kept cluster's real images; copies: samples
that are near copies of a reference image (`eval.metrics.copy_check`). A second table: how the labelling
splits the reference against the judge (the cluster of each reference image's VAE reconstruction), which
the powers do not change. Then the same powers in the memorisation scenario of `docs/results.md`
(`eval.scenarios.memorization_scenario`, class ``--memorization-class``): a fine-tuned model that
copies 8 training images, which are the negation set, against 500 other training images of the class
as reference; unsafe: a near copy of one of the 8. Prints and writes docs/results/class_cluster.md.

    python benchmarks/class_cluster.py [--classes 8 0 9] [--memorization-class 9]
        [--boundary-powers 2 8 32 128 512] [--n 150] [--out FILE]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from safedenoiser import SafeDenoiser
from safedenoiser.core.local import DEFAULT_BOUNDARY_POWER, LocalPosterior
from safedenoiser.eval.methods import is_unsafe, measure_images, sample
from safedenoiser.eval.scenarios import Scenario, class_scenario, memorization_scenario
from safedenoiser.models import CLASS_NAMES

from run_eval import CACHE  # the fine-tuned memorising UNet, shared with `make results`

LABEL_COLUMNS = ["in the negated cluster", "of those, labelled safe", "of the kept cluster's, labelled negated",
                 "of those labelled safe, in the negated cluster"]
COLUMNS = {"unsafe[all]": ("negated cluster", ".1%"), "fd": ("FD (kept cluster)", ".2f"),
           "confident": ("recognisable", ".1%"), "reference_copy": ("copies of a reference image", ".1%")}
MEMORIZATION_COLUMNS = {"unsafe[all]": ("near copies of the 8", ".1%"), "fd": ("FD (the class)", ".2f"),
                        "confident": ("recognisable", ".1%"),
                        "reference_copy": ("copies of a reference image", ".1%")}


def cluster_labels(scenario: Scenario) -> dict:
    """How `LocalPosterior` labels the reference against the judge (the same for every power), and its prior b."""
    in_cluster = is_unsafe(scenario, scenario.reference_pixels)  # the judge's verdict on each reference image
    labelling = LocalPosterior(scenario.negation, scenario.reference)
    safe = ~labelling.negated_reference
    return {"prior b": labelling.prior,
            "in the negated cluster": float(in_cluster.double().mean()),
            "of those, labelled safe": float(safe[in_cluster].double().mean()),
            "of the kept cluster's, labelled negated": float((~safe[~in_cluster]).double().mean()),
            "of those labelled safe, in the negated cluster": float(in_cluster[safe].double().mean())}


def power_rows(scenario: Scenario, powers: list[float]) -> list[dict]:
    """Vanilla, then the local estimator at each power without and with the latch, on the same seeds."""
    idx, seeds = list(range(len(scenario))), scenario.seeds(0)
    neg, reference = scenario.negation, scenario.reference

    def measured(name: str, corrector=None) -> dict:
        return measure_images(scenario, sample(scenario, idx, seeds, corrector=corrector), name)

    rows = [measured("vanilla")]
    for power in powers:
        local = LocalPosterior(neg, reference, boundary_power=power)
        for latch in (False, True):
            row = measured(f"local{', latch' if latch else ''}, boundary power {power:g}",
                           SafeDenoiser(neg, beta=local, latch=latch))
            rows.append(row)
            print(scenario.name, row["method"], f"{row['unsafe[all]']:.1%}", f"FD {row['fd']:.2f}", flush=True)
    return rows


def table_lines(columns: dict, named_rows: list[tuple[str, list[dict]]], first: str) -> list[str]:
    """A markdown table: ``first`` (each group's name), the method, then ``columns``."""
    header = [first, "method"] + [title for title, _ in columns.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, rows in named_rows:
        lines += [f"| {name} | {row['method']} | "
                  + " | ".join(f"{row[key]:{fmt}}" for key, (_, fmt) in columns.items()) + " |" for row in rows]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[8, 0, 9])
    parser.add_argument("--memorization-class", type=int, default=9)
    parser.add_argument("--boundary-powers", type=float, nargs="+", default=[2, 8, 32, 128, 512])
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("docs/results/class_cluster.md"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    clusters, split = [], ["| class | prior b | reference images " + " | ".join(LABEL_COLUMNS) + " |",
                           "|" + "---|" * (len(LABEL_COLUMNS) + 2)]
    for cls in args.classes:
        scenario = class_scenario(args.n, cls)
        info, labels = scenario.info, cluster_labels(scenario)
        name = f"{cls} {CLASS_NAMES[cls]} (clusters {info['cluster_sizes']}, negated {info['negated_cluster']})"
        split.append(f"| {name} | {labels['prior b']:.2f} | "
                     + " | ".join(f"{labels[c]:.1%}" for c in LABEL_COLUMNS) + " |")
        clusters.append((name, power_rows(scenario, args.boundary_powers)))
    memorizing = memorization_scenario(args.n, args.memorization_class, cache=CACHE)
    prior = LocalPosterior(memorizing.negation, memorizing.reference).prior
    memorized = [(f"{args.memorization_class} {CLASS_NAMES[args.memorization_class]} (prior b {prior:.2f})",
                  power_rows(memorizing, args.boundary_powers))]
    lines = ["# Negating a part of a class: `boundary_power`", "",
             f"`python {' '.join(map(shlex.quote, sys.argv))}` ({time.perf_counter() - start:.0f} s on "
             f"{torch.get_num_threads()} CPU threads). `fashion-class`, CFG 4, DDIM 25 steps, {args.n} samples of "
             "the class per row, the same seeds for every row. The local estimator's safe mean weighs each safe "
             "reference image by `(1 - q)^boundary_power`, `q` its density ratio over the labelling threshold "
             f"(default {DEFAULT_BOUNDARY_POWER:g}); `latch` as under guidance by default. Copies: samples nearer "
             "a reference image than any of 1,000 unseen real images is to any.", "",
             "## One k-means cluster of a class", "",
             "Negation set: the larger k-means cluster's real test images (classifier features); reference: 500 "
             "training images of the class. Negated cluster: share of samples whose features lie nearest the "
             "negated centroid (vanilla: the cluster's share of the model's samples). FD: against the kept "
             "cluster's real test images.", "", *table_lines(COLUMNS, clusters, "class"),
             "", "### The labelling against the judge", "",
             "The reference's images (VAE reconstructions) in the negated cluster by the judge, and how "
             "`LocalPosterior` labels them (the same for every power, as is the prior b it gives): the concept's "
             "images labelled safe are part of the safe side, which the correction moves samples to.", "", *split,
             "", "## A few memorised images", "",
             "The memorisation scenario of `docs/results.md`: `fashion-class` fine-tuned to copy 8 training images "
             "of the class, which are the negation set; reference: 500 other training images of the class. Near "
             "copies: samples nearer one of the 8 than any real test image of the class is. FD: against the "
             "class's real test images. Prior b: the share of the reference that the 8 images' region takes in.",
             "", *table_lines(MEMORIZATION_COLUMNS, memorized, "class")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
