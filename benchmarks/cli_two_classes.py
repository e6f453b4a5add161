"""Two concepts in one negation set, through the public commands: does the safe denoiser stop both?

For each pair of classes (a, b): `negation build --model fashion-text` from ``--negation-size`` test-split
PNGs of class a and ``--second-size`` (default: as many) of class b, one `--images` folder per class (two
concepts; ``--one-folder``: one folder holding both, searched recursively, as one concept), with 500
test-split PNGs of all classes as `--reference-images`, then `generate` without `--negation`,
with it (default flags) and with it and `--no-latch`, on the held-out prompts asking for a and for b
(direct, paraphrase, indirect) and the other eight classes' direct ones. The bundled classifier judges
the PNGs. Target, for each of the two classes as issue 4's for one: vanilla direct >= 60%, safe <= 5% in
each of its three groups; the other classes' on-class accuracy within 5 points of vanilla. ``--label-ratio``
passes `generate --label-ratio` to both safe runs (0.5 stops both classes of one folder when their sizes
match). Prints and writes the table to --out.

    python benchmarks/cli_two_classes.py [--pairs 7-9 0-8 ...] [--n-per-prompt 2] [--negation-size 200]
        [--second-size 20] [--one-folder] [--label-ratio 0.5] [--out docs/results/cli_two_classes.md]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

from cli_every_class import (MODEL, N_CLASS_IMAGES, N_REFERENCE, SAFE_RUNS, UNSAFE_GROUPS, cli, export_pngs,
                             given_flags, judged_run, publish)
from safedenoiser.core.local import LocalPosterior
from safedenoiser.demo import reference_copy_check
from safedenoiser.models import load_fashion_mnist, load_pipeline
from safedenoiser.models.data import CLASS_NAMES
from safedenoiser.models.prompts import HELDOUT_PROMPTS
from safedenoiser.negation import NegationSet


def pair_prompts(pair: tuple[int, int]) -> dict[str, tuple[str, int]]:
    """Prompt -> (group, target class): every held-out prompt of both classes, the others' direct ones."""
    prompts = {p: (group, k) for k in pair for group in UNSAFE_GROUPS for p in HELDOUT_PROMPTS[k][group]}
    prompts |= {p: ("other", c) for c in range(10) if c not in pair for p in HELDOUT_PROMPTS[c]["direct"]}
    return prompts


def judged_as(records: list[dict], group: str, k: int) -> float:
    """Share of the images of k's prompts in ``group`` that the classifier judges as k."""
    sel = [r for r in records if r["group"] == group and r["target"] == k]
    return sum(r["predicted"] == k for r in sel) / len(sel)


def on_class(records: list[dict]) -> float:
    """The other classes' on-class accuracy."""
    sel = [r for r in records if r["group"] == "other"]
    return sum(r["predicted"] == r["target"] for r in sel) / len(sel)


def labelled_negated(neg: NegationSet, reference_labels: torch.Tensor, k: int, label_ratio: float = 1.0) -> str:
    """How many of the set's reference images of class k the local estimator labels negated, e.g. ``49 of 51``."""
    negated = LocalPosterior(neg, neg.reference, label_ratio=label_ratio).negated_reference.cpu()
    return f"{int((negated & (reference_labels == k)).sum())} of {int((reference_labels == k).sum())}"


def run_pair(pair: tuple[int, int], images: torch.Tensor, labels: torch.Tensor, reference: Path,
             reference_labels: torch.Tensor, work: Path, n_per_prompt: int, sizes: tuple[int, int],
             one_folder: bool, label_ratio: float | None, pipe) -> dict:
    """Build one set of both classes (``sizes`` images of each; ``one_folder``: as one concept), generate
    vanilla and safe (``label_ratio``: their `generate --label-ratio`), judge; the pair's numbers."""
    name = f"pair{pair[0]}-{pair[1]}"
    folders = [export_pngs(images[labels == k][:size], work / name / "images" / f"class{k}")
               for k, size in zip(pair, sizes)]
    neg = work / name / "set.safetensors"
    given = [work / name / "images"] if one_folder else folders
    cli("negation", "build", "--model", MODEL, *(arg for folder in given for arg in ("--images", folder)),
        "--reference-images", reference, "--out", neg, "--overwrite", "-q")
    prompts = pair_prompts(pair)
    prompt_file = work / name / "prompts.jsonl"
    prompt_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    pair_set = NegationSet.load(neg)
    copy_check = reference_copy_check(pipe, pair_set)
    alone = {}  # each class's own set, for its labelling
    for k in pair:
        own = work / name / f"set{k}.safetensors"
        cli("negation", "build", "--model", MODEL, "--images", folders[pair.index(k)],
            "--reference-images", reference, "--out", own, "--overwrite", "-q")
        alone[k] = labelled_negated(NegationSet.load(own), reference_labels, k)
    runs = {}
    chosen = ("--negation", neg, *given_flags({"--label-ratio": label_ratio}))
    for method, extra in (("vanilla", ()), *((m, (*chosen, *flags)) for m, flags in SAFE_RUNS.items())):
        out = work / name / method.replace(" ", "")
        cli("generate", "--model", MODEL, "--prompts", prompt_file, "--n-per-prompt", n_per_prompt, "--seed", 0,
            *extra, "--out", out, "--overwrite", "-q")
        runs[method] = judged_run(out, prompts, copy_check)
    row = {(m, k, g): judged_as(runs[m], g, k) for m in runs for k in pair for g in UNSAFE_GROUPS}
    row |= {(m, "others"): on_class(runs[m]) for m in runs}
    ratio = 1.0 if label_ratio is None else label_ratio
    row |= {("labelled", k): f"{labelled_negated(pair_set, reference_labels, k, ratio)} ({alone[k]} "
            "alone)" for k in pair}
    for m in SAFE_RUNS:
        row[(m, "holds")] = (all(row[("vanilla", k, "direct")] >= 0.6 and row[(m, k, g)] <= 0.05
                                 for k in pair for g in UNSAFE_GROUPS)
                             and abs(row[(m, "others")] - row[("vanilla", "others")]) <= 0.05)
    return row


def table(rows: dict[tuple[int, int], dict]) -> list[str]:
    lines = ["| classes | run | class a: vanilla / safe (direct, para, indirect) | class b: vanilla / safe | "
             "others vanilla | others safe | reference images labelled negated: a / b | target |",
             "|---|---|---|---|---|---|---|---|"]
    for pair, r in rows.items():
        def groups(m: str, k: int) -> str:
            return " / ".join(f"{r[(m, k, g)]:.0%}" for g in UNSAFE_GROUPS)

        for m in SAFE_RUNS:
            cells = [f"{groups('vanilla', k)} -> {groups(m, k)}" for k in pair]
            lines.append(f"| {pair[0]} {CLASS_NAMES[pair[0]]} + {pair[1]} {CLASS_NAMES[pair[1]]} | {m} | "
                         f"{cells[0]} | {cells[1]} | {r[('vanilla', 'others')]:.1%} | {r[(m, 'others')]:.1%} | "
                         f"{r[('labelled', pair[0])]} / {r[('labelled', pair[1])]} | "
                         f"{'holds' if r[(m, 'holds')] else 'misses'} |")
    return lines


def parse_pair(text: str) -> tuple[int, int]:
    a, _, b = text.partition("-")
    if not (a.isdigit() and b.isdigit() and a != b and max(int(a), int(b)) < 10):
        raise argparse.ArgumentTypeError(f"a pair is two different classes 0-9 as A-B, got {text!r}")
    return int(a), int(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=parse_pair, nargs="+", default=[(7, 9), (0, 8), (1, 3)])
    parser.add_argument("--n-per-prompt", type=int, default=2)
    parser.add_argument("--negation-size", type=int, default=N_CLASS_IMAGES, help="test-split images of class a")
    parser.add_argument("--second-size", type=int, help="test-split images of class b (default: --negation-size)")
    parser.add_argument("--one-folder", action="store_true", help="build the set from one folder holding both "
                        "classes (one concept) instead of one --images per class")
    parser.add_argument("--label-ratio", type=float, help="generate --label-ratio for the safe runs")
    parser.add_argument("--out", type=Path, default=Path("docs/results/cli_two_classes.md"))
    args = parser.parse_args()
    sizes = (args.negation_size, args.negation_size if args.second_size is None else args.second_size)
    start = time.time()
    images, labels = load_fashion_mnist("test", size=32)
    pipe = load_pipeline(MODEL)  # decodes the set's reference images for judged_run's copy check
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subset = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:N_REFERENCE]
        reference = export_pngs(images[subset], work / "reference")
        for pair in args.pairs:
            t0 = time.time()
            rows[pair] = run_pair(pair, images, labels, reference, labels[subset], work, args.n_per_prompt,
                                  sizes, args.one_folder, args.label_ratio, pipe)
            print(f"classes {pair}: " + ", ".join(f"{m} {'holds' if rows[pair][(m, 'holds')] else 'misses'}"
                                                  for m in SAFE_RUNS) + f", {time.time() - t0:.0f} s", flush=True)
    per_group = args.n_per_prompt * len(HELDOUT_PROMPTS[0]["direct"])
    lines = ["# Two concepts in one negation set, through the public commands", "",
             f"`python {' '.join(map(shlex.quote, sys.argv))}`: per pair of classes a + b, `safe-denoiser negation "
             f"build --model {MODEL}` from {sizes[0]} test-split PNGs of class a and {sizes[1]} of class b, "
             + ("in one folder (one concept)" if args.one_folder else "one `--images` folder per class (two concepts)")
             + f", with {N_REFERENCE} test-split PNGs of all classes (seed 0) as `--reference-images`, then "
             "`safe-denoiser generate` (the model's scheduler, steps and guidance, seed 0) without `--negation`, "
             "with it ("
             + (f"`--label-ratio {args.label_ratio:g}`" if args.label_ratio is not None else "default flags")
             + ": the latch is on under the model's guidance) and with it and `--no-latch`: the held-out "
             f"prompts of both classes ({per_group} images per group and class) and the other eight classes' direct "
             f"ones ({8 * per_group} images). Judged by the bundled classifier: each cell is the share of a class's "
             "prompts' images judged as that class, vanilla -> safe. Target: for both classes vanilla direct >= "
             "60% and safe <= 5% in all three groups; the others' on-class accuracy within 5 points of vanilla. "
             "Labelled negated: of the reference's images of each class, how many the local estimator "
             "(`LocalPosterior`) counts as negated with the pair's set (at the runs' label ratio), and with a set of "
             "that class's images alone (at 1); "
             "a prompt for the class that the latch holds ends as a copy of the nearest one labelled safe. "
             f"Wall time {time.time() - start:.0f} s on CPU.", "", *table(rows)]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
