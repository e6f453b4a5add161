"""The one check every command that writes into ``--out`` makes before it starts working."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from safedenoiser.errors import SafeDenoiserError


def refuse_replacing(out: Path, names: Iterable[str], overwrite: bool) -> None:
    """Refuse an ``--out`` that is a file, or one holding any of ``names`` (what the command is about to
    write) unless ``overwrite``: nothing a user already has is replaced without asking."""
    if out.exists() and not out.is_dir():
        raise SafeDenoiserError(f"--out {out} is a file; give a folder")
    present = sorted(name for name in names if (out / name).exists())
    if present and not overwrite:
        shown = ", ".join(present[:4]) + (f" and {len(present) - 4} more" if len(present) > 4 else "")
        raise SafeDenoiserError(f"--out {out} already holds {shown}; choose another folder, or pass --overwrite "
                                "to replace them")
