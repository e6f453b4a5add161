"""`python -m safedenoiser.cli`: the `safe-denoiser` command."""

from safedenoiser.cli import main

main()
