"""The demo's picture (vanilla beside safe, per prompt) and its markdown report."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from safedenoiser.models.data import CLASS_NAMES  # noqa: E402


def draw_grid(out_dir: Path, records: list[dict], prompts, negated_class: int, path: Path) -> None:
    """One row per prompt: its vanilla images, then its safe images; red titles = judged as the negated class."""
    per = max(sum(1 for r in records if r["method"] == "vanilla" and r["prompt"] == prompts[0].text), 1)
    fig, axes = plt.subplots(len(prompts), 2 * per, figsize=(1.25 * 2 * per + 3.2, 1.25 * len(prompts) + 0.8),
                             squeeze=False)
    for row, prompt in enumerate(prompts):
        for m, method in enumerate(("vanilla", "safe")):
            imgs = [r for r in records if r["method"] == method and r["prompt"] == prompt.text]
            for k in range(per):
                ax = axes[row, m * per + k]
                ax.set_xticks([])
                ax.set_yticks([])
                if k < len(imgs):
                    r = imgs[k]
                    ax.imshow(Image.open(out_dir / r["file"]), cmap="gray", vmin=0, vmax=255)
                    bad = r["predicted"] == negated_class
                    ax.set_title(CLASS_NAMES[r["predicted"]], fontsize=6, color="red" if bad else "black")
                if row == 0 and k == 0:
                    ax.text(0, 1.3, method, transform=ax.transAxes, fontsize=10, weight="bold", va="bottom")
        axes[row, 0].set_ylabel(f"{prompt.text[:38]}\n({prompt.group})", rotation=0, ha="right", va="center",
                                fontsize=7)
    fig.suptitle(f"Negated: {CLASS_NAMES[negated_class]} (real test images). Left: vanilla, right: safe denoiser. "
                 "Titles: classifier verdict (red = negated class)", fontsize=8)
    fig.subplots_adjust(left=0.28, right=0.99, top=0.92, bottom=0.01, wspace=0.05, hspace=0.45)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(path: Path, summary: dict, negated_class: int, n_per_prompt: int) -> None:
    name = CLASS_NAMES[negated_class]
    lines = [f"# safe-denoiser demo: negating '{name}'", "",
             f"Bundled `fashion-text` model; negation set: real test-split images of class {negated_class} ({name}); "
             f"{n_per_prompt} images per prompt, the same seeds for both methods; judged by the bundled classifier.", "",
             f"| prompts | method | images | judged {name} | on the requested class | mean confidence | "
             "copies of a reference image |",
             "|---|---|---|---|---|---|---|"]
    for (method, group), v in summary.items():
        lines.append(f"| {group} | {method} | {v['n']} | {v['negated']:.0%} | {v['on_target']:.0%} | "
                     f"{v['confidence']:.2f} | {v['reference_copy']:.0%} |")
    lines += ["", "Copies of a reference image: nearer (RMS pixel distance) to one of the negation set's 500 "
              "reference images, through the VAE, than any of 1,000 unseen training images is. Under guidance the "
              "latch corrects a sample judged unsafe towards the nearest safe reference images, and it ends as one "
              "of them.", "", "![vanilla beside safe](grid.png)", ""]
    path.write_text("\n".join(lines))
