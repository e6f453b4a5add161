"""`safe-denoiser toy`: safe sampling of a Gaussian mixture, where every answer is known exactly."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path

import numpy as np
import torch
import typer

from safedenoiser.cli.app import app
from safedenoiser.cli.outputs import refuse_replacing_file
from safedenoiser.errors import SafeDenoiserError
from safedenoiser.toy.metrics import negated_share, noise_floor, sliced_wasserstein
from safedenoiser.toy.run import DEFAULT_ESTIMATOR, run_toy
from safedenoiser.toy.spec import load_spec


class ToyMethod(str, Enum):
    vanilla = "vanilla"
    exact = "exact"
    kernel = "kernel"


class Sampler(str, Enum):
    dpmpp = "dpm++"
    ddim = "ddim"
    ancestral = "ancestral"


PLOT_FORMATS = (".png", ".pdf", ".svg")


def _check_output(path: Path, overwrite: bool, suffixes: tuple[str, ...], flag: str) -> None:
    refuse_replacing_file(path, suffixes, overwrite, flag)
    if not path.parent.exists():  # numpy and matplotlib do not create it
        raise SafeDenoiserError(f"folder {path.parent} does not exist")


@app.command()
def toy(
    spec_path: Path = typer.Argument(..., metavar="SPEC.json", help="Mixture spec (dim, weights, means, covs, "
                                     "negate, negation_samples, seed)."),
    method: ToyMethod = typer.Option(ToyMethod.kernel, help="vanilla: the mixture; exact: the exact safe denoiser; "
                                     "kernel: the model's D and the finite negation set only."),
    n: int = typer.Option(4000, min=1, help="Number of samples."),
    seed: int = typer.Option(0, help="Seed of the initial noise."),
    out: Path = typer.Option(..., help="Output .npz (samples, trajectories, per-step beta, metrics)."),
    plot: Path | None = typer.Option(None, help="Also draw vanilla against this method to this PNG (first two "
                                     "coordinates)."),
    sampler: Sampler = typer.Option(Sampler.dpmpp, help="dpm++ or ddim (deterministic ODE), ancestral (stochastic)."),
    steps: int | None = typer.Option(None, min=2, help="Sampling steps (default: 60 dpm++, 100 ddim, 150 ancestral)."),
    estimator: str | None = typer.Option(None, help="Beta estimator of the kernel method: labelled, hybrid, "
                                         f"ratio or gate (default {DEFAULT_ESTIMATOR})."),
    overwrite: bool = typer.Option(False, help="Replace existing output files."),
) -> None:
    """Sample a Gaussian mixture with a negated component; report negated share and SW2 to the exact safe mixture."""
    spec = load_spec(spec_path)
    if estimator is not None and method != ToyMethod.kernel:
        raise SafeDenoiserError(f"--estimator chooses the kernel method's beta; --method {method.value} has none")
    estimator = estimator or DEFAULT_ESTIMATOR
    _check_output(out, overwrite, (".npz",), "--out")
    if plot is not None:
        _check_output(plot, overwrite, PLOT_FORMATS, "--plot")
    start = time.perf_counter()
    run = run_toy(spec, method.value, n, seed, estimator=estimator, sampler=sampler.value, steps=steps)
    seconds = time.perf_counter() - start
    safe_mixture = spec.safe_mixture()
    target = safe_mixture.sample(n, torch.Generator().manual_seed(seed + 1))[0]
    share = negated_share(run.samples, spec.mixture, spec.negate)
    sw2, floor = sliced_wasserstein(run.samples, target), noise_floor(safe_mixture, n, seed=seed + 2)
    np.savez(out, samples=run.samples.numpy(), trajectories=run.trajectories.numpy(),
             beta_mean=run.beta_mean.numpy(), acted_share=run.acted_share.numpy(),
             negation_set=spec.negation_set().numpy(), negated_share=share, sw2=sw2, sw2_noise_floor=floor,
             seconds=seconds, method=method.value, sampler=sampler.value, estimator=estimator)
    typer.echo(f"{method.value}: {n} samples in {seconds:.1f}s; negated share {share:.2%}; "
               f"SW2 to the exact safe mixture {sw2:.4f} ({sw2 / floor:.2f}x the noise floor {floor:.4f}) -> {out}")
    if plot is not None:
        from safedenoiser.toy.plot import plot_runs

        vanilla = (run if method == ToyMethod.vanilla
                   else run_toy(spec, "vanilla", n, seed, sampler=sampler.value, steps=steps))
        plot_runs(vanilla, run, spec.negation_set(), plot,
                  title=f"{method.value} ({sampler.value}): negated share {share:.1%}, SW2 {sw2 / floor:.2f}x floor")
        typer.echo(f"plot -> {plot}")
