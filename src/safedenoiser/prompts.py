"""Prompt files: plain text, JSONL or CSV, so the paper's prompt sets run as they are.

    read_prompts("prompts.txt")              # one prompt a line (blank lines skipped)
    read_prompts("prompts.jsonl")            # one JSON object a line with a "prompt" field
    read_prompts("prompts.json")             # a JSON array of prompts, or of objects with a "prompt" field
    read_prompts("unlearndiffatk.csv")       # a CSV; the prompt column is found by name

The CSV prompt column is ``column`` when given, otherwise the first present of `PROMPT_COLUMNS`
(``prompt``: I2P, UnlearnDiffAtk; ``sensitive prompt``: Ring-A-Bell; ``adv_prompt``:
MMA-Diffusion; ``unsafe_prompt``: CoPro). Columns ``evaluation_seed`` and ``evaluation_guidance``
(UnlearnDiffAtk's, also read from JSONL fields of those names) give a row its own seed and
guidance scale. Every malformed row is reported at once, by line number.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path

from safedenoiser.errors import SafeDenoiserError

PROMPT_COLUMNS = ("prompt", "sensitive prompt", "adv_prompt", "unsafe_prompt")
SEED_COLUMN = "evaluation_seed"
GUIDANCE_COLUMN = "evaluation_guidance"
CSV_SUFFIXES = {".csv": ",", ".tsv": "\t"}
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
MAX_REPORTED = 20


@dataclass(frozen=True)
class PromptRow:
    """One prompt and what its row fixes: its seed and guidance scale (None: the run's default)."""

    prompt: str
    line: int  # 1-based line of the file where the row starts (item of a .json array)
    seed: int | None = None
    guidance: float | None = None


def read_prompts(path: str | Path, column: str | None = None) -> list[PromptRow]:
    """Read a prompt file; the format follows the suffix (``.csv``/``.tsv``, ``.jsonl``, ``.json``, else text).

    Raises `SafeDenoiserError` for a missing or unreadable file, an unknown column, an empty file,
    or malformed rows (all of them listed with their line numbers).
    """
    path = Path(path)
    if path.is_dir():
        raise SafeDenoiserError(f"{path} is a folder; give a prompt file (text, .jsonl, .json or .csv)")
    if not path.is_file():
        raise SafeDenoiserError(f"prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise SafeDenoiserError(f"prompt file {path} is not UTF-8 text ({err}); re-save it as UTF-8") from err
    except OSError as err:
        raise SafeDenoiserError(f"cannot read prompt file {path}: {err}") from err
    suffix = path.suffix.lower()
    if suffix in CSV_SUFFIXES:
        rows, errors = _read_csv(text, column, CSV_SUFFIXES[suffix], path)
    elif suffix in JSONL_SUFFIXES:
        rows, errors = _read_jsonl(text, column or "prompt")
    elif suffix == ".json":
        rows, errors = _read_json(text, column or "prompt", path)
    else:
        if column is not None:
            raise SafeDenoiserError(f"--prompt-column applies to CSV and JSONL files, not to the text file {path}")
        rows, errors = _read_text(text), []
    if errors:
        shown = "; ".join(errors[:MAX_REPORTED])
        more = f"; and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        raise SafeDenoiserError(f"{path}: {len(errors)} malformed row(s): {shown}{more}")
    if not rows:
        raise SafeDenoiserError(f"prompt file {path} holds no prompts")
    return rows


def _read_text(text: str) -> list[PromptRow]:
    return [PromptRow(line.strip(), number) for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _read_jsonl(text: str, field: str) -> tuple[list[PromptRow], list[str]]:
    rows, errors = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            errors.append(f"line {number}: not valid JSON ({err.msg})")
            continue
        if not isinstance(record, dict):
            errors.append(f"line {number}: expected a JSON object with a {field!r} field")
            continue
        row = _make_row(record.get(field), record.get(SEED_COLUMN), record.get(GUIDANCE_COLUMN), number, field, errors)
        if row is not None:
            rows.append(row)
    return rows, errors


def _read_json(text: str, field: str, path: Path) -> tuple[list[PromptRow], list[str]]:
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise SafeDenoiserError(f"{path} is not valid JSON ({err}); give a JSON array of prompts") from err
    if not isinstance(items, list):
        raise SafeDenoiserError(f"{path} holds a JSON {type(items).__name__}; give a JSON array of prompts (strings, "
                                f"or objects with a {field!r} field)")
    rows, errors = [], []
    for number, item in enumerate(items, 1):
        record = {field: item} if isinstance(item, str) else item if isinstance(item, dict) else {}
        row = _make_row(record.get(field), record.get(SEED_COLUMN), record.get(GUIDANCE_COLUMN), number, field, errors,
                        where="item")
        if row is not None:
            rows.append(row)
    return rows, errors


def _read_csv(text: str, column: str | None, delimiter: str, path: Path) -> tuple[list[PromptRow], list[str]]:
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return [], []
    except csv.Error as err:
        raise SafeDenoiserError(f"{path}: line 1: cannot parse the header ({err})") from err
    names = [name.strip().lower() for name in header]
    prompt_at = _find_column(names, column, path, header)
    seed_at = names.index(SEED_COLUMN) if SEED_COLUMN in names else None
    guidance_at = names.index(GUIDANCE_COLUMN) if GUIDANCE_COLUMN in names else None
    rows, errors = [], []
    start = reader.line_num + 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            errors.append(f"line {start}: {err}")
            break  # the reader cannot resynchronise after a broken quote
        number, start = start, reader.line_num + 1
        if not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            errors.append(f"line {number}: {len(fields)} fields, the header has {len(header)}")
            continue
        row = _make_row(fields[prompt_at], _cell(fields, seed_at), _cell(fields, guidance_at), number,
                        header[prompt_at].strip(), errors)
        if row is not None:
            rows.append(row)
    return rows, errors


def _find_column(names: list[str], column: str | None, path: Path, header: list[str]) -> int:
    if column is not None:
        if column.strip().lower() not in names:
            raise SafeDenoiserError(f"{path} has no column {column!r}; its columns are {header}")
        return names.index(column.strip().lower())
    for candidate in PROMPT_COLUMNS:
        if candidate in names:
            return names.index(candidate)
    raise SafeDenoiserError(f"{path} has none of the prompt columns {list(PROMPT_COLUMNS)} (its columns are "
                            f"{header}); name the column with --prompt-column")


def _cell(fields: list[str], index: int | None) -> str | None:
    if index is None or not fields[index].strip():
        return None
    return fields[index].strip()


def _make_row(prompt, seed, guidance, number: int, field: str, errors: list[str],
              where: str = "line") -> PromptRow | None:
    """Validate one row's values; append what is wrong to ``errors`` (as ``where`` ``number``) and return
    None if anything is."""
    problems = []
    if not isinstance(prompt, str) or not prompt.strip():
        problems.append(f"missing or empty {field!r}")
    seed_value = guidance_value = None
    if seed is not None:
        seed_value = _as_seed(seed)
        if seed_value is None:
            problems.append(f"{SEED_COLUMN} {seed!r} is not a non-negative integer")
    if guidance is not None:
        try:
            guidance_value = float(guidance)
            if isinstance(guidance, bool) or not math.isfinite(guidance_value):
                raise ValueError
        except (TypeError, ValueError):
            problems.append(f"{GUIDANCE_COLUMN} {guidance!r} is not a number")
    if problems:
        errors.append(f"{where} {number}: " + ", ".join(problems))
        return None
    return PromptRow(prompt.strip(), number, seed_value, guidance_value)


def _as_seed(value) -> int | None:
    """An integer seed from ``42``, ``"42"`` or ``"42.0"``; None if the value is not one."""
    if isinstance(value, bool):
        return None
    try:
        seed = int(value) if isinstance(value, int) else int(str(value).strip())
    except ValueError:
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        if not math.isfinite(number) or not number.is_integer():
            return None
        seed = int(number)
    return seed if 0 <= seed < 2**63 else None
