"""Compare beta estimators on Gaussian mixtures where the exact safe distribution is known.

For each mixture (2-D and 16-D well separated; 2-D and 16-D with the negated component 2.5 standard
deviations from a kept one), each sampler (DPM-Solver++ ODE, ancestral) and each method, prints
and writes to docs/results/estimators_toy.md: the share of samples whose most likely component is
negated, SW2 to exact safe samples divided by the noise floor, and the wall time.

    python benchmarks/estimators_toy.py [--n 4000] [--seeds 2] [--jobs 1] [--methods exact kernel/labelled ...]
        [--label-levels 2 4 ...] [--out docs/results/estimators_toy.md]

``--methods`` keeps only the rows it names (as the table's method column does), for more seeds of a few.
``--label-levels`` gives the labelled estimator one row per noise level of the denoised estimates it labels
in (`toy.run.denoised_features`; default: `toy.run.LABEL_LEVEL` alone).
"""

from __future__ import annotations

import argparse
import shlex
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Callable, Collection, Iterable, Sequence

import torch

from safedenoiser.toy.metrics import negated_share, noise_floor, sw2_to_mixture
from safedenoiser.toy.run import LABEL_LEVEL, run_toy
from safedenoiser.toy.mixture import GaussianMixture
from safedenoiser.toy.spec import ToySpec, parse_spec


def benchmark_mixtures() -> dict[str, dict]:
    """Mixtures used only here (the tests draw their own): the negated component holds 40% of the mass."""
    gen = torch.Generator().manual_seed(2024)

    def separated(dim: int) -> dict:
        means = (torch.randn(4, dim, generator=gen) * 6 / dim ** 0.5 * 2).tolist()
        covs = [0.5, [0.3 + 0.4 * float(torch.rand(1, generator=gen)) for _ in range(dim)], 0.4, 0.6]
        return {"dim": dim, "weights": [0.2, 0.4, 0.2, 0.2], "means": means, "covs": covs,
                "negate": [1], "negation_samples": 256, "seed": 3}

    def close(dim: int) -> dict:
        # components of std 1; the negated one (1) sits 2.5 std from kept component 0
        means = torch.zeros(3, dim)
        means[1, 0] = 2.5
        means[2, 1] = 8.0
        return {"dim": dim, "weights": [0.35, 0.4, 0.25], "means": means.tolist(), "covs": [1.0, 1.0, 1.0],
                "negate": [1], "negation_samples": 256, "seed": 5}

    return {"2-D separated": separated(2), "16-D separated": separated(16),
            "2-D close (2.5 sd)": close(2), "16-D close (2.5 sd)": close(16)}


def parsed_mixture(name: str, n: int) -> tuple[ToySpec, GaussianMixture, float]:
    """Mixture ``name`` of `benchmark_mixtures` parsed, its exact safe mixture and the SW2 noise floor at ``n``."""
    spec = parse_spec(benchmark_mixtures()[name])
    safe = spec.safe_mixture()
    return spec, safe, noise_floor(safe, n)


def rows_per_pair(rows: Callable[[tuple[str, str], int, int], list[tuple]], names: Iterable[str], n: int, seeds: int,
                  jobs: int) -> list[tuple]:
    """``rows((name, sampler), n, seeds)`` for each mixture named with each sampler, in ``jobs`` processes
    (``rows`` sets one thread in each, so timings stay comparable)."""
    pairs = [(name, sampler) for name in names for sampler in ("dpm++", "ancestral")]
    with ProcessPoolExecutor(jobs) as pool:
        return [row for pair_rows in pool.map(rows, pairs, [n] * len(pairs), [seeds] * len(pairs)) for row in pair_rows]


ROW = "| {} | {} | {} | {:.2%} | {:.2%} | {:.2f} | {:.2f} | {:.1f} |"
METHODS = [("exact samples", "-"), ("vanilla", "-"), ("exact", "-"), ("kernel", "gate"), ("kernel", "ratio"),
           ("kernel", "ratio, true prior"), ("kernel", "hybrid"), ("kernel", "labelled"), ("kernel", "local")]
ORACLE = "ratio, true prior"  # the ratio estimator given the mixture's true b: isolates the error of its estimate


def method_label(method: str, estimator: str) -> str:
    """The table's name of a `METHODS` entry (``kernel/labelled``), which ``--methods`` takes."""
    return method if estimator == "-" else f"{method}/{estimator}"


def _variants(label_levels: Sequence[float] | None) -> list[tuple[str, str, float, str]]:
    """``(method, estimator, label level, row name)`` per row of `METHODS`: the labelled estimator once per
    level of ``label_levels`` (named with it), or once at `LABEL_LEVEL`."""
    rows = []
    for method, estimator in METHODS:
        if estimator == "labelled" and label_levels:
            rows += [(method, estimator, level, f"{method_label(method, estimator)}, sigma/alpha {level:g}")
                     for level in label_levels]
        else:
            rows.append((method, estimator, LABEL_LEVEL, method_label(method, estimator)))
    return rows


def mixture_rows(pair: tuple[str, str], n: int, seeds: int, labels: Collection[str] | None = None,
                 label_levels: Sequence[float] | None = None) -> list[tuple]:
    """The row of each method (all, or those ``labels`` name) on one mixture with one sampler (mean and worst
    over ``seeds``)."""
    torch.set_num_threads(1)
    name, sampler = pair
    spec, safe, floor = parsed_mixture(name, n)
    rows = []
    for method, estimator, level, row_name in _variants(label_levels):
        if labels is not None and method_label(method, estimator) not in labels:
            continue
        if method == "exact samples" and sampler != "dpm++":
            continue  # no sampler involved: one row per mixture
        shares, ratios, times = [], [], []
        for seed in range(seeds):
            start = time.perf_counter()
            if method == "exact samples":  # drawn from the safe mixture: the statistic's own spread
                samples = safe.sample(n, torch.Generator().manual_seed(seed))[0]
            else:
                samples = run_toy(spec, method, n, seed, sampler=sampler,
                                  estimator="ratio" if estimator in ("-", ORACLE) else estimator,
                                  prior=spec.negated_weight if estimator == ORACLE else None,
                                  label_level=level).samples
            times.append(time.perf_counter() - start)
            shares.append(negated_share(samples, spec.mixture, spec.negate))
            ratios.append(sw2_to_mixture(samples, safe) / floor)
        row = (name, "-" if method == "exact samples" else sampler, row_name,
               sum(shares) / len(shares), max(shares), sum(ratios) / len(ratios), max(ratios),
               sum(times) / len(times))
        rows.append(row)
        print(ROW.format(*row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="default docs/results/estimators_toy.md, "
                        "which holds every method: with --methods, give another file")
    parser.add_argument("--jobs", type=int, default=1, help="processes, one (mixture, sampler) pair each")
    parser.add_argument("--methods", nargs="+", choices=[method_label(*m) for m in METHODS], metavar="METHOD",
                        help="only these rows, named as in the table (default: all)")
    parser.add_argument("--label-levels", nargs="+", type=float, metavar="LEVEL",
                        help=f"the labelled estimator at each of these sigma/alpha (default: {LABEL_LEVEL:g} alone)")
    args = parser.parse_args()
    if (args.methods or args.label_levels) and args.out is None:
        parser.error("--methods and --label-levels write other rows: give --out FILE, so the table is not replaced")
    out = args.out or Path("docs/results/estimators_toy.md")
    rows = rows_per_pair(partial(mixture_rows, labels=args.methods, label_levels=args.label_levels),
                         benchmark_mixtures(), args.n, args.seeds, args.jobs)
    command = f"--n {args.n} --seeds {args.seeds}" + (" --methods " + shlex.join(args.methods) if args.methods else "")
    command += " --label-levels " + " ".join(f"{level:g}" for level in args.label_levels) if args.label_levels else ""
    command += f" --out {args.out}" if args.out else ""
    lines = ["# Beta estimators on Gaussian mixtures", "",
             f"`python benchmarks/estimators_toy.py {command}`: mean and worst over seeds "
             "of the negated share and of SW2 / noise floor (SW2 to exact safe samples, averaged over 32 exact "
             "sets; the floor is the mean SW2 between two independent exact sample sets of the same size, over "
             "128 pairs: with 8, as up to commit 56fe3ee, the 2-D floors came out about 1.5x low). "
             "Targets: exact <= 1% and <= 1.5x; kernel <= 3% "
             "and <= 2.5x. `exact samples` are drawn from the safe mixture itself (no sampler): how much the "
             "statistic varies between seeds. `kernel/ratio, true prior`: the ratio estimator given the "
             "mixture's true b (0.4) instead of its estimate from the sets, which no user has: it shows how much "
             "of the ratio's error is the estimate of b.", "",
             "| mixture | sampler | method | negated share (mean) | (worst) | SW2 / floor (mean) | (worst) | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [ROW.format(*row) for row in rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
