"""`safe-denoiser negation build`: a negation set from a folder of images, through a model's VAE; `negation
inspect`: what a set holds."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from safedenoiser.cli.app import app, hide_loading_bars
from safedenoiser.cli.outputs import refuse_replacing_file
from safedenoiser.errors import SafeDenoiserError

if TYPE_CHECKING:
    from safedenoiser.negation import NegationSet

negation_app = typer.Typer(help="Build and inspect negation sets (the images to stay away from).",
                           no_args_is_help=True)
app.add_typer(negation_app, name="negation")

CLASS_FILE = "class.json"  # {"class_label": K}: written by tools that export one class's images


def scan_images(folder: Path, flag: str = "--images",
                progress: bool = True) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The readable images under ``folder`` (recursively, sorted), and the other files with the reason;
    the files skipped are listed on stderr, and a folder without images is refused, naming ``flag``. Every file
    is decoded once here, before the model loads (a bar with ``progress``)."""
    from tqdm.auto import tqdm

    from safedenoiser.integrations.encode import files_under, readable_images

    if folder.is_file():
        raise SafeDenoiserError(f"{flag} {folder} is a file: give the folder that holds the images (every image "
                                "under it is used, subfolders included)")
    if not folder.is_dir():
        raise SafeDenoiserError(f"{flag} {folder} is not a folder" +
                                ("; give the folder itself, not a pattern (every image under it is used)"
                                 if any(c in folder.name for c in "*?[") else ""))
    files = [path for path in files_under(folder) if path.name != CLASS_FILE]
    good, bad = readable_images(tqdm(files, desc=f"checking {flag}", unit="file", disable=not progress))
    for path, reason in bad:
        typer.secho(f"skipped {path}: {reason}", fg="yellow", err=True)
    if not good:
        raise SafeDenoiserError(f"no readable images in {flag} {folder}" +
                                (f" ({len(bad)} file(s) skipped)" if bad else ""))
    return good, bad


def recorded_class(folder: Path) -> int | None:
    """The class a helper recorded for the folder in ``class.json``, if any."""
    path = folder / CLASS_FILE
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))["class_label"]
        return int(value)
    except (ValueError, KeyError, TypeError) as err:
        raise SafeDenoiserError(f"{path} should hold {{\"class_label\": K}} ({err})") from err


def _class_count(model: str, pipe) -> int | None:
    """Classes of a class-conditional pipeline, or of a bundled Fashion-MNIST model; else unknown."""
    from safedenoiser.generation import num_classes
    from safedenoiser.models.data import CLASS_NAMES
    from safedenoiser.models.registry import BUNDLED

    count = num_classes(pipe)
    return count if count is not None else (len(CLASS_NAMES) if model in BUNDLED else None)


@negation_app.command("build")
def build(
    model: str = typer.Option(..., "--model", help="The model whose VAE encodes the images: a bundled name, a "
                              "local diffusers folder, or a hub id."),
    images: list[Path] = typer.Option(..., "--images", help="A folder of images (searched recursively). Give it "
                                      "once per concept for a set of several (e.g. --images nudity/ --images "
                                      "person/): each is then judged on its own, not diluted by the others."),
    out: Path = typer.Option(..., "--out", help="The negation set to write (.safetensors)."),
    class_label: Optional[int] = typer.Option(None, "--class-label", help="The class all images belong to "
                                              "(bundled class models; one --images folder): recorded as "
                                              "negated_class."),
    reference_images: Optional[Path] = typer.Option(None, "--reference-images", help="A folder of ordinary images "
                                                    "of every kind, of the same sort as --images (real ones for real "
                                                    "--images, not the model's own outputs: README, 'Which "
                                                    "reference images'); the safe denoiser "
                                                    "then uses them as reference (the local estimator), which works "
                                                    "far better than the set alone. Under "
                                                    "guidance (the latch) an image judged unsafe ends as a near copy "
                                                    "of one of them: use images you may show."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    batch_size: int = typer.Option(8, "--batch-size", help="Images per VAE call."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when available)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Encode a folder of images (or one per concept) into a negation set; files that are not images are listed
    and skipped."""
    import torch

    from safedenoiser.generation import load_pipeline, model_id, resolve_device
    from safedenoiser.negation import NegationSet

    if quiet:
        hide_loading_bars()
    refuse_replacing_file(out, (".safetensors",), overwrite)
    if batch_size < 1:
        raise SafeDenoiserError(f"--batch-size must be at least 1 (got {batch_size})")
    _check_separate(images)
    if class_label is not None and len(images) > 1:
        raise SafeDenoiserError(f"--class-label names the class of one --images folder, and {len(images)} are "
                                "given; build a set per class to record it")
    scans = [scan_images(folder, progress=not quiet) for folder in images]
    good, bad = [path for found, _ in scans for path in found], [skip for _, skipped in scans for skip in skipped]
    ref_good = (scan_images(reference_images, "--reference-images", progress=not quiet)[0]
                if reference_images is not None else None)
    folder_class = recorded_class(images[0]) if len(images) == 1 else None
    if class_label is not None and folder_class is not None and class_label != folder_class:
        raise SafeDenoiserError(f"--class-label {class_label} contradicts {images[0] / CLASS_FILE} "
                                f"(class {folder_class})")
    negated_class = class_label if class_label is not None else folder_class
    if negated_class is not None and negated_class < 0:
        raise SafeDenoiserError(f"--class-label must be a class index (got {negated_class})")

    pipe = load_pipeline(model, resolve_device(device), torch.float32)
    classes = _class_count(model, pipe)
    if negated_class is not None and classes is not None and negated_class >= classes:
        raise SafeDenoiserError(f"--class-label {negated_class} is not a class of {model}; use 0..{classes - 1}")
    per_folder = [NegationSet.from_images(pipe, found, batch_size=batch_size, progress=not quiet)
                  for found, _ in scans]
    neg = per_folder[0] if len(per_folder) == 1 else NegationSet.union(per_folder)
    if ref_good is not None:
        neg.reference = NegationSet.from_images(pipe, ref_good, batch_size=batch_size, progress=not quiet).latents
        neg.metadata["n_reference_images"] = str(len(ref_good))
    folders = [str(folder.resolve()) for folder in images]
    neg.metadata.update(model=model_id(model), n_images=str(len(good)),
                        source_dir=folders[0] if len(folders) == 1 else json.dumps(folders))
    if negated_class is not None:
        neg.metadata["negated_class"] = str(negated_class)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    neg.save(tmp)
    os.replace(tmp, out)
    typer.echo(f"{out}: {len(neg)} image(s){_concepts(neg)}, latents {tuple(neg.sample_shape)}, fingerprint "
               f"{neg.fingerprint}" + (f", negated_class {negated_class}" if negated_class is not None else "")
               + (f"; {len(bad)} file(s) skipped" if bad else ""))


@negation_app.command("inspect")
def inspect(path: Path = typer.Argument(..., help="A negation set (.safetensors from `negation build`).")) -> None:
    """Show what a negation set holds: images, latent shape, reference images, bandwidth and its record."""
    from safedenoiser.negation import NegationSet

    neg = NegationSet.load(path)
    typer.echo(f"{path}: {len(neg)} image(s){_concepts(neg)}, latents {tuple(neg.sample_shape)}, fingerprint "
               f"{neg.fingerprint}\n"
               f"  reference: {_reference_summary(neg)}\n  bandwidth: {neg.bandwidth:.4g}")
    for key, value in sorted(neg.metadata.items()):
        typer.echo(f"  {key}: {_shown(value)}")


def _check_separate(folders: list[Path]) -> None:
    """Refuse --images folders given twice or one inside another (their images would count twice)."""
    resolved = [folder.resolve() for folder in folders]
    for i, a in enumerate(resolved):
        for j, b in enumerate(resolved):
            if i != j and (a == b or b in a.parents):
                raise SafeDenoiserError(f"--images {folders[j]} holds --images {folders[i]}" if a != b else
                                        f"--images {folders[i]} is given twice; give each concept's folder once")


def _concepts(neg: NegationSet) -> str:
    """`` in 3 concepts (200, 50, 20)`` for a set of several, else nothing."""
    if neg.concept_count == 1:
        return ""
    sizes = neg.concepts.bincount().tolist()
    return f" in {neg.concept_count} concepts ({', '.join(map(str, sizes))})"


def _shown(value: str, at_most: int = 3) -> str:
    """A metadata value as ``inspect`` prints it: a JSON list of more than ``at_most`` entries (the sources'
    hashes of a set of hundreds of images) as its count and first entries, anything else as it is."""
    try:
        items = json.loads(value)
    except ValueError:
        return value
    if not isinstance(items, list) or len(items) <= at_most:
        return value
    return f"{len(items)} entries: {', '.join(map(str, items[:at_most]))}, ..."


def _reference_summary(neg: NegationSet) -> str:
    """The reference images, and how many of them the local estimator labels as the concept (in the latents,
    as under guidance): about 10-35% for a class among ten, more for a part of one class (README, "Choosing
    beta", on ``boundary_power``)."""
    if neg.reference is None:
        return "none"
    from safedenoiser.core.local import LocalPosterior

    negated = LocalPosterior(neg, neg.reference).negated_reference
    return (f"{len(neg.reference)} image(s) (the local estimator); {int(negated.sum())} "
            f"({float(negated.double().mean()):.0%}) lie in the set's region")
