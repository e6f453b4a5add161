"""Safe Latent Diffusion's safety guidance (Schramowski et al., CVPR 2023), for any pipeline
`guided_sample` drives (real Stable Diffusion has it as diffusers' ``StableDiffusionPipelineSafe``).

With ``u``, ``c``, ``n`` the noise predictions unconditionally, for the prompt and for the safety
concept, per element:

    scale   = min(|c - n| * sld_guidance_scale, 1),  zero where c - n >= threshold
    safety  = scale * (n - u) + momentum_scale * momentum
    momentum <- mom_beta * momentum + (1 - mom_beta) * safety
    eps     = u + g (c - u - safety)      (safety subtracted only after the warm-up steps)

The presets are the paper's (and diffusers' ``SafetyConfig``), for 50 steps; with another number of
steps the warm-up keeps its share of the run.
"""

from __future__ import annotations

import torch
from torch import Tensor

from safedenoiser.baselines.guidance import guided_sample
from safedenoiser.errors import SafeDenoiserError

SLD_PRESETS: dict[str, dict[str, float]] = {
    "weak": {"warmup": 15, "guidance": 20, "threshold": 0.0, "momentum_scale": 0.0, "mom_beta": 0.0},
    "medium": {"warmup": 10, "guidance": 1000, "threshold": 0.01, "momentum_scale": 0.3, "mom_beta": 0.4},
    "strong": {"warmup": 7, "guidance": 2000, "threshold": 0.025, "momentum_scale": 0.5, "mom_beta": 0.7},
    "max": {"warmup": 0, "guidance": 5000, "threshold": 1.0, "momentum_scale": 0.5, "mom_beta": 0.7},
}
PRESET_STEPS = 50


class SafetyGuidance:
    """SLD's safety guidance; ``preset`` one of weak, medium, strong, max (keyword overrides)."""

    def __init__(self, preset: str = "medium", **overrides: float):
        if preset not in SLD_PRESETS:
            raise SafeDenoiserError(f"unknown SLD preset {preset!r}; available: {', '.join(SLD_PRESETS)}")
        unknown = set(overrides) - set(SLD_PRESETS[preset])
        if unknown:
            raise SafeDenoiserError(f"unknown SLD parameter(s) {sorted(unknown)}; use {sorted(SLD_PRESETS[preset])}")
        params = dict(SLD_PRESETS[preset], **overrides)
        self.preset = preset
        self.warmup, self.guidance, self.threshold = params["warmup"], params["guidance"], params["threshold"]
        self.momentum_scale, self.mom_beta = params["momentum_scale"], params["mom_beta"]

    def warmup_steps(self, num_steps: int) -> int:
        """The preset's warm-up (given for 50 steps) at ``num_steps`` steps."""
        return round(self.warmup * num_steps / PRESET_STEPS)

    def __call__(self, u: Tensor, c: Tensor, n: Tensor, *, guidance_scale: float, step: int,
                 num_steps: int, state: dict) -> Tensor:
        diff = c - n
        scale = torch.clamp(diff.abs() * self.guidance, max=1.0)
        scale = torch.where(diff >= self.threshold, torch.zeros_like(scale), scale)
        momentum = state.get("momentum")
        momentum = torch.zeros_like(u) if momentum is None else momentum
        safety = (n - u) * scale + self.momentum_scale * momentum
        state["momentum"] = self.mom_beta * momentum + (1 - self.mom_beta) * safety
        guidance = c - u
        if step >= self.warmup_steps(num_steps):
            guidance = guidance - safety
        return u + max(guidance_scale, 1.0) * guidance

    def sample(self, pipe, **kwargs) -> Tensor:
        """`guided_sample` with this rule (``prompts=``/``labels=``, ``negative=`` the safety concept)."""
        return guided_sample(pipe, self, **kwargs)
