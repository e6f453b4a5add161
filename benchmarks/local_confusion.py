"""How often the local estimator takes real images of another class for the negated one.

For each negated class k of Fashion-MNIST: the negation set is 500 real test-split images of k and
the reference ``--reference-size`` training images of all classes (500, as in the eval's text
scenario). At 500 held-out test images of every class (test split, images 500-999: in no negation
set) it evaluates `LocalPosterior`'s beta with the image itself as the estimate ``D`` (the last step
of a trajectory that ends there), and it counts which reference images the estimator labels negated
(they leave the safe side). No sampling: this separates what the latent geometry and the labelling
allow from what guidance does. ``--features`` measures closeness in the latents (``latent``), in
the text model's UNet features (``unet``, `UNetFeatures`: what the safe denoiser attached to the
pipeline uses, the reference labelled in both spaces as `LocalPosterior` does with features) or
both, one table each. Prints and writes docs/results/local_confusion.md.

    python benchmarks/local_confusion.py [--label-ratios 1 2] [--features latent unet] [--reference-size 500]
        [--out FILE]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from safedenoiser.core.local import DEFAULT_LABEL_RATIO, Features, LocalPosterior
from safedenoiser.eval.scenarios import NEGATION_SIZE, REFERENCE_SIZE, encode_latents, reference_images
from safedenoiser.integrations.unet_features import UNetFeatures
from safedenoiser.models import load_fashion_mnist, load_pipeline
from safedenoiser.models.data import CLASS_NAMES
from safedenoiser.negation import NegationSet


class Precomputed:
    """``phi`` read from a table computed once, in batches, for every image the benchmark shows the
    estimator (exact rows): `LocalPosterior` asks for the features of the same images many times."""

    def __init__(self, phi: Features, *latents: torch.Tensor):
        self.table = {_row_key(row): f for x in latents for row, f in zip(x, phi(x))}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.table[_row_key(row)] for row in x])


def _row_key(row: torch.Tensor) -> bytes:
    return row.float().contiguous().numpy().tobytes()


def confusion(negation: dict[int, torch.Tensor], reference: torch.Tensor, reference_labels: torch.Tensor,
              held_out: dict[int, torch.Tensor], label_ratio: float, features: Features | None) -> list[list[str]]:
    """One row per negated class: mean beta (share above 0.5) at each class's held-out images, then
    the share of the negated class's and of the other classes' reference images labelled negated,
    by `LocalPosterior` measuring closeness in ``features`` (None: the latents)."""
    rows = []
    for k, points in negation.items():
        local = LocalPosterior(NegationSet(points), reference, label_ratio=label_ratio, features=features)
        cells = []
        for c in range(10):
            beta = local(held_out[c].flatten(1))[0]
            cells.append(f"{float(beta.mean()):.2f} ({float((beta > 0.5).double().mean()):.0%})")
        labelled = local.negated_reference
        own = reference_labels == k
        cells += [f"{float(labelled[own].double().mean()):.0%}", f"{float(labelled[~own].double().mean()):.1%}",
                  f"{local.prior:.3f}"]
        rows.append([f"{k} {CLASS_NAMES[k]}"] + cells)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--label-ratios", type=float, nargs="+", default=[DEFAULT_LABEL_RATIO])
    parser.add_argument("--features", nargs="+", choices=["latent", "unet"], default=["latent", "unet"])
    parser.add_argument("--reference-size", type=int, default=REFERENCE_SIZE)
    parser.add_argument("--out", type=Path, default=Path("docs/results/local_confusion.md"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.time()
    pipe = load_pipeline("fashion-text")
    images, labels = load_fashion_mnist("test", size=32)
    by_class = {c: images[labels == c] for c in range(10)}
    negation = {c: encode_latents(pipe, by_class[c][:NEGATION_SIZE]) for c in range(10)}
    held_out = {c: encode_latents(pipe, by_class[c][NEGATION_SIZE:2 * NEGATION_SIZE]) for c in range(10)}
    ref_images, ref_labels = reference_images(args.reference_size)
    reference = encode_latents(pipe, ref_images)
    header = (["negated class"] + [f"{c} {CLASS_NAMES[c]}" for c in range(10)]
              + ["its reference images labelled negated", "other reference images labelled negated", "prior b"])
    lines = ["# The local estimator at real images: which classes it takes for the negated one", "",
             f"`python {' '.join(map(shlex.quote, sys.argv))}`. "
             f"Negation set: {NEGATION_SIZE} real test-split images of the negated class; reference: "
             f"{args.reference_size} training images of all classes. Cells: mean beta "
             "of `LocalPosterior` at 500 held-out real test images of each class, taken as the estimate D "
             "itself (no sampling), and in brackets the share with beta > 0.5. The diagonal is how surely "
             "the negated class is recognised; off the diagonal, images of another class the estimator "
             "takes for it: a benign request that ends there is corrected anyway. The last columns: the "
             "share of reference images labelled negated (of the negated class itself, of all others), "
             "and the prior b that labelling gives (the negated class is about 10% of the reference)."]
    spaces = {"latent": ("the latents", "under guidance"), "unet": ("the UNet's features", "without guidance")}
    for space in args.features:
        title, when = spaces[space]
        features = None if space == "latent" else Precomputed(UNetFeatures(pipe), reference, *negation.values(),
                                                                *held_out.values())
        for ratio in args.label_ratios:
            rows = confusion(negation, reference, ref_labels, held_out, ratio, features)
            default = f" (the default {when})" if ratio == DEFAULT_LABEL_RATIO else ""
            lines += ["", f"## {title}, label ratio {ratio:g}{default}", "",
                      "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in rows]
            for row in rows:
                print(space, ratio, " | ".join(row), flush=True)
    lines += ["", f"{time.time() - start:.0f} s on {torch.get_num_threads()} CPU threads."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
