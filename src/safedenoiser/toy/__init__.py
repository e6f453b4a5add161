"""Gaussian mixtures, where every quantity of the safe denoiser has a closed form (DESIGN §4)."""

from safedenoiser.toy.mixture import GaussianMixture
from safedenoiser.toy.sampling import ancestral_sample, ddim_sample, vp_schedule

__all__ = ["GaussianMixture", "ancestral_sample", "ddim_sample", "vp_schedule"]
