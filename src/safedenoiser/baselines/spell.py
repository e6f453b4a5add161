"""SPELL: sparse repellency (Kirchhof et al., "Shielded Diffusion: Generating Novel and Diverse
Images using Sparse Repellency", 2025), as a corrector of the denoised estimate.

At every step, the denoised estimate is pushed out of a ball of radius ``r`` around each
negation point it falls into:

    x0' = x0 + sum_n relu(r - ||x0 - y_n||) (x0 - y_n) / ||x0 - y_n||

Points farther than ``r`` from every ``y_n`` are untouched (the repellency is sparse). `Spell` has
the interface of `SafeDenoiser` that `safedenoiser.integrations.diffusers.attach` drives
(``correct``, ``reset``, ``trace``, ``sample_shape``, ``negation``), so ``with spell.attach(pipe): pipe(...)``
works on every pipeline and scheduler the safe denoiser supports.
"""

from __future__ import annotations

import torch
from torch import Tensor

from safedenoiser.core.bandwidth import MAX_PAIRWISE_POINTS, calibration_points, distances_to_others
from safedenoiser.core.kernels import FlatSet, squared_distances
from safedenoiser.core.safe_denoiser import Correction, StepRecord
from safedenoiser.errors import SafeDenoiserError
from safedenoiser.negation import NegationSet

DEFAULT_CHUNK = 4096


def repel(x: Tensor, y: FlatSet, radius: float, *, chunk_size: int = DEFAULT_CHUNK) -> tuple[Tensor, Tensor]:
    """``x + sum_n relu(r - ||x - y_n||) (x - y_n) / ||x - y_n||`` for rows of ``x`` [B, D].

    Returns ``(x', hits)`` with ``hits`` [B] the number of balls each row fell into. Chunked over
    the set: distances from one matrix product per chunk, memory O(B x chunk).
    """
    push_coef = torch.zeros((x.shape[0], 1), dtype=x.dtype, device=x.device)  # sum_n c_bn
    pull = torch.zeros_like(x)  # sum_n c_bn y_n
    hits = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, len(y.rows), chunk_size):
        chunk = y.part(start, start + chunk_size)
        dist = squared_distances(x, chunk).sqrt_()
        inside = dist < radius
        # c_bn = relu(r - d) / d; a point exactly on y_n has no direction: leave it (c = 0)
        coef = torch.where(inside & (dist > 0), (radius - dist) / dist.clamp_min(1e-12), torch.zeros_like(dist))
        push_coef += coef.sum(1, keepdim=True)
        pull += coef @ chunk.rows
        hits += inside.sum(1)
    return x + push_coef * x - pull, hits


def calibrate_radius(negation: NegationSet, quantile: float = 0.5, max_points: int = MAX_PAIRWISE_POINTS) -> float:
    """The ``quantile`` of the set's leave-one-out nearest-neighbour distances (in its own space).

    A sample of the negated kind lies about as far from its nearest set point as set points lie
    from each other, so the median covers about half of them, a high quantile nearly all.
    """
    y = calibration_points(negation.latents, max_points)
    nn = distances_to_others(y, "SPELL's radius", "radius=").min(1).values
    return float(torch.quantile(nn, quantile))


class Spell:
    """Sparse repellency of the denoised estimate from a negation set.

    Args:
        negation: the points to keep away from (a `NegationSet`, in the space the model denoises).
        radius: the repellency radius; ``None`` calibrates it as ``radius_scale`` times the
            ``quantile`` of the set's nearest-neighbour distances (`calibrate_radius`).
        min_sigma: act only while ``sigma / alpha >= min_sigma`` (0: at every step, as SPELL does).
    """

    def __init__(self, negation: NegationSet, *, radius: float | None = None, quantile: float = 0.9,
                 radius_scale: float = 1.0, min_sigma: float = 0.0, chunk_size: int = DEFAULT_CHUNK):
        if not isinstance(negation, NegationSet):
            raise SafeDenoiserError("Spell needs a NegationSet (its points are what it repels from)")
        self.negation = negation
        self.radius = radius_scale * (calibrate_radius(negation, quantile) if radius is None else radius)
        if not self.radius > 0:
            raise SafeDenoiserError(f"the SPELL radius must be positive, got {self.radius}")
        self.min_sigma, self.chunk_size = min_sigma, chunk_size
        self.trace: list[StepRecord] = []

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.negation.sample_shape

    def correct(self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float, x0_hat: Tensor, *,
                guided: bool = False, within_step: bool = False) -> Correction:
        """Repel ``x0_hat``; ``beta`` carries the number of balls each sample fell into. ``guided`` and
        ``within_step`` (part of the `attach` protocol) change nothing: the repellency is the same with or
        without guidance, and it holds nothing from one call to the next."""
        dtype = torch.float64 if x0_hat.dtype == torch.float64 else torch.float32
        batch = x0_hat.shape[0]
        x = x0_hat.reshape(batch, -1).to(dtype)
        a, s = float(torch.as_tensor(alpha).reshape(-1)[0]), float(torch.as_tensor(sigma).reshape(-1)[0])
        if s / max(a, 1e-12) >= self.min_sigma:
            moved, hits = repel(x, self.negation.flat(x.device, dtype), self.radius, chunk_size=self.chunk_size)
        else:
            moved, hits = x, torch.zeros(batch, dtype=torch.long, device=x.device)
        acted = hits > 0
        self.trace.append(StepRecord(sigma=s, alpha=a, beta_mean=float(hits.double().mean()),
                                     beta_max=float(hits.max()), acted=int(acted.sum()), batch=batch))
        return Correction(moved.reshape(x0_hat.shape).to(x0_hat.dtype), hits.to(dtype), acted, False)

    def reset(self) -> None:
        """Start a new sampling run: an empty `trace`."""
        self.trace = []

    def attach(self, pipe):
        """Context manager: sample ``pipe`` with repellency (wraps ``pipe.scheduler.step``)."""
        from safedenoiser.integrations.diffusers import attach

        return attach(self, pipe)
