"""The `safe-denoiser` command. Bad input exits with code 2 and a message, never a traceback."""

import logging
import sys

import typer

from safedenoiser.cli import demo, generate, negation, toy  # noqa: F401  (register their commands on `app`)
from safedenoiser.cli import train  # noqa: F401
from safedenoiser.cli import evaluate  # noqa: F401
from safedenoiser.cli.app import app
from safedenoiser.errors import SafeDenoiserError


def main() -> None:
    """Entry point: run the app; a `SafeDenoiserError` becomes a message and exit code 2."""
    # diffusers' pipelines import transformers' image processors (for safety checkers, which ours do not
    # load); without torchvision transformers warns at each that it falls back to its PIL version
    logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)
    try:
        app()
    except SafeDenoiserError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        sys.exit(2)
