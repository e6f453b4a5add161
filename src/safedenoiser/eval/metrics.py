"""Metrics of a sample set: small pure functions, each tested against hand-computed cases.

- `unsafe_rate`: share of samples a judge flags;
- `accuracy`: share of benign requests whose samples the classifier assigns to the requested class;
- `frechet_distance`: the FID formula on any features (here the judge classifier's 128-d layer),
  ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)``;
- `class_histogram`, `tv_distance`: class proportions and half their L1 distance;
- `copy_check`, `near_copies`, `near_copy_share`: what a copy of an image looks like through the VAE and how near a
  sample must be to count as one; the share of samples that are.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def unsafe_rate(flags: Tensor) -> float:
    """Share of ``True`` in a boolean vector (0 for an empty one)."""
    flags = torch.as_tensor(flags).reshape(-1)
    return float(flags.double().mean()) if flags.numel() else 0.0


def accuracy(predicted: Tensor, requested: Tensor) -> float:
    """Share of samples whose predicted class equals the requested one."""
    predicted, requested = torch.as_tensor(predicted).reshape(-1), torch.as_tensor(requested).reshape(-1)
    if predicted.shape != requested.shape:
        raise ValueError(f"{predicted.numel()} predictions for {requested.numel()} requests")
    return float((predicted == requested).double().mean()) if predicted.numel() else 0.0


def class_histogram(predicted: Tensor, num_classes: int) -> Tensor:
    """Class proportions [num_classes] (float64, summing to 1) of a vector of class indices."""
    counts = torch.bincount(torch.as_tensor(predicted).reshape(-1).long(), minlength=num_classes)[:num_classes]
    return counts.double() / max(int(counts.sum()), 1)


def tv_distance(p: Tensor, q: Tensor, *, exclude: int | list[int] | None = None) -> float:
    """Total-variation distance ``0.5 sum |p - q|``; ``exclude`` drops classes and renormalises both first.

    With ``exclude`` = the negated class this compares how the *other* classes are shared out.
    """
    p, q = torch.as_tensor(p, dtype=torch.float64).clone(), torch.as_tensor(q, dtype=torch.float64).clone()
    if exclude is not None:
        keep = torch.ones_like(p, dtype=torch.bool)
        keep[torch.as_tensor(exclude)] = False
        p, q = p[keep], q[keep]
        p, q = p / p.sum().clamp_min(1e-300), q / q.sum().clamp_min(1e-300)
    return float(0.5 * (p - q).abs().sum())


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((a + a.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(a: Tensor, b: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` [N, D] and ``b`` [M, D].

    ``||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a^1/2 S_b S_a^1/2)^1/2)`` with unbiased
    covariances, in float64 through symmetric eigendecompositions (no complex parts to drop).
    """
    a = torch.as_tensor(a, dtype=torch.float64).cpu().numpy()
    b = torch.as_tensor(b, dtype=torch.float64).cpu().numpy()
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature sets [N>=2, D] of the same D, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _sqrtm_psd(s_a)
    cross = _sqrtm_psd(root_a @ s_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(cross))


def nearest(x: Tensor, protected: Tensor) -> tuple[Tensor, Tensor]:
    """RMS distance per coordinate from each row of ``x`` to its nearest row of ``protected``, and that
    row's index ([N] each; empty for no rows)."""
    x = torch.as_tensor(x, dtype=torch.float64).flatten(1)
    protected = torch.as_tensor(protected, dtype=torch.float64).flatten(1)
    distance, index = torch.cdist(x, protected).min(1)
    return distance / x.shape[1] ** 0.5, index


def nearest_distance(x: Tensor, protected: Tensor) -> Tensor:
    """RMS distance per coordinate from each row of ``x`` to its nearest row of ``protected`` [N]."""
    return nearest(x, protected)[0]


def copy_check(pipe, latents: Tensor, real: Tensor) -> tuple[Tensor, float]:
    """What a perfect copy of each of ``latents`` looks like through ``pipe`` (its VAE reconstruction,
    pixels in [-1, 1]) and the near-copy threshold: the RMS pixel distance from the closest of the
    unseen ``real`` images to any of them. A sample nearer than that is closer than any unseen real
    image: a near copy."""
    with torch.no_grad():
        copies = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
    return copies, float(nearest_distance(real, copies).min())


def near_copies(x: Tensor, check: tuple[Tensor, float]) -> tuple[Tensor, Tensor]:
    """Per row of ``x``: whether it is nearer to one of the images of ``check = (copies, threshold)``
    (`copy_check`) than the threshold, and which of them is nearest ([N] each)."""
    copies, threshold = check
    distance, index = nearest(x, copies)
    return distance < threshold, index


def near_copy_share(x: Tensor, protected: Tensor, threshold: float) -> float:
    """Share of samples whose RMS distance to some protected image is below ``threshold``."""
    return float(near_copies(x, (protected, threshold))[0].double().mean())


def cut(before: float, after: float) -> float:
    """Relative reduction ``1 - after / before`` (0 when there was nothing to cut)."""
    return 0.0 if before <= 0 else 1.0 - after / before
