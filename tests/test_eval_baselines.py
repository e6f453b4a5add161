"""The baselines' basic behaviour on tiny inputs: SPELL, negative guidance, SLD, rejection sampling."""

import pytest
import torch

from conftest import tiny_class_pipe
from safedenoiser import NegationSet, SafeDenoiserError
from safedenoiser.baselines import NegativeGuidance, RejectionSampler, SafetyGuidance, Spell
from safedenoiser.baselines.spell import calibrate_radius, repel
from safedenoiser.core.kernels import FlatSet


# ------------------------------------------------------------------------------------- SPELL
def test_repel_pushes_a_point_inside_one_ball_onto_its_surface():
    y = torch.zeros(1, 2)
    moved, hits = repel(torch.tensor([[0.5, 0.0]]), FlatSet.of(y), radius=1.0)
    assert moved.tolist() == [[1.0, 0.0]] and hits.tolist() == [1]


def test_repel_leaves_points_outside_every_ball_untouched():
    x = torch.tensor([[3.0, 4.0]])  # distance 5 from the origin
    moved, hits = repel(x, FlatSet.of(torch.zeros(1, 2)), radius=4.9)
    assert torch.equal(moved, x) and hits.tolist() == [0]


def test_repel_sums_the_pushes_of_every_ball():
    # x = 0 between y1 = (-0.5, 0) and y2 = (0, 0.5), radius 1: pushes 0.5 (1, 0) + 0.5 (0, -1)
    y = torch.tensor([[-0.5, 0.0], [0.0, 0.5]])
    moved, hits = repel(torch.zeros(1, 2), FlatSet.of(y), radius=1.0)
    assert moved.tolist() == [[0.5, -0.5]] and hits.tolist() == [2]


def test_repel_chunked_equals_unchunked():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 5, generator=gen, dtype=torch.float64), torch.randn(23, 5, generator=gen, dtype=torch.float64)
    a, _ = repel(x, FlatSet.of(y), 2.5)
    b, _ = repel(x, FlatSet.of(y), 2.5, chunk_size=4)
    assert torch.allclose(a, b, atol=1e-12)


def test_radius_is_a_quantile_of_nearest_neighbour_distances():
    negation = NegationSet.from_latents(torch.tensor([[0.0], [1.0], [3.0]]))  # NN distances 1, 1, 2
    assert calibrate_radius(negation, 0.5) == pytest.approx(1.0)
    assert Spell(negation, quantile=1.0, radius_scale=2.0).radius == pytest.approx(4.0)


def test_spell_correct_moves_only_samples_inside_a_ball_and_records_the_step():
    negation = NegationSet.from_latents(torch.zeros(2, 1, 2, 2))
    spell = Spell(negation, radius=1.0)
    x0 = torch.stack([torch.full((1, 2, 2), 0.25), torch.full((1, 2, 2), 5.0)])  # distances 0.5 and 10
    corr = spell.correct(x0, 0.5, 0.8, x0)
    assert corr.acted.tolist() == [True, False] and not corr.renoise
    # two equal balls each push by 1 - 0.5 along the same direction: distance 0.5 -> 1.5
    assert torch.allclose(corr.x0[0], torch.full((1, 2, 2), 0.75))
    assert torch.equal(corr.x0[1], x0[1])
    assert len(spell.trace) == 1 and spell.trace[0].acted == 1 and spell.sample_shape == (1, 2, 2)


def test_spell_drives_through_attach_and_far_sets_leave_sampling_unchanged(sd_pipe):
    far = NegationSet.from_latents(torch.full((2, 4, 8, 8), 100.0) + torch.arange(2.0).reshape(2, 1, 1, 1))
    kw = dict(prompt=["ab"], num_inference_steps=3, output_type="latent")
    vanilla = sd_pipe(generator=torch.Generator().manual_seed(0), **kw).images
    spell = Spell(far, radius=1.0)
    with spell.attach(sd_pipe):
        same = sd_pipe(generator=torch.Generator().manual_seed(0), **kw).images
    assert torch.equal(vanilla, same) and len(spell.trace) == 3


# ----------------------------------------------------------------- negative guidance and SLD
def test_negative_guidance_default_scale_is_diffusers_negative_prompt():
    u, c, n = torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.5])
    eps = NegativeGuidance()(u, c, n, guidance_scale=4.0, step=0, num_steps=10, state={})
    assert eps.item() == pytest.approx((n + 4.0 * (c - n)).item())
    eps = NegativeGuidance(2.0)(u, c, n, guidance_scale=4.0, step=0, num_steps=10, state={})
    assert eps.item() == pytest.approx(4.0 - 2.0 * 0.5)


def test_guided_sample_with_negative_prompt_matches_the_pipeline(sd_pipe):
    kw = dict(num_inference_steps=3, guidance_scale=3.0, output_type="latent")
    ref = sd_pipe(prompt=["ab", "cd"], negative_prompt=["xy", "xy"],
                  generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kw).images
    ours = NegativeGuidance().sample(sd_pipe, prompts=["ab", "cd"], negative="xy",
                                     generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kw)
    assert torch.allclose(ref, ours, atol=1e-5)


def test_sld_is_plain_guidance_during_warmup_and_subtracts_the_safety_term_after():
    sld = SafetyGuidance("medium")  # warm-up 10 of 50 steps -> 5 of 25
    u, c, n = torch.tensor([0.0]), torch.tensor([0.5]), torch.tensor([1.0])  # c - n = -0.5 < threshold
    state: dict = {}
    assert sld.warmup_steps(25) == 5
    assert sld(u, c, n, guidance_scale=2.0, step=0, num_steps=25, state=state).item() == pytest.approx(1.0)
    assert state["momentum"].item() == pytest.approx(0.6)  # 0.4 * 0 + 0.6 * 1
    # after warm-up: safety = 1 * (n - u) + 0.3 * 0.6 = 1.18; eps = u + g (c - u - safety)
    eps = sld(u, c, n, guidance_scale=2.0, step=5, num_steps=25, state=state)
    assert eps.item() == pytest.approx(2.0 * (0.5 - 1.18))


def test_sld_leaves_elements_where_the_prompt_is_past_the_threshold():
    sld = SafetyGuidance("medium", warmup=0)
    eps = sld(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([0.5]), guidance_scale=2.0, step=0,
              num_steps=25, state={})
    assert eps.item() == pytest.approx(2.0)


def test_sld_refuses_unknown_presets_and_parameters():
    with pytest.raises(SafeDenoiserError, match="preset"):
        SafetyGuidance("extreme")
    with pytest.raises(SafeDenoiserError, match="parameter"):
        SafetyGuidance("medium", warmpu=3)


@pytest.mark.parametrize("labels,guidance", [([None, None], 1.0), ([3, 5], 2.5)])
def test_guided_sample_with_zero_negative_weight_is_the_class_pipeline(labels, guidance):
    pipe = tiny_class_pipe()
    kw = dict(num_inference_steps=3, guidance_scale=guidance, output_type="latent")
    ref = pipe(labels, generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kw).images
    ours = NegativeGuidance(0.0).sample(pipe, labels=labels, negative=2,
                                        generator=[torch.Generator().manual_seed(s) for s in (0, 1)], **kw)
    assert torch.allclose(ref, ours, atol=1e-5)


def test_negative_class_guidance_changes_the_samples_and_checks_the_class():
    pipe = tiny_class_pipe()
    kw = dict(labels=[None], num_inference_steps=2, guidance_scale=1.0)
    a = NegativeGuidance(0.0).sample(pipe, negative=2, generator=torch.Generator().manual_seed(0), **kw)
    b = NegativeGuidance(3.0).sample(pipe, negative=2, generator=torch.Generator().manual_seed(0), **kw)
    assert not torch.allclose(a, b)
    with pytest.raises(SafeDenoiserError, match="negative class"):
        NegativeGuidance().sample(pipe, negative=10, **kw)


# ------------------------------------------------------------------------------------ rejection
def test_rejection_resamples_flagged_images_and_counts_attempts():
    calls = []

    def sample(seeds):
        calls.append(list(seeds))
        return torch.tensor(seeds, dtype=torch.float64)

    # seed s is unsafe while s is even; redraws use s + r * 1_000_003 (odd for r = 1)
    result = RejectionSampler(sample, lambda x: x.long() % 2 == 0, max_attempts=3)([0, 1, 2])
    assert result.attempts.tolist() == [2, 1, 2] and result.accepted.all()
    assert result.images.tolist() == [1_000_003, 1, 1_000_005] and result.mean_attempts == pytest.approx(5 / 3)
    assert len(calls) == 2


def test_rejection_gives_up_after_max_attempts():
    result = RejectionSampler(lambda s: torch.zeros(len(s)), lambda x: torch.ones(len(x), dtype=torch.bool),
                              max_attempts=4)([0, 1])
    assert result.attempts.tolist() == [4, 4] and not result.accepted.any()
