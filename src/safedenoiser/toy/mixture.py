"""Gaussian mixtures noised by ``x_t = alpha x0 + sigma eps``: exact ``p_t``, ``D``, ``D_unsafe``, ``beta``.

Component k is ``N(mu_k, Sigma_k)`` with ``Sigma_k = U_k diag(lam_k) U_k^T``. At level (alpha, sigma),
with ``z = U_k^T (x - alpha mu_k)`` and ``c = alpha^2 lam_k + sigma^2``:

    log N_k(x)      = -1/2 sum z^2 / c - 1/2 sum log(2 pi c)
    E[x0 | x, k]    = mu_k + U_k (alpha lam_k / c * z)
    D(x)            = sum_k r_k(x) E[x0 | x, k],   r_k = softmax_k(log pi_k + log N_k(x))
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from safedenoiser.negation import UnsafePosterior


class GaussianMixture:
    """A mixture of full-covariance Gaussians in ``dim`` dimensions (float64 throughout)."""

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.weights = self.weights / self.weights.sum()
        self.means = torch.as_tensor(means, dtype=torch.float64)  # [K, D]
        self.covs = torch.as_tensor(covs, dtype=torch.float64)  # [K, D, D]
        self.eigvals, self.eigvecs = torch.linalg.eigh(self.covs)  # [K, D], [K, D, D]

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def __len__(self) -> int:
        return self.means.shape[0]

    def subset(self, components: Sequence[int]) -> "GaussianMixture":
        """The mixture restricted to ``components``, weights renormalised."""
        idx = torch.as_tensor(list(components), dtype=torch.long)
        return GaussianMixture(self.weights[idx], self.means[idx], self.covs[idx])

    # ----------------------------------------------------------------- noised densities
    def _components(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        """Per-component ``log pi_k + log N_k(x)`` [B, K] and ``E[x0 | x, k]`` [B, K, D]."""
        x = x.to(torch.float64)
        a = torch.as_tensor(alpha, dtype=torch.float64).expand(x.shape[0])[:, None, None]
        s = torch.as_tensor(sigma, dtype=torch.float64).expand(x.shape[0])[:, None, None]
        diff = x[:, None, :] - a * self.means[None]  # [B, K, D]
        z = torch.einsum("kde,bkd->bke", self.eigvecs, diff)  # U_k^T (x - a mu_k)
        c = a * a * self.eigvals[None] + s * s  # [B, K, D]
        log_n = -0.5 * (z * z / c).sum(-1) - 0.5 * torch.log(2 * math.pi * c).sum(-1)
        post = self.means[None] + torch.einsum("kde,bke->bkd", self.eigvecs, a * self.eigvals[None] / c * z)
        return self.weights.log()[None] + log_n, post

    def log_prob(self, x: Tensor, alpha: Tensor | float = 1.0, sigma: Tensor | float = 0.0) -> Tensor:
        """``log p_t(x)`` [B]."""
        return torch.logsumexp(self._components(x, alpha, sigma)[0], dim=1)

    def responsibilities(self, x: Tensor, alpha: Tensor | float = 1.0, sigma: Tensor | float = 0.0) -> Tensor:
        """``P(component k | x_t)`` [B, K]."""
        return torch.softmax(self._components(x, alpha, sigma)[0], dim=1)

    def denoise(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
        """The exact data denoiser ``D(x_t) = E[x0 | x_t]``."""
        logits, post = self._components(x, alpha, sigma)
        return (torch.softmax(logits, 1)[..., None] * post).sum(1).to(x.dtype)

    def posterior(self, x_t: Tensor, alpha: Tensor, sigma: Tensor, *, smoothing: float = 0.0) -> UnsafePosterior:
        """`UnsafeModel` protocol: ``D(x_t)`` and ``log p_t(x_t)`` of this mixture (``smoothing`` unused)."""
        logits, post = self._components(x_t, alpha, sigma)
        mean = (torch.softmax(logits, 1)[..., None] * post).sum(1)
        return UnsafePosterior(mean.to(x_t.dtype), torch.logsumexp(logits, 1).to(x_t.dtype))

    def beta(self, x: Tensor, alpha: Tensor, sigma: Tensor, negated: Sequence[int]) -> Tensor:
        """Exact ``beta(x_t) = P(negated components | x_t)``."""
        return self.responsibilities(x, alpha, sigma)[:, list(negated)].sum(1).to(x.dtype)

    # ----------------------------------------------------------------- sampling
    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` exact samples [n, D] and their component indices [n]."""
        comp = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, dtype=torch.float64, generator=generator)
        scaled = self.eigvecs[comp] @ (self.eigvals[comp].clamp_min(0).sqrt() * eps)[..., None]
        return self.means[comp] + scaled[..., 0], comp
