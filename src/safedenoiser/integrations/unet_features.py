"""The model's own features of a clean latent, the space where the local estimator measures distances.

    phi(x0) = the activations of the UNet's first up block at (x0, timestep 0, no conditioning), flattened

A VAE latent space mixes classes that look alike in pixels (Fashion-MNIST: sandals among sneakers,
coats among pullovers); the denoiser's own decoder features, which it needs to tell them apart when
it denoises, keep them further apart (benchmarks/local_confusion.py ``--features``). Conditioning
is the empty prompt or the null class, so the features do not depend on the request and the sets'
features are computed once. The rest of the UNet is not run.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from safedenoiser.errors import SafeDenoiserError


class _Stop(Exception):
    """Raised by the hook once the first up block has run: the rest of the UNet is not needed."""


class UNetFeatures:
    """``phi``: latents [N, C, H, W] -> float32 features [N, F] from ``pipe.unet``'s first up block.

    Supports the UNets of Stable Diffusion-like pipelines (text conditioning through
    ``pipe.encode_prompt``) and of class-conditional (with a ``null_class``) or unconditional
    ``UNet2DModel`` pipelines; `UNetFeatures.of` returns ``None`` for other models (transformers,
    SDXL's added conditions, a loaded IP-Adapter's image embeddings, an inpainting UNet that takes more
    ``channels`` than the latents have).
    Feature maps larger than ``MAX_SIDE`` are average-pooled to it, which keeps Stable Diffusion's
    (1280 x 16 x 16 at 512 px) at 82k numbers per image.
    """

    MAX_SIDE = 8

    def __init__(self, pipe, batch_size: int = 64, channels: int | None = None):
        unet = getattr(pipe, "unet", None)
        conditioning = _null_conditioning(pipe, unet) if _has_up_blocks(unet) else None
        if conditioning is None:
            raise SafeDenoiserError(f"no UNet features for {type(pipe).__name__}: they need a diffusers UNet with up "
                                    "blocks whose null conditioning is known (Stable Diffusion 1.x/2.x, a UNet2DModel "
                                    "pipeline); use features='latent'")
        if channels is not None and unet.config.in_channels != channels:
            raise SafeDenoiserError(f"no UNet features for {type(pipe).__name__}: its UNet takes "
                                    f"{unet.config.in_channels} input channels, the latents have {channels} (an "
                                    "inpainting UNet also takes the mask and the masked image); use features='latent'")
        self.unet, self.batch_size, self._conditioning = unet, batch_size, conditioning

    @classmethod
    def of(cls, pipe, channels: int | None = None) -> UNetFeatures | None:
        """The features of ``pipe``'s UNet for latents of ``channels``, or ``None`` where it has none we support."""
        try:
            return cls(pipe, channels=channels)
        except SafeDenoiserError:
            return None

    @torch.no_grad()
    def __call__(self, latents: Tensor) -> Tensor:
        out = []
        for start in range(0, len(latents), self.batch_size):
            x = latents[start:start + self.batch_size].to(self.unet.device, self.unet.dtype)
            maps = self._first_up_block(x)
            if max(maps.shape[-2:]) > self.MAX_SIDE:
                maps = torch.nn.functional.adaptive_avg_pool2d(maps, self.MAX_SIDE)
            out.append(maps.flatten(1).float())
        return torch.cat(out).to(latents.device)

    def _first_up_block(self, x: Tensor) -> Tensor:
        caught: list[Tensor] = []

        def stop(module, args, output):
            caught.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        handle = self.unet.up_blocks[0].register_forward_hook(stop)
        try:
            self.unet(x, torch.zeros(len(x), dtype=torch.long, device=x.device), **self._conditioning(len(x)))
        except _Stop:
            pass
        finally:
            handle.remove()
        return caught[0]


def _has_up_blocks(unet) -> bool:
    return hasattr(unet, "config") and len(getattr(unet, "up_blocks", ())) > 0


def _null_conditioning(pipe, unet) -> Callable[[int], dict] | None:
    """``batch -> keyword arguments`` of the UNet call for "no conditioning"; ``None`` where unknown."""
    config = unet.config
    if getattr(config, "addition_embed_type", None) not in (None, "text"):
        return None  # SDXL-like: needs added conditions
    if getattr(unet, "encoder_hid_proj", None) is not None and config.encoder_hid_dim_type != "text_proj":
        return None  # an IP-Adapter (or Kandinsky's image projection): needs image embeddings
    if "cross_attention_dim" in config:  # UNet2DConditionModel
        if not hasattr(pipe, "encode_prompt"):
            return None
        with torch.no_grad():
            empty = pipe.encode_prompt("", unet.device, 1, False)[0].to(unet.dtype)
        return lambda batch: {"encoder_hidden_states": empty.expand(batch, -1, -1)}
    if getattr(config, "num_class_embeds", None) is None and getattr(config, "class_embed_type", None) is None:
        return lambda batch: {}
    if not hasattr(pipe, "null_class"):
        return None
    return lambda batch: {"class_labels": torch.full((batch,), pipe.null_class, device=unet.device)}
