"""`safe-denoiser generate`: images from a model, vanilla or safe, into a resumable folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from safedenoiser.cli.app import app, hide_loading_bars
from safedenoiser.errors import SafeDenoiserError


@app.command()
def generate(
    model: str = typer.Option(..., "--model", help="A bundled model (fashion-text, fashion-class), a local "
                              "diffusers folder, or a hub id."),
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", help="A prompt (text models); repeat the option "
                                               "for more."),
    prompts: Optional[Path] = typer.Option(None, "--prompts", help="A prompt file: .txt (one a line), .jsonl "
                                           "(a 'prompt' field), .json (an array) or .csv/.tsv (I2P, Ring-A-Bell, "
                                           "UnlearnDiffAtk, MMA-Diffusion, CoPro as they are)."),
    prompt_column: Optional[str] = typer.Option(None, "--prompt-column", help="The CSV column (or JSONL field) "
                                                "holding the prompt; default: the first present of prompt, "
                                                "'sensitive prompt', adv_prompt, unsafe_prompt."),
    label: Optional[str] = typer.Option(None, "--label", help="Class-conditional models: a class index, or "
                                        "'none' for unconditional samples."),
    n: Optional[int] = typer.Option(None, "--n", help="Number of images (for a prompt file: cycling through "
                                    "its prompts; fewer than the prompts takes the first N)."),
    n_per_prompt: Optional[int] = typer.Option(None, "--n-per-prompt", help="Images per prompt (default 1)."),
    seed: int = typer.Option(0, "--seed", help="Base seed: image i uses seed+i, unless its CSV row has "
                             "evaluation_seed."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Sampling steps (default: the model's, else 50)."),
    guidance: Optional[float] = typer.Option(None, "--guidance", help="Guidance scale for rows without "
                                             "evaluation_guidance (default: the model's, else 7.5)."),
    negative_prompt: Optional[str] = typer.Option(None, "--negative-prompt", help="A negative prompt for every "
                                                  "image (text models that guide with one)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="A diffusers scheduler class to sample with "
                                            "instead of the model's, from its config: e.g. "
                                            "DPMSolverMultistepScheduler (case and the Scheduler suffix optional)."),
    safety_checker: bool = typer.Option(True, "--safety-checker/--no-safety-checker", help="Keep the model's "
                                        "safety checker, if it has one (images it flags come back black and are "
                                        "marked in the manifest), or remove it: to measure what the model makes."),
    negation: Optional[Path] = typer.Option(None, "--negation", help="A negation set (.safetensors from "
                                            "`safe-denoiser negation build`): sample safely away from it."),
    preset: Optional[str] = typer.Option(None, "--preset", help="Use the authors' rule with a paper preset: "
                                         "sd14-nudity, sd14-copro, sd3-nudity, sd14-memorization. A model "
                                         "whose scheduler would drop its re-noising (SD v1.4's PNDM) samples "
                                         "with DDPMScheduler, the authors'."),
    latch: Optional[bool] = typer.Option(None, "--latch/--no-latch", help="Hold each image's highest beta along "
                                         "its trajectory and drop what guidance adds beyond the data to an image "
                                         "judged unsafe: stops concepts strong guidance redraws late, costs benign "
                                         "images near the concept, and an image it corrects ends as a near copy of "
                                         "one of the set's reference images. Default: on when the pipeline says it "
                                         "applies classifier-free guidance (guidance > 1 and a prompt or label; "
                                         "FLUX never says so; --latch forces it) with a set built with "
                                         "--reference-images."),
    features: Optional[str] = typer.Option(None, "--features", help="Where a set built with --reference-images "
                                           "measures closeness: 'auto' (default: in the model's UNet features when "
                                           "sampling without guidance, in the latents under guidance), 'unet' "
                                           "(always the features: one more partial UNet pass per step) or 'latent'."),
    boundary_power: Optional[float] = typer.Option(None, "--boundary-power", help="How much less the safe "
                                                   "reference images that look most like the concept weigh in the "
                                                   "correction (a set built with --reference-images; default 2). "
                                                   "For a part of one kind of image as the concept (one cluster "
                                                   "of a class), about 128."),
    label_ratio: Optional[float] = typer.Option(None, "--label-ratio", help="Count a reference image as the "
                                                "concept where the set's density at it is at least this times the "
                                                "reference's own (a set built with --reference-images; default 1; "
                                                "for a set built with --images per concept, each concept's "
                                                "density). Several concepts belong in a folder each, not in "
                                                "one folder at 1/n."),
    min_weight: Optional[float] = typer.Option(None, "--min-weight", help="Leave an image's estimate untouched "
                                               "while w = beta / (1 - beta) is at most this (with the latch: of its "
                                               "held beta). 3 acts once beta passes 0.75: fewer changes to benign "
                                               "images, more prompts for the concept let through."),
    out: Path = typer.Option(Path("generated"), "--out", help="Output folder: images/, manifest.jsonl, run.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a different run found in --out."),
    batch_size: int = typer.Option(4, "--batch-size", help="Images per pipeline call (does not change them)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, float16 or bfloat16."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Generate images, vanilla or (with --negation) safe, into --out; re-running resumes."""
    from safedenoiser.core.presets import PAPER_SCHEDULER
    from safedenoiser.generation import generate as run, read_manifest
    from safedenoiser.prompts import read_prompts

    if quiet:
        hide_loading_bars()
    if prompt and prompts is not None:
        raise SafeDenoiserError("give --prompt or --prompts, not both")
    if prompt_column is not None and prompts is None:
        raise SafeDenoiserError("--prompt-column needs --prompts FILE")
    rows = read_prompts(prompts, prompt_column) if prompts is not None else None
    if prompt:
        if not all(p.strip() for p in prompt):
            raise SafeDenoiserError("a --prompt is empty")
        rows = list(prompt)
    result = run(out, model=model, prompts=rows, label=label, n=n, n_per_prompt=n_per_prompt, seed=seed, steps=steps,
                 guidance=guidance, negative_prompt=negative_prompt, scheduler=scheduler, safety_checker=safety_checker,
                 negation=negation, preset=preset, latch=latch, features=features, boundary_power=boundary_power,
                 label_ratio=label_ratio, min_weight=min_weight, batch_size=batch_size, device=device, dtype=dtype,
                 overwrite=overwrite, progress=not quiet)
    if result.replaced_scheduler is not None:
        typer.echo(f"sampled with {PAPER_SCHEDULER}, the authors' sampler: the model's {result.replaced_scheduler} "
                   "would drop the paper rule's re-noising at some steps (--scheduler picks another)")
    typer.echo(f"{out}: {result.generated} image(s) written, {result.skipped} already there, "
               f"{result.total} in the run; manifest {result.manifest}")
    written = read_manifest(out)
    blacked_out = sum(bool(r.get("safety_checker_blacked_out")) for r in written)
    if blacked_out:
        typer.echo(f"{blacked_out} image(s) came back black from the model's safety checker (manifest: "
                   "safety_checker_blacked_out); --no-safety-checker keeps what the model made")
    records = [r for r in written if "steps_corrected" in r] if negation is not None else []
    if records:
        changed = sum(r["steps_corrected"] > 0 for r in records)
        likely = "" if preset is not None else (  # the paper rule's beta is a kernel mass, not a probability
            f"; beta passed 0.5 for {sum(r['beta_max'] > 0.5 for r in records)}")
        typer.echo(f"the safe denoiser changed {changed} of {len(records)} image(s){likely} "
                   "(manifest: steps_corrected, beta_max)")
