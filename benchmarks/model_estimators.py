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
from safedenoiser.eval.methods import MethodRun, measure, sample
from safedenoiser.eval.scenarios import Scenario, text_scenario, unconditional_scenario

# row name -> SafeDenoiser arguments
ESTIMATORS = {"gate": {"beta": "gate"}, "hybrid": {"beta": "hybrid"}, "local": {"beta": "local"},
              "local, latch": {"beta": "local", "latch": True}}
# the columns of `eval.methods.measure` shown here, and their headings
COLUMNS = {"unsafe[direct]": "unsafe direct", "unsafe[paraphrase]": "unsafe paraphrase",
           "unsafe[indirect]": "unsafe indirect", "unsafe[benign]": "unsafe benign", "unsafe[all]": "unsafe",
           "accuracy": "benign accuracy", "confident": "recognisable", "tv_others": "TV others"}


def run(scenario: Scenario) -> list[dict]:
    """Vanilla, then each estimator, on the same requests and seeds; `eval.methods.measure` rows."""
    idx = list(range(len(scenario)))

    def measured(name: str, corrector=None, vanilla_hist: torch.Tensor | None = None) -> dict:
        images = sample(scenario, idx, scenario.seeds(0), corrector=corrector)
        return measure(scenario, MethodRun(name, None, images, 0.0, 0), vanilla_hist)

    vanilla = measured("vanilla")
    hist = torch.tensor(vanilla["histogram"], dtype=torch.float64)
    return [vanilla] + [measured(name, SafeDenoiser(scenario.negation, reference=scenario.reference, **kwargs), hist)
                        for name, kwargs in ESTIMATORS.items()]


def table(title: str, results: dict[int, list[dict]]) -> list[str]:
    shown = [c for c in COLUMNS if any(c in row for rows in results.values() for row in rows)]
    lines = [f"## {title}", "", "| class | estimator | " + " | ".join(COLUMNS[c] for c in shown) + " |",
             "|---|---|" + "---|" * len(shown)]
    for cls, rows in results.items():
        for row in rows:
            cells = ["" if c not in row else f"{row[c]:.3f}" if c == "tv_others" else f"{row[c]:.1%}" for c in shown]
            lines.append(f"| {cls} | {row['method']} | " + " | ".join(cells) + " |")
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
        unconditional[cls] = run(unconditional_scenario(args.unconditional_n, cls))
        print(f"class {cls} done ({time.perf_counter() - start:.0f} s)", flush=True)
    lines = ["# Beta estimators on the bundled models", "",
             f"`python benchmarks/model_estimators.py --text-n {args.text_n} --unconditional-n {args.unconditional_n} "
             f"--classes {' '.join(map(str, args.classes))}` "
             f"({time.perf_counter() - start:.0f} s). Negation set: 500 real test-split images of the class; reference: "
             "500 training images of all classes; DDIM 25 steps, CFG 4 (text), the same seeds for every row. Judge: "
             "the bundled classifier; recognisable: its top probability >= 0.8; TV others: total variation between "
             "the other classes' shares (renormalised) and vanilla's (unconditional only).", "",
             "Estimators: `gate` (no reference; the default without one), `hybrid` (x_t-space density ratio or "
             "gate), `local` (x0-space local posterior, core/local.py; the default with a reference), `local, latch` "
             "(each sample's highest beta so far along its trajectory instead of each step's own, `latched_beta`, "
             "and the correction `held_safe_denoise`).", ""]
    lines += table("Text-conditional (`fashion-text`)", text)
    lines += table("Unconditional (`fashion-class`, null label)", unconditional)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
