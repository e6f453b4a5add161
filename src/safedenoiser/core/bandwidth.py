"""Calibrate from the negation set itself (no user tuning): the kernel bandwidth, and the pairwise
distances every other calibration (thresholds, radii) reads."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from safedenoiser.errors import SafeDenoiserError

MAX_CALIBRATION_POINTS = 1024  # the bandwidth's likelihood search
MAX_PAIRWISE_POINTS = 2048  # thresholds and radii


def calibration_points(latents: Tensor, max_points: int, *, seed: int = 0) -> Tensor:
    """The set's rows flattened to [M, D] float64, or a fixed random ``max_points`` of them for a larger
    set: pairwise calibrations cost O(max_points^2) for any set size."""
    y = latents.reshape(latents.shape[0], -1).double()
    if y.shape[0] > max_points:
        y = y[torch.randperm(y.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]]
    return y


def distances_to_others(y: Tensor, what: str, instead: str) -> Tensor:
    """[m, m] distances between the rows of ``y``, each row's own entry +inf (leave-one-out). A set of
    fewer than two points is refused, naming the calibration (``what``) and the way around it (``instead``)."""
    if y.shape[0] < 2:
        raise SafeDenoiserError(f"{what} is calibrated from distances between the negation set's images, and "
                                f"the set has {y.shape[0]}: give at least 2 images, or {instead}")
    return torch.cdist(y, y).fill_diagonal_(math.inf)


def loo_log_likelihood(distances: Tensor, dim: int, bandwidths: Tensor) -> Tensor:
    """Leave-one-out log-likelihood per point of a Gaussian KDE of M points in ``dim`` dimensions, per
    bandwidth, from their `distances_to_others` [M, M]."""
    sq, m = distances.square(), distances.shape[0]
    out = []
    for h in bandwidths:
        log_k = torch.logsumexp(-sq / (2 * h * h), dim=1) - math.log(m - 1)
        out.append(log_k - 0.5 * dim * math.log(2 * math.pi * float(h) ** 2))
    return torch.stack(out)  # [H, M]


def calibrate_bandwidth(y: Tensor, *, seed: int = 0, grid: int = 24) -> float:
    """Per-coordinate standard deviation ``h`` of the KDE that maximises the held-out likelihood.

    Searches a log grid around the median nearest-neighbour distance; a subsample of at most
    1,024 points keeps the cost O(1024^2) for any set size. A single image gets its own spread.
    """
    y = calibration_points(y, MAX_CALIBRATION_POINTS, seed=seed)
    if y.shape[0] < 2:
        return float(y.std()) if y.numel() > 1 else 1.0
    distances = distances_to_others(y, "the bandwidth", "bandwidth=")
    scale = float(distances.min(1).values.median()) / math.sqrt(y.shape[1])
    scale = scale if scale > 0 else 1e-3
    bandwidths = scale * torch.logspace(-1.5, 1.0, grid, dtype=torch.float64)
    scores = loo_log_likelihood(distances, y.shape[1], bandwidths).mean(1)
    return float(bandwidths[int(scores.argmax())])
