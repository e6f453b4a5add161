"""Paper presets: the authors' settings (DESIGN §2) for their practical rule."""

from __future__ import annotations

from safedenoiser.errors import SafeDenoiserError

# window = sigma / alpha at the last timestep where the rule acts: SD v1.4 DDPM t=780 -> 4.67;
# SD3 flow matching t=880 -> 0.88 / 0.12 = 7.33.
PRESETS: dict[str, dict[str, float]] = {
    "sd14-nudity": {"h": 3.15, "s": 0.33, "window": 4.67},
    "sd14-copro": {"h": 3.55, "s": 0.03, "window": 4.67},
    "sd3-nudity": {"h": 2.75, "s": 0.03, "window": 7.33},
    "sd14-memorization": {"h": 13.15, "s": 0.69, "window": 4.67},
}
PAPER_PARAMS = ("h", "s", "window", "tau", "tau_quantile", "tau_margin")
PAPER_SCHEDULER = "DDPMScheduler"  # the authors' sampler


def resolve_preset(preset: str | None, overrides: dict[str, float]) -> dict[str, float]:
    """The paper rule's parameters: a preset's values, overridden by explicit ones."""
    unknown = set(overrides) - set(PAPER_PARAMS)
    if unknown:
        raise SafeDenoiserError(f"unknown parameter(s) {sorted(unknown)}; the paper rule takes {PAPER_PARAMS}")
    if preset is None:
        params: dict[str, float] = {}
    elif preset in PRESETS:
        params = dict(PRESETS[preset])
    else:
        raise SafeDenoiserError(f"unknown preset {preset!r}; available: {', '.join(PRESETS)}")
    params.update(overrides)
    missing = {"h", "s", "window"} - set(params)
    if missing:
        raise SafeDenoiserError(f"the paper rule needs {sorted(missing)}: give a preset or set them")
    return params
