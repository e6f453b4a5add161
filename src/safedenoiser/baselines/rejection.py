"""Rejection sampling with an oracle: resample every image the oracle flags, with fresh seeds.

The cost is what it buys safety with: each rejected image costs a whole extra sampling run.
`RejectionSampler` reports the attempts per image so that evaluations can count them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from safedenoiser.errors import SafeDenoiserError

SEED_STRIDE = 1_000_003  # round r re-draws image i with seed + r * SEED_STRIDE


@dataclass
class RejectionResult:
    images: Tensor  # [N, ...] the last draw of each image (accepted, or the last rejected one)
    attempts: Tensor  # [N] sampling runs spent on each image
    accepted: Tensor  # [N] bool: False where every attempt was flagged

    @property
    def mean_attempts(self) -> float:
        return float(self.attempts.double().mean())


class RejectionSampler:
    """``sample(seeds) -> images``, ``is_unsafe(images) -> bool [N]``; at most ``max_attempts`` per image."""

    def __init__(self, sample: Callable[[Sequence[int]], Tensor], is_unsafe: Callable[[Tensor], Tensor], *,
                 max_attempts: int = 10):
        if max_attempts < 1:
            raise SafeDenoiserError(f"max_attempts must be at least 1, got {max_attempts}")
        self.sample, self.is_unsafe, self.max_attempts = sample, is_unsafe, max_attempts

    def __call__(self, seeds: Sequence[int]) -> RejectionResult:
        seeds = list(seeds)
        images = self.sample(seeds)
        attempts = torch.ones(len(seeds), dtype=torch.long)
        flagged = torch.as_tensor(self.is_unsafe(images), dtype=torch.bool).reshape(-1).cpu()
        for round_ in range(1, self.max_attempts):
            todo = flagged.nonzero().flatten().tolist()
            if not todo:
                break
            redraw = self.sample([seeds[i] + round_ * SEED_STRIDE for i in todo])
            images[todo] = redraw.to(images.dtype)
            attempts[todo] += 1
            flagged[todo] = torch.as_tensor(self.is_unsafe(redraw), dtype=torch.bool).reshape(-1).cpu()
        return RejectionResult(images, attempts, ~flagged)
