"""The `safe-denoiser` typer application; command modules register on it."""

import typer

app = typer.Typer(
    name="safe-denoiser",
    help="Keep a pretrained diffusion model out of a region given by example images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
