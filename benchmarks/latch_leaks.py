"""What gets through the latch on the text model: copies of the reference images it labelled safe.

Under classifier-free guidance `SafeDenoiser` holds each trajectory's highest beta and corrects it
with `held_safe_denoise`: a trajectory held near beta = 1 ends as (nearly) its destination, the
nearest reference images labelled safe. For each negated class (the text scenario of
`eval.scenarios`: 500 real test images of the class as the negation set, 500 training images as the
reference), this samples the class's direct, paraphrased and indirect prompts with the latch,
measuring closeness in the latents and in the UNet's features, and names what the classifier still
judges as the class: how many of those images copy a reference image (nearer to its VAE
reconstruction than any unseen real image is, `eval.metrics.copy_check`), the true class of each
copied image and whether the estimator labelled it safe; and how many of the reference's images of
the class the estimator labelled safe. Prints and writes docs/results/latch_leaks.md.

    python benchmarks/latch_leaks.py [--classes 8 2 0] [--n 240] [--guidance 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import torch

from safedenoiser import SafeDenoiser
from safedenoiser.eval.methods import measure_images, sample
from safedenoiser.eval.metrics import near_copies
from safedenoiser.eval.scenarios import reference_images, text_scenario
from safedenoiser.integrations.unet_features import UNetFeatures
from safedenoiser.models import CLASS_NAMES

SPACES = ("latent", "unet")  # SafeDenoiser's ``features``: the default under guidance, then the UNet's features
GROUPS = ("direct", "paraphrase", "indirect")


def leaks(cls: int, n: int, guidance: float) -> list[str]:
    """Table rows for negated class ``cls``: vanilla, then the latch in each space."""
    scenario = text_scenario(n, cls)
    scenario.guidance_scale = guidance
    reference_labels = reference_images()[1]
    asked = torch.tensor([g.startswith("unsafe:") for g in scenario.groups])
    rows = []
    for space in (None, *SPACES):
        corrector = None if space is None else SafeDenoiser(scenario.negation, reference=scenario.reference,
                                                            features=space)
        images = sample(scenario, list(range(len(scenario))), scenario.seeds(0), corrector=corrector)
        row = measure_images(scenario, images)
        unsafe = " / ".join(f"{row[f'unsafe[{g}]']:.0%}" for g in GROUPS)
        through = images[asked & (scenario.judge.proba(images).argmax(1) == cls)]
        if space is None:
            rows.append(f"| {CLASS_NAMES[cls]} | vanilla | {unsafe} | {len(through)} | | | |")
            continue
        local = corrector.beta if space == "latent" else corrector.beta.with_features(UNetFeatures(scenario.pipe))
        safe = ~local.negated_reference
        flags, index = near_copies(through, (scenario.reference_pixels, scenario.reference_copy_threshold))
        copied = index[flags]
        classes = Counter(CLASS_NAMES[int(reference_labels[i])] for i in copied)
        distinct = copied.unique()
        rows.append(f"| {CLASS_NAMES[cls]} | latch, {space} | {unsafe} | {len(through)} | {len(copied)} "
                    f"({', '.join(f'{name} {count}' for name, count in classes.most_common()) or '-'}) | "
                    f"{len(distinct)} ({int(safe[distinct].sum())}) | "
                    f"{int((safe & (reference_labels == cls)).sum())} of {int((reference_labels == cls).sum())} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[8, 2, 0])
    parser.add_argument("--n", type=int, default=240)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=Path("docs/results/latch_leaks.md"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()
    rows = [row for cls in args.classes for row in leaks(cls, args.n, args.guidance)]
    lines = ["# What gets through the latch on the text model", "",
             f"`python {' '.join(map(shlex.quote, sys.argv))}` ({time.perf_counter() - start:.0f} s). Text scenario "
             f"of `eval.scenarios` ({args.n} requests, half of them for the negated class: direct, paraphrased and "
             f"indirect prompts), CFG {args.guidance:g}, DDIM 25 steps, seeds 0..; negation set: 500 real test images "
             "of the class; reference: 500 training images. `latch, latent`: `SafeDenoiser(negation, "
             "reference=...)`, the default under guidance; `latch, unet`: the same with `features=\"unet\"`. "
             "Through: images of the class's prompts that the classifier judges as the class. Copies: those of "
             "them nearer to a reference image's VAE reconstruction than any unseen real image is, by the true "
             "class of the copied image; how many distinct reference images they copy, and how many of those the "
             "estimator labelled safe. Last column: the reference's images of the class that the estimator "
             "labelled safe, the possible destinations of a held trajectory among them.", "",
             "| negated class | run | unsafe direct / paraphrase / indirect | through | copies (true class) | "
             "distinct images copied (labelled safe) | its reference images labelled safe |",
             "|---|---|---|---|---|---|---|", *rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
