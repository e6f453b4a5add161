"""The checks a command makes of its outputs before it starts working: a folder it writes into
(`refuse_replacing`) or a file it writes (`refuse_replacing_file`)."""

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


def refuse_replacing_file(path: Path, suffixes: tuple[str, ...], overwrite: bool, flag: str = "--out") -> None:
    """Refuse an output file ``flag`` names without one of ``suffixes``, one that is a folder, or an existing
    one unless ``overwrite``."""
    if path.suffix.lower() not in suffixes:
        raise SafeDenoiserError(f"{flag} {path}: give a file name ending in {' or '.join(suffixes)}")
    if path.is_dir():
        raise SafeDenoiserError(f"{flag} {path} is a folder; give a file name ending in {' or '.join(suffixes)}")
    if path.exists() and not overwrite:
        raise SafeDenoiserError(f"{path} exists; pass --overwrite to replace it, or choose another {flag}")
