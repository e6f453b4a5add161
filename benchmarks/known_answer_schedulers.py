"""Every diffusers sampler of the known-answer test on its exact Gaussian mixture, with more samples and seeds.

tests/test_diffusers_known_answer.py checks each sampler on 1,000 samples and one seed. This runs the same
mixture (three components of std 0.1, the negated one holding 40% of the mass), samplers and 50 steps on
``--n`` samples and ``--seeds`` seeds, and writes the share of samples in the negated component, mean and
worst over seeds: vanilla, exact beta (the adapter alone: it should be the safe mixture's ~0%) and the
reference-free gate (`SafeDenoiser(negation_set)`, 200 samples of the component); for the second-order
samplers also the gate without `step_beta` (each evaluation of a step judged on its own, as before it).

    python benchmarks/known_answer_schedulers.py [--n 4000] [--seeds 3] [--out docs/results/known_answer_schedulers.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from conftest import NEGATED, ExactNegatedComponent, component_shares, exact_beta  # noqa: E402
from test_diffusers_known_answer import (GATE_MISSES, MORE_SAMPLERS, PARAMETRISATIONS,  # noqa: E402
                                         REQUIRED, SAMPLERS, negation_set, sample)

from safedenoiser import SafeDenoiser  # noqa: E402
from safedenoiser.core.beta import ExactBeta  # noqa: E402


class EachEvaluationAlone(SafeDenoiser):
    """The safe denoiser as if every call began a step: no `step_beta` at a second evaluation."""

    def correct(self, *args, within_step: bool = False, **kwargs):
        return super().correct(*args, **kwargs)


METHODS = {"vanilla": lambda: None,
           "exact beta": lambda: SafeDenoiser(ExactNegatedComponent(), beta=ExactBeta(exact_beta)),
           "gate": lambda: SafeDenoiser(negation_set()),
           "gate, each evaluation alone": lambda: EachEvaluationAlone(negation_set())}


def second_order(sampler: str) -> bool:
    """Whether the sampler evaluates the model twice a step (its scheduler has ``state_in_first_order``)."""
    return sampler in SAMPLERS and hasattr(type(SAMPLERS[sampler]()[1]), "state_in_first_order")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/results/known_answer_schedulers.md"))
    args = parser.parse_args()
    start = time.time()
    rows = []
    for sampler in REQUIRED + PARAMETRISATIONS + MORE_SAMPLERS + GATE_MISSES:
        cells = []
        for method, make in METHODS.items():
            if method == "gate, each evaluation alone" and not second_order(sampler):
                cells.append("-")
                continue
            shares = [component_shares(sample(sampler, make(), n=args.n, seed=seed))[NEGATED]
                      for seed in range(args.seeds)]
            cells.append(f"{sum(shares) / len(shares):.2%} ({max(shares):.2%})")
        rows.append(f"| {sampler} | " + " | ".join(cells) + " |")
        print(rows[-1], flush=True)
    text = "\n".join([
        "# The known-answer mixture through every diffusers sampler",
        "",
        f"`python benchmarks/known_answer_schedulers.py --n {args.n} --seeds {args.seeds}` "
        f"({time.time() - start:.0f} s): {args.n} samples, 50 steps, seeds 0-{args.seeds - 1}. Cells: share of "
        "samples whose most likely component is the negated one, mean over seeds (worst). The samplers are those of "
        "tests/test_diffusers_known_answer.py (`SAMPLERS`).",
        "",
        "| sampler | " + " | ".join(METHODS) + " |",
        "|---|" + "---|" * len(METHODS),
        *rows, ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
