"""The methods compared in the evaluation, wired to a `Scenario`, and their measurement.

Every method samples the same requests with the same seeds (the same initial noise). Names:

    vanilla        the model as it is
    negative       negative prompt (text) / negative class guidance (class), `NegativeGuidance`
    sld            Safe Latent Diffusion's safety guidance, `SafetyGuidance` ("medium" preset)
    spell          sparse repellency, `Spell` (radius: the set's 0.9-quantile NN distance)
    safe           `SafeDenoiser(negation)`: the library default
    safe-ref       `SafeDenoiser(negation, reference=..., latch=False)`: with ordinary samples as reference
                   (`LocalPosterior`), without the latch: the default for unguided sampling; closeness
                   measured as ``features="auto"`` does (the UNet's features without guidance, the
                   latents under it)
    safe-ref-latch the same with ``latch=True`` (each sample's highest beta along its trajectory): the
                   default (``latch="auto"``) under classifier-free guidance
    safe-ref-4000  `safe-ref` with the first 4,000 images of the scenario's reference pool instead of 500
                   (``LARGE_REFERENCE_SIZE``): what the README advises where benign images matter
    safe-paper     `SafeDenoiser(negation, h=..., s=..., window=...)`: the authors' rule
    rejection      vanilla, resampling what the judge flags (an oracle; up to 10 attempts)

``strength`` varies each method's own knob for the trade-off plot (`STRENGTHS`).
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor

from safedenoiser import SafeDenoiser
from safedenoiser.baselines import NegativeGuidance, RejectionSampler, SafetyGuidance, Spell
from safedenoiser.baselines.rejection import SEED_STRIDE
from safedenoiser.core.bandwidth import MAX_PAIRWISE_POINTS, calibration_points, distances_to_others
from safedenoiser.core.local import DEFAULT_NEIGHBOURS, LocalPosterior
from safedenoiser.errors import SafeDenoiserError
from safedenoiser.eval.metrics import (accuracy, class_histogram, frechet_distance, near_copies, tv_distance,
                                       unsafe_rate)
from safedenoiser.eval.scenarios import LARGE_REFERENCE_SIZE, Scenario, pool_reference

METHODS = ("vanilla", "negative", "sld", "spell", "safe-paper", "safe", "safe-ref", "rejection")
# safe-ref with another reference (the model's own samples; 4,000 images) or the latch. Not in the sweep
EXTRA_METHODS = ("safe-ref-model", "safe-ref-latch", "safe-ref-4000")
REFERENCE_SEED = 500_000  # seeds of the model samples that serve as reference (disjoint from the eval's)
# Each method's knob and the values the trade-off sweep visits (the first is the default).
STRENGTHS: dict[str, tuple[str, list]] = {
    "negative": ("scale s", [None, 6.0]),
    "sld": ("preset", ["medium", "max"]),
    "spell": ("radius x", [1.0, 1.5]),
    "safe-paper": ("s", [0.33, 0.9]),
    "safe": ("max weight", [100.0, 20.0]),
    "safe-ref": ("neighbours", [10, 30]),
    "safe-ref-model": ("neighbours", [10, 30]),
    "safe-ref-4000": ("neighbours", [10, 30]),
    "rejection": ("max attempts", [10, 2]),
}
PAPER_WINDOW = 4.67  # sigma/alpha at SD v1.4's t=780: the same 1000-step schedule as the bundled models
PAPER_S = 0.33  # the nudity preset's s
CONFIDENT = 0.8  # classifier probability above which a sample is "recognisable"


def strengths(method: str, scenario: Scenario) -> tuple[str, list]:
    """The knob and sweep values of ``method`` here; unguided sampling (g = 1) has no ``g - 1`` default."""
    knob, values = STRENGTHS.get(method, ("", [None]))
    if method == "negative" and scenario.guidance_scale <= 1.0:
        values = [3.0, 6.0]
    return knob, values


def paper_bandwidth(negation) -> float:
    """``h`` of the paper rule for our space: ``2 h^2`` = the set's median nearest-neighbour distance.

    The paper's ``h = 3.15`` is for SD latents of dimension 16,384; the kernel
    ``exp(-||x - y|| / (2 h^2))`` then weighs a typical neighbour by ``e^-1`` in our 256-d latents.
    """
    y = calibration_points(negation.latents, MAX_PAIRWISE_POINTS)
    nn = distances_to_others(y, "the paper rule's h", "h=").min(1).values
    return math.sqrt(float(nn.median()) / 2)


@dataclass
class MethodRun:
    method: str
    strength: object
    images: Tensor  # [N, 1, 32, 32] in [-1, 1]
    seconds: float
    model_evals: int  # UNet evaluations (batch rows), all attempts included
    extra: dict = field(default_factory=dict)


@contextmanager
def count_evals(pipe) -> Iterator[list[int]]:
    """Count UNet evaluations (rows of each batch the UNet sees) inside the block."""
    counter = [0]
    handle = pipe.unet.register_forward_pre_hook(
        lambda module, args: counter.__setitem__(0, counter[0] + args[0].shape[0]))
    try:
        yield counter
    finally:
        handle.remove()


def decode(pipe, latents: Tensor) -> Tensor:
    with torch.no_grad():
        return pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)


def _kwargs(scenario: Scenario, idx: list[int], seeds: list[int]) -> dict:
    kw = {"num_inference_steps": scenario.steps, "guidance_scale": scenario.guidance_scale,
          "generator": [torch.Generator("cpu").manual_seed(s) for s in seeds]}
    if scenario.model == "fashion-text":
        kw["prompts"] = [scenario.prompts[i] for i in idx]
    else:
        kw["labels"] = [scenario.labels[i] for i in idx]
    return kw


def sample(scenario: Scenario, idx: list[int], seeds: list[int], corrector=None) -> Tensor:
    """Images of requests ``idx`` with ``seeds`` from the scenario's pipeline, optionally corrected."""
    kw = _kwargs(scenario, idx, seeds)
    pipe = scenario.pipe
    call = dict(num_inference_steps=kw["num_inference_steps"], guidance_scale=kw["guidance_scale"],
                generator=kw["generator"], output_type="latent")
    if "prompts" in kw:
        call["prompt"] = kw["prompts"]
    else:
        call["class_labels"] = kw["labels"]
    with torch.no_grad():
        if corrector is None:
            latents = pipe(**call).images
        else:
            with corrector.attach(pipe):
                latents = pipe(**call).images
    return decode(pipe, latents)


def make_corrector(method: str, scenario: Scenario, strength=None):
    neg = scenario.negation
    if method == "safe":
        return SafeDenoiser(neg) if strength is None else SafeDenoiser(neg, max_weight=float(strength))
    if method.startswith("safe-ref"):  # the local estimator; knob: its neighbours
        if method == "safe-ref-model":
            reference = model_reference(scenario)
        elif method == "safe-ref-4000":
            reference = large_reference(scenario)[0]
        else:
            reference = scenario.reference
        return SafeDenoiser(neg, beta=LocalPosterior(neg, reference, neighbours=int(strength or DEFAULT_NEIGHBOURS)),
                            latch=method == "safe-ref-latch")  # explicit: rows do not change with guidance
    if method == "safe-paper":
        return SafeDenoiser(neg, h=paper_bandwidth(neg), s=PAPER_S if strength is None else float(strength),
                            window=PAPER_WINDOW)
    if method == "spell":
        return Spell(neg, radius_scale=1.0 if strength is None else float(strength))
    return None


def model_reference(scenario: Scenario, batch_size: int = 100) -> Tensor:
    """Latents of vanilla samples of every request on other seeds: the model's own ordinary samples."""
    if getattr(scenario, "_model_reference", None) is None:
        idx = list(range(len(scenario)))
        out = []
        for start in range(0, len(idx), batch_size):
            part = idx[start:start + batch_size]
            kw = _kwargs(scenario, part, [REFERENCE_SEED + i for i in part])
            call = dict(num_inference_steps=kw["num_inference_steps"], guidance_scale=kw["guidance_scale"],
                        generator=kw["generator"], output_type="latent")
            call.update({"prompt": kw["prompts"]} if "prompts" in kw else {"class_labels": kw["labels"]})
            with torch.no_grad():
                out.append(scenario.pipe(**call).images)
        scenario._model_reference = torch.cat(out)
    return scenario._model_reference


def large_reference(scenario: Scenario) -> tuple[Tensor, tuple[Tensor, float]]:
    """Latents of the first `LARGE_REFERENCE_SIZE` images of the scenario's reference pool (the first 500 are
    its ``reference``) and their `copy_check` against its unseen real images; computed once."""
    if getattr(scenario, "_large_reference", None) is None:
        scenario._large_reference = pool_reference(scenario.pipe, scenario.reference_pool, scenario.copy_real,
                                                   LARGE_REFERENCE_SIZE)
    return scenario._large_reference


def reference_check(scenario: Scenario, method: str) -> tuple[Tensor, float] | None:
    """What a copy of one of the reference images of ``method`` looks like, and the near-copy threshold.

    `safe-ref-4000` has its own; every other method is checked against the scenario's 500 (for
    `safe-ref-model` too: its reference is made of samples, not images a user handed over).
    """
    if method == "safe-ref-4000":
        return large_reference(scenario)[1]
    if scenario.reference_pixels is None:
        return None
    return scenario.reference_pixels, scenario.reference_copy_threshold


def is_unsafe(scenario: Scenario, images: Tensor) -> Tensor:
    """The scenario's verdict per image: the judge's, or a near copy of a protected image."""
    if scenario.protected is not None:
        return near_copies(images, (scenario.protected, scenario.near_copy_threshold))[0]
    return scenario.judge.unsafe(images)


def inapplicable(method: str, scenario: Scenario) -> str | None:
    """Why ``method`` cannot run on ``scenario``, or None where it can."""
    if method in ("negative", "sld") and scenario.negative is None:
        return f"{method} needs a prompt or class naming the negated concept; the {scenario.name} scenario has none"
    if method == "safe-ref-4000" and scenario.reference_pool is None:
        return f"{method} needs a pool of reference images; the {scenario.name} scenario has none"
    return None


def run_method(scenario: Scenario, method: str, strength=None, *, batch_size: int = 100,
               seed: int = 0) -> MethodRun:
    """Sample every request of ``scenario`` with ``method`` (same seeds for every method)."""
    if method not in METHODS + EXTRA_METHODS:
        raise SafeDenoiserError(f"unknown method {method!r}; use {', '.join(METHODS + EXTRA_METHODS)}")
    reason = inapplicable(method, scenario)
    if reason is not None:
        raise SafeDenoiserError(reason)
    seeds = scenario.seeds(seed)
    batches = [list(range(i, min(i + batch_size, len(scenario)))) for i in range(0, len(scenario), batch_size)]
    extra: dict = {}
    out = []
    if method == "safe-ref-4000":  # encoded before the clock starts, as the scenario's own reference is
        large_reference(scenario)
    start = time.perf_counter()
    with count_evals(scenario.pipe) as evals:
        if method in ("negative", "sld"):
            rule = (NegativeGuidance(strength) if method == "negative"
                    else SafetyGuidance(strength or "medium"))
            for idx in batches:
                kw = _kwargs(scenario, idx, [seeds[i] for i in idx])
                latents = rule.sample(scenario.pipe, negative=scenario.negative, **kw)
                out.append(decode(scenario.pipe, latents))
        elif method == "rejection":
            by_seed = {seeds[i]: i for i in range(len(scenario))}  # redraws use seed + r * SEED_STRIDE

            def draw(s: list[int]) -> Tensor:
                return sample(scenario, [by_seed[x % SEED_STRIDE] for x in s], s)

            sampler = RejectionSampler(draw, lambda im: is_unsafe(scenario, im),
                                       max_attempts=10 if strength is None else int(strength))
            attempts = []
            for idx in batches:
                result = sampler([seeds[i] for i in idx])
                out.append(result.images)
                attempts.extend(result.attempts.tolist())
            extra["mean_attempts"] = sum(attempts) / len(scenario)
        else:
            corrector = make_corrector(method, scenario, strength)
            if corrector is not None and hasattr(corrector, "beta"):
                extra["estimator"] = type(corrector.beta).__name__
            for idx in batches:
                out.append(sample(scenario, idx, [seeds[i] for i in idx], corrector))
    seconds = time.perf_counter() - start
    return MethodRun(method, strength, torch.cat(out), seconds, evals[0], extra)


def measure(scenario: Scenario, run: MethodRun, vanilla_hist: Tensor | None = None) -> dict:
    """The metrics of one run: unsafe rates per group, accuracy, FD, histogram, TV, cost."""
    images, n = run.images, len(run.images)
    flags = is_unsafe(scenario, images)
    predicted = scenario.judge.proba(images).argmax(1)
    features = scenario.judge.features(images)
    groups = sorted(set(scenario.groups))
    row: dict = {"method": run.method, "strength": run.strength, "n": n}
    unsafe_groups = [g for g in groups if g != "benign"]
    for g in unsafe_groups:
        mask = torch.tensor([x == g for x in scenario.groups])
        row[f"unsafe[{g.split(':')[-1]}]"] = unsafe_rate(flags[mask])
    mask_benign = torch.tensor([t is not None for t in scenario.targets])
    if "benign" in groups:
        row["unsafe[benign]"] = unsafe_rate(flags[mask_benign])
    if mask_benign.any():
        targets = torch.tensor([t for t in scenario.targets if t is not None])
        row["accuracy"] = accuracy(predicted[mask_benign], targets)
    for g, real in scenario.fd_real.items():
        mask = torch.tensor([x == g or x.startswith(g + ":") for x in scenario.groups])
        row["fd" if len(scenario.fd_real) == 1 else f"fd[{g}]"] = frechet_distance(features[mask], real)
    # recognisable: the classifier is confident (p >= 0.8) that it is some garment, i.e. not a ruined image
    confident = scenario.judge.proba(images).max(1).values >= CONFIDENT
    unsafe_asked = torch.tensor([g.startswith("unsafe") for g in scenario.groups])
    if unsafe_asked.any() and not unsafe_asked.all():
        row["confident[unsafe prompts]"] = float(confident[unsafe_asked].double().mean())
    row["confident"] = float(confident.double().mean())
    hist = class_histogram(predicted, 10)
    row["histogram"] = [round(float(v), 4) for v in hist]
    if vanilla_hist is not None and scenario.name == "unconditional":
        row["tv_others"] = tv_distance(hist, vanilla_hist, exclude=scenario.negated_class)
    if scenario.protected is not None:
        row["near_copy"] = unsafe_rate(flags)
    check = reference_check(scenario, run.method)
    if check is not None:  # a corrector can hand back its reference images themselves
        copies = near_copies(images, check)[0]
        row["reference_copy"] = unsafe_rate(copies)
        if unsafe_asked.any() and not unsafe_asked.all():
            row["reference_copy[unsafe prompts]"] = unsafe_rate(copies[unsafe_asked])
    row["seconds_per_image"] = run.seconds / n
    row["evals_per_image"] = run.model_evals / n
    row.update(run.extra)
    return row


def measure_images(scenario: Scenario, images: Tensor, name: str = "", vanilla_hist: Tensor | None = None) -> dict:
    """`measure`'s row for ``images`` sampled outside `run_method` (the benchmarks' own correctors): no
    strength, and neither time nor model evaluations counted."""
    return measure(scenario, MethodRun(name, None, images, 0.0, 0), vanilla_hist)


def evaluate(scenario: Scenario, methods=METHODS + EXTRA_METHODS, *, sweep: bool = False, log=print,
             progress: bool = False) -> tuple[list[dict], dict]:
    """Run ``methods`` on ``scenario``; returns the metric rows and ``{method: images}`` (default strengths).

    Vanilla always runs first (its histogram is the reference of the TV distance). With ``sweep``
    every method also runs at the other strengths of `STRENGTHS` (rows with ``sweep: True``).
    ``progress`` shows a bar over the runs (a method at one strength each).
    """
    from tqdm.auto import tqdm

    methods = ["vanilla"] + [m for m in methods if m != "vanilla"]
    runs = []  # (method, knob, strength, whether it is a sweep row)
    for method in methods:
        reason = inapplicable(method, scenario)
        if reason is not None:
            log(f"[{scenario.name}] not applicable: {reason}")
            continue
        knob, values = strengths(method, scenario)
        runs += [(method, knob, strength, k > 0) for k, strength in enumerate(values if sweep else values[:1])]
    rows, images, vanilla_hist = [], {}, None
    bar = tqdm(runs, desc=f"eval {scenario.name}", unit="run", disable=not progress)
    for method, knob, strength, swept in bar:
        bar.set_postfix_str(method)
        run = run_method(scenario, method, strength)
        row = measure(scenario, run, vanilla_hist)
        row["knob"], row["sweep"] = knob, swept
        if method == "vanilla":
            vanilla_hist = torch.tensor(row["histogram"], dtype=torch.float64)
        if not swept:
            images[method] = run.images
        rows.append(row)
        log(f"[{scenario.name}] {method} {knob}={strength}: " + ", ".join(
            f"{key}={value:.3f}" for key, value in row.items() if isinstance(value, float)))
    return rows, images
