"""Samplers that take any denoiser ``D(x_t, alpha, sigma) -> x0`` (VP process, ``alpha^2 + sigma^2 = 1``)."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]
Callback = Callable[[int, Tensor, Tensor], None]


def vp_schedule(steps: int, ratio_max: float = 1000.0, ratio_min: float = 2e-3,
                dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Noise levels ``(alpha, sigma)`` [steps] with ``sigma / alpha`` geometric from max to min."""
    ratio = torch.exp(torch.linspace(math.log(ratio_max), math.log(ratio_min), steps, dtype=dtype))
    alpha = 1 / torch.sqrt(1 + ratio * ratio)
    return alpha, ratio * alpha


def ddim_sample(denoiser: Denoiser, x: Tensor, alphas: Tensor, sigmas: Tensor, *,
                eta: float = 0.0, generator: torch.Generator | None = None,
                callback: Callback | None = None) -> Tensor:
    """DDIM (Song et al. 2021): deterministic for ``eta = 0``, ancestral (DDPM) for ``eta = 1``.

    Each step: ``x0 = D(x)``, ``eps = (x - alpha x0) / sigma``, then
    ``x' = alpha' x0 + sqrt(sigma'^2 - c^2) eps + c z`` with ``c = eta (sigma'/sigma) sqrt(1 - (alpha/alpha')^2)``;
    the last step returns ``x0``.
    """
    for i in range(len(alphas)):
        a, s = alphas[i], sigmas[i]
        x0 = denoiser(x, a, s)
        if callback is not None:
            callback(i, x, x0)
        if i == len(alphas) - 1:
            return x0
        a_next, s_next = alphas[i + 1], sigmas[i + 1]
        eps = (x - a * x0) / s
        c = eta * (s_next / s) * torch.sqrt((1 - (a / a_next) ** 2).clamp_min(0))
        noise = torch.randn(x.shape, dtype=x.dtype, generator=generator) if eta > 0 else 0.0
        x = a_next * x0 + torch.sqrt(s_next ** 2 - c ** 2) * eps + c * noise
    return x


def ancestral_sample(denoiser: Denoiser, x: Tensor, alphas: Tensor, sigmas: Tensor, *,
                     generator: torch.Generator | None = None, callback: Callback | None = None) -> Tensor:
    """Ancestral (DDPM-like) sampling: DDIM with ``eta = 1``."""
    return ddim_sample(denoiser, x, alphas, sigmas, eta=1.0, generator=generator, callback=callback)


def dpmpp_2m_sample(denoiser: Denoiser, x: Tensor, alphas: Tensor, sigmas: Tensor, *,
                    callback: Callback | None = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022), a deterministic second-order multistep ODE sampler.

    With ``lambda = log(alpha / sigma)``, ``h = lambda' - lambda`` and ``x0_i = D(x_i)``:
    ``D_i = (1 + 1/(2 r)) x0_i - 1/(2 r) x0_{i-1}`` (``r = h_prev / h``; ``D_0 = x0_0``) and
    ``x' = (sigma'/sigma) x - alpha' (exp(-h) - 1) D_i``; the last step returns ``x0``.
    """
    lambdas = torch.log(alphas / sigmas)
    x0_prev, h_prev = None, None
    for i in range(len(alphas)):
        x0 = denoiser(x, alphas[i], sigmas[i])
        if callback is not None:
            callback(i, x, x0)
        if i == len(alphas) - 1:
            return x0
        h = lambdas[i + 1] - lambdas[i]
        if x0_prev is None:
            d = x0
        else:
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - x0_prev / (2 * r)
        x = (sigmas[i + 1] / sigmas[i]) * x - alphas[i + 1] * torch.expm1(-h) * d
        x0_prev, h_prev = x0, h
    return x


# name -> (sampler, default steps); stochastic samplers need more steps for the same accuracy
SAMPLERS: dict[str, tuple[Callable[..., Tensor], int]] = {
    "dpm++": (dpmpp_2m_sample, 60),
    "ddim": (ddim_sample, 100),
    "ancestral": (ancestral_sample, 150),
}


def sample(name: str, denoiser: Denoiser, x: Tensor, steps: int | None = None, *,
           generator: torch.Generator | None = None, callback: Callback | None = None) -> Tensor:
    """Run sampler ``name`` (see `SAMPLERS`) from noise ``x`` over `vp_schedule` levels."""
    fn, default_steps = SAMPLERS[name]
    alphas, sigmas = vp_schedule(steps or default_steps, dtype=x.dtype)
    if fn is dpmpp_2m_sample:
        return fn(denoiser, x, alphas, sigmas, callback=callback)
    return fn(denoiser, x, alphas, sigmas, generator=generator, callback=callback)


def sample_from_seed(name: str, denoiser: Denoiser, n: int, dim: int, seed: int, steps: int | None = None, *,
                     callback: Callback | None = None) -> Tensor:
    """`sample` from ``n`` standard-normal points [n, dim] (float64) drawn from a generator seeded ``seed``,
    which then drives the sampler's own noise: the same seed gives the same run."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, dtype=torch.float64, generator=gen)
    return sample(name, denoiser, x, steps, generator=gen, callback=callback)
