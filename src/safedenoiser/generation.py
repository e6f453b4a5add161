"""Generate images into a folder, vanilla or safe, resumable and safe to kill at any moment.

    from safedenoiser.generation import generate
    result = generate("out/", model="fashion-text", prompts=["a sneaker"], n_per_prompt=4,
                      negation="sneakers.safetensors")

An output folder holds

    run.json         the settings that define the run (a different run is refused there)
    images/*.png     one file per image: ``{index:06d}-s{seed}-{hash}.png``, never prompt text
    manifest.jsonl   one JSON line per finished image (`ManifestRecord`'s fields)

Each image's noise comes from its own generator seeded with ``seed + index`` (or the prompt row's
``evaluation_seed``; DPM-Solver++ SDE's Brownian tree too), so a vanilla and a safe run with the
same arguments start every image from the same noise, whatever the batch size. An image is written
to a temporary file and moved into place with `os.replace`; only then is its manifest line appended
(flushed and fsynced). On resume, lines whose image is missing and a torn last line are dropped,
images without a line are made again, and temporary files are removed: a run killed at any moment
resumes cleanly. Growing ``n`` extends a run (image ``i`` does not depend on ``n``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

from safedenoiser.core.local import LocalPosterior
from safedenoiser.core.presets import PAPER_SCHEDULER
from safedenoiser.errors import SafeDenoiserError
from safedenoiser.negation import NegationSet
from safedenoiser.prompts import PromptRow

if TYPE_CHECKING:
    from safedenoiser.core.safe_denoiser import SafeDenoiser

RUN_FORMAT = 1
RUN_FILE = "run.json"
MANIFEST_FILE = "manifest.jsonl"
IMAGE_DIR = "images"
IMAGE_NAME = re.compile(r"^\d{6,}-s\d+-[0-9a-f]{8}\.png(\.tmp)?$")
DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 7.5
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ImageJob:
    """One image to make: what conditions it and the seed of its noise."""

    index: int
    prompt: str | None
    label: int | None
    seed: int
    guidance: float | None
    source_line: int | None = None  # the prompt's line in its file

    @property
    def file(self) -> str:
        """The image's path relative to the output folder: index, seed and a short content hash."""
        key = json.dumps([self.prompt, self.label, self.seed, self.guidance])
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        return f"{IMAGE_DIR}/{self.index:06d}-s{self.seed}-{digest}.png"


OPTIONAL_FIELDS = ("source_line", "negated_class", "beta_max", "steps_corrected",
                   "safety_checker_blacked_out")  # left out where None


@dataclass
class ManifestRecord:
    """One line of ``manifest.jsonl``."""

    file: str
    index: int
    prompt: str | None
    label: int | None
    seed: int
    guidance: float | None
    steps: int
    method: str  # "vanilla" or "safe"
    model: str
    negation: str | None  # the negation set's fingerprint
    preset: str | None
    source_line: int | None = None
    negated_class: int | str | None = None
    beta_max: float | None = None  # safe runs: the highest beta along the image's trajectory
    steps_corrected: int | None = None  # safe runs: at how many steps the correction changed it
    safety_checker_blacked_out: bool | None = None  # True where the pipeline's safety checker returned black

    def to_json(self) -> str:
        record = {key: value for key, value in asdict(self).items()
                  if value is not None or key not in OPTIONAL_FIELDS}
        return json.dumps(record, ensure_ascii=False)


@dataclass
class RunResult:
    """What `generate` did: ``generated`` new images, ``skipped`` already there, ``total`` planned."""

    out_dir: Path
    total: int
    generated: int
    skipped: int
    replaced_scheduler: str | None = None  # the model's, which would drop the paper rule's re-noising

    @property
    def manifest(self) -> Path:
        return self.out_dir / MANIFEST_FILE


# --------------------------------------------------------------------------- planning
def plan_jobs(kind: str, *, prompts: Sequence[PromptRow] | None = None, label: int | None = None,
              n: int | None = None, n_per_prompt: int | None = None, seed: int = 0,
              guidance: float | None = None) -> list[ImageJob]:
    """The images of a run, in order.

    Text models: every prompt ``n_per_prompt`` times (prompt-major), or ``n`` images cycling
    through the prompts (``n`` below the number of prompts takes the first ``n``). Class and
    unconditional models: ``n`` images of ``label``. Image ``i`` has seed ``seed + i``, or its
    row's ``evaluation_seed + k`` for its ``k``-th repeat; its guidance is the row's
    ``evaluation_guidance`` when present, else ``guidance``.
    """
    _check_counts(n, n_per_prompt, seed)
    if kind != "text":
        count = n if n is not None else (n_per_prompt if n_per_prompt is not None else 1)
        return [ImageJob(i, None, label, seed + i, guidance) for i in range(count)]
    assert prompts, "a text model needs prompts"
    if n is None:
        repeats = n_per_prompt or 1
        pairs = [(row, k) for row in prompts for k in range(repeats)]
    else:
        pairs = [(prompts[i % len(prompts)], i // len(prompts)) for i in range(n)]
    return [ImageJob(i, row.prompt, None,
                     (row.seed + k) if row.seed is not None else seed + i,
                     row.guidance if row.guidance is not None else guidance, row.line)
            for i, (row, k) in enumerate(pairs)]


def _check_counts(n: int | None, n_per_prompt: int | None, seed: int) -> None:
    if n is not None and n_per_prompt is not None:
        raise SafeDenoiserError("give --n or --n-per-prompt, not both")
    for name, value in (("--n", n), ("--n-per-prompt", n_per_prompt)):
        if value is not None and value < 1:
            raise SafeDenoiserError(f"{name} must be at least 1 (got {value})")
    if seed < 0:
        raise SafeDenoiserError(f"--seed must be non-negative (got {seed})")


def pipeline_kind(pipe) -> str:
    """``"text"``, ``"class"`` or ``"unconditional"``, from the pipeline's call signature."""
    params = inspect.signature(pipe.__call__).parameters
    if "class_labels" in params:
        return "class"
    if "prompt" in params:
        return "text"
    return "unconditional"


def parse_label(value: str | int | None) -> int | None:
    """``"3"`` -> 3; ``"none"`` (unconditional) -> None."""
    if value is None or isinstance(value, int):
        return value
    if value.strip().lower() in ("none", "null", "uncond", "unconditional"):
        return None
    try:
        return int(value)
    except ValueError:
        raise SafeDenoiserError(f"--label must be a class index or 'none' (got {value!r})") from None


# --------------------------------------------------------------------------- the run
def generate(out_dir: str | Path, *, model: str, pipe=None, prompts: Sequence[PromptRow | str] | None = None,
             label: int | str | None = None, n: int | None = None, n_per_prompt: int | None = None,
             seed: int = 0, steps: int | None = None, guidance: float | None = None,
             negative_prompt: str | None = None, scheduler: str | None = None, safety_checker: bool = True,
             negation: NegationSet | str | Path | None = None, preset: str | None = None,
             latch: bool | None = None, features: str | None = None, boundary_power: float | None = None,
             label_ratio: float | None = None, min_weight: float | None = None, batch_size: int = 4,
             device: str | None = None, dtype: str = "float32", overwrite: bool = False,
             progress: bool = True) -> RunResult:
    """Generate a run's images into ``out_dir`` (see the module docstring), resuming what is there.

    ``model`` is a bundled name, a local diffusers folder or a hub id; pass ``pipe`` to reuse a loaded
    pipeline (``model`` then only names it in the records). ``label`` is for class models: a class index, or
    ``"none"`` for unconditional samples. ``negative_prompt`` (text models) goes with every prompt;
    ``scheduler`` (a diffusers scheduler class name, `scheduler_class`) replaces the loaded pipeline's, from
    its config (with ``pipe``, set ``pipe.scheduler`` yourself). Images the pipeline's safety checker blacks
    out are marked in the manifest; ``safety_checker=False`` removes the checker from the loaded pipeline
    (with ``pipe``, set ``pipe.safety_checker = None``). ``negation`` (a set or its file) makes the run safe,
    with ``preset`` selecting the paper's rule (sampled with `PAPER_SCHEDULER` where the loaded scheduler
    would drop its re-noising, ``RunResult.replaced_scheduler``) and ``latch`` holding each image's highest
    beta (`SafeDenoiser`'s ``latch``; ``None``: ``"auto"``, on under guidance) and ``features`` where a set
    with reference images measures closeness (`SafeDenoiser`'s; ``None``: ``"auto"``), and ``boundary_power``
    and ``label_ratio`` that set's `LocalPosterior` ones and ``min_weight`` `SafeDenoiser`'s (``None``: their
    defaults). Raises `SafeDenoiserError` for bad input, a different run in ``out_dir`` (unless ``overwrite``)
    or a negation set that does not fit the model.
    """
    out_dir = Path(out_dir)
    rows = None if prompts is None else [p if isinstance(p, PromptRow) else PromptRow(p, i + 1)
                                         for i, p in enumerate(prompts)]
    if rows is not None and not rows:
        raise SafeDenoiserError("no prompts given")
    _check_counts(n, n_per_prompt, seed)
    if batch_size < 1:
        raise SafeDenoiserError(f"--batch-size must be at least 1 (got {batch_size})")
    if steps is not None and steps < 1:
        raise SafeDenoiserError(f"--steps must be at least 1 (got {steps})")
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise SafeDenoiserError(f"--guidance must be a finite number >= 0 (got {guidance}; 1 turns guidance off)")
    if preset is not None and negation is None:
        raise SafeDenoiserError("--preset selects how a negation set is used; give --negation FILE too")
    set_flags = [flag for given, flag in ((latch is not None, "--latch" if latch else "--no-latch"),
                                          (features is not None, f"--features {features}"),
                                          (boundary_power is not None, "--boundary-power"),
                                          (label_ratio is not None, "--label-ratio"),
                                          (min_weight is not None, "--min-weight")) if given]
    if set_flags and negation is None:
        raise SafeDenoiserError(f"{set_flags[0]} changes how a negation set is used; give --negation FILE too")
    latch = "auto" if latch is None else latch
    from safedenoiser.core.safe_denoiser import DEFAULT_MIN_WEIGHT, FEATURE_SPACES, SafeDenoiser
    from safedenoiser.integrations.diffusers import drops_renoising, scheduler_prediction

    if negative_prompt is not None and not negative_prompt.strip():
        raise SafeDenoiserError("--negative-prompt is empty")
    if scheduler is not None and pipe is not None:
        raise SafeDenoiserError("scheduler= replaces the scheduler of the pipeline generate loads; with pipe=, set "
                                "pipe.scheduler yourself")
    if not safety_checker and pipe is not None:
        raise SafeDenoiserError("safety_checker=False removes the checker of the pipeline generate loads; with "
                                "pipe=, set pipe.safety_checker = None yourself")
    scheduler_cls = scheduler_class(scheduler, safe=negation is not None) if scheduler is not None else None

    if features is not None and features not in FEATURE_SPACES:
        raise SafeDenoiserError(f"--features must be 'auto', 'unet' or 'latent' (got {features!r})")
    features = features or "auto"
    label_given, label = label is not None, parse_label(label)
    neg = NegationSet.load(negation) if isinstance(negation, (str, Path)) else negation
    safe = None  # built before the model loads, so that flags that do not go together fail at once
    if neg is not None:
        beta = ("auto" if boundary_power is None and label_ratio is None
                else _local_estimator(neg, preset, boundary_power, label_ratio))
        safe = SafeDenoiser(neg, preset=preset, beta=beta, latch=latch, features=features,
                            min_weight=DEFAULT_MIN_WEIGHT if min_weight is None else min_weight)
    paper_rule = safe is not None and safe.paper is not None
    if paper_rule and scheduler_cls is not None and drops_renoising(scheduler_cls):
        raise SafeDenoiserError(f"the paper rule (--preset) re-noises the sample, which {scheduler_cls.__name__} "
                                f"would drop at some steps: give another --scheduler, e.g. {PAPER_SCHEDULER} (the "
                                "authors' sampler)")
    device = resolve_device(device)
    if dtype not in DTYPES:
        raise SafeDenoiserError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    model_name = model_id(model)
    replaced = None
    if pipe is None:
        pipe = load_pipeline(model, device, DTYPES[dtype])
        pipe.set_progress_bar_config(disable=True)  # ours counts images
        if (paper_rule and scheduler_cls is None and drops_renoising(type(pipe.scheduler))  # SD v1.4's PNDM
                and scheduler_prediction(pipe.scheduler) != "flow"):  # DDPM has no flow schedule: attach refuses
            replaced, scheduler_cls = type(pipe.scheduler).__name__, scheduler_class(PAPER_SCHEDULER)
        if scheduler_cls is not None:
            pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config)
        if not safety_checker and getattr(pipe, "safety_checker", None) is not None:
            pipe.safety_checker = None
    kind = pipeline_kind(pipe)
    if negative_prompt is not None and not (kind == "text" and _takes(pipe, "negative_prompt")):
        raise SafeDenoiserError(f"{model} takes no negative prompt; --negative-prompt is for text-to-image models "
                                "that guide with one")
    if kind == "class" and not label_given and rows is None:
        raise SafeDenoiserError(f"{model} is a class-conditional model: give --label K (a class index) or "
                                "--label none (unconditional)")
    _check_conditioning(kind, rows, label, pipe, model)
    steps = steps if steps is not None else _model_default(model, "steps", DEFAULT_STEPS)
    default_guidance = guidance if guidance is not None else _model_default(model, "guidance", DEFAULT_GUIDANCE)
    jobs = plan_jobs(kind, prompts=rows, label=label, n=n, n_per_prompt=n_per_prompt, seed=seed,
                     guidance=default_guidance if _takes(pipe, "guidance_scale") else None)
    if negative_prompt is not None and all(job.guidance is not None and job.guidance <= 1 for job in jobs):
        raise SafeDenoiserError("--negative-prompt acts only through classifier-free guidance, which is off at "
                                "guidance 1 or less: give --guidance above 1")

    method = "vanilla" if neg is None else "safe"
    negated_class = _negated_class(neg)
    settings = {
        "format": RUN_FORMAT, "model": model_name, "kind": kind, "method": method,
        "negation": neg.fingerprint if neg is not None else None, "preset": preset,
        "negated_class": negated_class, "steps": steps,
        "guidance": default_guidance if kind != "unconditional" else None,
        "seed": seed, "label": label, "n_per_prompt": n_per_prompt or (1 if n is None else None),
        "prompts_sha256": _prompts_digest(rows), "dtype": dtype,
        # safe runs record them: ones from before "auto" (keys absent) are not resumed with other settings
        **({"latch": latch, "features": features} if neg is not None else {}),
        # recorded where given, so that runs from before these options (at their defaults) still resume
        **{key: value for key, value in (("boundary_power", boundary_power), ("label_ratio", label_ratio),
                                         ("min_weight", min_weight),
                                         ("negative_prompt", negative_prompt),
                                         ("scheduler", scheduler_cls and scheduler_cls.__name__),
                                         ("safety_checker", None if safety_checker else False))
           if value is not None},
    }
    if safe is not None:
        _check_negation_fits(safe, pipe)
    _prepare_dir(out_dir, settings, overwrite)
    done = _recover(out_dir)
    pending = [job for job in jobs if job.file not in done]
    result = RunResult(out_dir, total=len(jobs), generated=0, skipped=len(jobs) - len(pending),
                       replaced_scheduler=replaced)
    if not pending:
        return result

    _write_json_atomic(out_dir / RUN_FILE, {"settings": settings, "recorded": {
        "model_arg": str(model), "device": device, "batch_size": batch_size,
        "scheduler": type(pipe.scheduler).__name__, "argv": sys.argv}})

    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), initial=result.skipped, unit="img", desc=method, disable=not progress)
    with open(out_dir / MANIFEST_FILE, "a", encoding="utf-8") as manifest:
        for batch in _batches(pending, batch_size):
            images, blacked_out = _sample(pipe, kind, batch, steps, safe, negative_prompt)
            for row, (job, image) in enumerate(zip(batch, images)):
                _save_png_atomic(image, out_dir / job.file)
                record = ManifestRecord(job.file, job.index, job.prompt, job.label, job.seed, job.guidance, steps,
                                        method, model_name, settings["negation"], preset, job.source_line,
                                        negated_class, *_what_safe_did(safe, row),
                                        safety_checker_blacked_out=blacked_out[row] or None)
                manifest.write(record.to_json() + "\n")
                manifest.flush()
                os.fsync(manifest.fileno())
                result.generated += 1
                bar.update(1)
    bar.close()
    return result


def read_manifest(out_dir: str | Path) -> list[dict[str, Any]]:
    """The finished images of a run: manifest lines whose image exists, in the order written."""
    out_dir = Path(out_dir)
    records, _ = _valid_records(out_dir)
    return records


# --------------------------------------------------------------------------- the model
def resolve_device(device: str | None) -> str:
    """``device`` checked (``cpu``, ``cuda`` or ``cuda:N``, the latter only with a GPU), or by default
    ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise SafeDenoiserError(f"--device must be cpu or cuda (got {device!r})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SafeDenoiserError(f"--device {device}: torch sees no CUDA GPU on this machine; use --device cpu")
    return device


def load_pipeline(model: str, device: str, dtype: torch.dtype):
    """Load ``model`` (bundled name, local diffusers folder or hub id); unknown names exit cleanly."""
    from safedenoiser.models.registry import load_pipeline as registry_load

    try:
        return registry_load(model, device=device, dtype=dtype)
    except SafeDenoiserError:
        raise
    except Exception as err:  # diffusers / huggingface_hub raise many types for a bad name or folder
        raise SafeDenoiserError(f"cannot load model {model!r}: {type(err).__name__}: {err}; give a bundled "
                                "model name, a local diffusers folder or a hub id") from err


def scheduler_class(name: str, safe: bool = False) -> type:
    """The diffusers scheduler class called ``name`` (case and the ``Scheduler`` suffix optional:
    ``dpmsolvermultistep``); with ``safe``, only one `attach` supports. Refuses one whose package is missing."""
    import importlib.util

    import diffusers
    from diffusers.utils import DummyObject

    from safedenoiser.integrations.diffusers import SUPPORTED, is_one_of

    def key(text: str) -> str:
        return text.lower().removesuffix("scheduler")

    matches = [attr for attr in dir(diffusers) if attr.endswith("Scheduler") and key(attr) == key(name)]
    if not matches:
        raise SafeDenoiserError(f"unknown scheduler {name!r}: give a diffusers scheduler class, e.g. "
                                f"DPMSolverMultistepScheduler; the safe denoiser runs with {', '.join(SUPPORTED)}")
    cls = getattr(diffusers, matches[0])
    if isinstance(cls, DummyObject):  # diffusers' stand-in for a class whose package is not installed
        missing = [package for package in cls._backends if importlib.util.find_spec(package) is None]
        raise SafeDenoiserError(f"{cls.__name__} needs {', '.join(missing)}, which is not installed: "
                                f"pip install {' '.join(missing)}")
    if safe and not is_one_of(cls, SUPPORTED):
        raise SafeDenoiserError(f"the safe denoiser cannot tell the noise level of {cls.__name__}'s samples; use "
                                f"one of {', '.join(SUPPORTED)}")
    return cls


def _model_default(model: str, key: str, fallback):
    """The registry's recommended setting for ``model`` (``steps`` or ``guidance``), else ``fallback``."""
    from safedenoiser.models.registry import sampling_defaults

    name = {"steps": "num_inference_steps", "guidance": "guidance_scale"}[key]
    value = sampling_defaults(model).get(name)
    return fallback if value is None else value


def model_id(model: str) -> str:
    """The model as recorded: an existing local folder as an absolute path, anything else as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else str(model)


def _takes(pipe, name: str) -> bool:
    return name in inspect.signature(pipe.__call__).parameters


def num_classes(pipe) -> int | None:
    """How many classes a class-conditional pipeline has (its null class is the next index)."""
    for name in ("num_classes", "null_class"):
        value = getattr(pipe, name, None)
        if isinstance(value, int):
            return value
    return None


def _check_conditioning(kind: str, rows, label, pipe, model: str) -> None:
    if kind == "text":
        if rows is None:
            raise SafeDenoiserError(f"{model} is a text-to-image model: give --prompt P or --prompts FILE")
        if label is not None:
            raise SafeDenoiserError(f"{model} is a text-to-image model; --label applies to class-conditional models")
        return
    if rows is not None:
        raise SafeDenoiserError(f"{model} is a {kind} model and takes no prompts; "
                                + ("use --label K (or --label none) and --n N" if kind == "class" else "use --n N"))
    if kind == "unconditional" and label is not None:
        raise SafeDenoiserError(f"{model} is an unconditional model; it takes no --label")
    if label is not None:
        classes = num_classes(pipe)
        if label < 0 or (classes is not None and label >= classes):
            top = f" 0..{classes - 1}" if classes is not None else " non-negative"
            raise SafeDenoiserError(f"--label {label} is not a class of {model}; use{top} or 'none'")


def _check_negation_fits(safe, pipe) -> None:
    """Refuse, before anything is written, a negation set from another space than ``pipe``'s samples."""
    from safedenoiser.integrations.diffusers import latent_channels
    from safedenoiser.integrations.encode import pipeline_image_size

    with safe.attach(pipe):  # refuses an unsupported scheduler, other channels, another VAE
        pass
    channels = latent_channels(pipe)
    try:
        size = pipeline_image_size(pipe)
    except SafeDenoiserError:
        return  # the size is known only once sampling starts; attach checks it at the first step
    if channels is not None:
        side = size // int(getattr(pipe, "vae_scale_factor", 1)) if getattr(pipe, "vae", None) is not None else size
        safe.negation.check_compatible((channels, side, side))


def _local_estimator(neg: NegationSet, preset: str | None, boundary_power: float | None,
                     label_ratio: float | None) -> LocalPosterior:
    """The set's local estimator with another ``boundary_power`` or ``label_ratio`` (``None``: the default);
    refused where the run does not use it."""
    if preset is not None or neg.reference is None:
        flag = "--boundary-power weighs" if boundary_power is not None else "--label-ratio labels"
        raise SafeDenoiserError(f"{flag} the reference images of the local estimator: give a set built with "
                                "--reference-images, without --preset (the paper rule has none)")
    given = {"boundary_power": boundary_power, "label_ratio": label_ratio}
    return LocalPosterior(neg, neg.reference, **{key: value for key, value in given.items() if value is not None})


def _negated_class(neg: NegationSet | None) -> int | str | None:
    if neg is None or neg.metadata.get("negated_class") in (None, ""):
        return None
    value = neg.metadata["negated_class"]
    return int(value) if str(value).lstrip("-").isdigit() else value


def _prompts_digest(rows: Sequence[PromptRow] | None) -> str | None:
    if rows is None:
        return None
    key = json.dumps([[r.prompt, r.seed, r.guidance] for r in rows])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _batches(jobs: list[ImageJob], size: int) -> Iterable[list[ImageJob]]:
    """Consecutive jobs, at most ``size`` at a time, one guidance scale per batch."""
    batch: list[ImageJob] = []
    for job in jobs:
        if batch and (len(batch) == size or job.guidance != batch[0].guidance):
            yield batch
            batch = []
        batch.append(job)
    if batch:
        yield batch


def _what_safe_did(safe: SafeDenoiser | None, row: int) -> tuple[float | None, int | None]:
    """``(beta_max, steps_corrected)`` of the last batch's image ``row`` (``None`` for vanilla runs)."""
    if safe is None or safe.samples is None:
        return None, None
    return round(float(safe.samples.beta_max[row]), 4), int(safe.samples.steps_corrected[row])


def _sample(pipe, kind: str, batch: list[ImageJob], steps: int, safe,
            negative_prompt: str | None = None) -> tuple[list, list[bool]]:
    """Run the pipeline on one batch, each image with its own generator (so batching changes nothing): the
    images, and for each whether the pipeline's safety checker blacked it out."""
    kwargs: dict[str, Any] = {
        "num_inference_steps": steps,
        "generator": [torch.Generator("cpu").manual_seed(job.seed) for job in batch],
        "output_type": "pil",
    }
    if hasattr(pipe.scheduler, "noise_sampler_seed"):  # DPM-Solver++ SDE draws noise from Brownian trees, not the
        pipe.scheduler.noise_sampler_seed = [job.seed for job in batch]  # generator: one tree per image
    if batch[0].guidance is not None and _takes(pipe, "guidance_scale"):
        kwargs["guidance_scale"] = batch[0].guidance
    if kind == "text":
        kwargs["prompt"] = [job.prompt for job in batch]
        if negative_prompt is not None:
            kwargs["negative_prompt"] = [negative_prompt] * len(batch)
    elif kind == "class":
        kwargs["class_labels"] = [job.label for job in batch]
    else:
        kwargs["batch_size"] = len(batch)
    if safe is None:
        output = pipe(**kwargs)
    else:
        with safe.attach(pipe):
            output = pipe(**kwargs)
    images = output.images if hasattr(output, "images") else output[0]
    if len(images) != len(batch):
        raise RuntimeError(f"the pipeline returned {len(images)} images for a batch of {len(batch)}")
    flagged = getattr(output, "nsfw_content_detected", None)  # None where the pipeline has no checker
    return images, [bool(f) for f in flagged] if flagged is not None else [False] * len(images)


# --------------------------------------------------------------------------- the folder
def _prepare_dir(out_dir: Path, settings: dict, overwrite: bool) -> None:
    """Refuse a folder that holds a different run (unless ``overwrite``, which clears our files)."""
    run_file, images = out_dir / RUN_FILE, out_dir / IMAGE_DIR
    if out_dir.exists() and not out_dir.is_dir():
        raise SafeDenoiserError(f"--out {out_dir} is a file, not a folder")
    problem = None
    if run_file.exists():
        try:
            stored = json.loads(run_file.read_text(encoding="utf-8"))
            previous = stored["settings"]
            previous.setdefault("dtype", stored.get("recorded", {}).get("dtype"))  # runs from before it was a setting
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            problem = f"{run_file} is unreadable"
        else:
            diff = [f"{k}: {previous.get(k)!r} there, {settings.get(k)!r} now"
                    for k in sorted(set(previous) | set(settings)) if previous.get(k) != settings.get(k)]
            if diff:
                problem = "it holds a different run (" + "; ".join(diff) + ")"
    elif (out_dir / MANIFEST_FILE).exists() or (images.is_dir() and any(images.iterdir())):
        problem = f"it holds images but no {RUN_FILE}, so they may be from a different run"
    if problem is not None and not overwrite:
        raise SafeDenoiserError(f"{out_dir}: {problem}; choose another --out, or pass --overwrite to replace it")
    if problem is not None:
        for path in (run_file, out_dir / MANIFEST_FILE):
            path.unlink(missing_ok=True)
        if images.is_dir():
            for path in images.iterdir():
                if IMAGE_NAME.match(path.name):
                    path.unlink()
    images.mkdir(parents=True, exist_ok=True)


def _valid_records(out_dir: Path) -> tuple[list[dict[str, Any]], bool]:
    """Manifest lines that parse and whose image exists; and whether the file needs rewriting."""
    path = out_dir / MANIFEST_FILE
    if not path.exists():
        return [], False
    raw = path.read_bytes()
    dirty = bool(raw) and not raw.endswith(b"\n")
    records, seen = [], set()
    for line in raw.decode("utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            file = record["file"]
        except (ValueError, KeyError, TypeError):
            dirty = True
            continue
        if not isinstance(file, str) or file in seen or not IMAGE_NAME.match(Path(file).name) \
                or not (out_dir / file).is_file():
            dirty = True
            continue
        seen.add(file)
        records.append(record)
    return records, dirty


def _recover(out_dir: Path) -> set[str]:
    """Make the folder consistent after a kill; return the files already finished."""
    for tmp in (out_dir / IMAGE_DIR).glob("*.tmp"):
        tmp.unlink(missing_ok=True)
    records, dirty = _valid_records(out_dir)
    if dirty:
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        _write_text_atomic(out_dir / MANIFEST_FILE, text)
    return {r["file"] for r in records}


def _fsync_write(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _save_png_atomic(image, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    _fsync_write(tmp, lambda f: image.save(f, format="PNG"))
    os.replace(tmp, path)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    _fsync_write(tmp, lambda f: f.write(text.encode("utf-8")))
    os.replace(tmp, path)


def _write_json_atomic(path: Path, data: dict) -> None:
    _write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
