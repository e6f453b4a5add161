"""`FashionClassPipeline`: class-conditional latent diffusion on the bundled Fashion-MNIST models.

Components: `unet` (a class-conditional `UNet2DModel`, label 10 = null class), `vae`
(`AutoencoderKL`), `scheduler` (any diffusers scheduler). The denoising loop is the canonical
diffusers loop, so code that wraps `scheduler.step` (the safe denoiser's adapter) works unchanged.
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils.torch_utils import randn_tensor

from safedenoiser.errors import SafeDenoiserError


class FashionClassPipeline(DiffusionPipeline):
    """Sample images of the requested classes; a `None` label samples unconditionally."""

    model_cpu_offload_seq = "unet->vae"

    def __init__(self, unet: UNet2DModel, vae: AutoencoderKL, scheduler):
        super().__init__()
        self.register_modules(unet=unet, vae=vae, scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._guided = False

    @property
    def do_classifier_free_guidance(self) -> bool:
        """Whether the running call guides a class against the null class (the name diffusers pipelines use)."""
        return self._guided

    @property
    def num_classes(self) -> int:
        """Real classes (0..num_classes-1); the null class is the next index."""
        return self.unet.config.num_class_embeds - 1

    @property
    def null_class(self) -> int:
        """The label of unconditional sampling (10 for Fashion-MNIST)."""
        return self.num_classes

    def _labels(self, class_labels: Sequence[int | None]) -> torch.Tensor:
        labels = []
        for label in class_labels:
            if label is None:
                labels.append(self.null_class)
            elif isinstance(label, int) and 0 <= label < self.null_class:
                labels.append(label)
            else:
                raise SafeDenoiserError(
                    f"class label {label!r} is not valid: use an int in 0..{self.null_class - 1} "
                    "or None for unconditional samples")
        return torch.tensor(labels, device=self._execution_device, dtype=torch.long)

    @torch.no_grad()
    def __call__(
        self,
        class_labels: Sequence[int | None] | int | None,
        num_inference_steps: int = 25,
        guidance_scale: float = 4.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        latents: torch.Tensor | None = None,
        eta: float = 0.0,
        return_dict: bool = True,
        callback_on_step_end: Callable | None = None,
    ):
        """Denoise from Gaussian latents to images.

        `class_labels`: one entry per image (an int in 0..9, or None for unconditional); a single
        int or None means one image. `guidance_scale` > 1 applies classifier-free guidance against
        the null class. `output_type`: "pil", "np", "pt" (images in [0, 1]) or "latent".
        `callback_on_step_end(pipe, i, t, {"latents": latents})` may return {"latents": ...}.
        """
        if class_labels is None or isinstance(class_labels, int):
            class_labels = [class_labels]
        labels = self._labels(list(class_labels))
        batch = len(labels)
        device = self._execution_device
        size = self.unet.config.sample_size
        shape = (batch, self.unet.config.in_channels, size, size)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=self.unet.dtype)
        else:
            latents = latents.to(device=device, dtype=self.unet.dtype)

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        do_cfg = guidance_scale > 1.0
        self._guided = do_cfg and bool((labels != self.null_class).any())
        if do_cfg:
            model_labels = torch.cat([torch.full_like(labels, self.null_class), labels])
        else:
            model_labels = labels
        # as diffusers pipelines do: pass eta / generator only to schedulers whose step takes them
        step_params = set(inspect.signature(self.scheduler.step).parameters)
        extra = {k: v for k, v in (("eta", eta), ("generator", generator)) if k in step_params}

        timesteps = self.scheduler.timesteps
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                latent_model_input = torch.cat([latents] * 2) if do_cfg else latents
                latent_model_input = self.scheduler.scale_model_input(latent_model_input, t)
                noise_pred = self.unet(latent_model_input, t, class_labels=model_labels).sample
                if do_cfg:
                    noise_uncond, noise_cond = noise_pred.chunk(2)
                    noise_pred = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
                latents = self.scheduler.step(noise_pred, t, latents, **extra).prev_sample
                if callback_on_step_end is not None:
                    out = callback_on_step_end(self, i, t, {"latents": latents}) or {}
                    latents = out.get("latents", latents)
                progress_bar.update()

        if output_type == "latent":
            images = latents
        else:
            decoded = self.vae.decode(latents / self.vae.config.scaling_factor).sample
            images = self.image_processor.postprocess(decoded, output_type=output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
