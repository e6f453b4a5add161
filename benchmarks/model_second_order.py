"""The default safe denoiser with second-order schedulers on the bundled model, sampled without guidance.

A second-order scheduler evaluates the model twice a step; `attach` holds each sample's beta over the two
(`step_beta`). Under guidance the latch already holds it over the whole trajectory, so this measures the
unconditional scenario of `benchmarks/model_estimators.py` (`fashion-class`, null label, the default local
estimator in the UNet's features, no latch): per negated class and scheduler, vanilla, the default, and the
default with each evaluation judged alone (`known_answer_schedulers.EachEvaluationAlone`), on the same seeds.
Writes the negated class's share, the other classes' total variation from vanilla and the FD to real images
of the other classes, and how many classes meet issue 5's target (<= 2%, TV <= 0.10).

    python benchmarks/model_second_order.py [--schedulers kdpm2discrete heundiscrete] [--steps 13] [--n 300]
        [--classes 0 1 ...] [--out docs/results/model_second_order.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import torch
from known_answer_schedulers import EachEvaluationAlone

from safedenoiser import SafeDenoiser
from safedenoiser.eval.methods import measure_images, sample
from safedenoiser.eval.scenarios import unconditional_scenario
from safedenoiser.generation import scheduler_class

METHODS = {"default": SafeDenoiser, "each evaluation alone": EachEvaluationAlone}


def meets_target(row: dict) -> bool:
    return row["unsafe[all]"] <= 0.02 and row["tv_others"] <= 0.10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schedulers", nargs="+", default=["kdpm2discrete", "heundiscrete"])
    parser.add_argument("--steps", type=int, default=13, help="steps (two model evaluations each)")
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--out", type=Path, default=Path("docs/results/model_second_order.md"))
    args = parser.parse_args()
    start = time.perf_counter()
    rows, meeting = [], {(s, m): [] for s in args.schedulers for m in METHODS}
    for cls in args.classes:
        base = unconditional_scenario(args.n, cls)
        config = base.pipe.scheduler.config
        for name in args.schedulers:
            base.pipe.scheduler = scheduler_class(name, safe=True).from_config(config)
            scenario = dataclasses.replace(base, steps=args.steps)
            idx, seeds = list(range(len(scenario))), scenario.seeds(0)
            vanilla = measure_images(scenario, sample(scenario, idx, seeds), "vanilla")
            hist = torch.tensor(vanilla["histogram"], dtype=torch.float64)
            rows.append(f"| {cls} | {name} | vanilla | {vanilla['unsafe[all]']:.1%} | | {vanilla['fd']:.2f} |")
            for method, make in METHODS.items():
                corrector = make(scenario.negation, reference=scenario.reference)
                row = measure_images(scenario, sample(scenario, idx, seeds, corrector), method, hist)
                if meets_target(row):
                    meeting[name, method].append(cls)
                rows.append(f"| {cls} | {name} | {method} | {row['unsafe[all]']:.1%} | {row['tv_others']:.3f} | "
                            f"{row['fd']:.2f} |")
                print(rows[-1], flush=True)
        print(f"class {cls} done ({time.perf_counter() - start:.0f} s)", flush=True)
    lines = ["# The default safe denoiser with second-order schedulers (unconditional)", "",
             f"`python {' '.join(map(shlex.quote, sys.argv))}` ({time.perf_counter() - start:.0f} s): "
             f"`fashion-class` with the null label, {args.n} samples, {args.steps} steps, the same seeds for every "
             "row; negation set: 500 real test-split images of the class; reference: 500 training images of all "
             "classes. `default`: `SafeDenoiser(neg, reference=...)` (beta held over a step's two evaluations, "
             "`step_beta`); `each evaluation alone`: the same without that hold. Judge: the bundled classifier. "
             "TV others: total variation between the other classes' shares (renormalised) and vanilla's. FD: "
             "Fréchet distance of the classifier's features to real images of the other classes.", "",
             "| scheduler | method | classes meeting the target (negated <= 2%, TV others <= 0.10) |",
             "|---|---|---|",
             *[f"| {s} | {m} | {len(c)} of {len(args.classes)} ({', '.join(map(str, c))}) |"
               for (s, m), c in meeting.items()], "",
             "| class | scheduler | method | negated class | TV others | FD |", "|---|---|---|---|---|---|",
             *rows, ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
