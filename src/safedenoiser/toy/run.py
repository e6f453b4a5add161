"""Run one toy method on a spec: what `safe-denoiser toy` and the estimator benchmark call."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch import Tensor

from safedenoiser.core.beta import ExactBeta, KernelRatioBeta, LabelledReferenceBeta
from safedenoiser.core.safe_denoiser import SafeDenoiser
from safedenoiser.errors import SafeDenoiserError
from safedenoiser.negation import NegationSet
from safedenoiser.toy.sampling import sample_from_seed
from safedenoiser.toy.spec import ToySpec

Method = Literal["vanilla", "exact", "kernel"]
METHODS = ("vanilla", "exact", "kernel")
DEFAULT_ESTIMATOR = "labelled"  # benchmarks/estimators_toy.py
REFERENCE_SAMPLES = 1000
# sigma / alpha of the denoised estimates the labelled estimator labels in; 1 to 8 compared in
# docs/results/estimators_toy_label_levels.md (4 fixes 2-D close, but 16-D separated degrades from 4 on)
LABEL_LEVEL = 2.0


def denoised_features(denoise: Callable[[Tensor, Tensor, Tensor], Tensor],
                      level: float = LABEL_LEVEL) -> Callable[[Tensor], Tensor]:
    """``x -> D(alpha x, alpha, sigma)`` at ``sigma / alpha = level`` (VP, no noise drawn): the model's estimate of
    a point seen through noise of that level, which keeps what sets components apart and shrinks the rest."""
    alpha = 1 / math.sqrt(1 + level * level)

    def features(x: Tensor) -> Tensor:
        x = x.double()
        a = torch.tensor(alpha, dtype=x.dtype)
        return denoise(a * x, a, a * level)

    return features


@dataclass
class ToyRun:
    samples: Tensor  # [n, dim]
    trajectories: Tensor  # [steps, k, dim]: the first k samples' x_t along the way
    beta_mean: Tensor  # [steps]: mean beta per step (0 for vanilla)
    acted_share: Tensor  # [steps]
    info: dict[str, float] = field(default_factory=dict)


def make_denoiser(spec: ToySpec, method: Method, *, estimator: str = DEFAULT_ESTIMATOR,
                  sampler: str = "dpm++", steps: int | None = None, seed: int = 0,
                  max_weight: float | None = None, prior: float | None = None,
                  label_level: float = LABEL_LEVEL) -> tuple[object, SafeDenoiser | None]:
    """The denoiser for ``method``: the mixture's own ``D``, the exact safe one, or the kernel one.

    ``kernel`` sees only what a user of a real model has: ``D`` (as a network) and the finite
    negation set; the estimators that need reference samples draw them from ``D`` with the sampler, and the
    ``labelled`` one labels them in ``D``'s estimates at noise level ``label_level`` (`denoised_features`).
    ``prior`` replaces the ``ratio`` estimator's calibrated ``b`` (benchmarks pass the true one to
    isolate the error of its estimate).
    """
    mixture = spec.mixture
    if method == "vanilla":
        return mixture.denoise, None
    kwargs = {} if max_weight is None else {"max_weight": max_weight}
    if method == "exact":
        unsafe = mixture.subset(spec.negate)
        beta = ExactBeta(lambda x, a, s: mixture.beta(x, a, s, spec.negate))
        safe = SafeDenoiser(unsafe, beta=beta, min_weight=0.0, **{"max_weight": 1e12, **kwargs})
        return safe.wrap(mixture.denoise), safe
    if method != "kernel":
        raise SafeDenoiserError(f"unknown method {method!r}; use one of {METHODS}")
    negation = NegationSet.from_latents(spec.negation_set())
    reference = None
    if estimator in ("local", "labelled", "ratio", "hybrid"):
        reference = sample_from_seed(sampler, mixture.denoise, REFERENCE_SAMPLES, mixture.dim, seed + 7919, steps)
    if prior is not None:
        if estimator != "ratio":
            raise SafeDenoiserError(f"prior= sets the ratio estimator's b; the {estimator!r} estimator has none")
        estimator = KernelRatioBeta(negation, reference, prior=prior)
    elif estimator == "labelled":
        estimator = LabelledReferenceBeta(negation, reference, features=denoised_features(mixture.denoise, label_level))
    safe = SafeDenoiser(negation, beta=estimator, reference=reference, **kwargs)
    return safe.wrap(mixture.denoise), safe


def run_toy(spec: ToySpec, method: Method, n: int, seed: int, *, estimator: str = DEFAULT_ESTIMATOR,
            sampler: str = "dpm++", steps: int | None = None, keep_trajectories: int = 16,
            max_weight: float | None = None, prior: float | None = None, label_level: float = LABEL_LEVEL) -> ToyRun:
    """Sample ``n`` points with ``method`` and one of `SAMPLERS` (its default number of steps)."""
    denoiser, safe = make_denoiser(spec, method, estimator=estimator, sampler=sampler, steps=steps, seed=seed,
                                   max_weight=max_weight, prior=prior, label_level=label_level)
    path: list[Tensor] = []
    samples = sample_from_seed(sampler, denoiser, n, spec.mixture.dim, seed, steps,
                               callback=lambda i, x_t, x0: path.append(x_t[:keep_trajectories].clone()))
    path.append(samples[:keep_trajectories].clone())
    trace = safe.trace if safe is not None else []
    beta_mean = torch.tensor([r.beta_mean for r in trace] or [0.0] * (len(path) - 1))
    acted = torch.tensor([r.acted / r.batch for r in trace] or [0.0] * (len(path) - 1))
    return ToyRun(samples, torch.stack(path), beta_mean, acted)
