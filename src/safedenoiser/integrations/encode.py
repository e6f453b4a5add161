"""Negation sets from images, through a pipeline's own VAE (DESIGN §2.1).

    latent = (E(image).mean - shift_factor) * scaling_factor      (shift only where the VAE has one)
    latent = (E(image).mean - latents_mean) * scaling_factor / latents_std
                                                (per channel, where the VAE's config has them: SDXL's pipelines)

Pixel-space pipelines (DDPM, DDIM: no VAE) denoise the pixels themselves, in [-1, 1].
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

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
    """The ``paths`` that PIL can decode as images, and the others with the reason (``not an image``,
    ``too large to decode`` (PIL's decompression-bomb limit) or ``unreadable (...)``: a truncated JPEG has
    a valid header, so the pixels are decoded too)."""
    from PIL import Image, UnidentifiedImageError

    good, bad = [], []
    for path in paths:
        try:
            with Image.open(path) as image:
                image.load()
            good.append(path)
        except Image.DecompressionBombError as err:
            bad.append((path, f"too large to decode ({err}); downscale it"))
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            bad.append((path, "not an image" if isinstance(err, UnidentifiedImageError) else f"unreadable ({err})"))
    return good, bad


def _pil_to_tensor(image, size: int, channels: int) -> Tensor:
    """Upright as the camera's EXIF orientation says, resize the shorter side to ``size``, centre-crop, to
    ``[C, size, size]`` in [-1, 1]."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):  # 16-bit grey: PIL's convert would clip every value above 255 to white
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).round().clip(0, 255).astype(np.uint8))
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
    if isinstance(images, Tensor):
        return _tensor_pixels(images, size, channels), None
    hashes: list[str] = []
    skipped: list[str] = []
    tensors = list(_decoded(_image_items(images), size, channels, hashes, skipped))
    _check_readable(len(tensors), skipped)
    return torch.stack(tensors), hashes


def _tensor_pixels(images: Tensor, size: int, channels: int) -> Tensor:
    """A user's image tensor checked and resized to ``size``."""
    if images.ndim != 4 or len(images) == 0 or images.shape[1] != channels:
        raise SafeDenoiserError(f"an image tensor must be [N, {channels}, H, W] in [-1, 1] with N >= 1 (the "
                                f"model's VAE takes {channels} channels), got shape {tuple(images.shape)}")
    x = images.float()
    if x.shape[-2:] != (size, size):
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True).clamp(-1, 1)
    return x


def _image_items(images) -> list:
    """The paths and PIL images given: one, a folder (its files), or an iterable of them."""
    from PIL import Image

    if isinstance(images, (str, Path)) or isinstance(images, Image.Image):
        images = [images]
    return list(_expand(images))


def _expand(images: Iterable) -> Iterable:
    for item in images:
        if isinstance(item, (str, Path)) and Path(item).is_dir():
            yield from files_under(item)
        else:
            yield item


def _decoded(items: Iterable, size: int, channels: int, hashes: list[str], skipped: list[str]) -> Iterator[Tensor]:
    """Each readable item as ``[C, size, size]`` in [-1, 1], one at a time; its sha256 goes to ``hashes``, an
    unreadable file's name and error to ``skipped``."""
    from PIL import Image, UnidentifiedImageError

    for item in items:
        if isinstance(item, Image.Image):
            hashes.append(hashlib.sha256(item.tobytes()).hexdigest())
            yield _pil_to_tensor(item, size, channels)
            continue
        try:
            data = Path(item).read_bytes()
            with Image.open(Path(item)) as image:
                image.load()
                pixels = _pil_to_tensor(image, size, channels)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
            skipped.append(f"{item} ({type(err).__name__})")
            continue
        hashes.append(hashlib.sha256(data).hexdigest())
        yield pixels


def _batched(tensors: Iterable[Tensor], batch_size: int) -> Iterator[Tensor]:
    """``batch_size`` tensors at a time, stacked (the last batch may be smaller)."""
    batch = []
    for tensor in tensors:
        batch.append(tensor)
        if len(batch) == batch_size:
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)


def _check_readable(n_read: int, skipped: list[str]) -> None:
    """Log the files skipped; refuse inputs of which none could be read."""
    if skipped:
        log.warning("skipped %d unreadable or non-image file(s): %s", len(skipped), ", ".join(skipped))
    if not n_read:
        raise SafeDenoiserError("no readable image among the inputs" +
                                (f" (skipped: {', '.join(skipped)})" if skipped else "") +
                                "; give image files (PNG, JPEG, ...), a folder of them, PIL images or a tensor")


def _latent_space(config) -> dict:
    """The VAE config's map to the pipeline's latents: ``scaling_factor`` and ``shift_factor`` (SD3,
    FLUX), or per-channel ``latents_mean`` and ``latents_std`` where it has them (SDXL's pipelines use
    them instead of the shift)."""
    space = {"scaling_factor": float(getattr(config, "scaling_factor", None) or 1.0),
             "shift_factor": float(getattr(config, "shift_factor", None) or 0.0)}
    if getattr(config, "latents_mean", None) is not None and getattr(config, "latents_std", None) is not None:
        space |= {"latents_mean": [float(v) for v in config.latents_mean],
                  "latents_std": [float(v) for v in config.latents_std]}
    return space


@contextmanager
def _encoding_precision(vae) -> Iterator[None]:
    """float32 for a float16 VAE whose config says ``force_upcast``, its own dtype back afterwards."""
    upcast = (vae is not None and next(vae.parameters()).dtype == torch.float16
              and getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        yield
    finally:
        if upcast:
            vae.to(torch.float16)


@torch.no_grad()
def encode_images(pipe, images, batch_size: int = 8, progress: bool = True, *,
                  image_size: int | None = None) -> tuple[Tensor, dict[str, str]]:
    """Encode images into the space ``pipe`` denoises: ``(latents [M, C, H, W] float32 CPU, metadata)``.

    ``images``: paths, a folder, PIL images, or a tensor in [-1, 1]. Latents are the VAE's latent
    distribution mean in the space the pipeline denoises (`_latent_space`); pixels for pixel-space
    pipelines. A float16 VAE whose config says ``force_upcast`` encodes in float32, as diffusers' own
    pipelines do (SDXL's VAE overflows in float16).
    """
    from tqdm.auto import tqdm

    size, channels = image_size or pipeline_image_size(pipe), _channels(pipe)
    hashes: list[str] | None = None
    if isinstance(images, Tensor):
        batches = tqdm(_tensor_pixels(images, size, channels).split(batch_size), desc="encoding images",
                       disable=not progress, unit="batch")
    else:  # decoded a batch at a time: a folder of thousands of large images never sits in memory at once
        items, hashes, skipped = _image_items(images), [], []
        read = tqdm(items, desc="encoding images", disable=not progress, unit="image")
        batches = _batched(_decoded(read, size, channels, hashes, skipped), batch_size)
    vae = getattr(pipe, "vae", None)
    space = _latent_space(vae.config) if vae is not None else {"scaling_factor": 1.0, "shift_factor": 0.0}
    centre = torch.tensor(space.get("latents_mean", space["shift_factor"])).reshape(1, -1, 1, 1)
    spread = torch.tensor(space.get("latents_std", 1.0)).reshape(1, -1, 1, 1)
    out = []
    with _encoding_precision(vae):
        for batch in batches:
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
            out.append((mean.float().cpu() - centre) * space["scaling_factor"] / spread)
    if hashes is not None:
        _check_readable(len(hashes), skipped)
    latents = torch.cat(out)
    metadata = {**{key: json.dumps(value) if isinstance(value, list) else repr(value) for key, value in space.items()},
                "encoder": vae_fingerprint(pipe), "image_size": str(size),
                "sources_sha256": "tensor" if hashes is None else json.dumps(hashes)}
    model = getattr(pipe, "name_or_path", None) or getattr(getattr(pipe, "config", None), "_name_or_path", None)
    if model:
        metadata["model"] = str(model)
    return latents, metadata
