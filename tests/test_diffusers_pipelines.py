"""Other pipeline families: pixel-space DDPM/DDIM, SD3 (flow matching, VAE with shift), FLUX (latents packed as
tokens), SDXL (added conditions, Euler; EDM as Playground v2.5), SD img2img, inpainting and ControlNet, DiT
(learned variance, class labels), and a user's own canonical loop; and `encode_images`."""

from __future__ import annotations

import copy
import io
import json
import logging

import diffusers
import numpy as np
import pytest
import torch
from conftest import MAX_TOKENS, SD_SCHEDULER, TEXT_DIM, tiny_unet_cond, tiny_unet_pixels, tiny_vae
from PIL import Image

from safedenoiser import NegationSet, SafeDenoiser, SafeDenoiserError
from safedenoiser.integrations.diffusers import pack, unpack
from safedenoiser.integrations.encode import encode_images, readable_images, vae_fingerprint


def far(shape) -> NegationSet:
    return NegationSet.from_latents(torch.randn(4, *shape, generator=torch.Generator().manual_seed(3)) + 60.0)


def near(latents: torch.Tensor) -> NegationSet:
    jitter = 0.05 * float(latents.float().std()) * torch.randn(3, *latents.shape,
                                                                generator=torch.Generator().manual_seed(9))
    return NegationSet.from_latents(torch.cat([latents.float(), *(latents.float() + j for j in jitter)]))


def with_safe(safe, pipe, fn):
    if safe is None:
        return fn()
    with safe.attach(pipe):
        return fn()


@pytest.mark.parametrize("cls", ["DDPMPipeline", "DDIMPipeline"])
def test_pixel_space_pipelines(cls):
    scheduler = (diffusers.DDPMScheduler if cls == "DDPMPipeline" else diffusers.DDIMScheduler)()
    pipe = getattr(diffusers, cls)(unet=tiny_unet_pixels(), scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)

    def go():
        out = pipe(batch_size=2, num_inference_steps=5, output_type="np", generator=torch.Generator().manual_seed(0))
        return torch.from_numpy(out.images).permute(0, 3, 1, 2)

    vanilla = go()
    assert torch.equal(vanilla, with_safe(SafeDenoiser(far((3, 8, 8))), pipe, go))
    pixels = vanilla * 2 - 1
    negation = NegationSet.from_images(pipe, pixels, progress=False)
    assert negation.metadata["encoder"] == "pixels" and torch.equal(negation.latents, pixels)
    safe = SafeDenoiser(negation)
    moved = with_safe(safe, pipe, go)
    assert sum(r.acted for r in safe.trace) > 0 and not torch.equal(moved, vanilla)


def test_user_canonical_loop_with_cfg(sd_components):
    """The canonical diffusers loop a user writes: scale_model_input, UNet, CFG, scheduler.step."""
    unet = sd_components["unet"]
    scheduler = diffusers.EulerAncestralDiscreteScheduler.from_config(SD_SCHEDULER)
    cond = torch.randn(2, MAX_TOKENS, TEXT_DIM, generator=torch.Generator().manual_seed(0))
    uncond = torch.zeros_like(cond)

    def loop():
        gen = torch.Generator().manual_seed(0)
        scheduler.set_timesteps(5)
        latents = torch.randn(2, 4, 8, 8, generator=gen) * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            inp = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            with torch.no_grad():
                eps_u, eps_c = unet(inp, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
            latents = scheduler.step(eps_u + 4.0 * (eps_c - eps_u), t, latents, generator=gen).prev_sample
        return latents

    class Holder:  # a user's own object with a scheduler and a unet
        pass

    holder = Holder()
    holder.scheduler, holder.unet = scheduler, unet
    vanilla = loop()
    assert torch.equal(vanilla, with_safe(SafeDenoiser(far((4, 8, 8))), holder, loop))
    safe = SafeDenoiser(near(vanilla))
    assert not torch.equal(vanilla, with_safe(safe, holder, loop))
    assert sum(r.acted for r in safe.trace) > 0 and "step" not in scheduler.__dict__


@pytest.mark.parametrize("guidance, latch, latched", [(4.0, "auto", True), (1.0, "auto", False),
                                                     (4.0, False, False), (1.0, True, True)])
def test_auto_latch_follows_the_pipelines_guidance(sd_pipe, guidance, latch, latched):
    def go():
        return sd_pipe("a bag", num_inference_steps=3, guidance_scale=guidance, output_type="latent",
                       generator=torch.Generator().manual_seed(0)).images

    vanilla = go()
    reference = torch.randn(12, *vanilla.shape[1:], generator=torch.Generator().manual_seed(1)) - 5.0
    safe = SafeDenoiser(near(vanilla), reference=reference, latch=latch)
    with_safe(safe, sd_pipe, go)
    assert len(safe.trace) == 3 and all(r.latched is latched for r in safe.trace)


def embedded_prompts(pipe, guidance_scale: float):
    """``go()`` for a pipeline fed prompt embeddings (SD3, SDXL): two prompts, 4 steps, latents out."""
    g = torch.Generator().manual_seed(1)
    kw = dict(prompt_embeds=torch.randn(2, 6, TEXT_DIM, generator=g),
              negative_prompt_embeds=torch.randn(2, 6, TEXT_DIM, generator=g),
              pooled_prompt_embeds=torch.randn(2, 16, generator=g),
              negative_pooled_prompt_embeds=torch.randn(2, 16, generator=g),
              num_inference_steps=4, guidance_scale=guidance_scale, output_type="latent", height=16, width=16)
    return lambda: pipe(**kw, generator=torch.Generator().manual_seed(0)).images


def sd3_pipe():
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=1,
                                        attention_head_dim=8, num_attention_heads=2, caption_projection_dim=16,
                                        joint_attention_dim=TEXT_DIM, pooled_projection_dim=16, out_channels=4).eval()
    vae = tiny_vae(shift_factor=0.0609, scaling_factor=1.5305)
    pipe = StableDiffusion3Pipeline(transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(),
                                    vae=vae, text_encoder=None, tokenizer=None, text_encoder_2=None,
                                    tokenizer_2=None, text_encoder_3=None, tokenizer_3=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def far_leaves_near_changes(pipe, go, reference: torch.Tensor | None = None) -> SafeDenoiser:
    """A far set leaves ``go()``'s latents bit-identical, a set near them changes them; the near run's denoiser."""
    vanilla = go()
    assert vanilla.shape == (2, 4, 8, 8)
    assert torch.equal(vanilla, with_safe(SafeDenoiser(far((4, 8, 8))), pipe, go))
    safe = SafeDenoiser(near(vanilla), reference=reference)
    assert not torch.equal(vanilla, with_safe(safe, pipe, go))
    assert sum(r.acted for r in safe.trace) > 0
    return safe


def test_sd3_flow_matching_pipeline():
    pipe = sd3_pipe()
    # SD3's latents are shifted and scaled: the pipeline returns (z - shift) * scale
    safe = far_leaves_near_changes(pipe, embedded_prompts(pipe, 3.0))
    assert all(abs(r.alpha + r.sigma - 1) < 1e-6 for r in safe.trace)  # flow levels


def test_pack_is_fluxs_packing_and_unpack_inverts_it():
    from diffusers import FluxPipeline

    latents = torch.randn(2, 4, 8, 6, generator=torch.Generator().manual_seed(0))
    tokens = pack(latents)
    assert torch.equal(tokens, FluxPipeline._pack_latents(latents, 2, 4, 8, 6))
    assert torch.equal(unpack(tokens, (4, 8, 6)), latents)
    assert torch.equal(FluxPipeline._unpack_latents(tokens, 16, 12, vae_scale_factor=2), latents)


@pytest.mark.parametrize("preset", [None, "sd14-memorization"])
def test_packed_samples_are_corrected_as_the_sets_images(preset):
    """A loop over FLUX's tokens ends where the same loop over the latents ends, to the bit: the correction
    (the identity, or the paper rule's re-noising) sees the set's images either way."""
    shape, gen = (4, 8, 8), torch.Generator().manual_seed(0)
    target = torch.randn(3, *shape, generator=gen)
    negation = NegationSet.from_latents(target[:1] + 0.05 * torch.randn(5, *shape, generator=gen))
    reference = None if preset else torch.randn(20, *shape, generator=gen)

    def run(packed: bool) -> tuple[torch.Tensor, int]:
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler()
        safe = SafeDenoiser(negation, reference=reference, preset=preset)
        x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(1))
        with safe.attach(scheduler):
            scheduler.set_timesteps(6)
            for t in scheduler.timesteps:  # a velocity that heads for `target`, plus noise
                v = torch.randn(3, *shape, generator=torch.Generator().manual_seed(int(t))) + 0.3 * (target - x)
                x = (unpack(scheduler.step(pack(v), t, pack(x)).prev_sample, shape) if packed
                     else scheduler.step(v, t, x).prev_sample)
        return x, sum(r.acted for r in safe.trace)

    (latents, acted), (tokens, acted_packed) = run(False), run(True)
    assert acted == acted_packed > 0
    assert torch.equal(latents, tokens)


def test_flux_pipeline_with_packed_latents():
    from diffusers import FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=8, num_attention_heads=2, joint_attention_dim=TEXT_DIM,
                                         pooled_projection_dim=16, axes_dims_rope=(2, 2, 4)).eval()
    pipe = FluxPipeline(scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=tiny_vae(shift_factor=0.1159,
                        scaling_factor=0.3611), text_encoder=None, tokenizer=None, text_encoder_2=None,
                        tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    kw = dict(prompt_embeds=torch.randn(2, 6, TEXT_DIM, generator=g),
              pooled_prompt_embeds=torch.randn(2, 16, generator=g),
              num_inference_steps=4, output_type="latent", height=16, width=16)
    go = lambda: unpack(pipe(**kw, generator=torch.Generator().manual_seed(0)).images, (4, 8, 8))  # noqa: E731
    far_leaves_near_changes(pipe, go)
    far_leaves_near_changes(pipe, go, reference=torch.randn(12, 4, 8, 8, generator=g) - 5.0)  # no UNet: latents


def sdxl_pipe():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM,
                                norm_num_groups=4, attention_head_dim=4, addition_embed_type="text_time",
                                addition_time_embed_dim=4, projection_class_embeddings_input_dim=16 + 6 * 4).eval()
    scheduler = EulerDiscreteScheduler(**{k: SD_SCHEDULER[k] for k in ("beta_start", "beta_end", "beta_schedule",
                                                                        "steps_offset")})
    pipe = StableDiffusionXLPipeline(unet=unet, vae=tiny_vae(), scheduler=scheduler, text_encoder=None,
                                     text_encoder_2=None, tokenizer=None, tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sdxl_pipeline_with_added_conditions_and_auto_latch():
    pipe = sdxl_pipe()
    reference = torch.randn(12, 4, 8, 8, generator=torch.Generator().manual_seed(2)) - 5.0
    safe = far_leaves_near_changes(pipe, embedded_prompts(pipe, 5.0), reference)
    assert all(r.latched for r in safe.trace)  # the pipeline guides, so the default latch holds beta
    # unguided, "auto" would measure in the UNet's features, which need SDXL's added conditions: latents
    go = embedded_prompts(pipe, 1.0)
    safe = SafeDenoiser(near(go()), reference=reference)
    with_safe(safe, pipe, go)
    assert sum(r.acted for r in safe.trace) > 0 and not any(r.latched for r in safe.trace)


def test_sdxl_pipeline_with_an_edm_scheduler_as_playground_v2_5_samples():
    """Playground v2.5: an SDXL pipeline, EDM's DPM-Solver++ (sigma space, preconditioned model output)."""
    pipe = sdxl_pipe()
    pipe.scheduler = diffusers.EDMDPMSolverMultistepScheduler(sigma_data=0.5)
    safe = far_leaves_near_changes(pipe, embedded_prompts(pipe, 3.0))
    sigmas = [r.sigma for r in safe.trace]
    assert all(r.alpha == 1.0 for r in safe.trace) and sigmas == sorted(sigmas, reverse=True) and sigmas[0] > 10


def image_to_image(cls, sd_components, **kwargs):
    """``go()`` for an SD pipeline that starts from images (img2img, inpainting): two 16x16 images, 6 steps."""
    pipe = getattr(diffusers, cls)(**dict(sd_components, scheduler=diffusers.DDIMScheduler(**SD_SCHEDULER)),
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    kw = dict(prompt_embeds=torch.randn(2, MAX_TOKENS, TEXT_DIM, generator=g),
              negative_prompt_embeds=torch.randn(2, MAX_TOKENS, TEXT_DIM, generator=g),
              image=torch.rand(2, 3, 16, 16, generator=g), num_inference_steps=6, output_type="latent")
    kw.update({"guidance_scale": 3.0, **kwargs})
    return pipe, lambda: pipe(**kw, generator=torch.Generator().manual_seed(0)).images


def test_img2img_pipeline_corrects_the_steps_it_runs(sd_components):
    pipe, go = image_to_image("StableDiffusionImg2ImgPipeline", sd_components, strength=0.5)
    safe = far_leaves_near_changes(pipe, go)
    assert len(safe.trace) == 3  # strength 0.5 of 6 steps: the image is noised to the 4th and denoised from there


def test_inpainting_pipeline_changes_only_what_it_repaints(sd_components):
    mask = torch.ones(2, 1, 16, 16)
    mask[..., :4] = 0  # keep the left quarter of each image (latent columns 0-1)
    pipe, go = image_to_image("StableDiffusionInpaintPipeline", sd_components, mask_image=mask, strength=0.9)
    vanilla = go()
    assert torch.equal(vanilla, with_safe(SafeDenoiser(far((4, 8, 8))), pipe, go))
    safe = SafeDenoiser(near(vanilla))
    moved = with_safe(safe, pipe, go)
    assert sum(r.acted for r in safe.trace) > 0
    # the pipeline pastes the kept region back after each step, the correction included
    assert torch.equal(moved[..., :2], vanilla[..., :2]) and not torch.equal(moved[..., 2:], vanilla[..., 2:])


def test_inpainting_unet_that_also_takes_the_mask_measures_in_the_latents(sd_components):
    """SD's inpainting UNet takes 9 channels (latents, mask, masked image): its features cannot be taken of
    latents alone, so unguided sampling with reference images measures closeness in the latents."""
    parts = dict(sd_components, unet=tiny_unet_cond(in_channels=9))
    mask = torch.ones(2, 1, 16, 16)
    pipe, go = image_to_image("StableDiffusionInpaintPipeline", parts, mask_image=mask, guidance_scale=1.0)
    reference = torch.randn(12, 4, 8, 8, generator=torch.Generator().manual_seed(2)) - 5.0
    safe = far_leaves_near_changes(pipe, go, reference)
    assert not any(r.in_features or r.latched for r in safe.trace)
    with pytest.raises(SafeDenoiserError, match="takes 9 input channels, the latents have 4"):
        with_safe(SafeDenoiser(near(go()), reference=reference, features="unet"), pipe, go)


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_controlnet_pipeline(sd_components, guidance):
    """ControlNet adds residuals inside the UNet call; the scheduler steps the same latents. Unguided, the
    local estimator measures in the UNet's own features (the ControlNet's residuals left out)."""
    torch.manual_seed(0)
    controlnet = diffusers.ControlNetModel(block_out_channels=(8, 16), layers_per_block=1, in_channels=4,
                                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                           cross_attention_dim=TEXT_DIM, norm_num_groups=4, attention_head_dim=4,
                                           conditioning_embedding_out_channels=(4, 8)).eval()
    pipe = diffusers.StableDiffusionControlNetPipeline(**dict(sd_components, scheduler=diffusers.DDIMScheduler(
        **SD_SCHEDULER)), controlnet=controlnet, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(1)
    kw = dict(prompt_embeds=torch.randn(2, MAX_TOKENS, TEXT_DIM, generator=g),
              negative_prompt_embeds=torch.randn(2, MAX_TOKENS, TEXT_DIM, generator=g),
              image=torch.rand(2, 3, 16, 16, generator=g), num_inference_steps=4, guidance_scale=guidance,
              output_type="latent")
    reference = torch.randn(12, 4, 8, 8, generator=torch.Generator().manual_seed(2)) - 5.0
    safe = far_leaves_near_changes(pipe, lambda: pipe(**kw, generator=torch.Generator().manual_seed(0)).images,
                                   reference)
    assert all(r.latched == (guidance > 1) and r.in_features == (guidance == 1) for r in safe.trace)


def test_dit_pipeline_far_set_is_bit_identical_and_sees_the_guided_batch():
    from diffusers import DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(sample_size=8, num_layers=1, patch_size=2, attention_head_dim=8,
                                        num_attention_heads=2, in_channels=4, out_channels=8).eval()
    pipe = DiTPipeline(transformer=transformer, vae=tiny_vae(), scheduler=diffusers.DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)

    def go():
        out = pipe(class_labels=[1, 2], num_inference_steps=4, guidance_scale=2.0, output_type="np",
                   generator=torch.Generator().manual_seed(0))
        return torch.from_numpy(out.images)

    vanilla = go()
    safe = SafeDenoiser(far((4, 8, 8)))
    assert torch.equal(vanilla, with_safe(safe, pipe, go))
    assert len(safe.trace) == 4 and safe.trace[0].batch == 4  # CFG doubles DiT's stepped batch


def test_learned_range_variance_passes_through_the_correction():
    """DDPM with ``learned_range``: the model outputs [eps, variance]; the correction replaces eps and must
    hand the variance channels on (DiT drops them before the scheduler, so it does not show this)."""
    pipe = diffusers.DDPMPipeline(unet=tiny_unet_pixels(out_channels=6),
                                  scheduler=diffusers.DDPMScheduler(variance_type="learned_range"))
    pipe.set_progress_bar_config(disable=True)

    def go():
        out = pipe(batch_size=2, num_inference_steps=5, output_type="np", generator=torch.Generator().manual_seed(0))
        return torch.from_numpy(out.images)

    vanilla = go()
    safe = SafeDenoiser(NegationSet.from_images(pipe, vanilla.permute(0, 3, 1, 2) * 2 - 1, progress=False))
    out = with_safe(safe, pipe, go)
    assert sum(r.acted for r in safe.trace) > 0
    assert torch.isfinite(out).all() and not torch.equal(out, vanilla)


# ------------------------------------------------------------------------------ encode_images


def test_encode_images_from_a_folder_skips_unreadable_files(sd_pipe, tmp_path, caplog):
    for i in range(3):
        Image.fromarray((torch.rand(20, 24, 3) * 255).byte().numpy()).save(tmp_path / f"img{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    with caplog.at_level(logging.WARNING):
        negation = NegationSet.from_images(sd_pipe, tmp_path, progress=False)
    assert negation.sample_shape == (4, 8, 8) and len(negation) == 3
    assert "notes.txt" in caplog.text and "broken.png" in caplog.text
    meta = negation.metadata
    assert meta["encoder"] == vae_fingerprint(sd_pipe) and meta["image_size"] == "16"
    assert len(json.loads(meta["sources_sha256"])) == 3
    assert float(meta["scaling_factor"]) == sd_pipe.vae.config.scaling_factor


def test_encode_images_decodes_a_folder_a_batch_at_a_time(sd_pipe, tmp_path, monkeypatch):
    """A folder of thousands of large images must not sit in memory as pixels at once: when the VAE encodes
    a batch, no more than that batch has been decoded; the latents are those of encoding all at once."""
    from safedenoiser.integrations import encode

    for i in range(10):
        Image.fromarray((torch.rand(20, 24, 3) * 255).byte().numpy()).save(tmp_path / f"img{i}.png")
    decoded, seen_by_vae = [], []
    decode = encode._pil_to_tensor
    monkeypatch.setattr(encode, "_pil_to_tensor", lambda *args: decoded.append(1) or decode(*args))
    vae_encode = sd_pipe.vae.encode
    monkeypatch.setattr(sd_pipe.vae, "encode", lambda x: seen_by_vae.append((len(decoded), len(x))) or vae_encode(x))
    latents, _ = encode_images(sd_pipe, tmp_path, batch_size=4, progress=False)
    assert seen_by_vae == [(4, 4), (8, 4), (10, 2)]
    all_at_once, _ = encode_images(sd_pipe, tmp_path, batch_size=10, progress=False)
    torch.testing.assert_close(latents, all_at_once)


def test_readable_images_decodes_the_pixels_so_a_truncated_jpeg_is_listed(tmp_path):
    """A JPEG cut short keeps a valid header (PIL's verify passes it); only decoding finds the damage."""
    buffer = io.BytesIO()
    Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy()).save(buffer, "JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 4 // 5])
    (tmp_path / "whole.jpg").write_bytes(buffer.getvalue())
    (tmp_path / "notes.txt").write_text("not an image")
    good, bad = readable_images(sorted(tmp_path.iterdir()))
    assert good == [tmp_path / "whole.jpg"]
    assert [(path.name, reason.split(" (")[0]) for path, reason in bad] == [("cut.jpg", "unreadable"),
                                                                           ("notes.txt", "not an image")]


def test_an_image_over_pils_size_limit_is_listed_and_skipped_not_a_traceback(tmp_path, monkeypatch):
    from safedenoiser.integrations.encode import load_images

    Image.new("L", (32, 32)).save(tmp_path / "huge.png")
    Image.new("L", (8, 8)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 256)  # PIL refuses images over twice this (1,024 > 512)
    good, bad = readable_images(sorted(tmp_path.iterdir()))
    assert good == [tmp_path / "small.png"] and bad[0][0] == tmp_path / "huge.png"
    assert bad[0][1].startswith("too large to decode") and bad[0][1].endswith("downscale it")
    pixels, hashes = load_images(tmp_path, 16, 1)
    assert len(pixels) == len(hashes) == 1


def test_encode_images_with_nothing_readable_is_an_error(sd_pipe, tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(SafeDenoiserError, match="no readable image"):
        NegationSet.from_images(sd_pipe, tmp_path, progress=False)


def test_encode_uses_the_latent_mean_shift_and_scale():
    pipe = sd3_pipe()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    latents, meta = encode_images(pipe, images, progress=False)
    with torch.no_grad():
        mean = pipe.vae.encode(images).latent_dist.mean
    assert torch.allclose(latents, (mean - 0.0609) * 1.5305, atol=1e-6)
    assert meta["sources_sha256"] == "tensor" and float(meta["shift_factor"]) == 0.0609


def test_encode_uses_a_vaes_per_channel_latent_mean_and_std_as_sdxls_pipelines_do():
    """Playground v2.5's VAE: SDXL's pipelines denoise ``(z - latents_mean) * scaling_factor / latents_std``."""
    mean, std = [0.5, -0.2, 0.1, 0.0], [2.0, 1.0, 0.5, 4.0]
    pipe = diffusers.StableDiffusionXLPipeline(vae=tiny_vae(latents_mean=mean, latents_std=std, scaling_factor=0.5),
                                               unet=None, text_encoder=None, text_encoder_2=None, tokenizer=None,
                                               tokenizer_2=None, scheduler=diffusers.EulerDiscreteScheduler())
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    latents, meta = encode_images(pipe, images, progress=False, image_size=16)
    with torch.no_grad():
        z = pipe.vae.encode(images).latent_dist.mean
    shape = (1, 4, 1, 1)
    torch.testing.assert_close(latents, (z - torch.tensor(mean).view(shape)) * 0.5 / torch.tensor(std).view(shape))
    assert json.loads(meta["latents_mean"]) == mean and json.loads(meta["latents_std"]) == std


def test_a_float16_vae_that_asks_for_it_encodes_in_float32(sd_components, monkeypatch):
    """SDXL's VAE overflows in float16 (NaN latents); its config's force_upcast says to encode in float32."""
    vae = tiny_vae(force_upcast=True).to(torch.float16)
    pipe = diffusers.StableDiffusionPipeline(**dict(sd_components, vae=vae), requires_safety_checker=False)
    seen, encode = [], vae.encode
    monkeypatch.setattr(vae, "encode", lambda x: seen.append((x.dtype, vae.dtype)) or encode(x))
    latents, _ = encode_images(pipe, torch.rand(2, 3, 16, 16) * 2 - 1, progress=False)
    assert seen == [(torch.float32, torch.float32)] and vae.dtype == torch.float16
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()


def test_pil_images_are_resized_to_the_pipeline_size(sd_pipe):
    images = [Image.new("RGB", (40, 30), color=(200, 10, 10)), Image.new("RGB", (16, 16))]
    negation = NegationSet.from_images(sd_pipe, images, progress=False)
    assert negation.sample_shape == (4, 8, 8)


def test_pil_images_are_scaled_by_their_shorter_side_then_centre_cropped():
    from safedenoiser.integrations.encode import load_images

    gradient = Image.fromarray(np.tile(np.arange(0, 240, 3, dtype=np.uint8), (60, 1)))  # 80 wide, 60 high
    pixels, _ = load_images([gradient], 16, 1)
    expected = np.asarray(gradient.resize((21, 16), Image.BICUBIC), dtype=np.float32)[:, 2:18] / 127.5 - 1
    np.testing.assert_allclose(pixels[0, 0].numpy(), expected, atol=1e-6)


def test_a_photo_is_turned_upright_as_its_exif_orientation_says(tmp_path):
    """Phones store pixels as the sensor saw them and the rotation in EXIF; a viewer shows them upright."""
    from safedenoiser.integrations.encode import load_images

    upright = Image.fromarray(np.tile(np.arange(0, 240, 3, dtype=np.uint8), (60, 1)))  # 80 wide, 60 high
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the sensor saw
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    stored.save(tmp_path / "photo.png", exif=exif)
    pixels, _ = load_images([tmp_path / "photo.png"], 16, 1)
    torch.testing.assert_close(pixels, load_images([upright], 16, 1)[0])


def test_a_16_bit_grey_image_keeps_its_tones(tmp_path):
    from safedenoiser.integrations.encode import load_images

    tones = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
    Image.fromarray(tones.astype(np.uint16) * 257).save(tmp_path / "scan.png")  # the same tones in 16 bits
    for channels in (1, 3):
        pixels, _ = load_images([tmp_path / "scan.png"], 16, channels)
        torch.testing.assert_close(pixels, load_images([Image.fromarray(tones)], 16, channels)[0])


def test_vae_fingerprint_survives_half_precision_and_tells_vaes_apart(sd_pipe):
    half = copy.copy(sd_pipe)
    half.vae = copy.deepcopy(sd_pipe.vae).to(torch.bfloat16)
    assert vae_fingerprint(half) == vae_fingerprint(sd_pipe)
    other = copy.copy(sd_pipe)
    torch.manual_seed(7)
    other.vae = type(sd_pipe.vae)(**sd_pipe.vae.config)
    assert vae_fingerprint(other) != vae_fingerprint(sd_pipe)
