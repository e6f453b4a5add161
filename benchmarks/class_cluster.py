"""Negating a part of a class: the class-cluster scenario under `LocalPosterior`'s ``boundary_power``.

The scenario of `docs/results.md` (`eval.scenarios.class_scenario`): a class's 1,000 test images split
into two k-means clusters of the classifier's features, the larger negated (its test images are the
negation set), the class sampled by `fashion-class` at CFG 4; the reference is 500 training images of
that class, so the negated concept is about half of it (prior b near 0.45, against about 0.1 for a
class among all ten). For each class in ``--classes``: vanilla, then the local estimator with each
power in ``--boundary-powers``, without and with the latch, on the same seeds. Unsafe: the sample's
features lie nearest the negated centroid; FD against the kept cluster's real images; copies: samples
that are near copies of a reference image (`eval.metrics.copy_check`). A second table: how the labelling
splits the reference against the judge (the cluster of each reference image's VAE reconstruction), which
the powers do not change. Prints and writes docs/results/class_cluster.md.

    python benchmarks/class_cluster.py [--classes 8 0 9] [--boundary-powers 2 8 32 128 512] [--n 150] [--out FILE]
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
from safedenoiser.eval.methods import MethodRun, is_unsafe, measure, sample
from safedenoiser.eval.scenarios import class_scenario
from safedenoiser.models import CLASS_NAMES

LABEL_COLUMNS = ["in the negated cluster", "of those, labelled safe", "of the kept cluster's, labelled negated",
                 "of those labelled safe, in the negated cluster"]
COLUMNS = {"unsafe[all]": ("negated cluster", ".1%"), "fd": ("FD (kept cluster)", ".2f"),
           "confident": ("recognisable", ".1%"), "reference_copy": ("copies of a reference image", ".1%")}


def rows_for(cls: int, n: int, powers: list[float]) -> tuple[dict, list[dict]]:
    """The scenario's settings with the labelling's split of the reference (``labels``), and its measured
    rows: vanilla, then each power without and with the latch."""
    scenario = class_scenario(n, cls)
    idx, seeds = list(range(n)), scenario.seeds(0)
    neg, reference = scenario.negation, scenario.reference
    in_cluster = is_unsafe(scenario, scenario.reference_pixels)  # the judge's verdict on each reference image
    labelling = LocalPosterior(neg, reference)  # labels and prior b: the same for every power
    safe = ~labelling.negated_reference
    labels = {"prior b": labelling.prior,
              "in the negated cluster": float(in_cluster.double().mean()),
              "of those, labelled safe": float(safe[in_cluster].double().mean()),
              "of the kept cluster's, labelled negated": float((~safe[~in_cluster]).double().mean()),
              "of those labelled safe, in the negated cluster": float(in_cluster[safe].double().mean())}

    def measured(name: str, corrector=None) -> dict:
        return measure(scenario, MethodRun(name, None, sample(scenario, idx, seeds, corrector=corrector), 0.0, 0))

    rows = [measured("vanilla")]
    for power in powers:
        local = LocalPosterior(neg, reference, boundary_power=power)
        for latch in (False, True):
            row = measured(f"local{', latch' if latch else ''}, boundary power {power:g}",
                           SafeDenoiser(neg, beta=local, latch=latch))
            rows.append(row)
            print(cls, row["method"], f"{row['unsafe[all]']:.1%}", f"FD {row['fd']:.2f}", flush=True)
    return scenario.info | {"labels": labels}, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[8, 0, 9])
    parser.add_argument("--boundary-powers", type=float, nargs="+", default=[2, 8, 32, 128, 512])
    parser.add_argument("--n", type=int, default=150)
    parser.add_argument("--out", type=Path, default=Path("docs/results/class_cluster.md"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    header = ["class", "method"] + [title for title, _ in COLUMNS.values()]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    split = ["| class | prior b | reference images " + " | ".join(LABEL_COLUMNS) + " |",
             "|" + "---|" * (len(LABEL_COLUMNS) + 2)]
    for cls in args.classes:
        info, rows = rows_for(cls, args.n, args.boundary_powers)
        name = f"{cls} {CLASS_NAMES[cls]} (clusters {info['cluster_sizes']}, negated {info['negated_cluster']})"
        labels = info["labels"]
        split.append(f"| {name} | {labels['prior b']:.2f} | "
                     + " | ".join(f"{labels[c]:.1%}" for c in LABEL_COLUMNS) + " |")
        for row in rows:
            table.append(f"| {name} | {row['method']} | "
                         + " | ".join(f"{row[key]:{fmt}}" for key, (_, fmt) in COLUMNS.items()) + " |")
    lines = ["# Negating one k-means cluster of a class: `boundary_power`", "",
             f"`python {' '.join(map(shlex.quote, sys.argv))}` ({time.perf_counter() - start:.0f} s on "
             f"{torch.get_num_threads()} CPU threads). `fashion-class`, CFG 4, DDIM 25 steps, {args.n} samples of "
             "the class per row, the same seeds for every row. Negation set: the larger k-means cluster's real "
             "test images (classifier features); reference: 500 training images of the class. Negated cluster: "
             "share of samples whose features lie nearest the negated centroid (vanilla: the cluster's share "
             "of the model's samples). FD: against the kept cluster's real test images. Copies: samples nearer "
             "a reference image than any of 1,000 unseen real images is to any. The local estimator's safe "
             "mean weighs each safe reference image by `(1 - q)^boundary_power`, `q` its density ratio over "
             f"the labelling threshold (default {DEFAULT_BOUNDARY_POWER:g}); `latch` as under guidance by "
             "default.", ""] + table + [
        "", "## The labelling against the judge", "",
        "The reference's images (VAE reconstructions) in the negated cluster by the judge, and how "
        "`LocalPosterior` labels them (the same for every power, as is the prior b it gives): the concept's "
        "images labelled safe are part of the safe side, which the correction moves samples to.", ""] + split
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
