"""How the beta estimators depend on the number of sampling steps, on Gaussian mixtures.

A correction is right when the probability-flow ODE it defines removes the negated component; one
discretisation of that ODE can look right by luck (a large step that overshoots out of the component).
For the mixtures of benchmarks/estimators_toy.py and the known-answer mixture of
tests/test_diffusers_known_answer.py (three components of std 0.1, the negated one holding 40% of the mass),
each sampler runs at its default number of steps (`toy.sampling.SAMPLERS`) and at multiples of it. Prints
and writes to docs/results/toy_step_counts.md the negated share and SW2 / noise floor, mean over seeds.

    python benchmarks/toy_step_counts.py [--n 2000] [--seeds 2] [--factors 1 4] [--out docs/results/toy_step_counts.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from estimators_toy import benchmark_mixtures
from safedenoiser.toy.metrics import negated_share, noise_floor, sw2_to_mixture
from safedenoiser.toy.run import run_toy
from safedenoiser.toy.sampling import SAMPLERS
from safedenoiser.toy.spec import parse_spec

KNOWN_ANSWER = {"dim": 2, "weights": [0.3, 0.3, 0.4], "means": [[-0.5, -0.3], [0.5, -0.3], [0.0, 0.5]],
                "covs": [0.01, 0.01, 0.01], "negate": [2], "negation_samples": 200, "seed": 1}
METHODS = ("exact", "kernel/gate", "kernel/ratio", "kernel/labelled")  # run_toy's method / estimator
ROW = "| {} | {} | {} | {} | {:.2%} | {:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--factors", nargs="+", type=int, default=[1, 4], help="multiples of each sampler's steps")
    parser.add_argument("--out", type=Path, default=Path("docs/results/toy_step_counts.md"))
    args = parser.parse_args()
    if min(args.factors) < 1:
        parser.error("--factors must be whole numbers >= 1")
    torch.set_num_threads(1)
    mixtures = {"known-answer (std 0.1)": KNOWN_ANSWER, **benchmark_mixtures()}
    rows = []
    for name, data in mixtures.items():
        spec = parse_spec(data)
        safe = spec.safe_mixture()
        floor = noise_floor(safe, args.n)
        for sampler in ("ddim", "dpm++"):
            for factor in args.factors:
                steps = factor * SAMPLERS[sampler][1]
                for label in METHODS:
                    method, _, estimator = label.partition("/")
                    chosen = {"estimator": estimator} if estimator else {}
                    runs = [run_toy(spec, method, args.n, seed, sampler=sampler, steps=steps, **chosen).samples
                            for seed in range(args.seeds)]
                    share = sum(negated_share(x, spec.mixture, spec.negate) for x in runs) / args.seeds
                    ratio = sum(sw2_to_mixture(x, safe) / floor for x in runs) / args.seeds
                    rows.append(ROW.format(name, sampler, steps, label, share, ratio))
                    print(rows[-1], flush=True)
    command = f"--n {args.n} --seeds {args.seeds} --factors {' '.join(map(str, args.factors))}"
    lines = ["# Beta estimators at more sampling steps", "",
             f"`python benchmarks/toy_step_counts.py {command}`: the negated share and SW2 / noise floor (as in "
             "`estimators_toy.md`), mean over seeds, of each sampler at its default number of steps and at "
             "multiples of it. The known-answer mixture is tests/test_diffusers_known_answer.py's. Targets "
             "(issue 2): exact <= 1% and <= 1.5x; kernel <= 3% and <= 2.5x.", "",
             "| mixture | sampler | steps | method | negated share | SW2 / floor |", "|---|---|---|---|---|---|"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines + rows) + "\n")


if __name__ == "__main__":
    main()
