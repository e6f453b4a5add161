"""Where the kernel estimates of beta go wrong on the Gaussian mixtures of benchmarks/estimators_toy.py.

Runs vanilla DPM-Solver++ trajectories of each mixture, groups them by where they end (the negated
component, or a kept one) and, in three noise bands, prints and writes to
docs/results/toy_beta_paths.md the mean beta that the exact rule, the estimators behind
`beta="hybrid"` (its density ratio and its gate, each alone) and `beta="labelled"` (the toy default)
give along them. A trajectory bound for a kept component should get beta near 0; one bound for the
negated component near 1 at low noise.
A second table gives the gate's threshold (the median log kernel mass of the set's own points, each
left out) beside the set's log kernel mass at the centres of the negated and the nearest kept component.
A third, how `label_reference` labels the same reference samples at several kernel widths, in the samples
themselves and in the model's denoised estimates at sigma/alpha = 2 (`toy.run.denoised_features`; the toy's
`beta="labelled"` takes twice the width there), against their most likely component.

    python benchmarks/toy_beta_paths.py [--n 2000] [--out docs/results/toy_beta_paths.md]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import Tensor

from estimators_toy import benchmark_mixtures
from safedenoiser.core.beta import label_reference, label_space
from safedenoiser.negation import NegationSet
from safedenoiser.toy.run import LABEL_LEVEL, denoised_features, make_denoiser
from safedenoiser.toy.sampling import sample_from_seed
from safedenoiser.toy.spec import parse_spec

BANDS = (("sigma/alpha >= 1", 1.0, float("inf")), ("0.1 <= sigma/alpha < 1", 0.1, 1.0), ("sigma/alpha < 0.1", 0.0, 0.1))
ROW = "| {} | {} | {} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} |"
LABEL_WIDTHS = (1.0, 1.5, 2.0, 3.0)  # label_reference's kernel width, in multiples of the set's


def vanilla_states(spec, n: int, seed: int) -> tuple[list[tuple[Tensor, Tensor, Tensor, Tensor]], Tensor]:
    """Every step's ``(x_t, alpha, sigma, D(x_t))`` of ``n`` vanilla trajectories, and where each ends."""
    states = []

    def record(x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        d = spec.mixture.denoise(x_t, alpha, sigma)
        states.append((x_t, alpha, sigma, d))
        return d

    samples = sample_from_seed("dpm++", record, n, spec.mixture.dim, seed)
    return states, spec.mixture.responsibilities(samples).argmax(1)


def nearest_centres_mass(spec, negation: NegationSet) -> tuple[float, float]:
    """The set's clean log kernel mass at the (first) negated component's mean and at the nearest kept mean."""
    means = spec.mixture.means
    negated = means[spec.negate[0]]
    kept = [i for i in range(len(means)) if i not in spec.negate]
    nearest = means[min(kept, key=lambda i: float((means[i] - negated).norm()))]
    mass = negation.clean_log_mass(torch.stack([negated, nearest]))
    return float(mass[0]), float(mass[1])


def label_rows(name: str, spec, negation: NegationSet, reference: Tensor) -> list[str]:
    """Per label width: the share of the reference labelled negated, its true share (most likely component),
    and how many kept samples are labelled negated and negated ones kept."""
    truth = torch.isin(spec.mixture.responsibilities(reference).argmax(1), torch.tensor(spec.negate))
    features = denoised_features(spec.mixture.denoise)
    spaces = {"samples": label_space(negation, reference, None),
              f"D at sigma/alpha = {LABEL_LEVEL:g}": label_space(negation, reference, features)}
    rows = []
    for space, (keys, points) in spaces.items():
        for width in LABEL_WIDTHS:
            labels = label_reference(keys, points, width)
            rows.append(f"| {name} | {space} | {width:g} | {labels.double().mean():.1%} | {truth.double().mean():.1%} "
                        f"| {int((labels & ~truth).sum())} | {int((~labels & truth).sum())} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("docs/results/toy_beta_paths.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, centres, labels = [], [], []
    for name, data in benchmark_mixtures().items():
        spec = parse_spec(data)
        _, safe = make_denoiser(spec, "kernel", estimator="hybrid", seed=0)  # as `run_toy` builds it
        negation, hybrid = safe.negation, safe.beta
        labelled = make_denoiser(spec, "kernel", estimator="labelled", seed=0)[1].beta  # the same reference
        labels += label_rows(name, spec, negation, labelled.reference.latents.double())
        centres.append((name, hybrid.gate.tau, *nearest_centres_mass(spec, negation)))
        states, end = vanilla_states(spec, args.n, seed=0)
        negated_bound = torch.isin(end, torch.tensor(spec.negate))
        sums = {band: torch.zeros(4, 2, dtype=torch.float64) for band, _, _ in BANDS}
        counts = dict.fromkeys(sums, 0)
        for x_t, alpha, sigma, d in states:
            a = torch.as_tensor(alpha, dtype=x_t.dtype).expand(len(x_t))
            s = torch.as_tensor(sigma, dtype=x_t.dtype).expand(len(x_t))
            unsafe = negation.posterior(x_t, a, s, smoothing=safe.smoothing, x0_hat=d)
            betas = (spec.mixture.beta(x_t, a, s, spec.negate), hybrid.ratio(x_t, a, s, d, unsafe),
                     hybrid.gate(x_t, a, s, d, unsafe), labelled(x_t, a, s, d, unsafe))
            level = float(s[0] / a[0])
            band = next(b for b, low, high in BANDS if low <= level < high)
            for i, beta in enumerate(betas):
                sums[band][i] += torch.stack([beta[~negated_bound].mean(), beta[negated_bound].mean()])
            counts[band] += 1
        for band, _, _ in BANDS:
            mean = sums[band] / counts[band]
            row = (name, band, counts[band], *mean.flatten().tolist())
            rows.append(row)
            print(ROW.format(*row), flush=True)
    lines = ["# Beta along vanilla trajectories of the Gaussian mixtures", "",
             f"`python benchmarks/toy_beta_paths.py --n {args.n}`: {args.n} vanilla DPM-Solver++ trajectories per "
             "mixture (seed 0), grouped by the component they end in (most likely component of the sample): "
             "`kept` (any kept component) or `negated`. Mean beta over the trajectories and the steps of each noise "
             "band, from the exact rule, from the two estimators that `beta=\"hybrid\"` takes the larger of "
             "(the x_t-space density ratio, prior b estimated from the sets, and the gate on `D(x_t)`, the core of "
             "the negation set's kernel support) and from `beta=\"labelled\"` (the reference's own posterior of its "
             "samples labelled unsafe, the toy default). Sets as in `estimators_toy.py`: 256 negation samples, 1,000 "
             "reference samples drawn with the sampler.", "",
             "| mixture | noise band | steps | exact, kept | exact, negated | ratio, kept | ratio, negated "
             "| gate, kept | gate, negated | labelled, kept | labelled, negated |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [ROW.format(*row) for row in rows]
    lines += ["", "| mixture | gate threshold | log mass at the negated centre | at the nearest kept centre |",
              "|---|---|---|---|"]
    lines += ["| {} | {:.2f} | {:.2f} | {:.2f} |".format(*row) for row in centres]
    lines += ["", f"The {len(labelled.reference)} reference samples labelled negated by `label_reference` at each "
              "kernel width (in multiples of the set's bandwidth in that space), in the samples themselves and in the "
              "model's denoised estimates, against their most likely component:", "",
              "| mixture | labelled in | label width | labelled negated | truly negated | kept labelled negated "
              "| negated labelled kept |", "|---|---|---|---|---|---|---|", *labels]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
