"""Estimators of ``beta(x_t) = P(unsafe | x_t) = b p_unsafe,t(x_t) / p_t(x_t)`` (DESIGN §1).

Each estimator is called as ``beta(x_t, alpha, sigma, x0_hat, unsafe) -> [B]`` where ``x0_hat`` is
the model's ``D(x_t)`` and ``unsafe`` the negation set's posterior at ``x_t`` (`UnsafePosterior`;
`SafeDenoiser` fills its ``clean_log_mass`` in the same pass over the set when the estimator's
``negation`` is the denoiser's set).
Parameters that are not given are calibrated from the sets themselves.
"""

from __future__ import annotations

import math
from typing import Callable, Protocol

import torch
from torch import Tensor

from safedenoiser.core.bandwidth import MAX_PAIRWISE_POINTS, calibration_points, distances_to_others
from safedenoiser.core.kernels import gaussian_log_density, kernel_logits, leave_one_out_log_ratios
from safedenoiser.errors import SafeDenoiserError
from safedenoiser.negation import NegationSet, UnsafePosterior, noise_levels, reference_samples


class BetaEstimator(Protocol):
    def __call__(self, x_t: Tensor, alpha: Tensor, sigma: Tensor, x0_hat: Tensor,
                 unsafe: UnsafePosterior) -> Tensor: ...


class ExactBeta:
    """Known densities (Gaussian mixtures): ``beta = fn(x_t, alpha, sigma)``."""

    def __init__(self, fn: Callable[[Tensor, Tensor, Tensor], Tensor]):
        self.fn = fn

    def __call__(self, x_t, alpha, sigma, x0_hat, unsafe):
        return self.fn(x_t, alpha, sigma)


class ConstantBeta:
    """``beta`` fixed everywhere: the identity becomes plain negative guidance of weight b/(1-b)."""

    def __init__(self, value: float):
        if not 0.0 <= value < 1.0:
            raise SafeDenoiserError(f"a constant beta must lie in [0, 1), got {value}")
        self.value = value

    def __call__(self, x_t, alpha, sigma, x0_hat, unsafe):
        return torch.full((x_t.shape[0],), self.value, dtype=x_t.dtype, device=x_t.device)


def support_threshold(negation: NegationSet, quantile: float) -> tuple[float, float]:
    """``tau``: the ``quantile`` of the leave-one-out clean log-mass over the set's own points, and
    the spread ``median - tau`` (a scale for soft gates).

    A set larger than `MAX_PAIRWISE_POINTS` is calibrated on a random m of its M points, each point's
    mass over the m - 1 others scaled by (M - 1) / (m - 1) to the whole set's, which the gate reads."""
    h = negation.bandwidth
    y = calibration_points(negation.latents, MAX_PAIRWISE_POINTS)
    sq = distances_to_others(y, "the kernel gate's threshold",
                             "reference images for the local estimator (`SafeDenoiser(negation, reference=...)`; "
                             "CLI: `negation build --reference-images`)").square()
    loo = torch.logsumexp(-sq / (2 * h * h), 1) + math.log((len(negation) - 1) / (len(y) - 1))
    tau = float(torch.quantile(loo, quantile))
    return tau, max(float(loo.median()) - tau, 1e-3)


class KernelRatioBeta:
    """Density ratio of kernel estimates: negation set against a reference set of ordinary samples.

        beta(x_t) = b * p_unsafe,t(x_t) / p_ref,t(x_t)

    Both densities are the sets' kernel estimates noised to level t (exact Gaussians in ``x_t``).
    The reference set stands for ``p`` itself (samples the model generated), so it contains unsafe
    samples at rate ``b``: the share of reference samples inside the core of the set's kernel
    support (clean log-mass above its ``quantile`` over the set's own points), divided by
    ``1 - quantile``. The median (``quantile = 0.5``) keeps safe samples that merely overlap the
    set's tails out of the count (benchmarks/estimators_toy.py).
    """

    def __init__(self, negation: NegationSet, reference: Tensor | NegationSet, *,
                 prior: float | None = None, smoothing: float | None = None, quantile: float = 0.5):
        self.smoothing = negation.bandwidth if smoothing is None else smoothing
        # the reference is only ever smoothed with the negation set's width: no calibration of its own
        self.reference = NegationSet(reference_samples(negation, reference, "ratio").float(), bandwidth=self.smoothing)
        if prior is None:
            tau, _ = support_threshold(negation, quantile)
            inside = negation.clean_log_mass(self.reference.latents.double()) >= tau
            prior = min(max(float(inside.double().mean()) / (1 - quantile), 1.0 / len(self.reference)), 1.0)
        self.prior = prior

    def __call__(self, x_t, alpha, sigma, x0_hat, unsafe):
        log_ref = self.reference.log_density(x_t, alpha, sigma, smoothing=self.smoothing)
        log_beta = math.log(self.prior) + unsafe.log_density - log_ref
        return log_beta.clamp(max=0.0).exp()


def label_reference(negation: NegationSet, reference: Tensor, width: float, block: int = 1024) -> Tensor:
    """``[K]`` bool: the reference samples where the set's kernel density is at least the reference's own,

        (1/M) sum_n k(r_k, y_n)  >=  (1/(K-1)) sum_{j != k} k(r_k, r_j),    k = Gaussian of width ``width x h``,

    ``h`` the set's bandwidth (`leave_one_out_log_ratios`, ``block`` reference rows at a time; for a set of
    several concepts, any one concept's density)."""
    h = width * negation.bandwidth
    y = negation.latents.reshape(len(negation), -1).to(reference.device, torch.float64)
    log_ratios = leave_one_out_log_ratios(reference.double(), y, lambda sq: -sq / (2 * h * h), block,
                                          negation.concepts)
    return log_ratios.amax(0) >= 0


def label_space(negation: NegationSet, reference: Tensor,
                features: Callable[[Tensor], Tensor] | None) -> tuple[NegationSet, Tensor]:
    """The negation set and the flattened reference samples where `label_reference` compares them: as they
    are, or mapped by ``features`` (the set then with a bandwidth calibrated in the features)."""
    if features is None:
        return negation, reference.reshape(len(reference), -1)
    return (NegationSet(features(negation.latents).reshape(len(negation), -1).float(), concepts=negation.concepts),
            features(reference).reshape(len(reference), -1))


class LabelledReferenceBeta:
    """The reference set's own posterior share of unsafe samples at ``x_t``.

    Each reference sample ``r_k`` is labelled unsafe (``u_k = 1``) or safe by `label_reference` at
    noise level 0; then, with both sets smoothed by the negation set's width ``h`` and noised to level t,

        beta(x_t) = min( sum_k u_k N(x_t; alpha r_k, v I) / K,  p_unsafe,t(x_t) ) / p_ref,t(x_t),
        p_ref,t = (1/K) sum_k N(x_t; alpha r_k, v I),    v = sigma^2 + alpha^2 h^2.

    The first term is ``P(unsafe | x_t)`` exactly when the reference is the model's distribution and
    ``u_k`` is ``P(unsafe | r_k)``: numerator and denominator share their samples and kernel, so no
    prior ``b`` (here the labelled share) is estimated, which is where `KernelRatioBeta` errs
    (benchmarks/estimators_toy.py, "ratio, true prior"). The second is the bound every true beta obeys,
    ``b p_unsafe,t / p_t <= p_unsafe,t / p_t``: where the nearest reference samples are labelled
    negated but the negation set itself is far, it keeps beta, and with it the push away from
    ``D_unsafe``, small; without it such pushes could throw samples of a stochastic sampler off the data.

    The labels use a kernel ``label_width = 2`` times the set's width: with the set's own width, 115 of
    the 429 negated reference samples of the 16-D benchmark mixture are labelled safe, with twice it
    none; wider kernels label more kept samples negated where components overlap
    (benchmarks/toy_beta_paths.py). ``features`` (a function of samples [N, *shape] -> [N, F]), when
    given, is where the labels are computed, with a bandwidth calibrated there: the toys label in the
    model's denoised estimates at a moderate noise level (`toy.run.denoised_features`), which shrink the
    within-component spread that dominates distances in many dimensions.
    """

    def __init__(self, negation: NegationSet, reference: Tensor, *, smoothing: float | None = None,
                 label_width: float = 2.0, features: Callable[[Tensor], Tensor] | None = None):
        reference = reference_samples(negation, reference, "labelled")
        unsafe = label_reference(*label_space(negation, reference, features), label_width)
        if not unsafe.any() or unsafe.all():
            raise SafeDenoiserError(
                f"{int(unsafe.sum())} of {len(reference)} reference samples lie in the negation set's region; the "
                "labelled estimator needs ordinary samples of the model that include some of the concept and "
                "some of everything else (more reference samples, or beta='gate')")
        smoothing = negation.bandwidth if smoothing is None else smoothing
        self.smoothing, self.negated_reference, self.negation = smoothing, unsafe, negation
        self.reference = NegationSet(reference.float(), bandwidth=smoothing)

    def __call__(self, x_t, alpha, sigma, x0_hat, unsafe):
        x = x_t.reshape(len(x_t), -1)
        a, _, variance = noise_levels(x, alpha, sigma, self.smoothing)
        # one pass over the reference: the labelled columns' share of it, and its density
        logits = kernel_logits(x, self.reference.flat(x.device, x.dtype), scale=a, bandwidth=2 * variance)
        log_mass = torch.logsumexp(logits, 1)
        labelled_share = torch.logsumexp(logits[:, self.negated_reference.to(x.device)], 1) - log_mass
        log_reference = gaussian_log_density(log_mass, set_size=len(self.reference), dim=x.shape[1], variance=variance)
        log_unsafe = unsafe.log_density if unsafe is not None else \
            self.negation.log_density(x_t, alpha, sigma, smoothing=self.smoothing)
        return torch.minimum(labelled_share, log_unsafe - log_reference).clamp(max=0.0).exp()


class KernelGateBeta:
    """Reference-free: membership of the denoised estimate in the negation set's kernel support.

        beta(x_t) = sigmoid( (log m(D(x_t)) - tau) / T ),   m(x) = sum_n exp(-||x - y_n||^2 / (2 h^2))

    ``tau`` is the ``quantile`` of the leave-one-out log-mass over the set's own points and ``T`` a
    tenth of the spread between their median and ``tau``. ``log m(D(x_t))`` is read from
    ``unsafe.clean_log_mass`` when the posterior carries it, else computed here. Alone it only fires
    once ``D(x_t)`` is in the set's support, where ``D - D_unsafe`` is small, so it pushes harder:
    ``w`` up to ``max_weight = 100`` rather than the identity's usual 20.
    """

    max_weight = 100.0

    def __init__(self, negation: NegationSet, *, quantile: float = 0.05):
        self.negation = negation
        self.tau, spread = support_threshold(negation, quantile)
        self.temperature = spread / 10

    def __call__(self, x_t, alpha, sigma, x0_hat, unsafe):
        log_mass = unsafe.clean_log_mass if unsafe is not None and unsafe.clean_log_mass is not None \
            else self.negation.clean_log_mass(x0_hat)
        return torch.sigmoid((log_mass - self.tau) / self.temperature)


class HybridBeta:
    """``max(ratio, gate)``: two estimates of the same ``P(unsafe | x_t)``, each good where the other is not.

    The kernel ratio is accurate at high noise, where both sets' noised kernels are smooth; the gate
    at low noise, where the posterior of ``x0`` concentrates on ``D(x_t)``. The larger one errs on
    the side of safety. The gate here marks only the core of the set (its median log-mass).
    """

    def __init__(self, negation: NegationSet, reference: Tensor | NegationSet, *, smoothing: float | None = None):
        self.ratio = KernelRatioBeta(negation, reference, smoothing=smoothing)
        self.gate = KernelGateBeta(negation, quantile=0.5)

    @property
    def negation(self) -> NegationSet:
        """The set whose clean log-mass the gate reads."""
        return self.gate.negation

    @property
    def smoothing(self) -> float:
        """The kernel width the ratio compares the two densities at."""
        return self.ratio.smoothing

    def __call__(self, x_t, alpha, sigma, x0_hat, unsafe):
        return torch.maximum(self.ratio(x_t, alpha, sigma, x0_hat, unsafe),
                             self.gate(x_t, alpha, sigma, x0_hat, unsafe))
