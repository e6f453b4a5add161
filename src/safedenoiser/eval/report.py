"""Reports: results as JSON per scenario, picture grids, the trade-off plot and ``docs/results.md``.

`save_results` writes one scenario's rows (and its grid) and `load_results` reads every saved
scenario back, so scenarios can be run separately and the page re-rendered from the JSON
(benchmarks/run_eval.py ``--render``); `markdown_table` and `histogram_table` are the page's tables.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor

COLUMNS = {  # metric key -> column title
    "unsafe[all]": "unsafe", "unsafe[direct]": "unsafe direct", "unsafe[paraphrase]": "unsafe paraphrase",
    "unsafe[indirect]": "unsafe indirect", "unsafe[benign]": "unsafe benign", "near_copy": "near copies",
    "accuracy": "benign accuracy", "fd": "FD", "fd[benign]": "FD benign", "fd[unsafe]": "FD unsafe prompts",
    "confident[unsafe prompts]": "recognisable (unsafe prompts)", "confident": "recognisable",
    "tv_others": "TV others vs vanilla",
    "reference_copy[unsafe prompts]": "copies of a reference image (unsafe prompts)",
    "reference_copy": "copies of a reference image",
    "evals_per_image": "UNet evals / image", "seconds_per_image": "s / image",
}
PERCENT = {"unsafe[all]", "unsafe[direct]", "unsafe[paraphrase]", "unsafe[indirect]", "unsafe[benign]",
           "near_copy", "accuracy", "confident", "confident[unsafe prompts]", "reference_copy",
           "reference_copy[unsafe prompts]"}


def image_grid(images: Tensor, ncol: int):
    """A PIL grid of images [N, 1, H, W] in [-1, 1] with a 2-pixel gap."""
    from PIL import Image

    n, _, h, w = images.shape
    nrow = math.ceil(n / ncol)
    canvas = torch.ones(nrow * (h + 2), ncol * (w + 2))
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[r * (h + 2):r * (h + 2) + h, c * (w + 2):c * (w + 2) + w] = (images[i, 0] + 1) / 2
    return Image.fromarray((canvas.clamp(0, 1) * 255).round().byte().numpy(), mode="L")


def comparison_grid(images: dict[str, Tensor], path: Path, *, ncol: int = 12, title: str = "") -> Path:
    """Rows of samples (same seeds) per method, labelled, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(images)
    fig, axes = plt.subplots(len(names), 1, figsize=(ncol * 0.55 + 1.6, len(names) * 0.62 + 0.4), squeeze=False)
    for ax, name in zip(axes[:, 0], names):
        ax.imshow(image_grid(images[name][:ncol], ncol), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tradeoff_plot(rows: list[dict], path: Path, *, unsafe_key: str, quality_key: str, title: str) -> Path:
    """Unsafe rate against the Fréchet distance, one line per method across its strengths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = sorted(((r[quality_key], r[unsafe_key], r["strength"]) for r in rows
                      if r["method"] == method and unsafe_key in r and quality_key in r), key=lambda p: p[0])
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=method)
        for i, (x, y, s) in enumerate(pts):
            if s is not None:  # above and below by turns: a method's strengths can land on nearly one point
                ax.annotate(str(s), (x, 100 * y), fontsize=6, xytext=(2, 2 if i % 2 == 0 else -7),
                            textcoords="offset points")
    ax.set_xlabel(f"Fréchet distance ({quality_key}, lower is better)")
    ax.set_ylabel(f"{COLUMNS.get(unsafe_key, unsafe_key)} (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def save_results(out: Path, key: str, rows: list[dict], info: dict, images: dict[str, Tensor]) -> Path:
    """``out/key.json`` (rows + scenario info) and ``out/key.png`` (the comparison grid)."""
    out.mkdir(parents=True, exist_ok=True)
    comparison_grid(images, out / f"{key}.png", title=key)
    path = out / f"{key}.json"
    path.write_text(json.dumps({"key": key, "info": info, "rows": rows}, indent=1, default=str) + "\n")
    return path


def _fmt(key: str, value) -> str:
    """One table cell: blank when missing, a percentage for the `PERCENT` keys, else 2 (or 3) decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if key in PERCENT:
        return f"{100 * value:.1f}%"
    if isinstance(value, float):
        return f"{value:.3f}" if key == "seconds_per_image" or key == "tv_others" else f"{value:.2f}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    """The metric rows as a markdown table: method, its setting, then every `COLUMNS` metric some row has."""
    keys = [k for k in COLUMNS if any(k in r for r in rows)]
    head = ["method", "setting"] + [COLUMNS[k] for k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        setting = "" if r.get("strength") is None else f"{r.get('knob', '')} = {r['strength']}"
        if r.get("estimator"):
            setting = (setting + ", " if setting else "") + r["estimator"]
        if r.get("mean_attempts"):
            setting = (setting + ", " if setting else "") + f"{r['mean_attempts']:.2f} attempts"
        lines.append("| " + " | ".join([r["method"], setting] + [_fmt(k, r.get(k)) for k in keys]) + " |")
    return "\n".join(lines)


def histogram_table(rows: list[dict]) -> str:
    """Each row's class histogram (shares) as percentages, one column per class."""
    head = ["method"] + [str(c) for c in range(10)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([r["method"]] + [f"{100 * v:.1f}" for v in r["histogram"]]) + " |")
    return "\n".join(lines)


def load_results(out: Path) -> dict[str, dict]:
    """Every ``key.json`` that `save_results` wrote into ``out``, by key."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(Path(out).glob("*.json"))}
