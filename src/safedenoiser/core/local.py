"""The local posterior of ``x0`` around the model's estimate: ``beta``, ``D_unsafe`` and ``D_safe`` at once.

Given the negation set ``{y_n}`` (M unsafe examples) and ordinary reference samples, split into the
``K`` safe ones ``{r_k}`` and a prior ``b`` (the share of references that are negated), the
posterior of ``x0`` given ``x_t`` is approximated by a kernel around ``D = D(x_t)``:

    pi_n ∝ (b / M) k(D, y_n),    pi_k ∝ ((1 - b) / K) k(D, r_k),
    k(D, y) = exp(-||phi(D) - phi(y)||^2 / (2 h_D^2))
    beta = sum_n pi_n,    D_unsafe = sum_n pi'_n y_n / sum_n pi'_n,    D_safe = sum_k c_k pi'_k r_k / sum_k c_k pi'_k

``phi`` is where closeness is measured: the latents themselves, or the model's own features of them
(``features``, e.g. `integrations.unet_features.UNetFeatures`), where images that look alike in the
VAE's latents but differ in kind lie further apart (benchmarks/local_confusion.py; `SafeDenoiser`
uses them for unguided sampling, benchmarks/model_estimators.py). The reference is labelled in the
same space; the means are always of the latents. ``h_D`` is ``width`` times the distance from
``phi(D)`` to its ``neighbours``-th nearest point of the two sets: it adapts to the noise level,
since ``D`` is a blur of many images at high noise and close to one image at low noise. The means
use ``pi'``, the same weights with a narrower ``h'_D``, ``mean_width`` times that distance: under
strong guidance ``D`` lies far from every image early on, where the wide kernel averages the
latents of unlike images into a shapeless blob that guidance then turns into whatever looks most
like it (a pullover, for Fashion-MNIST); the narrow one keeps ``D_safe`` near the nearest safe
images (benchmarks/model_estimators.py ``--mean-widths`` compares both). The nearest safe image of
an estimate that asks for the concept lies on the border of the labelling, so it tends to look most
like the concept of all safe images: ``c_k = (1 - q_k)^boundary_power``, with ``q_k`` the sample's
density ratio over the labelling threshold (near 0 far from the set, near 1 at the border), weighs
such samples down (benchmarks/cli_every_class.py, benchmarks/model_estimators.py
``--boundary-powers``). The safe denoiser then
applies the identity's correction (DESIGN §1) in the form without the division by ``1 - beta``:

    D_safe(x_t) = D + w (D - D_unsafe) = D + beta (D_safe - D_unsafe)

(equal whenever ``D = beta D_unsafe + (1 - beta) D_safe``), which stays bounded as ``beta -> 1``:
a request the model can only answer with the negated concept is moved to the nearest safe samples.
benchmarks/model_estimators.py measures it against the other estimators on the bundled models.

It is built for image latents, whose classes form separate clusters in many dimensions. On
low-dimensional Gaussian mixtures it fails (docs/results/estimators_toy.md): a negated-looking
reference sample that was labelled safe becomes the nearest "safe" point inside the negated
component and attracts the samples there; the toys use the ``labelled`` estimator
(core/beta.py), which also labels the reference samples but reads the labels at ``x_t``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from safedenoiser.core.kernels import (FlatSet, laid_out, leave_one_out_log_ratios, softmax_weights,
                                      squared_distances, weighted_mean)
from safedenoiser.errors import SafeDenoiserError
from safedenoiser.negation import NegationSet, reference_samples

Features = Callable[[Tensor], Tensor]  # latents [N, *sample_shape] -> features [N, F]

DEFAULT_NEIGHBOURS = 10
DEFAULT_WIDTH = 0.3
DEFAULT_MEAN_WIDTH = 0.1
DEFAULT_LABEL_RATIO = 1.0
DEFAULT_BOUNDARY_POWER = 2.0


def boundary_weight(relative_ratio: Tensor, power: float) -> Tensor:
    """``c_k = (1 - q_k)^power``: a safe reference sample's weight in ``D_safe``, from its density ratio
    ``q_k`` relative to the labelling threshold (in [0, 1) for the samples labelled safe)."""
    return (1 - relative_ratio).clamp_min(torch.finfo(torch.float32).tiny) ** power


def _neighbour_sq(sq: Tensor, neighbours: int) -> Tensor:
    """The squared distance to the ``neighbours``-th nearest point, per row [B, 1]."""
    return sq.kthvalue(min(neighbours, sq.shape[1]), 1, keepdim=True).values.clamp_min(1e-12)


def _adaptive_logits(sq: Tensor, neighbour_sq: Tensor, width: float) -> Tensor:
    """``-||D - y||^2 / (2 h_D^2)`` with ``h_D`` = ``width`` x the distance whose square is ``neighbour_sq``."""
    return -sq / (2 * neighbour_sq * width * width)


class LocalPosterior:
    """``(beta, D_unsafe, D_safe)`` at ``D(x_t)`` from the negation set and safe reference samples.

    Reference samples count as negated (``negated_reference``) when the negation set's
    (size-normalised) kernel density at them is at least ``label_ratio`` times the reference set's
    own (leave-one-out; for a set of several concepts, any one concept's density, normalised by its own
    size); the rest are the safe samples, and the negated share is the prior ``b``
    (benchmarks/local_confusion.py: which images of each class this labels and judges negated).
    The default 1 also counts the negated concept's periphery, which guided sampling needs; a larger
    one lets more of the concept through (benchmarks/model_estimators.py ``--label-ratios``). The labels'
    kernel adapts like beta's, to the ``label_neighbours``-th nearest point (default: ``neighbours``). Fewer
    neighbours narrow it, so fewer images of classes next to the concept count as negated: for Sneaker that
    lowers the benign FD of guided sampling, but for other concepts (T-shirt, Ankle boot) it leaves their
    images on the safe side (benchmarks/model_estimators.py ``--label-neighbours``). ``boundary_power``
    sets how much less the safe samples near the labelling threshold weigh in ``D_safe`` (`boundary_weight`;
    0: all alike); it does not change the labels or beta. Where the concept is a large part of the reference
    (a part of one class: ``prior`` near 0.4 or above), some of its own images are labelled safe and lie
    next to it, and a far larger power (128) keeps the correction off them; where it is one kind among
    many, such powers move benign samples to far safe images (benchmarks/class_cluster.py,
    benchmarks/model_estimators.py ``--boundary-powers``).

    ``features``: ``None`` (default) measures distances in the latents, a function ``phi`` (latents
    [N, *sample_shape] -> [N, F]) in its features; `with_features` gives the same estimator in others.
    With features, a reference sample counts as negated where the ratio reaches ``label_ratio`` in
    the features or in the latents: each space alone leaves a few images of the concept on the safe
    side (T-shirts in the UNet's features, benchmarks/local_confusion.py), and a safe-labelled image
    of the concept becomes the nearest safe point of estimates that ask for it, which the correction
    then moves them to (benchmarks/model_estimators.py).
    """

    def __init__(self, negation: NegationSet, reference: Tensor, *, neighbours: int = DEFAULT_NEIGHBOURS,
                 width: float = DEFAULT_WIDTH, mean_width: float = DEFAULT_MEAN_WIDTH,
                 label_ratio: float = DEFAULT_LABEL_RATIO, label_neighbours: int | None = None,
                 boundary_power: float = DEFAULT_BOUNDARY_POWER, features: Features | None = None):
        reference = reference_samples(negation, reference, "local")
        if min(width, mean_width) <= 0:
            raise SafeDenoiserError(f"kernel widths must be positive, got width={width}, mean_width={mean_width}")
        if not (math.isfinite(label_ratio) and label_ratio > 0):
            raise SafeDenoiserError(f"label_ratio must be a finite number > 0 (1: where the set's density reaches "
                                    f"the reference's own), got {label_ratio}")
        if not (math.isfinite(boundary_power) and boundary_power >= 0):
            raise SafeDenoiserError(f"boundary_power must be a finite number >= 0 (0: every safe sample counts "
                                    f"fully), got {boundary_power}")
        if features is not None and not callable(features):
            raise SafeDenoiserError(f"features must be a function of the latents or None, got {features!r}")
        self.neighbours, self.width, self.mean_width, self.label_ratio = neighbours, width, mean_width, label_ratio
        self.label_neighbours = neighbours if label_neighbours is None else label_neighbours
        self.boundary_power = boundary_power
        self.sample_shape, self.features = negation.sample_shape, features
        self._sets = negation, reference  # for `with_features`
        y = negation.latents.reshape(len(negation), -1).double()
        r = reference.reshape(len(reference), -1).double().to(y.device)  # the set's device: one place for both
        y_key, r_key = (y, r) if features is None else (self._phi(y).double(), self._phi(r).double())
        ratios = self.reference_ratios(r_key, y_key, negation.concepts)  # [C, K]
        if features is not None:  # either space may see the concept where the other does not
            ratios = torch.maximum(ratios, self.reference_ratios(r, y, negation.concepts))
        ratio = ratios.amax(0)  # negated: in any one concept's region
        negated = ratio >= self.label_ratio
        self.negated_reference = negated  # [K] bool: the reference samples counted as negated
        if negated.all():
            raise SafeDenoiserError(f"all {len(r)} reference samples lie in the negation set's region; give more "
                                    "ordinary images of every kind as reference, of the same sort as the set's "
                                    "(real images for a set of real images)")
        self.prior = max(float(negated.double().mean()), 1.0 / len(r))
        self.points, self.split = torch.cat([y, r[~negated]]).float(), len(y)  # unsafe rows, then safe ones
        self.safe_log_weight = boundary_weight(ratio[~negated] / label_ratio, boundary_power).log().float()
        self.keys = self.points if features is None else torch.cat([y_key, r_key[~negated]]).float()
        self._cache: dict[tuple[torch.device, torch.dtype], FlatSet] = {}
        self._key_cache: dict[tuple[torch.device, torch.dtype], FlatSet] = {}

    def with_features(self, features: Features | None) -> LocalPosterior:
        """The same estimator (sets and settings) measuring closeness in ``features``."""
        return LocalPosterior(*self._sets, neighbours=self.neighbours, width=self.width, mean_width=self.mean_width,
                              label_ratio=self.label_ratio, label_neighbours=self.label_neighbours,
                              boundary_power=self.boundary_power, features=features)

    def _phi(self, flat: Tensor) -> Tensor:
        return self.features(flat.reshape(len(flat), *self.sample_shape)).reshape(len(flat), -1)

    @property
    def unsafe(self) -> Tensor:
        return self.points[:self.split]

    @property
    def safe(self) -> Tensor:
        return self.points[self.split:]

    def reference_ratios(self, reference: Tensor, unsafe: Tensor, concepts: Tensor | None = None,
                         block: int = 1024) -> Tensor:
        """[C, K]: ``p_c(r) / p_ref(r)`` at each reference sample for each of the set's ``concepts`` (a single
        row for a set without), size-normalised adaptive kernel densities (each sample left out of the
        reference density at itself; `leave_one_out_log_ratios`); ``block`` rows at a time."""
        def logits(sq: Tensor) -> Tensor:  # each row's own entry is +inf: at most the others are neighbours
            neighbours = min(self.label_neighbours, sq.shape[1] - 1)
            return _adaptive_logits(sq, _neighbour_sq(sq, neighbours), self.width)

        return leave_one_out_log_ratios(reference, unsafe, logits, block, concepts).exp()

    def __call__(self, d: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(beta [B], D_unsafe [B, D], D_safe [B, D])`` for flat estimates ``d`` [B, D]."""
        points, m = laid_out(self._cache, self.points, d.device, d.dtype), self.split  # unsafe rows, then safe
        if self.features is None:
            keys, query = points, d
        else:
            keys, query = laid_out(self._key_cache, self.keys, d.device, d.dtype), self._phi(d).to(d.dtype)
        sq = squared_distances(query, keys)
        neighbour_sq = _neighbour_sq(sq, self.neighbours)
        logits = _adaptive_logits(sq, neighbour_sq, self.width)
        log_u = torch.logsumexp(logits[:, :m], 1) + math.log(self.prior / m)
        log_s = torch.logsumexp(logits[:, m:], 1) + math.log((1 - self.prior) / (len(points.rows) - m))
        beta = torch.sigmoid(log_u - log_s)
        narrow = _adaptive_logits(sq, neighbour_sq, self.mean_width)
        safe_logits = narrow[:, m:] + self.safe_log_weight.to(narrow)  # c_k: borderline samples count less
        # each side's weights normalised on their own, so neither side's mean underflows
        return (beta, weighted_mean(softmax_weights(narrow[:, :m]), points.part(0, m)),
                weighted_mean(softmax_weights(safe_logits), points.part(m)))
