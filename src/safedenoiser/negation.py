"""`NegationSet`: the examples the sampler must stay away from, in the space the model denoises."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from safedenoiser.core.bandwidth import calibrate_bandwidth
from safedenoiser.core.kernels import DEFAULT_CHUNK, gaussian_log_density
from safedenoiser.errors import SafeDenoiserError

FORMAT_VERSION = 1


@dataclass
class UnsafePosterior:
    """The unsafe side at one noise level: ``D_unsafe(x_t)`` and ``log p_unsafe,t(x_t)``."""

    mean: Tensor  # [B, *shape]
    log_density: Tensor  # [B]


def check_finite(tensor: Tensor, what: str) -> None:
    """Refuse NaN or infinite values with a message that names the offending input."""
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).reshape(tensor.shape[0], -1).any(1).sum())
        raise SafeDenoiserError(f"{what} holds NaN or infinite values in {bad} of {tensor.shape[0]} "
                                "items; rebuild it from valid images")


@dataclass
class NegationSet:
    """``M`` examples ``y_n`` of what must not be generated, shaped like the model's samples.

    ``metadata`` records where the set came from (encoder fingerprint, scaling, source hashes);
    `bandwidth` is the per-coordinate kernel width calibrated from the set itself. ``reference``
    (optional) holds ordinary samples in the same space (model samples, or typical images), which
    lets `SafeDenoiser` estimate ``beta`` as a density ratio.
    """

    latents: Tensor
    metadata: dict[str, str] = field(default_factory=dict)
    bandwidth: float | None = None
    reference: Tensor | None = None

    def __post_init__(self) -> None:
        if self.latents.ndim < 2 or self.latents.shape[0] == 0:
            raise SafeDenoiserError("the negation set is empty: give at least one image or latent "
                                    f"(got a tensor of shape {tuple(self.latents.shape)})")
        check_finite(self.latents, "the negation set")
        self.latents = self.latents.detach()
        if self.reference is not None:
            check_finite(self.reference, "the reference set")
            if tuple(self.reference.shape[1:]) != self.sample_shape:
                raise SafeDenoiserError(f"reference samples have shape {tuple(self.reference.shape[1:])}, the "
                                        f"negation set {self.sample_shape}; both must live in the model's space")
        if self.bandwidth is None:
            self.bandwidth = calibrate_bandwidth(self.latents)
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[Tensor, Tensor]] = {}

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_latents(cls, latents: Tensor, **metadata: str) -> "NegationSet":
        """A set from latents ``[M, C, H, W]`` (or points ``[M, D]``) in the space the model denoises."""
        return cls(torch.as_tensor(latents).float(), metadata={k: str(v) for k, v in metadata.items()})

    @classmethod
    def from_images(cls, pipe, images, *, batch_size: int = 8, progress: bool = True) -> "NegationSet":
        """Encode images (paths, a folder, PIL images or a tensor in [-1, 1]) through ``pipe``'s VAE."""
        from safedenoiser.integrations.encode import encode_images

        latents, metadata = encode_images(pipe, images, batch_size=batch_size, progress=progress)
        return cls(latents, metadata=metadata)

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """Write the latents and metadata as safetensors (no pickles)."""
        meta = dict(self.metadata, format_version=str(FORMAT_VERSION), bandwidth=repr(self.bandwidth),
                    shape=json.dumps(list(self.latents.shape)))
        tensors = {"latents": self.latents.float().contiguous().cpu()}
        if self.reference is not None:
            tensors["reference"] = self.reference.float().contiguous().cpu()
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "NegationSet":
        """Read a set written by `save`."""
        path = Path(path)
        if not path.is_file():
            raise SafeDenoiserError(f"negation set {path} does not exist; build one with "
                                    "`safe-denoiser negation build`")
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            tensors = load_file(str(path))
            latents = tensors["latents"]
        except Exception as err:  # safetensors raises several types for a corrupt file
            raise SafeDenoiserError(f"{path} is not a negation set written by safe-denoiser: {err}") from err
        bandwidth = float(meta.pop("bandwidth")) if "bandwidth" in meta else None
        for key in ("format_version", "shape"):
            meta.pop(key, None)
        return cls(latents, metadata=meta, bandwidth=bandwidth, reference=tensors.get("reference"))

    # ----------------------------------------------------------------- properties
    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.latents.shape[1:])

    @property
    def fingerprint(self) -> str:
        """A short content hash, recorded in manifests to tell sets apart."""
        return hashlib.sha256(self.latents.float().cpu().numpy().tobytes()).hexdigest()[:16]

    def flat(self, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The set as ``[M, D]`` on ``device`` with its squared norms, cached per device and dtype."""
        key = (torch.device(device), dtype)
        if key not in self._cache:
            y = self.latents.reshape(len(self), -1).to(device=device, dtype=dtype)
            self._cache[key] = (y, (y * y).sum(1))
        return self._cache[key]

    def check_compatible(self, sample_shape: tuple[int, ...], fingerprint: str | None = None) -> None:
        """Refuse a set that does not live in the space the model denoises."""
        if tuple(sample_shape) != self.sample_shape:
            raise SafeDenoiserError(
                f"negation latents have shape {self.sample_shape} but the model denoises "
                f"{tuple(sample_shape)}; rebuild the set with this model (`NegationSet.from_images(pipe, ...)` "
                "or `safe-denoiser negation build --model ...`) at the same image size")
        mine = self.metadata.get("encoder")
        if fingerprint is not None and mine is not None and mine != fingerprint:
            raise SafeDenoiserError(
                f"the negation set was encoded by a different VAE (fingerprint {mine}, this model's is "
                f"{fingerprint}); rebuild it with this model's VAE")

    # ----------------------------------------------------------------- the unsafe denoiser
    def _noised_kernel(self, x_t: Tensor, alpha: Tensor, sigma: Tensor, smoothing: float, with_mean: bool,
                       chunk_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
        batch = x_t.shape[0]
        x = x_t.reshape(batch, -1)
        y, y_sq = self.flat(x.device, x.dtype)
        a = torch.as_tensor(alpha, dtype=x.dtype, device=x.device).expand(batch)
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(batch)
        variance = s * s + (a * smoothing) ** 2
        y_bar, log_density = gaussian_log_density(x, y, alpha=a, variance=variance, y_sqnorm=y_sq,
                                                  chunk_size=chunk_size, with_mean=with_mean)
        return x, a, s, y_bar, log_density

    def posterior(self, x_t: Tensor, alpha: Tensor, sigma: Tensor, *, smoothing: float = 0.0,
                  chunk_size: int = DEFAULT_CHUNK) -> UnsafePosterior:
        """``D_unsafe(x_t)`` and ``log p_unsafe,t(x_t)`` of the set, optionally kernel-smoothed.

        With ``smoothing = h`` the set stands for ``p_unsafe = (1/M) sum_n N(y_n, h^2 I)``; then
        ``x_t ~ (1/M) sum_n N(alpha y_n, v I)`` with ``v = sigma^2 + alpha^2 h^2`` and

            D_unsafe(x_t) = (sigma^2 ybar(x_t) + alpha h^2 x_t) / v,
            ybar(x_t)     = sum_n y_n softmax_n(-||x_t - alpha y_n||^2 / (2 v)).

        ``h = 0`` is the exact posterior mean of the empirical distribution (DESIGN §1).
        """
        x, a, s, y_bar, log_density = self._noised_kernel(x_t, alpha, sigma, smoothing, True, chunk_size)
        if smoothing > 0:
            variance = s * s + (a * smoothing) ** 2
            y_bar = ((s * s)[:, None] * y_bar + (a * smoothing ** 2)[:, None] * x) / variance[:, None]
        return UnsafePosterior(y_bar.reshape(x_t.shape), log_density)

    def log_density(self, x_t: Tensor, alpha: Tensor, sigma: Tensor, *, smoothing: float = 0.0,
                    chunk_size: int = DEFAULT_CHUNK) -> Tensor:
        """``log p_t(x_t)`` [B] of the (smoothed) set noised to level t, without the posterior mean."""
        return self._noised_kernel(x_t, alpha, sigma, smoothing, False, chunk_size)[-1]
