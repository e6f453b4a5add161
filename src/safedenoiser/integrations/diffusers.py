"""Safe sampling inside any diffusers pipeline: wrap ``pipe.scheduler.step`` (DESIGN §5).

This is the edge where a scheduler's model output becomes the denoised estimate ``x0`` and back
(STYLE: k-diffusion's ``external.py``). At every ``step(model_output, timestep, sample)`` call:

1. read the noise level of ``sample`` off the scheduler: ``sample = alpha x0 + sigma eps``;
2. ``x0_hat = to_x0(model_output)`` with the scheduler's prediction type;
3. ``SafeDenoiser.correct(sample, alpha, sigma, x0_hat, guided=..., within_step=...)`` (FLUX's tokens
   unpacked to the set's latents for it, `sample_layout`), ``guided`` from the pipeline's
   ``do_classifier_free_guidance`` (False for a bare scheduler), or ``attach``'s ``guided``;
   ``within_step`` at a second-order scheduler's second evaluation of a step;
4. nothing acted: the original ``step`` with the original arguments (bit-identical to vanilla);
   identity (default): the model output of the acted samples replaced by ``from_x0(x0_safe)``;
   paper rule: the acted samples re-noised, ``alpha x0_safe + sigma z`` (``z`` seeded by the image itself,
   `_fresh_noise`), then the original step.

Any loop that calls ``pipe.scheduler.step`` is covered: every diffusers pipeline with a supported
scheduler, and a user's own loop over ``pipe.scheduler`` and ``pipe.unet``.
"""

from __future__ import annotations

import hashlib
import inspect
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import Tensor

from safedenoiser.core.parametrization import (edm_from_x0, edm_to_x0, flow_levels, from_x0, to_x0, ve_levels,
                                               vp_levels)
from safedenoiser.core.presets import PAPER_SCHEDULER
from safedenoiser.errors import SafeDenoiserError
from safedenoiser.integrations.encode import vae_fingerprint
from safedenoiser.negation import NegationSet

# How each scheduler family defines the noise level of the ``sample`` it is handed.
VP_DISCRETE = ("DDPMScheduler", "DDIMScheduler", "PNDMScheduler", "LCMScheduler", "TCDScheduler")  # alphas_cumprod[t]
VP_SIGMAS = ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
             "UniPCMultistepScheduler", "DEISMultistepScheduler")  # own sigmas -> _sigma_to_alpha_sigma_t
# Sigma space; the second-order ones (Heun, KDPM2, DPM-Solver++ SDE) evaluate the model twice a step, each
# time at the level `_sigma` reads.
SIGMA_SPACE = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "LMSDiscreteScheduler",
               "HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
               "DPMSolverSDEScheduler")
EDM = ("EDMEulerScheduler", "EDMDPMSolverMultistepScheduler")  # sigma space, EDM-preconditioned model
FLOW = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")  # flow Heun: levels as Heun's
SUPPORTED = VP_DISCRETE + VP_SIGMAS + SIGMA_SPACE + EDM + FLOW
# Step some steps from a copy of the sample they stored earlier, not the ``sample`` they are handed:
# a re-noised sample (the paper rule) would be dropped there. UniPC's corrector rebuilds every sample
# from the previous step's.
OWN_SAMPLE = ("PNDMScheduler", "DPMSolverSinglestepScheduler", "HeunDiscreteScheduler", "UniPCMultistepScheduler",
              "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler", "DPMSolverSDEScheduler",
              "FlowMatchHeunDiscreteScheduler")

Layout = Callable[[Tensor], Tensor]  # a batch of samples in one layout -> the same in another

# diffusers' names for a model's parametrisation -> ours (core.parametrization).
DIFFUSERS_PREDICTIONS = {"epsilon": "epsilon", "v_prediction": "v_prediction", "sample": "sample",
               "original_sample": "sample", "flow_prediction": "flow"}


def is_one_of(scheduler_cls: type, names: tuple[str, ...]) -> bool:
    """Whether the scheduler class, or a class it derives from, is named in ``names``."""
    return any(cls.__name__ in names for cls in scheduler_cls.__mro__)


def drops_renoising(scheduler_cls: type) -> bool:
    """Whether the scheduler class (or one it derives from) is in `OWN_SAMPLE`: it would drop the paper
    rule's re-noised sample at some steps."""
    return is_one_of(scheduler_cls, OWN_SAMPLE)


def scheduler_kind(scheduler) -> str:
    """``"vp"``, ``"vp_sigmas"``, ``"sigma"``, ``"edm"`` or ``"flow"`` (by class, subclasses included);
    refuses others."""
    families = {"vp": VP_DISCRETE, "vp_sigmas": VP_SIGMAS, "sigma": SIGMA_SPACE, "edm": EDM, "flow": FLOW}
    for kind, names in families.items():
        if is_one_of(type(scheduler), names):
            return kind
    raise SafeDenoiserError(
        f"attach() does not support the scheduler {type(scheduler).__name__}: it cannot tell the noise "
        f"level of the sample it steps. Switch to a supported one ({', '.join(SUPPORTED)}), e.g. "
        "`pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`")


def scheduler_prediction(scheduler) -> str:
    """The model parametrisation the scheduler expects, in our names; refuses unknown ones."""
    if scheduler_kind(scheduler) == "flow":
        return "flow"
    config = getattr(scheduler, "config", None)
    name = getattr(config, "prediction_type", None) if config is not None else None
    if name not in DIFFUSERS_PREDICTIONS:
        raise SafeDenoiserError(
            f"attach() does not know the prediction type {name!r} of {type(scheduler).__name__}; "
            f"supported: {', '.join(sorted(DIFFUSERS_PREDICTIONS))}. Set the scheduler's prediction_type to what the "
            "model was trained with")
    return DIFFUSERS_PREDICTIONS[name]


def noise_level(scheduler, timestep) -> tuple[float, float, float]:
    """``(alpha, sigma, scale)`` of the sample handed to ``scheduler.step`` at ``timestep``.

    ``sample = alpha x0 + sigma eps``. ``scale`` maps the sample into the coordinates the model's
    output is defined in (``scale * sample`` is the model input): 1, except for sigma-space
    schedulers (Euler, LMS), whose model sees ``sample / sqrt(sigma^2 + 1)``. EDM schedulers are
    sigma space too; their model's output is read by `edm_to_x0` (``scale`` 1).
    """
    kind = scheduler_kind(scheduler)
    if kind == "vp":
        alpha, sigma = vp_levels(scheduler.alphas_cumprod[int(timestep)].double())
        return float(alpha), float(sigma), 1.0
    if scheduler.step_index is None:
        scheduler._init_step_index(timestep)  # exactly what step() does first
    level = torch.as_tensor(_sigma(scheduler), dtype=torch.float64)
    if kind == "vp_sigmas":
        alpha, sigma = scheduler._sigma_to_alpha_sigma_t(level)  # the scheduler's own sigma convention
        return float(alpha), float(sigma), 1.0
    if kind == "sigma":
        alpha, sigma = ve_levels(level)
        return float(alpha), float(sigma), float(1.0 / (sigma * sigma + 1.0).sqrt())
    if kind == "edm":
        alpha, sigma = ve_levels(level)
        return float(alpha), float(sigma), 1.0
    alpha, sigma = flow_levels(level)
    return float(alpha), float(sigma), 1.0


def second_evaluation(scheduler) -> bool:
    """Whether the scheduler's next ``step`` is the second model evaluation of a second-order step (Heun,
    KDPM2, DPM-Solver++ SDE, FlowMatchHeun: ``state_in_first_order`` is False)."""
    return not getattr(scheduler, "state_in_first_order", True)


def _sigma(scheduler) -> Tensor:
    """The sigma of the sample a sigma-indexed scheduler is about to step: ``sigmas[step_index]``, except at
    the second evaluation of KDPM2 (DPM-Solver-2) and DPM-Solver++ SDE, which is at a midpoint:
    ``sigmas_interpol[step_index]`` and ``mid_point_sigma`` (KDPM2-ancestral's midpoint, between sigma and
    its sigma_down, is the next sigma itself)."""
    second = second_evaluation(scheduler)
    if second and is_one_of(type(scheduler), ("KDPM2DiscreteScheduler",)):
        return scheduler.sigmas_interpol[scheduler.step_index]
    if second and is_one_of(type(scheduler), ("DPMSolverSDEScheduler",)):
        return scheduler.mid_point_sigma
    return scheduler.sigmas[scheduler.step_index]


def latent_channels(pipe) -> int | None:
    """Channels of the tensors the pipeline's scheduler steps, where the pipeline says."""
    vae = getattr(pipe, "vae", None)
    if vae is not None and hasattr(vae, "config") and "latent_channels" in vae.config:
        return int(vae.config.latent_channels)
    for name in ("unet", "transformer"):
        model = getattr(pipe, name, None)
        if vae is None and model is not None and hasattr(model, "config") and "in_channels" in model.config:
            return int(model.config.in_channels)
    return None


def check_negation(safe, pipe) -> None:
    """Refuse a negation set that does not live in the space ``pipe`` denoises (before sampling)."""
    negation = safe.negation
    if not isinstance(negation, NegationSet):
        return
    channels = latent_channels(pipe)
    if channels is not None and negation.sample_shape[0] != channels:
        negation.check_compatible((channels, *negation.sample_shape[1:]))
    if "encoder" in negation.metadata and hasattr(pipe, "scheduler"):
        negation.check_compatible(negation.sample_shape, vae_fingerprint(pipe))


def pack(latents: Tensor) -> Tensor:
    """``[B, C, H, W]`` latents as FLUX's tokens ``[B, (H/2)(W/2), 4C]`` (its ``_pack_latents``)."""
    b, c, h, w = latents.shape
    return latents.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)


def unpack(tokens: Tensor, image_shape: tuple[int, ...]) -> Tensor:
    """FLUX's tokens ``[B, (H/2)(W/2), 4C]`` as the ``[B, C, H, W]`` latents of ``image_shape`` (``pack``'s inverse)."""
    c, h, w = image_shape
    b = len(tokens)
    return tokens.reshape(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def _identity(t: Tensor) -> Tensor:
    return t


def sample_layout(sample_shape: tuple[int, ...], image_shape: tuple[int, ...] | None) -> tuple[Layout, Layout]:
    """``(to_image, to_sample)`` between the samples a scheduler steps and the set's latents of ``image_shape``.
    FLUX packs latents (C, H, W) as tokens ``[(H/2)(W/2), 4C]``: such samples are corrected as images and
    packed back. Any other sample is taken as it is."""
    if image_shape is not None and len(image_shape) == 3 and len(sample_shape) == 2:
        c, h, w = image_shape
        if h % 2 == 0 and w % 2 == 0 and tuple(sample_shape) == ((h // 2) * (w // 2), 4 * c):
            return (lambda tokens: unpack(tokens, image_shape)), pack
    return _identity, _identity


def _split_variance(model_output: Tensor, sample: Tensor) -> tuple[Tensor, Tensor | None]:
    """Models with learned variance (DDPM ``learned_range``, DiT) output ``[eps, variance]``."""
    if model_output.ndim >= 2 and model_output.shape[1] == 2 * sample.shape[1]:
        return model_output[:, :sample.shape[1]], model_output[:, sample.shape[1]:]
    return model_output, None


def applies_guidance(pipe) -> bool:
    """Whether ``pipe``'s running call applies classifier-free guidance (diffusers pipelines say so in
    ``do_classifier_free_guidance``; anything else, a bare scheduler included, counts as unguided)."""
    return bool(getattr(pipe, "do_classifier_free_guidance", False))  # AttributeError before a call: False


def _output_conversions(scheduler) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """``(to_x0, from_x0)`` for ``scheduler``'s model output at a step: ``to_x0(output, model_x, alpha,
    sigma)`` in the model's coordinates (``model_x = scale * sample``, levels scaled alike), `to_x0` and
    `from_x0` of the scheduler's prediction type; EDM schedulers, `edm_to_x0` and its inverse."""
    prediction = scheduler_prediction(scheduler)
    if scheduler_kind(scheduler) == "edm":
        sigma_data = float(scheduler.config.sigma_data)
        return (lambda output, x, a, s: edm_to_x0(output, x, s, sigma_data, prediction),
                lambda x0, x, a, s: edm_from_x0(x0, x, s, sigma_data, prediction))
    return (lambda output, x, a, s: to_x0(output, x, a, s, prediction),
            lambda x0, x, a, s: from_x0(x0, x, a, s, prediction))


def _safe_step(safe, scheduler, original, pipe, guided: bool | None):
    """The replacement for ``scheduler.step``: correct the model output, then the original step."""
    signature = inspect.signature(original)
    output_to_x0, x0_to_output = _output_conversions(scheduler)

    def step(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        model_output, timestep, sample = (bound.arguments[k] for k in ("model_output", "timestep", "sample"))
        to_image, to_sample = sample_layout(tuple(sample.shape[1:]), safe.sample_shape)
        if safe.sample_shape is not None and to_image is _identity and tuple(sample.shape[1:]) != safe.sample_shape:
            safe.negation.check_compatible(tuple(sample.shape[1:]))  # raises, before anything changed
        output, variance = _split_variance(model_output, sample)
        alpha, sigma, scale = noise_level(scheduler, timestep)
        dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32  # kernel math >= float32
        x = sample.to(dtype)
        model_x, model_a, model_s = scale * x, scale * alpha, scale * sigma
        x0_hat = output_to_x0(output.to(dtype), model_x, model_a, model_s)
        guided_now = applies_guidance(pipe) if guided is None else guided
        corr = safe.correct(to_image(x), alpha, sigma, to_image(x0_hat), guided=guided_now,
                            within_step=second_evaluation(scheduler))
        safe.trace[-1].timestep = float(timestep)
        if not bool(corr.acted.any()):
            return original(*args, **kwargs)
        mask = corr.acted.to(sample.device).reshape(-1, *([1] * (sample.ndim - 1)))
        x0_safe = to_sample(corr.x0.to(dtype))
        if corr.renoise:  # the authors' rule: re-noise x0_safe to this level, unchanged model output
            noise = to_sample(_fresh_noise(to_image(sample), timestep, corr.acted.cpu(), dtype))
            renoised = alpha * x0_safe + sigma * noise
            bound.arguments["sample"] = torch.where(mask, renoised.to(sample.dtype), sample)
        else:
            safe_output = x0_to_output(x0_safe, model_x, model_a, model_s).to(output.dtype)
            output = torch.where(mask, safe_output, output)
            bound.arguments["model_output"] = output if variance is None else torch.cat([output, variance], 1)
        return original(*bound.args, **bound.kwargs)

    step.__wrapped__ = original
    return step


def _fresh_noise(sample: Tensor, timestep, acted: Tensor, dtype: torch.dtype) -> Tensor:
    """The paper rule's fresh noise: for each acted image, a stream seeded by its own values and the timestep
    (zeros for the others). It draws from no generator of the user's nor torch's global one, so images
    that never act stay bit-identical to vanilla whatever their batch-mates do, and a run is reproducible
    with any scheduler, including those whose ``step`` takes no generator (LMS, DEIS)."""
    noise = torch.zeros(sample.shape, dtype=dtype)
    for i in acted.nonzero().flatten().tolist():
        key = sample[i].detach().float().cpu().numpy().tobytes() + repr(float(timestep)).encode()
        seed = int.from_bytes(hashlib.sha256(key).digest()[:8], "little")
        noise[i] = torch.randn(sample.shape[1:], generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return noise.to(sample.device)


@contextmanager
def attach(safe, pipe, guided: bool | None = None) -> Iterator[object]:
    """Sample ``pipe`` with the safe denoiser: wraps ``pipe.scheduler.step`` for the ``with`` block.

    ``pipe`` is any object with a ``scheduler`` (a diffusers pipeline, or a user's own holder), or a
    scheduler itself. The scheduler's ``step`` and ``set_timesteps`` become instance attributes
    for the block and are removed (or the previous ones restored) on exit, also on error.
    Entering the block and every ``set_timesteps`` start a new run (``safe.reset()``: an empty
    ``safe.trace``, no latched beta). Refuses, before sampling, an unsupported scheduler or prediction
    type, the paper rule with a scheduler that would drop its re-noising (``OWN_SAMPLE``), and a
    negation set from another space (channels, VAE); another height or width shows at the first
    ``step``, which refuses it before changing anything.
    ``safe.bind(pipe)`` gives the local estimator the UNet's features (`SafeDenoiser`'s ``features``).
    ``guided``: whether the sampler applies classifier-free guidance (``latch="auto"``, ``features="auto"``);
    ``None`` reads the pipeline's ``do_classifier_free_guidance`` at each step. Pipelines that do not
    expose it (DiT, PixArt, FLUX) and own loops that guide should pass ``True``.
    """
    scheduler = pipe.scheduler if hasattr(pipe, "scheduler") else pipe
    if not hasattr(scheduler, "step"):
        raise SafeDenoiserError(f"attach() needs a diffusers pipeline or scheduler, got {type(pipe).__name__}")
    scheduler_prediction(scheduler)  # refuses unknown schedulers and prediction types
    if getattr(safe, "paper", None) is not None and drops_renoising(type(scheduler)):
        other = ("FlowMatchEulerDiscreteScheduler with the model's shift" if scheduler_prediction(scheduler) == "flow"
                 else f"the authors' `pipe.scheduler = {PAPER_SCHEDULER}.from_config(pipe.scheduler.config)`")
        raise SafeDenoiserError(
            f"the paper rule re-noises the sample it hands {type(scheduler).__name__}, which takes some steps from "
            f"a copy of the sample it stored earlier and would drop the correction there. Switch to another "
            f"scheduler, e.g. {other}")
    check_negation(safe, pipe)
    if hasattr(safe, "bind"):
        safe.bind(pipe)
    saved = {name: scheduler.__dict__[name] for name in ("step", "set_timesteps") if name in scheduler.__dict__}
    original_step, original_set_timesteps = scheduler.step, scheduler.set_timesteps

    def set_timesteps(*args, **kwargs):
        safe.reset()
        return original_set_timesteps(*args, **kwargs)

    set_timesteps.__wrapped__ = original_set_timesteps
    safe.reset()
    scheduler.step = _safe_step(safe, scheduler, original_step, pipe, guided)
    scheduler.set_timesteps = set_timesteps
    try:
        yield pipe
    finally:
        for name in ("step", "set_timesteps"):
            if name in saved:
                setattr(scheduler, name, saved[name])
            else:
                scheduler.__dict__.pop(name, None)
