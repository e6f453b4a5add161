"""Alternatives to the safe denoiser that a user could pick, as library code (issue 5).

- `Spell`: sparse repellency (a corrector like `SafeDenoiser`, driven by the same ``attach``);
- `NegativeGuidance`: negative class / negative prompt guidance;
- `SafetyGuidance`: Safe Latent Diffusion's safety guidance (Schramowski et al. 2023);
- `RejectionSampler`: resample what an oracle flags, counting the extra model evaluations.

`guided_sample` is the one sampling loop the two guidance rules share: it evaluates the UNet on
``[unconditional, conditional, negative]`` and hands the three predictions to a rule.
"""

from safedenoiser.baselines.guidance import GuidanceRule, guided_sample
from safedenoiser.baselines.negative_guidance import NegativeGuidance
from safedenoiser.baselines.rejection import RejectionResult, RejectionSampler
from safedenoiser.baselines.sld import SLD_PRESETS, SafetyGuidance
from safedenoiser.baselines.spell import Spell

__all__ = ["GuidanceRule", "NegativeGuidance", "RejectionResult", "RejectionSampler", "SLD_PRESETS",
           "SafetyGuidance", "Spell", "guided_sample"]
