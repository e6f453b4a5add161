"""Compare the beta estimators on the bundled Fashion-MNIST models, for every class.

For each negated class: the text scenario (`fashion-text`, held-out prompts asking for the class
directly, by paraphrase and indirectly, plus prompts for the other classes) and the unconditional
scenario (`fashion-class`, null label). Every estimator samples the same requests with the same seeds;
the negation set is real test-split images of the class, the reference 500 training images of all
classes. Prints and writes docs/results/model_estimators.md.

    python benchmarks/model_estimators.py [--text-n 120] [--unconditional-n 300] [--classes 0 1 ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from safedenoiser import SafeDenoiser
from safedenoiser.eval.methods import CONFIDENT, sample
from safedenoiser.eval.metrics import accuracy, class_histogram, tv_distance, unsafe_rate
from safedenoiser.eval.scenarios import Scenario, text_scenario, unconditional_scenario

ESTIMATORS = ("gate", "hybrid", "local")


def measure(scenario: Scenario, images: torch.Tensor, vanilla_hist: torch.Tensor | None) -> tuple[dict, torch.Tensor]:
    """Unsafe rate per prompt group, benign accuracy, recognisable share, TV of the other classes."""
    proba = scenario.judge.proba(images)
    predicted, unsafe = proba.argmax(1), scenario.judge.unsafe(images)
    groups = sorted(set(scenario.groups))
    row = {g: unsafe_rate(unsafe[[i for i, h in enumerate(scenario.groups) if h == g]]) for g in groups}
    benign = [i for i, t in enumerate(scenario.targets) if t is not None]
    if benign:
        row["benign accuracy"] = accuracy(predicted[benign], torch.tensor([scenario.targets[i] for i in benign]))
    row["recognisable"] = float((proba.max(1).values >= CONFIDENT).double().mean())
    hist = class_histogram(predicted, 10)
    if vanilla_hist is not None:
        row["TV others"] = tv_distance(hist, vanilla_hist, exclude=scenario.negated_class)
    return row, hist


def run(scenario: Scenario) -> list[tuple[str, dict]]:
    idx = list(range(len(scenario)))
    vanilla, hist = measure(scenario, sample(scenario, idx, scenario.seeds(0)), None)
    rows = [("vanilla", vanilla)]
    for estimator in ESTIMATORS:
        safe = SafeDenoiser(scenario.negation, beta=estimator, reference=scenario.reference)
        rows.append((estimator, measure(scenario, sample(scenario, idx, scenario.seeds(0), corrector=safe), hist)[0]))
    return rows


def table(title: str, results: dict[int, list[tuple[str, dict]]]) -> list[str]:
    columns = list(next(iter(results.values()))[1][1])
    lines = [f"## {title}", "", "| class | estimator | " + " | ".join(columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for cls, rows in results.items():
        for name, row in rows:
            lines.append(f"| {cls} | {name} | " + " | ".join(f"{row[c]:.1%}" if c != "TV others" else f"{row[c]:.3f}"
                                                             for c in columns if c in row) + " |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-n", type=int, default=120)
    parser.add_argument("--unconditional-n", type=int, default=300)
    parser.add_argument("--classes", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--out", type=Path, default=Path("docs/results/model_estimators.md"))
    args = parser.parse_args()
    start = time.perf_counter()
    text, unconditional = {}, {}
    for cls in args.classes:
        text[cls] = run(text_scenario(args.text_n, cls))
        print(cls, "text", text[cls], flush=True)
        unconditional[cls] = run(unconditional_scenario(args.unconditional_n, cls))
        print(cls, "unconditional", unconditional[cls], flush=True)
    lines = ["# Beta estimators on the bundled models", "",
             f"`python benchmarks/model_estimators.py --text-n {args.text_n} --unconditional-n {args.unconditional_n}` "
             f"({time.perf_counter() - start:.0f} s). Negation set: 500 real test-split images of the class; reference: "
             "500 training images of all classes; DDIM 25 steps, CFG 4 (text), the same seeds for every row. Judge: "
             "the bundled classifier; recognisable: its top probability >= 0.8; TV others: total variation between "
             "the other classes' shares (renormalised) and vanilla's (for text over all requests, so the unsafe "
             "requests' new classes count too).", "",
             "Estimators: `gate` (no reference; the default without one), `hybrid` (x_t-space density ratio or "
             "gate), `local` (x0-space local posterior, core/local.py; the default with a reference).", ""]
    lines += table("Text-conditional (`fashion-text`)", text)
    lines += table("Unconditional (`fashion-class`, null label)", unconditional)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
