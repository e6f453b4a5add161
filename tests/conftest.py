"""Shared test fixtures: tiny random-weight diffusers pipelines (no download) and an exact
Gaussian-mixture noise predictor whose sampling distribution is known in closed form."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from diffusers import (AutoencoderKL, DDIMScheduler, DDPMScheduler, ModelMixin, UNet2DConditionModel,
                       UNet2DModel)
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.unets.unet_2d import UNet2DOutput

# Tiny models on a shared, busy machine: torch's intra-op threads only contend (70x slower at 2).
torch.set_num_threads(1)

# ---------------------------------------------------------------------------- exact mixture model


class MixtureEps(ModelMixin, ConfigMixin):
    """The exact noise predictor of an isotropic Gaussian mixture, shaped as ``[B, C, H, W]`` images.

    Component k is ``N(mu_k, std_k^2 I)``. At VP level ``(a, s)`` with ``c_k = a^2 std_k^2 + s^2``:

        r_k(x)       = softmax_k( log pi_k - ||x - a mu_k||^2 / (2 c_k) - D/2 log c_k )
        E[x0 | x]    = sum_k r_k (mu_k + a std_k^2 / c_k (x - a mu_k))
        eps(x, t)    = (x - a E[x0 | x]) / s

    ``t`` is a diffusers timestep; non-integer ones (Euler's) are read the way Euler reads them:
    ``sigma(t)`` linearly interpolated in the table ``sqrt((1 - a_bar) / a_bar)``. ``prediction``
    ``"v_prediction"`` outputs ``a eps - s x0``, ``"sample"`` outputs ``x0``, and ``"flow"`` is a
    rectified-flow model (``a = 1 - t/T``, ``s = t/T``) that outputs ``eps - x0``. ``"edm-epsilon"``
    and ``"edm-v_prediction"`` are EDM-preconditioned models as diffusers' EDM schedulers call them: the
    timestep is ``c_noise = log(sigma) / 4``, the input ``sample / sqrt(sigma^2 + sd^2)`` (VE level
    ``sigma``, ``sd = sigma_data``), the output ``F`` with ``x0 = c_skip x + c_out F``.
    """

    @register_to_config
    def __init__(self, means: list, stds: list, weights: list, in_channels: int = 2, sample_size: int = 1,
                 num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 prediction: str = "epsilon", sigma_data: float = 0.5):
        super().__init__()
        self.register_buffer("dummy", torch.zeros(1))  # gives the module a device and a dtype
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
        acp = torch.cumprod(1 - betas, 0)
        self.sigma_table = ((1 - acp) / acp).sqrt().numpy()

    def levels(self, t) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1)
        if self.config.prediction == "flow":
            s = t / self.config.num_train_timesteps
            return 1 - s, s
        sig = torch.from_numpy(np.interp(t.numpy(), np.arange(len(self.sigma_table)), self.sigma_table))
        a = 1 / torch.sqrt(1 + sig * sig)
        return a, sig * a

    def denoise(self, x: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Exact ``E[x0 | x_t]`` for ``x`` [B, D] at VP level ``(a, s)`` ([B] or [1])."""
        mu = torch.tensor(self.config.means, dtype=torch.float64)
        var = torch.tensor(self.config.stds, dtype=torch.float64) ** 2
        logw = torch.tensor(self.config.weights, dtype=torch.float64).log()
        a, s = a.reshape(-1, 1), s.reshape(-1, 1)
        c = a * a * var[None] + s * s  # [B, K]
        diff = x[:, None, :] - a[:, :, None] * mu[None]  # [B, K, D]
        logits = logw[None] - (diff * diff).sum(-1) / (2 * c) - 0.5 * x.shape[1] * torch.log(c)
        post = mu[None] + (a * var[None] / c)[..., None] * diff
        return (torch.softmax(logits, 1)[..., None] * post).sum(1)

    def forward(self, sample: torch.Tensor, timestep, *args, return_dict: bool = True, **kwargs):
        x = sample.reshape(sample.shape[0], -1).double()
        if self.config.prediction.startswith("edm-"):
            out = self._edm_output(x, timestep)
        else:
            a, s = self.levels(timestep)
            x0 = self.denoise(x, a, s)
            eps = (x - a[:, None] * x0) / s[:, None]
            out = {"epsilon": eps, "v_prediction": a[:, None] * eps - s[:, None] * x0, "sample": x0,
                   "flow": eps - x0}[self.config.prediction]
        out = out.reshape(sample.shape).to(sample.dtype)
        return UNet2DOutput(sample=out) if return_dict else (out,)

    def _edm_output(self, model_input: torch.Tensor, c_noise) -> torch.Tensor:
        sigma = torch.exp(4 * torch.as_tensor(c_noise, dtype=torch.float64)).reshape(-1, 1)
        sd2 = self.config.sigma_data ** 2
        x = model_input * torch.sqrt(sigma * sigma + sd2)
        x0 = self.denoise(x, torch.ones_like(sigma[:, 0]), sigma[:, 0])
        c_out = sigma * self.config.sigma_data / torch.sqrt(sigma * sigma + sd2)
        c_out = c_out if self.config.prediction == "edm-epsilon" else -c_out
        return (x0 - sd2 / (sigma * sigma + sd2) * x) / c_out


MIXTURE = {"means": [[-0.5, -0.3], [0.5, -0.3], [0.0, 0.5]], "stds": [0.1, 0.1, 0.1], "weights": [0.3, 0.3, 0.4]}
NEGATED = 2  # the component a negation set is drawn from


def mixture_model(prediction: str = "epsilon") -> MixtureEps:
    return MixtureEps(**MIXTURE, prediction=prediction).eval()


def mixture_samples(component: int, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` exact samples of one component, shaped ``[n, 2, 1, 1]``."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.tensor(MIXTURE["means"][component])
    x = mu + MIXTURE["stds"][component] * torch.randn(n, 2, generator=gen)
    return x.reshape(n, 2, 1, 1)


def component_shares(x: torch.Tensor) -> list[float]:
    """Share of samples whose most likely component (at t = 0) is each component."""
    x = x.reshape(x.shape[0], -1).double()
    mu = torch.tensor(MIXTURE["means"], dtype=torch.float64)
    var = torch.tensor(MIXTURE["stds"], dtype=torch.float64) ** 2
    logits = (torch.tensor(MIXTURE["weights"], dtype=torch.float64).log()[None]
              - ((x[:, None] - mu[None]) ** 2).sum(-1) / (2 * var) - x.shape[1] / 2 * var.log())
    best = logits.argmax(1)
    return [float((best == k).double().mean()) for k in range(len(mu))]


# ---------------------------------------------------------------------------- tiny components

SD_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                    set_alpha_to_one=False, steps_offset=1)
TEXT_DIM = 16
MAX_TOKENS = 12


def tiny_vae(latent_channels: int = 4, **config) -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         latent_channels=latent_channels, norm_num_groups=4, sample_size=16, **config).eval()


def tiny_unet_cond(cross_attention_dim: int = TEXT_DIM, in_channels: int = 4) -> UNet2DConditionModel:
    """A tiny SD UNet; ``in_channels=9``: an inpainting UNet's (latents, mask, masked image's latents)."""
    torch.manual_seed(0)
    return UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=in_channels,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=cross_attention_dim, norm_num_groups=4,
                                attention_head_dim=4).eval()


def tiny_unet_pixels(out_channels: int = 3) -> UNet2DModel:
    torch.manual_seed(0)
    return UNet2DModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=3,
                       out_channels=out_channels, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4,
                       attention_head_dim=4).eval()


def tiny_class_pipe():
    """A tiny `FashionClassPipeline` (10 classes + null class 10, 4x8x8 latents), DDIM."""
    from safedenoiser.models.class_pipeline import FashionClassPipeline

    torch.manual_seed(0)
    unet = UNet2DModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=11).eval()
    pipe = FashionClassPipeline(unet=unet, vae=tiny_vae(), scheduler=DDIMScheduler(**SD_SCHEDULER))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_tokenizer(folder):
    """A CLIP tokenizer over single characters, written to ``folder`` (no download)."""
    from transformers import CLIPTokenizer

    tokens = ["<|startoftext|>", "<|endoftext|>", "!"]
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens += letters + [f"{c}</w>" for c in letters]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=MAX_TOKENS)


def tiny_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    return CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=TEXT_DIM,
                                        intermediate_size=32, num_attention_heads=2, num_hidden_layers=1,
                                        vocab_size=64, max_position_embeddings=MAX_TOKENS)).eval()


@pytest.fixture(scope="session")
def sd_components(tmp_path_factory):
    """Components of a tiny Stable Diffusion pipeline (UNet, VAE, CLIP text encoder and tokenizer)."""
    return dict(unet=tiny_unet_cond(), vae=tiny_vae(), text_encoder=tiny_text_encoder(),
                tokenizer=tiny_tokenizer(tmp_path_factory.mktemp("tokenizer")),
                scheduler=DDIMScheduler(**SD_SCHEDULER), safety_checker=None, feature_extractor=None)


@pytest.fixture
def sd_pipe(sd_components):
    """A tiny StableDiffusionPipeline (16x16 images, 4x8x8 latents), DDIM, fresh scheduler per test."""
    from diffusers import StableDiffusionPipeline

    parts = dict(sd_components, scheduler=DDIMScheduler(**SD_SCHEDULER))
    pipe = StableDiffusionPipeline(**parts, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def ddpm_pipe():
    """A tiny pixel-space DDPMPipeline (3x8x8)."""
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline(unet=tiny_unet_pixels(), scheduler=DDPMScheduler(num_train_timesteps=1000))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def mixture_pipeline(cls_name: str):
    """A DDPMPipeline / DDIMPipeline around the exact mixture predictor (2x1x1 samples)."""
    import diffusers

    scheduler_cls = DDPMScheduler if cls_name == "DDPMPipeline" else DDIMScheduler
    pipe = getattr(diffusers, cls_name)(unet=mixture_model(), scheduler=scheduler_cls(clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pipeline_state(pipe) -> dict:
    """Everything attach() could touch: the scheduler's instance dict and which `step` it resolves to."""
    sched = pipe.scheduler
    return {"dict_keys": sorted(sched.__dict__), "step_is_class": "step" not in sched.__dict__,
            "set_timesteps_is_class": "set_timesteps" not in sched.__dict__,
            "step_func": type(sched).step, "config": dict(sched.config)}


def sigma_over_alpha(alphas_cumprod: torch.Tensor, t: int) -> float:
    acp = float(alphas_cumprod[t])
    return math.sqrt((1 - acp) / acp)


class ExactNegatedComponent:
    """`UnsafeModel` of the negated mixture component itself: exact ``D_unsafe`` and ``log p_unsafe,t``."""

    def posterior(self, x_t, alpha, sigma, *, smoothing: float = 0.0):
        from safedenoiser.negation import UnsafePosterior

        x = x_t.reshape(x_t.shape[0], -1).double()
        a = torch.as_tensor(alpha, dtype=torch.float64).expand(x.shape[0])[:, None]
        s = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])[:, None]
        mu, var = torch.tensor(MIXTURE["means"][NEGATED], dtype=torch.float64), MIXTURE["stds"][NEGATED] ** 2
        c = a * a * var + s * s
        diff = x - a * mu
        mean = mu + a * var / c * diff
        log_density = (-(diff * diff).sum(1, keepdim=True) / (2 * c) - x.shape[1] / 2 * torch.log(2 * math.pi * c))
        return UnsafePosterior(mean.reshape(x_t.shape).to(x_t.dtype), log_density.squeeze(1).to(x_t.dtype))


def exact_beta(x_t, alpha, sigma):
    """``P(negated component | x_t)`` under the mixture, exactly."""
    x = x_t.reshape(x_t.shape[0], -1).double()
    a = torch.as_tensor(alpha, dtype=torch.float64).expand(x.shape[0])
    s = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])
    mu = torch.tensor(MIXTURE["means"], dtype=torch.float64)
    var = torch.tensor(MIXTURE["stds"], dtype=torch.float64) ** 2
    c = a[:, None] ** 2 * var[None] + s[:, None] ** 2
    diff = x[:, None, :] - a[:, None, None] * mu[None]
    logits = (torch.tensor(MIXTURE["weights"], dtype=torch.float64).log()[None]
              - (diff * diff).sum(-1) / (2 * c) - x.shape[1] / 2 * torch.log(c))
    return torch.softmax(logits, 1)[:, NEGATED].to(x_t.dtype)


def run_loop(model, scheduler, *, n: int = 2000, steps: int = 50, seed: int = 0, shape=(2, 1, 1),
             dtype=torch.float32) -> torch.Tensor:
    """The canonical diffusers sampling loop (``scale_model_input``, model, ``scheduler.step``)."""
    import inspect

    gen = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(steps)
    x = torch.randn(n, *shape, generator=gen) * getattr(scheduler, "init_noise_sigma", 1.0)
    x = x.to(dtype)
    takes_generator = "generator" in inspect.signature(type(scheduler).step).parameters
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(x, t) if hasattr(scheduler, "scale_model_input") else x
        with torch.no_grad():
            out = model(model_input, t).sample
        x = scheduler.step(out, t, x, **({"generator": gen} if takes_generator else {})).prev_sample
    return x
