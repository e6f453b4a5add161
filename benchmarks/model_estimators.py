"""Compare the beta estimators on the bundled Fashion-MNIST models, for every class.

For each negated class: the text scenario (`fashion-text`, held-out prompts asking for the class
directly, by paraphrase and indirectly, plus prompts for the other classes) and the unconditional
scenario (`fashion-class`, null label). Every estimator samples the same requests with the same seeds;
the negation set is real test-split images of the class, the reference 500 training images of all
classes. The local estimator's rows measure closeness in the latents (``latent``) or in the UNet's
features (``unet``). Prints and writes docs/results/model_estimators.md.

    python benchmarks/model_estimators.py [--text-n 120] [--unconditional-n 300] [--classes 0 1 ...]
        [--estimators "local, unet" ...] [--label-ratios 2 3 ...] [--label-neighbours 3 ...]
        [--mean-widths 0.3 ...] [--boundary-powers 0 ...] [--reference-sizes 2000 ...] [--min-weights 3 ...]
        [--steps 25] [--out FILE]

``--estimators`` defaults to every one but ``labelled`` (the toys' default), which runs on its own:
``--estimators labelled --out docs/results/model_estimators_labelled.md``. The other rows take the
default ``features="auto"``. Each of the following adds rows of the local estimator, with and without
the latch: ``--label-ratios``, with other thresholds for labelling reference samples as negated
(`LocalPosterior`'s ``label_ratio``; 1 by default); ``--label-neighbours``, whose labelling kernel adapts
to another nearest neighbour (``label_neighbours``; by default the ``neighbours`` of beta's kernel, 10);
``--mean-widths``, whose posterior means use another kernel width (``mean_width``;
`local.DEFAULT_MEAN_WIDTH` by default); ``--boundary-powers``, whose safe mean weighs each safe reference
sample by another power of its distance from the labelling threshold (``boundary_power``;
`local.DEFAULT_BOUNDARY_POWER` by default, 0 weighs them all alike); ``--reference-sizes``, whose
reference is that many training images (the first of the same random draw, so they include the default 500);
``--min-weights``, which leaves a sample's estimate untouched while ``w = beta / (1 - beta)`` (with the latch:
its held beta's) is at most that (`SafeDenoiser`'s ``min_weight``; `DEFAULT_MIN_WEIGHT` by default).
``--steps`` samples every row with that many DDIM steps (the scenarios' 25 by default).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import torch

from safedenoiser import SafeDenoiser
from safedenoiser.core.local import DEFAULT_BOUNDARY_POWER, DEFAULT_MEAN_WIDTH, LocalPosterior
from safedenoiser.eval.methods import measure_images, sample
from safedenoiser.eval.scenarios import (REFERENCE_SIZE, Scenario, reference_latents, text_scenario,
                                         unconditional_scenario)
from safedenoiser.integrations.encode import vae_fingerprint

# row name -> SafeDenoiser arguments
ESTIMATORS = {"gate": {"beta": "gate"}, "hybrid": {"beta": "hybrid"}, "labelled": {"beta": "labelled"},
              **{f"local{', latch' if latch else ''}, {space}": {"beta": "local", "latch": latch, "features": space}
                 for space in ("latent", "unet") for latch in (False, True)}}
# labelled (the toys' default) runs on its own: --estimators labelled --out docs/results/model_estimators_labelled.md
DEFAULT_ESTIMATORS = [name for name in ESTIMATORS if name != "labelled"]
# the columns of `eval.methods.measure` shown here, and their headings
COLUMNS = {"unsafe[direct]": "unsafe direct", "unsafe[paraphrase]": "unsafe paraphrase",
           "unsafe[indirect]": "unsafe indirect", "unsafe[benign]": "unsafe benign", "unsafe[all]": "unsafe",
           "accuracy": "benign accuracy", "fd[benign]": "FD benign", "fd": "FD", "confident": "recognisable",
           "tv_others": "TV others"}
NUMBER_FORMATS = {"fd[benign]": ".2f", "fd": ".2f", "tv_others": ".3f"}  # the rest are shares
# `LocalPosterior` setting -> (the option giving its values, the rows' label)
LOCAL_VARIANTS = {"label_ratio": ("label_ratios", "label ratio"),
                  "label_neighbours": ("label_neighbours", "label neighbours"),
                  "mean_width": ("mean_widths", "mean width"), "boundary_power": ("boundary_powers", "boundary power")}
_REFERENCES: dict[tuple[str, int], torch.Tensor] = {}  # (VAE, size) -> latents: both models share their VAE


def larger_reference(scenario: Scenario, size: int) -> torch.Tensor:
    """`eval.scenarios.reference_latents` of ``size`` images, encoded once per VAE."""
    key = (vae_fingerprint(scenario.pipe), size)
    if key not in _REFERENCES:
        _REFERENCES[key] = reference_latents(scenario.pipe, size)
    return _REFERENCES[key]


def run(scenario: Scenario, estimators: list[str], local_variants: dict[str, list[float]],
        reference_sizes: list[int], min_weights: list[float]) -> list[dict]:
    """Vanilla, then each estimator, then the local estimator with each value of each `LOCAL_VARIANTS` setting
    in ``local_variants``, with and without the latch, on the same requests and seeds; `eval.methods.measure`
    rows."""
    idx = list(range(len(scenario)))

    def measured(name: str, corrector=None, vanilla_hist: torch.Tensor | None = None) -> dict:
        images = sample(scenario, idx, scenario.seeds(0), corrector=corrector)
        return measure_images(scenario, images, name, vanilla_hist)

    vanilla = measured("vanilla")
    hist = torch.tensor(vanilla["histogram"], dtype=torch.float64)
    neg, reference = scenario.negation, scenario.reference
    rows = [measured(name, SafeDenoiser(neg, reference=reference, **ESTIMATORS[name]), hist) for name in estimators]
    rows += [measured(f"local{', latch' if latch else ''}, {LOCAL_VARIANTS[setting][1]} {value:g}",
                      SafeDenoiser(neg, beta=LocalPosterior(neg, reference, **{setting: value}), latch=latch), hist)
             for setting, values in local_variants.items() for value in values for latch in (False, True)]
    rows += [measured(f"local{', latch' if latch else ''}, reference {size}",
                      SafeDenoiser(neg, reference=larger_reference(scenario, size), latch=latch), hist)
             for size in reference_sizes for latch in (False, True)]
    rows += [measured(f"local{', latch' if latch else ''}, min weight {weight:g}",
                      SafeDenoiser(neg, reference=reference, latch=latch, min_weight=weight), hist)
             for weight in min_weights for latch in (False, True)]
    return [vanilla] + rows


def targets(text: dict[int, list[dict]], unconditional: dict[int, list[dict]]) -> list[str]:
    """Per row, the classes meeting the unconditional target (issue 5) and the text one (issue 4's, at CFG 4)."""
    lines = ["## Classes meeting the targets", "",
             "Unconditional: negated class <= 2% and TV others <= 0.10. Text: <= 5% on direct, paraphrase and "
             "indirect prompts, benign accuracy within 5 points of vanilla.", "",
             "| estimator | unconditional | text |", "|---|---|---|"]
    for i, row in enumerate(next(iter(unconditional.values()))[1:], start=1):
        uncond = [c for c, rows in unconditional.items()
                  if rows[i]["unsafe[all]"] <= 0.02 and rows[i]["tv_others"] <= 0.10]
        txt = [c for c, rows in text.items()
               if all(rows[i][f"unsafe[{g}]"] <= 0.05 for g in ("direct", "paraphrase", "indirect"))
               and rows[0]["accuracy"] - rows[i]["accuracy"] <= 0.05]
        lines.append(f"| {row['method']} | {len(uncond)} of {len(unconditional)} ({', '.join(map(str, uncond))}) | "
                     f"{len(txt)} of {len(text)} ({', '.join(map(str, txt))}) |")
    return lines + [""]


def table(title: str, results: dict[int, list[dict]]) -> list[str]:
    shown = [c for c in COLUMNS if any(c in row for rows in results.values() for row in rows)]
    lines = [f"## {title}", "", "| class | estimator | " + " | ".join(COLUMNS[c] for c in shown) + " |",
             "|---|---|" + "---|" * len(shown)]
    for cls, rows in results.items():
        for row in rows:
            cells = ["" if c not in row else f"{row[c]:{NUMBER_FORMATS.get(c, '.1%')}}" for c in shown]
            lines.append(f"| {cls} | {row['method']} | " + " | ".join(cells) + " |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-n", type=int, default=120)
    parser.add_argument("--unconditional-n", type=int, default=300)
    parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--estimators", nargs="*", choices=list(ESTIMATORS), default=DEFAULT_ESTIMATORS)
    parser.add_argument("--label-ratios", type=float, nargs="*", default=[])
    parser.add_argument("--label-neighbours", type=int, nargs="*", default=[])
    parser.add_argument("--mean-widths", type=float, nargs="*", default=[])
    parser.add_argument("--boundary-powers", type=float, nargs="*", default=[])
    parser.add_argument("--reference-sizes", type=int, nargs="*", default=[])
    parser.add_argument("--min-weights", type=float, nargs="*", default=[])
    parser.add_argument("--steps", type=int, default=Scenario.steps, help="DDIM steps of every row")
    parser.add_argument("--out", type=Path, default=Path("docs/results/model_estimators.md"))
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    start = time.perf_counter()
    text, unconditional = {}, {}
    local_variants = {setting: getattr(args, option) for setting, (option, _) in LOCAL_VARIANTS.items()}
    for cls in args.classes:
        variants = (args.estimators, local_variants, args.reference_sizes, args.min_weights)
        text[cls] = run(dataclasses.replace(text_scenario(args.text_n, cls), steps=args.steps), *variants)
        unconditional[cls] = run(dataclasses.replace(unconditional_scenario(args.unconditional_n, cls),
                                                     steps=args.steps), *variants)
        print(f"class {cls} done ({time.perf_counter() - start:.0f} s)", flush=True)
    lines = ["# Beta estimators on the bundled models", "",
             f"`python {' '.join(map(shlex.quote, sys.argv))}` ({time.perf_counter() - start:.0f} s). Negation set: "
             f"500 real test-split images of the class; reference: {REFERENCE_SIZE} training images of all "
             f"classes (the `reference N` rows: N of them); DDIM {args.steps} steps, CFG 4 (text), the same seeds for "
             "every "
             "row. Judge: "
             "the bundled classifier; recognisable: its top probability >= 0.8; TV others: total variation between "
             "the other classes' shares (renormalised) and vanilla's (unconditional only).", "",
             "Estimators: `gate` (no reference; the default without one), `hybrid` (x_t-space density ratio or "
             "gate), `labelled` (the x_t-space posterior of the reference samples labelled negated; the toy "
             "default), `local` (x0-space local posterior, core/local.py; the default with a reference, here with "
             "`latch=False`), `local, latch` (`latch=True`: each sample's highest beta so far along its trajectory "
             "instead of each step's own, `latched_beta`, and the correction `held_safe_denoise`; what the default "
             "`latch=\"auto\"` does under guidance, i.e. in the text rows). `latent`: closeness measured in the "
             "VAE latents (`features=\"latent\"`); `unet`: in the UNet's features (`features=\"unet\"`, "
             "`UNetFeatures`; a reference image counts as negated where the features or the latents say so). "
             "The default `features=\"auto\"` is `unet` without guidance (the unconditional rows) "
             "and `latent` under guidance (the text rows); so are the `label ratio`, `label neighbours`, `mean width`, "
             "`boundary power`, `reference` and `min weight` rows. The posterior means of `local` use "
             f"the narrow kernel width `mean_width = {DEFAULT_MEAN_WIDTH}` (core/local.py); the `mean width` rows use "
             "another. Its safe mean weighs each safe reference image by `(1 - q)^boundary_power`, `q` its density "
             f"ratio over the labelling threshold, `boundary_power = {DEFAULT_BOUNDARY_POWER:g}`; the `boundary power` "
             "rows use another (0: every safe image alike). FD: Fréchet distance of the classifier's features, "
             "benign samples against real images of their classes (text), samples against real images of the other "
             "classes (unconditional).", ""]
    lines += targets(text, unconditional)
    lines += table("Text-conditional (`fashion-text`)", text)
    lines += table("Unconditional (`fashion-class`, null label)", unconditional)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
