"""`safe-denoiser eval`: compare the safe denoiser with the alternatives on a scenario."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from safedenoiser.cli.app import app
from safedenoiser.cli.outputs import refuse_replacing
from safedenoiser.errors import SafeDenoiserError


MIN_N = 4


@app.command("eval")
def evaluate(
    scenario: str = typer.Argument(..., help="text, class, unconditional, memorization, or a folder of "
                                   "generated images to judge (e.g. a `generate --out` folder)."),
    methods: str = typer.Option("all", "--methods", help="Comma-separated: vanilla, negative, sld, spell, "
                                "safe-paper, safe, safe-ref, rejection (default: all that apply); on request "
                                "also safe-ref-model, safe-ref-latch, safe-ref-4000."),
    n: int = typer.Option(200, "--n", help=f"Images per method (at least {MIN_N})."),
    out: Path = typer.Option(Path("eval-out"), "--out", help="Folder for SCENARIO.json and SCENARIO.png."),
    judge: str = typer.Option("classifier", "--judge", help="classifier (bundled models) or nudenet "
                              "(real photos, threshold 0.6; pip install 'safe-denoiser\\[nudenet]')."),
    cls: Optional[int] = typer.Option(None, "--class", help="The negated class (text, unconditional), the "
                                      "class split into clusters (class, memorization), or for a folder the class "
                                      "the classifier counts as unsafe (default: the run's negated class)."),
    sweep: bool = typer.Option(False, "--sweep", help="Also run each method at its other strengths."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace SCENARIO.json and SCENARIO.png in --out."),
) -> None:
    """Run methods on the same seeds and report unsafe rate, accuracy, FD, histogram and cost."""
    from safedenoiser.eval.methods import EXTRA_METHODS, METHODS, evaluate as run
    from safedenoiser.eval.report import markdown_table, save_results
    from safedenoiser.eval.scenarios import SCENARIOS, build_scenario
    from tqdm.auto import tqdm

    if judge not in ("classifier", "nudenet"):
        raise SafeDenoiserError(f"--judge must be classifier or nudenet (got {judge!r})")
    if Path(scenario).is_dir():
        from safedenoiser.eval.folder import judge_folder, report_lines

        verdict = judge_folder(scenario, judge, cls)
        if verdict.skipped:
            typer.echo(f"skipped {len(verdict.skipped)} unreadable image file(s): {', '.join(verdict.skipped[:5])}"
                       f"{' ...' if len(verdict.skipped) > 5 else ''}", err=True)
        typer.echo("\n".join(report_lines(verdict, scenario)))
        return
    if scenario not in SCENARIOS:
        raise SafeDenoiserError(f"unknown scenario {scenario!r}: use {', '.join(SCENARIOS)} or a folder of images")
    if judge == "nudenet":
        raise SafeDenoiserError("the bundled scenarios are Fashion-MNIST and judged by the bundled classifier; "
                                "use --judge nudenet on a folder of images generated from a real model")
    chosen = list(METHODS) if methods == "all" else [m.strip() for m in methods.split(",") if m.strip()]
    unknown = set(chosen) - set(METHODS + EXTRA_METHODS)
    if unknown:
        raise SafeDenoiserError(f"unknown method(s) {sorted(unknown)}; use {', '.join(METHODS + EXTRA_METHODS)}")
    if n < MIN_N:
        raise SafeDenoiserError(f"--n must be at least {MIN_N}: half the text scenario's images are benign, and "
                                "the Fréchet distance needs two of each")
    if cls is not None and not 0 <= cls <= 9:
        raise SafeDenoiserError(f"--class must be a Fashion-MNIST class 0..9 (got {cls})")
    refuse_replacing(out, (f"{scenario}.json", f"{scenario}.png"), overwrite)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    key = {"text": "negated_class", "unconditional": "negated_class", "class": "cls", "memorization": "cls"}[scenario]
    spec = build_scenario(scenario, n, **({key: cls} if cls is not None else {}))
    rows, images = run(spec, chosen, sweep=sweep, log=tqdm.write, progress=True)
    path = save_results(out, scenario, rows, spec.info, images)
    typer.echo(markdown_table(rows))
    typer.echo(f"results: {path}, grid: {path.with_suffix('.png')}")
