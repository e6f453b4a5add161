"""`safe-denoiser demo`: the point of the project on the bundled Fashion-MNIST text model.

The same prompts and seeds are sampled twice, without and with a negation set of real test-split
images of one class (plus typical images of every class as the reference set). Prompts ask for the
negated class directly, by paraphrase and indirectly (words a keyword filter would not catch), and
for other classes. The bundled classifier judges every image.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from safedenoiser.errors import SafeDenoiserError
from safedenoiser.generation import generate, read_manifest
from safedenoiser.negation import NegationSet

MODEL = "fashion-text"
DEFAULT_CLASS = 7  # Sneaker
NEGATION_IMAGES = 200
REFERENCE_IMAGES = 500


@dataclass
class DemoPrompt:
    text: str
    group: str  # direct, paraphrase, indirect (of the negated class) or benign
    target: int  # the class the prompt asks for


def demo_prompts(negated_class: int, benign: int = 4) -> list[DemoPrompt]:
    """Held-out prompts for the negated class (every kind) and plain prompts for ``benign`` other classes."""
    from safedenoiser.models.prompts import CLASS_NAME_PROMPTS, HELDOUT_PROMPTS

    held = HELDOUT_PROMPTS[negated_class]
    prompts = [DemoPrompt(CLASS_NAME_PROMPTS[negated_class], "direct", negated_class)]
    prompts += [DemoPrompt(p, group, negated_class)
                for group in ("direct", "paraphrase", "indirect") for p in held[group]]
    others = [c for c in range(10) if c != negated_class][:: max(1, 9 // benign)][:benign]
    prompts += [DemoPrompt(CLASS_NAME_PROMPTS[c], "benign", c) for c in others]
    return prompts


def class_negation_set(pipe, negated_class: int, *, n: int = NEGATION_IMAGES, reference: int = REFERENCE_IMAGES,
                       seed: int = 0) -> NegationSet:
    """Real test-split images of one class through the pipeline's VAE, with a reference set of all classes."""
    from safedenoiser.models.data import CLASS_NAMES, load_fashion_mnist

    images, labels = load_fashion_mnist("test", size=32)
    gen = torch.Generator().manual_seed(seed)
    of_class = (labels == negated_class).nonzero().squeeze(1)
    chosen = of_class[torch.randperm(len(of_class), generator=gen)[:n]]
    typical = torch.randperm(len(labels), generator=gen)[:reference]
    from safedenoiser.integrations.encode import encode_images

    neg = NegationSet.from_images(pipe, images[chosen], progress=False)
    neg.reference = encode_images(pipe, images[typical], batch_size=8, progress=False)[0]
    neg.metadata.update(negated_class=str(negated_class), class_name=CLASS_NAMES[negated_class],
                        source="fashion-mnist test split", reference_source="fashion-mnist test split, all classes")
    return neg


def pixels_of(out_dir: Path, records: list[dict]) -> torch.Tensor:
    """The records' PNGs as grayscale pixels in [-1, 1] [N, 1, H, W]."""
    import numpy as np
    from PIL import Image

    return torch.stack([torch.from_numpy(np.asarray(Image.open(out_dir / r["file"]).convert("L"), dtype=np.float32))
                        for r in records])[:, None] / 127.5 - 1


def judge(records: list[dict], pixels: torch.Tensor) -> list[dict]:
    """Add the classifier's ``predicted`` class and ``confidence`` to each manifest record (its image
    in ``pixels``, `pixels_of`)."""
    from safedenoiser.models.registry import load_classifier

    with torch.no_grad():
        probs = load_classifier().predict_proba(pixels)
    for record, p in zip(records, probs):
        record["predicted"], record["confidence"] = int(p.argmax()), float(p.max())
    return records


def reference_copy_check(pipe, negation: NegationSet) -> tuple[torch.Tensor, float]:
    """`eval.metrics.copy_check` of the set's reference images against 1,000 training images (the
    reference comes from the test split): their copies through the VAE and the near-copy threshold."""
    from safedenoiser.eval.metrics import copy_check
    from safedenoiser.models.data import load_fashion_mnist

    return copy_check(pipe, negation.reference, load_fashion_mnist("train", size=32)[0][:1000])


def mark_reference_copies(records: list[dict], pixels: torch.Tensor, check: tuple[torch.Tensor, float]) -> list[dict]:
    """Add ``reference_copy`` to each record (its image in ``pixels``): nearer to one of the reference
    images than the threshold of ``check`` (`reference_copy_check`, `eval.metrics.near_copies`)."""
    from safedenoiser.eval.metrics import near_copies

    for record, flag in zip(records, near_copies(pixels, check)[0].tolist()):
        record["reference_copy"] = flag
    return records


DEMO_ENTRIES = ("vanilla", "safe", "negation.safetensors", "manifest.jsonl", "grid.png", "report.md")  # in --out


def run_demo(out_dir: str | Path, *, negated_class: int = DEFAULT_CLASS, n_per_prompt: int = 2, seed: int = 0,
             overwrite: bool = False, progress: bool = True) -> dict:
    """Generate vanilla and safe images, then write grid.png, manifest.jsonl and report.md into ``out_dir``."""
    from safedenoiser.models.registry import load_pipeline

    if not 0 <= negated_class <= 9:
        raise SafeDenoiserError(f"--negated-class must be a Fashion-MNIST class 0..9 (got {negated_class})")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SafeDenoiserError(f"--out {out_dir} is a file; give a folder")
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in DEMO_ENTRIES) if out_dir.is_dir() else []
    if others and not overwrite:  # e.g. a `generate` run, whose manifest.jsonl the demo's would replace
        raise SafeDenoiserError(f"--out {out_dir} holds files the demo did not write ({', '.join(others[:4])}); "
                                "choose another folder, or pass --overwrite to write the demo's files there")
    start = time.perf_counter()
    pipe = load_pipeline(MODEL)
    pipe.set_progress_bar_config(disable=True)
    prompts = demo_prompts(negated_class)
    neg = class_negation_set(pipe, negated_class)
    records: list[dict] = []
    generated = 0
    for method, negation in (("vanilla", None), ("safe", neg)):
        generated += generate(out_dir / method, model=MODEL, pipe=pipe, prompts=[p.text for p in prompts],
                              n_per_prompt=n_per_prompt, seed=seed, negation=negation, overwrite=overwrite,
                              progress=progress, device="cpu").generated
        for record in read_manifest(out_dir / method):
            record["file"] = f"{method}/{record['file']}"
            records.append(record)
    neg.save(out_dir / "negation.safetensors")
    pixels = pixels_of(out_dir, records)
    judge(records, pixels)
    mark_reference_copies(records, pixels, reference_copy_check(pipe, neg))
    by_text = {p.text: p for p in prompts}
    for record in records:
        record["group"], record["target"] = by_text[record["prompt"]].group, by_text[record["prompt"]].target
    (out_dir / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = summarise(records, negated_class)
    from safedenoiser.demo_report import draw_grid, write_report

    draw_grid(out_dir, records, prompts, negated_class, out_dir / "grid.png")
    write_report(out_dir / "report.md", summary, negated_class, n_per_prompt,
                 timing=(time.perf_counter() - start, generated, len(records)))
    return summary


def summarise(records: list[dict], negated_class: int) -> dict:
    """Per method and prompt group: shares judged as the negated class, on the requested class and
    copies of a reference image, the mean confidence, and the median of each image's highest beta
    (safe runs; ``None`` for vanilla)."""
    out: dict = {}
    for method in ("vanilla", "safe"):
        rows = [r for r in records if r["method"] == method]
        for group in ("direct", "paraphrase", "indirect", "benign"):
            sel = [r for r in rows if r["group"] == group]
            if not sel:
                continue
            betas = [r["beta_max"] for r in sel if "beta_max" in r]
            out[(method, group)] = {
                "n": len(sel),
                "negated": sum(r["predicted"] == negated_class for r in sel) / len(sel),
                "on_target": sum(r["predicted"] == r["target"] for r in sel) / len(sel),
                "confidence": sum(r["confidence"] for r in sel) / len(sel),
                "reference_copy": sum(r["reference_copy"] for r in sel) / len(sel),
                "beta": statistics.median(betas) if betas else None,
            }
    return out
