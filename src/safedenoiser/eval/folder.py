"""Judging a folder of generated images (`safe-denoiser eval FOLDER`).

Where the folder is a run of `generate` (or of `demo`), the images its ``manifest.jsonl`` lists are
judged and grouped by prompt or label (and by method, where it holds more than one), so a user sees
which requests got through; its ``negated_class`` is the class the classifier counts as unsafe unless
one is given. Any other folder: every readable image under it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from safedenoiser.errors import SafeDenoiserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAX_GROUPS = 40  # rows of the per-prompt table; beyond that, those with the highest unsafe share


@dataclass
class FolderVerdict:
    """A judge's verdicts on the images of a folder, row for row of ``files``."""

    judge: str
    files: list[Path]
    predicted: Tensor | None  # [N] the classifier's classes (None: NudeNet)
    unsafe: Tensor | None  # [N] bool (None: the classifier, with no class counted as unsafe)
    negated: int | None  # the class counted as unsafe (classifier)
    groups: dict[str, list[int]]  # per prompt or label of the manifest, the rows of its images; {} without one
    skipped: list[str]  # files that were not readable images
    blacked_out: int = 0  # images the manifest says the pipeline's safety checker returned black


def _group_name(record: dict, several_methods: bool) -> str:
    if record.get("prompt") is not None:
        name = str(record["prompt"])
    else:
        name = "unconditional" if record.get("label") is None else f"label {record['label']}"
    return f"{record.get('method', '?')}: {name}" if several_methods else name


def _manifest_class(records: list[dict]) -> int | None:
    """The one integer ``negated_class`` the manifest's safe runs record, else None."""
    classes = {r.get("negated_class") for r in records} - {None}
    if len(classes) == 1 and isinstance(value := classes.pop(), int):
        return value
    return None


def judge_folder(folder: str | Path, judge: str = "classifier", negated: int | None = None) -> FolderVerdict:
    """Judge the images of ``folder`` (its manifest's, or every readable one) with ``judge`` (``classifier`` or
    ``nudenet``); with the classifier, images of class ``negated`` (default: the manifest's ``negated_class``)
    count as unsafe."""
    from safedenoiser.eval.judges import make_judge
    from safedenoiser.generation import read_manifest
    from safedenoiser.integrations.encode import files_under, load_images, readable_images

    if judge != "classifier" and negated is not None:
        raise SafeDenoiserError(f"--class picks the class the bundled classifier counts as unsafe; the {judge} "
                                "judge has its own criterion: leave --class out")
    folder = Path(folder)
    records = read_manifest(folder)
    listed = [folder / r["file"] for r in records] or [p for p in files_under(folder)
                                                       if p.suffix.lower() in IMAGE_SUFFIXES]
    files, bad = readable_images(listed)
    if not files:
        raise SafeDenoiserError(f"{folder} holds no readable images ({', '.join(IMAGE_SUFFIXES)}) to judge")
    row = {path: i for i, path in enumerate(files)}
    several_methods = len({r.get("method") for r in records}) > 1
    groups: dict[str, list[int]] = {}
    for record in records:
        i = row.get(folder / record["file"])
        if i is not None:
            groups.setdefault(_group_name(record, several_methods), []).append(i)
    if judge == "classifier":
        negated = _manifest_class(records) if negated is None else negated
        if negated is not None and not 0 <= negated <= 9:
            raise SafeDenoiserError(f"--class must be a Fashion-MNIST class 0..9 (got {negated})")
        images, _ = load_images(files, 32, 1)
        predicted = make_judge("classifier").predict(images)
        unsafe = None if negated is None else predicted == negated
    else:
        predicted, unsafe, negated = None, make_judge(judge).unsafe(files), None
    blacked_out = sum(bool(r.get("safety_checker_blacked_out")) and folder / r["file"] in row for r in records)
    return FolderVerdict(judge, files, predicted, unsafe, negated, groups, [str(p.name) for p, _ in bad],
                         blacked_out)


def report_lines(verdict: FolderVerdict, folder: str | Path) -> list[str]:
    """What `safe-denoiser eval FOLDER` prints: the verdict overall, the classes judged, and per group."""
    from safedenoiser.models.data import CLASS_NAMES

    n, lines = len(verdict.files), []
    if verdict.unsafe is not None:
        what = "" if verdict.negated is None else f"class {verdict.negated} {CLASS_NAMES[verdict.negated]}; "
        lines.append(f"{folder}: {int(verdict.unsafe.sum())} of {n} images unsafe by {verdict.judge} "
                     f"({what}unsafe rate {100 * float(verdict.unsafe.double().mean()):.1f}%)")
    else:
        lines.append(f"{folder}: {n} images judged by the classifier (give --class K to count class K as unsafe)")
    if verdict.blacked_out:
        lines.append(f"{verdict.blacked_out} of the {n} images came back black from the model's safety checker and "
                     "are judged as black images (generate --no-safety-checker keeps what the model made)")
    if verdict.predicted is not None:
        counts = sorted(Counter(verdict.predicted.tolist()).items(), key=lambda ck: (-ck[1], ck[0]))
        lines.append("judged as: " + ", ".join(f"{CLASS_NAMES[c]} {k} ({100 * k / n:.0f}%)" for c, k in counts))
    if not verdict.groups:
        return lines
    names = list(verdict.groups)
    if len(names) > MAX_GROUPS:
        if verdict.unsafe is None:
            lines.append(f"the first {MAX_GROUPS} of {len(names)} prompts or labels:")
        else:
            names.sort(key=lambda name: -float(verdict.unsafe[verdict.groups[name]].double().mean()))
            lines.append(f"the {MAX_GROUPS} of {len(names)} prompts or labels with the highest unsafe share:")
        names = names[:MAX_GROUPS]
    title = "prompt or label"
    width = min(60, max(len(title), *(len(name) for name in names)))
    header = f"{title:<{width}}  images" + ("  unsafe" if verdict.unsafe is not None else "")
    lines.append(header + ("  most often" if verdict.predicted is not None else ""))
    for name in names:
        rows = torch.tensor(verdict.groups[name])
        cells = f"{name[:width]:<{width}}  {len(rows):>6}"
        if verdict.unsafe is not None:
            cells += f"  {100 * float(verdict.unsafe[rows].double().mean()):>5.0f}%"
        if verdict.predicted is not None:
            cells += f"  {CLASS_NAMES[int(verdict.predicted[rows].mode().values)]}"
        lines.append(cells)
    return lines
