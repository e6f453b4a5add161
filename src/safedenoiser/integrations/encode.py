"""Negation sets from images, through a pipeline's own VAE (DESIGN §2.1).

    latent = (E(image).mean - shift_factor) * scaling_factor      (shift only where the VAE has one)

Pixel-space pipelines (DDPM, DDIM: no VAE) denoise the pixels themselves, in [-1, 1].
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from torch import Tensor

from safedenoiser.errors import SafeDenoiserError

log = logging.getLogger(__name__)

PIXELS = "pixels"  # the encoder fingerprint of pixel-space pipelines
FINGERPRINT_ELEMENTS = 4096


def vae_fingerprint(pipe) -> str:
    """A short hash that tells VAEs apart: their config and the sign bits of a few weight tensors.

    Sign bits survive casting to float16 or bfloat16, so one VAE has one fingerprint whatever
    precision it is loaded in; a different or fine-tuned VAE flips some. ``"pixels"`` without a VAE.
    """
    vae = getattr(pipe, "vae", None)
    if vae is None:
        return PIXELS
    digest = hashlib.sha256()
    config = {k: v for k, v in dict(getattr(vae, "config", {})).items() if not k.startswith("_")}
    digest.update(type(vae).__name__.encode())
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    encoder = getattr(vae, "encoder", vae)
    named = sorted((name, p) for name, p in encoder.named_parameters())
    if named:
        picks = {0, len(named) // 2, len(named) - 1}
        for i in sorted(picks):
            name, p = named[i]
            flat = p.detach().reshape(-1)[:FINGERPRINT_ELEMENTS]
            digest.update(f"{name}{tuple(p.shape)}".encode())
            digest.update(np.packbits(flat.signbit().cpu().numpy()).tobytes())
    return digest.hexdigest()[:16]


def pipeline_image_size(pipe) -> int:
    """Side of the images the pipeline generates by default (pixels)."""
    model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    size = getattr(getattr(model, "config", None), "sample_size", None)
    if isinstance(size, (tuple, list)):
        size = size[0]
    if size is None:
        size = getattr(pipe, "default_sample_size", None)
    if size is None:
        raise SafeDenoiserError(f"cannot tell the image size of {type(pipe).__name__}; pass image_size=...")
    if getattr(pipe, "vae", None) is not None:
        size = int(size) * int(getattr(pipe, "vae_scale_factor", 8))
    return int(size)


def _channels(pipe) -> int:
    vae = getattr(pipe, "vae", None)
    if vae is not None:
        return int(vae.config.in_channels)
    model = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    return int(model.config.in_channels)


def files_under(source: str | Path) -> list[Path]:
    """The files under a folder (recursively, sorted, hidden ones left out), or the one file given."""
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
    return [path]


def readable_images(paths: Iterable[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The ``paths`` that PIL can decode as images, and the others with the reason (``not an image`` or
    ``unreadable (...)``: a truncated JPEG has a valid header, so the pixels are decoded too)."""
    from PIL import Image, UnidentifiedImageError

    good, bad = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
            good.append(path)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            bad.append((path, "not an image" if isinstance(err, UnidentifiedImageError) else f"unreadable ({err})"))
    return good, bad


def _pil_to_tensor(image, size: int, channels: int) -> Tensor:
    """Resize the shorter side to ``size``, centre-crop, to ``[C, size, size]`` in [-1, 1]."""
    from PIL import Image

    image = image.convert("L" if channels == 1 else "RGB")
    w, h = image.size
    scale = size / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.float32).reshape(size, size, -1) / 127.5 - 1.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_images(images, size: int, channels: int) -> tuple[Tensor, list[str] | None]:
    """Images as ``[N, C, size, size]`` in [-1, 1] and their sha256 (None for a tensor); unreadable files skipped."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(images, Tensor):
        if images.ndim != 4 or len(images) == 0 or images.shape[1] != channels:
            raise SafeDenoiserError(f"an image tensor must be [N, {channels}, H, W] in [-1, 1] with N >= 1 (the "
                                    f"model's VAE takes {channels} channels), got shape {tuple(images.shape)}")
        x = images.float()
        if x.shape[-2:] != (size, size):
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True).clamp(-1, 1)
        return x, None
    if isinstance(images, (str, Path)) or isinstance(images, Image.Image):
        images = [images]
    tensors, hashes, skipped = [], [], []
    for item in _expand(images):
        if isinstance(item, Image.Image):
            tensors.append(_pil_to_tensor(item, size, channels))
            hashes.append(hashlib.sha256(item.tobytes()).hexdigest())
            continue
        try:
            data = Path(item).read_bytes()
            with Image.open(Path(item)) as image:
                image.load()
                tensors.append(_pil_to_tensor(image, size, channels))
            hashes.append(hashlib.sha256(data).hexdigest())
        except (OSError, UnidentifiedImageError, ValueError) as err:
            skipped.append(f"{item} ({type(err).__name__})")
    if skipped:
        log.warning("skipped %d unreadable or non-image file(s): %s", len(skipped), ", ".join(skipped))
    if not tensors:
        raise SafeDenoiserError("no readable image among the inputs" +
                                (f" (skipped: {', '.join(skipped)})" if skipped else "") +
                                "; give image files (PNG, JPEG, ...), a folder of them, PIL images or a tensor")
    return torch.stack(tensors), hashes


def _expand(images: Iterable) -> Iterable:
    for item in images:
        if isinstance(item, (str, Path)) and Path(item).is_dir():
            yield from files_under(item)
        else:
            yield item


@torch.no_grad()
def encode_images(pipe, images, batch_size: int = 8, progress: bool = True, *,
                  image_size: int | None = None) -> tuple[Tensor, dict[str, str]]:
    """Encode images into the space ``pipe`` denoises: ``(latents [M, C, H, W] float32 CPU, metadata)``.

    ``images``: paths, a folder, PIL images, or a tensor in [-1, 1]. Latents are the VAE's latent
    distribution mean, ``(mean - shift_factor) * scaling_factor``; pixels for pixel-space pipelines.
    """
    from tqdm.auto import tqdm

    size = image_size or pipeline_image_size(pipe)
    pixels, hashes = load_images(images, size, _channels(pipe))
    vae = getattr(pipe, "vae", None)
    scaling = float(getattr(vae.config, "scaling_factor", 1.0) or 1.0) if vae is not None else 1.0
    shift = getattr(vae.config, "shift_factor", None) if vae is not None else None
    shift = float(shift) if shift is not None else 0.0
    out = []
    for start in tqdm(range(0, len(pixels), batch_size), desc="encoding negation set", disable=not progress,
                      unit="batch"):
        batch = pixels[start:start + batch_size]
        if vae is None:
            out.append(batch)
            continue
        param = next(vae.parameters())
        encoded = vae.encode(batch.to(device=param.device, dtype=param.dtype))
        if hasattr(encoded, "latent_dist"):
            mean = encoded.latent_dist.mean
        elif isinstance(encoded, tuple) and hasattr(encoded[0], "mean"):
            mean = encoded[0].mean
        else:
            mean = getattr(encoded, "latents", encoded)
        out.append(((mean.float() - shift) * scaling).cpu())
    latents = torch.cat(out)
    metadata = {"encoder": vae_fingerprint(pipe), "scaling_factor": repr(scaling), "shift_factor": repr(shift),
                "image_size": str(size), "sources_sha256": "tensor" if hashes is None else json.dumps(hashes)}
    model = getattr(pipe, "name_or_path", None) or getattr(getattr(pipe, "config", None), "_name_or_path", None)
    if model:
        metadata["model"] = str(model)
    return latents, metadata
