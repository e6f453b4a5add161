"""Model outputs <-> the data denoiser D(x_t) = E[x0 | x_t] (DESIGN §1).

Forward process: ``x_t = alpha * x0 + sigma * eps``.  VP: ``alpha^2 + sigma^2 = 1``; VE/EDM:
``alpha = 1``; rectified flow (SD3): ``alpha = 1 - t``, ``sigma = t``.  ``alpha`` and ``sigma`` are
tensors that broadcast against ``x_t`` (a scalar, or one value per sample).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from safedenoiser.errors import SafeDenoiserError

Prediction = Literal["epsilon", "v_prediction", "sample", "flow"]
PREDICTIONS: tuple[str, ...] = ("epsilon", "v_prediction", "sample", "flow")


def per_sample(value: Tensor | float, x: Tensor) -> Tensor:
    """Shape a scalar or per-sample noise level ``[B]`` so that it broadcasts against ``x``."""
    value = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if value.ndim == 0:
        return value
    return value.reshape(-1, *([1] * (x.ndim - 1)))


def to_x0(output: Tensor, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float,
          prediction: Prediction) -> Tensor:
    """Convert a model output to the denoised estimate ``D(x_t)``.

    eps:  D = (x_t - sigma eps) / alpha
    v:    v = alpha eps - sigma x0          =>  D = (alpha x_t - sigma v) / (alpha^2 + sigma^2)
    flow: v = eps - x0                      =>  D = (x_t - sigma v) / (alpha + sigma)
    """
    a, s = per_sample(alpha, x_t), per_sample(sigma, x_t)
    if prediction == "epsilon":
        return (x_t - s * output) / a
    if prediction == "v_prediction":
        return (a * x_t - s * output) / (a * a + s * s)
    if prediction == "flow":
        return (x_t - s * output) / (a + s)
    if prediction == "sample":
        return output
    raise SafeDenoiserError(f"unknown prediction type {prediction!r}; expected one of {PREDICTIONS}")


def from_x0(x0: Tensor, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float,
            prediction: Prediction) -> Tensor:
    """Inverse of `to_x0`: the model output that a denoised estimate ``x0`` corresponds to."""
    a, s = per_sample(alpha, x_t), per_sample(sigma, x_t)
    if prediction == "sample":
        return x0
    eps = (x_t - a * x0) / s
    if prediction == "epsilon":
        return eps
    if prediction == "v_prediction":
        return a * eps - s * x0
    if prediction == "flow":
        return eps - x0
    raise SafeDenoiserError(f"unknown prediction type {prediction!r}; expected one of {PREDICTIONS}")


def edm_to_x0(output: Tensor, x_t: Tensor, sigma: Tensor | float, sigma_data: float,
              prediction: Prediction) -> Tensor:
    """``D(x_t)`` from EDM's preconditioned output ``F`` (Karras et al. 2022; VE levels, ``alpha = 1``):

        D = c_skip x_t + c_out F,   c_skip = sd^2 / (sigma^2 + sd^2),   c_out = +- sigma sd / sqrt(sigma^2 + sd^2)

    with ``sd = sigma_data``, ``+`` for diffusers' EDM ``"epsilon"`` and ``-`` for its ``"v_prediction"``.
    """
    c_skip, c_out = _edm_coefficients(x_t, sigma, sigma_data, prediction)
    return c_skip * x_t + c_out * output


def edm_from_x0(x0: Tensor, x_t: Tensor, sigma: Tensor | float, sigma_data: float, prediction: Prediction) -> Tensor:
    """Inverse of `edm_to_x0`: ``F = (D - c_skip x_t) / c_out``."""
    c_skip, c_out = _edm_coefficients(x_t, sigma, sigma_data, prediction)
    return (x0 - c_skip * x_t) / c_out


def _edm_coefficients(x_t: Tensor, sigma: Tensor | float, sigma_data: float,
                      prediction: Prediction) -> tuple[Tensor, Tensor]:
    if prediction not in ("epsilon", "v_prediction"):
        raise SafeDenoiserError(f"EDM preconditioning takes 'epsilon' or 'v_prediction', got {prediction!r}")
    s = per_sample(sigma, x_t)
    total = s * s + sigma_data * sigma_data
    c_out = s * sigma_data / total.sqrt()
    return sigma_data * sigma_data / total, c_out if prediction == "epsilon" else -c_out


def vp_levels(alphas_cumprod: Tensor) -> tuple[Tensor, Tensor]:
    """VP (DDPM) noise levels from the cumulative product of alphas: ``(sqrt(a_bar), sqrt(1 - a_bar))``."""
    return alphas_cumprod.sqrt(), (1 - alphas_cumprod).sqrt()


def ve_levels(sigma: Tensor) -> tuple[Tensor, Tensor]:
    """VE / EDM noise levels: ``alpha = 1``."""
    return torch.ones_like(sigma), sigma


def flow_levels(t: Tensor) -> tuple[Tensor, Tensor]:
    """Rectified-flow noise levels (SD3): ``alpha = 1 - t``, ``sigma = t``."""
    return 1 - t, t
