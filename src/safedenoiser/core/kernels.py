"""Kernel-weighted means over a negation set, chunked over the set (DESIGN §1).

Everything here reduces to one routine: for each query row ``x_b`` and set rows ``y_n``

    logit_bn = -||x_b - c_b y_n||^power / bandwidth_b
    mean_b   = sum_n softmax_n(logit_bn) y_n,      log_mass_b = logsumexp_n(logit_bn)

with distances from one matrix product (``||x||^2 - 2 c x.y + c^2 ||y||^2``) and an online
log-sum-exp, so memory is O(set + batch x chunk), never batch x set x dimension.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DEFAULT_CHUNK = 4096


def kernel_mean(x: Tensor, y: Tensor, *, scale: Tensor, bandwidth: Tensor, power: int = 2,
                y_sqnorm: Tensor | None = None, chunk_size: int = DEFAULT_CHUNK,
                with_mean: bool = True) -> tuple[Tensor | None, Tensor]:
    """Softmax-weighted mean of ``y`` [M, D] for each row of ``x`` [B, D], and its log-sum-exp.

    ``scale`` and ``bandwidth`` are per-row tensors [B]; ``power`` is 2 (Gaussian kernel, squared
    distance) or 1 (plain distance, as in the authors' code). Returns ``(mean [B, D], log_mass [B])``;
    the mean is ``None`` (and not computed) when ``with_mean`` is False.
    """
    if power not in (1, 2):
        raise ValueError(f"power must be 1 or 2, got {power}")
    if y_sqnorm is None:
        y_sqnorm = (y * y).sum(1)
    scale, bandwidth = scale.reshape(-1, 1), bandwidth.reshape(-1, 1)
    x_sqnorm, x_scaled = (x * x).sum(1, keepdim=True), x * scale
    run_max = torch.full((x.shape[0], 1), -math.inf, dtype=x.dtype, device=x.device)
    run_sum = torch.zeros((x.shape[0], 1), dtype=x.dtype, device=x.device)
    run_mean = torch.zeros_like(x) if with_mean else None
    for start in range(0, y.shape[0], chunk_size):
        y_c, y2_c = y[start:start + chunk_size], y_sqnorm[start:start + chunk_size]
        # ||x - c y||^2 = ||x||^2 + c^2 ||y||^2 - 2 (c x) . y, one matrix product per chunk
        sq = torch.addmm(x_sqnorm + scale * scale * y2_c[None], x_scaled, y_c.T, alpha=-2.0).clamp_min_(0)
        logits = (sq if power == 2 else sq.sqrt_()).div_(-bandwidth)
        new_max = torch.maximum(run_max, logits.amax(1, keepdim=True))
        decay = torch.exp(run_max - new_max)
        weights = logits.sub_(new_max).exp_()
        run_sum = run_sum * decay + weights.sum(1, keepdim=True)
        if with_mean:
            run_mean = run_mean * decay + weights @ y_c
        run_max = new_max
    return (run_mean / run_sum if with_mean else None), (run_max + run_sum.log()).squeeze(1)


def gaussian_log_density(x: Tensor, y: Tensor, *, alpha: Tensor, variance: Tensor,
                         y_sqnorm: Tensor | None = None, chunk_size: int = DEFAULT_CHUNK,
                         with_mean: bool = True) -> tuple[Tensor | None, Tensor]:
    """The empirical distribution of ``y`` noised to ``x_t = alpha y + N(0, variance I)``.

    Returns ``(posterior mean E[y | x] [B, D], log density log p_t(x) [B])``; with
    ``variance = sigma^2`` the mean is the unsafe denoiser of DESIGN §1:

        D_unsafe(x_t) = sum_n y_n softmax_n( -||x_t - alpha y_n||^2 / (2 sigma^2) )
    """
    mean, log_mass = kernel_mean(x, y, scale=alpha, bandwidth=2 * variance, power=2,
                                 y_sqnorm=y_sqnorm, chunk_size=chunk_size, with_mean=with_mean)
    dim = x.shape[1]
    log_density = log_mass - math.log(y.shape[0]) - 0.5 * dim * torch.log(2 * math.pi * variance)
    return mean, log_density


def squared_distances(x: Tensor, y: Tensor, *, y_sqnorm: Tensor | None = None,
                      chunk_size: int = DEFAULT_CHUNK) -> Tensor:
    """``||x_b - y_n||^2`` [B, M] from one matrix product per chunk of ``y`` (memory O(B x M))."""
    if y_sqnorm is None:
        y_sqnorm = (y * y).sum(1)
    x_sqnorm = (x * x).sum(1, keepdim=True)
    return torch.cat([torch.addmm(x_sqnorm + y_sqnorm[start:start + chunk_size][None], x,
                                  y[start:start + chunk_size].T, alpha=-2.0).clamp_min_(0)
                      for start in range(0, y.shape[0], chunk_size)], 1)
