"""safe-denoiser: training-free safe denoisers (Kim et al., arXiv 2502.08011) for diffusers models."""

from safedenoiser.core.local import LocalPosterior
from safedenoiser.core.safe_denoiser import SafeDenoiser
from safedenoiser.errors import SafeDenoiserError
from safedenoiser.negation import NegationSet

__all__ = ["LocalPosterior", "NegationSet", "SafeDenoiser", "SafeDenoiserError"]
__version__ = "0.1.0"
