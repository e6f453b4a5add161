"""attach() on a tiny Stable Diffusion pipeline: every scheduler and prediction type, bit-identical
output with a far set, moving away from a set that holds the vanilla result, exact restoration,
refusals before sampling, float32 and bfloat16, composition with negative prompts and SLD."""

from __future__ import annotations

import contextlib
import copy

import diffusers
import pytest
import torch
from conftest import MAX_TOKENS, SD_SCHEDULER, TEXT_DIM, pipeline_state, tiny_vae

from safedenoiser import NegationSet, SafeDenoiser, SafeDenoiserError

STEPS = 4
BATCH = 2
LATENT = (4, 8, 8)
SCHEDULERS = {
    "DDPM": lambda: diffusers.DDPMScheduler.from_config(SD_SCHEDULER),
    "DDIM": lambda: diffusers.DDIMScheduler.from_config(SD_SCHEDULER),
    "PNDM": lambda: diffusers.PNDMScheduler.from_config(SD_SCHEDULER, skip_prk_steps=True),
    "Euler": lambda: diffusers.EulerDiscreteScheduler.from_config(SD_SCHEDULER),
    "EulerAncestral": lambda: diffusers.EulerAncestralDiscreteScheduler.from_config(SD_SCHEDULER),
    "DPMSolver++": lambda: diffusers.DPMSolverMultistepScheduler.from_config(SD_SCHEDULER,
                                                                             algorithm_type="dpmsolver++"),
    "DPMSolver++karras": lambda: diffusers.DPMSolverMultistepScheduler.from_config(
        SD_SCHEDULER, algorithm_type="dpmsolver++", use_karras_sigmas=True),
    "DPMSinglestep": lambda: diffusers.DPMSolverSinglestepScheduler.from_config(SD_SCHEDULER),
    "UniPC": lambda: diffusers.UniPCMultistepScheduler.from_config(SD_SCHEDULER),
    "LCM": lambda: diffusers.LCMScheduler.from_config(SD_SCHEDULER),
    "TCD": lambda: diffusers.TCDScheduler.from_config(SD_SCHEDULER),
    "Heun": lambda: diffusers.HeunDiscreteScheduler.from_config(SD_SCHEDULER),
    "KDPM2": lambda: diffusers.KDPM2DiscreteScheduler.from_config(SD_SCHEDULER),
    "KDPM2Ancestral": lambda: diffusers.KDPM2AncestralDiscreteScheduler.from_config(SD_SCHEDULER),
    "DPMSolverSDE": lambda: diffusers.DPMSolverSDEScheduler.from_config(SD_SCHEDULER, noise_sampler_seed=0),
}


def embeds(seed: int = 0, batch: int = BATCH) -> torch.Tensor:
    return torch.randn(batch, MAX_TOKENS, TEXT_DIM, generator=torch.Generator().manual_seed(seed))


def run(pipe, safe: SafeDenoiser | None = None, output_type: str = "latent", **kwargs) -> torch.Tensor:
    """Sample with a fixed generator; latents by default (the decoded images follow bit for bit)."""
    args = dict(prompt_embeds=embeds().to(pipe.unet.dtype), negative_prompt_embeds=embeds(1).to(pipe.unet.dtype),
                num_inference_steps=STEPS, guidance_scale=3.0, output_type=output_type,
                generator=torch.Generator().manual_seed(0))
    args.update(kwargs)
    if safe is None:
        out = pipe(**args).images
    else:
        with safe.attach(pipe):
            out = pipe(**args).images
    return torch.as_tensor(out)


def far_set(shape=LATENT) -> NegationSet:
    return NegationSet.from_latents(torch.randn(6, *shape, generator=torch.Generator().manual_seed(5)) + 60.0)


def set_of(latents: torch.Tensor) -> NegationSet:
    """The vanilla results themselves plus copies jittered by 5% of their scale (so the set has a spread)."""
    jitter = 0.05 * float(latents.float().std()) * torch.randn(3, *latents.shape,
                                                               generator=torch.Generator().manual_seed(9))
    return NegationSet.from_latents(torch.cat([latents.float(), *(latents.float() + j for j in jitter)]))


def assert_moved_away(vanilla: torch.Tensor, safe_out: torch.Tensor, negation: NegationSet,
                      factor: float = 1.0) -> None:
    """Each safe result lies outside the set's support: farther from every member than ``factor``
    times the set's own nearest-neighbour spacing (the vanilla result is a member: distance 0)."""
    y = negation.latents.flatten(1).double()
    spacing = torch.cdist(y, y).fill_diagonal_(float("inf")).min(1).values.median()
    dist = torch.cdist(safe_out.flatten(1).double(), y).min(1).values
    assert torch.cdist(vanilla.flatten(1).double(), y).min(1).values.max() == 0
    assert bool((dist > factor * spacing).all()), f"distance to the set {dist.tolist()}, spacing {float(spacing)}"


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_far_set_gives_bit_identical_images(sd_pipe, name):
    sd_pipe.scheduler = SCHEDULERS[name]()
    vanilla = run(sd_pipe, output_type="np")
    safe = SafeDenoiser(far_set())
    assert torch.equal(vanilla, run(sd_pipe, safe, output_type="np"))
    assert len(safe.trace) == len(sd_pipe.scheduler.timesteps) and all(r.acted == 0 for r in safe.trace)
    assert [r.timestep for r in safe.trace] == [float(t) for t in sd_pipe.scheduler.timesteps]


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_set_holding_the_vanilla_result_moves_it_away(sd_pipe, name):
    sd_pipe.scheduler = SCHEDULERS[name]()
    vanilla = run(sd_pipe)
    safe = SafeDenoiser(set_of(vanilla))
    out = run(sd_pipe, safe)
    assert sum(r.acted for r in safe.trace) > 0
    assert_moved_away(vanilla, out, safe.negation)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("name", ["DDIM", "Euler", "DPMSolver++"])
def test_prediction_types_far_identical_and_near_moves(sd_pipe, name, prediction):
    sd_pipe.scheduler = SCHEDULERS[name]().__class__.from_config(SCHEDULERS[name]().config,
                                                                  prediction_type=prediction)
    vanilla = run(sd_pipe)
    assert torch.equal(vanilla, run(sd_pipe, SafeDenoiser(far_set())))
    if prediction == "sample" and name == "DDIM":
        return  # a random network's x0 never nears its own DDIM result; see the known-answer 'ddim-sample'
    near = set_of(vanilla)
    assert_moved_away(vanilla, run(sd_pipe, SafeDenoiser(near)), near)


def test_paper_preset_renoises_and_moves_away(sd_pipe):
    sd_pipe.scheduler = SCHEDULERS["DDPM"]()
    vanilla = run(sd_pipe)
    safe = SafeDenoiser(set_of(vanilla), preset="sd14-nudity", window=0.0)  # act at every step
    out = run(sd_pipe, safe)
    assert sum(r.acted for r in safe.trace) > 0
    assert_moved_away(vanilla, out, safe.negation)
    assert torch.equal(vanilla, run(sd_pipe, SafeDenoiser(far_set(), preset="sd14-nudity")))


def test_bfloat16_pipeline_far_identical_and_near_moves(sd_components):
    parts = {k: (copy.deepcopy(v).to(torch.bfloat16) if isinstance(v, torch.nn.Module) else v)
             for k, v in sd_components.items()}
    pipe = diffusers.StableDiffusionPipeline(**dict(parts, scheduler=SCHEDULERS["Euler"]()),
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    vanilla = run(pipe)
    assert vanilla.dtype == torch.bfloat16
    assert torch.equal(vanilla, run(pipe, SafeDenoiser(far_set())))
    near = set_of(vanilla)
    out = run(pipe, SafeDenoiser(near))
    assert out.dtype == torch.bfloat16
    assert_moved_away(vanilla, out, near)


# ------------------------------------------------------------------------------ restoration


def test_attach_then_detach_leaves_the_scheduler_exactly_as_before(sd_pipe):
    before = pipeline_state(sd_pipe)
    with SafeDenoiser(far_set()).attach(sd_pipe):
        assert "step" in sd_pipe.scheduler.__dict__
        run(sd_pipe)
    assert pipeline_state(sd_pipe) == before
    assert sd_pipe.scheduler.step.__func__ is type(sd_pipe.scheduler).step


def test_scheduler_is_restored_after_an_exception_inside_the_loop(sd_pipe):
    before = pipeline_state(sd_pipe)

    def boom(pipe, i, t, kwargs):
        raise RuntimeError("user callback failed")

    with pytest.raises(RuntimeError, match="user callback failed"):
        with SafeDenoiser(far_set()).attach(sd_pipe):
            run(sd_pipe, callback_on_step_end=boom)
    assert pipeline_state(sd_pipe) == before


def test_set_timesteps_starts_a_new_trace(sd_pipe):
    safe = SafeDenoiser(far_set())
    with safe.attach(sd_pipe):
        run(sd_pipe)
        run(sd_pipe, num_inference_steps=3)
    assert len(safe.trace) == 3


def test_a_new_call_does_not_inherit_the_latched_beta():
    """One-step runs share the noise level, so only ``set_timesteps`` tells the runs apart."""
    gen = torch.Generator().manual_seed(0)
    negation = NegationSet.from_latents(3 + 0.3 * torch.randn(64, *LATENT, generator=gen))
    reference = torch.cat([-3 + 0.3 * torch.randn(200, *LATENT, generator=gen),
                           3 + 0.3 * torch.randn(50, *LATENT, generator=gen)])
    safe = SafeDenoiser(negation, reference=reference, latch=True)
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=1000, prediction_type="sample")
    betas = []
    for centre in (3.0, -3.0):  # a request for the negated kind, then an ordinary one
        with safe.attach(scheduler):
            for _ in range(2):  # twice within the block too
                scheduler.set_timesteps(1)
                x0 = centre + 0.3 * torch.randn(BATCH, *LATENT, generator=gen)
                scheduler.step(x0, scheduler.timesteps[0], torch.randn(BATCH, *LATENT, generator=gen))
                betas.append(safe.trace[-1].beta_max)
    assert min(betas[:2]) > 0.99 and max(betas[2:]) < 0.01


@pytest.mark.parametrize("guided", [None, True, False])
def test_guided_overrides_what_the_pipeline_says(sd_pipe, guided):
    """DiT and PixArt guide without ``do_classifier_free_guidance``; ``attach(pipe, guided=True)`` says so."""
    reference = torch.randn(20, *LATENT, generator=torch.Generator().manual_seed(1))
    safe = SafeDenoiser(far_set(), reference=reference)  # latch="auto": on exactly when guided
    with safe.attach(sd_pipe, guided=guided):
        run(sd_pipe)  # guidance_scale 3: the pipeline says it guides
    assert {r.latched for r in safe.trace} == {guided is not False}


# ------------------------------------------------------------------------------ refusals


def test_refuses_an_unknown_scheduler_at_attach(sd_pipe):
    sd_pipe.scheduler = diffusers.IPNDMScheduler()  # it steps a table of its own, not sigmas of a known kind
    with pytest.raises(SafeDenoiserError, match="IPNDMScheduler.*Switch to a supported one"):
        with SafeDenoiser(far_set()).attach(sd_pipe):
            pass
    assert "step" not in sd_pipe.scheduler.__dict__


@pytest.mark.parametrize("name", ["PNDM", "DPMSinglestep", "Heun", "UniPC", "KDPM2", "KDPM2Ancestral",
                                  "DPMSolverSDE"])
def test_refuses_the_paper_rule_with_a_scheduler_that_would_drop_its_renoising(sd_pipe, name):
    sd_pipe.scheduler = SCHEDULERS[name]()
    with pytest.raises(SafeDenoiserError, match="paper rule re-noises"):
        with SafeDenoiser(far_set(), preset="sd14-nudity").attach(sd_pipe):
            pass
    with SafeDenoiser(far_set()).attach(sd_pipe):  # the identity replaces the model output: fine
        pass


def test_refuses_an_unknown_prediction_type_at_attach(sd_pipe):
    sd_pipe.scheduler = diffusers.DDIMScheduler.from_config(SD_SCHEDULER, prediction_type="mystery")
    with pytest.raises(SafeDenoiserError, match="prediction type 'mystery'"):
        with SafeDenoiser(far_set()).attach(sd_pipe):
            pass


def test_refuses_other_channels_at_attach(sd_pipe):
    with pytest.raises(SafeDenoiserError, match=r"shape \(3, 8, 8\).*rebuild the set"):
        with SafeDenoiser(far_set((3, 8, 8))).attach(sd_pipe):
            pass


def test_refuses_another_resolution_before_the_first_step_changes_anything(sd_pipe):
    before = pipeline_state(sd_pipe)
    calls = []
    safe = SafeDenoiser(far_set((4, 4, 4)))
    with pytest.raises(SafeDenoiserError, match=r"shape \(4, 4, 4\) but the model denoises \(4, 8, 8\)"):
        run(sd_pipe, safe, callback_on_step_end=lambda p, i, t, kw: calls.append(i) or kw)
    assert calls == [] and safe.trace == []
    assert pipeline_state(sd_pipe) == before


def test_refuses_a_set_encoded_by_another_vae(sd_pipe):
    other = copy.copy(sd_pipe)
    other.vae = tiny_vae()
    torch.manual_seed(1)
    other.vae = type(other.vae)(**other.vae.config)  # same config, other weights
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    foreign = NegationSet.from_images(other, images, progress=False)
    with pytest.raises(SafeDenoiserError, match="different VAE"):
        with SafeDenoiser(foreign).attach(sd_pipe):
            pass
    own = NegationSet.from_images(sd_pipe, images, progress=False)
    with SafeDenoiser(own).attach(sd_pipe):
        pass


@pytest.mark.parametrize("latents, message", [(torch.zeros(0, *LATENT), "empty"),
                                               (torch.full((2, *LATENT), float("nan")), "NaN")])
def test_refuses_empty_and_nan_sets(latents, message):
    with pytest.raises(SafeDenoiserError, match=message):
        NegationSet.from_latents(latents)


@pytest.mark.parametrize("images, message", [(torch.rand(2, 1, 16, 16), r"got shape \(2, 1, 16, 16\)"),
                                              (torch.rand(0, 3, 16, 16), "with N >= 1")])
def test_from_images_refuses_a_tensor_the_vae_cannot_take(sd_pipe, images, message):
    with pytest.raises(SafeDenoiserError, match=message):
        NegationSet.from_images(sd_pipe, images, progress=False)


def test_user_mistakes_with_sets_are_named(tmp_path):
    with pytest.raises(SafeDenoiserError, match="for image files use NegationSet.from_images"):
        NegationSet.from_latents("images/")
    with pytest.raises(SafeDenoiserError, match="folder .* does not exist"):
        far_set().save(tmp_path / "missing" / "set.safetensors")
    safe = SafeDenoiser(far_set())
    x = torch.randn(2, *LATENT)
    with pytest.raises(SafeDenoiserError, match="x_t has shape"):
        safe.correct(x, 1.0, 1.0, x[:1])
    with pytest.raises(SafeDenoiserError, match="negation latents have shape"):
        safe.correct(x[:, :, :4], 1.0, 1.0, x[:, :, :4])
    for weight in (0.0, -1.0):
        with pytest.raises(SafeDenoiserError, match="max_weight"):
            SafeDenoiser(far_set(), max_weight=weight)
    with pytest.raises(SafeDenoiserError, match="min_weight"):
        SafeDenoiser(far_set(), min_weight=-1.0)


# ------------------------------------------------------------------------------ the paper rule's fresh noise


def _paper_loop(scheduler_name: str, safe: bool, generators: list | None = None, seed: int = 0) -> torch.Tensor:
    """An own loop over a scheduler with a "model" predicting fixed clean targets, stopped before its last
    step (the state, noisy, still shows which noise each image drew); with ``safe``, the paper
    rule, whose negation set holds the first 2 of the 4 images (it acts on them at every step, never on the
    others, which lie far away)."""
    gen = torch.Generator().manual_seed(3)
    targets = torch.randn(4, *LATENT, generator=gen)
    targets[2:] += 40.0
    near = NegationSet.from_latents(targets[:2] + 0.01 * torch.randn(2, *LATENT, generator=gen))
    kind = {"DDPM": diffusers.DDPMScheduler, "DEIS": diffusers.DEISMultistepScheduler}[scheduler_name]
    scheduler = kind.from_config(SD_SCHEDULER, prediction_type="sample")
    torch.manual_seed(seed)  # torch's global RNG: must not matter
    corrector = SafeDenoiser(near, h=1.0, s=0.5, window=0.0, tau=0.0)
    with corrector.attach(scheduler) if safe else contextlib.nullcontext():
        scheduler.set_timesteps(6)
        x = torch.randn(4, *LATENT, generator=torch.Generator().manual_seed(4)) * scheduler.init_noise_sigma
        for t in scheduler.timesteps[:-1]:  # the last step would return the targets whatever the path
            extra = {"generator": generators} if generators is not None else {}
            x = scheduler.step(targets.clone(), t, x, **extra).prev_sample
    if safe:
        assert [r.acted for r in corrector.trace] == [2] * (len(scheduler.timesteps) - 1)
    return x


def test_paper_rule_leaves_images_that_never_act_bit_identical_to_vanilla():
    per_image = lambda: [torch.Generator().manual_seed(10 + i) for i in range(4)]  # noqa: E731
    vanilla = _paper_loop("DDPM", safe=False, generators=per_image())
    corrected = _paper_loop("DDPM", safe=True, generators=per_image())
    assert torch.equal(corrected[2:], vanilla[2:])  # their generators were not advanced by the re-noising
    assert not torch.equal(corrected[:2], vanilla[:2])


def test_paper_rule_is_reproducible_with_a_scheduler_whose_step_takes_no_generator():
    assert torch.equal(_paper_loop("DEIS", safe=True, seed=0), _paper_loop("DEIS", safe=True, seed=1))


# ------------------------------------------------------------------------------ composition


def test_negative_prompt_composes(sd_pipe):
    kw = dict(prompt_embeds=None, negative_prompt_embeds=None, prompt=["a red fox", "a cat"],
              negative_prompt=["blurry", "dark"])
    vanilla = run(sd_pipe, **kw)
    assert not torch.equal(vanilla, run(sd_pipe, prompt_embeds=None, negative_prompt_embeds=None,
                                        prompt=["a red fox", "a cat"]))  # the negative prompt matters
    assert torch.equal(vanilla, run(sd_pipe, SafeDenoiser(far_set()), **kw))
    near = set_of(vanilla)
    assert_moved_away(vanilla, run(sd_pipe, SafeDenoiser(near), **kw), near)


def test_safe_latent_diffusion_composes(sd_components):
    from diffusers import StableDiffusionPipelineSafe

    pipe = StableDiffusionPipelineSafe(**dict(sd_components, scheduler=SCHEDULERS["DDIM"]()),
                                       requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    last = {}
    kw = dict(prompt=["a red fox", "a cat"], num_inference_steps=STEPS, guidance_scale=3.0, output_type="np",
              callback=lambda i, t, latents: last.update(latents=latents.clone()),
              sld_guidance_scale=100, sld_warmup_steps=0)

    def go(safe=None):
        if safe is None:
            return torch.as_tensor(pipe(**kw, generator=torch.Generator().manual_seed(0)).images)
        with safe.attach(pipe):
            return torch.as_tensor(pipe(**kw, generator=torch.Generator().manual_seed(0)).images)

    vanilla = go()
    assert torch.equal(vanilla, go(SafeDenoiser(far_set())))
    vanilla_latents = last["latents"]
    near = SafeDenoiser(set_of(vanilla_latents))
    assert not torch.equal(vanilla, go(near))
    assert sum(r.acted for r in near.trace) > 0
    assert_moved_away(vanilla_latents, last["latents"], near.negation)
