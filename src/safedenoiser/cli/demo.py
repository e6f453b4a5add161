"""`safe-denoiser demo`: vanilla against safe sampling on the bundled text model, offline on CPU."""

from __future__ import annotations

from pathlib import Path

import typer

from safedenoiser.cli.app import app


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Folder for grid.png, manifest.jsonl and report.md."),
    negated_class: int = typer.Option(7, "--negated-class", help="Fashion-MNIST class to negate (7 = Sneaker)."),
    n_per_prompt: int = typer.Option(2, "--n-per-prompt", min=1, help="Images per prompt and method."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous demo run in --out."),
) -> None:
    """Sample the same prompts without and with a negation set of one class; write a grid and a report."""
    from safedenoiser.demo import run_demo

    summary = run_demo(out, negated_class=negated_class, n_per_prompt=n_per_prompt, seed=seed, overwrite=overwrite)
    for (method, group), v in summary.items():
        beta = "" if v["beta"] is None else f"  highest beta {v['beta']:.2f}"
        typer.echo(f"{method:8s} {group:10s} judged negated {v['negated']:5.0%}  on target {v['on_target']:5.0%}"
                   f"{beta}")
    typer.echo(f"grid -> {out / 'grid.png'}, report -> {out / 'report.md'}")
