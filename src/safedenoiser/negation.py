"""`NegationSet`: the examples the sampler must stay away from, in the space the model denoises."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from safedenoiser.core.bandwidth import calibrate_bandwidth
from safedenoiser.core.kernels import (FlatSet, gaussian_log_density, kernel_logits, laid_out, softmax_weights,
                                       weighted_mean)
from safedenoiser.errors import SafeDenoiserError

FORMAT_VERSION = 1


class UnsafePosterior:
    """The unsafe side at one noise level.

    ``log_density`` [B]: ``log p_unsafe,t(x_t)``. ``mean`` [B, *shape]: ``D_unsafe(x_t)``; it may be
    given as a function, called on first use (for a `NegationSet` the weighted mean is a second pass
    over the set, which a step where no sample acts never needs). ``clean_log_mass`` [B] (a
    `NegationSet` given ``x0_hat``, else None): the set's kernel mass at the denoised estimate,
    ``log m(D(x_t))`` of `NegationSet.clean_log_mass`.
    """

    def __init__(self, mean: Tensor | Callable[[], Tensor], log_density: Tensor,
                 clean_log_mass: Tensor | None = None):
        self._mean, self.log_density, self.clean_log_mass = mean, log_density, clean_log_mass

    @property
    def mean(self) -> Tensor:
        if not isinstance(self._mean, Tensor):
            self._mean = self._mean()
        return self._mean


def check_finite(tensor: Tensor, what: str) -> None:
    """Refuse NaN or infinite values with a message that names the offending input."""
    if not torch.isfinite(tensor).all():
        bad = int((~torch.isfinite(tensor)).reshape(tensor.shape[0], -1).any(1).sum())
        raise SafeDenoiserError(f"{what} holds NaN or infinite values in {bad} of {tensor.shape[0]} "
                                "items; rebuild it from valid images")


def check_reference_shape(reference: Tensor, sample_shape: tuple[int, ...]) -> None:
    """Refuse reference samples not shaped like the negation set's ``sample_shape``."""
    if tuple(reference.shape[1:]) != tuple(sample_shape):
        raise SafeDenoiserError(f"reference samples have shape {tuple(reference.shape[1:])}, the negation set "
                                f"{tuple(sample_shape)}; both must live in the model's space")


def reference_samples(negation: "NegationSet", reference: "Tensor | NegationSet", estimator: str) -> Tensor:
    """``reference`` (a tensor of samples, or a `NegationSet` whose latents are taken) as a tensor, refused
    unless it holds at least 2 finite samples shaped like the set's."""
    if isinstance(reference, NegationSet):
        reference = reference.latents
    if not isinstance(reference, Tensor):
        shape = ", ".join(map(str, negation.sample_shape))
        raise SafeDenoiserError(f"reference must be a tensor of samples [K, {shape}] (or a NegationSet), got "
                                f"{type(reference).__name__}")
    check_reference_shape(reference, negation.sample_shape)
    if len(reference) < 2:
        raise SafeDenoiserError(f"the {estimator} estimator needs at least 2 reference samples, got {len(reference)}")
    check_finite(reference, "the reference set")
    return reference


@dataclass(repr=False, eq=False)  # tensors: a summary for repr, identity for ==
class NegationSet:
    """``M`` examples ``y_n`` of what must not be generated, shaped like the model's samples.

    ``metadata`` records where the set came from (encoder fingerprint, scaling, source hashes);
    `bandwidth` is the per-coordinate kernel width calibrated from the set itself. ``reference``
    (optional) holds ordinary samples in the same space: images of every kind, of the same sort as the set's
    (real ones for a set of real images, not the model's own samples: README, "Which reference images"),
    against which `SafeDenoiser` estimates ``beta``. ``concepts`` (optional, [M] integers from 0) says which
    concept each example shows, for a set of several (`union`); ``None`` is one concept. The local estimator
    judges the reference against each concept on its own (`core.local.LocalPosterior`).
    """

    latents: Tensor
    metadata: dict[str, str] = field(default_factory=dict)
    bandwidth: float | None = None
    reference: Tensor | None = None
    concepts: Tensor | None = None

    def __post_init__(self) -> None:
        if self.latents.ndim < 2 or self.latents.shape[0] == 0:
            raise SafeDenoiserError("the negation set is empty: give at least one image or latent "
                                    f"(got a tensor of shape {tuple(self.latents.shape)})")
        check_finite(self.latents, "the negation set")
        self.latents = self.latents.detach()
        if self.reference is not None:
            check_finite(self.reference, "the reference set")
            check_reference_shape(self.reference, self.sample_shape)
        if self.concepts is not None:
            self.concepts = _concept_indices(self.concepts, len(self))
        if self.bandwidth is None:
            self.bandwidth = calibrate_bandwidth(self.latents)
        self._cache: dict[tuple[torch.device, torch.dtype], FlatSet] = {}

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_latents(cls, latents: Tensor, **metadata: str) -> "NegationSet":
        """A set from latents ``[M, C, H, W]`` (or points ``[M, D]``) in the space the model denoises."""
        if isinstance(latents, (str, bytes, Path)):
            raise SafeDenoiserError(f"from_latents takes latents (a tensor [M, C, H, W]), got {latents!r}; for image "
                                    "files use NegationSet.from_images(pipe, ...)")
        try:
            latents = torch.as_tensor(latents).float()
        except (TypeError, ValueError, RuntimeError) as err:
            raise SafeDenoiserError(f"from_latents takes a tensor [M, C, H, W] (or points [M, D]): {err}") from err
        return cls(latents, metadata={k: str(v) for k, v in metadata.items()})

    @classmethod
    def from_images(cls, pipe, images, *, batch_size: int = 8, progress: bool = True) -> "NegationSet":
        """Encode images (paths, a folder, PIL images or a tensor in [-1, 1]) through ``pipe``'s VAE."""
        from safedenoiser.integrations.encode import encode_images

        latents, metadata = encode_images(pipe, images, batch_size=batch_size, progress=progress)
        return cls(latents, metadata=metadata)

    @classmethod
    def union(cls, sets: Sequence["NegationSet"], reference: Tensor | None = None) -> "NegationSet":
        """One set of several concepts: the sets' examples, each set's concepts numbered after the previous
        set's (a set without ``concepts`` is one), with ``reference`` (the sets' own references are not
        merged), the record they share and their sources' hashes in order. The sets must come from the same
        encoder, which the union records; its bandwidth is calibrated anew."""
        if len(sets) < 2:
            raise SafeDenoiserError(f"a union takes at least 2 negation sets, got {len(sets)}")
        shapes = {s.sample_shape for s in sets}
        if len(shapes) > 1:
            raise SafeDenoiserError(f"the sets hold samples of different shapes {sorted(shapes)}; encode every set "
                                    "with the same model at the same image size")
        encoders = {s.metadata.get("encoder") for s in sets} - {None}
        if len(encoders) > 1:
            raise SafeDenoiserError("the sets were encoded by different VAEs (fingerprints "
                                    f"{', '.join(sorted(encoders))}); encode every set with the same model")
        concepts, offset = [], 0
        for s in sets:
            own = s.concepts if s.concepts is not None else torch.zeros(len(s), dtype=torch.long)
            concepts.append(own + offset)
            offset += s.concept_count
        common = {key: value for key, value in sets[0].metadata.items()  # the record all sets share
                  if key != "sources_sha256" and all(s.metadata.get(key) == value for s in sets[1:])}
        if encoders:
            common["encoder"] = encoders.pop()
        sources = [s.metadata.get("sources_sha256", "") for s in sets]
        if all(source.startswith("[") for source in sources):  # each set's image hashes, in order
            common["sources_sha256"] = json.dumps([digest for source in sources for digest in json.loads(source)])
        return cls(torch.cat([s.latents for s in sets]), metadata=common, reference=reference,
                   concepts=torch.cat(concepts))

    # ----------------------------------------------------------------- persistence
    def save(self, path: str | Path) -> None:
        """Write the latents and metadata as safetensors (no pickles)."""
        if not Path(path).parent.is_dir():
            raise SafeDenoiserError(f"cannot save {path}: folder {Path(path).parent} does not exist")
        meta = dict(self.metadata, format_version=str(FORMAT_VERSION), bandwidth=repr(self.bandwidth),
                    shape=json.dumps(list(self.latents.shape)))
        tensors = {"latents": self.latents.float().contiguous().cpu()}
        if self.reference is not None:
            tensors["reference"] = self.reference.float().contiguous().cpu()
        if self.concepts is not None:
            tensors["concepts"] = self.concepts.contiguous().cpu()
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> "NegationSet":
        """Read a set written by `save`."""
        path = Path(path)
        if path.is_dir():
            raise SafeDenoiserError(f"{path} is a folder; give the negation set's .safetensors file")
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
        return cls(latents, metadata=meta, bandwidth=bandwidth, reference=tensors.get("reference"),
                   concepts=tensors.get("concepts"))

    # ----------------------------------------------------------------- properties
    def __len__(self) -> int:
        return self.latents.shape[0]

    def __repr__(self) -> str:
        reference = "none" if self.reference is None else len(self.reference)
        concepts = f"{self.concept_count} concepts, " if self.concept_count > 1 else ""
        return (f"NegationSet({len(self)} samples of shape {list(self.sample_shape)}, {concepts}reference {reference}, "
                f"bandwidth {self.bandwidth:.4g}, fingerprint {self.fingerprint})")

    @property
    def concept_count(self) -> int:
        """How many concepts the set holds (1 without ``concepts``)."""
        return 1 if self.concepts is None else int(self.concepts.max()) + 1

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.latents.shape[1:])

    @property
    def fingerprint(self) -> str:
        """A short content hash (of the examples, and of which concept each shows where the set has several),
        recorded in manifests to tell sets apart."""
        digest = hashlib.sha256(self.latents.float().cpu().numpy().tobytes())
        if self.concept_count > 1:
            digest.update(self.concepts.numpy().tobytes())
        return digest.hexdigest()[:16]

    def flat(self, device: torch.device, dtype: torch.dtype) -> FlatSet:
        """The set as matrices on ``device`` (`FlatSet`: ``Y``, ``Y^T``, norms), cached per device and dtype."""
        return laid_out(self._cache, self.latents, device, dtype)

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
    def posterior(self, x_t: Tensor, alpha: Tensor, sigma: Tensor, *, smoothing: float = 0.0,
                  x0_hat: Tensor | None = None) -> UnsafePosterior:
        """``D_unsafe(x_t)`` and ``log p_unsafe,t(x_t)`` of the set, optionally kernel-smoothed.

        With ``smoothing = h`` the set stands for ``p_unsafe = (1/M) sum_n N(y_n, h^2 I)``; then
        ``x_t ~ (1/M) sum_n N(alpha y_n, v I)`` with ``v = sigma^2 + alpha^2 h^2`` and

            D_unsafe(x_t) = (sigma^2 ybar(x_t) + alpha h^2 x_t) / v,
            ybar(x_t)     = sum_n y_n softmax_n(-||x_t - alpha y_n||^2 / (2 v)).

        ``h = 0`` is the exact posterior mean of the empirical distribution (DESIGN §1). Given
        ``x0_hat = D(x_t)``, the same matrix product also yields its `clean_log_mass`. The mean is
        computed on first use of ``.mean``.
        """
        batch = x_t.shape[0]
        x = x_t.reshape(batch, -1)
        y = self.flat(x.device, x.dtype)
        a, s, variance = noise_levels(x, alpha, sigma, smoothing)
        rows, scale, bandwidth = x, a, 2 * variance
        if x0_hat is not None:  # stack the clean kernel's rows under x_t's: one pass over the set
            d = x0_hat.reshape(batch, -1).to(x.dtype)
            one, clean_bandwidth = self._clean_kernel(d)
            rows, scale, bandwidth = torch.cat([x, d]), torch.cat([a, one]), torch.cat([bandwidth, clean_bandwidth])
        logits = kernel_logits(rows, y, scale=scale, bandwidth=bandwidth)
        log_mass = torch.logsumexp(logits, 1)
        log_density = gaussian_log_density(log_mass[:batch], set_size=len(self), dim=x.shape[1], variance=variance)

        def mean() -> Tensor:
            if smoothing == 0:
                return weighted_mean(softmax_weights(logits[:batch]), y).reshape(x_t.shape)
            # (sigma^2 / v) ybar + (alpha h^2 / v) x_t in one product: sigma^2 / v rides on the weights
            weights = softmax_weights(logits[:batch], total=s * s / variance)
            return weighted_mean(weights, y, shift=x * (a * smoothing ** 2 / variance)[:, None]).reshape(x_t.shape)

        return UnsafePosterior(mean, log_density, None if x0_hat is None else log_mass[batch:])

    def log_density(self, x_t: Tensor, alpha: Tensor, sigma: Tensor, *, smoothing: float = 0.0) -> Tensor:
        """``log p_t(x_t)`` [B] of the (smoothed) set noised to level t, without the posterior mean."""
        return self.posterior(x_t, alpha, sigma, smoothing=smoothing).log_density

    def clean_log_mass(self, x: Tensor) -> Tensor:
        """``log m(x) = log sum_n exp(-||x - y_n||^2 / (2 h^2))`` [B] at noise level 0, ``h`` the set's bandwidth."""
        x = x.reshape(x.shape[0], -1)
        one, bandwidth = self._clean_kernel(x)
        return torch.logsumexp(kernel_logits(x, self.flat(x.device, x.dtype), scale=one, bandwidth=bandwidth), 1)

    def _clean_kernel(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-row scale 1 and bandwidth ``2 h^2`` of the clean kernel, for the rows of ``x``."""
        one = torch.ones(x.shape[0], dtype=x.dtype, device=x.device)
        return one, one * (2 * self.bandwidth ** 2)


def _concept_indices(concepts: Tensor, size: int) -> Tensor:
    """``concepts`` as [M] int64 indices, refused unless one integer >= 0 per example and none skipped."""
    concepts = torch.as_tensor(concepts)
    if concepts.shape != (size,) or concepts.is_floating_point() or concepts.is_complex():
        raise SafeDenoiserError(f"concepts must be one integer per example ([{size}]), got a {concepts.dtype} tensor "
                                f"of shape {tuple(concepts.shape)}")
    concepts = concepts.long().cpu()
    if (concepts < 0).any() or len(concepts.unique()) != int(concepts.max()) + 1:
        raise SafeDenoiserError(f"concepts must number the concepts 0..n-1, each with at least one example, got "
                                f"{sorted(concepts.unique().tolist())}")
    return concepts


def noise_levels(x: Tensor, alpha: Tensor, sigma: Tensor, smoothing: float) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row ``alpha``, ``sigma`` and ``v = sigma^2 + alpha^2 h^2`` [B] for the rows of ``x`` (``h = smoothing``)."""
    a = torch.as_tensor(alpha, dtype=x.dtype, device=x.device).expand(x.shape[0])
    s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).expand(x.shape[0])
    return a, s, s * s + (a * smoothing) ** 2
