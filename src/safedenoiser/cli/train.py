"""`safe-denoiser train {vae,classifier,text,class}`: retrain the bundled Fashion-MNIST models.

Order: `vae` first (the UNets learn its latents), then `text` and `class`; `classifier` any time.
Each writes a diffusers-style folder with a `training.json` of its settings and numbers. Defaults
are the settings of the shipped weights; `--out` defaults to the bundled weights folder, which (like
any folder that holds files) is only replaced with `--overwrite`.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from safedenoiser.cli.app import app
from safedenoiser.cli.outputs import refuse_replacing
from safedenoiser.errors import SafeDenoiserError


class Part(str, Enum):
    vae = "vae"
    classifier = "classifier"
    text = "text"
    class_ = "class"


@app.command()
def train(
    part: Part = typer.Argument(..., help="vae, classifier, text (fashion-text UNet) or class (fashion-class UNet)."),
    steps: int | None = typer.Option(None, min=1, help="Optimiser steps (default: the shipped weights' count)."),
    out: Path | None = typer.Option(None, help="Output folder (default: the bundled weights folder of that part)."),
    seed: int = typer.Option(0, help="Seed of initialisation, batches and noise."),
    vae: Path | None = typer.Option(None, help="VAE folder the UNets train on (default: the bundled fashion-vae)."),
    threads: int = typer.Option(2, min=1, help="torch CPU threads."),
    device: str = typer.Option("cpu", help="cpu (the shipped weights were trained there) or cuda: the same random "
                               "draws, but GPU arithmetic rounds differently, so the weights differ a little."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the weights in the output folder."),
) -> None:
    """Train one bundled model on Fashion-MNIST (CPU is enough; --device cuda uses a GPU)."""
    from safedenoiser.generation import resolve_device
    from safedenoiser.models import training

    if vae is not None and part in (Part.vae, Part.classifier):
        raise SafeDenoiserError(f"--vae is the VAE the text and class UNets train on; {part.value} takes none")
    device = resolve_device(device)
    target = out if out is not None else training.WEIGHTS_DIR / training.DEFAULT_OUT[part.value]
    refuse_replacing(target, [p.name for p in target.iterdir()] if target.is_dir() else [], overwrite)

    kwargs: dict = {"out": out, "seed": seed, "threads": threads, "device": device}
    if steps is not None:
        kwargs["steps"] = steps
    if part is Part.vae:
        record = training.train_vae(**kwargs)
    elif part is Part.classifier:
        record = training.train_classifier(**kwargs)
    elif part is Part.text:
        record = training.train_text_unet(vae_dir=vae, **kwargs)
    else:
        record = training.train_class_unet(vae_dir=vae, **kwargs)
    typer.echo(json.dumps({k: record[k] for k in ("model", "steps", "wall_seconds", "metrics")},
                          indent=2))
