"""The `safe-denoiser` typer application; command modules register on it."""

import typer

app = typer.Typer(
    name="safe-denoiser",
    help="Keep a pretrained diffusion model out of a region given by example images.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def hide_loading_bars() -> None:
    """``-q``: no bars from diffusers and transformers while they load a model either (process-wide)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
