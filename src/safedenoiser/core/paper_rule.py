"""The authors' practical rule (DESIGN §2), reproduced for the paper presets.

Inside a window of high noise levels, with ``x0_hat`` the (guided) denoised estimate:

    k_n = exp(-||x0_hat - y_n|| / (2 h^2))          (plain distance, not squared)
    m   = sum_n k_n,     D_neg = sum_n k_n y_n / (m + 1e-8)
    x0_safe = x0_hat - s * D_neg                      only where m > tau

and the sampler re-noises ``x0_safe`` to the current level with fresh noise, then steps with the
unchanged model output (``renoise = True``).  Unlike the identity, this is a fixed-strength repulsion.
"""

from __future__ import annotations

import torch
from torch import Tensor

from safedenoiser.core.bandwidth import MAX_PAIRWISE_POINTS, calibration_points, distances_to_others
from safedenoiser.core.kernels import kernel_mean
from safedenoiser.negation import NegationSet


class PaperRule:
    """Kernel-mass gate and fixed repulsion of the authors' code.

    ``window`` is the smallest noise-to-signal ratio ``sigma / alpha`` at which the rule still acts
    (SD v1.4's timestep 780 of 1000 is ``sigma / alpha = 4.67``). ``tau=None`` calibrates the gate as
    the ``tau_quantile`` of the leave-one-out mass over the set's own points, minus ``tau_margin``.
    """

    def __init__(self, negation: NegationSet, *, h: float, s: float, window: float,
                 tau: float | None = None, tau_quantile: float = 0.05, tau_margin: float = 0.0):
        self.negation, self.h, self.s, self.window = negation, h, s, window
        self.tau = calibrate_tau(negation, h, tau_quantile) - tau_margin if tau is None else tau

    def __call__(self, x_t: Tensor, alpha: Tensor, sigma: Tensor, x0_hat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``(x0_safe, kernel mass m, acted)``."""
        batch = x0_hat.shape[0]
        x = x0_hat.reshape(batch, -1)
        one = torch.ones(batch, dtype=x.dtype, device=x.device)
        mean, log_mass = kernel_mean(x, self.negation.flat(x.device, x.dtype), scale=one,
                                     bandwidth=one * 2 * self.h ** 2, power=1)
        mass = log_mass.exp()
        d_neg = mean * (mass / (mass + 1e-8))[:, None]
        in_window = (torch.as_tensor(sigma, dtype=x.dtype, device=x.device) /
                     torch.as_tensor(alpha, dtype=x.dtype, device=x.device)).expand(batch) >= self.window
        acted = in_window & (mass > self.tau)
        x0_safe = torch.where(acted[:, None], x - self.s * d_neg, x)
        return x0_safe.reshape(x0_hat.shape), mass, acted


def calibrate_tau(negation: NegationSet, h: float, quantile: float) -> float:
    """The ``quantile`` of the kernel mass ``m(y_i) = sum_{n != i} k(y_i, y_n)`` over the set (a larger
    set: over a random m of its M points, each mass scaled by (M - 1) / (m - 1) to the whole set's)."""
    y = calibration_points(negation.latents, MAX_PAIRWISE_POINTS)
    mass = torch.exp(-distances_to_others(y, "the paper rule's tau", "tau=") / (2 * h * h)).sum(1)
    return float(torch.quantile(mass, quantile)) * (len(negation) - 1) / (len(y) - 1)
