"""Negative guidance: a negative prompt (text models) or a negative class (class models).

    eps = u + g (c - u) - s (n - u)

``u``, ``c``, ``n``: the model's noise predictions unconditionally, for the request and for the
negative concept; ``g`` the classifier-free guidance scale. ``s = g - 1`` is exactly what diffusers
does with ``negative_prompt`` (the negative prompt replaces the empty one: ``n + g (c - n)``); other
``s`` weigh the negative term on its own, as composable diffusion's "NOT" (Liu et al. 2022).
"""

from __future__ import annotations

from torch import Tensor

from safedenoiser.baselines.guidance import guided_sample


class NegativeGuidance:
    """Guidance away from a negative prompt or class; ``scale=None`` means ``g - 1`` (diffusers)."""

    def __init__(self, scale: float | None = None):
        self.scale = scale

    def __call__(self, u: Tensor, c: Tensor, n: Tensor, *, guidance_scale: float, step: int,
                 num_steps: int, state: dict) -> Tensor:
        s = guidance_scale - 1.0 if self.scale is None else self.scale
        return u + guidance_scale * (c - u) - s * (n - u)

    def sample(self, pipe, **kwargs) -> Tensor:
        """`guided_sample` with this rule (``prompts=``/``labels=``, ``negative=``, ...)."""
        return guided_sample(pipe, self, **kwargs)
