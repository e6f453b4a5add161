"""One sampling loop for guidance rules that combine three noise predictions per step.

At each step the UNet predicts noise for the unconditional input ``u`` (empty prompt / null
class), the request ``c`` and a negative concept ``n`` (a negative prompt / class); a
`GuidanceRule` combines them into the noise the scheduler steps with. Negative guidance and
Safe Latent Diffusion are such rules. The loop is the canonical diffusers loop over
``pipe.unet`` and ``pipe.scheduler``, for ``StableDiffusionPipeline``-like pipelines (text) and
for the bundled `FashionClassPipeline` (labels, ``None`` = unconditional); it draws the initial
latents exactly as those pipelines do, so the same generators give the same starting noise.
"""

from __future__ import annotations

import inspect
from typing import Protocol, Sequence

import torch
from torch import Tensor

from safedenoiser.errors import SafeDenoiserError


class GuidanceRule(Protocol):
    def __call__(self, u: Tensor, c: Tensor, n: Tensor, *, guidance_scale: float, step: int,
                 num_steps: int, state: dict) -> Tensor: ...


def _is_text(pipe) -> bool:
    return getattr(pipe, "text_encoder", None) is not None and getattr(pipe, "tokenizer", None) is not None


def _text_conditions(pipe, prompts: Sequence[str], negative: str | Sequence[str],
                     device) -> tuple[Tensor, Tensor, Tensor]:
    negative = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
    cond, uncond = pipe.encode_prompt(list(prompts), device, 1, True, negative_prompt=None)
    neg = pipe.encode_prompt(negative, device, 1, False)[0]
    return uncond, cond, neg


@torch.no_grad()
def guided_sample(pipe, rule: GuidanceRule, *, prompts: Sequence[str] | None = None,
                  labels: Sequence[int | None] | None = None, negative: str | Sequence[str] | int,
                  num_inference_steps: int = 25, guidance_scale: float = 4.0,
                  generator: torch.Generator | list[torch.Generator] | None = None, eta: float = 0.0,
                  output_type: str = "latent") -> Tensor:
    """Sample with ``rule`` combining unconditional, conditional and negative predictions.

    Text pipelines take ``prompts`` and a ``negative`` prompt (one, or one per prompt); class
    pipelines take ``labels`` (``None`` = unconditional) and a ``negative`` class index. Returns
    latents (``output_type="latent"``) or images in [-1, 1] (``"pt"``).
    """
    device = pipe._execution_device
    unet, scheduler = pipe.unet, pipe.scheduler
    if _is_text(pipe):
        if prompts is None or labels is not None:
            raise SafeDenoiserError("a text pipeline needs prompts= (and no labels=)")
        u_emb, c_emb, n_emb = _text_conditions(pipe, prompts, negative, device)
        batch, conditional = len(prompts), True
        size = unet.config.sample_size
    else:
        if labels is None or prompts is not None:
            raise SafeDenoiserError("a class pipeline needs labels= (and no prompts=)")
        if not isinstance(negative, int) or not 0 <= negative < pipe.null_class:
            raise SafeDenoiserError(f"the negative class must be an int in 0..{pipe.null_class - 1}, got {negative!r}")
        lab = pipe._labels(list(labels))
        batch = len(lab)
        conditional = bool((lab != pipe.null_class).any())
        size = unet.config.sample_size
        null = torch.full_like(lab, pipe.null_class)
        neg = torch.full_like(lab, negative)
    from diffusers.utils.torch_utils import randn_tensor

    shape = (batch, unet.config.in_channels, size, size)
    latents = randn_tensor(shape, generator=generator, device=device, dtype=unet.dtype)
    scheduler.set_timesteps(num_inference_steps, device=device)
    latents = latents * scheduler.init_noise_sigma
    step_params = set(inspect.signature(scheduler.step).parameters)
    extra = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in step_params}
    state: dict = {}
    parts = 3 if conditional else 2  # unconditional requests: c = u, one evaluation saved
    for i, t in enumerate(scheduler.timesteps):
        x_in = scheduler.scale_model_input(torch.cat([latents] * parts), t)
        if _is_text(pipe):
            emb = torch.cat([u_emb, c_emb, n_emb])
            eps = unet(x_in, t, encoder_hidden_states=emb).sample
        else:
            cls = torch.cat([null, lab, neg] if conditional else [null, neg])
            eps = unet(x_in, t, class_labels=cls).sample
        chunks = eps.chunk(parts)
        u, c, n = chunks if conditional else (chunks[0], chunks[0], chunks[1])
        noise = rule(u, c, n, guidance_scale=guidance_scale, step=i, num_steps=len(scheduler.timesteps), state=state)
        latents = scheduler.step(noise, t, latents, **extra).prev_sample
    if output_type == "latent":
        return latents
    if output_type == "pt":
        return pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
    raise SafeDenoiserError(f"output_type must be 'latent' or 'pt', got {output_type!r}")
