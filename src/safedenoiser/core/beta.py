"""Estimators of ``beta(x_t) = P(unsafe | x_t) = b p_unsafe,t(x_t) / p_t(x_t)`` (DESIGN §1).

Each estimator is called as ``beta(x_t, alpha, sigma, x0_hat, unsafe) -> [B]`` where ``x0_hat`` is
the model's ``D(x_t)`` and ``unsafe`` the negation set's posterior at ``x_t`` (`UnsafePosterior`).
Parameters that are not given are calibrated from the sets themselves.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

import torch
from torch import Tensor

from safedenoiser.core.kernels import gaussian_log_density, kernel_mean
from safedenoiser.errors import SafeDenoiserError
from safedenoiser.negation import NegationSet, UnsafePosterior


class BetaEstimator(Protocol):
    def __call__(self, x_t: Tensor, alpha: Tensor, sigma: Tensor, x0_hat: Tensor,
                 unsafe: UnsafePosterior) -> Tensor: ...


class ExactBeta:
    """Known densities (Gaussian mixtures): ``beta = fn(x_t, alpha, sigma)``."""

    def __init__(self, fn: Callable[[Tensor, Tensor, Tensor], Tensor]):
        self.fn = fn

    def __call__(self, x_t, alpha, sigma, x0_hat, unsafe):
        return self.fn(x_t, alpha, sigma)


class ConstantBeta:
    """``beta`` fixed everywhere: the identity becomes plain negative guidance of weight b/(1-b)."""

    def __init__(self, value: float):
        if not 0.0 <= value < 1.0:
            raise SafeDenoiserError(f"a constant beta must lie in [0, 1), got {value}")
        self.value = value

    def __call__(self, x_t, alpha, sigma, x0_hat, unsafe):
        return torch.full((x_t.shape[0],), self.value, dtype=x_t.dtype, device=x_t.device)


class KernelRatioBeta:
    """Density ratio of kernel estimates: negation set against a reference set of ordinary samples.

        beta(x_t) = b * p_unsafe,t(x_t) / p_ref,t(x_t)

    Both densities are the sets' kernel estimates noised to level t (exact Gaussians in ``x_t``).
    The reference set stands for ``p`` itself (samples the model generated), so it contains unsafe
    samples at rate ``b``. Deep inside the negated region ``p = b p_unsafe``, hence the prior
    ``b = median_n p_ref(y_n) / p_unsafe(y_n)`` over the negation points (leave-one-out).
    """

    def __init__(self, negation: NegationSet, reference: Tensor | NegationSet, *,
                 prior: float | None = None, smoothing: float | None = None):
        self.reference = reference if isinstance(reference, NegationSet) else NegationSet(torch.as_tensor(reference).float())
        if self.reference.sample_shape != negation.sample_shape:
            raise SafeDenoiserError(f"reference samples have shape {self.reference.sample_shape}, the negation "
                                    f"set {negation.sample_shape}; both must live in the model's space")
        self.smoothing = negation.bandwidth if smoothing is None else smoothing
        self.prior = estimate_prior(negation, self.reference, self.smoothing) if prior is None else prior

    def __call__(self, x_t, alpha, sigma, x0_hat, unsafe):
        log_ref = self.reference.posterior(x_t, alpha, sigma, smoothing=self.smoothing).log_density
        log_beta = math.log(max(self.prior, 1e-300)) + unsafe.log_density - log_ref
        return log_beta.clamp(max=0.0).exp()


def estimate_prior(negation: NegationSet, reference: NegationSet, smoothing: float) -> float:
    """``b``: the median over negation points of ``p_ref(y_n) / p_unsafe(y_n)`` at t = 0, in [1/R, 1]."""
    y = negation.latents.reshape(len(negation), -1).double()[:2048]
    r = reference.latents.reshape(len(reference), -1).double()
    var = torch.tensor(smoothing ** 2, dtype=torch.float64)
    one = torch.ones(y.shape[0], dtype=torch.float64)
    _, log_ref = gaussian_log_density(y, r, alpha=one, variance=var.expand(y.shape[0]))
    sq = torch.cdist(y, y).square().fill_diagonal_(math.inf)
    log_neg = (torch.logsumexp(-sq / (2 * var), 1) - math.log(max(y.shape[0] - 1, 1))
               - 0.5 * y.shape[1] * torch.log(2 * math.pi * var))
    ratio = float((log_ref - log_neg).median().exp())
    return min(max(ratio, 1.0 / len(reference)), 1.0)


class KernelGateBeta:
    """Reference-free: membership of the denoised estimate in the negation set's kernel support.

        beta(x_t) = sigmoid( (log p_hat_unsafe(D(x_t)) - tau) / T )

    ``p_hat_unsafe`` is the set's kernel density estimate (bandwidth calibrated on the set); ``tau``
    is the ``quantile`` of its leave-one-out log-density over the set's own points and ``T`` a
    tenth of the spread between the median and that quantile.
    """

    def __init__(self, negation: NegationSet, *, quantile: float = 0.05):
        self.negation = negation
        h = negation.bandwidth
        y = negation.latents.reshape(len(negation), -1).double()[:2048]
        sq = torch.cdist(y, y).square().fill_diagonal_(math.inf)
        loo = torch.logsumexp(-sq / (2 * h * h), 1)
        self.tau = float(torch.quantile(loo, quantile))
        self.temperature = max(float(loo.median()) - self.tau, 1e-3) / 10

    def __call__(self, x_t, alpha, sigma, x0_hat, unsafe):
        h = self.negation.bandwidth
        x = x0_hat.reshape(x0_hat.shape[0], -1)
        y, y_sq = self.negation.flat(x.device, x.dtype)
        one = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        _, log_mass = kernel_mean(x, y, scale=one, bandwidth=one * 2 * h * h, y_sqnorm=y_sq)
        return torch.sigmoid((log_mass - self.tau) / self.temperature)
