"""Known answer: an exact Gaussian-mixture noise predictor inside real diffusers samplers.

Mixture (2-D data shaped [2, 1, 1]): kept components at (-0.5, -0.3) and (0.5, -0.3) with weight
0.3 each, the negated one at (0, 0.5) with weight 0.4, all with std 0.1. Vanilla sampling puts
~40% of samples in the negated component; the safe denoiser must take that to <= 5% and keep each
kept component at 50% +- 25% relative (their share under p_safe), and a far set must change
nothing bit for bit. Every scheduler runs on the model's own noise schedule (``MIXTURE_SCHEDULE``): Heun's,
LCM's and TCD's defaults are Stable Diffusion's, which would hand the model timesteps of another noise level.
The EDM schedulers hand an EDM-preconditioned mixture model their own sigmas, which it reads from the timestep.
"""

from __future__ import annotations

import functools

import diffusers
import pytest
import torch
from conftest import (NEGATED, ExactNegatedComponent, component_shares, exact_beta, mixture_model,
                      mixture_pipeline, mixture_samples, run_loop)
from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, DPMSolverSDEScheduler,
                       EDMDPMSolverMultistepScheduler, EDMEulerScheduler, EulerDiscreteScheduler,
                       FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler, HeunDiscreteScheduler,
                       KDPM2AncestralDiscreteScheduler, KDPM2DiscreteScheduler, LCMScheduler, TCDScheduler,
                       UniPCMultistepScheduler)

from safedenoiser import NegationSet, SafeDenoiser, SafeDenoiserError
from safedenoiser.core.beta import ExactBeta
from safedenoiser.integrations.diffusers import EDM, FLOW, OWN_SAMPLE, SIGMA_SPACE, SUPPORTED, noise_level

N_SAMPLES = 1000
NEGATED_MAX = 0.05  # target; the aim is 0.01
KEPT_SHARE, KEPT_TOLERANCE = 0.5, 0.25  # p_safe share of each kept component, relative tolerance
MIXTURE_SCHEDULE = dict(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")  # `mixture_model`'s


def negation_set() -> NegationSet:
    return NegationSet.from_latents(mixture_samples(NEGATED, 200, seed=1))


def far_set() -> NegationSet:
    return NegationSet.from_latents(mixture_samples(NEGATED, 8, seed=2) + 40.0)


@functools.lru_cache(maxsize=None)
def vanilla(sampler: str) -> torch.Tensor:
    return sample(sampler)


def sample(sampler: str, safe: SafeDenoiser | None = None, n: int = N_SAMPLES, seed: int = 0) -> torch.Tensor:
    """``n`` final samples [n, 2, 1, 1] of one sampler from ``seed``, optionally with ``safe`` attached."""
    if sampler in ("DDIMPipeline", "DDPMPipeline"):
        pipe = mixture_pipeline(sampler)
        steps = 50

        def go():
            images = pipe(batch_size=n, num_inference_steps=steps, output_type="np",
                          generator=torch.Generator().manual_seed(seed)).images
            return torch.from_numpy(images).permute(0, 3, 1, 2) * 2 - 1  # undo the pipeline's [0, 1] mapping

        target = pipe
    else:
        model, scheduler = SAMPLERS[sampler]()
        target = scheduler

        def go():
            return run_loop(model, scheduler, n=n, steps=50, seed=seed)

    if safe is None:
        return go()
    with safe.attach(target):
        return go()


SAMPLERS = {
    "euler": lambda: (mixture_model(), EulerDiscreteScheduler()),
    "dpm++": lambda: (mixture_model(), DPMSolverMultistepScheduler(algorithm_type="dpmsolver++")),
    "euler-v": lambda: (mixture_model("v_prediction"), EulerDiscreteScheduler(prediction_type="v_prediction")),
    "ddim-v": lambda: (mixture_model("v_prediction"), DDIMScheduler(prediction_type="v_prediction", clip_sample=False)),
    "ddim-sample": lambda: (mixture_model("sample"), DDIMScheduler(prediction_type="sample", clip_sample=False)),
    "unipc-sample": lambda: (mixture_model("sample"), UniPCMultistepScheduler(prediction_type="sample")),
    "flow-euler": lambda: (mixture_model("flow"), FlowMatchEulerDiscreteScheduler()),
    "heun": lambda: (mixture_model(), HeunDiscreteScheduler(**MIXTURE_SCHEDULE)),
    "lcm": lambda: (mixture_model(), LCMScheduler(**MIXTURE_SCHEDULE)),
    "tcd": lambda: (mixture_model(), TCDScheduler(**MIXTURE_SCHEDULE)),
    "dpm++-flow": lambda: (mixture_model("flow"), DPMSolverMultistepScheduler(  # Sana's
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0)),
    "edm-euler": lambda: (mixture_model("edm-epsilon"), EDMEulerScheduler()),
    "edm-dpm++-v": lambda: (mixture_model("edm-v_prediction"), EDMDPMSolverMultistepScheduler(
        prediction_type="v_prediction")),
    "kdpm2": lambda: (mixture_model(), KDPM2DiscreteScheduler(**MIXTURE_SCHEDULE)),
    "kdpm2-ancestral": lambda: (mixture_model(), KDPM2AncestralDiscreteScheduler(**MIXTURE_SCHEDULE)),
    "flow-heun": lambda: (mixture_model("flow"), FlowMatchHeunDiscreteScheduler()),
    "dpm++-sde": lambda: (mixture_model(), DPMSolverSDEScheduler(**MIXTURE_SCHEDULE, noise_sampler_seed=0)),
}
REQUIRED = ["DDIMPipeline", "DDPMPipeline", "euler", "dpm++"]
PARAMETRISATIONS = ["euler-v", "ddim-v", "ddim-sample", "unipc-sample", "flow-euler"]
# second order (KDPM2 through a midpoint), consistency, Sana's flow DPM-Solver++, EDM
MORE_SAMPLERS = ["heun", "kdpm2", "kdpm2-ancestral", "dpm++-sde", "lcm", "tcd", "dpm++-flow", "edm-euler",
                 "edm-dpm++-v"]
# FlowMatchHeun: the reference-free gate leaves 7% of its samples in the negated component at 50 steps, as it leaves
# 8% with FlowMatchEuler's levels (docs/results/known_answer_schedulers.md), so it is not in the gate's test.
GATE_MISSES = ["flow-heun"]


def assert_safe_shares(shares: list[float], aim: float = NEGATED_MAX) -> None:
    assert shares[NEGATED] <= aim, f"negated share {shares[NEGATED]:.4f} > {aim}; shares {shares}"
    for k in (0, 1):
        assert abs(shares[k] / KEPT_SHARE - 1) <= KEPT_TOLERANCE, f"kept component {k}: share {shares[k]:.4f}"


@pytest.mark.parametrize("sampler", REQUIRED + MORE_SAMPLERS + GATE_MISSES)
def test_vanilla_puts_about_40_percent_in_the_negated_component(sampler):
    shares = component_shares(vanilla(sampler))
    assert 0.35 <= shares[NEGATED] <= 0.45, shares


@pytest.mark.parametrize("sampler", REQUIRED + MORE_SAMPLERS)
def test_default_safe_denoiser_removes_the_negated_component(sampler):
    """Without reference samples the default is the gate: it meets the target at these 50 steps, not at many more
    (docs/results/toy_step_counts.md, this mixture: 1.5% at 60 DPM-Solver++ steps, 25% at 240)."""
    safe = SafeDenoiser(negation_set())
    shares = component_shares(sample(sampler, safe))
    print(f"{sampler}: default shares {shares}")
    assert_safe_shares(shares)


@pytest.mark.parametrize("sampler", REQUIRED + MORE_SAMPLERS + GATE_MISSES)
def test_far_set_changes_nothing_bit_for_bit(sampler):
    safe = SafeDenoiser(far_set())
    assert torch.equal(vanilla(sampler), sample(sampler, safe))
    assert safe.trace and all(r.acted == 0 for r in safe.trace)


@pytest.mark.parametrize("sampler", REQUIRED + PARAMETRISATIONS + MORE_SAMPLERS + GATE_MISSES)
def test_exact_beta_reaches_one_percent_for_every_parametrisation(sampler):
    """With exact beta and D_unsafe the adapter alone decides the result: it must be the safe mixture.
    KDPM2-ancestral leaves 0.76% (worst seed 0.88%; the others 0.3-0.55%, docs/results/known_answer_schedulers.md):
    it is judged on 4,000 samples, where 1,000's noise (+-0.3 points) would cross 1%."""
    safe = SafeDenoiser(ExactNegatedComponent(), beta=ExactBeta(exact_beta))
    shares = component_shares(sample(sampler, safe, n=4 * N_SAMPLES if sampler == "kdpm2-ancestral" else N_SAMPLES))
    print(f"{sampler}: exact-beta shares {shares}")
    assert_safe_shares(shares, aim=0.01)


@pytest.mark.parametrize("sampler", ["DDIMPipeline", "euler"])
def test_ratio_beta_with_model_samples_reaches_one_percent(sampler):
    reference = vanilla(sampler)[:500]
    safe = SafeDenoiser(negation_set(), beta="ratio", reference=reference)
    shares = component_shares(sample(sampler, safe))
    print(f"{sampler}: ratio-beta shares {shares}")
    assert_safe_shares(shares, aim=0.01)


@pytest.mark.parametrize("name", SIGMA_SPACE)
def test_noise_level_is_the_one_the_model_input_was_scaled_for(name):
    """Sigma-space schedulers scale the model input by ``1 / sqrt(sigma^2 + 1)`` of the level they evaluate the
    model at: KDPM2's second evaluations at a midpoint sigma, Heun's at the next one. Read at every call of a
    sampling loop, the level attach converts the output with must be that one."""
    scheduler = getattr(diffusers, name)(**MIXTURE_SCHEDULE)
    scheduler.set_timesteps(10)
    x = torch.ones(1, 2, 1, 1)
    for t in scheduler.timesteps:
        model_scale = float(scheduler.scale_model_input(x, t).flatten()[0])
        assert noise_level(scheduler, t)[2] == pytest.approx(model_scale, rel=1e-6), (name, float(t))
        scheduler.step(torch.zeros_like(x), t, x)


@pytest.mark.parametrize("name", SUPPORTED)
def test_attach_tells_the_second_evaluation_of_each_step(name):
    """`step_beta` holds beta over a step's evaluations: attach must pass ``within_step`` at every second model
    evaluation of a scheduler of order 2 (diffusers' own count of evaluations a step) and never otherwise."""
    model, scheduler = supported_sampler(name)
    safe, flags = SafeDenoiser(far_set()), []
    correct = safe.correct

    def recording(*args, within_step: bool = False, **kwargs):
        flags.append(within_step)
        return correct(*args, within_step=within_step, **kwargs)

    safe.correct = recording
    with safe.attach(scheduler):
        run_loop(model, scheduler, n=2, steps=6)
    assert len(flags) == len(scheduler.timesteps)
    assert flags == [scheduler.order == 2 and i % 2 == 1 for i in range(len(flags))]


# ------------------------------------------------------------------------------ the paper rule, every scheduler

PAPER_RULE = dict(h=0.2, s=1.0, window=0.5)  # a fixed repulsion from the set, at sigma / alpha >= 0.5


def supported_sampler(name: str):
    """The mixture model and the scheduler class ``name`` of `SUPPORTED`, on the model's own noise schedule."""
    kind = getattr(diffusers, name)
    if name in EDM:
        return mixture_model("edm-epsilon"), kind()
    if name in FLOW:
        return mixture_model("flow"), kind()
    return mixture_model(), kind(**MIXTURE_SCHEDULE, **({"skip_prk_steps": True} if name == "PNDMScheduler" else {}))


@pytest.mark.parametrize("name", SUPPORTED)
def test_paper_rule_moves_samples_with_every_scheduler_that_accepts_it(name):
    """The rule re-noises the sample it hands the scheduler; a scheduler that takes its steps from a sample it
    stored (`OWN_SAMPLE`) is refused. Every other one must carry the re-noising into its result: UniPC, before
    it was refused, left the negated share at vanilla's 42.4% (its corrector rebuilds each sample from the
    previous one). LCM, which draws all of each step's noise afresh, keeps least of it: 44.0% -> 40.9%."""
    safe = SafeDenoiser(negation_set(), **PAPER_RULE)
    if name in OWN_SAMPLE:
        with pytest.raises(SafeDenoiserError, match="paper rule re-noises"):
            with safe.attach(supported_sampler(name)[1]):
                pass
        return
    vanilla_share = component_shares(run_loop(*supported_sampler(name), n=N_SAMPLES))[NEGATED]
    model, scheduler = supported_sampler(name)
    with safe.attach(scheduler):
        share = component_shares(run_loop(model, scheduler, n=N_SAMPLES))[NEGATED]
    print(f"{name}: paper rule {share:.3f}, vanilla {vanilla_share:.3f}")
    assert share <= vanilla_share - 0.02
