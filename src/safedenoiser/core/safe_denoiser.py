"""`SafeDenoiser`: a transformation of denoisers (DESIGN §1).

    D_safe(x_t) = D(x_t) + w(x_t) (D(x_t) - D_unsafe(x_t)),    w = beta / (1 - beta)
                = D(x_t) + beta(x_t) (D_safe(x_t) - D_unsafe(x_t))   (the local estimator, core/local.py)
                = D_safe(x_t) + (1 - beta(x_t)) e(x_t)               (the local estimator with the latch)

A denoiser is a function ``(x_t, alpha, sigma) -> x0``; `SafeDenoiser.wrap` turns the model's
denoiser into the safe one, and `SafeDenoiser.attach` does the same inside a diffusers pipeline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Protocol

import torch
from torch import Tensor

from safedenoiser.core.beta import BetaEstimator, HybridBeta, KernelGateBeta, KernelRatioBeta, LabelledReferenceBeta
from safedenoiser.core.local import LocalPosterior
from safedenoiser.core.paper_rule import PaperRule
from safedenoiser.core.parametrization import per_sample
from safedenoiser.core.presets import resolve_preset
from safedenoiser.errors import SafeDenoiserError
from safedenoiser.negation import NegationSet, UnsafePosterior

if TYPE_CHECKING:
    from safedenoiser.integrations.unet_features import UNetFeatures

Denoiser = Callable[[Tensor, Tensor, Tensor], Tensor]

FEATURE_SPACES = ("auto", "unet", "latent")  # SafeDenoiser's ``features``
DEFAULT_MAX_WEIGHT = 20.0
DEFAULT_MIN_WEIGHT = 1e-4


class UnsafeModel(Protocol):
    """Anything with the negation set's posterior: a `NegationSet`, or an exact unsafe mixture."""

    def posterior(self, x_t: Tensor, alpha: Tensor, sigma: Tensor, *, smoothing: float = 0.0) -> UnsafePosterior: ...


def safe_weight(beta: Tensor, max_weight: float) -> Tensor:
    """``w = beta / (1 - beta)``, capped at ``max_weight`` as ``beta -> 1`` (and 0 where beta = 0)."""
    return (beta / (1 - beta).clamp_min(1.0 / (1.0 + max_weight))).clamp(0.0, max_weight)


def safe_denoise(d: Tensor, d_unsafe: Tensor, w: Tensor) -> Tensor:
    """The key identity: ``D_safe = D + w (D - D_unsafe)`` (``w`` per sample)."""
    return d + per_sample(w, d) * (d - d_unsafe)


def local_safe_denoise(d: Tensor, d_unsafe: Tensor, d_safe: Tensor, beta: Tensor) -> Tensor:
    """The identity's correction without the division: ``D_safe = D + beta (D_safe_local - D_unsafe)``."""
    return d + per_sample(beta, d) * (d_safe - d_unsafe)


def held_safe_denoise(d: Tensor, d_unsafe: Tensor, d_safe: Tensor, beta: Tensor) -> Tensor:
    """``D_safe = D_safe_local + (1 - beta) e`` with ``e = D - (1 - beta) D_safe_local - beta D_unsafe``.

    ``e`` is what the local posterior does not explain of the model's estimate. `local_safe_denoise`
    keeps all of it (``D + beta (D_safe - D_unsafe) = D_safe_local + e``); here the safe side keeps only
    its share ``1 - beta``. Both equal ``D_safe_local`` where the decomposition holds (``e = 0``). Under
    strong guidance ``e`` is the guidance's extrapolation towards the requested concept, so a trajectory
    judged unsafe must not keep it (the latch corrects with this form; benchmarks/cli_every_class.py).
    """
    b = per_sample(beta, d)
    unexplained = d - (1 - b) * d_safe - b * d_unsafe
    return d_safe + (1 - b) * unexplained


def latched_beta(beta: Tensor, earlier: Tensor) -> Tensor:
    """``beta_t = max(beta_t, beta_t')`` over the trajectory's earlier (noisier) steps ``t' > t``.

    Under strong guidance the estimate ``D`` leaves the data at low noise: a prompt for the negated
    class yields a sharper, farther version of it than any real image, the local kernel can no longer
    tell the two sides apart, and beta sinks back to the prior just when guidance redraws the negated
    concept. Holding the highest beta seen keeps the correction on for such a trajectory (with
    `held_safe_denoise`, which drops the guidance's extrapolation). The price:
    benign samples whose trajectory passed near the negated concept stay corrected too (measured in
    benchmarks/model_estimators.py and benchmarks/cli_every_class.py), so `SafeDenoiser` holds beta
    only under guidance (``latch="auto"``), where the leaks it stops outweigh that cost.
    """
    return torch.maximum(beta, earlier)


def step_beta(beta: Tensor, first: Tensor) -> Tensor:
    """``beta = max(beta, beta_first)`` at a second evaluation of the model within one step.

    A midpoint sampler (KDPM2, "DPM2") takes its step with the derivative at the midpoint alone; the first
    evaluation only places that midpoint, so its correction reaches the step at second order. Where it
    moves the midpoint's estimate out of the set's region, the correction is off where it counts: with the
    reference-free gate, 11% of the known-answer mixture's samples stayed in the negated component
    (docs/results/known_answer_schedulers.md). Holding the step's first beta keeps the correction on (there
    2.9%). With the local estimator on the bundled model it moved no class by more than one sample in 300
    (benchmarks/model_second_order.py); under the latch it changes nothing, the latch holds more.
    """
    return torch.maximum(beta, first)


@dataclass
class StepRecord:
    """What the safe denoiser did at one call: noise level, beta (or kernel mass), how many acted,
    whether the latch held beta and whether the local estimator measured in the model's features."""

    sigma: float
    alpha: float
    beta_mean: float
    beta_max: float
    acted: int
    batch: int
    timestep: float | None = None
    latched: bool = False
    in_features: bool = False


@dataclass
class Correction:
    """One call's result: the safe ``x0`` and per-sample diagnostics."""

    x0: Tensor  # x0_hat bit for bit when no sample acts
    beta: Tensor  # P(unsafe | x_t) for the identity, the kernel mass m for the paper rule
    acted: Tensor  # [B] bool
    renoise: bool  # the sampler should re-noise x0 instead of replacing the model output


@dataclass
class SampleRecord:
    """Each sample of the current run (since `SafeDenoiser.reset`), row for row of the stepped batch: the
    highest beta any step gave it (the paper rule: kernel mass) and at how many steps the correction
    changed it (0: the model's output passed through untouched, bit for bit)."""

    beta_max: Tensor  # [B]
    steps_corrected: Tensor  # [B] int64

    def update(self, beta: Tensor, acted: Tensor) -> None:
        self.beta_max = torch.maximum(self.beta_max, beta.detach().double().cpu())
        self.steps_corrected += acted.cpu().long()


class SafeDenoiser:
    """Safe denoiser over a negation set.

    Args:
        negation: the examples to stay away from (`NegationSet`), or any `UnsafeModel`.
        preset: a paper preset (``sd14-nudity``, ``sd14-copro``, ``sd3-nudity``,
            ``sd14-memorization``) that selects the authors' practical rule with their settings.
        beta: ``"auto"`` (default: ``"local"`` when reference samples are known, else ``"gate"``),
            ``"local"`` (`LocalPosterior`: beta, D_unsafe and D_safe in x0 space), ``"gate"`` (needs
            nothing but the set), ``"labelled"`` (the reference's own posterior of its unsafe-labelled
            samples at x_t), ``"ratio"`` or ``"hybrid"`` (x_t-space density ratio; all three need
            reference samples), or any `BetaEstimator`. benchmarks/estimators_toy.py and
            benchmarks/model_estimators.py compare them.
        reference: ordinary samples in the model's space: images of every kind, of the same sort as
            the set's (real ones for a set of real images, not the model's own samples: README, "Which
            reference images"); by default the negation set's own ``reference``, if it has one.
        max_weight: cap on ``w = beta / (1 - beta)``, what happens as ``beta -> 1``; ``None`` takes
            the estimator's own (``KernelGateBeta.max_weight``, else 20). The local estimator needs
            none: its correction ``beta (D_safe - D_unsafe)`` is bounded.
        min_weight: at or below this ``w`` the model's output passes through untouched (bit for bit);
            with the latch, ``w`` of the held beta: 3 leaves a sample alone until its beta passes 0.75,
            which spares benign samples that only brush the concept (benchmarks/model_estimators.py
            ``--min-weights``).
        latch: with the local estimator, keep each sample's beta at its maximum so far along the
            trajectory (`latched_beta`) and correct with `held_safe_denoise`: for concepts that strong
            guidance redraws late; it costs benign samples near the negated concept, and a sample it
            holds near ``beta = 1`` ends as (nearly) a safe reference sample near it (the nearest unless
            that lies at the labelling's border, `LocalPosterior`'s ``boundary_power``), a copy of one
            of the reference images (docs/results.md, "copies of a reference image"). ``"auto"``
            (default): on while the sampler applies classifier-free guidance (``correct(...,
            guided=True)``; `attach` reads the pipeline's ``do_classifier_free_guidance``, or its ``guided``), off
            otherwise and for the other estimators. ``True`` / ``False``: always / never.
        smoothing: kernel width ``h`` of the unsafe posterior; ``None`` takes the estimator's own (an
            estimator object's ``smoothing``), else the set's calibrated one.
        features: where the local estimator measures closeness once attached to a pipeline
            (`bind`): ``"auto"`` (default) in the pipeline's UNet features (`UNetFeatures`) while it
            samples without classifier-free guidance, in the latents under guidance;
            ``"unet"`` in the UNet features always (refused by the other estimators and the paper
            rule, which measure in the latents); ``"latent"`` in the latents always.
        params: the paper rule's ``h``, ``s``, ``window``, ``tau`` (override a preset's values).
    """

    def __init__(self, negation: NegationSet | UnsafeModel, *, preset: str | None = None,
                 beta: str | BetaEstimator = "auto", reference: Tensor | None = None,
                 max_weight: float | None = None, min_weight: float = DEFAULT_MIN_WEIGHT,
                 smoothing: float | None = None, latch: bool | str = "auto", features: str = "auto",
                 **params: float):
        if not (isinstance(latch, bool) or latch == "auto"):  # 1 or "on" would pass `in (True, False)`
            raise SafeDenoiserError(f"latch must be True, False or 'auto', got {latch!r}")
        if features not in FEATURE_SPACES:
            raise SafeDenoiserError(f"features must be 'auto', 'unet' or 'latent', got {features!r}")
        if max_weight is not None and not max_weight > 0:
            raise SafeDenoiserError(f"max_weight caps w = beta / (1 - beta): it must be positive, got {max_weight}")
        if not (math.isfinite(min_weight) and min_weight >= 0):
            raise SafeDenoiserError(f"min_weight must be a finite number >= 0, got {min_weight}")
        self.negation = negation
        self.latch, self.features = latch, features
        self._unet_features: UNetFeatures | None = None  # of the pipeline `bind` last saw
        self._in_features: LocalPosterior | None = None  # the local estimator in them, built when first needed
        self.max_weight, self.min_weight = DEFAULT_MAX_WEIGHT if max_weight is None else max_weight, min_weight
        self.reset()
        self.paper: PaperRule | None = None
        if latch is True and (preset is not None or params):
            raise SafeDenoiserError("latch is for the local estimator; the paper rule has none")
        if features == "unet" and (preset is not None or params):
            raise SafeDenoiserError("features='unet' is for the local estimator; the paper rule measures closeness "
                                    "in the latents")
        if preset is not None or params:
            if not isinstance(negation, NegationSet):
                raise SafeDenoiserError("the paper rule needs a NegationSet")
            ignored = [name for name, value in (("beta", beta != "auto"), ("reference", reference is not None),
                                                ("max_weight", max_weight is not None),
                                                ("smoothing", smoothing is not None)) if value]
            if ignored:
                raise SafeDenoiserError(f"{', '.join(ignored)} set the identity's estimator, which the paper rule "
                                        "(a preset, or h, s, window, tau) does not use: drop one or the other")
            self.paper = PaperRule(negation, **resolve_preset(preset, params))
            return
        set_width = negation.bandwidth if isinstance(negation, NegationSet) else 0.0
        self.smoothing = set_width if smoothing is None else smoothing
        self.beta = self._make_estimator(beta, reference)
        own = getattr(self.beta, "smoothing", None)  # ratio-type estimators compare densities at their width
        if own is not None and own != self.smoothing:
            if smoothing is not None:
                raise SafeDenoiserError(f"smoothing={smoothing} differs from the estimator's own ({own}); beta divides "
                                        "the set's density by the reference's, both at one width: give one of them")
            self.smoothing = own
        if not isinstance(self.beta, LocalPosterior):
            if latch is True:
                raise SafeDenoiserError("latch holds the local estimator's beta: give reference samples "
                                        "(reference=..., or a set built with --reference-images) and beta='auto' "
                                        "or 'local'")
            if features == "unet":
                raise SafeDenoiserError("features='unet' is for the local estimator; the others measure closeness in "
                                        "the latents: give reference samples (reference=..., or a set built with "
                                        "--reference-images) and beta='auto' or 'local'")
        if max_weight is None:
            self.max_weight = getattr(self.beta, "max_weight", DEFAULT_MAX_WEIGHT)
        # a gate over this very set reads the clean log-mass of D(x_t) from the posterior's pass over the set
        self._gate_in_posterior = (isinstance(self.beta, (KernelGateBeta, HybridBeta))
                                   and self.beta.negation is self.negation)

    def _make_estimator(self, beta: str | BetaEstimator, reference: Tensor | None) -> BetaEstimator | LocalPosterior:
        if not isinstance(beta, str):
            return beta
        if not isinstance(self.negation, NegationSet):
            raise SafeDenoiserError(f"beta={beta!r} needs a NegationSet; pass an estimator object instead")
        reference = self.negation.reference if reference is None else reference
        if beta == "auto":
            beta = "gate" if reference is None else "local"
        if beta == "gate":
            return KernelGateBeta(self.negation)
        if beta in ("local", "labelled", "ratio", "hybrid"):
            if reference is None:
                raise SafeDenoiserError(f"beta={beta!r} needs reference samples from the model (reference=..., or "
                                        "a negation set built with reference images)")
            if beta == "local":
                return LocalPosterior(self.negation, reference)
            estimator = {"labelled": LabelledReferenceBeta, "ratio": KernelRatioBeta, "hybrid": HybridBeta}[beta]
            return estimator(self.negation, reference, smoothing=self.smoothing)
        raise SafeDenoiserError(f"unknown beta estimator {beta!r}; use 'auto', 'local', 'gate', 'labelled', 'ratio', "
                                "'hybrid' or an estimator object")

    def __repr__(self) -> str:
        if self.paper is not None:
            rule = self.paper
            how = f"paper rule h={rule.h:.4g} s={rule.s:g} window={rule.window:g} tau={rule.tau:.4g}"
        else:
            how = (f"beta={type(self.beta).__name__}, latch={self.latch!r}, features={self.features!r}, "
                   f"min_weight={self.min_weight:g}, max_weight={self.max_weight:g}")
        return f"SafeDenoiser({self.negation!r}, {how})"

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        return self.negation.sample_shape if isinstance(self.negation, NegationSet) else None

    def correct(self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float, x0_hat: Tensor, *,
                guided: bool = False, within_step: bool = False) -> Correction:
        """Apply the safe denoiser to one batch; records a `StepRecord` in `trace` and updates `samples`.
        ``guided``: ``x0_hat`` comes from classifier-free guidance (turns on ``latch="auto"``).
        ``within_step``: this call evaluates the model again inside the step of the previous call (the second
        evaluation of a second-order scheduler; `attach` tells): beta is held, `step_beta` (not by the paper
        rule, which `attach` refuses with such schedulers)."""
        if x_t.shape != x0_hat.shape:
            raise SafeDenoiserError(f"x_t has shape {tuple(x_t.shape)} but x0_hat {tuple(x0_hat.shape)}: give the "
                                    "model's estimate of the same batch")
        if self.sample_shape is not None and tuple(x_t.shape[1:]) != self.sample_shape:
            self.negation.check_compatible(tuple(x_t.shape[1:]))  # raises, naming both shapes
        dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32  # kernel math in >= float32
        x, d = x_t.to(dtype), x0_hat.to(dtype)
        batch = x.shape[0]
        a = torch.as_tensor(alpha, dtype=dtype, device=x.device).expand(batch)
        s = torch.as_tensor(sigma, dtype=dtype, device=x.device).expand(batch)
        latch, local = False, None
        earlier = self._step_beta if within_step else None
        if earlier is not None and earlier.shape != (batch,):  # another batch: not the previous call's samples
            earlier = None
        if self.paper is not None:
            x0, beta, acted = self.paper(x, a, s, d)
            renoise = True
        elif isinstance(self.beta, LocalPosterior):
            local = self._local_in_features() if self.features == "unet" or not guided else None
            beta, d_unsafe, d_safe = (local or self.beta)(d.reshape(batch, -1))
            beta = beta if earlier is None else step_beta(beta, earlier.to(beta))
            latch = self.latch is True or (self.latch == "auto" and guided)
            if latch:
                beta = self._latch(beta, float(s[0] / a[0]))
            acted = safe_weight(beta, self.max_weight) > self.min_weight
            form = held_safe_denoise if latch else local_safe_denoise
            x0 = torch.where(acted.reshape(-1, *([1] * (d.ndim - 1))),
                             form(d, d_unsafe.reshape(d.shape), d_safe.reshape(d.shape), beta), d)
            renoise = False
        else:
            x0, beta, acted = self._identity(x, a, s, d, earlier)
            renoise = False
        self.trace.append(StepRecord(sigma=float(s[0]), alpha=float(a[0]), beta_mean=float(beta.mean()),
                                     beta_max=float(beta.max()), acted=int(acted.sum()), batch=batch,
                                     latched=latch, in_features=local is not None))
        if self.samples is None or len(self.samples.beta_max) != batch:  # a loop of its own that changed batch
            self.samples = SampleRecord(torch.zeros(batch, dtype=torch.float64), torch.zeros(batch, dtype=torch.long))
        self.samples.update(beta, acted)
        self._step_beta = beta.detach()
        return Correction(x0.to(x0_hat.dtype), beta, acted, renoise)

    def reset(self) -> None:
        """Start a new sampling run: an empty `trace` and `samples`, and no beta held by the latch (`attach`
        calls this at every ``set_timesteps``, so one pipeline call never inherits the beta another call's
        images reached)."""
        self.trace: list[StepRecord] = []
        self.samples: SampleRecord | None = None
        self._latched: tuple[Tensor, float] | None = None  # (beta so far, noise level sigma/alpha of the last call)
        self._step_beta: Tensor | None = None  # the last call's beta, for a call `within_step`

    def bind(self, pipe) -> None:
        """Give the local estimator ``pipe``'s UNet features as ``features`` asks (`attach` calls this).
        The sets' features are computed at the first step that uses them, once per UNet object (one
        changed in place, e.g. fine-tuned, needs a new `SafeDenoiser`). An estimator that brings its
        own features keeps them."""
        from safedenoiser.integrations.unet_features import UNetFeatures

        local = getattr(self, "beta", None)
        if self.features == "latent" or not isinstance(local, LocalPosterior) or local.features is not None:
            return
        if self._unet_features is not None and self._unet_features.unet is getattr(pipe, "unet", None):
            return
        channels = local.sample_shape[0]
        self._unet_features = (UNetFeatures(pipe, channels=channels) if self.features == "unet"
                               else UNetFeatures.of(pipe, channels))
        self._in_features = None

    def _local_in_features(self) -> LocalPosterior | None:
        if self._in_features is None and self._unet_features is not None:
            self._in_features = self.beta.with_features(self._unet_features)
        return self._in_features

    def _latch(self, beta: Tensor, level: float) -> Tensor:
        """`latched_beta` against this trajectory's earlier steps; a new trajectory starts when the
        noise level rises or the batch changes."""
        previous = self._latched
        if previous is not None and previous[0].shape == beta.shape and level <= previous[1]:
            beta = latched_beta(beta, previous[0].to(beta))
        self._latched = (beta, level)
        return beta

    def _identity(self, x: Tensor, a: Tensor, s: Tensor, d: Tensor,
                  earlier: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(x0, beta, acted)`` of the key identity; ``beta`` decides first (held at ``earlier``, the step's
        first beta, when given: `step_beta`), and ``D_unsafe`` (a second pass over the set) is computed only
        when some sample acts, else ``d`` passes through as is."""
        if self._gate_in_posterior:
            unsafe = self.negation.posterior(x, a, s, smoothing=self.smoothing, x0_hat=d)
        else:
            unsafe = self.negation.posterior(x, a, s, smoothing=self.smoothing)
        beta = self.beta(x, a, s, d, unsafe)
        if earlier is not None:
            beta = step_beta(beta, earlier.to(beta))
        w = safe_weight(beta, self.max_weight)
        acted = w > self.min_weight
        if not bool(acted.any()):
            return d, beta, acted
        x0 = torch.where(acted.reshape(-1, *([1] * (d.ndim - 1))), safe_denoise(d, unsafe.mean, w), d)
        return x0, beta, acted

    def __call__(self, x_t: Tensor, alpha: Tensor | float, sigma: Tensor | float, x0_hat: Tensor) -> Tensor:
        return self.correct(x_t, alpha, sigma, x0_hat).x0

    def wrap(self, denoiser: Denoiser) -> Denoiser:
        """The safe version of a denoiser ``(x_t, alpha, sigma) -> x0`` (identity mode only)."""
        if self.paper is not None:
            raise SafeDenoiserError("the paper rule re-noises the sample; use attach() or a sampler that supports it")

        def safe(x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
            return self(x_t, alpha, sigma, denoiser(x_t, alpha, sigma))

        return safe

    def attach(self, pipe, guided: bool | None = None):
        """Context manager: sample ``pipe`` safely (wraps ``pipe.scheduler.step``; restored on exit).
        ``guided=True`` for pipelines that guide without saying so (DiT, PixArt, FLUX;
        `integrations.diffusers.attach`)."""
        from safedenoiser.integrations.diffusers import attach

        return attach(self, pipe, guided)
