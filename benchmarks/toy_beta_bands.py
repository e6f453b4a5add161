"""Which part of the toy's kernel method costs its SW2 where the mixture's components are close: its
beta in one noise band, or its ``D_unsafe``, each replaced by the exact one.

On the two close mixtures of benchmarks/estimators_toy.py (where its SW2 is highest),
with both samplers, the default kernel method (`beta="labelled"`) runs with its ``D_unsafe`` (the
kernel mean over the 256-point negation set) or the exact one (the negated component's denoiser),
and with its beta or the exact beta of the mixture at high noise only (``sigma/alpha >= 1``), at low
noise only, or everywhere; ``max_weight``, reference and seeds stay. Where a replacement brings SW2 /
floor down to the exact method's, that part's error is what the estimator would have to fix.
Prints and writes docs/results/toy_beta_bands.md.

    python benchmarks/toy_beta_bands.py [--n 4000] [--seeds 4] [--jobs 2] [--out docs/results/toy_beta_bands.md]
"""

from __future__ import annotations

import argparse
from itertools import product
from pathlib import Path

import torch
from torch import Tensor

from estimators_toy import parsed_mixture, rows_per_pair
from safedenoiser.core.beta import BetaEstimator
from safedenoiser.toy.metrics import negated_share, sw2_to_mixture
from safedenoiser.toy.run import make_denoiser, run_toy
from safedenoiser.toy.sampling import sample_from_seed
from safedenoiser.toy.spec import ToySpec

HIGH_NOISE = 1.0  # sigma / alpha at and above which a step counts as high noise
MIXTURES = ("2-D close (2.5 sd)", "16-D close (2.5 sd)")
BANDS = {"nowhere (the default)": (False, False), "sigma/alpha >= 1": (True, False),
         "sigma/alpha < 1": (False, True), "everywhere": (True, True)}  # name -> exact beta at (high, low) noise
ROW = "| {} | {} | {} | {} | {:.2%} | {:.2f} | {:.2f} |"


class BandedBeta:
    """``estimated`` beta, replaced by the mixture's exact one at high and/or low noise. The estimator
    computes the set's noised density itself (its bound), whichever ``D_unsafe`` the denoiser uses."""

    def __init__(self, spec: ToySpec, estimated: BetaEstimator, high: bool, low: bool):
        self.spec, self.estimated, self.high, self.low = spec, estimated, high, low

    def __call__(self, x_t: Tensor, alpha: Tensor, sigma: Tensor, x0_hat: Tensor, unsafe) -> Tensor:
        high = float((sigma / alpha).reshape(-1)[0]) >= HIGH_NOISE  # the toy samplers step all rows together
        if (self.high and high) or (self.low and not high):
            return self.spec.mixture.beta(x_t, alpha, sigma, self.spec.negate)
        return self.estimated(x_t, alpha, sigma, x0_hat, None)


def band_rows(pair: tuple[str, str], n: int, seeds: int) -> list[tuple]:
    """One row per ``D_unsafe`` and band on one mixture with one sampler, then the exact method's."""
    torch.set_num_threads(1)
    name, sampler = pair
    spec, safe_mixture, floor = parsed_mixture(name, n)
    rows = []

    def add_row(unsafe: str, band: str, runs: list[Tensor]) -> None:
        ratios = [sw2_to_mixture(samples, safe_mixture) / floor for samples in runs]
        shares = [negated_share(samples, spec.mixture, spec.negate) for samples in runs]
        rows.append((name, sampler, unsafe, band, sum(shares) / seeds, sum(ratios) / seeds, max(ratios)))
        print(ROW.format(*rows[-1]), flush=True)

    for unsafe, (band, (high, low)) in product(("the set's", "exact"), BANDS.items()):
        runs = []
        for seed in range(seeds):
            denoiser, safe = make_denoiser(spec, "kernel", sampler=sampler, seed=seed)
            safe.beta = BandedBeta(spec, safe.beta, high, low)
            if unsafe == "exact":
                safe.negation = spec.mixture.subset(spec.negate)
            runs.append(sample_from_seed(sampler, denoiser, n, spec.mixture.dim, seed))  # run_toy's noise
        add_row(unsafe, band, runs)
    add_row("exact", "everywhere (the exact method)",
            [run_toy(spec, "exact", n, seed, sampler=sampler).samples for seed in range(seeds)])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=2, help="processes, one (mixture, sampler) pair each")
    parser.add_argument("--out", type=Path, default=Path("docs/results/toy_beta_bands.md"))
    args = parser.parse_args()
    rows = rows_per_pair(band_rows, MIXTURES, args.n, args.seeds, args.jobs)
    lines = ["# What costs the kernel method its SW2 on the close mixtures: beta, by noise band, or D_unsafe", "",
             f"`python benchmarks/toy_beta_bands.py --n {args.n} --seeds {args.seeds}`: the toy's default kernel "
             "method (`beta=\"labelled\"`, 256 negation samples, 1,000 reference samples) on the close mixtures "
             "of `estimators_toy.md`, with its `D_unsafe` (the kernel mean over the negation set) or the exact "
             "one (the negated component's denoiser), and its beta replaced by the mixture's exact one in the "
             "steps named (sigma/alpha >= 1, or below); `max_weight` (20), reference and seeds stay. Means over "
             "seeds; SW2 to exact safe samples over the noise floor, as in `estimators_toy.md` (target <= 2.5x). "
             "Last row of each block: the exact method (`toy --method exact`, no cap on the weight).", "",
             "| mixture | sampler | D_unsafe | exact beta | negated share | SW2 / floor (mean) | (worst) |",
             "|---|---|---|---|---|---|---|"]
    lines += [ROW.format(*row) for row in rows]
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
